//! Moving an audit log between backends, row for row: a SQLite file into PostgreSQL (moving
//! over), and PostgreSQL into a SQLite file (an export, a drill, and what `audit verify
//! --postgres-url` verifies). Events, checkpoints, hand-overs, archive anchors and their
//! statements keep every byte, so every hash and signature holds wherever they land.
//!
//! Invariants: the source is read in one snapshot (SQLite: one read transaction; PostgreSQL:
//! `REPEATABLE READ`), so a writer appending meanwhile is either wholly in the copy or not at
//! all; the target must hold no audit rows and is written in one transaction, compared with
//! the source table by table (rows and SHA-256 over every value, `store::copy`) before it
//! commits. Copied into PostgreSQL by [`copy_audit`], the target transaction holds the chain's
//! advisory lock; by `storage migrate` (with the vault, in the vault's transaction) the
//! primary key on `sequence` is what keeps a writer from appending beside it (none should
//! run on an empty database). The writer's probe row is not copied (not part of the log).

use std::path::Path;

use super::db::{self, AUDIT_MIGRATIONS};
use super::db_backend::AuditDb;
use super::log::AuditLocation;
use super::verify_report::{VerifyOptions, VerifyReport};
use super::{AuditError, verify_with};
use crate::store::PostgresOptions;
use crate::store::copy::{CopyReport, Table, copy_tables, digest_tables};
use crate::store::sql::Sql;

/// Every table of the audit log (schema 5), in the order they are copied.
pub(crate) const AUDIT_TABLES: &[Table] = &[
    Table {
        name: "events",
        columns: "sequence, time_ms, caller, caller_serial, action, tenant_id, key_version, outcome, upstream_status, \
                  token_fingerprint, detail, request_id, peer, prev_hash, hash",
        key: &["sequence"],
    },
    Table { name: "checkpoints", columns: "sequence, head_hash, time_ms, key_id, signature", key: &["sequence"] },
    Table { name: "signing_keys", columns: "key_id, public_key, first_used_ms", key: &["key_id"] },
    Table {
        name: "signing_handovers",
        columns: "sequence, head_hash, time_ms, old_key_id, new_key_id, new_public_key, signature",
        key: &["sequence"],
    },
    Table {
        name: "archives",
        columns: "through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms",
        key: &["through_sequence"],
    },
    Table { name: "archive_statements", columns: "through_sequence, signature", key: &["through_sequence"] },
];

/// Copies the audit log at `from` into `to`, which must hold no audit rows (a SQLite target
/// file is created if missing, mode 0600). Returns what was copied, per table.
pub fn copy_audit(from: &AuditLocation, to: &AuditLocation) -> Result<CopyReport, AuditError> {
    let (source, target) = (from.describe(), to.describe());
    let mut target_db = match to {
        AuditLocation::File(path) => AuditDb::Sqlite(db::open_file(path)?),
        AuditLocation::Postgres(o) => AuditDb::connect_postgres(o)?,
    };
    let mut tx = target_db.begin()?;
    let report = match from {
        AuditLocation::File(path) => copy_file_into(path, tx.sql(), &target)?,
        AuditLocation::Postgres(o) => {
            let mut conn = AuditDb::open_postgres_existing(o)?;
            let mut snapshot = conn.snapshot()?;
            copy_tables(snapshot.sql(), tx.sql(), AUDIT_TABLES, &source, &target)?
        }
    };
    tx.commit()?;
    Ok(report)
}

/// Copies the audit file at `path` into `target` (an open transaction on a database whose
/// audit tables exist and are empty; committed by the caller), comparing before it returns.
pub fn copy_file_into(path: &Path, target: &mut dyn Sql, target_name: &str) -> Result<CopyReport, AuditError> {
    let source = path.display().to_string();
    let conn = db::open_reader(path)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = AUDIT_MIGRATIONS.len() as i64;
    if version != current {
        return Err(AuditError::Unavailable {
            reason: format!(
                "{source} is at audit schema {version}, a copy needs {current}: start the server on it once (it \
                 migrates the file), then copy"
            ),
        });
    }
    let mut snapshot = conn.unchecked_transaction()?;
    Ok(copy_tables(&mut snapshot, target, AUDIT_TABLES, &source, target_name)?)
}

/// Creates the audit tables in a PostgreSQL database if missing (what a writer does at
/// open), so a copy can fill them in the caller's transaction.
pub fn prepare_postgres(options: &PostgresOptions) -> Result<(), AuditError> {
    AuditDb::connect_postgres(options).map(drop)
}

/// The first key of the hand-over chain `at` names, walking back from `own` (not trusted:
/// where a server's own verification starts; an auditor starts from the key they hold).
pub fn chain_root_at(
    at: &AuditLocation,
    own: &ed25519_dalek::VerifyingKey,
) -> Result<ed25519_dalek::VerifyingKey, AuditError> {
    match at {
        AuditLocation::File(path) => super::handover::chain_root(&mut &db::open_reader(path)?, own),
        AuditLocation::Postgres(o) => super::handover::chain_root(AuditDb::open_postgres_existing(o)?.sql()?, own),
    }
}

/// Every audit table's rows and digest at `at` (what [`copy_audit`] compares), to show two
/// copies hold the same log.
pub fn digest_audit(at: &AuditLocation) -> Result<CopyReport, AuditError> {
    Ok(match at {
        AuditLocation::File(path) => digest_tables(&mut &db::open_reader(path)?, AUDIT_TABLES)?,
        AuditLocation::Postgres(o) => {
            digest_tables(AuditDb::open_postgres_existing(o)?.snapshot()?.sql(), AUDIT_TABLES)?
        }
    })
}

/// Verifies the audit log in a PostgreSQL database: one snapshot of it is copied into a
/// SQLite file in a private temporary directory (removed after), which the one verifier
/// ([`super::verify_with`]) then checks, from `root`, the key the auditor holds. Nothing is
/// written to the database.
pub fn verify_postgres(
    options: &crate::store::PostgresOptions,
    root: &ed25519_dalek::VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    with_snapshot_file(options, |file| {
        let mut report = verify_with(file, root, opts)?;
        report.detail = format!("{} (a snapshot of {}, read in one transaction)", report.detail, options.describe());
        Ok(report)
    })
}

/// Runs `f` on a SQLite file holding one snapshot of the audit log in `options`' database,
/// in a private (0700) temporary directory removed afterwards.
pub(crate) fn with_snapshot_file<T>(
    options: &crate::store::PostgresOptions,
    f: impl FnOnce(&std::path::Path) -> Result<T, AuditError>,
) -> Result<T, AuditError> {
    let dir = tempfile::Builder::new()
        .prefix("pogo-vault-audit-")
        .tempdir()
        .map_err(|e| AuditError::Unavailable { reason: format!("cannot make a private temporary directory: {e}") })?;
    let file = dir.path().join("audit.db");
    copy_audit(&AuditLocation::Postgres(options.clone()), &AuditLocation::File(file.clone()))?;
    f(&file)
}

/// [`verify_postgres`] beside the file form, for callers holding a path.
pub fn verify_at(
    at: &AuditLocation,
    root: &ed25519_dalek::VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    match at {
        AuditLocation::File(path) => verify_with(path, root, opts),
        AuditLocation::Postgres(o) => verify_postgres(o, root, opts),
    }
}
