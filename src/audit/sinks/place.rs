//! Where a sink reads the audit log and keeps its cursor: the audit file and the vault
//! database on SQLite; on PostgreSQL the shared database, read through the reader pool,
//! with the cursor in `audit_sink_cursors` there and a **lease** per sink name.
//!
//! The lease: several replicas run the same `[[audit.sink]]` entries, and each sink is
//! delivered by one of them at a time, so the destination is not sent every item once per
//! replica. It is a session-level advisory lock on the sink's own connection, keyed by a
//! 64-bit hash of the sink's name: a replica that dies or is cut off loses it with its
//! session, and another takes the sink over from the stored cursor (a cursor is saved only
//! after the destination has what it covers, so a takeover repeats items, never skips them).
//! The holder checks the lease with a round trip at least every [`super::LEASE_EVERY`] and
//! before each page it sends; a reconnect (a new session) means the lease went with the old
//! one. The lease's session asks the server for TCP keepalives of seconds, so a holder cut
//! off (no FIN, no RST) loses it within about 16 s rather than the system's two hours.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::db::{self, open_reader};
use super::super::{AuditError, db_backend::Readers};
use super::feed::{Page, SinkCursor, read_page};
use crate::store::pg_conn::PgConn;
use crate::store::pg_pool::PgPool;
use crate::store::sql::{Sql, Value};
use crate::store::{PostgresOptions, Store, StoreError, migrations, sink_cursors};

/// What a set of sinks is started on.
pub(crate) enum Origin<'a> {
    /// The audit file, and the vault database file holding the cursors.
    File { audit_db: &'a Path, cursors: &'a Path },
    /// The shared database: the audit log's reader pool, and the options to reach the
    /// vault's tables (cursors, leases).
    Postgres { readers: &'a Readers, options: &'a PostgresOptions },
}

/// One sink's reader, cursor store and (on PostgreSQL) lease.
pub(super) enum Place {
    File { reader: rusqlite::Connection, audit_db: PathBuf, store: Box<Store> },
    Postgres { readers: Arc<PgPool>, conn: Box<PgConn>, held: Option<u64> },
}

fn unavailable(reason: String) -> AuditError {
    AuditError::Unavailable { reason }
}

/// The lock key of sink `name`'s lease (hashed by the server: `hashtextextended`).
fn lease_name(name: &str) -> Value {
    Value::Text(format!("pogo-vault audit sink {name}"))
}

