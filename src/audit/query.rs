//! Reading the log: filtered pages, the head, the latest checkpoint, and the async
//! conveniences on [`AuditLog`] that run them on the blocking pool.
//!
//! Invariant: every query here runs on a read-only connection ([`open_reader`]); none
//! touches the writer's connection. Pages are in sequence order and resume with
//! `after_sequence`, so paging never skips or repeats an event while the log grows.

use rusqlite::Connection;
use rusqlite::types::Value;

use super::chain::Checkpoint;
use super::db::{self, EVENT_COLUMNS, event_from_row, open_reader};
use super::db_backend::{AuditDb, Readers};
use super::log::AuditLocation;
use super::record::{Action, AuditEvent, Outcome};
use super::verify::verify_conn_with;
use super::verify_report::{External, ExternalSource, VerifyOptions, VerifyReport};
use super::{AuditError, AuditLog, tenant_index};
use crate::store::sql::{Sql, Value as SqlValue};

/// Which events to list or export. Every condition given must hold; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Events at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Events before this time (Unix ms, exclusive).
    pub until_ms: Option<i64>,
    /// Exactly this caller identity.
    pub caller: Option<String>,
    pub tenant_id: Option<String>,
    pub action: Option<Action>,
    pub outcome: Option<Outcome>,
}

impl AuditFilter {
    /// `WHERE ...` (possibly empty) and its parameters. Only the conditions given appear in
    /// the SQL, so SQLite can pick the matching index (`col = ? OR ? IS NULL` would defeat it).
    /// `prefix` qualifies the column names (`"e."` in a join, `""` otherwise).
    fn sql(&self, after_sequence: Option<i64>, prefix: &str) -> (String, Vec<Value>) {
        let mut conds: Vec<String> = Vec::new();
        let mut params: Vec<Value> = Vec::new();
        let mut add = |cond: &'static str, v: Value| {
            conds.push(format!("{prefix}{cond}"));
            params.push(v);
        };
        if let Some(a) = after_sequence {
            add("sequence > ?", Value::Integer(a));
        }
        if let Some(t) = self.since_ms {
            add("time_ms >= ?", Value::Integer(t));
        }
        if let Some(t) = self.until_ms {
            add("time_ms < ?", Value::Integer(t));
        }
        if let Some(c) = &self.caller {
            add("caller = ?", Value::Text(c.clone()));
        }
        if let Some(t) = &self.tenant_id {
            add("tenant_id = ?", Value::Text(t.clone()));
        }
        if let Some(a) = self.action {
            add("action = ?", Value::Text(a.as_str().to_owned()));
        }
        if let Some(o) = self.outcome {
            add("outcome = ?", Value::Text(o.as_str().to_owned()));
        }
        let clause = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
        (clause, params)
    }
}

