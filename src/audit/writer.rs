//! The group-commit writer: the one thread that owns the write connection. The handle
//! servers append through, [`AuditLog`](super::AuditLog), is in `log`; the batches and
//! completion cells between them, and the watchdog, in `handoff`; the counters in `stats`.
//! The writer is a plain OS thread rather than a tokio task because every step of its loop
//! is blocking SQLite work.
//!
//! Failure: a batch that does not commit is answered with [`AuditError::Unavailable`] at
//! once, health turns false, and the writer backs off (25 ms doubling to `max_backoff`) and
//! tries again with whatever has queued meanwhile, or, with nothing queued, with a probe
//! write; the first success turns health true again. With the default settings a waiting
//! append is answered within about `busy_timeout + max_backoff + busy_timeout` (1 s). The
//! watchdog (`handoff`) bounds everything else.
//!
//! Checkpoints: a batch that commits when the last checkpoint is `checkpoint_interval` old
//! carries a new checkpoint in the same transaction; otherwise a timer writes one when the
//! interval has passed since the last checkpoint and events are still uncovered. Nothing is
//! written while idle. Every checkpoint committed is then offered to the witnesses
//! ([`super::witness`]): a push onto their bounded queues, never I/O on this thread.
//!
//! Signing rules (`signing`): opening a log whose newest events no checkpoint covers (the last server was killed
//! before its next checkpoint) signs them at once, in one transaction with an
//! `unsigned_tail_signed` record naming the range, so the next strict verify passes again
//! and the late signature is itself on the record. A writer whose key has been handed over
//! to a successor (`audit rotate-signing-key`) refuses to sign: opening fails, and a running
//! writer fails its commits (fail closed) until the server restarts with the new key.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::{broadcast, oneshot};

use super::chain::Checkpoint;
use super::db_backend::AuditDb;
use super::handoff::{Batch, Done, Outcome, Queue, Reply, Shared, lock};
use super::record::{AuditEvent, AuditRecord};
use super::signing::{sign_checkpoint, still_holds};
use super::witness::WitnessSet;
use super::{AuditConfig, AuditError, db};
use crate::store::now_ms;
use crate::store::sql::{Backend, args};

/// The first pause after a failed commit.
pub(super) const INITIAL_BACKOFF: Duration = Duration::from_millis(25);

/// The longest a batch of unawaited records only (repeat disclosures) waits for more before
/// it is committed (see `Writer::linger`).
pub(super) const UNAWAITED_LINGER: Duration = Duration::from_millis(5);

/// What the writer does next.
enum Work {
    /// Commit this batch (if any) and answer these checkpoint requests.
    Commit(Option<Batch>, Vec<Reply<Checkpoint>>),
    /// The checkpoint timer (or, while unhealthy, the probe) is due.
    Timer,
    /// Closed and drained: write the final checkpoint and stop.
    Stop(Option<oneshot::Sender<()>>),
}

/// The writer thread's state. Owns the only write connection of this process.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: AuditDb,
    pub(super) key: SigningKey,
    /// The id of `key`'s public half, to notice a hand-over to a successor.
    pub(super) key_id: String,
    pub(super) witness: Arc<WitnessSet>,
    pub(super) cfg: AuditConfig,
    pub(super) live: broadcast::Sender<AuditEvent>,
    /// The head as of this writer's last commit (another process may have moved it since).
    pub(super) head_seq: i64,
    /// The highest sequence known to be covered by a checkpoint.
    pub(super) checkpointed_seq: i64,
    pub(super) last_checkpoint: Option<Instant>,
    pub(super) backoff: Duration,
    /// (sequence, prev_hash, hash) of the batch being committed.
    pub(super) links: Vec<(i64, [u8; 32], [u8; 32])>,
    /// The newest event this writer committed (or found at open) and its hash: every
    /// transaction first checks that the file still holds it, so an edit, deletion or
    /// recomputed chain under a running writer is found at its next commit (at most
    /// `checkpoint_interval` later while events flow) and is never signed over.
    pub(super) written: (i64, [u8; 32]),
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Also on a panic: a dead writer must never look healthy, and nothing may wait for
        // it. (After a normal stop the queue is already closed and empty.)
        self.shared.health.send_replace(false);
        let (waiting, shutdown, lost) = {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            let lost: usize = q.batches.iter().map(|b| b.unawaited.len()).sum();
            let mut waiting: Vec<Arc<Done>> = q.batches.drain(..).map(|b| b.done).collect();
            waiting.extend(q.in_flight.take().map(|(d, _)| d));
            q.queued = 0;
            q.checkpoint_waiters.clear();
            (waiting, q.shutdown.take(), lost)
        };
        self.lost_unawaited(lost);
        for d in waiting {
            d.complete(Outcome::Unavailable("the audit writer stopped".into()));
        }
        drop(shutdown);
    }
}

