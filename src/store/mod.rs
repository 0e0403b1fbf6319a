//! The vault's storage: SQLite (embedded, the default) or PostgreSQL (several replicas on
//! one database), connection set-up, migrations, and the repositories.
//!
//! Architecture invariant: `store` never sees a plaintext secret. It reads and writes
//! sealed blobs ([`crate::crypto::Sealed`]), hints and fingerprints only.
//!
//! The repositories are written once, against [`sql::Sql`] (a connection or an open
//! transaction on either backend); [`Store`] holds one connection and opens write
//! transactions: SQLite's `IMMEDIATE` (the one writer lock), PostgreSQL's under one advisory
//! lock (`postgres::WRITE_LOCK`), so writes are serial on both.
//!
//! SQLite set-up (every connection): WAL journal (readers never block the writer),
//! `synchronous=FULL` (a commit survives power loss, DESIGN.md invariant 6), foreign keys
//! on, `secure_delete` on (deleted rows are overwritten with zeros in the database file,
//! which is what makes deleting a DEK destroy it), and a busy timeout so a second process
//! (a CLI next to a running server) waits instead of failing at once. PostgreSQL: see
//! [`postgres`].

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub mod changes;
pub mod copy;
mod error;
pub mod integrations;
pub mod lock;
pub mod meta;
pub mod migrations;
pub mod onboarding;
pub(crate) mod pg_conn;
mod pg_connect;
pub(crate) mod pg_pool;
mod pg_tls;
mod pg_values;
pub mod postgres;
pub mod secrets;
pub mod shared;
pub mod sink_cursors;
pub mod sql;
mod sqlite;
pub mod tenants;

pub use error::StoreError;
pub use migrations::Migration;
pub use postgres::PostgresOptions;
pub use sql::{Backend, Sql};

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An open database connection with the schema migrated.
pub struct Store {
    conn: Conn,
}

enum Conn {
    Sqlite { conn: Connection, path: PathBuf },
    Postgres(Box<pg_conn::PgConn>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.describe())
    }
}

/// An open write transaction on either backend: committed by [`Tx::commit`], rolled back
/// when dropped.
pub enum Tx<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres(pg_conn::PgTx<'a>),
}

impl Tx<'_> {
    pub fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.commit()?),
            Tx::Postgres(tx) => tx.commit(),
        }
    }
}

