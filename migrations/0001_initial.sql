-- pogo-vault schema, version 1.
-- Secrets live only in sealed_secrets, as envelope-encrypted blobs (see src/crypto/envelope.rs).
-- Times are Unix milliseconds (UTC).

-- One row: how the master key is obtained and how to recognise it.
CREATE TABLE vault_meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    kek_source      TEXT    NOT NULL CHECK (kek_source IN ('key-file', 'passphrase')),
    kek_id          TEXT    NOT NULL,
    key_check       BLOB    NOT NULL,
    argon2_salt     BLOB,
    argon2_m_kib    INTEGER,
    argon2_t        INTEGER,
    argon2_p        INTEGER,
    created_at      INTEGER NOT NULL,
    kek_rotated_at  INTEGER,
    CHECK (kek_source = 'key-file' OR (argon2_salt IS NOT NULL AND argon2_m_kib IS NOT NULL
                                       AND argon2_t IS NOT NULL AND argon2_p IS NOT NULL))
) STRICT;

-- Every secret, sealed: client keys (owner = tenant id), subscription keys (owner =
-- environment), the vault's own keys (owner = 'vault'). One DEK per row.
CREATE TABLE sealed_secrets (
    purpose      TEXT    NOT NULL CHECK (purpose IN ('client-key', 'subscription-key', 'fingerprint-key', 'audit-signing-key')),
    owner        TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    wrapped_dek  BLOB    NOT NULL,
    ciphertext   BLOB    NOT NULL,
    kek_id       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (purpose, owner, version)
) STRICT;

-- Public halves and ids of the vault's own keys.
CREATE TABLE vault_keys (
    purpose     TEXT    PRIMARY KEY CHECK (purpose IN ('fingerprint-key', 'audit-signing-key')),
    key_id      TEXT    NOT NULL,
    public_key  BLOB,
    created_at  INTEGER NOT NULL
) STRICT;

-- Per environment: the integration's application key (not secret), base URL and the
-- sealed subscription key's version and hint.
CREATE TABLE integrations (
    environment               TEXT    PRIMARY KEY CHECK (environment IN ('demo', 'production')),
    application_key           TEXT    NOT NULL,
    base_url                  TEXT    NOT NULL,
    subscription_key_version  INTEGER NOT NULL,
    subscription_key_hint     TEXT    NOT NULL,
    created_at                INTEGER NOT NULL,
    updated_at                INTEGER NOT NULL
) STRICT;

CREATE TABLE tenants (
    tenant_id            TEXT    PRIMARY KEY,
    environment          TEXT    NOT NULL CHECK (environment IN ('demo', 'production')),
    display_name         TEXT    NOT NULL DEFAULT '',
    organization_number  TEXT,
    go_client_id         TEXT,
    labels               TEXT    NOT NULL DEFAULT '{}',
    status               TEXT    NOT NULL CHECK (status IN ('ACTIVE', 'DISABLED', 'KEY_REJECTED')),
    key_version          INTEGER NOT NULL CHECK (key_version >= 1),
    key_hint             TEXT    NOT NULL,
    key_fingerprint      TEXT    NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    last_token_at        INTEGER
) STRICT;

CREATE INDEX tenants_by_org ON tenants (environment, organization_number);
