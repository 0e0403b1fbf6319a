//! The hand-off between appenders and the writer thread: batches, their completion cells,
//! the queue they wait in (with what the handle, the writer and the watchdog share), and the
//! watchdog.
//!
//! Shape: an appender locks a small queue, adds its record to the open batch (a new one when
//! the last is full or already taken by the writer), wakes the writer only if it was idle,
//! and waits on the batch's shared completion cell. The writer takes the oldest batch,
//! commits it as one `BEGIN IMMEDIATE` transaction (the head is read inside it) and only then
//! completes the cell, so a completion means durable. One cell and one wake-up per batch,
//! not per record: with 16 records per commit that is what keeps the hand-off off the
//! profile (BENCHMARKS.md).
//!
//! Watchdog: a watchdog thread bounds everything else the writer's failure handling
//! (`writer`) cannot (an `fsync` that never returns, a dead writer): it fails any batch older
//! than `append_timeout`, so no append ever waits longer than that, and no request pays for
//! a timer of its own. A full queue fails an append at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot, watch};

use super::AuditError;
use super::chain::Checkpoint;
use super::record::AuditRecord;
use super::stats::AuditStats;

pub(super) type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

/// Where one appended record landed in the chain: what
/// [`AuditLog::append_receipt`](super::AuditLog::append_receipt) returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub sequence: i64,
    pub time_ms: i64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// How a batch ended, shared by every appender in it.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Committed at `time_ms`; `links[i]` is (sequence, prev_hash, hash) of the batch's i-th record.
    Durable {
        time_ms: i64,
        links: Vec<(i64, [u8; 32], [u8; 32])>,
    },
    Unavailable(String),
}

impl Outcome {
    /// What the appender of the batch's `index`-th record is told.
    pub(super) fn receipt(&self, index: usize) -> Result<Receipt, AuditError> {
        match self {
            Outcome::Durable { time_ms, links } => {
                let &(sequence, prev_hash, hash) = links
                    .get(index)
                    .ok_or_else(|| AuditError::Unavailable { reason: "the writer lost a record".into() })?;
                Ok(Receipt { sequence, time_ms: *time_ms, prev_hash, hash })
            }
            Outcome::Unavailable(reason) => Err(AuditError::Unavailable { reason: reason.clone() }),
        }
    }
}

/// A batch's completion cell: set once (by the writer, or by the watchdog when the writer is
/// too late), then every waiter is woken.
#[derive(Debug, Default)]
pub(super) struct Done {
    pub(super) outcome: OnceLock<Outcome>,
    pub(super) notify: Notify,
}

impl Done {
    /// Sets the outcome unless one is set already; wakes the waiters. True if this call set it.
    pub(super) fn complete(&self, outcome: Outcome) -> bool {
        let set = self.outcome.set(outcome).is_ok();
        if set {
            self.notify.notify_waiters();
        }
        set
    }

    pub(super) async fn wait(&self) -> &Outcome {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a completion in between is not missed.
            notified.as_mut().enable();
            if let Some(o) = self.outcome.get() {
                return o;
            }
            notified.await;
        }
    }
}

/// Records waiting together for one commit.
pub(super) struct Batch {
    pub(super) records: Vec<AuditRecord>,
    /// Indexes in `records` of the records nobody waits for (a token's repeat disclosure,
    /// [`AuditLog::append_unawaited`](super::AuditLog::append_unawaited)): if this batch
    /// fails, they are tried again with the next one (until the watchdog's bound).
    pub(super) unawaited: Vec<usize>,
    pub(super) done: Arc<Done>,
    pub(super) queued_at: Instant,
}

/// What appenders and the writer share, under one short-held lock.
#[derive(Default)]
pub(super) struct Queue {
    /// Oldest first; the last one takes new records while it has room.
    pub(super) batches: VecDeque<Batch>,
    /// Records in `batches`.
    pub(super) queued: usize,
    pub(super) checkpoint_waiters: Vec<Reply<Checkpoint>>,
    pub(super) shutdown: Option<oneshot::Sender<()>>,
    /// No more appends are taken.
    pub(super) closed: bool,
    /// The writer is parked with nothing to do: the next arrival must unpark it.
    pub(super) writer_idle: bool,
    /// The writer is parked letting a batch of unawaited records gather more: only an
    /// awaited record or a second batch wakes it early.
    pub(super) lingering: bool,
    /// The batch the writer is committing and when it was queued (for the watchdog).
    pub(super) in_flight: Option<(Arc<Done>, Instant)>,
}

/// Shared by the handle, the writer thread and the watchdog.
pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    pub(super) health: watch::Sender<bool>,
    pub(super) stats: Arc<AuditStats>,
    /// The writer thread, for the watchdog to wake after it failed a batch.
    pub(super) writer: OnceLock<Thread>,
    /// The newest checkpoint this process signed: held in memory, out of reach of an edit of
    /// the file, so the server's own verification uses it like a kept checkpoint.
    pub(super) last_signed: Mutex<Option<Checkpoint>>,
}

impl Shared {
    pub(super) fn signed(&self, cp: &Checkpoint) {
        let mut last = self.last_signed.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_none_or(|l| l.sequence <= cp.sequence) {
            *last = Some(cp.clone());
        }
    }

    pub(super) fn mark_failed(&self, reason: &str) {
        if self.health.send_if_modified(|h| std::mem::replace(h, false)) {
            tracing::error!(error = %reason, "audit commit failed; requests fail closed until the log is writable again");
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under these locks is a single push, pop or flag write: a panic cannot
    // leave one half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails batches that have waited longer than the append timeout (the writer is stuck in a
/// system call, or gone), so an append never waits longer than that. Exits when the writer
/// and every handle are gone.
pub(super) struct Watchdog {
    pub(super) shared: Arc<Shared>,
    pub(super) limit: Duration,
}

impl Watchdog {
    pub(super) fn run(self) {
        let period = (self.limit / 8).max(Duration::from_millis(1));
        // Failing at `limit - period` or later keeps every answer within `limit`.
        let late = |t: Instant| t.elapsed() + period >= self.limit;
        while Arc::strong_count(&self.shared) > 1 {
            std::thread::sleep(period);
            let reason = || format!("the record was not durable within {} ms", self.limit.as_millis());
            let mut won = false;
            {
                // Under the lock, so no appender joins a batch between its being judged late
                // and its being failed.
                let q = lock(&self.shared.queue);
                let in_flight = q.in_flight.iter().filter(|(_, t)| late(*t)).map(|(d, _)| d);
                let queued = q.batches.iter().take_while(|b| late(b.queued_at)).map(|b| &b.done);
                for d in in_flight.chain(queued) {
                    won |= d.outcome.get().is_none() && d.complete(Outcome::Unavailable(reason()));
                }
            }
            // Only when a batch really was too late (the writer may have finished it since
            // it was picked). The writer is woken so that, once it is free, it probes and
            // turns health back on by itself rather than waiting for the next append.
            if won {
                self.shared.mark_failed(&reason());
                if let Some(t) = self.shared.writer.get() {
                    t.unpark();
                }
            }
        }
    }
}
