//! The tenant index: which events name which tenant, kept in a file of its own beside the
//! audit database and filled in the background, so a durable append never pays for it.
//!
//! Why not an index on `events`: tenants arrive in random order, so an index on
//! `events(tenant_id)` puts every record on a different leaf page. Each commit then writes a
//! page per record to the WAL and every WAL checkpoint copies them back, which was most of the
//! tail latency of `GetAccessToken` (BENCHMARKS.md). Filled in large sorted steps instead, a
//! leaf page is written once per step, off the path a request waits on.
//!
//! Invariants:
//! - **Derived data.** The file holds `(tenant_id, sequence)` pairs and a watermark
//!   (`through`, the hash of event `through`). Nothing in it is part of the chain; deleting it
//!   loses nothing (it is rebuilt, also when it is found damaged, deleted or replaced while the server
//!   runs). A page uses it only when the watermark's hash matches the audit database's event
//!   at `through` (so an index left from another log, or a restored older one, is ignored and
//!   rebuilt), re-checks the tenant on every event it returns, and falls back to a scan when
//!   the file cannot be read. What it is trusted for: that it lists every event of the tenant
//!   up to the watermark. An edited index can hide events from a tenant-filtered *page*
//!   (as an edited SQLite index inside the audit database could), never show another tenant's
//!   event or alter one; `export` and `verify` never read it, so they answer from the audit
//!   database alone.
//! - **Complete answers.** A page takes the indexed part (sequences up to `through`) from
//!   the index and scans `events` beyond `through` (at most a few steps' worth of events), so
//!   its answer never depends on how far the indexer has got.
//! - Only the server's indexer thread writes the file (`tenant_indexer`); readers attach it
//!   read-only.
//!
//! This file is the reading side (the path, attaching, the trusted watermark), a leaf, so
//! that opening a reader (`db::open_reader`) and the indexer (which opens readers) need not
//! import each other.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{Connection, OptionalExtension};

/// The schema version of the index file; a file of another version is rebuilt.
pub(super) const VERSION: i64 = 2;

/// The index file of the audit database at `audit_db`: `audit.db` -> `audit.tenant-index.db`.
pub fn tenant_index_path(audit_db: &Path) -> PathBuf {
    let stem = audit_db.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "audit".into());
    audit_db.with_file_name(format!("{stem}.tenant-index.db"))
}

/// The watermark as stored: events `1..=through` are indexed, and event `through` has `hash`.
pub(super) fn watermark(conn: &Connection, schema: &str) -> rusqlite::Result<Option<(i64, Vec<u8>)>> {
    conn.query_row(&format!("SELECT through, through_hash FROM {schema}.indexed WHERE id = 1"), [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

/// The hash of event `sequence` in the audit database (`main`), if there is one.
pub(super) fn event_hash(conn: &Connection, sequence: i64) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT hash FROM main.events WHERE sequence = ?1")?
        .query_row([sequence], |r| r.get(0))
        .optional()
}

/// Attaches the index file to an audit connection as `idx` (read-only when the connection
/// is), unless attached already. False when there is no index file or it cannot be attached.
pub(crate) fn attach(conn: &Connection, audit_db: &Path) -> bool {
    let index = tenant_index_path(audit_db);
    if !index.exists() {
        return false;
    }
    let attached = conn
        .query_row("SELECT count(*) FROM pragma_database_list WHERE name = 'idx'", [], |r| r.get::<_, i64>(0))
        .is_ok_and(|n| n > 0);
    attached || conn.execute("ATTACH DATABASE ?1 AS idx", [index.to_string_lossy().as_ref()]).is_ok()
}

/// How far the attached index can be trusted: its watermark if its hash matches the log's
/// event there, else 0 (scan everything). Call inside the read transaction the query uses,
/// before reading any event, so every event the watermark covers is in that snapshot.
pub(crate) fn trusted_through(conn: &Connection) -> i64 {
    let trusted = || -> rusqlite::Result<i64> {
        let version: i64 = conn.query_row("PRAGMA idx.user_version", [], |r| r.get(0))?;
        let Some((through, hash)) = watermark(conn, "idx")? else { return Ok(0) };
        if version != VERSION || through < 1 {
            return Ok(0);
        }
        // An event older than the index has seen (put back after a deletion, or an older
        // backup restored): rows it dropped or never saw may be live again. Scan until the
        // indexer starts over.
        let floor: i64 = conn.query_row("SELECT floor FROM idx.indexed WHERE id = 1", [], |r| r.get(0))?;
        if floor > 1 && !no_event_through(conn, floor - 1)? {
            return Ok(0);
        }
        match event_hash(conn, through)? {
            Some(h) if h == hash => Ok(through),
            // Archived (`audit archive`): trusted only when no live event is at or below it,
            // checked here rather than taken from the `archives` row (writable by anyone
            // with the file): then the index hides none, and the scan after it covers the rest.
            None if no_event_through(conn, through)? => Ok(through),
            _ => Ok(0),
        }
    };
    trusted().unwrap_or(0)
}

/// True when the audit database holds no event at or below `through`.
fn no_event_through(conn: &Connection, through: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM main.events WHERE sequence <= ?1)")?
        .query_row([through], |r| r.get(0))
}

/// Set by a reader that could not read the index file: the indexer checks the file.
pub(super) static READ_FAILED: AtomicBool = AtomicBool::new(false);

/// Tells this process's indexer that a query could not read the index file.
pub(crate) fn report_read_failure() {
    READ_FAILED.store(true, Ordering::Relaxed);
}
