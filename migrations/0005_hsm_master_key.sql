-- pogo-vault schema, version 5: the master key may live in an HSM (PKCS#11, src/crypto/hsm.rs).
-- kek_source gains 'pkcs11'; its key_check is a known value wrapped in the HSM. SQLite cannot
-- change a CHECK in place, so the one-row table is rebuilt with the same columns.
CREATE TABLE vault_meta_v5 (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    kek_source      TEXT    NOT NULL CHECK (kek_source IN ('key-file', 'passphrase', 'pkcs11')),
    kek_id          TEXT    NOT NULL,
    key_check       BLOB    NOT NULL,
    argon2_salt     BLOB,
    argon2_m_kib    INTEGER,
    argon2_t        INTEGER,
    argon2_p        INTEGER,
    created_at      INTEGER NOT NULL,
    kek_rotated_at  INTEGER,
    CHECK (kek_source <> 'passphrase' OR (argon2_salt IS NOT NULL AND argon2_m_kib IS NOT NULL
                                          AND argon2_t IS NOT NULL AND argon2_p IS NOT NULL))
) STRICT;
INSERT INTO vault_meta_v5 SELECT id, kek_source, kek_id, key_check, argon2_salt, argon2_m_kib, argon2_t, argon2_p,
    created_at, kek_rotated_at FROM vault_meta;
DROP TABLE vault_meta;
ALTER TABLE vault_meta_v5 RENAME TO vault_meta;