/// Up to `limit` events matching `filter` with sequence greater than `after_sequence`, in
/// sequence order. The next page starts after the last sequence returned.
pub fn list(
    conn: &Connection,
    filter: &AuditFilter,
    after_sequence: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEvent>, AuditError> {
    let mut out = Vec::with_capacity(limit.min(1024));
    select(conn, filter, after_sequence, Some(limit), |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// Calls `f` for every event matching `filter`, in sequence order, streaming (for export).
pub(crate) fn scan(
    conn: &Connection,
    filter: &AuditFilter,
    f: impl FnMut(AuditEvent) -> Result<(), AuditError>,
) -> Result<u64, AuditError> {
    select(conn, filter, None, None, f)
}

/// The one query behind [`list`] and [`scan`]. A tenant-filtered page ([`list`]) is answered
/// from the tenant index file up to its trusted watermark and by scanning `events` beyond it
/// (see [`super::tenant_index`]); if the index cannot be read, the page is answered by the
/// scan alone. An export ([`scan`]) never uses the index: it reads every event, so its
/// answer depends on the audit database alone. Everything else comes from `events` and its
/// own indexes.
fn select(
    conn: &Connection,
    filter: &AuditFilter,
    after_sequence: Option<i64>,
    limit: Option<usize>,
    mut f: impl FnMut(AuditEvent) -> Result<(), AuditError>,
) -> Result<u64, AuditError> {
    let (Some(tenant), Some(limit)) = (filter.tenant_id.as_ref(), limit) else {
        let (clause, mut params) = filter.sql(after_sequence, "");
        let lim = limit_sql(&mut params, limit);
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events{clause} ORDER BY sequence{lim}");
        return query(conn, &sql, params, &mut f);
    };
    // One read snapshot for both parts (the caller's, if it has one open), the index's
    // watermark read first. ATTACH is not possible inside a transaction: `open_reader` did it.
    let own_tx = conn.is_autocommit();
    if own_tx && let Some(p) = conn.path() {
        tenant_index::attach(conn, std::path::Path::new(p));
    }
    let tx = if own_tx { Some(conn.unchecked_transaction()?) } else { None };
    let after = after_sequence.unwrap_or(0);
    let mut through = tenant_index::trusted_through(conn);
    let mut indexed = Vec::new();
    if through > after {
        let (clause, mut params) = filter.sql(after_sequence, "e.");
        // `clause` is never empty here: it holds the tenant condition, re-checked on `e`.
        let mut sql = format!(
            "SELECT {} FROM idx.tenant_events AS t CROSS JOIN main.events AS e ON e.sequence = t.sequence{clause} \
             AND t.tenant_id = ? AND t.sequence <= ?",
            qualified_columns()
        );
        params.push(Value::Text(tenant.clone()));
        params.push(Value::Integer(through));
        if after > 0 {
            sql.push_str(" AND t.sequence > ?");
            params.push(Value::Integer(after));
        }
        let lim = limit_sql(&mut params, Some(limit));
        let read = query(conn, &format!("{sql} ORDER BY t.sequence{lim}"), params, &mut |e| {
            indexed.push(e);
            Ok(())
        });
        if let Err(e) = read {
            // Derived data gone bad (corrupt, half-deleted): answer from the log itself.
            tracing::warn!(error = %e, "audit tenant index unreadable; answering by scanning the log");
            tenant_index::report_read_failure();
            indexed.clear();
            through = 0;
        }
    }
    let mut n = indexed.len() as u64;
    for e in indexed {
        f(e)?;
    }
    if n < limit as u64 {
        let (clause, mut params) = filter.sql(Some(after.max(through)), "");
        let lim = limit_sql(&mut params, Some(limit - n as usize));
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events{clause} ORDER BY sequence{lim}");
        n += query(conn, &sql, params, &mut f)?;
    }
    if let Some(tx) = tx {
        tx.finish()?;
    }
    Ok(n)
}

/// Runs `sql`, handing each event to `f`; returns how many.
fn query(
    conn: &Connection,
    sql: &str,
    params: Vec<Value>,
    f: &mut impl FnMut(AuditEvent) -> Result<(), AuditError>,
) -> Result<u64, AuditError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        f(event_from_row(row)??)?;
        n += 1;
    }
    Ok(n)
}

/// ` LIMIT ?` with its parameter, or nothing for no limit.
fn limit_sql(params: &mut Vec<Value>, limit: Option<usize>) -> &'static str {
    match limit {
        Some(l) => {
            params.push(Value::Integer(i64::try_from(l).unwrap_or(i64::MAX)));
            " LIMIT ?"
        }
        None => "",
    }
}

/// [`EVENT_COLUMNS`] qualified with `e.`.
fn qualified_columns() -> &'static str {
    static COLS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLS.get_or_init(|| EVENT_COLUMNS.split(", ").map(|c| format!("e.{}", c.trim())).collect::<Vec<_>>().join(", "))
}

/// Up to `limit` events with sequence ≥ `from_sequence`, in order: the replay half of a
/// watch (see [`super::AuditWatch`] for stitching it to live events).
pub fn events_from(conn: &Connection, from_sequence: i64, limit: usize) -> Result<Vec<AuditEvent>, AuditError> {
    list(conn, &AuditFilter::default(), Some(from_sequence.saturating_sub(1)), limit)
}

/// The last sequence and its hash; `(0, GENESIS_HASH)` for the empty log.
pub fn head(conn: &Connection) -> Result<(i64, [u8; 32]), AuditError> {
    db::head(&mut &*conn)
}

/// The stored checkpoint with the highest sequence (not verified: see [`super::verify`]).
pub fn latest_checkpoint(conn: &Connection) -> Result<Option<Checkpoint>, AuditError> {
    db::latest_checkpoint(&mut &*conn)
}

/// Runs `f` on a fresh read-only SQLite connection on the blocking pool: the file itself,
/// or for a log on PostgreSQL, a snapshot of it copied into a private temporary file (see
/// `transfer`; for readers that read the whole log anyway: verification).
pub(crate) async fn read<T: Send + 'static>(
    location: AuditLocation,
    f: impl FnOnce(&Connection) -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    // One snapshot copy at a time: each is the whole log on this host's disk.
    static ONE_COPY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = match location {
        AuditLocation::Postgres(_) => Some(ONE_COPY.acquire().await.map_err(|_| AuditError::Closed)?),
        AuditLocation::File(_) => None,
    };
    tokio::task::spawn_blocking(move || match location {
        AuditLocation::File(path) => f(&open_reader(&path)?),
        AuditLocation::Postgres(options) => {
            super::transfer::with_snapshot_file(&options, |path| f(&open_reader(path)?))
        }
    })
    .await
    .map_err(|e| AuditError::Unavailable { reason: format!("audit reader task failed: {e}") })?
}

