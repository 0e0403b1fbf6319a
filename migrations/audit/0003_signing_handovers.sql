-- Signing-key rotation (`pogo-vault audit rotate-signing-key`): the retiring key's signed
-- hand-over to its successor, over the head at the `signing_key_rotated` event that records
-- it (src/audit/handover.rs). Verification follows these from the public key the auditor
-- holds; a file without this table (schema 1 and 2) simply has one key. Events and
-- checkpoints are unchanged, so every hash and signature stays valid.
CREATE TABLE IF NOT EXISTS signing_handovers (
    sequence        INTEGER PRIMARY KEY CHECK (sequence >= 1),
    head_hash       BLOB    NOT NULL CHECK (length(head_hash) = 32),
    time_ms         INTEGER NOT NULL,
    old_key_id      TEXT    NOT NULL,
    new_key_id      TEXT    NOT NULL,
    new_public_key  BLOB    NOT NULL CHECK (length(new_public_key) = 32),
    signature       BLOB    NOT NULL CHECK (length(signature) = 64)
) STRICT;
