//! Audit sinks: every event and every signed checkpoint of the audit log, pushed to the
//! security team's systems without anyone running `audit tail` (`[[audit.sink]]` in the
//! serve config). Kinds: a JSON-lines file rotated by size (`file`, for a log shipper),
//! syslog (RFC 5424 over TCP, optionally TLS), and OpenTelemetry log records over OTLP/gRPC
//! (`otlp`, to a collector).
//!
//! Here: the set of sinks and the delivery thread each one runs. `config`: the entries and
//! their checks. `feed`: reading what comes next from the durable log. `file`, `syslog`,
//! `otlp`: the destinations.
//!
//! Invariants:
//! - **A sink never slows or fails a request.** It reads the committed log on its own thread
//!   through its own read-only connection; the writer does not wait for it and does not know
//!   it exists (a sink only looks at the writer's head counter to know when to read).
//! - **Nothing skipped, only late.** A sink delivers from the durable log, not from memory:
//!   each keeps a cursor (the newest event and checkpoint delivered) in the vault database,
//!   saved only after the destination has what it covers. After an outage it retries with
//!   back-off; after a restart it resumes from its cursor. A cursor that lost its last save
//!   (a crash) makes the sink send again, never skip.
//! - **In order**: sequence order, each checkpoint right after the event it covers.
//! - **At least once, exactly once where the destination allows**: the file sink reads its
//!   own tail at start (exactly once); syslog has no receipts, so around an outage a receiver
//!   may see an item twice (see `syslog`); OTLP is acknowledged per batch, so only an export
//!   whose answer was lost repeats; every item carries its `sequence` to tell.
//! - An event archived (`audit archive`) before a sink delivered it is not in the database
//!   any more: the sink says so (an alarm and `skipped`); it is in the archive file.
//! - **Nothing secret** leaves: the same fields as `audit export` (identities, names,
//!   statuses, keyed fingerprints) and checkpoints. Errors name an I/O or TLS reason only.
//! - A failing sink raises an alarm (`error` once, then `warn` at most once a minute), and
//!   shows in metrics (`pogo_vault_audit_sink_*{sink=NAME}`, lag included) and `status`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::stats::AuditStats;
use super::{AuditError, db};

mod config;
mod feed;
mod file;
mod otlp;
pub(super) mod status;
mod syslog;

pub use config::{SinkConfig, SinkKind, SinkStart, validate_sinks};
use feed::{Destination, SinkCursor, read_page};
pub use status::SinkStatus;

/// Items read from the log per batch.
const PAGE: usize = 512;
/// How often an idle sink looks at the writer's head.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// How often an idle sink reads the database anyway (another process may have appended).
const READ_EVERY: Duration = Duration::from_secs(1);
/// The least time between two saves of a cursor (and at a stop, always).
const SAVE_EVERY: Duration = Duration::from_millis(250);
/// The first pause after a failure; doubled up to [`RETRY_MAX`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Between repeated alarms for a sink that keeps failing.
const ALARM_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct SlotState {
    closed: bool,
    /// Once closed, the time by which the thread stops delivering (it saves its cursor and
    /// ends), so a stopped server's sinks never run on beside the next one's.
    stop_by: Option<Instant>,
    stopped: bool,
    delivered: SinkCursor,
    sent_items: u64,
    failures: u64,
    skipped: u64,
    failing: bool,
    last_error: Option<String>,
}

struct Slot {
    name: String,
    kind: SinkKind,
    state: Mutex<SlotState>,
    wake: Condvar,
}

fn lock(m: &Mutex<SlotState>) -> std::sync::MutexGuard<'_, SlotState> {
    // Every update under this lock is a field write: never half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slot {
    /// Waits `d`, or less if the sink is closed meanwhile. True when closed.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut st = lock(&self.state);
        while !st.closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.wake.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        st.closed
    }

    fn closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Closed, and past the time to stop.
    fn overdue(&self) -> bool {
        lock(&self.state).stop_by.is_some_and(|t| Instant::now() >= t)
    }

    fn close(&self, stop_by: Instant) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.stop_by = Some(st.stop_by.map_or(stop_by, |t| t.min(stop_by)));
        drop(st);
        self.wake.notify_all();
    }
}

