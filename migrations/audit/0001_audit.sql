-- pogo-vault audit database, version 1 (a file of its own, beside the vault database).
-- Times are Unix milliseconds (UTC). Hashes are 32-byte SHA-256 values; see src/audit/chain.rs
-- for the canonical encoding they are computed over.

-- The hash-chained events. `sequence` is the rowid: 1-based and gap-free, assigned by the
-- writer inside the transaction that commits the event.
CREATE TABLE events (
    sequence           INTEGER PRIMARY KEY CHECK (sequence >= 1),
    time_ms            INTEGER NOT NULL,
    caller             TEXT    NOT NULL,
    caller_serial      TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    tenant_id          TEXT,
    key_version        INTEGER,
    outcome            TEXT    NOT NULL,
    upstream_status    INTEGER,
    token_fingerprint  TEXT,
    detail             TEXT    NOT NULL,
    request_id         TEXT    NOT NULL,
    peer               TEXT    NOT NULL,
    prev_hash          BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash               BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;

-- Each index is ordered by (column, sequence) because SQLite appends the rowid, so a filtered
-- page `WHERE col = ? AND sequence > ? ORDER BY sequence LIMIT ?` is one index range scan.
CREATE INDEX events_by_time    ON events (time_ms);
CREATE INDEX events_by_caller  ON events (caller);
CREATE INDEX events_by_tenant  ON events (tenant_id);
CREATE INDEX events_by_action  ON events (action);
CREATE INDEX events_by_outcome ON events (outcome);

-- Signed checkpoints: (sequence, head hash, time) signed with the vault's Ed25519 audit key.
-- Sequence 0 is the empty log (head hash = 32 zero bytes).
CREATE TABLE checkpoints (
    sequence   INTEGER PRIMARY KEY CHECK (sequence >= 0),
    head_hash  BLOB    NOT NULL CHECK (length(head_hash) = 32),
    time_ms    INTEGER NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  BLOB    NOT NULL CHECK (length(signature) = 64)
) STRICT;

-- Public keys that have signed checkpoints here, so an offline reader can tell which key
-- signed. Informational only: verification uses the public key the verifier supplies.
CREATE TABLE signing_keys (
    key_id         TEXT    PRIMARY KEY,
    public_key     BLOB    NOT NULL CHECK (length(public_key) = 32),
    first_used_ms  INTEGER NOT NULL
) STRICT;

-- One row the writer rewrites to test that the file is writable again after commits failed
-- while no events are waiting (so health recovers without traffic). Not part of the chain.
CREATE TABLE writer_probe (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    time_ms  INTEGER NOT NULL
) STRICT;
