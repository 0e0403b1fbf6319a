-- pogo-vault schema, version 6: how far each audit sink ([[audit.sink]] in the serve config,
-- src/audit/sinks/) has delivered the audit log. Delivery progress only: losing a row means
-- the sink sends again from an earlier point (late and repeated, never skipped).
CREATE TABLE audit_sink_cursors (
    name                 TEXT    PRIMARY KEY,
    event_sequence       INTEGER NOT NULL CHECK (event_sequence >= 0),
    checkpoint_sequence  INTEGER NOT NULL CHECK (checkpoint_sequence >= 0),
    updated_at           INTEGER NOT NULL
) STRICT;