impl Writer {
    pub(super) fn run(mut self) {
        let stop = loop {
            match self.next_work() {
                Work::Commit(batch, waiters) => self.flush(batch, waiters),
                Work::Timer => self.on_timer(),
                Work::Stop(reply) => break reply,
            }
        };
        if self.head_seq > self.checkpointed_seq
            && let Err(e) = self.write_checkpoint()
        {
            tracing::warn!(error = %e, "could not write the final audit checkpoint");
        }
        if let Some(s) = stop {
            let _ = s.send(());
        }
    }

    /// Waits (parked) until there is something to do.
    fn next_work(&mut self) -> Work {
        loop {
            let wait = {
                let mut q = lock(&self.shared.queue);
                q.writer_idle = false;
                q.lingering = false;
                q.in_flight = None;
                if let Some(left) = self.linger(&q) {
                    q.writer_idle = true;
                    q.lingering = true;
                    drop(q);
                    std::thread::park_timeout(left);
                    continue;
                }
                while let Some(b) = q.batches.pop_front() {
                    q.queued -= b.records.len();
                    self.shared.stats.queued.store(q.queued as u64, Ordering::Relaxed);
                    // The watchdog already told these appenders no: do not record them.
                    if b.done.outcome.get().is_some() {
                        self.lost_unawaited(b.unawaited.len());
                        continue;
                    }
                    // Judged by when it was queued: the bound is from the append, not from
                    // when the writer got to it.
                    q.in_flight = Some((b.done.clone(), b.queued_at));
                    let waiters = std::mem::take(&mut q.checkpoint_waiters);
                    return Work::Commit(Some(b), waiters);
                }
                if !q.checkpoint_waiters.is_empty() {
                    return Work::Commit(None, std::mem::take(&mut q.checkpoint_waiters));
                }
                if q.closed {
                    return Work::Stop(q.shutdown.take());
                }
                let wait = self.wait_time();
                if wait == Some(Duration::ZERO) {
                    return Work::Timer;
                }
                q.writer_idle = true;
                wait
            };
            match wait {
                None => std::thread::park(),
                Some(d) => std::thread::park_timeout(d),
            }
        }
    }

    /// How much longer to let the only queued batch gather records before committing it:
    /// only while every record in it is unawaited (repeats: nobody waits for them), the log
    /// is healthy and nothing else is asked of the writer, and at most [`UNAWAITED_LINGER`]
    /// from its first record. An awaited record joining it, or a second batch, wakes the
    /// writer at once (`AuditLog::enqueue`). Fewer commits for the same records: the fixed
    /// cost of a commit (the `fsync`) is what a busy writer spends its time on.
    fn linger(&self, q: &Queue) -> Option<Duration> {
        let b = q.batches.front()?;
        let only_repeats = q.batches.len() == 1
            && !q.closed
            && q.checkpoint_waiters.is_empty()
            && b.done.outcome.get().is_none()
            && b.unawaited.len() == b.records.len()
            && b.records.len() < self.cfg.max_batch
            && *self.shared.health.borrow();
        if !only_repeats {
            return None;
        }
        UNAWAITED_LINGER.checked_sub(b.queued_at.elapsed()).filter(|d| !d.is_zero())
    }

