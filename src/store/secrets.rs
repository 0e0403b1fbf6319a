//! `sealed_secrets`: every secret the vault holds, as two opaque blobs per row.

use rusqlite::{Connection, params};

use super::{StoreError, now_ms, optional};
use crate::crypto::{Purpose, Sealed};

/// Where a sealed row belongs; mirrors [`crate::crypto::SealContext`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub purpose: Purpose,
    pub owner: String,
    pub version: i64,
}

pub fn put(conn: &Connection, r: &SecretRef, sealed: &Sealed, kek_id: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO sealed_secrets (purpose, owner, version, wrapped_dek, ciphertext, kek_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![r.purpose.as_str(), r.owner, r.version, sealed.wrapped_dek, sealed.ciphertext, kek_id, now_ms()],
    )
    .map_err(|e| StoreError::map_unique(e, || format!("{} {} version {}", r.purpose.as_str(), r.owner, r.version)))?;
    Ok(())
}

pub fn get(conn: &Connection, r: &SecretRef) -> Result<Option<Sealed>, StoreError> {
    optional(conn.query_row(
        "SELECT wrapped_dek, ciphertext FROM sealed_secrets WHERE purpose = ?1 AND owner = ?2 AND version = ?3",
        params![r.purpose.as_str(), r.owner, r.version],
        |row| Ok(Sealed { wrapped_dek: row.get(0)?, ciphertext: row.get(1)? }),
    ))
}

/// Destroys every version of an owner's secrets of one purpose (crypto-shredding: with
/// `secure_delete` on, the wrapped DEK's bytes are overwritten in the file).
pub fn delete_all(conn: &Connection, purpose: Purpose, owner: &str) -> Result<usize, StoreError> {
    Ok(conn.execute("DELETE FROM sealed_secrets WHERE purpose = ?1 AND owner = ?2", params![purpose.as_str(), owner])?)
}

/// Destroys every version but `keep`.
pub fn delete_other_versions(conn: &Connection, purpose: Purpose, owner: &str, keep: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM sealed_secrets WHERE purpose = ?1 AND owner = ?2 AND version <> ?3",
        params![purpose.as_str(), owner, keep],
    )?)
}

/// All rows with their wrapped DEKs, for `rotate-kek`.
pub fn all_wrapped(conn: &Connection) -> Result<Vec<(SecretRef, Vec<u8>)>, StoreError> {
    let mut stmt = conn.prepare("SELECT purpose, owner, version, wrapped_dek FROM sealed_secrets ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, Vec<u8>>(3)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (purpose, owner, version, wrapped) = row?;
        let purpose = parse_purpose(&purpose)?;
        out.push((SecretRef { purpose, owner, version }, wrapped));
    }
    Ok(out)
}

pub fn update_wrapped(conn: &Connection, r: &SecretRef, wrapped_dek: &[u8], kek_id: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE sealed_secrets SET wrapped_dek = ?4, kek_id = ?5 WHERE purpose = ?1 AND owner = ?2 AND version = ?3",
        params![r.purpose.as_str(), r.owner, r.version, wrapped_dek, kek_id],
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