/// The configured sinks and their delivery threads.
pub(crate) struct SinkSet {
    slots: Vec<Arc<Slot>>,
    stats: Arc<AuditStats>,
}

impl SinkSet {
    /// No sinks.
    pub(crate) fn none(stats: Arc<AuditStats>) -> SinkSet {
        SinkSet { slots: Vec::new(), stats }
    }

    /// Starts one delivery thread per sink. `cursors` is the vault database, where each
    /// sink's cursor is kept. Fails (starting none) if a cursor cannot be read.
    pub(crate) fn start(
        sinks: &[SinkConfig],
        audit_db: &Path,
        cursors: &Path,
        stats: Arc<AuditStats>,
    ) -> Result<SinkSet, AuditError> {
        let mut set = SinkSet::none(stats.clone());
        let unavailable = |reason: String| AuditError::Unavailable { reason };
        let mut workers = Vec::new();
        for cfg in sinks {
            let mut store = crate::store::Store::open(cursors)
                .map_err(|e| unavailable(format!("audit sink {:?}: cannot open its cursor store: {e}", cfg.name)))?;
            // A cursor is delivery progress: a commit lost with the power only repeats items.
            if let Some(conn) = store.sqlite() {
                conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| unavailable(e.to_string()))?;
            }
            let stored = store
                .db()
                .and_then(|db| crate::store::sink_cursors::load(db, &cfg.name))
                .map_err(|e| unavailable(format!("audit sink {:?}: cannot read its cursor: {e}", cfg.name)))?;
            let mut dest: Box<dyn Destination> = match cfg.kind {
                SinkKind::File => Box::new(file::FileDest::new(
                    cfg.path.clone().unwrap_or_default(),
                    cfg.max_bytes.unwrap_or(config::DEFAULT_MAX_BYTES),
                    cfg.keep.unwrap_or(config::DEFAULT_KEEP),
                )),
                SinkKind::Syslog => Box::new(
                    syslog::SyslogDest::new(cfg).map_err(|e| unavailable(format!("audit sink {:?}: {e}", cfg.name)))?,
                ),
                SinkKind::Otlp => Box::new(
                    otlp::OtlpDest::new(cfg).map_err(|e| unavailable(format!("audit sink {:?}: {e}", cfg.name)))?,
                ),
            };
            let reader = db::open_reader(audit_db)?;
            let start = start_position(cfg, stored, dest.resume_hint(), &reader)?;
            let slot = Arc::new(Slot {
                name: cfg.name.clone(),
                kind: cfg.kind,
                state: Mutex::new(SlotState { delivered: start, ..SlotState::default() }),
                wake: Condvar::new(),
            });
            tracing::info!(
                sink = %cfg.name,
                kind = cfg.kind.as_str(),
                from_event = start.event_sequence + 1,
                "audit sink starting"
            );
            workers.push(Worker {
                slot: slot.clone(),
                dest,
                store,
                reader,
                audit_db: audit_db.to_owned(),
                stats: stats.clone(),
                durable: start,
                saved: stored,
            });
            set.slots.push(slot);
        }
        for w in workers {
            let slot = w.slot.clone();
            let spawned = std::thread::Builder::new().name(format!("pogo-sink-{}", slot.name)).spawn(move || w.run());
            if let Err(e) = spawned {
                set.close_and_wait(Duration::ZERO);
                return Err(unavailable(format!("cannot start the audit sink thread: {e}")));
            }
        }
        Ok(set)
    }

    pub(crate) fn status(&self) -> Vec<SinkStatus> {
        let head = self.stats.head.load(Ordering::Relaxed);
        self.slots
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                SinkStatus {
                    name: s.name.clone(),
                    kind: s.kind.as_str(),
                    delivered_sequence: st.delivered.event_sequence,
                    delivered_checkpoint: st.delivered.checkpoint_sequence,
                    lag: (head - st.delivered.event_sequence).max(0) as u64,
                    sent_items: st.sent_items,
                    failures: st.failures,
                    skipped: st.skipped,
                    failing: st.failing,
                    last_error: st.last_error.clone(),
                }
            })
            .collect()
    }

    /// Stops the sinks: each delivers what the log holds while deliveries succeed (stopping
    /// at the first failure) and saves its cursor. Waits at most `limit` for that.
    pub(crate) fn close_and_wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for slot in &self.slots {
            slot.close(deadline);
        }
        for slot in &self.slots {
            let mut st = lock(&slot.state);
            while !st.stopped {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = slot.wake.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
    }
}

