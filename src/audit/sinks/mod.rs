//! Audit sinks: every event and every signed checkpoint of the audit log, pushed to the
//! security team's systems without anyone running `audit tail` (`[[audit.sink]]` in the
//! serve config). Kinds: a JSON-lines file rotated by size (`file`, for a log shipper),
//! syslog (RFC 5424 over TCP, optionally TLS), and OpenTelemetry log records over OTLP/gRPC
//! (`otlp`, to a collector).
//!
//! Here: the set of sinks and the delivery thread each one runs. `config`: the entries and
//! their checks. `feed`: reading what comes next from the durable log. `place`: where a sink
//! reads and keeps its cursor, and on PostgreSQL its lease. `file`, `syslog`, `otlp`: the
//! destinations.
//!
//! On PostgreSQL every replica runs the same sinks, and **one replica delivers each sink at a
//! time** (it holds the sink's lease; the others stand by, show the shared cursor in their
//! status, and take over from it when the holder stops or dies). A takeover repeats what the
//! holder sent but had not confirmed, never skips.
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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::AuditError;
use super::stats::AuditStats;

mod config;
mod feed;
mod file;
mod otlp;
mod place;
pub(super) mod status;
mod syslog;

pub use config::{SinkConfig, SinkKind, SinkStart, validate_sinks};
use feed::{Destination, SinkCursor};
pub(crate) use place::Origin;
use place::Place;
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
/// How often a sink on PostgreSQL checks that it still holds its lease, or (standing by)
/// tries to take it and reads the shared cursor.
const LEASE_EVERY: Duration = Duration::from_secs(1);

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
    /// Another replica holds this sink's lease and delivers it.
    standby: bool,
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

    /// Starts one delivery thread per sink, on the audit file (cursors in the vault
    /// database) or on PostgreSQL (see the module docs). Fails (starting none) if a
    /// cursor cannot be read.
    pub(crate) fn start(
        sinks: &[SinkConfig],
        origin: Origin<'_>,
        stats: Arc<AuditStats>,
    ) -> Result<SinkSet, AuditError> {
        let mut set = SinkSet::none(stats.clone());
        let unavailable = |reason: String| AuditError::Unavailable { reason };
        let mut workers = Vec::new();
        for cfg in sinks {
            let mut place = Place::open(&cfg.name, &origin)?;
            let stored = place.load(&cfg.name)?;
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
            // On SQLite this process delivers from now on; on PostgreSQL the thread first
            // takes the lease, and works out where to start when it has it.
            let leading = matches!(place, Place::File { .. });
            let start = match leading {
                true => start_position(&cfg.name, cfg.start, stored, dest.resume_hint(), place.head()?),
                false => stored.unwrap_or_default(),
            };
            let slot = Arc::new(Slot {
                name: cfg.name.clone(),
                kind: cfg.kind,
                state: Mutex::new(SlotState { delivered: start, standby: !leading, ..SlotState::default() }),
                wake: Condvar::new(),
            });
            if leading {
                tracing::info!(
                    sink = %cfg.name,
                    kind = cfg.kind.as_str(),
                    from_event = start.event_sequence + 1,
                    "audit sink starting"
                );
            }
            workers.push(Worker {
                slot: slot.clone(),
                dest,
                place,
                start: cfg.start,
                leading,
                last_lease: None,
                lost_at: None,
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
                    standby: st.standby,
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
/// its `start` setting. `head`: the log's head and newest checkpoint sequences.
fn start_position(
    name: &str,
    start: SinkStart,
    stored: Option<SinkCursor>,
    hint: Option<SinkCursor>,
    (head, checkpoint): (i64, i64),
) -> SinkCursor {
    let hint = hint.filter(|h| {
        let fits = h.event_sequence <= head && h.checkpoint_sequence <= head;
        if !fits {
            tracing::warn!(sink = %name, head, "the sink's file holds sequences beyond this audit log's head; ignoring it");
        }
        fits
    });
    match (stored, hint) {
        (Some(s), Some(h)) => further(s, h),
        (Some(s), None) => s,
        (None, Some(h)) => h,
        (None, None) => match start {
            SinkStart::Oldest => SinkCursor::default(),
            SinkStart::Now => SinkCursor { event_sequence: head, checkpoint_sequence: checkpoint },
        },
    }
}

struct Worker {
    slot: Arc<Slot>,
    dest: Box<dyn Destination>,
    place: Place,
    /// Where a sink with no cursor starts (`start`), for a lease taken later.
    start: SinkStart,
    /// This process delivers the sink (always on SQLite; on PostgreSQL, holding its lease).
    leading: bool,
    /// When the lease was last checked.
    last_lease: Option<Instant>,
    /// When this process last lost the lease.
    lost_at: Option<Instant>,
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
            self.lease_due(&mut sent);
            if !self.leading {
                if closing || slot.pause(LEASE_EVERY) {
                    break;
                }
                continue;
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
                // Only while leading (checked above): a standby's cursor is the holder's.
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
                            // Still the holder (a read may have waited): checked again if due.
                            if !self.lease_due(&mut sent) {
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
        if self.leading {
            if let Ok(Some(p)) = self.dest.confirm() {
                self.durable = further(self.durable, p);
            }
            self.save();
            self.place.release(&slot.name);
        }
        let mut st = lock(&slot.state);
        st.delivered = self.durable;
        st.stopped = true;
        drop(st);
        slot.wake.notify_all();
    }

    fn read(&mut self, at: SinkCursor) -> Result<feed::Page, AuditError> {
        self.place.read(at, PAGE)
    }

    /// Follows the lease when a check is due (every [`LEASE_EVERY`]); true while this
    /// process delivers the sink.
    fn lease_due(&mut self, sent: &mut SinkCursor) -> bool {
        if self.last_lease.is_none_or(|t| t.elapsed() >= LEASE_EVERY) {
            self.last_lease = Some(Instant::now());
            self.follow_lease(sent);
        }
        self.leading
    }

    /// Takes, keeps or loses the lease (on PostgreSQL; on SQLite this process always
    /// delivers), and acts on a change: a sink taken over starts from the shared cursor
    /// (moved forward to what its destination shows, and saved before anything is sent); a
    /// sink lost saves what its destination confirmed and forgets the rest (the new holder
    /// sends it again), and is not taken again for two checks, so another replica takes it;
    /// a standby shows the shared cursor. Never takes the lease once closed.
    fn follow_lease(&mut self, sent: &mut SinkCursor) {
        let name = self.slot.name.clone();
        let was = self.leading;
        let may_take = !self.slot.closed() && self.lost_at.is_none_or(|t| t.elapsed() >= LEASE_EVERY * 2);
        let lead = self.place.lead(&name, may_take);
        self.leading = matches!(lead, Ok(true));
        match (was, self.leading) {
            (false, true) => {
                let taken = self.place.load(&name).and_then(|stored| Ok((stored, self.place.head()?)));
                let started = taken.and_then(|(stored, head)| {
                    let at = start_position(&name, self.start, stored, self.dest.resume_hint(), head);
                    // Saved first: a holder dying before its first save must not leave the
                    // next one to start afresh (`start = "now"` would skip).
                    self.place.save(&name, at)?;
                    Ok(at)
                });
                match started {
                    Ok(at) => {
                        self.dest.reset();
                        (self.durable, *sent, self.saved) = (at, at, Some(at));
                        let mut st = lock(&self.slot.state);
                        (st.delivered, st.standby, st.failing, st.last_error) = (at, false, false, None);
                        drop(st);
                        tracing::info!(sink = %name, from_event = at.event_sequence + 1, "audit sink: this replica delivers it now");
                    }
                    Err(e) => {
                        tracing::warn!(sink = %name, error = %e, "audit sink: took the lease but cannot read or save where to start; letting it go");
                        self.place.release(&name);
                        self.leading = false;
                        let mut st = lock(&self.slot.state);
                        (st.failing, st.last_error) = (true, Some(format!("taking the sink over: {e}")));
                    }
                }
            }
            (true, false) => {
                self.lost_at = Some(Instant::now());
                let mut st = lock(&self.slot.state);
                (st.standby, st.failing, st.last_error) = (true, false, None);
                drop(st);
                // What the destination confirmed is saved (a cursor never moves back, so
                // this is safe beside the new holder); the rest goes again from there.
                if let Ok(Some(p)) = self.dest.confirm() {
                    self.durable = further(self.durable, p);
                }
                self.save();
                self.dest.reset();
                tracing::warn!(sink = %name, "audit sink: lost its lease; another replica delivers it from the shared cursor");
            }
            (false, false) if lead.is_ok() => {
                let stored = self.place.load(&name);
                let mut st = lock(&self.slot.state);
                st.standby = true;
                match stored {
                    Ok(c) => {
                        if let Some(c) = c {
                            (self.durable, self.saved, st.delivered) = (c, Some(c), c);
                        }
                        (st.failing, st.last_error) = (false, None);
                    }
                    Err(e) => (st.failing, st.last_error) = (true, Some(format!("reading the shared cursor: {e}"))),
                }
            }
            (false, false) | (true, true) => {}
        }
        if let Err(e) = lead {
            // Standing by or not, this replica cannot tell who delivers: shown as failing.
            let mut st = lock(&self.slot.state);
            (st.standby, st.failing, st.last_error) = (true, true, Some(format!("checking the sink's lease: {e}")));
        }
    }

    /// Saves the cursor if it moved. A failed save is logged and tried again later: until
    /// then a restart would repeat items, not skip them.
    fn save(&mut self) {
        if self.saved == Some(self.durable) {
            return;
        }
        let (name, at) = (&self.slot.name, self.durable);
        match self.place.save(name, at) {
            Ok(()) => self.saved = Some(self.durable),
            Err(e) => tracing::warn!(sink = %self.slot.name, error = %e, "could not save the audit sink's cursor"),
        }
    }
}
