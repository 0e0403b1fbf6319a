//! The vault's PostgreSQL connection: `tokio-postgres` driven by a small runtime of its
//! own, inside each call, from the blocking threads the store is used on (the vault's
//! methods block; async callers run them on the blocking pool).
//!
//! - **A deadline on every call** ([`PostgresOptions::call_timeout`]) and on connecting:
//!   a server that accepts and then says nothing fails the call `UNAVAILABLE` in bounded
//!   time, and the connection is given up.
//! - **Reconnecting**: a call that finds the connection closed, or gave it up, connects
//!   again first (a restart, a failover: a multi-host URL with
//!   `target_session_attrs=read-write` finds the promoted primary).
//! - **Writes**: every write transaction is `READ COMMITTED` and first takes
//!   [`WRITE_LOCK`]: writes are serial across every replica, as SQLite's one writer makes
//!   them on one machine, and each read-modify-write sees the rows as its own.
//! - **Reads for a copy**: one `REPEATABLE READ, READ ONLY` snapshot.
//! - **Migrations**: one transaction under [`MIGRATE_LOCK`]; `pogo_schema` holds the
//!   version, numbered as SQLite's `user_version` (the lists are in `store::migrations`).
//!   When the schema is current, nothing is created (a role without `CREATE` may run).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::AbortHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Statement};

use super::error::StoreError;
use super::migrations::PostgresMigration;
use super::pg_connect::{configure, connect, session_settings};
use super::pg_values::read_row;
use super::postgres::{MIGRATE_LOCK, PostgresOptions, WRITE_LOCK, failed};
use super::sql::{Backend, Row, Sql, Value, to_postgres_params};

/// A live connection: the client, the runtime its connection task runs on, and that task.
struct Link {
    rt: Rt,
    client: Client,
    task: AbortHandle,
}

/// A runtime shut down without blocking when dropped (the vault may be dropped on an async
/// worker; a hung DNS lookup must not hold an error path).
struct Rt(Option<Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Rt {
    fn new() -> Result<Rt, StoreError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| Rt(Some(rt)))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the PostgreSQL client's runtime: {e}")))
    }

    fn get(&self) -> Result<&Runtime, StoreError> {
        self.0.as_ref().ok_or_else(|| StoreError::Unavailable("PostgreSQL: not connected".into()))
    }
}

/// The vault's connection, its prepared statements, and how to connect again.
pub(crate) struct PgConn {
    link: Option<Link>,
    statements: HashMap<String, Statement>,
    /// A call gave the connection up (no answer in time): connect again before the next.
    broken: bool,
    options: PostgresOptions,
    /// Whose schema this connection checks: its row in `pogo_schema` (`vault`, `audit`).
    component: &'static str,
    supported: i64,
    /// What this connection's change notifications carry (`Sql::origin`).
    origin: String,
    /// Counts the server sessions this connection has had: it moves on every reconnect, so
    /// a holder of a session-level lock (a sink's lease) knows the lock went with the old one.
    session: u64,
}