impl Sql for Tx<'_> {
    fn origin(&self) -> Option<&str> {
        match self {
            Tx::Sqlite(_) => None,
            Tx::Postgres(tx) => tx.origin(),
        }
    }
    fn execute(&mut self, sql: &str, args: &[sql::Value]) -> Result<usize, StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.execute(sql, args),
            Tx::Postgres(tx) => tx.execute(sql, args),
        }
    }
    fn query(&mut self, sql: &str, args: &[sql::Value]) -> Result<Vec<sql::Row>, StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.query(sql, args),
            Tx::Postgres(tx) => tx.query(sql, args),
        }
    }
    fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
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
        let conn = open_connection(path, flags, migrations::SQLITE)?;
        Ok(Store { conn: Conn::Sqlite { conn, path: path.to_owned() } })
    }

    /// Connects to a PostgreSQL database and applies pending migrations (an empty database
    /// gets the whole schema).
    pub fn connect_postgres(options: &PostgresOptions) -> Result<Store, StoreError> {
        let conn = pg_conn::PgConn::connect(options, "vault", migrations::POSTGRES)?;
        Ok(Store { conn: Conn::Postgres(Box::new(conn)) })
    }

    pub fn backend(&self) -> Backend {
        match &self.conn {
            Conn::Sqlite { .. } => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Where the vault is kept, for messages: the SQLite file, or PostgreSQL's hosts and
    /// database (never a password).
    /// What this store's change notifications carry (PostgreSQL), for its replica's own
    /// change feed to skip them (`changes::ChangeFeed::start_ignoring`).
    pub fn change_origin(&self) -> Option<String> {
        match &self.conn {
            Conn::Sqlite { .. } => None,
            Conn::Postgres(pg) => Some(pg.origin().to_owned()),
        }
    }

    pub fn describe(&self) -> String {
        match &self.conn {
            Conn::Sqlite { path, .. } => path.display().to_string(),
            Conn::Postgres(pg) => pg.describe(),
        }
    }

    /// The SQLite file, when the vault is kept in one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.conn {
            Conn::Sqlite { path, .. } => Some(path),
            Conn::Postgres(_) => None,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, online backup).
    pub fn sqlite(&self) -> Option<&Connection> {
        match &self.conn {
            Conn::Sqlite { conn, .. } => Some(conn),
            Conn::Postgres(_) => None,
        }
    }

    /// The connection, for reads and single statements (PostgreSQL: connected again first
    /// if the server closed it).
    pub fn db(&mut self) -> Result<&mut dyn Sql, StoreError> {
        Ok(match &mut self.conn {
            Conn::Sqlite { conn, .. } => conn,
            Conn::Postgres(pg) => pg.ready()?,
        })
    }

    /// Starts a write transaction: SQLite's immediate one (the write lock up front, so two
    /// writers never deadlock upgrading read locks); PostgreSQL's under the vault's write
    /// lock.
    pub fn write_tx(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(match &mut self.conn {
            Conn::Sqlite { conn, .. } => {
                Tx::Sqlite(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
            }
            Conn::Postgres(pg) => Tx::Postgres(pg.write_tx()?),
        })
    }

    /// A read-only snapshot for reads that must agree with each other (a copy): SQLite's
    /// deferred transaction (its snapshot taken at the first read), PostgreSQL's
    /// `REPEATABLE READ READ ONLY`. Dropped, not committed.
    pub fn snapshot(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(match &mut self.conn {
            Conn::Sqlite { conn, .. } => {
                Tx::Sqlite(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?)
            }
            Conn::Postgres(pg) => Tx::Postgres(pg.snapshot()?),
        })
    }

    /// SQLite: moves everything in the WAL into the database file and truncates the WAL.
    /// Called after destroying keys, so old pages holding a destroyed DEK do not linger in
    /// the WAL. PostgreSQL keeps a deleted row's bytes until vacuum (and in its WAL and
    /// backups): nothing to do here (ARCHITECTURE.md, "PostgreSQL").
    pub fn checkpoint_truncate(&self) -> Result<(), StoreError> {
        let Conn::Sqlite { conn, path } = &self.conn else { return Ok(()) };
        // A reader holding the WAL (a replication tool, a backup, a CLI beside the server)
        // makes TRUNCATE wait; do not hold the caller for the full busy timeout: try
        // briefly, and say so when it could not complete (the next checkpoint will).
        conn.busy_timeout(Duration::from_millis(200))?;
        let busy: rusqlite::Result<i64> = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
        conn.busy_timeout(BUSY_TIMEOUT)?;
        if busy? != 0 {
            tracing::warn!(
                db = %path.display(),
                "WAL could not be truncated now (a reader holds it); destroyed key pages stay in the WAL until the next checkpoint"
            );
        }
        Ok(())
    }

    /// The schema version of this database.
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        match &mut self.conn {
            Conn::Sqlite { conn, .. } => Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?),
            Conn::Postgres(pg) => pg.ready()?.schema_version(),
        }
    }
}

/// The schema version this binary writes.
pub fn supported_schema_version() -> i64 {
    migrations::SQLITE.len() as i64
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

/// The first row of a query decoded by `f`, or `None`.
pub(crate) fn query_one<T>(
    db: &mut dyn Sql,
    sql: &str,
    args: &[sql::Value],
    f: impl FnOnce(&sql::Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    db.query_opt(sql, args)?.as_ref().map(f).transpose()
}

/// Every row of a query decoded by `f`.
pub(crate) fn query_all<T>(
    db: &mut dyn Sql,
    sql: &str,
    args: &[sql::Value],
    f: impl Fn(&sql::Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    db.query(sql, args)?.iter().map(f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_sets_mode_pragmas_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.db");
        let mut s = Store::create(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(s.schema_version().unwrap(), supported_schema_version());
        let mode: String = s.sqlite().unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s.sqlite().unwrap().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "FULL");
        let fk: i64 = s.sqlite().unwrap().query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
        let sd: i64 = s.sqlite().unwrap().query_row("PRAGMA secure_delete", [], |r| r.get(0)).unwrap();
        assert_eq!(sd, 1);
    }

    #[test]
    fn open_refuses_missing_and_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.db");
        assert!(matches!(Store::open(&p), Err(StoreError::Missing { .. })));
        assert!(!p.exists(), "open must not create the file");
        let s = Store::create(&p).unwrap();
        s.sqlite().unwrap().pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        let err = Store::open(&p).unwrap_err();
        assert!(err.to_string().contains("newer than this binary"), "{err}");
    }
}
