//! Consistent backups of a serving vault, and restore into a fresh place.
//!
//! A backup is two files: `FILE` (the vault database: sealed keys, tenants, integrations,
//! onboarding sessions) and `FILE.audit` (the audit database). Each is copied with SQLite's
//! online backup API in a single step, which reads one consistent snapshot while the server
//! keeps writing (WAL readers never block the writer). The vault database is copied first
//! and the audit database second, so every change in the vault copy has its audit record in
//! the audit copy (a change is acknowledged only after its record is durable).
//!
//! What a backup does NOT contain: the master key. Without it nothing in the backup opens;
//! keep the key in the secret store, never beside the backups.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::store::{StoreError, create_private_file};

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A target file exists already; backups and restores never overwrite.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(String),
    /// A source file is missing.
    #[error("no database at {0}")]
    Missing(String),
    /// The operation's audit record could not be made durable: nothing was written.
    #[error("the audit record of this {what} could not be written ({reason}); nothing was written")]
    NotRecorded { what: &'static str, reason: String },
    /// The directory to restore into could not be created.
    #[error("cannot create the directory {path}: {reason}")]
    CreateDir { path: String, reason: String },
    /// A restored file could not be moved into place.
    #[error("cannot move the restored file into {path}: {reason}")]
    Move { path: String, reason: String },
    /// The copy failed its integrity check.
    #[error("{path} failed its integrity check: {detail}")]
    Integrity { path: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Where a backup's two files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFiles {
    pub vault: PathBuf,
    pub audit: PathBuf,
}

impl BackupFiles {
    pub fn at(out: &Path) -> Self {
        Self { vault: out.to_owned(), audit: PathBuf::from(format!("{}.audit", out.display())) }
    }
}

/// What was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub files: BackupFiles,
    pub tenants: i64,
    pub audit_events: i64,
}

/// Copies `src` into a new file `dst` (mode 0600) in one consistent snapshot and returns
/// `count_sql`'s answer on the copy. The count is read through the copy's own connection,
/// which is then closed: the last connection of a WAL database removes its `-wal` and
/// `-shm` files, so the copy is one self-contained file (a second, read-only connection
/// opened afterwards would leave both behind, as backups once did).
fn copy(src: &Path, dst: &Path, count_sql: &str) -> Result<i64, BackupError> {
    if !src.exists() {
        return Err(BackupError::Missing(src.display().to_string()));
    }
    if dst.exists() {
        return Err(BackupError::Exists(dst.display().to_string()));
    }
    let source = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(std::time::Duration::from_secs(5))?;
    create_private_file(dst)?;
    let result = (|| {
        let mut target = Connection::open(dst)?;
        {
            let backup = Backup::new(&source, &mut target)?;
            // All pages in one step: one read snapshot, so concurrent writes never restart it.
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    StepResult::More => continue,
                    StepResult::Busy | StepResult::Locked => std::thread::sleep(std::time::Duration::from_millis(20)),
                    _ => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
        let check: String = target.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(BackupError::Integrity { path: dst.display().to_string(), detail: check });
        }
        let n: i64 = target.query_row(count_sql, [], |r| r.get(0))?;
        // Everything into the main file, so the copy is one self-contained file.
        target.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        target.close().map_err(|(_, e)| e)?;
        Ok(n)
    })();
    if result.is_err() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", dst.display()));
        }
    }
    result
}

/// Creates the missing directories of `files` with mode 0700 (they will hold sealed keys and
/// the audit log): a backup or restore into a new place needs no `mkdir` first.
pub fn create_missing_dirs(files: &[&Path]) -> Result<(), BackupError> {
    for dir in files.iter().filter_map(|f| f.parent()) {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| BackupError::CreateDir { path: dir.display().to_string(), reason: e.to_string() })?;
        }
    }
    Ok(())
}

const COUNT_TENANTS: &str = "SELECT COUNT(*) FROM tenants";
const COUNT_EVENTS: &str = "SELECT COUNT(*) FROM events";

fn count(path: &Path, sql: &str) -> Result<i64, BackupError> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(c.query_row(sql, [], |r| r.get(0))?)
}

/// Backs up the vault database, then the audit database, next to `out`. `record` makes the
/// backup's audit record durable first (so the audit copy holds it); if it cannot, nothing
/// is written.
pub fn backup(
    db: &Path,
    audit_db: &Path,
    out: &Path,
    record: impl FnOnce() -> Result<(), String>,
) -> Result<BackupReport, BackupError> {
    let files = BackupFiles::at(out);
    for p in [&files.vault, &files.audit] {
        if p.exists() {
            return Err(BackupError::Exists(p.display().to_string()));
        }
    }
    if !db.exists() {
        return Err(BackupError::Missing(db.display().to_string()));
    }
    create_missing_dirs(&[&files.vault])?;
    record().map_err(|reason| BackupError::NotRecorded { what: "backup", reason })?;
    let tenants = copy(db, &files.vault, COUNT_TENANTS)?;
    let audit_events = match copy(audit_db, &files.audit, COUNT_EVENTS) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&files.vault);
            return Err(e);
        }
    };
    Ok(BackupReport { tenants, audit_events, files })
}

/// Restores a backup into `db` and `audit_db`, which must not exist yet. Both are copied
/// under staging names first; `record(staged vault, staged audit)` appends the restore's
/// audit record to the staged audit database; only then are the files renamed into place
/// (audit first), so a restored vault never appears without its record. Any failure removes
/// what was written.
pub fn restore(
    from: &Path,
    db: &Path,
    audit_db: &Path,
    record: impl FnOnce(&Path, &Path) -> Result<(), String>,
) -> Result<BackupReport, BackupError> {
    let files = BackupFiles::at(from);
    for p in [db, audit_db] {
        if p.exists() {
            return Err(BackupError::Exists(p.display().to_string()));
        }
    }
    let staged = |p: &Path| PathBuf::from(format!("{}.restoring", p.display()));
    let (staged_db, staged_audit) = (staged(db), staged(audit_db));
    let remove = |p: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    };
    // Leftovers of an interrupted restore are ours to clear: they were never in place.
    remove(&staged_db);
    remove(&staged_audit);
    create_missing_dirs(&[db, audit_db])?;
    let result = (|| {
        copy(&files.vault, &staged_db, COUNT_TENANTS)?;
        copy(&files.audit, &staged_audit, COUNT_EVENTS)?;
        record(&staged_db, &staged_audit).map_err(|reason| BackupError::NotRecorded { what: "restore", reason })?;
        let moved = |from: &Path, to: &Path| {
            std::fs::rename(from, to)
                .map_err(|e| BackupError::Move { path: to.display().to_string(), reason: e.to_string() })
        };
        moved(&staged_audit, audit_db)?;
        moved(&staged_db, db)?;
        Ok(())
    })();
    if let Err(e) = result {
        remove(&staged_db);
        remove(&staged_audit);
        if !db.exists() {
            remove(audit_db);
        }
        return Err(e);
    }
    Ok(BackupReport { tenants: count(db, COUNT_TENANTS)?, audit_events: count(audit_db, COUNT_EVENTS)?, files })
}