/// [`list`] on either backend: on PostgreSQL, one statement with numbered parameters on its
/// indexes (`tenant_id` is indexed in the table there; no index file).
pub(crate) fn list_in(
    db: &mut AuditDb,
    filter: &AuditFilter,
    after_sequence: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEvent>, AuditError> {
    match db {
        AuditDb::Sqlite(c) => list(c, filter, after_sequence, limit),
        AuditDb::Postgres(_) => list_sql(db.sql()?, filter, after_sequence, limit),
    }
}

/// [`list`] through the `Sql` seam, with numbered parameters (both backends read them).
pub(crate) fn list_sql(
    db: &mut dyn Sql,
    filter: &AuditFilter,
    after_sequence: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEvent>, AuditError> {
    let (clause, params) = filter.sql(after_sequence, "");
    let mut n = 0;
    let numbered: String = clause
        .chars()
        .map(|c| {
            if c == '?' {
                n += 1;
                format!("?{n}")
            } else {
                c.to_string()
            }
        })
        .collect();
    let mut args: Vec<SqlValue> = params
        .into_iter()
        .map(|v| match v {
            Value::Integer(i) => SqlValue::Int(i),
            Value::Text(t) => SqlValue::Text(t),
            _ => SqlValue::Null,
        })
        .collect();
    args.push(SqlValue::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events{numbered} ORDER BY sequence LIMIT ?{}", n + 1);
    db.query(&sql, &args)?.iter().map(db::event_from).collect()
}

/// Runs `f` on a reader of this process on the blocking pool (see [`Readers`]).
async fn read_any<T: Send + 'static>(
    readers: Readers,
    f: impl FnOnce(&mut dyn Sql) -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(move || readers.with(f))
        .await
        .map_err(|e| AuditError::Unavailable { reason: format!("audit reader task failed: {e}") })?
}

impl AuditLog {
    /// [`list`] on a reader of this process (a connection of its own to the file, or one
    /// from the PostgreSQL reader pool). On SQLite through the tenant index.
    pub async fn list(
        &self,
        filter: AuditFilter,
        after_sequence: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        read_any(self.readers(), move |db| match db.sqlite() {
            Some(c) => list(c, &filter, after_sequence, limit),
            None => list_sql(db, &filter, after_sequence, limit),
        })
        .await
    }

    /// [`latest_checkpoint`] on a reader of this process.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        read_any(self.readers(), db::latest_checkpoint).await
    }

    /// [`head`] on a reader of this process.
    pub async fn head(&self) -> Result<(i64, [u8; 32]), AuditError> {
        read_any(self.readers(), db::head).await
    }

    /// What `VerifyAuditLog` serves: asks the writer for a checkpoint of the current head
    /// first, so the verification is strict up to "now" (a live log otherwise always shows
    /// up to a second of events not yet checkpointed), with the checkpoint this process
    /// signed before that held in memory as a kept checkpoint (the fresh one signs the file
    /// as found, so only that memory catches an edit made since), then verifies from the root of this
    /// file's key chain (the key hand-overs lead back to from this log's own key) and
    /// requires the chain to end at this log's own key. Events appended after that
    /// checkpoint, while verifying, are reported but not failed. The security team's
    /// independent check is `pogo-vault audit verify` with the public key they hold.
    pub async fn verify(
        &self,
        root: Option<ed25519_dalek::VerifyingKey>,
        kept: Option<Checkpoint>,
        allow_unsigned_tail: bool,
    ) -> Result<VerifyReport, AuditError> {
        // Taken before the fresh checkpoint: the one this process signed earlier, from memory,
        // so an edit of the file before the fresh checkpoint cannot be signed over unnoticed.
        let remembered = self.last_signed();
        // Without a fresh checkpoint (the writer found the file altered, or cannot write) the
        // verification still runs and says what it could not cover, and why.
        let (fresh, no_fresh) = match self.checkpoint_now().await {
            Ok(cp) => (Some(cp.sequence), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let own = self.verifying_key();
        read(self.location().clone(), move |c| {
            let pinned = root.is_some();
            let root = match root {
                Some(r) => r,
                None => super::handover::chain_root(&mut &*c, &own)?,
            };
            let mut external: Vec<External> =
                kept.map(|k| External { checkpoint: k, source: ExternalSource::Kept }).into_iter().collect();
            external.extend(remembered.map(|k| External { checkpoint: k, source: ExternalSource::ServerMemory }));
            let opts = VerifyOptions { external, allow_unsigned_tail, live_head: fresh };
            let mut report = verify_conn_with(c, &root, &opts)?;
            if let Some(why) = no_fresh {
                report.detail = format!("{} (no fresh checkpoint could be signed: {why})", report.detail);
            }
            if !pinned {
                report.detail = format!(
                    "{} (verified from the first key of the key chain this file names; give root_public_key, or run \
                     `audit verify --public-key` offline, to verify from a key you hold)",
                    report.detail
                );
            }
            let own_id = crate::crypto::audit_key_id(own.as_bytes());
            if report.ok && report.key_ids.last() != Some(&own_id) {
                report.ok = false;
                report.detail = format!(
                    "the log's key chain ends at key {}, not at this server's key {own_id}; {}",
                    report.key_ids.last().map_or("?", String::as_str),
                    report.detail
                );
            }
            Ok(report)
        })
        .await
    }
}
