//! The vault's own record: how the master key is obtained, how to recognise it, and the
//! public halves of the vault's internal keys.

use super::sql::{Sql, args};
use super::{StoreError, query_one};
use crate::crypto::Argon2Params;

/// What `vault_meta` says about the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekMeta {
    pub kek_id: String,
    pub key_check: Vec<u8>,
    /// `None` for a key file; the Argon2id parameters and salt for a passphrase.
    pub argon2: Option<Argon2Params>,
    /// The key lives in an HSM (PKCS#11); `argon2` is then `None`.
    pub hsm: bool,
    pub created_at: i64,
    pub kek_rotated_at: Option<i64>,
}

pub fn get(db: &mut dyn Sql) -> Result<Option<KekMeta>, StoreError> {
    query_one(
        db,
        "SELECT kek_id, key_check, argon2_salt, argon2_m_kib, argon2_t, argon2_p, created_at, kek_rotated_at, kek_source
         FROM vault_meta WHERE id = 1",
        args![],
        |r| {
            let salt: Option<Vec<u8>> = r.get(2)?;
            let source: String = r.get(8)?;
            let argon2 = match (source.as_str(), salt) {
                ("passphrase", Some(salt)) => Some(Argon2Params {
                    salt,
                    memory_kib: r.get(3)?,
                    iterations: r.get(4)?,
                    parallelism: r.get(5)?,
                }),
                _ => None,
            };
            Ok(KekMeta {
                kek_id: r.get(0)?,
                key_check: r.get(1)?,
                argon2,
                hsm: source == "pkcs11",
                created_at: r.get(6)?,
                kek_rotated_at: r.get(7)?,
            })
        },
    )
}

/// Writes the one `vault_meta` row (insert at `init`, replace at `rotate-kek`).
pub fn put(db: &mut dyn Sql, m: &KekMeta) -> Result<(), StoreError> {
    let a = m.argon2.as_ref();
    db.execute(
        "INSERT INTO vault_meta (id, kek_source, kek_id, key_check, argon2_salt, argon2_m_kib, argon2_t, argon2_p, created_at, kek_rotated_at)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET kek_source = excluded.kek_source, kek_id = excluded.kek_id,
             key_check = excluded.key_check, argon2_salt = excluded.argon2_salt, argon2_m_kib = excluded.argon2_m_kib,
             argon2_t = excluded.argon2_t, argon2_p = excluded.argon2_p, kek_rotated_at = excluded.kek_rotated_at",
        args![
            match (a.is_some(), m.hsm) {
                (true, _) => "passphrase",
                (false, true) => "pkcs11",
                (false, false) => "key-file",
            },
            &m.kek_id,
            &m.key_check,
            a.map(|a| a.salt.clone()),
            a.map(|a| a.memory_kib),
            a.map(|a| a.iterations),
            a.map(|a| a.parallelism),
            m.created_at,
            m.kek_rotated_at,
        ],
    )?;
    Ok(())
}

/// Public record of one of the vault's internal keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKey {
    pub purpose: String,
    pub key_id: String,
    pub public_key: Option<Vec<u8>>,
    pub created_at: i64,
}

pub fn put_vault_key(db: &mut dyn Sql, k: &VaultKey) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO vault_keys (purpose, key_id, public_key, created_at) VALUES (?1, ?2, ?3, ?4)",
        args![&k.purpose, &k.key_id, k.public_key.as_ref(), k.created_at],
    )
    .map_err(|e| StoreError::map_unique(e, || format!("vault key {}", k.purpose)))?;
    Ok(())
}

pub fn vault_key(db: &mut dyn Sql, purpose: &str) -> Result<Option<VaultKey>, StoreError> {
    query_one(
        db,
        "SELECT purpose, key_id, public_key, created_at FROM vault_keys WHERE purpose = ?1",
        args![purpose],
        |r| Ok(VaultKey { purpose: r.get(0)?, key_id: r.get(1)?, public_key: r.get(2)?, created_at: r.get(3)? }),
    )
}
