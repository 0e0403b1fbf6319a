//! Where the audit writer appends: its own SQLite file, or the shared PostgreSQL database
//! (one global chain for every replica). A transaction here is the unit of one group commit.
//!
//! Invariants: on SQLite a write transaction is `BEGIN IMMEDIATE` (one writer per file, other
//! processes wait on the file lock); on PostgreSQL it holds the advisory lock
//! [`AUDIT_LOCK`] for its whole life, so the head read inside it is the head it appends to,
//! whichever replica wrote last. A transaction dropped without commit rolls back (and on
//! PostgreSQL releases the lock at once).

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::AuditError;
use crate::store::PostgresOptions;
use crate::store::pg_conn::{PgConn, PgTx};
use crate::store::pg_pool::PgPool;
use crate::store::postgres::AUDIT_LOCK;
use crate::store::sql::{Backend, Sql};

/// The audit writer's connection.
pub(crate) enum AuditDb {
    Sqlite(Connection),
    Postgres(Box<PgConn>),
}

/// One open write transaction of [`AuditDb`].
pub(crate) enum AuditTx<'a> {
    Sqlite(Transaction<'a>),
    Postgres(PgTx<'a>),
}

impl AuditDb {
    /// Connects to the audit tables on PostgreSQL, migrating them if needed.
    pub(crate) fn connect_postgres(options: &PostgresOptions) -> Result<AuditDb, AuditError> {
        Ok(AuditDb::Postgres(Box::new(PgConn::connect(options, "audit", super::db::AUDIT_POSTGRES)?)))
    }

    /// Connects to audit tables that must exist already (a reader: creates nothing).
    pub(crate) fn open_postgres_existing(options: &PostgresOptions) -> Result<AuditDb, AuditError> {
        Ok(AuditDb::Postgres(Box::new(PgConn::connect_existing(options, "audit", super::db::AUDIT_POSTGRES)?)))
    }

    /// A read-only snapshot (PostgreSQL `REPEATABLE READ`; SQLite: a read transaction).
    pub(crate) fn snapshot(&mut self) -> Result<AuditTx<'_>, AuditError> {
        Ok(match self {
            AuditDb::Sqlite(c) => AuditTx::Sqlite(c.transaction_with_behavior(TransactionBehavior::Deferred)?),
            AuditDb::Postgres(c) => AuditTx::Postgres(c.snapshot()?),
        })
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            AuditDb::Sqlite(_) => Backend::Sqlite,
            AuditDb::Postgres(_) => Backend::Postgres,
        }
    }

    /// The connection for reads outside a transaction.
    pub(crate) fn sql(&mut self) -> Result<&mut dyn Sql, AuditError> {
        Ok(match self {
            AuditDb::Sqlite(c) => c,
            AuditDb::Postgres(c) => c.ready()?,
        })
    }

    /// Opens a write transaction (see the module docs).
    pub(crate) fn begin(&mut self) -> Result<AuditTx<'_>, AuditError> {
        Ok(match self {
            AuditDb::Sqlite(c) => AuditTx::Sqlite(c.transaction_with_behavior(TransactionBehavior::Immediate)?),
            AuditDb::Postgres(c) => {
                let mut tx = c.locked_tx(AUDIT_LOCK)?;
                // Every replica's appends wait for this lock: a holder that falls silent (cut
                // off, stalled) is ended by the server after this, not after the session's
                // longer limit. A writer's own gaps between statements are milliseconds.
                tx.execute("SET LOCAL idle_in_transaction_session_timeout = '3s'", &[])?;
                AuditTx::Postgres(tx)
            }
        })
    }
}

impl AuditTx<'_> {
    pub(crate) fn sql(&mut self) -> &mut dyn Sql {
        match self {
            AuditTx::Sqlite(t) => t,
            AuditTx::Postgres(t) => t,
        }
    }

    /// Commits; on PostgreSQL after the synchronous standby (if any) has it.
    pub(crate) fn commit(self) -> Result<(), AuditError> {
        match self {
            AuditTx::Sqlite(t) => t.commit()?,
            AuditTx::Postgres(t) => t.commit()?,
        }
        Ok(())
    }
}

/// Where this process's audit queries read: a connection of their own to the file, or one
/// from the pool of PostgreSQL reader connections (`store::pg_pool`: at most
/// `storage.postgres.pool_size`, each call waits a bounded time for one).
#[derive(Clone)]
pub(crate) enum Readers {
    File(std::path::PathBuf),
    Pool(std::sync::Arc<PgPool>),
}

impl Readers {
    /// A pool of reader connections to the audit tables at `options`.
    pub(crate) fn postgres(options: &PostgresOptions) -> Readers {
        Readers::Pool(PgPool::new(options, "audit", super::db::AUDIT_POSTGRES, "audit reader connections"))
    }

    /// Runs `f` on a reader (blocking: call it on a blocking thread). On PostgreSQL the
    /// connection goes back to the pool afterwards.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, AuditError>) -> Result<T, AuditError> {
        match self {
            Readers::File(path) => f(&mut &super::db::open_reader(path)?),
            Readers::Pool(pool) => f(pool.get()?.conn()?),
        }
    }
}