impl Drop for SinkSet {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.close(Instant::now());
        }
    }
}

/// Where a sink starts: its stored cursor, moved forward to what its destination shows it
/// holds (never past the log's head: a file claiming more is not this log's); with neither,
/// its `start` setting.
fn start_position(
    cfg: &SinkConfig,
    stored: Option<SinkCursor>,
    hint: Option<SinkCursor>,
    reader: &rusqlite::Connection,
) -> Result<SinkCursor, AuditError> {
    let head = db::head(&mut &*reader)?.0;
    let hint = hint.filter(|h| {
        let fits = h.event_sequence <= head && h.checkpoint_sequence <= head;
        if !fits {
            tracing::warn!(sink = %cfg.name, head, "the sink's file holds sequences beyond this audit log's head; ignoring it");
        }
        fits
    });
    Ok(match (stored, hint) {
        (Some(s), Some(h)) => SinkCursor {
            event_sequence: s.event_sequence.max(h.event_sequence),
            checkpoint_sequence: s.checkpoint_sequence.max(h.checkpoint_sequence),
        },
        (Some(s), None) => s,
        (None, Some(h)) => h,
        (None, None) => match cfg.start {
            SinkStart::Oldest => SinkCursor::default(),
            SinkStart::Now => SinkCursor {
                event_sequence: head,
                checkpoint_sequence: db::latest_checkpoint(&mut &*reader)?.map_or(0, |c| c.sequence),
            },
        },
    })
}

struct Worker {
    slot: Arc<Slot>,
    dest: Box<dyn Destination>,
    store: crate::store::Store,
    reader: rusqlite::Connection,
    audit_db: PathBuf,
    stats: Arc<AuditStats>,
    /// What the destination certainly has.
    durable: SinkCursor,
    /// What the vault database holds for this sink.
    saved: Option<SinkCursor>,
}

/// Both sequences of `a` and `b`, whichever is further.
fn further(a: SinkCursor, b: SinkCursor) -> SinkCursor {
    SinkCursor {
        event_sequence: a.event_sequence.max(b.event_sequence),
        checkpoint_sequence: a.checkpoint_sequence.max(b.checkpoint_sequence),
    }
}

