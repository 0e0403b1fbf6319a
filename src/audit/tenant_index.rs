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
//! - Only the server's indexer thread writes the file; readers attach it read-only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::AuditError;
use super::db::open_reader;
use crate::store;

/// The most events indexed per step (one transaction on the index file); also the backlog
/// that starts a step before the interval is up.
const STEP: usize = 64 * 1024;
/// How often the indexer looks at the log's head.
const POLL: Duration = Duration::from_millis(100);
/// The schema version of the index file; a file of another version is rebuilt.
const VERSION: i64 = 1;
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS tenant_events (
        tenant_id TEXT    NOT NULL,
        sequence  INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, sequence)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS indexed (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        through      INTEGER NOT NULL,
        through_hash BLOB    NOT NULL
    );";

/// The index file of the audit database at `audit_db`: `audit.db` -> `audit.tenant-index.db`.
pub fn tenant_index_path(audit_db: &Path) -> PathBuf {
    let stem = audit_db.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "audit".into());
    audit_db.with_file_name(format!("{stem}.tenant-index.db"))
}

/// The watermark as stored: events `1..=through` are indexed, and event `through` has `hash`.
fn watermark(conn: &Connection, schema: &str) -> rusqlite::Result<Option<(i64, Vec<u8>)>> {
    conn.query_row(&format!("SELECT through, through_hash FROM {schema}.indexed WHERE id = 1"), [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

/// The hash of event `sequence` in the audit database (`main`), if there is one.
fn event_hash(conn: &Connection, sequence: i64) -> rusqlite::Result<Option<Vec<u8>>> {
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
        if version != VERSION || through < 1 || event_hash(conn, through)?.as_deref() != Some(&hash[..]) {
            return Ok(0);
        }
        Ok(through)
    };
    trusted().unwrap_or(0)
}

/// Set by a reader that could not read the index file: the indexer checks the file.
static READ_FAILED: AtomicBool = AtomicBool::new(false);

/// Tells this process's indexer that a query could not read the index file.
pub(crate) fn report_read_failure() {
    READ_FAILED.store(true, Ordering::Relaxed);
}

/// What the indexer thread and its handle share.
#[derive(Debug, Default)]
struct State {
    stop: AtomicBool,
    through: AtomicI64,
    rebuilds: AtomicU64,
}

/// The background indexer's handle: stop it, and read how far it has got.
#[derive(Debug)]
pub(crate) struct Indexer {
    state: Arc<State>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Indexer {
    /// Starts the indexer thread for the audit database at `audit_db`. It takes a step when
    /// [`STEP`] events are waiting, or `interval` after the last step when any are: each
    /// step rewrites about one leaf page per tenant it touches, so fewer, larger steps cost
    /// less per event (measured in BENCHMARKS.md) at the price of a longer scan after the
    /// watermark.
    pub(crate) fn start(audit_db: &Path, interval: Duration) -> std::io::Result<Indexer> {
        let state = Arc::new(State::default());
        let (audit_db, s) = (audit_db.to_owned(), state.clone());
        let thread =
            std::thread::Builder::new().name("pogo-audit-index".into()).spawn(move || s.run(&audit_db, interval))?;
        Ok(Indexer { state, thread: Mutex::new(Some(thread)) })
    }

    /// Asks the thread to stop (it finishes the step it is in); does not wait.
    pub(crate) fn stop(&self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            t.thread().unpark();
        }
    }

    /// Stops the thread and waits for it, so its connections are closed (blocking).
    pub(crate) fn stop_and_join(&self) {
        self.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// The highest sequence indexed so far (0 before the first step).
    pub(crate) fn through(&self) -> i64 {
        self.state.through.load(Ordering::Relaxed)
    }

    /// How often the index was started over (damaged, deleted, replaced or not matching the log).
    pub(crate) fn rebuilds(&self) -> u64 {
        self.state.rebuilds.load(Ordering::Relaxed)
    }
}

impl State {
    /// Sleeps up to `d`; [`Indexer::stop`] cuts it short.
    fn pause(&self, d: Duration) {
        if !self.stop.load(Ordering::Relaxed) {
            std::thread::park_timeout(d);
        }
    }

    fn start_over(&self, last_step: &mut Option<Instant>) {
        self.through.store(0, Ordering::Relaxed);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        *last_step = None;
    }

    fn run(&self, audit_db: &Path, interval: Duration) {
        let index_path = tenant_index_path(audit_db);
        let mut failing: Option<Duration> = None;
        let mut conns: Option<(Connection, Connection)> = None;
        // The file the open connection writes: a file deleted or replaced under us (an
        // operator, a restore) is noticed and a new one started.
        let mut opened: Option<(u64, u64)> = None;
        // The first look at the log steps at once (a fresh or stale index catches up).
        let mut last_step: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            if conns.is_some() && file_id(&index_path) != opened {
                conns = None;
                self.start_over(&mut last_step);
            }
            if READ_FAILED.swap(false, Ordering::Relaxed) && self.repair_if_damaged(&index_path, &mut last_step) {
                conns = None;
            }
            let step = match conns.take() {
                Some(c) => Ok(c),
                None => open_both(audit_db).inspect(|_| opened = file_id(&index_path)),
            }
            .and_then(|(events, index)| {
                let r = self.maybe_step(&events, &index, &mut last_step, interval);
                conns = Some((events, index));
                r
            });
            match step {
                Ok(more) => {
                    if failing.take().is_some() {
                        tracing::info!("audit tenant index is being filled again");
                    }
                    if more {
                        continue;
                    }
                    self.pause(POLL);
                }
                Err(e) => {
                    conns = None;
                    // Derived data: queries scan instead, so this is a warning, not a failure.
                    if failing.is_none() {
                        tracing::warn!(error = %e, "audit tenant index step failed; tenant queries scan the log meanwhile");
                    }
                    self.repair_if_damaged(&index_path, &mut last_step);
                    let pause = failing.map_or(Duration::from_secs(1), |p| (p * 2).min(Duration::from_secs(30)));
                    failing = Some(pause);
                    self.pause(pause);
                }
            }
        }
    }

    /// Removes the index file if SQLite finds it damaged; true if it did.
    fn repair_if_damaged(&self, path: &Path, last_step: &mut Option<Instant>) -> bool {
        if !index_file_is_damaged(path) {
            return false;
        }
        tracing::warn!("audit tenant index file is damaged; rebuilding it");
        remove_index_files(path);
        self.start_over(last_step);
        true
    }

    /// Steps if a step is due; returns whether another should follow at once.
    fn maybe_step(
        &self,
        events: &Connection,
        index: &Connection,
        last_step: &mut Option<Instant>,
        interval: Duration,
    ) -> Result<bool, AuditError> {
        let head: i64 =
            events.prepare_cached("SELECT coalesce(max(sequence), 0) FROM events")?.query_row([], |r| r.get(0))?;
        let waiting = head - self.through.load(Ordering::Relaxed);
        let due = last_step.is_none_or(|t| t.elapsed() >= interval);
        if waiting < STEP as i64 && !(due && waiting != 0) {
            return Ok(false);
        }
        let (through, more, restarted) = index_step(events, index)?;
        if restarted {
            self.rebuilds.fetch_add(1, Ordering::Relaxed);
        }
        self.through.store(through, Ordering::Relaxed);
        *last_step = Some(Instant::now());
        Ok(more)
    }
}

/// The device and inode of the file at `path`, if there is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// True only when SQLite says the index file is damaged (not a database, corrupt, or a
/// failed quick check). Any other trouble (no file descriptors, a full disk, permissions)
/// is not proof of damage and keeps the file.
fn index_file_is_damaged(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    let check = || -> rusqlite::Result<bool> {
        let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        c.query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0)).map(|s| s != "ok")
    };
    match check() {
        Ok(damaged) => damaged,
        Err(rusqlite::Error::SqliteFailure(f, _)) => {
            matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        }
        Err(_) => false,
    }
}

