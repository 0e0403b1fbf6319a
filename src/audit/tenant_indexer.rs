//! The tenant index's background indexer: the one thread that writes the index file, in
//! large sorted steps, behind the log (see `tenant_index` for what the index is, why it is
//! a file of its own, and what it is trusted for). It notices a file that was deleted,
//! replaced or damaged and starts it over; failing steps are a warning, since queries scan
//! the log meanwhile.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};

use super::AuditError;
use super::db::open_reader;
use super::tenant_index::{READ_FAILED, VERSION, event_hash, tenant_index_path, watermark};
use crate::store;

/// The most events indexed per step (one transaction on the index file); also the backlog
/// that starts a step before the interval is up.
const STEP: usize = 64 * 1024;

/// How often the indexer looks at the log's head.
const POLL: Duration = Duration::from_millis(100);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS tenant_events (
        tenant_id TEXT    NOT NULL,
        sequence  INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, sequence)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS indexed (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        through      INTEGER NOT NULL,
        through_hash BLOB    NOT NULL,
        floor        INTEGER NOT NULL DEFAULT 0
    );";

/// What the indexer thread and its handle share.
#[derive(Debug, Default)]
struct State {
    stop: AtomicBool,
    through: AtomicI64,
    rebuilds: AtomicU64,
    /// The oldest event the audit database holds (0: none), for metrics.
    oldest: AtomicI64,
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

    /// The oldest event sequence the audit database holds, as last seen (0: none yet).
    pub(crate) fn oldest(&self) -> i64 {
        self.state.oldest.load(Ordering::Relaxed)
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
        let (head, oldest): (i64, i64) = events
            .prepare_cached("SELECT coalesce(max(sequence), 0), coalesce(min(sequence), 0) FROM events")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        self.oldest.store(oldest, Ordering::Relaxed);
        // Events moved out by `audit archive` leave the index too: rows below the oldest
        // event the log still holds, and only those. So no `archives` row (anyone with the
        // file can write one) can drop the row of a live event and hide it from tenant
        // queries that trust the watermark. The index's `floor` remembers the oldest event
        // it has seen: an event below it (rows put back after a deletion, an older backup
        // restored) means rows it dropped or never saw are live again, so it starts over
        // (and queries scan meanwhile: `trusted_through`).
        let floor = floor(index)?;
        if oldest > 0 && oldest < floor {
            tracing::warn!(
                oldest,
                floor,
                "audit tenant index: the log holds events older than the index has seen (put back or restored); \
                 rebuilding the index"
            );
            index.execute_batch("DELETE FROM tenant_events; DELETE FROM indexed;")?;
            self.start_over(last_step);
        } else if oldest > floor {
            let tx = index.unchecked_transaction()?;
            tx.prepare_cached("DELETE FROM tenant_events WHERE sequence < ?1")?.execute([oldest])?;
            tx.prepare_cached("UPDATE indexed SET floor = ?1")?.execute([oldest])?;
            tx.commit()?;
        }
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

/// The oldest event the index has seen (0: none yet); rows below it were dropped.
fn floor(index: &Connection) -> rusqlite::Result<i64> {
    index.prepare_cached("SELECT coalesce(max(floor), 0) FROM indexed")?.query_row([], |r| r.get(0))
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
    let oldest: i64 =
        read.prepare_cached("SELECT coalesce(min(sequence), 0) FROM events")?.query_row([], |r| r.get(0))?;
    let mut restarted = false;
    let mut from = match watermark(index, "main")? {
        Some((through, hash)) if event_hash(&read, through)?.as_deref() == Some(&hash[..]) => through,
        // Its event and every one before it are gone (archived: `audit archive` deletes from
        // the oldest up): nothing indexed can disagree with the log, go on from there. An
        // empty log starts over (a new log reuses the sequences).
        Some((through, _)) if oldest > through && event_hash(&read, through)?.is_none() => through,
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
        // A new index starts at the oldest event the log held (its floor, see `maybe_step`).
        tx.prepare_cached(
            "INSERT INTO indexed (id, through, through_hash, floor) VALUES (1, ?1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET through = excluded.through, through_hash = excluded.through_hash",
        )?
        .execute(params![through, hash, oldest])?;
    }
    tx.commit()?;
    from = through;
    Ok((from, more, restarted))
}
