-- pogo-vault audit log on PostgreSQL, version 5: the same tables and columns as the SQLite
-- audit database at its version 5 (migrations/audit/0001..0005), so the same statements,
-- hashes and signatures serve both. One global chain for every replica: appends take the
-- advisory lock AUDIT_LOCK (src/store/postgres.rs) and continue from the head they read
-- under it. Text that is compared or ordered uses the "C" collation (byte order, as SQLite).

CREATE TABLE events (
    sequence           BIGINT  PRIMARY KEY CHECK (sequence >= 1),
    time_ms            BIGINT  NOT NULL,
    caller             TEXT    COLLATE "C" NOT NULL,
    caller_serial      TEXT    COLLATE "C" NOT NULL,
    action             TEXT    COLLATE "C" NOT NULL,
    tenant_id          TEXT    COLLATE "C",
    key_version        BIGINT,
    outcome            TEXT    COLLATE "C" NOT NULL,
    upstream_status    BIGINT,
    token_fingerprint  TEXT    COLLATE "C",
    detail             TEXT    NOT NULL,
    request_id         TEXT    NOT NULL,
    peer               TEXT    NOT NULL,
    prev_hash          BYTEA   NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash               BYTEA   NOT NULL CHECK (octet_length(hash) = 32)
);

-- (column, sequence): a filtered page `WHERE col = ? AND sequence > ? ORDER BY sequence` is
-- one index range scan. SQLite keeps the tenant index in a derived file; here it is an index.
CREATE INDEX events_by_time    ON events (time_ms, sequence);
CREATE INDEX events_by_caller  ON events (caller, sequence);
CREATE INDEX events_by_tenant  ON events (tenant_id, sequence);
CREATE INDEX events_by_action  ON events (action, sequence);
CREATE INDEX events_by_outcome ON events (outcome, sequence);

CREATE TABLE checkpoints (
    sequence   BIGINT  PRIMARY KEY CHECK (sequence >= 0),
    head_hash  BYTEA   NOT NULL CHECK (octet_length(head_hash) = 32),
    time_ms    BIGINT  NOT NULL,
    key_id     TEXT    COLLATE "C" NOT NULL,
    signature  BYTEA   NOT NULL CHECK (octet_length(signature) = 64)
);

CREATE TABLE signing_keys (
    key_id         TEXT    COLLATE "C" PRIMARY KEY,
    public_key     BYTEA   NOT NULL CHECK (octet_length(public_key) = 32),
    first_used_ms  BIGINT  NOT NULL
);

CREATE TABLE writer_probe (
    id       BIGINT  PRIMARY KEY CHECK (id = 1),
    time_ms  BIGINT  NOT NULL
);

CREATE TABLE signing_handovers (
    sequence        BIGINT  PRIMARY KEY CHECK (sequence >= 1),
    head_hash       BYTEA   NOT NULL CHECK (octet_length(head_hash) = 32),
    time_ms         BIGINT  NOT NULL,
    old_key_id      TEXT    COLLATE "C" NOT NULL,
    new_key_id      TEXT    COLLATE "C" NOT NULL,
    new_public_key  BYTEA   NOT NULL CHECK (octet_length(new_public_key) = 32),
    signature       BYTEA   NOT NULL CHECK (octet_length(signature) = 64)
);

CREATE TABLE archives (
    through_sequence  BIGINT  PRIMARY KEY CHECK (through_sequence >= 1),
    from_sequence     BIGINT  NOT NULL CHECK (from_sequence >= 1),
    head_hash         BYTEA   NOT NULL CHECK (octet_length(head_hash) = 32),
    sha256            BYTEA   NOT NULL CHECK (octet_length(sha256) = 32),
    file_name         TEXT    NOT NULL,
    archived_ms       BIGINT  NOT NULL
);

CREATE TABLE archive_statements (
    through_sequence  BIGINT  PRIMARY KEY CHECK (through_sequence >= 1),
    signature         BYTEA   NOT NULL CHECK (octet_length(signature) = 64)
);