/// Removes the index file and its WAL and shared-memory files.
fn remove_index_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A read-only connection on the audit database and a read-write one on the index file.
fn open_both(audit_db: &Path) -> Result<(Connection, Connection), AuditError> {
    let events = open_reader(audit_db)?;
    let path = tenant_index_path(audit_db);
    store::create_private_file(&path)?;
    let index =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    index.busy_timeout(Duration::from_secs(5))?;
    index.pragma_update(None, "journal_mode", "WAL")?;
    // Losing the last steps to a power cut costs only their re-indexing.
    index.pragma_update(None, "synchronous", "NORMAL")?;
    let version: i64 = index.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != VERSION {
        index.execute_batch("DROP TABLE IF EXISTS tenant_events; DROP TABLE IF EXISTS indexed;")?;
    }
    index.execute_batch(SCHEMA)?;
    index.pragma_update(None, "user_version", VERSION)?;
    Ok((events, index))
}

/// Indexes up to [`STEP`] events past the watermark in one transaction (starting over when
/// the watermark does not match the log). Returns the new watermark, whether more remain,
/// and whether it started over.
fn index_step(events: &Connection, index: &Connection) -> Result<(i64, bool, bool), AuditError> {
    let read = events.unchecked_transaction()?;
    let mut restarted = false;
    let mut from = match watermark(index, "main")? {
        Some((through, hash)) if event_hash(&read, through)?.as_deref() == Some(&hash[..]) => through,
        None => 0,
        Some(_) => {
            tracing::warn!("audit tenant index does not match the audit log (restored or replaced?); rebuilding it");
            index.execute_batch("DELETE FROM tenant_events; DELETE FROM indexed;")?;
            restarted = true;
            0
        }
    };
    let mut rows: Vec<(String, i64)> = Vec::new();
    let mut last: Option<(i64, Vec<u8>)> = None;
    {
        let mut stmt = read.prepare_cached(
            "SELECT sequence, tenant_id, hash FROM events WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
        )?;
        let mut q = stmt.query(params![from, STEP as i64])?;
        while let Some(r) = q.next()? {
            let sequence: i64 = r.get(0)?;
            if let Some(t) = r.get::<_, Option<String>>(1)? {
                rows.push((t, sequence));
            }
            last = Some((sequence, r.get(2)?));
        }
    }
    read.finish()?;
    let Some((through, hash)) = last else { return Ok((from, false, restarted)) };
    let more = through - from >= STEP as i64;
    // Sorted, each leaf page is visited once per step.
    rows.sort_unstable();
    let tx = index.unchecked_transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO tenant_events (tenant_id, sequence) VALUES (?1, ?2)")?;
        for (tenant, sequence) in &rows {
            insert.execute(params![tenant, sequence])?;
        }
        tx.prepare_cached("INSERT OR REPLACE INTO indexed (id, through, through_hash) VALUES (1, ?1, ?2)")?
            .execute(params![through, hash])?;
    }
    tx.commit()?;
    from = through;
    Ok((from, more, restarted))
}
