//! `sealed_secrets`: every secret the vault holds, as two opaque blobs per row.

use super::sql::{Sql, args};
use super::{StoreError, now_ms, query_all, query_one};
use crate::crypto::{Purpose, Sealed};

/// Where a sealed row belongs; mirrors [`crate::crypto::SealContext`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub purpose: Purpose,
    pub owner: String,
    pub version: i64,
}

pub fn put(db: &mut dyn Sql, r: &SecretRef, sealed: &Sealed, kek_id: &str) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO sealed_secrets (purpose, owner, version, wrapped_dek, ciphertext, kek_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![r.purpose.as_str(), &r.owner, r.version, &sealed.wrapped_dek, &sealed.ciphertext, kek_id, now_ms()],
    )
    .map_err(|e| StoreError::map_unique(e, || format!("{} {} version {}", r.purpose.as_str(), r.owner, r.version)))?;
    Ok(())
}

pub fn get(db: &mut dyn Sql, r: &SecretRef) -> Result<Option<Sealed>, StoreError> {
    query_one(
        db,
        "SELECT wrapped_dek, ciphertext FROM sealed_secrets WHERE purpose = ?1 AND owner = ?2 AND version = ?3",
        args![r.purpose.as_str(), &r.owner, r.version],
        |row| Ok(Sealed { wrapped_dek: row.get(0)?, ciphertext: row.get(1)? }),
    )
}

/// Destroys every version of an owner's secrets of one purpose (crypto-shredding: with
/// `secure_delete` on, SQLite overwrites the wrapped DEK's bytes in the file).
pub fn delete_all(db: &mut dyn Sql, purpose: Purpose, owner: &str) -> Result<usize, StoreError> {
    db.execute("DELETE FROM sealed_secrets WHERE purpose = ?1 AND owner = ?2", args![purpose.as_str(), owner])
}

/// Destroys every version but `keep`.
pub fn delete_other_versions(db: &mut dyn Sql, purpose: Purpose, owner: &str, keep: i64) -> Result<usize, StoreError> {
    db.execute(
        "DELETE FROM sealed_secrets WHERE purpose = ?1 AND owner = ?2 AND version <> ?3",
        args![purpose.as_str(), owner, keep],
    )
}

/// All rows with their wrapped DEKs, for `rotate-kek`.
pub fn all_wrapped(db: &mut dyn Sql) -> Result<Vec<(SecretRef, Vec<u8>)>, StoreError> {
    query_all(
        db,
        "SELECT purpose, owner, version, wrapped_dek FROM sealed_secrets ORDER BY purpose, owner, version",
        args![],
        |r| {
            let purpose = parse_purpose(&r.get::<String>(0)?)?;
            Ok((SecretRef { purpose, owner: r.get(1)?, version: r.get(2)? }, r.get(3)?))
        },
    )
}

pub fn update_wrapped(db: &mut dyn Sql, r: &SecretRef, wrapped_dek: &[u8], kek_id: &str) -> Result<(), StoreError> {
    let n = db.execute(
        "UPDATE sealed_secrets SET wrapped_dek = ?4, kek_id = ?5 WHERE purpose = ?1 AND owner = ?2 AND version = ?3",
        args![r.purpose.as_str(), &r.owner, r.version, wrapped_dek, kek_id],
    )?;
    if n != 1 {
        return Err(StoreError::NotFound { what: format!("{} {} version {}", r.purpose.as_str(), r.owner, r.version) });
    }
    Ok(())
}

fn parse_purpose(s: &str) -> Result<Purpose, StoreError> {
    Ok(match s {
        "client-key" => Purpose::ClientKey,
        "subscription-key" => Purpose::SubscriptionKey,
        "fingerprint-key" => Purpose::FingerprintKey,
        "audit-signing-key" => Purpose::AuditSigningKey,
        other => return Err(StoreError::Corrupt(format!("unknown secret purpose {other:?}"))),
    })
}
