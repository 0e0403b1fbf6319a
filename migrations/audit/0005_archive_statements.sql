-- The signed statement of each archive (src/audit/anchor.rs): Ed25519 by the audit signing
-- key over the range, the hash of the last archived event and the archive file's SHA-256,
-- one row per `archives` row (same `through_sequence`). An `archives` row is writable by
-- anyone with the file; only this signature (and the same one in the `audit_archived`
-- record) makes it count. A table of its own rather than a column, so the migration can
-- run again on a file whose version was rewound (every audit migration is idempotent).
CREATE TABLE IF NOT EXISTS archive_statements (
    through_sequence  INTEGER PRIMARY KEY CHECK (through_sequence >= 1),
    signature         BLOB    NOT NULL CHECK (length(signature) = 64)
) STRICT;
