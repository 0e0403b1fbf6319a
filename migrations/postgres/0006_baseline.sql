-- pogo-vault schema on PostgreSQL, version 6: the vault database of migrations/0001 to
-- 0006 (SQLite) as it stands after them, in one step. Same tables, columns, keys and
-- checks; SQLite's INTEGER is BIGINT here and BLOB is BYTEA (tests/postgres_store.rs
-- compares the two schemas column by column). Keys and ordered text use the "C"
-- collation, so ids sort byte by byte as they do in SQLite (`list_range` relies on it).
-- Secrets live only in sealed_secrets, as envelope-encrypted blobs. Times are Unix
-- milliseconds (UTC).

CREATE TABLE vault_meta (
    id              BIGINT  PRIMARY KEY CHECK (id = 1),
    kek_source      TEXT    NOT NULL CHECK (kek_source IN ('key-file', 'passphrase', 'pkcs11')),
    kek_id          TEXT    NOT NULL,
    key_check       BYTEA   NOT NULL,
    argon2_salt     BYTEA,
    argon2_m_kib    BIGINT,
    argon2_t        BIGINT,
    argon2_p        BIGINT,
    created_at      BIGINT  NOT NULL,
    kek_rotated_at  BIGINT,
    CHECK (kek_source <> 'passphrase' OR (argon2_salt IS NOT NULL AND argon2_m_kib IS NOT NULL
                                          AND argon2_t IS NOT NULL AND argon2_p IS NOT NULL))
);

CREATE TABLE sealed_secrets (
    purpose      TEXT COLLATE "C" NOT NULL
                 CHECK (purpose IN ('client-key', 'subscription-key', 'fingerprint-key', 'audit-signing-key')),
    owner        TEXT COLLATE "C" NOT NULL,
    version      BIGINT  NOT NULL CHECK (version >= 1),
    wrapped_dek  BYTEA   NOT NULL,
    ciphertext   BYTEA   NOT NULL,
    kek_id       TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (purpose, owner, version)
);

CREATE TABLE vault_keys (
    purpose     TEXT COLLATE "C" PRIMARY KEY CHECK (purpose IN ('fingerprint-key', 'audit-signing-key')),
    key_id      TEXT    NOT NULL,
    public_key  BYTEA,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE integrations (
    environment               TEXT COLLATE "C" PRIMARY KEY CHECK (environment IN ('demo', 'production')),
    application_key           TEXT    NOT NULL,
    base_url                  TEXT    NOT NULL,
    subscription_key_version  BIGINT  NOT NULL,
    subscription_key_hint     TEXT    NOT NULL,
    created_at                BIGINT  NOT NULL,
    updated_at                BIGINT  NOT NULL,
    secondary_key_version     BIGINT,
    secondary_key_hint        TEXT,
    active_slot               TEXT    NOT NULL DEFAULT 'primary' CHECK (active_slot IN ('primary', 'secondary'))
);

CREATE TABLE tenants (
    tenant_id            TEXT COLLATE "C" PRIMARY KEY,
    environment          TEXT COLLATE "C" NOT NULL CHECK (environment IN ('demo', 'production')),
    display_name         TEXT    NOT NULL DEFAULT '',
    organization_number  TEXT COLLATE "C",
    go_client_id         TEXT,
    labels               TEXT    NOT NULL DEFAULT '{}',
    status               TEXT COLLATE "C" NOT NULL CHECK (status IN ('ACTIVE', 'DISABLED', 'KEY_REJECTED')),
    key_version          BIGINT  NOT NULL CHECK (key_version >= 1),
    key_hint             TEXT    NOT NULL,
    key_fingerprint      TEXT    NOT NULL,
    created_at           BIGINT  NOT NULL,
    updated_at           BIGINT  NOT NULL,
    last_token_at        BIGINT
);

CREATE INDEX tenants_by_org ON tenants (environment, organization_number);

CREATE TABLE onboarding_sessions (
    onboarding_id        TEXT COLLATE "C" PRIMARY KEY,
    environment          TEXT    NOT NULL CHECK (environment IN ('demo', 'production')),
    redirect_url         TEXT    NOT NULL,
    organization_number  TEXT,
    tenant_id_prefix     TEXT    NOT NULL,
    caller               TEXT    NOT NULL,
    created_at           BIGINT  NOT NULL,
    expires_at           BIGINT  NOT NULL,
    status               TEXT    NOT NULL CHECK (status IN ('PENDING', 'COMPLETING', 'COMPLETED', 'FAILED')),
    go_status            TEXT,
    completed_at         BIGINT,
    tenants              TEXT    NOT NULL DEFAULT '[]',
    subject_hash         TEXT
);

CREATE TABLE verified_organization_numbers (
    tenant_id            TEXT COLLATE "C" PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    environment          TEXT COLLATE "C" NOT NULL CHECK (environment IN ('demo', 'production')),
    organization_number  TEXT COLLATE "C" NOT NULL,
    verified_at          BIGINT  NOT NULL
);

CREATE INDEX verified_organization_numbers_by_number ON verified_organization_numbers (environment, organization_number);

CREATE TABLE audit_sink_cursors (
    name                 TEXT COLLATE "C" PRIMARY KEY,
    event_sequence       BIGINT  NOT NULL CHECK (event_sequence >= 0),
    checkpoint_sequence  BIGINT  NOT NULL CHECK (checkpoint_sequence >= 0),
    updated_at           BIGINT  NOT NULL
);
