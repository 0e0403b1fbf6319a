//! Moving a vault between storage backends: its SQLite files into an empty PostgreSQL
//! database (`storage migrate`), and a PostgreSQL vault out into new SQLite files (`storage
//! export`, for a drill or to leave PostgreSQL).
//!
//! Invariants:
//! - **Recorded before it happens**: the move's record is appended to the source's audit log
//!   first (signed, with a checkpoint), so the copy holds it; a record that cannot be written
//!   means no copy. The target is checked empty before that, so a move refused for a full
//!   target leaves no record of a copy that never happened.
//! - **Byte for byte**: sealed blobs, events, checkpoints and hand-overs are copied as
//!   stored (`store::copy`, `audit::transfer`), compared table by table (rows and SHA-256)
//!   before anything commits. The master key opens the source first (a wrong key moves
//!   nothing) and is never needed by the copy itself.
//! - **All or nothing**: into PostgreSQL, the vault and the audit log are one transaction;
//!   out to files, a failure removes the files this move created.
//! - **Verified at the end**: the copied audit log is verified where it landed, from the
//!   first key of its hand-over chain, and must end at this vault's audit key.

use std::path::Path;

use crate::audit::{AuditError, AuditLocation, AuditLog, AuditRecord, VerifyOptions, VerifyReport};
use crate::crypto::MasterKeySource;
use crate::store::copy::{CopyReport, copy_vault, copy_vault_and, digest_vault};
use crate::store::{PostgresOptions, Store, StoreError};
use crate::vault::{Vault, VaultError};

/// What a move copied, and the verification of the audit log where it landed.
#[derive(Debug)]
pub struct MoveReport {
    pub vault: CopyReport,
    pub audit: CopyReport,
    pub verified: VerifyReport,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0} exists: an export writes new files only")]
    Exists(String),
    #[error("the audit log copied to {target} does not verify: {detail}")]
    NotVerified { target: String, detail: String },
}

/// Copies the vault at `db` and its audit log at `audit_db` into the empty PostgreSQL
/// database `target`. The files are left as they were, plus `record` at the end of the log.
pub fn migrate_to_postgres(
    db: &Path,
    audit_db: &Path,
    master: &MasterKeySource,
    target: &PostgresOptions,
    record: AuditRecord,
) -> Result<MoveReport, MoveError> {
    let key = Vault::unlock(db, master)?.audit_signing_key()?;
    let mut pg = Store::connect_postgres(target)?;
    crate::audit::prepare_postgres(target)?;
    refuse_unless_empty(&mut pg, &AuditLocation::Postgres(target.clone()))?;
    AuditLog::append_blocking_once(audit_db, &key, record)?;
    let mut src = Store::open(db)?;
    let (vault, audit) = copy_vault_and(&mut src, &mut pg, |tx, name| -> Result<CopyReport, MoveError> {
        Ok(crate::audit::copy_file_into(audit_db, tx, name)?)
    })?;
    let verified = verify_where_it_landed(&AuditLocation::Postgres(target.clone()), &key)?;
    Ok(MoveReport { vault, audit, verified })
}

/// Copies the vault in the PostgreSQL database `source` and its audit log into new SQLite
/// files `db` and `audit_db` (neither may exist). `record` is appended to the source's log
/// first.
pub fn export_to_sqlite(
    source: &PostgresOptions,
    master: &MasterKeySource,
    db: &Path,
    audit_db: &Path,
    record: AuditRecord,
) -> Result<MoveReport, MoveError> {
    for p in [db, audit_db] {
        if p.exists() {
            return Err(MoveError::Exists(p.display().to_string()));
        }
    }
    let key = Vault::unlock_postgres(source, master)?.audit_signing_key()?;
    AuditLog::append_blocking_once_postgres(source, &key, record)?;
    let copied = (|| -> Result<MoveReport, MoveError> {
        let mut pg = Store::connect_postgres(source)?;
        let mut out = Store::create(db)?;
        let vault = copy_vault(&mut pg, &mut out)?;
        drop(out);
        let to = AuditLocation::File(audit_db.to_owned());
        let audit = crate::audit::copy_audit(&AuditLocation::Postgres(source.clone()), &to)?;
        let verified = verify_where_it_landed(&to, &key)?;
        Ok(MoveReport { vault, audit, verified })
    })();
    if copied.is_err() {
        for p in [db, audit_db] {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
        }
    }
    copied
}

/// Refuses a target holding any vault row or audit event, naming the first table.
fn refuse_unless_empty(pg: &mut Store, audit: &AuditLocation) -> Result<(), MoveError> {
    let target = pg.describe();
    let vault = digest_vault(pg)?;
    let audit = crate::audit::digest_audit(audit)?;
    if let Some(t) = vault.tables.iter().chain(&audit.tables).find(|t| t.rows > 0) {
        return Err(StoreError::NotEmpty { target, table: t.table }.into());
    }
    Ok(())
}

fn verify_where_it_landed(at: &AuditLocation, key: &ed25519_dalek::SigningKey) -> Result<VerifyReport, MoveError> {
    let own = key.verifying_key();
    let root = crate::audit::chain_root_at(at, &own)?;
    let report = crate::audit::verify_at(at, &root, &VerifyOptions::default())?;
    let own_id = crate::crypto::audit_key_id(own.as_bytes());
    if !report.ok || report.key_ids.last() != Some(&own_id) {
        return Err(MoveError::NotVerified { target: at.describe(), detail: report.detail });
    }
    Ok(report)
}
