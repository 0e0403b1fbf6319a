//! Witnesses: every signed checkpoint the writer commits also leaves the machine, to
//! destinations the vault's host cannot rewrite (`[audit.witness]` in the serve config).
//!
//! - **file**: one checkpoint JSON per line (the form `audit checkpoint` prints), opened
//!   `O_APPEND`, `fsync`ed after every line. Meant for another volume, or a log shipper.
//! - **syslog**: RFC 5424 messages over TCP with octet-counting framing (RFC 6587 §3.4.1),
//!   optionally inside TLS (rustls with the ring provider passed explicitly, as everywhere).
//!
//! Here: the bounded queues, one delivery thread per witness. `config`: the
//! `[audit.witness]` section and its checks. `sink`: what a destination is, and the file
//! sink. `syslog`: the syslog sink.
//!
//! Invariants:
//! - **A witness never stops or slows the vault.** The writer only pushes a copy of the
//!   checkpoint onto each witness's bounded queue (a short lock, no I/O). Each witness has its
//!   own thread that delivers in order, retries with backoff (100 ms doubling to
//!   `retry_max_secs`) and keeps the rest queued; the queue is bounded (`backlog`), and when
//!   full the *oldest* is dropped and counted: a newer checkpoint covers everything an older
//!   one did, so the newest are the ones worth keeping.
//! - **The primary log stays the durable one.** Delivery is after the commit, best effort,
//!   at least once: a line can repeat after a failure part-way (verify ignores repeats).
//!   A TCP write accepted by the kernel is not a receipt; a peer that closed is noticed
//!   before the next write.
//! - **Nothing secret** goes out: a checkpoint is a sequence, a hash, a time, a key id and a
//!   signature. Errors are logged and reported by their I/O or TLS reason only.
//! - A failing witness raises an alarm (`error` once when it starts failing, then `warn`
//!   at most once a minute while it fails), is counted in
//!   `pogo_vault_audit_witness_backlog{witness=...}` and shows in `status`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::chain::Checkpoint;

mod config;
mod sink;
mod syslog;

use config::FIRST_RETRY;
pub use config::{FileWitnessConfig, SyslogWitnessConfig, WitnessConfig};
use sink::{FileSink, Sink};
use syslog::SyslogSink;

/// Between repeated alarms for a witness that keeps failing.
const ALARM_EVERY: Duration = Duration::from_secs(60);

/// One witness's figures, for metrics and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessStatus {
    /// `file` or `syslog` (the metric label).
    pub name: &'static str,
    /// Checkpoints waiting to be delivered.
    pub backlog: u64,
    pub delivered: u64,
    /// Failed delivery attempts.
    pub failures: u64,
    /// Checkpoints dropped because the backlog was full (newer ones cover them).
    pub dropped: u64,
    /// The last attempt failed.
    pub failing: bool,
    /// Why the last attempt failed (an I/O or TLS reason; no secret).
    pub last_error: Option<String>,
    /// The sequence of the newest checkpoint delivered (0: none yet).
    pub last_delivered_sequence: i64,
}

#[derive(Default)]
struct SlotState {
    queue: VecDeque<Checkpoint>,
    closed: bool,
    failing: bool,
    last_error: Option<String>,
    last_delivered_sequence: i64,
    stopped: bool,
}

struct Slot {
    name: &'static str,
    state: Mutex<SlotState>,
    wake: Condvar,
    delivered: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
}

fn lock(m: &Mutex<SlotState>) -> std::sync::MutexGuard<'_, SlotState> {
    // Every update under this lock is a push, a pop or a field write: never half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The configured witnesses and their delivery threads.
pub(crate) struct WitnessSet {
    slots: Vec<Arc<Slot>>,
    backlog: usize,
}

impl WitnessSet {
    /// Starts one delivery thread per configured witness (none: an empty set).
    pub(crate) fn start(cfg: &WitnessConfig) -> std::io::Result<WitnessSet> {
        let mut set = WitnessSet { slots: Vec::new(), backlog: cfg.backlog.max(1) };
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(f) = &cfg.file {
            sinks.push(Box::new(FileSink { path: f.path.clone(), file: None }));
        }
        if let Some(s) = &cfg.syslog {
            sinks.push(Box::new(SyslogSink::new(s)?));
        }
        for sink in sinks {
            let slot = Arc::new(Slot {
                name: sink.name(),
                state: Mutex::new(SlotState::default()),
                wake: Condvar::new(),
                delivered: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            });
            let worker = Worker { slot: slot.clone(), sink, retry_max: cfg.retry_max() };
            if let Err(e) =
                std::thread::Builder::new().name(format!("pogo-witness-{}", slot.name)).spawn(move || worker.run())
            {
                set.close_and_wait(Duration::ZERO);
                return Err(e);
            }
            set.slots.push(slot);
        }
        Ok(set)
    }

