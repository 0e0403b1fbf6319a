-- What replicas on one PostgreSQL database share so that together they behave as one vault
-- towards PowerOffice Go (component "shared" in pogo_schema; PostgreSQL only: a vault on
-- SQLite is one process and keeps these in memory). Nothing here is copied by `storage
-- migrate` or `storage export`: it is a cache and a clock, rebuilt as the replicas run.

-- One GCRA bucket per environment's subscription: every upstream request of every replica
-- reserves its slot here, on the database's clock (microseconds since the Unix epoch), so
-- the replicas together keep the configured rate and burst. A 429 or quota 403 seen by one
-- replica moves `paused_until_us`, and every replica's next reservation waits for it.
CREATE TABLE shared_budget (
    bucket           TEXT COLLATE "C" PRIMARY KEY,
    tat_us           BIGINT NOT NULL,
    paused_until_us  BIGINT NOT NULL
);

-- The newest access token minted for each tenant, envelope-sealed under the master key like
-- every secret (purpose access-token, bound to the tenant and its key version; its type and
-- expiry are sealed with it). The plain columns only choose rows: a replica serves a token
-- only if it opens, is bound to the tenant's current key version, and the tenant is active.
-- `fingerprint` is the keyed fingerprint the audit log carries (not a secret).
CREATE TABLE shared_tokens (
    tenant_id    TEXT COLLATE "C" PRIMARY KEY,
    key_version  BIGINT NOT NULL CHECK (key_version >= 1),
    wrapped_dek  BYTEA  NOT NULL,
    ciphertext   BYTEA  NOT NULL,
    fingerprint  TEXT   NOT NULL,
    expires_at   BIGINT NOT NULL,
    refresh_at   BIGINT NOT NULL,
    minted_by    TEXT   NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX shared_tokens_expiry ON shared_tokens (expires_at);
