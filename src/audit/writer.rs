//! The group-commit writer: [`AuditLog`], the handle servers append through, and the one
//! thread that owns the write connection.
//!
//! Shape: appenders take a queue slot (a semaphore permit, so the queue is bounded and a
//! full queue is waited on within the append timeout), send the record with a one-shot reply
//! channel, and wait. The writer thread blocks on the queue, drains whatever is waiting (up
//! to `max_batch`), commits it as one `BEGIN IMMEDIATE` transaction (the head is read inside
//! it) and only then replies, so a reply means durable. It is a plain OS thread rather than a
//! tokio task because every step of its loop is blocking SQLite work.
//!
//! Failure: a batch that does not commit is answered with [`AuditError::Unavailable`] at
//! once, health turns false, and the writer backs off (25 ms doubling to `max_backoff`) and
//! tries again with whatever has queued meanwhile, or, with nothing queued, with a probe
//! write; the first success turns health true again. With the default settings a waiting
//! append is answered within about `busy_timeout + max_backoff + busy_timeout` (1 s), and the
//! append timeout (2 s) bounds everything else, such as an `fsync` that never returns.
//!
//! Checkpoints: a batch that commits when the last checkpoint is `checkpoint_interval` old
//! carries a new checkpoint in the same transaction; otherwise a timer writes one when the
//! interval has passed since the last checkpoint and events are still uncovered. Nothing is
//! written while idle.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, oneshot, watch};

use super::chain::Checkpoint;
use super::record::{AuditEvent, AuditRecord};
use super::{AuditConfig, AuditError, db};
use crate::store::now_ms;

/// The first pause after a failed commit.
const INITIAL_BACKOFF: Duration = Duration::from_millis(25);

type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

struct Pending {
    rec: AuditRecord,
    reply: Reply<AuditEvent>,
    /// Holds the record's queue slot until it is answered.
    _slot: OwnedSemaphorePermit,
}

// Appends are nearly every message, so boxing the large variant would only add an
// allocation per record.
#[allow(clippy::large_enum_variant)]
enum Command {
    Append(Pending),
    Checkpoint(Reply<Checkpoint>),
    Shutdown(oneshot::Sender<()>),
}

/// The audit log's writer handle. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    slots: Arc<Semaphore>,
    health: Arc<watch::Sender<bool>>,
    /// Taken at shutdown, so live subscribers see the end of the stream.
    live: Mutex<Option<broadcast::Sender<AuditEvent>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    cfg: AuditConfig,
    path: PathBuf,
    public_key: VerifyingKey,
    stats: Arc<AuditStats>,
}

/// Counters the writer thread keeps for metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    records: std::sync::atomic::AtomicU64,
    commit_failures: std::sync::atomic::AtomicU64,
    last_checkpoint_ms: std::sync::atomic::AtomicI64,
    latency: crate::metrics::Histogram,
}

/// A scrape of [`AuditStats`] plus the queue and health.
#[derive(Debug, Clone)]
pub struct AuditStatsSnapshot {
    pub queue_depth: u64,
    pub records: u64,
    pub commit_failures: u64,
    pub commit_latency: Arc<AuditStats>,
    pub healthy: bool,
    pub last_checkpoint_age_secs: f64,
}

