//! A bounded pool of PostgreSQL connections for the calls a replica makes beside its
//! long-lived connections. Two per replica, each of `storage.postgres.pool_size`: audit
//! reads (`ListAuditEvents`, the head, the newest checkpoint, the pages of
//! `WatchAuditEvents`, what audit sinks read), and the shared budget and token cache
//! (`store::shared`). And a gate of one ([`PgPool::of_one`]) that callers of one long-lived
//! connection pass in turn, a bounded wait each.
//!
//! Without it each audit read connected (TLS and a login each time), and a burst of them
//! opened as many connections as there were calls, so one busy security dashboard could take
//! the database's `max_connections` from every other replica; and the shared state ran on
//! one connection behind a mutex, where callers queued without end behind a silent server.
//!
//! Invariants:
//! - **Bounded**: never more than `size` connections out or idle together.
//! - **Fail closed in bounded time**: a call that finds every connection busy waits at most
//!   [`PostgresOptions::call_timeout`] (each holder's own call ends within that, answered or
//!   given up), then fails `UNAVAILABLE` (naming `pool_size` where that sizes the pool); it
//!   never queues without end. A new connection the server refuses, while others are open,
//!   makes the call wait for one of those instead, within the same bound.
//! - **Nothing carried over**: a connection goes back with no transaction open (a
//!   [`super::pg_conn::PgTx`] rolls back when dropped, or gives the connection up); one
//!   that was given up or closed goes back too, and its next call connects it again
//!   ([`PgConn`] does that).
//! - Migrates nothing: each connection checks its component's schema (migrated at start).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::StoreError;
use super::migrations::PostgresMigration;
use super::pg_conn::PgConn;
use super::postgres::{MAX_POOL_SIZE, PostgresOptions};

#[derive(Default)]
struct State {
    idle: Vec<PgConn>,
    /// Connections handed out, or being connected for a caller.
    out: usize,
}