    /// Queues a copy of `cp` for every witness. Never blocks on I/O.
    pub(crate) fn offer(&self, cp: &Checkpoint) {
        for slot in &self.slots {
            let mut st = lock(&slot.state);
            if st.closed {
                continue;
            }
            while st.queue.len() >= self.backlog {
                st.queue.pop_front();
                slot.dropped.fetch_add(1, Ordering::Relaxed);
            }
            st.queue.push_back(cp.clone());
            drop(st);
            slot.wake.notify_one();
        }
    }

    pub(crate) fn status(&self) -> Vec<WitnessStatus> {
        self.slots
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                WitnessStatus {
                    name: s.name,
                    backlog: st.queue.len() as u64,
                    delivered: s.delivered.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                    dropped: s.dropped.load(Ordering::Relaxed),
                    failing: st.failing,
                    last_error: st.last_error.clone(),
                    last_delivered_sequence: st.last_delivered_sequence,
                }
            })
            .collect()
    }

    /// Stops taking checkpoints; each thread delivers what it holds while deliveries
    /// succeed, and stops at the first failure. Waits at most `limit` for that.
    pub(crate) fn close_and_wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for slot in &self.slots {
            lock(&slot.state).closed = true;
            slot.wake.notify_all();
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

impl Drop for WitnessSet {
    fn drop(&mut self) {
        for slot in &self.slots {
            lock(&slot.state).closed = true;
            slot.wake.notify_all();
        }
    }
}

struct Worker {
    slot: Arc<Slot>,
    sink: Box<dyn Sink>,
    retry_max: Duration,
}

impl Worker {
    fn run(mut self) {
        let slot = self.slot.clone();
        let mut backoff = FIRST_RETRY;
        let mut last_alarm: Option<Instant> = None;
        loop {
            // The oldest queued checkpoint, left in the queue until it is delivered.
            let next = {
                let mut st = lock(&slot.state);
                loop {
                    if let Some(cp) = st.queue.front() {
                        break Some(cp.clone());
                    }
                    if st.closed {
                        break None;
                    }
                    st = slot.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            let Some(cp) = next else { break };
            match self.sink.deliver(&cp) {
                Ok(()) => {
                    slot.delivered.fetch_add(1, Ordering::Relaxed);
                    let mut st = lock(&slot.state);
                    // Dropped meanwhile (backlog full) is fine: only pop what was sent.
                    if st.queue.front() == Some(&cp) {
                        st.queue.pop_front();
                    }
                    st.last_delivered_sequence = st.last_delivered_sequence.max(cp.sequence);
                    if std::mem::replace(&mut st.failing, false) {
                        tracing::warn!(
                            witness = slot.name,
                            backlog = st.queue.len(),
                            "audit witness reachable again; draining its backlog in order"
                        );
                    }
                    backoff = FIRST_RETRY;
                    last_alarm = None;
                }
                Err(reason) => {
                    slot.failures.fetch_add(1, Ordering::Relaxed);
                    let mut st = lock(&slot.state);
                    let backlog = st.queue.len();
                    st.failing = true;
                    st.last_error = Some(reason.clone());
                    match last_alarm {
                        None => {
                            tracing::error!(witness = slot.name, backlog, error = %reason, "ALARM: audit witness unreachable; checkpoints are queued and retried, the vault keeps serving")
                        }
                        Some(t) if t.elapsed() >= ALARM_EVERY => {
                            tracing::warn!(witness = slot.name, backlog, error = %reason, "audit witness still unreachable")
                        }
                        Some(_) => {}
                    }
                    if last_alarm.is_none_or(|t| t.elapsed() >= ALARM_EVERY) {
                        last_alarm = Some(Instant::now());
                    }
                    if st.closed {
                        break;
                    }
                    // Interruptible by close, not by new checkpoints (they wait their turn).
                    let until = Instant::now() + backoff;
                    while !st.closed {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        st = slot.wake.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                }
            }
        }
        lock(&slot.state).stopped = true;
        slot.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(seq: i64) -> Checkpoint {
        Checkpoint::sign(seq, [1; 32], 1_700_000_000_000, &ed25519_dalek::SigningKey::from_bytes(&[5; 32]))
    }

    #[test]
    fn a_full_backlog_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        // A path in a missing directory: every delivery fails, so everything stays queued.
        let cfg = WitnessConfig {
            file: Some(FileWitnessConfig { path: dir.path().join("missing/w.jsonl") }),
            backlog: 3,
            retry_max_secs: 0.1,
            ..WitnessConfig::default()
        };
        let set = WitnessSet::start(&cfg).unwrap();
        for i in 1..=5 {
            set.offer(&cp(i));
        }
        let st = &set.status()[0];
        assert_eq!((st.name, st.backlog, st.dropped), ("file", 3, 2), "{st:?}");
        set.close_and_wait(Duration::from_secs(5));
    }
}