    /// How long to wait for work before the timer is due; `None`: nothing to do until then.
    fn wait_time(&self) -> Option<Duration> {
        if !*self.shared.health.borrow() {
            // The failed attempt already backed off: probe now unless work arrives.
            return Some(Duration::ZERO);
        }
        if self.head_seq <= self.checkpointed_seq {
            return None;
        }
        Some(match self.last_checkpoint {
            None => Duration::ZERO,
            Some(t) => self.cfg.checkpoint_interval.saturating_sub(t.elapsed()),
        })
    }

    fn on_timer(&mut self) {
        let result =
            if self.head_seq > self.checkpointed_seq { self.write_checkpoint().map(|_| ()) } else { self.probe() };
        match result {
            Ok(()) => self.succeeded(),
            Err(e) => {
                self.shared.mark_failed(&e.to_string());
                self.back_off();
            }
        }
    }

    /// Commits the batch (and a checkpoint if one is due or asked for), then answers.
    fn flush(&mut self, batch: Option<Batch>, waiters: Vec<Reply<Checkpoint>>) {
        // On PostgreSQL every commit carries its checkpoint: the other replicas chain onto
        // these events only under a signature by the audit key (`signing::still_holds`).
        let due = !waiters.is_empty()
            || self.conn.backend() == Backend::Postgres
            || self.last_checkpoint.is_none_or(|t| t.elapsed() >= self.cfg.checkpoint_interval);
        let records = batch.as_ref().map_or(&[][..], |b| &b.records[..]);
        let started = Instant::now();
        let committed = self.commit(due, records);
        self.shared.stats.latency.observe(started.elapsed());
        match committed {
            Ok((time_ms, checkpoint)) => {
                let stats = &self.shared.stats;
                stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                if let Some(cp) = &checkpoint {
                    stats.last_checkpoint_ms.store(time_ms, Ordering::Relaxed);
                    self.shared.signed(cp);
                    self.witness.offer(cp);
                }
                self.succeeded();
                let links = std::mem::take(&mut self.links);
                if let Some(b) = batch {
                    // Events for live subscribers are built only when there are any.
                    if self.live.receiver_count() > 0 {
                        for (record, &(sequence, prev_hash, hash)) in b.records.iter().zip(&links) {
                            let ev = AuditEvent { sequence, time_ms, record: record.clone(), prev_hash, hash };
                            let _ = self.live.send(ev);
                        }
                    }
                    b.done.complete(Outcome::Durable { time_ms, links });
                }
                if let Some(cp) = checkpoint {
                    for w in waiters {
                        let _ = w.send(Ok(cp.clone()));
                    }
                }
            }
            Err(e) => {
                self.links.clear();
                self.shared.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                let reason = e.to_string();
                // Health first: whoever sees the error may look at health next.
                self.shared.mark_failed(&reason);
                if let Some(b) = batch {
                    b.done.complete(Outcome::Unavailable(reason.clone()));
                    self.carry_over(b);
                }
                for w in waiters {
                    let _ = w.send(Err(AuditError::Unavailable { reason: reason.clone() }));
                }
                self.back_off();
            }
        }
    }