impl AuditStats {
    pub fn latency(&self) -> &crate::metrics::Histogram {
        &self.latency
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({})", self.inner.path.display())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing guarded here can be left half-updated by a panic (an Option taken or not).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AuditLog {
    /// Opens (creating it with mode 0600 if missing) the audit database at `path` and starts
    /// the writer thread. `signing_key` signs checkpoints ([`crate::vault::Vault::audit_signing_key`]).
    pub fn open(path: &Path, signing_key: SigningKey, cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        let cfg = AuditConfig {
            max_batch: cfg.max_batch.max(1),
            queue_capacity: cfg.queue_capacity.clamp(1, Semaphore::MAX_PERMITS),
            broadcast_capacity: cfg.broadcast_capacity.max(1),
            ..cfg
        };
        let public_key = signing_key.verifying_key();
        let conn = db::open_writer(path, &public_key, Some(cfg.busy_timeout))?;
        let (head_seq, _) = db::head(&conn)?;
        let checkpointed_seq = db::latest_checkpoint(&conn)?.map_or(0, |c| c.sequence);

        let (commands, rx) = mpsc::channel();
        let health = Arc::new(watch::Sender::new(true));
        let (live, _) = broadcast::channel(cfg.broadcast_capacity);
        let stats = Arc::new(AuditStats::default());
        let writer = Writer {
            stats: stats.clone(),
            conn,
            key: signing_key,
            cfg: cfg.clone(),
            rx,
            health: health.clone(),
            live: live.clone(),
            head_seq,
            checkpointed_seq,
            last_checkpoint: None,
            backoff: INITIAL_BACKOFF,
            batch: Vec::with_capacity(cfg.max_batch.min(4096)),
            checkpoint_waiters: Vec::new(),
            links: Vec::with_capacity(cfg.max_batch.min(4096)),
        };
        let thread = std::thread::Builder::new()
            .name("pogo-audit-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| AuditError::Unavailable { reason: format!("cannot start the audit writer thread: {e}") })?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                commands,
                slots: Arc::new(Semaphore::new(cfg.queue_capacity)),
                health,
                live: Mutex::new(Some(live)),
                thread: Mutex::new(Some(thread)),
                cfg,
                path: path.to_owned(),
                public_key,
                stats,
            }),
        })
    }

    /// The writer's figures for metrics.
    pub fn stats(&self) -> AuditStatsSnapshot {
        let s = &self.inner.stats;
        let last = s.last_checkpoint_ms.load(std::sync::atomic::Ordering::Relaxed);
        AuditStatsSnapshot {
            queue_depth: self.inner.cfg.queue_capacity.saturating_sub(self.inner.slots.available_permits()) as u64,
            records: s.records.load(std::sync::atomic::Ordering::Relaxed),
            commit_failures: s.commit_failures.load(std::sync::atomic::Ordering::Relaxed),
            commit_latency: s.clone(),
            healthy: self.is_healthy(),
            last_checkpoint_age_secs: if last == 0 { -1.0 } else { (now_ms() - last).max(0) as f64 / 1000.0 },
        }
    }

    /// Appends a record and returns it as committed: `Ok` means durable. Fails with
    /// [`AuditError::Unavailable`] within [`AuditConfig::append_timeout`] when the log cannot
    /// be written, and with [`AuditError::Closed`] after [`AuditLog::shutdown`].
    ///
    /// Dropping the future before its batch starts committing withdraws the record.
    pub async fn append(&self, mut rec: AuditRecord) -> Result<AuditEvent, AuditError> {
        rec.bound_lengths();
        let inner = &self.inner;
        let work = async {
            let slot = inner.slots.clone().acquire_owned().await.map_err(|_| AuditError::Closed)?;
            let (reply, answer) = oneshot::channel();
            inner
                .commands
                .send(Command::Append(Pending { rec, reply, _slot: slot }))
                .map_err(|_| AuditError::Closed)?;
            // The writer drops the reply only when it exits without answering.
            answer.await.map_err(|_| AuditError::Closed)?
        };
        // Dropping `work` on timeout closes the reply channel, and the writer skips records
        // whose caller has gone, so a timed-out append is recorded only if its batch was
        // already committing.
        tokio::time::timeout(inner.cfg.append_timeout, work).await.unwrap_or_else(|_| {
            Err(AuditError::Unavailable {
                reason: format!("the record was not durable within {} ms", inner.cfg.append_timeout.as_millis()),
            })
        })
    }

    /// Signs and stores a checkpoint of the current head (or returns the one already stored
    /// for it).
    pub async fn checkpoint_now(&self) -> Result<Checkpoint, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.inner.commands.send(Command::Checkpoint(reply)).map_err(|_| AuditError::Closed)?;
        match tokio::time::timeout(self.inner.cfg.append_timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => Err(AuditError::Unavailable { reason: "the checkpoint was not written in time".into() }),
        }
    }

    /// Stops accepting appends, lets the writer commit what is already queued, writes a final
    /// checkpoint (if the head is not covered yet), and stops the writer. Appends nothing.
    pub async fn shutdown(&self) {
        self.inner.slots.close();
        let (reply, done) = oneshot::channel();
        let stopped = if self.inner.commands.send(Command::Shutdown(reply)).is_ok() {
            // Bounded: the queued batch and the final checkpoint each wait at most the busy
            // timeout, plus one back-off if the batch failed.
            let bound = self.inner.cfg.append_timeout + self.inner.cfg.max_backoff + 2 * self.inner.cfg.busy_timeout;
            matches!(tokio::time::timeout(bound, done).await, Ok(Ok(())))
        } else {
            true
        };
        drop(lock(&self.inner.live).take());
        if stopped {
            let thread = lock(&self.inner.thread).take();
            if let Some(t) = thread {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }

    /// False while commits fail (and after shutdown): serve health as NOT_SERVING.
    pub fn is_healthy(&self) -> bool {
        *self.inner.health.borrow()
    }

    /// Health as a watch channel: `true` while the log can be written.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.inner.health.subscribe()
    }

    /// Events committed from now on, in sequence order. Only this process's events are
    /// broadcast, and a slow receiver lags: use [`AuditLog::watch`] for a gap-free stream.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEvent> {
        match lock(&self.inner.live).as_ref() {
            Some(live) => live.subscribe(),
            // Closed: a receiver whose sender is already gone.
            None => broadcast::channel(1).1,
        }
    }

    /// The audit database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The public half of the checkpoint signing key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.inner.public_key
    }

    /// Appends one record synchronously, with a checkpoint, in one transaction: for one-shot
    /// commands (the CLI's KEK rotation) that run beside, or instead of, a server. Same chain
    /// rules as [`AuditLog::append`]; waits up to the store's busy timeout for a running
    /// server's writer.
    pub fn append_blocking_once(
        path: &Path,
        signing_key: &SigningKey,
        mut rec: AuditRecord,
    ) -> Result<AuditEvent, AuditError> {
        rec.bound_lengths();
        let mut conn = db::open_writer(path, &signing_key.verifying_key(), None)?;
        let unavailable = |e: AuditError| AuditError::Unavailable { reason: e.to_string() };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(e.into()))?;
        let time_ms = now_ms();
        let mut links = Vec::with_capacity(1);
        let (seq, hash) = db::append_in_tx(&tx, time_ms, std::iter::once(&rec), &mut links).map_err(unavailable)?;
        db::put_checkpoint(&tx, signing_key, seq, hash).map_err(unavailable)?;
        tx.commit().map_err(|e| unavailable(e.into()))?;
        let prev_hash = links.first().map_or(super::GENESIS_HASH, |l| l.1);
        Ok(AuditEvent { sequence: seq, time_ms, prev_hash, hash, record: rec })
    }
}

