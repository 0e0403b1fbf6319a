//! SQLite: connection set-up, migrations, and the repositories.
//!
//! Architecture invariant: `store` never sees a plaintext secret. It reads and writes
//! sealed blobs ([`crate::crypto::Sealed`]), hints and fingerprints only.
//!
//! Connection set-up (every connection): WAL journal (readers never block the writer),
//! `synchronous=FULL` (a commit survives power loss, DESIGN.md invariant 6), foreign keys
//! on, `secure_delete` on (deleted rows are overwritten with zeros in the database file,
//! which is what makes deleting a DEK destroy it), and a busy timeout so a second process
//! (a CLI next to a running server) waits instead of failing at once.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction};

pub mod integrations;
pub mod lock;
pub mod meta;
pub mod onboarding;
pub mod secrets;
pub mod sink_cursors;
pub mod tenants;

/// A named SQL migration, compiled in.
pub type Migration = (&'static str, &'static str);

/// The vault database's migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[Migration] = &[
    ("0001_initial", include_str!("../../migrations/0001_initial.sql")),
    ("0002_onboarding", include_str!("../../migrations/0002_onboarding.sql")),
    ("0003_onboarding_trust", include_str!("../../migrations/0003_onboarding_trust.sql")),
    ("0004_subscription_key_slots", include_str!("../../migrations/0004_subscription_key_slots.sql")),
    ("0005_hsm_master_key", include_str!("../../migrations/0005_hsm_master_key.sql")),
    ("0006_audit_sink_cursors", include_str!("../../migrations/0006_audit_sink_cursors.sql")),
];

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No database file at the path (and the command does not create one).
    #[error("no database at {path}: run `pogo-vault init --db {path}` first")]
    Missing { path: String },
    /// The file exists but holds no initialised vault.
    #[error("{path} is not an initialised pogo-vault database: run `pogo-vault init` first")]
    NotInitialized { path: String },
    /// `init` on a database that is already initialised.
    #[error("{path} is already initialised; refusing to initialise it again")]
    AlreadyInitialized { path: String },
    /// The database was written by a newer pogo-vault.
    #[error("database schema version {found} is newer than this binary understands ({supported}): upgrade pogo-vault")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The row asked for does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// A row with that key exists already.
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// A stored value is not what this binary wrote (hand-edited or corrupted row).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database file could not be created.
    #[error("cannot create {path}: {reason}")]
    Create { path: String, reason: String },
    /// SQLite failed (I/O, disk full, locked beyond the busy timeout, ...).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    pub(crate) fn map_unique(e: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
        match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                StoreError::AlreadyExists { what: what() }
            }
            e => StoreError::Sqlite(e),
        }
    }
}

/// An open database connection with the schema migrated.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    /// Opens an existing database (never creates one) and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing { path: path.display().to_string() });
        }
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
    }

    /// Opens or creates the database file with mode 0600 (for `init` and `restore`).
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        // Create the file ourselves so it never exists with looser permissions; SQLite gives
        // the -wal and -shm files the same mode as the database file.
        create_private_file(path)?;
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<Store, StoreError> {
        let conn = open_connection(path, flags, MIGRATIONS)?;
        Ok(Store { conn, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Starts an immediate transaction: takes the write lock up front, so two writers
    /// never deadlock upgrading read locks.
    pub fn write_tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
    }

    /// Moves everything in the WAL into the database file and truncates the WAL. Called
    /// after destroying keys, so old pages holding a destroyed DEK do not linger in the WAL.
    pub fn checkpoint_truncate(&self) -> Result<(), StoreError> {
        // A reader holding the WAL (a replication tool, a backup, a CLI beside the server)
        // makes TRUNCATE wait; do not hold the caller for the full busy timeout: try
        // briefly, and say so when it could not complete (the next checkpoint will).
        self.conn.busy_timeout(Duration::from_millis(200))?;
        let busy: rusqlite::Result<i64> = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        if busy? != 0 {
            tracing::warn!(
                db = %self.path.display(),
                "WAL could not be truncated now (a reader holds it); destroyed key pages stay in the WAL until the next checkpoint"
            );
        }
        Ok(())
    }

    /// The schema version of this database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

/// The schema version this binary writes.
pub fn supported_schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Opens a SQLite file with the connection set-up described in the module docs and applies
/// `migrations` (for the vault database, and for the audit database with its own list).
/// Use [`create_private_file`] first when the file may not exist yet.
pub fn open_connection(path: &Path, flags: OpenFlags, migrations: &[Migration]) -> Result<Connection, StoreError> {
    let mut conn = open_unmigrated(path, flags)?;
    migrate(&mut conn, migrations)?;
    Ok(conn)
}

/// [`open_connection`] without the migrations: for read-only readers, which accept any
/// schema version they can read and check it themselves.
pub fn open_unmigrated(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// Creates `path` with mode 0600 if it does not exist (never loosens an existing file).
pub fn create_private_file(path: &Path) -> Result<(), StoreError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(|_| ())
        .map_err(|e| StoreError::Create { path: path.display().to_string(), reason: e.to_string() })
}

fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, (name, sql)) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(migration = name, "applied schema migration");
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `Some(row)` or `None`, with other errors passed on.
pub(crate) fn optional<T>(r: rusqlite::Result<T>) -> Result<Option<T>, StoreError> {
    Ok(r.optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_sets_mode_pragmas_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.db");
        let s = Store::create(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(s.schema_version().unwrap(), supported_schema_version());
        let mode: String = s.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "FULL");
        let fk: i64 = s.conn().query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
        let sd: i64 = s.conn().query_row("PRAGMA secure_delete", [], |r| r.get(0)).unwrap();
        assert_eq!(sd, 1);
    }

    #[test]
    fn open_refuses_missing_and_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.db");
        assert!(matches!(Store::open(&p), Err(StoreError::Missing { .. })));
        assert!(!p.exists(), "open must not create the file");
        let s = Store::create(&p).unwrap();
        s.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        let err = Store::open(&p).unwrap_err();
        assert!(err.to_string().contains("newer than this binary"), "{err}");
    }
}