/// See the module docs.
pub(crate) struct PgPool {
    options: PostgresOptions,
    component: &'static str,
    migrations: &'static [PostgresMigration],
    /// What the connections are for, in messages.
    what: &'static str,
    /// Sized by `pool_size` (a gate of one made by [`PgPool::of_one`] is not).
    sized: bool,
    size: usize,
    wait: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

/// A connection taken from a [`PgPool`]; it goes back when dropped.
pub(crate) struct Pooled {
    pool: Arc<PgPool>,
    conn: Option<PgConn>,
}

impl PgPool {
    /// A pool of up to `options.pool_size` connections to `component`'s tables (whose schema
    /// ends at `migrations`' last version). Connects nothing yet.
    pub(crate) fn new(
        options: &PostgresOptions,
        component: &'static str,
        migrations: &'static [PostgresMigration],
        what: &'static str,
    ) -> Arc<PgPool> {
        Arc::new(PgPool {
            options: options.clone(),
            component,
            migrations,
            what,
            sized: true,
            size: options.pool_size.clamp(1, MAX_POOL_SIZE),
            wait: options.call_timeout(),
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under this lock is a push, a pop or a count: never half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pool of the one connection `conn` (connected and migrated by the caller): a gate
    /// that callers of one long-lived connection pass in turn, each waiting a bounded time
    /// (a mutex would queue them without end behind a silent server).
    pub(crate) fn of_one(conn: PgConn, options: &PostgresOptions, what: &'static str) -> Arc<PgPool> {
        Arc::new(PgPool {
            options: options.clone(),
            component: "",
            migrations: &[],
            what,
            sized: false,
            size: 1,
            wait: options.call_timeout(),
            state: Mutex::new(State { idle: vec![conn], out: 0 }),
            freed: Condvar::new(),
        })
    }

    /// A connection: an idle one, a new one while fewer than `size` exist, or the first one
    /// given back within the wait (see the module docs). Blocks: call it on a blocking thread.
    pub(crate) fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let deadline = Instant::now() + self.wait;
        let mut st = self.lock();
        // A connect that failed in this call: not tried again here.
        let mut refused: Option<StoreError> = None;
        loop {
            if let Some(conn) = st.idle.pop() {
                st.out += 1;
                return Ok(Pooled { pool: self.clone(), conn: Some(conn) });
            }
            if st.out < self.size && refused.is_none() {
                st.out += 1;
                drop(st);
                // Connected outside the lock: a slow server must not hold the idle ones.
                let e = match PgConn::connect_existing(&self.options, self.component, self.migrations) {
                    Ok(conn) => return Ok(Pooled { pool: self.clone(), conn: Some(conn) }),
                    Err(e) => e,
                };
                st = self.lock();
                st.out -= 1;
                self.freed.notify_one();
                // With connections open, wait for one of them instead: the server may refuse
                // more (`max_connections`, a newer schema during a rolling upgrade).
                if st.out == 0 && st.idle.is_empty() {
                    return Err(e);
                }
                refused = Some(e);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let (true, Some(e)) = (left.is_zero(), refused.take()) {
                return Err(e);
            }
            if left.is_zero() {
                let secs = self.wait.as_secs();
                let what = self.what;
                return Err(StoreError::Unavailable(match self.sized {
                    true => format!(
                        "all {} PostgreSQL {what} stayed busy for {secs} s: try again, or raise storage.postgres.pool_size",
                        self.size
                    ),
                    false => format!(
                        "the PostgreSQL {what} stayed busy for {secs} s (a slow or silent server, or many calls at once): try again"
                    ),
                }));
            }
            st = self.freed.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// How many connections exist now (idle and out).
    #[cfg(test)]
    fn open_connections(&self) -> usize {
        let st = self.lock();
        st.idle.len() + st.out
    }
}

impl Pooled {
    /// The connection (only `Drop` takes it out, so this is never `Err`).
    pub(crate) fn conn(&mut self) -> Result<&mut PgConn, StoreError> {
        self.conn.as_mut().ok_or_else(|| StoreError::Unavailable("PostgreSQL: connection already returned".into()))
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        st.out -= 1;
        if let Some(conn) = self.conn.take() {
            st.idle.push(conn);
        }
        drop(st);
        self.pool.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_that_cannot_connect_frees_its_place_and_says_why() {
        // Nothing listens on port 1 of loopback: each attempt fails at once.
        let mut o = PostgresOptions::new("postgresql://pogo@127.0.0.1:1/pogo");
        o.connect_timeout = Duration::from_secs(1);
        o.pool_size = 1;
        let pool = PgPool::new(&o, "audit", &[], "audit reader connections");
        for _ in 0..3 {
            assert!(pool.get().is_err(), "nothing to connect to");
        }
        assert_eq!(pool.open_connections(), 0, "a failed connect gives its place back");
    }

    #[test]
    fn a_caller_finding_the_pool_busy_waits_a_bounded_time_then_is_told_to_raise_pool_size() {
        // A server that accepts and never answers: the one place stays taken by a connect
        // that runs to its deadline (connect_timeout + 5 s = 8 s).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming() {
                held.push(s);
            }
        });
        let mut o = PostgresOptions::new(format!("postgresql://pogo@127.0.0.1:{port}/pogo"));
        o.connect_timeout = Duration::from_secs(3);
        // A wait of 6 s (call_timeout), shorter than the connect holding the place.
        o.statement_timeout = Duration::from_secs(1);
        o.pool_size = 1;
        let pool = PgPool::new(&o, "audit", &[], "audit reader connections");
        let other = pool.clone();
        let first = std::thread::spawn(move || other.get().map(|_| ()));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pool.open_connections(), 1, "the first caller holds the one place while it connects");
        let t = Instant::now();
        let e = pool.get().err().map(|e| e.to_string()).unwrap_or_default();
        let waited = t.elapsed();
        assert!(e.contains("storage.postgres.pool_size"), "{e}");
        assert!(waited >= Duration::from_millis(5500) && waited < Duration::from_millis(7900), "{waited:?}");
        assert!(first.join().unwrap().is_err(), "the silent server was given up");
        assert_eq!(pool.open_connections(), 0);
    }
}