/// The writer thread's state. Owns the only write connection of this process.
struct Writer {
    stats: Arc<AuditStats>,
    conn: Connection,
    key: SigningKey,
    cfg: AuditConfig,
    rx: mpsc::Receiver<Command>,
    health: Arc<watch::Sender<bool>>,
    live: broadcast::Sender<AuditEvent>,
    /// The head as of this writer's last commit (another process may have moved it since).
    head_seq: i64,
    /// The highest sequence known to be covered by a checkpoint.
    checkpointed_seq: i64,
    last_checkpoint: Option<Instant>,
    backoff: Duration,
    batch: Vec<Pending>,
    checkpoint_waiters: Vec<Reply<Checkpoint>>,
    /// (sequence, prev_hash, hash) of the batch being committed; reused between batches.
    links: Vec<(i64, [u8; 32], [u8; 32])>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Also on a panic: a dead writer must never look healthy.
        self.health.send_replace(false);
    }
}

impl Writer {
    fn run(mut self) {
        let mut stop = None;
        loop {
            let first = match self.wait_time() {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => self.rx.recv_timeout(d),
            };
            match first {
                Ok(cmd) => stop = self.take(cmd),
                Err(RecvTimeoutError::Timeout) => {
                    self.on_timer();
                    continue;
                }
                // Every handle dropped: finish like a shutdown.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while stop.is_none() && self.batch.len() < self.cfg.max_batch {
                match self.rx.try_recv() {
                    Ok(cmd) => stop = self.take(cmd),
                    Err(_) => break,
                }
            }
            self.flush();
            if stop.is_some() {
                break;
            }
        }
        if self.head_seq > self.checkpointed_seq
            && let Err(e) = self.write_checkpoint()
        {
            tracing::warn!(error = %e, "could not write the final audit checkpoint");
        }
        if let Some(s) = stop {
            let _ = s.send(());
        }
    }