impl Worker {
    fn run(mut self) {
        let slot = self.slot.clone();
        // Sent: what the destination was given (`durable` or beyond).
        let mut sent = self.durable;
        let mut backoff = FIRST_RETRY;
        let mut alarm: Option<Instant> = None;
        let mut last_save = Instant::now();
        let mut last_read: Option<Instant> = None;
        let mut seen = (i64::MIN, i64::MIN);
        // The last archived event already counted as skipped (a gap is seen again when a
        // failed send makes the sink read it again).
        let mut gap_counted = 0;
        loop {
            let closing = slot.closed();
            if slot.overdue() {
                break;
            }
            let failure = match self.dest.confirm() {
                Ok(Some(p)) => {
                    self.durable = further(self.durable, p);
                    lock(&slot.state).delivered = self.durable;
                    None
                }
                Ok(None) => None,
                Err(e) => Some(e),
            };
            if closing || last_save.elapsed() >= SAVE_EVERY {
                self.save();
                last_save = Instant::now();
            }
            let failure = match failure {
                Some(e) => Some(e),
                None => {
                    // Read when the writer moved, when a checkpoint was signed, or now and
                    // then (another process may have appended).
                    let now = (
                        self.stats.head.load(Ordering::Relaxed),
                        self.stats.last_checkpoint_ms.load(Ordering::Relaxed),
                    );
                    let due = closing || now != seen || last_read.is_none_or(|t| t.elapsed() >= READ_EVERY);
                    if !due {
                        slot.pause(LOOK_EVERY);
                        continue;
                    }
                    match self.read(sent) {
                        Err(e) => Some(format!("reading the audit log: {e}")),
                        Ok(page) => {
                            last_read = Some(Instant::now());
                            seen = now;
                            if let Some((first, last)) = page.gap.filter(|(_, last)| *last > gap_counted) {
                                let first = first.max(gap_counted + 1);
                                lock(&slot.state).skipped += (last - first + 1) as u64;
                                gap_counted = last;
                                tracing::error!(sink = %slot.name, first, last, "ALARM: audit events were archived before this sink delivered them; they are in the archive file, not sent");
                            }
                            if page.items.is_empty() {
                                if closing {
                                    break;
                                }
                                slot.pause(LOOK_EVERY);
                                continue;
                            }
                            let end = page.items.iter().fold(sent, |p, i| i.advance(p));
                            match self.dest.send(&page.items, end) {
                                Ok(()) => {
                                    sent = end;
                                    let rejected = self.dest.take_rejected();
                                    let mut st = lock(&slot.state);
                                    st.sent_items += page.items.len() as u64;
                                    st.skipped += rejected;
                                    if std::mem::replace(&mut st.failing, false) {
                                        tracing::warn!(sink = %slot.name, "audit sink reachable again; delivering from where it stopped");
                                    }
                                    backoff = FIRST_RETRY;
                                    alarm = None;
                                    None
                                }
                                Err(e) => Some(e),
                            }
                        }
                    }
                }
            };
            let Some(reason) = failure else { continue };
            // Everything not confirmed goes again, from the last position the destination has.
            self.dest.reset();
            sent = self.durable;
            {
                let mut st = lock(&slot.state);
                st.failures += 1;
                st.failing = true;
                st.last_error = Some(reason.clone());
            }
            match alarm {
                None => {
                    tracing::error!(sink = %slot.name, error = %reason, "ALARM: audit sink failing; events wait in the audit log and are delivered when it is back, the vault keeps serving")
                }
                Some(t) if t.elapsed() >= ALARM_EVERY => {
                    tracing::warn!(sink = %slot.name, error = %reason, "audit sink still failing")
                }
                Some(_) => {}
            }
            if alarm.is_none_or(|t| t.elapsed() >= ALARM_EVERY) {
                alarm = Some(Instant::now());
            }
            if closing || slot.pause(backoff) {
                break;
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
        if let Ok(Some(p)) = self.dest.confirm() {
            self.durable = further(self.durable, p);
        }
        self.save();
        let mut st = lock(&slot.state);
        st.delivered = self.durable;
        st.stopped = true;
        drop(st);
        slot.wake.notify_all();
    }

    fn read(&mut self, at: SinkCursor) -> Result<feed::Page, AuditError> {
        match read_page(&self.reader, at, PAGE) {
            Ok(p) => Ok(p),
            Err(e) => {
                // A fresh connection next time (the file may have been replaced by a restore).
                if let Ok(r) = db::open_reader(&self.audit_db) {
                    self.reader = r;
                }
                Err(e)
            }
        }
    }

    /// Saves the cursor if it moved. A failed save is logged and tried again later: until
    /// then a restart would repeat items, not skip them.
    fn save(&mut self) {
        if self.saved == Some(self.durable) {
            return;
        }
        let (name, at) = (&self.slot.name, self.durable);
        match self.store.db().and_then(|db| crate::store::sink_cursors::save(db, name, at)) {
            Ok(()) => self.saved = Some(self.durable),
            Err(e) => tracing::warn!(sink = %self.slot.name, error = %e, "could not save the audit sink's cursor"),
        }
    }
}
