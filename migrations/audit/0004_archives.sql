-- Audit retention (`pogo-vault audit archive`, src/audit/archive.rs): each row records one
-- archive file that took events `from_sequence..=through_sequence` out of this database.
-- The row with the highest `through_sequence` is the live log's *anchor*: the chain here
-- continues from event `through_sequence`, whose hash is `head_hash` (the signed checkpoint
-- at that sequence stays in `checkpoints`). Events, checkpoints and hand-overs are unchanged,
-- so every hash and signature stays valid. Not trusted by itself: the anchor's hash is
-- proven by its checkpoint's signature, the archive by its own chain and signatures, and the
-- `audit_archived` event (in the chain) names the range, file name and SHA-256.
CREATE TABLE IF NOT EXISTS archives (
    through_sequence  INTEGER PRIMARY KEY CHECK (through_sequence >= 1),
    from_sequence     INTEGER NOT NULL CHECK (from_sequence >= 1),
    head_hash         BLOB    NOT NULL CHECK (length(head_hash) = 32),
    sha256            BLOB    NOT NULL CHECK (length(sha256) = 32),
    file_name         TEXT    NOT NULL,
    archived_ms       INTEGER NOT NULL
) STRICT;
