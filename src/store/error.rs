//! What fails in the store, on either backend.

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
    /// A statement broke a constraint (a unique key, a check) on either backend.
    #[error("constraint failed: {0}")]
    Constraint(String),
    /// PostgreSQL refused (a login, a permission, a certificate, a statement).
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
    /// The database is out of reach for now (a lost connection, a failover under way, a
    /// timeout, a lock conflict): worth trying again.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A commit got no answer: it may or may not have landed (look before retrying: a
    /// retry may apply the change twice).
    #[error("the database did not confirm the commit ({0}): the change may or may not have been applied")]
    CommitUnknown(String),
    /// A copy's target already holds a vault (or part of one).
    #[error("{target} is not empty (table {table} has rows): copy only into a new, empty database")]
    NotEmpty { target: String, table: &'static str },
    /// A storage setting is wrong; `field` names it.
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
}

impl StoreError {
    /// A broken constraint as "`what` already exists"; other errors as they are.
    pub(crate) fn map_unique(e: StoreError, what: impl FnOnce() -> String) -> StoreError {
        match e {
            StoreError::Constraint(_) => StoreError::AlreadyExists { what: what() },
            e => e,
        }
    }

    /// The database could not be reached or did not answer in time: worth trying again
    /// (another replica, or after a failover), unlike a refused or corrupt row.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Sqlite(_) | StoreError::Unavailable(_))
    }
}