    /// One transaction: the batch, chained from the head read inside it, plus a checkpoint
    /// of the new head when `with_checkpoint`. Returns the batch's time and the checkpoint.
    fn commit(
        &mut self,
        with_checkpoint: bool,
        records: &[AuditRecord],
    ) -> Result<(i64, Option<Checkpoint>), AuditError> {
        self.links.clear();
        let mut tx = self.conn.begin()?;
        still_holds(tx.sql(), self.written, &self.key.verifying_key())?;
        let time_ms = now_ms();
        let (seq, hash) = db::append_in_tx(tx.sql(), time_ms, records.iter(), &mut self.links)?;
        let checkpoint =
            if with_checkpoint { Some(sign_checkpoint(tx.sql(), &self.key, &self.key_id, seq, hash)?) } else { None };
        tx.commit()?;
        self.head_seq = seq;
        self.written = (seq, hash);
        self.shared.stats.head.store(seq, Ordering::Relaxed);
        if checkpoint.is_some() {
            self.checkpointed_seq = seq;
            self.last_checkpoint = Some(Instant::now());
        }
        Ok((time_ms, checkpoint))
    }

    fn write_checkpoint(&mut self) -> Result<Checkpoint, AuditError> {
        let mut tx = self.conn.begin()?;
        still_holds(tx.sql(), self.written, &self.key.verifying_key())?;
        let (seq, hash) = db::head(tx.sql())?;
        let cp = sign_checkpoint(tx.sql(), &self.key, &self.key_id, seq, hash)?;
        tx.commit()?;
        // Another replica's events up to `seq` are covered and chained from here on.
        self.written = (seq, hash);
        self.head_seq = seq;
        self.checkpointed_seq = seq;
        self.last_checkpoint = Some(Instant::now());
        self.shared.stats.last_checkpoint_ms.store(cp.time_ms, Ordering::Relaxed);
        self.shared.signed(&cp);
        self.witness.offer(&cp);
        Ok(cp)
    }

    /// A real write outside the chain, to learn whether the file is writable again.
    fn probe(&mut self) -> Result<(), AuditError> {
        let mut tx = self.conn.begin()?;
        // An altered file stays a failure: health must not come back on a log we refuse.
        still_holds(tx.sql(), self.written, &self.key.verifying_key())?;
        tx.sql().execute(
            "INSERT INTO writer_probe (id, time_ms) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET time_ms = excluded.time_ms",
            args![now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Counts (and says in the log) unawaited records dropped with a batch the watchdog
    /// failed: answered repeats whose own records will not be written.
    fn lost_unawaited(&self, n: usize) {
        if n > 0 {
            self.shared.stats.unawaited_lost.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(
                records = n,
                "repeat-disclosure records not committed within the append bound were dropped (the disclosures they \
                 repeat are on record)"
            );
        }
    }

    /// Puts the records of a failed batch that nobody waits for (repeats whose disclosure is
    /// durable already) back at the head of the queue, to be tried with the next batch. They
    /// keep their batch's time, so the watchdog still bounds them: a log that stays down
    /// longer than the append timeout loses them (their disclosures are on record).
    fn carry_over(&self, failed: Batch) {
        if failed.unawaited.is_empty() {
            return;
        }
        let mut records = failed.records;
        let mut kept = Vec::with_capacity(failed.unawaited.len());
        for &i in failed.unawaited.iter().rev() {
            if i < records.len() {
                kept.push(records.swap_remove(i));
            }
        }
        kept.reverse();
        let unawaited = (0..kept.len()).collect();
        let n = kept.len();
        let batch = Batch { records: kept, unawaited, done: Arc::default(), queued_at: failed.queued_at };
        let mut q = lock(&self.shared.queue);
        q.queued += n;
        self.shared.stats.queued.store(q.queued as u64, Ordering::Relaxed);
        q.batches.push_front(batch);
    }

    fn succeeded(&mut self) {
        self.backoff = INITIAL_BACKOFF;
        if self.shared.health.send_if_modified(|h| !std::mem::replace(h, true)) {
            tracing::info!("audit log is writable again");
        }
    }

    fn back_off(&mut self) {
        // Blocking the writer thread is the point: nothing can commit meanwhile, and what
        // queues up is tried as one batch afterwards.
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(self.cfg.max_backoff.max(INITIAL_BACKOFF));
    }
}