/// A random id for a connection's change notifications.
fn new_origin() -> String {
    let mut b = [0u8; 8];
    // Without randomness the id is still unique in this process (the address of `b` and the
    // time); it only decides which notifications a replica skips as its own.
    if getrandom::fill(&mut b).is_err() {
        b = (std::ptr::addr_of!(b) as u64 ^ now_ms() as u64).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What one call borrows of a [`PgConn`].
struct Parts<'a> {
    origin: &'a str,
    rt: &'a Runtime,
    task: &'a AbortHandle,
    client: &'a mut Client,
    statements: &'a mut HashMap<String, Statement>,
    broken: &'a mut bool,
    timeout: Duration,
}

/// Runs `fut` on `rt` within `timeout`. On a timeout the connection is given up at once:
/// its task is aborted, so the socket closes and the server ends the session (and rolls
/// back whatever it held, the write lock included) instead of keeping it until this
/// replica's next call. A connection the server closed ends its task by itself
/// (`Client::is_closed`); a server error (a lock timeout, a conflict) leaves it usable.
fn run<T>(
    rt: &Runtime,
    task: &AbortHandle,
    broken: &mut bool,
    timeout: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    // The timer is made inside the runtime (it needs its clock).
    match block_on(rt, async { tokio::time::timeout(timeout, fut).await }) {
        Ok(r) => r,
        Err(_) => {
            *broken = true;
            task.abort();
            block_on(rt, tokio::task::yield_now());
            Err(StoreError::Unavailable(format!("PostgreSQL did not answer within {} s", timeout.as_secs())))
        }
    }
}

/// `rt.block_on(fut)` from any thread: the vault's calls run on blocking threads, but one
/// made on a worker of a multi-threaded runtime (a test, a future caller) would make tokio
/// refuse a nested `block_on`; there the worker hands its other tasks off first
/// (`block_in_place`), and blocks as a SQLite call would.
fn block_on<F: Future>(rt: &Runtime, fut: F) -> F::Output {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi { tokio::task::block_in_place(|| rt.block_on(fut)) } else { rt.block_on(fut) }
}

fn pg<T>(r: Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
    r.map_err(|e| failed(&e))
}

impl Link {
    fn open(o: &PostgresOptions) -> Result<Link, StoreError> {
        let (cfg, tls, deadline) = configure(o)?;
        let guard = Rt::new()?;
        let rt = guard.get()?;
        let (client, conn) = block_on(rt, connect(&cfg, &tls, deadline))?;
        let task = rt.spawn(async move { drop(conn.await) }).abort_handle();
        let settings = session_settings(o);
        let mut broken = false;
        run(rt, &task, &mut broken, o.call_timeout(), async { pg(client.batch_execute(&settings).await) })?;
        Ok(Link { rt: guard, client, task })
    }
}

impl PgConn {
    /// A new connection for `component`, whose schema `migrations` end at.
    fn open(
        options: &PostgresOptions,
        component: &'static str,
        migrations: &[PostgresMigration],
    ) -> Result<PgConn, StoreError> {
        Ok(PgConn {
            link: Some(Link::open(options)?),
            statements: HashMap::new(),
            broken: false,
            options: options.clone(),
            component,
            supported: migrations.last().map_or(0, |m| m.version),
            origin: new_origin(),
            session: 0,
        })
    }

    /// Connects and applies pending migrations.
    pub(crate) fn connect(
        options: &PostgresOptions,
        component: &'static str,
        migrations: &[PostgresMigration],
    ) -> Result<PgConn, StoreError> {
        let mut conn = Self::open(options, component, migrations)?;
        conn.migrate(migrations)?;
        Ok(conn)
    }

    /// Connects to a database whose schema must be there already, at this version: for
    /// readers, which create nothing (an empty database is not a log to read).
    pub(crate) fn connect_existing(
        options: &PostgresOptions,
        component: &'static str,
        migrations: &[PostgresMigration],
    ) -> Result<PgConn, StoreError> {
        let mut conn = Self::open(options, component, migrations)?;
        let supported = conn.supported;
        let found = conn.schema_version()?;
        if found != supported {
            return Err(StoreError::Postgres(format!(
                "{} has {component} schema version {found}, this binary reads {supported}{}",
                options.describe(),
                if found == 0 { " (nothing of pogo-vault's is there)" } else { "" }
            )));
        }
        Ok(conn)
    }

    /// What this connection's change notifications carry (`Sql::origin`).
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn describe(&self) -> String {
        self.options.describe()
    }

    /// Which server session this connection is on (see the field).
    pub(crate) fn session(&self) -> u64 {
        self.session
    }

    /// The connection for one call: connected again first when it was closed or given
    /// up (then the schema is checked again: a failover may have reached another server).
    fn parts(&mut self) -> Result<Parts<'_>, StoreError> {
        if let Some(l) = &self.link
            && let Ok(rt) = l.rt.get()
        {
            // Let the connection task read what arrived since the last call: a server that
            // closed the connection meanwhile (a restart, a failover) is seen now, not by
            // this call failing.
            block_on(rt, tokio::task::yield_now());
        }
        let lost = self.broken || self.link.as_ref().is_some_and(|l| l.client.is_closed());
        if lost || self.link.is_none() {
            if lost {
                tracing::warn!(db = %self.options.describe(), "PostgreSQL connection lost: connecting again");
            }
            self.link = None;
            self.broken = false;
            self.statements.clear();
            self.link = Some(Link::open(&self.options)?);
            self.session += 1;
            let found = match self.schema_version() {
                Ok(v) => v,
                Err(e) => {
                    self.link = None;
                    return Err(e);
                }
            };
            if found != self.supported {
                self.link = None;
                return Err(StoreError::Postgres(format!(
                    "{} has {} schema version {found}, this vault {}: not the database it was",
                    self.options.describe(),
                    self.component,
                    self.supported
                )));
            }
        }
        let PgConn { link, statements, broken, options, origin, .. } = self;
        let Some(Link { rt, client, task }) = link.as_mut() else {
            return Err(StoreError::Unavailable("PostgreSQL: not connected".into()));
        };
        Ok(Parts { origin, rt: rt.get()?, task, client, statements, broken, timeout: options.call_timeout() })
    }

    /// Makes this connection usable for a call (connecting again if needed).
    pub(crate) fn ready(&mut self) -> Result<&mut PgConn, StoreError> {
        self.parts()?;
        Ok(self)
    }

    /// A write transaction holding [`WRITE_LOCK`].
    pub(crate) fn write_tx(&mut self) -> Result<PgTx<'_>, StoreError> {
        self.locked_tx(WRITE_LOCK)
    }

    /// A `READ COMMITTED` transaction holding the transaction-level advisory lock `lock`:
    /// every writer under the same lock, on any replica, runs one at a time.
    pub(crate) fn locked_tx(&mut self, lock: i64) -> Result<PgTx<'_>, StoreError> {
        let Parts { origin, rt, task, client, statements, broken, timeout } = self.parts()?;
        let tx = run(rt, task, broken, timeout, async move {
            let tx = pg(client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await)?;
            pg(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await)?;
            Ok(tx)
        })?;
        Ok(PgTx { origin, rt, task, tx: Some(tx), statements, broken, timeout })
    }

    /// A read-only snapshot: every read through it sees the database as at its first read.
    pub(crate) fn snapshot(&mut self) -> Result<PgTx<'_>, StoreError> {
        let Parts { origin, rt, task, client, statements, broken, timeout } = self.parts()?;
        let tx = run(rt, task, broken, timeout, async move {
            let tx = pg(client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await)?;
            // A long copy reads while it writes elsewhere: this snapshot may sit idle.
            pg(tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 0").await)?;
            Ok(tx)
        })?;
        Ok(PgTx { origin, rt, task, tx: Some(tx), statements, broken, timeout })
    }

    /// The schema version `pogo_schema` records for this connection's component (0 when
    /// none: an empty database).
    pub(crate) fn schema_version(&mut self) -> Result<i64, StoreError> {
        let PgConn { link, broken, options, component, .. } = self;
        let component = *component;
        let Some(Link { rt, client, task }) = link.as_mut() else {
            return Err(StoreError::Unavailable("PostgreSQL: not connected".into()));
        };
        run(rt.get()?, task, broken, options.call_timeout(), async {
            let exists = pg(client.query_one("SELECT to_regclass('pogo_schema') IS NOT NULL", &[]).await)?;
            if !exists.get::<_, bool>(0) {
                return Ok(0);
            }
            let rows = pg(client.query("SELECT version FROM pogo_schema WHERE component = $1", &[&component]).await)?;
            Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    fn migrate(&mut self, migrations: &[PostgresMigration]) -> Result<(), StoreError> {
        let (supported, component) = (self.supported, self.component);
        let found = self.schema_version()?;
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        if found == supported {
            return Ok(());
        }
        let Parts { rt, task, client, broken, timeout, .. } = self.parts()?;
        run(rt, task, broken, timeout, async {
            let tx = pg(client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await)?;
            pg(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK]).await)?;
            pg(tx
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS pogo_schema (
                         component TEXT PRIMARY KEY, version BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
                )
                .await)?;
            // Read again under the lock: another replica may have migrated meanwhile.
            let rows = pg(tx.query("SELECT version FROM pogo_schema WHERE component = $1", &[&component]).await)?;
            let found: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
            if found > supported {
                return Err(StoreError::SchemaTooNew { found, supported });
            }
            let mut at = found;
            for m in migrations.iter().filter(|m| m.version > found) {
                pg(tx.batch_execute(m.sql).await)?;
                tracing::info!(migration = m.name, "applied schema migration (PostgreSQL)");
                at = m.version;
            }
            if at != found || rows.is_empty() {
                pg(tx
                    .execute(
                        "INSERT INTO pogo_schema (component, version, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                        &[&component, &at, &now_ms()],
                    )
                    .await)?;
            }
            pg(tx.commit().await)
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The prepared statement for `sql` (written with `?N`), prepared once per connection.
async fn statement<C: GenericClient>(
    client: &C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, StoreError> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = pg(client.prepare(&to_postgres_params(sql)).await)?;
    statements.insert(sql.to_owned(), s.clone());
    Ok(s)
}

async fn execute<C: GenericClient>(
    client: &C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    args: &[Value],
) -> Result<usize, StoreError> {
    let s = statement(client, statements, sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    let n = pg(client.execute(&s, &params).await)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

async fn query<C: GenericClient>(
    client: &C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    args: &[Value],
) -> Result<Vec<Row>, StoreError> {
    let s = statement(client, statements, sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    let rows = pg(client.query(&s, &params).await)?;
    rows.iter().map(read_row).collect()
}

impl Sql for PgConn {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        let Parts { rt, task, client, statements, broken, timeout, .. } = self.parts()?;
        run(rt, task, broken, timeout, execute(&*client, statements, sql, args))
    }
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let Parts { rt, task, client, statements, broken, timeout, .. } = self.parts()?;
        run(rt, task, broken, timeout, query(&*client, statements, sql, args))
    }
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn origin(&self) -> Option<&str> {
        Some(&self.origin)
    }
}

/// An open transaction (a write holding [`WRITE_LOCK`], or a read-only snapshot); rolled
/// back when dropped uncommitted, there and then: `tokio-postgres` would only queue the
/// `ROLLBACK` until this connection's next call, and meanwhile an idle replica would hold
/// the write lock every other replica waits for.
pub struct PgTx<'a> {
    origin: &'a str,
    rt: &'a Runtime,
    task: &'a AbortHandle,
    /// `None` once committed or rolled back.
    tx: Option<tokio_postgres::Transaction<'a>>,
    statements: &'a mut HashMap<String, Statement>,
    broken: &'a mut bool,
    timeout: Duration,
}

impl PgTx<'_> {
    /// Commits. With a synchronous standby the server waits for it without a server-side
    /// limit (a `statement_timeout` would cancel the wait and report success with only a
    /// warning, for a commit the standby may not have); our deadline still applies, and a
    /// commit that gets no answer is [`StoreError::CommitUnknown`]: it may have landed.
    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        let Some(tx) = self.tx.take() else { return Err(StoreError::Unavailable("transaction already ended".into())) };
        let result = run(self.rt, self.task, self.broken, self.timeout, async {
            pg(tx.batch_execute("SET LOCAL statement_timeout = 0").await)?;
            match tx.commit().await {
                Ok(()) => Ok(()),
                Err(e) if e.as_db_error().is_none() => Err(StoreError::CommitUnknown(failed(&e).to_string())),
                Err(e) => Err(failed(&e)),
            }
        });
        match result {
            Err(StoreError::Unavailable(why)) if *self.broken => Err(StoreError::CommitUnknown(why)),
            r => r,
        }
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            if *self.broken {
                // Given up already (its task aborted, the socket closed): the server rolls
                // the session back itself.
                return;
            }
            // A rollback that gets no answer gives the connection up the same way.
            let _ = run(self.rt, self.task, self.broken, self.timeout, async { pg(tx.rollback().await) });
        }
    }
}

impl Sql for PgTx<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        let tx = self.tx.as_ref().ok_or_else(|| StoreError::Unavailable("transaction already ended".into()))?;
        run(self.rt, self.task, self.broken, self.timeout, execute(tx, self.statements, sql, args))
    }
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let tx = self.tx.as_ref().ok_or_else(|| StoreError::Unavailable("transaction already ended".into()))?;
        run(self.rt, self.task, self.broken, self.timeout, query(tx, self.statements, sql, args))
    }
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn origin(&self) -> Option<&str> {
        Some(self.origin)
    }
}