    fn take(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Append(p) => self.batch.push(p),
            Command::Checkpoint(reply) => self.checkpoint_waiters.push(reply),
            Command::Shutdown(done) => return Some(done),
        }
        None
    }

    /// How long to wait for work before the timer is due; `None`: nothing to do until then.
    fn wait_time(&self) -> Option<Duration> {
        if !*self.health.borrow() {
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
                self.mark_failed(&e);
                self.back_off();
            }
        }
    }

    /// Commits the drained batch (and a checkpoint if one is due or asked for), then answers.
    fn flush(&mut self) {
        // A caller that timed out has been told the record failed: do not record it.
        self.batch.retain(|p| !p.reply.is_closed());
        if self.batch.is_empty() && self.checkpoint_waiters.is_empty() {
            return;
        }
        let due = !self.checkpoint_waiters.is_empty()
            || self.last_checkpoint.is_none_or(|t| t.elapsed() >= self.cfg.checkpoint_interval);
        let started = Instant::now();
        let committed = self.commit(due);
        self.stats.latency.observe(started.elapsed());
        match committed {
            Ok((time_ms, checkpoint)) => {
                self.stats.records.fetch_add(self.batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if checkpoint.is_some() {
                    self.stats.last_checkpoint_ms.store(time_ms, std::sync::atomic::Ordering::Relaxed);
                }
                self.succeeded();
                // Cloning for live subscribers only when there are any keeps the hot path
                // free of per-record allocations beyond the record itself.
                let live = self.live.receiver_count() > 0;
                for (p, &(sequence, prev_hash, hash)) in self.batch.drain(..).zip(self.links.iter()) {
                    let ev = AuditEvent { sequence, time_ms, record: p.rec, prev_hash, hash };
                    if live {
                        let _ = self.live.send(ev.clone());
                    }
                    let _ = p.reply.send(Ok(ev));
                }
                self.links.clear();
                if let Some(cp) = checkpoint {
                    for w in self.checkpoint_waiters.drain(..) {
                        let _ = w.send(Ok(cp.clone()));
                    }
                }
            }
            Err(e) => {
                self.stats.commit_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Health first: whoever sees the error may look at health next.
                self.mark_failed(&e);
                let reason = e.to_string();
                for p in self.batch.drain(..) {
                    let _ = p.reply.send(Err(AuditError::Unavailable { reason: reason.clone() }));
                }
                for w in self.checkpoint_waiters.drain(..) {
                    let _ = w.send(Err(AuditError::Unavailable { reason: reason.clone() }));
                }
                self.links.clear();
                self.back_off();
            }
        }
    }

    /// One transaction: the batch, chained from the head read inside it, plus a checkpoint
    /// of the new head when `with_checkpoint`. Returns the batch's time and the checkpoint.
    fn commit(&mut self, with_checkpoint: bool) -> Result<(i64, Option<Checkpoint>), AuditError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let time_ms = now_ms();
        let (seq, hash) = db::append_in_tx(&tx, time_ms, self.batch.iter().map(|p| &p.rec), &mut self.links)?;
        let checkpoint = if with_checkpoint { Some(db::put_checkpoint(&tx, &self.key, seq, hash)?) } else { None };
        tx.commit()?;
        self.head_seq = seq;
        if checkpoint.is_some() {
            self.checkpointed_seq = seq;
            self.last_checkpoint = Some(Instant::now());
        }
        Ok((time_ms, checkpoint))
    }

    fn write_checkpoint(&mut self) -> Result<Checkpoint, AuditError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (seq, hash) = db::head(&tx)?;
        let cp = db::put_checkpoint(&tx, &self.key, seq, hash)?;
        tx.commit()?;
        self.head_seq = seq;
        self.checkpointed_seq = seq;
        self.last_checkpoint = Some(Instant::now());
        self.stats.last_checkpoint_ms.store(cp.time_ms, std::sync::atomic::Ordering::Relaxed);
        Ok(cp)
    }

    /// A real write outside the chain, to learn whether the file is writable again.
    fn probe(&mut self) -> Result<(), AuditError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("INSERT OR REPLACE INTO writer_probe (id, time_ms) VALUES (1, ?1)")?.execute([now_ms()])?;
        tx.commit()?;
        Ok(())
    }

    fn succeeded(&mut self) {
        self.backoff = INITIAL_BACKOFF;
        if self.health.send_if_modified(|h| !std::mem::replace(h, true)) {
            tracing::info!("audit log is writable again");
        }
    }

    fn mark_failed(&mut self, e: &AuditError) {
        if self.health.send_if_modified(|h| std::mem::replace(h, false)) {
            tracing::error!(error = %e, "audit commit failed; requests fail closed until the log is writable again");
        }
    }

    fn back_off(&mut self) {
        // Blocking the writer thread is the point: nothing can commit meanwhile, and what
        // queues up is tried as one batch afterwards.
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(self.cfg.max_backoff.max(INITIAL_BACKOFF));
    }
}