impl Place {
    pub(super) fn open(name: &str, origin: &Origin<'_>) -> Result<Place, AuditError> {
        match origin {
            Origin::File { audit_db, cursors } => {
                let store = Store::open(cursors)
                    .map_err(|e| unavailable(format!("audit sink {name:?}: cannot open its cursor store: {e}")))?;
                // A cursor is delivery progress: a commit lost with the power only repeats items.
                if let Some(conn) = store.sqlite() {
                    conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| unavailable(e.to_string()))?;
                }
                Ok(Place::File {
                    reader: open_reader(audit_db)?,
                    audit_db: audit_db.to_path_buf(),
                    store: Box::new(store),
                })
            }
            Origin::Postgres { readers: Readers::Pool(pool), options } => {
                let conn = PgConn::connect_existing(options, "vault", migrations::POSTGRES)
                    .map_err(|e| unavailable(format!("audit sink {name:?}: cannot reach its cursor: {e}")))?;
                Ok(Place::Postgres { readers: pool.clone(), conn: Box::new(conn), held: None })
            }
            Origin::Postgres { readers: Readers::File(_), .. } => {
                Err(unavailable("audit sinks on PostgreSQL read the log there, not a file".into()))
            }
        }
    }

    /// The stored cursor of sink `name`.
    pub(super) fn load(&mut self, name: &str) -> Result<Option<SinkCursor>, AuditError> {
        let db: &mut dyn Sql = match self {
            Place::File { store, .. } => store.db()?,
            Place::Postgres { conn, .. } => conn.as_mut(),
        };
        sink_cursors::load(db, name)
            .map_err(|e| unavailable(format!("audit sink {name:?}: cannot read its cursor: {e}")))
    }

    /// Stores sink `name`'s cursor (never moving it back).
    pub(super) fn save(&mut self, name: &str, at: SinkCursor) -> Result<(), StoreError> {
        match self {
            Place::File { store, .. } => sink_cursors::save(store.db()?, name, at),
            Place::Postgres { conn, .. } => sink_cursors::save(conn.as_mut(), name, at),
        }
    }

    /// A page of what follows `at`, from one read snapshot.
    pub(super) fn read(&mut self, at: SinkCursor, limit: usize) -> Result<Page, AuditError> {
        match self {
            Place::File { reader, audit_db, .. } => {
                let page = reader.unchecked_transaction().map_err(AuditError::from).and_then(|tx| {
                    let page = read_page(&mut &*tx, at, limit)?;
                    tx.finish()?;
                    Ok(page)
                });
                if page.is_err() {
                    // A fresh connection next time (the file may have been replaced by a restore).
                    if let Ok(r) = open_reader(audit_db) {
                        *reader = r;
                    }
                }
                page
            }
            Place::Postgres { readers, .. } => {
                let mut pooled = readers.get()?;
                let mut tx = pooled.conn()?.snapshot()?;
                read_page(&mut tx, at, limit)
            }
        }
    }

    /// The log's head sequence and its newest checkpoint's sequence.
    pub(super) fn head(&mut self) -> Result<(i64, i64), AuditError> {
        // Two reads: a checkpoint committed between them may be past the head read first;
        // it is not delivered yet, so the position stays at the head.
        let both = |db: &mut dyn Sql| -> Result<(i64, i64), AuditError> {
            let head = db::head(db)?.0;
            Ok((head, db::latest_checkpoint(db)?.map_or(0, |c| c.sequence).min(head)))
        };
        match self {
            Place::File { reader, .. } => both(&mut &*reader),
            Place::Postgres { readers, .. } => both(readers.get()?.conn()?),
        }
    }

    /// True while this process delivers sink `name`: always on SQLite (one process per
    /// file); on PostgreSQL while it holds the sink's lease, taking it if free and
    /// `may_take` (see the module docs). A lease found lost is not taken again in the same
    /// call.
    pub(super) fn lead(&mut self, name: &str, may_take: bool) -> Result<bool, AuditError> {
        let Place::Postgres { conn, held, .. } = self else { return Ok(true) };
        if let Some(session) = *held {
            // A round trip: a connection lost since shows now, and with it the lease.
            let alive = conn.query("SELECT 1", &[]);
            if alive.is_ok() && conn.session() == session {
                return Ok(true);
            }
            *held = None;
            alive?;
            return Ok(false);
        }
        if !may_take {
            return Ok(false);
        }
        // The server must notice a holder cut off from it and end its session (and with it
        // the lease) in seconds, not after the system's keepalive defaults (two hours):
        // probes after 10 s idle, every 2 s, 3 missed; sent data unacknowledged for 15 s.
        // (`tcp_user_timeout` exists from PostgreSQL 12 on.)
        conn.query(
            "SELECT set_config('tcp_keepalives_idle', '10', false), set_config('tcp_keepalives_interval', '2', false),
                    set_config('tcp_keepalives_count', '3', false),
                    CASE WHEN current_setting('server_version_num')::int >= 120000
                         THEN set_config('tcp_user_timeout', '15000', false) END",
            &[],
        )?;
        let row = conn.query_opt(
            "SELECT CASE WHEN pg_try_advisory_lock(hashtextextended(?1, 0)) THEN 1 ELSE 0 END",
            &[lease_name(name)],
        )?;
        let got = row.map(|r| r.get::<i64>(0)).transpose()?.unwrap_or(0) == 1;
        if got {
            *held = Some(conn.session());
        }
        Ok(got)
    }

    /// Lets the lease go at once (a stop), so another replica takes the sink over without
    /// waiting for this session to end.
    pub(super) fn release(&mut self, name: &str) {
        let Place::Postgres { conn, held, .. } = self else { return };
        if held.take().is_some_and(|s| s == conn.session()) {
            let _ = conn.query("SELECT pg_advisory_unlock(hashtextextended(?1, 0))", &[lease_name(name)]);
        }
    }
}
