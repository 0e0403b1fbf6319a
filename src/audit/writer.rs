//! The group-commit writer: [`AuditLog`], the handle servers append through, and the one
//! thread that owns the write connection.
//!
//! Shape: an appender locks a small queue, adds its record to the open batch (a new one when
//! the last is full or already taken by the writer), wakes the writer only if it was idle,
//! and waits on the batch's shared completion cell. The writer takes the oldest batch,
//! commits it as one `BEGIN IMMEDIATE` transaction (the head is read inside it) and only then
//! completes the cell, so a completion means durable. One cell and one wake-up per batch,
//! not per record: with 16 records per commit that is what keeps the hand-off off the
//! profile (BENCHMARKS.md). The writer is a plain OS thread rather than a tokio task because
//! every step of its loop is blocking SQLite work.
//!
//! Failure: a batch that does not commit is answered with [`AuditError::Unavailable`] at
//! once, health turns false, and the writer backs off (25 ms doubling to `max_backoff`) and
//! tries again with whatever has queued meanwhile, or, with nothing queued, with a probe
//! write; the first success turns health true again. With the default settings a waiting
//! append is answered within about `busy_timeout + max_backoff + busy_timeout` (1 s). A
//! watchdog thread bounds everything else (an `fsync` that never returns, a dead writer): it
//! fails any batch older than `append_timeout`, so no append ever waits longer than that, and
//! no request pays for a timer of its own. A full queue fails an append at once.
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

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{Notify, broadcast, oneshot, watch};

use super::chain::Checkpoint;
use super::record::{AuditEvent, AuditRecord};
use super::signing::{retired_at_open, sign_checkpoint, sign_unsigned_tail, still_holds};
use super::tenant_indexer::Indexer;
use super::witness::{WitnessSet, WitnessStatus};
use super::{AuditConfig, AuditError, db, handover};
use crate::store::now_ms;

/// The first pause after a failed commit.
const INITIAL_BACKOFF: Duration = Duration::from_millis(25);
/// How long a stop waits for the witnesses to take what they still hold.
const WITNESS_DRAIN_AT_STOP: Duration = Duration::from_secs(2);

type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

/// Where one appended record landed in the chain: what [`AuditLog::append_receipt`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub sequence: i64,
    pub time_ms: i64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// How a batch ended, shared by every appender in it.
#[derive(Debug)]
enum Outcome {
    /// Committed at `time_ms`; `links[i]` is (sequence, prev_hash, hash) of the batch's i-th record.
    Durable {
        time_ms: i64,
        links: Vec<(i64, [u8; 32], [u8; 32])>,
    },
    Unavailable(String),
}

impl Outcome {
    /// What the appender of the batch's `index`-th record is told.
    fn receipt(&self, index: usize) -> Result<Receipt, AuditError> {
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
struct Done {
    outcome: OnceLock<Outcome>,
    notify: Notify,
}

impl Done {
    /// Sets the outcome unless one is set already; wakes the waiters. True if this call set it.
    fn complete(&self, outcome: Outcome) -> bool {
        let set = self.outcome.set(outcome).is_ok();
        if set {
            self.notify.notify_waiters();
        }
        set
    }

    async fn wait(&self) -> &Outcome {
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
struct Batch {
    records: Vec<AuditRecord>,
    done: Arc<Done>,
    queued_at: Instant,
}

/// What appenders and the writer share, under one short-held lock.
#[derive(Default)]
struct Queue {
    /// Oldest first; the last one takes new records while it has room.
    batches: VecDeque<Batch>,
    /// Records in `batches`.
    queued: usize,
    checkpoint_waiters: Vec<Reply<Checkpoint>>,
    shutdown: Option<oneshot::Sender<()>>,
    /// No more appends are taken.
    closed: bool,
    /// The writer is parked with nothing to do: the next arrival must unpark it.
    writer_idle: bool,
    /// The batch the writer is committing and when it was queued (for the watchdog).
    in_flight: Option<(Arc<Done>, Instant)>,
}

/// Shared by the handle, the writer thread and the watchdog.
struct Shared {
    queue: Mutex<Queue>,
    health: watch::Sender<bool>,
    stats: Arc<AuditStats>,
    /// The writer thread, for the watchdog to wake after it failed a batch.
    writer: OnceLock<Thread>,
    /// The newest checkpoint this process signed: held in memory, out of reach of an edit of
    /// the file, so the server's own verification uses it like a kept checkpoint.
    last_signed: Mutex<Option<Checkpoint>>,
}

impl Shared {
    fn signed(&self, cp: &Checkpoint) {
        let mut last = self.last_signed.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_none_or(|l| l.sequence <= cp.sequence) {
            *last = Some(cp.clone());
        }
    }

    fn mark_failed(&self, reason: &str) {
        if self.health.send_if_modified(|h| std::mem::replace(h, false)) {
            tracing::error!(error = %reason, "audit commit failed; requests fail closed until the log is writable again");
        }
    }
}

/// The audit log's writer handle. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Thread,
    /// Taken at shutdown, so live subscribers see the end of the stream.
    live: Mutex<Option<broadcast::Sender<AuditEvent>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    cfg: AuditConfig,
    path: PathBuf,
    public_key: VerifyingKey,
    indexer: Arc<Indexer>,
    witness: Arc<WitnessSet>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.indexer.stop();
        // Every handle is gone: the writer finishes what is queued and stops, like a shutdown.
        lock(&self.shared.queue).closed = true;
        self.writer.unpark();
    }
}

/// Counters the writer thread keeps for metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    records: AtomicU64,
    commit_failures: AtomicU64,
    queued: AtomicU64,
    /// The head this process last committed.
    head: AtomicI64,
    last_checkpoint_ms: AtomicI64,
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
    /// Events after the tenant index's watermark (tenant queries scan these).
    pub tenant_index_lag: u64,
    /// Each configured witness's delivery figures.
    pub witnesses: Vec<WitnessStatus>,
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
    // Every update under these locks is a single push, pop or flag write: a panic cannot
    // leave one half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AuditLog {
    /// Opens (creating it with mode 0600 if missing) the audit database at `path` and starts
    /// the writer thread. `signing_key` signs checkpoints ([`crate::vault::Vault::audit_signing_key`]).
    pub fn open(path: &Path, signing_key: SigningKey, cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        let cfg = AuditConfig {
            max_batch: cfg.max_batch.max(1),
            queue_capacity: cfg.queue_capacity.max(1),
            broadcast_capacity: cfg.broadcast_capacity.max(1),
            append_timeout: cfg.append_timeout.max(Duration::from_millis(10)),
            ..cfg
        };
        let public_key = signing_key.verifying_key();
        let key_id = crate::vault::audit_key_id(public_key.as_bytes());
        let failed = |what: &str, e: std::io::Error| AuditError::Unavailable {
            reason: format!("cannot start the audit {what} thread: {e}"),
        };
        let mut conn = db::open_writer(path, &public_key, Some(cfg.busy_timeout))?;
        if handover::is_retired(&conn, &key_id)? {
            return Err(retired_at_open(&key_id));
        }
        let witness = Arc::new(WitnessSet::start(&cfg.witness).map_err(|e| failed("witness", e))?);
        let stats = Arc::new(AuditStats::default());
        let (mut head_seq, mut head_hash) = db::head(&conn)?;
        let mut checkpointed_seq = db::latest_checkpoint(&conn)?.map_or(0, |c| c.sequence);
        let mut last_signed = None;
        if head_seq > checkpointed_seq {
            let cp = sign_unsigned_tail(&mut conn, &signing_key)?;
            witness.offer(&cp);
            stats.last_checkpoint_ms.store(cp.time_ms, Ordering::Relaxed);
            (head_seq, head_hash, checkpointed_seq) = (cp.sequence, cp.head_hash, cp.sequence);
            last_signed = Some(cp);
        }
        stats.head.store(head_seq, Ordering::Relaxed);

        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            health: watch::Sender::new(true),
            stats,
            writer: OnceLock::new(),
            last_signed: Mutex::new(last_signed),
        });
        let (live, _) = broadcast::channel(cfg.broadcast_capacity);
        let writer = Writer {
            shared: shared.clone(),
            conn,
            key: signing_key,
            key_id,
            witness: witness.clone(),
            cfg: cfg.clone(),
            live: live.clone(),
            head_seq,
            checkpointed_seq,
            last_checkpoint: None,
            backoff: INITIAL_BACKOFF,
            links: Vec::new(),
            written: (head_seq, head_hash),
        };
        let indexer = Arc::new(Indexer::start(path, cfg.tenant_index_interval).map_err(|e| failed("index", e))?);
        let thread = std::thread::Builder::new().name("pogo-audit-writer".into()).spawn(move || writer.run());
        let thread = thread.map_err(|e| {
            indexer.stop();
            failed("writer", e)
        })?;
        let _ = shared.writer.set(thread.thread().clone());
        let watchdog = Watchdog { shared: shared.clone(), limit: cfg.append_timeout };
        if let Err(e) = std::thread::Builder::new().name("pogo-audit-watch".into()).spawn(move || watchdog.run()) {
            indexer.stop();
            lock(&shared.queue).closed = true;
            thread.thread().unpark();
            return Err(failed("watchdog", e));
        }
        Ok(AuditLog {
            inner: Arc::new(Inner {
                indexer,
                shared,
                writer: thread.thread().clone(),
                live: Mutex::new(Some(live)),
                thread: Mutex::new(Some(thread)),
                cfg,
                path: path.to_owned(),
                public_key,
                witness,
            }),
        })
    }

    /// The writer's figures for metrics.
    pub fn stats(&self) -> AuditStatsSnapshot {
        let s = &self.inner.shared.stats;
        let last = s.last_checkpoint_ms.load(Ordering::Relaxed);
        AuditStatsSnapshot {
            queue_depth: s.queued.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            commit_failures: s.commit_failures.load(Ordering::Relaxed),
            commit_latency: s.clone(),
            healthy: self.is_healthy(),
            last_checkpoint_age_secs: if last == 0 { -1.0 } else { (now_ms() - last).max(0) as f64 / 1000.0 },
            tenant_index_lag: s.head.load(Ordering::Relaxed).saturating_sub(self.tenant_index_through()).max(0) as u64,
            witnesses: self.witness_status(),
        }
    }

    /// Appends a record and returns it as committed: `Ok` means durable. Fails with
    /// [`AuditError::Unavailable`] within [`AuditConfig::append_timeout`] when the log cannot
    /// be written (at once when the queue is full), and with [`AuditError::Closed`] after
    /// [`AuditLog::shutdown`].
    ///
    /// Dropping the future does not withdraw the record: once queued it is committed with its
    /// batch. (A request that gave up may therefore be recorded; one that was answered is
    /// always recorded.)
    pub async fn append(&self, rec: AuditRecord) -> Result<AuditEvent, AuditError> {
        let mut kept = rec.clone();
        kept.bound_lengths();
        let r = self.append_receipt(rec).await?;
        Ok(AuditEvent { sequence: r.sequence, time_ms: r.time_ms, prev_hash: r.prev_hash, hash: r.hash, record: kept })
    }

    /// [`AuditLog::append`] without handing the record back: the servers' hot path.
    pub async fn append_receipt(&self, mut rec: AuditRecord) -> Result<Receipt, AuditError> {
        rec.bound_lengths();
        let (done, index) = self.enqueue(rec)?;
        done.wait().await.receipt(index)
    }

    /// [`AuditLog::append_receipt`] for blocking code: a vault transaction that waits, still
    /// open, for its change's record (audit before effect). Blocks the calling thread (never
    /// call it on a runtime worker); bounded like every append by the watchdog.
    pub fn append_wait(&self, mut rec: AuditRecord) -> Result<Receipt, AuditError> {
        rec.bound_lengths();
        let (done, index) = self.enqueue(rec)?;
        block_on(done.wait()).receipt(index)
    }

    /// Puts `rec` in the open batch; returns the batch's cell and the record's index in it.
    fn enqueue(&self, rec: AuditRecord) -> Result<(Arc<Done>, usize), AuditError> {
        let inner = &self.inner;
        let mut q = lock(&inner.shared.queue);
        if q.closed {
            return Err(AuditError::Closed);
        }
        if q.queued >= inner.cfg.queue_capacity {
            return Err(AuditError::Unavailable {
                reason: format!("{} records are already waiting for the audit writer", q.queued),
            });
        }
        // A batch the watchdog already failed takes no one else.
        let joinable =
            q.batches.back().is_some_and(|b| b.records.len() < inner.cfg.max_batch && b.done.outcome.get().is_none());
        if !joinable {
            let records = Vec::with_capacity(inner.cfg.max_batch.min(64));
            q.batches.push_back(Batch { records, done: Arc::default(), queued_at: Instant::now() });
        }
        let Some(batch) = q.batches.back_mut() else { unreachable!("a batch was just ensured") };
        batch.records.push(rec);
        let found = (batch.done.clone(), batch.records.len() - 1);
        q.queued += 1;
        inner.shared.stats.queued.store(q.queued as u64, Ordering::Relaxed);
        let wake = std::mem::take(&mut q.writer_idle);
        drop(q);
        if wake {
            inner.writer.unpark();
        }
        Ok(found)
    }

    /// Signs and stores a checkpoint of the current head (or returns the one already stored
    /// for it).
    pub async fn checkpoint_now(&self) -> Result<Checkpoint, AuditError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut q = lock(&self.inner.shared.queue);
            if q.closed {
                return Err(AuditError::Closed);
            }
            q.checkpoint_waiters.push(reply);
            q.writer_idle = false;
        }
        self.inner.writer.unpark();
        match tokio::time::timeout(self.inner.cfg.append_timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => Err(AuditError::Unavailable { reason: "the checkpoint was not written in time".into() }),
        }
    }

    /// Stops accepting appends, lets the writer commit what is already queued, writes a final
    /// checkpoint (if the head is not covered yet), and stops the writer. Appends nothing.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        let first = {
            let mut q = lock(&self.inner.shared.queue);
            let first = !q.closed;
            if first {
                q.closed = true;
                q.shutdown = Some(reply);
                q.writer_idle = false;
            }
            first
        };
        // A second call (or one racing the first) does not wait: the first stops the writer.
        let stopped = if first {
            self.inner.writer.unpark();
            // Bounded: the queued batches and the final checkpoint each wait at most the busy
            // timeout, plus one back-off if a batch failed.
            let bound = self.inner.cfg.append_timeout + self.inner.cfg.max_backoff + 2 * self.inner.cfg.busy_timeout;
            matches!(tokio::time::timeout(bound, done).await, Ok(Ok(())))
        } else {
            false
        };
        drop(lock(&self.inner.live).take());
        // The index thread finishes its step and closes its files before this returns.
        let indexer = self.inner.indexer.clone();
        let _ = tokio::task::spawn_blocking(move || indexer.stop_and_join()).await;
        if stopped {
            let thread = lock(&self.inner.thread).take();
            if let Some(t) = thread {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
        // The final checkpoint goes to the witnesses too, if they take it soon; a witness
        // that is down does not hold up the stop.
        let witness = self.inner.witness.clone();
        let _ = tokio::task::spawn_blocking(move || witness.close_and_wait(WITNESS_DRAIN_AT_STOP)).await;
    }

    /// The newest checkpoint this process signed (kept in memory; see [`AuditLog::verify`]).
    pub fn last_signed(&self) -> Option<Checkpoint> {
        self.inner.shared.last_signed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each configured witness's delivery figures (backlog, failures), for metrics and status.
    pub fn witness_status(&self) -> Vec<WitnessStatus> {
        self.inner.witness.status()
    }

    /// False while commits fail (and after shutdown): serve health as NOT_SERVING.
    pub fn is_healthy(&self) -> bool {
        *self.inner.shared.health.borrow()
    }

    /// Health as a watch channel: `true` while the log can be written.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.inner.shared.health.subscribe()
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

    /// The highest sequence the background tenant index covers (tenant queries scan the
    /// events after it). For metrics and tests.
    pub fn tenant_index_through(&self) -> i64 {
        self.inner.indexer.through()
    }

    /// How often this process started the tenant index over (found damaged, deleted,
    /// replaced, or not matching the log). For tests and operators.
    pub fn tenant_index_rebuilds(&self) -> u64 {
        self.inner.indexer.rebuilds()
    }

    /// The public half of the checkpoint signing key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.inner.public_key
    }

    /// Appends one record synchronously, with a checkpoint, in one transaction: for one-shot
    /// commands (the CLI's KEK rotation) that run beside, or instead of, a server. Same chain
    /// rules as [`AuditLog::append`]; waits for a running server's writer at most the default
    /// append timeout, so a locked audit database fails a command in bounded time.
    pub fn append_blocking_once(
        path: &Path,
        signing_key: &SigningKey,
        mut rec: AuditRecord,
    ) -> Result<AuditEvent, AuditError> {
        rec.bound_lengths();
        let bound = Some(AuditConfig::default().append_timeout);
        let mut conn = db::open_writer(path, &signing_key.verifying_key(), bound).map_err(|e| match e {
            AuditError::Store(_) | AuditError::Sqlite(_) => AuditError::Unavailable { reason: e.to_string() },
            e => e,
        })?;
        let unavailable = |e: AuditError| AuditError::Unavailable { reason: e.to_string() };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(e.into()))?;
        let time_ms = now_ms();
        // The checkpoint below signs everything up to the new head. Events no checkpoint
        // covered yet (a running server's last second, or a tail a crash left) are signed
        // late, so say so in the log, as a server does at open: a record naming the range.
        let (head, _) = db::head(&tx).map_err(unavailable)?;
        let covered = db::latest_checkpoint(&tx).map_err(unavailable)?.map_or(0, |c| c.sequence);
        let mut records = Vec::with_capacity(2);
        if head > covered {
            records.push(
                AuditRecord::new(super::Action::UnsignedTailSigned, super::Outcome::Ok)
                    .caller(rec.caller.clone(), rec.caller_serial.clone())
                    .detail(format!(
                        "events {}..={head} were covered by no signed checkpoint when a command appended to the log \
                         (a running server's newest events, or a tail a crash left); signed now with the command's \
                         record. Nothing proves what happened to them before this point",
                        covered + 1
                    ))
                    .request(rec.request_id.clone(), rec.peer.clone()),
            );
        }
        records.push(rec.clone());
        let mut links = Vec::with_capacity(records.len());
        let (seq, hash) = db::append_in_tx(&tx, time_ms, records.iter(), &mut links).map_err(unavailable)?;
        // Never with a key the log has handed over (read inside this transaction).
        let key_id = crate::vault::audit_key_id(&signing_key.verifying_key().to_bytes());
        super::signing::sign_checkpoint(&tx, signing_key, &key_id, seq, hash).map_err(unavailable)?;
        tx.commit().map_err(|e| unavailable(e.into()))?;
        let prev_hash = links.last().map_or(super::GENESIS_HASH, |l| l.1);
        Ok(AuditEvent { sequence: seq, time_ms, prev_hash, hash, record: rec })
    }
}

/// Runs a future to completion on this thread, parking between polls. Only for
/// [`AuditLog::append_wait`], whose future waits on a completion cell that another thread
/// (the writer or the watchdog) always completes in bounded time.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

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
struct Writer {
    shared: Arc<Shared>,
    conn: Connection,
    key: SigningKey,
    /// The id of `key`'s public half, to notice a hand-over to a successor.
    key_id: String,
    witness: Arc<WitnessSet>,
    cfg: AuditConfig,
    live: broadcast::Sender<AuditEvent>,
    /// The head as of this writer's last commit (another process may have moved it since).
    head_seq: i64,
    /// The highest sequence known to be covered by a checkpoint.
    checkpointed_seq: i64,
    last_checkpoint: Option<Instant>,
    backoff: Duration,
    /// (sequence, prev_hash, hash) of the batch being committed.
    links: Vec<(i64, [u8; 32], [u8; 32])>,
    /// The newest event this writer committed (or found at open) and its hash: every
    /// transaction first checks that the file still holds it, so an edit, deletion or
    /// recomputed chain under a running writer is found at its next commit (at most
    /// `checkpoint_interval` later while events flow) and is never signed over.
    written: (i64, [u8; 32]),
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Also on a panic: a dead writer must never look healthy, and nothing may wait for
        // it. (After a normal stop the queue is already closed and empty.)
        self.shared.health.send_replace(false);
        let (waiting, shutdown) = {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            let mut waiting: Vec<Arc<Done>> = q.batches.drain(..).map(|b| b.done).collect();
            waiting.extend(q.in_flight.take().map(|(d, _)| d));
            q.queued = 0;
            q.checkpoint_waiters.clear();
            (waiting, q.shutdown.take())
        };
        for d in waiting {
            d.complete(Outcome::Unavailable("the audit writer stopped".into()));
        }
        drop(shutdown);
    }
}

impl Writer {
    fn run(mut self) {
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
                q.in_flight = None;
                while let Some(b) = q.batches.pop_front() {
                    q.queued -= b.records.len();
                    self.shared.stats.queued.store(q.queued as u64, Ordering::Relaxed);
                    // The watchdog already told these appenders no: do not record them.
                    if b.done.outcome.get().is_some() {
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
        let due =
            !waiters.is_empty() || self.last_checkpoint.is_none_or(|t| t.elapsed() >= self.cfg.checkpoint_interval);
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
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        still_holds(&tx, self.written)?;
        let time_ms = now_ms();
        let (seq, hash) = db::append_in_tx(&tx, time_ms, records.iter(), &mut self.links)?;
        let checkpoint =
            if with_checkpoint { Some(sign_checkpoint(&tx, &self.key, &self.key_id, seq, hash)?) } else { None };
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
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        still_holds(&tx, self.written)?;
        let (seq, hash) = db::head(&tx)?;
        let cp = sign_checkpoint(&tx, &self.key, &self.key_id, seq, hash)?;
        tx.commit()?;
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
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // An altered file stays a failure: health must not come back on a log we refuse.
        still_holds(&tx, self.written)?;
        tx.prepare_cached("INSERT OR REPLACE INTO writer_probe (id, time_ms) VALUES (1, ?1)")?.execute([now_ms()])?;
        tx.commit()?;
        Ok(())
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

/// Fails batches that have waited longer than the append timeout (the writer is stuck in a
/// system call, or gone), so an append never waits longer than that. Exits when the writer
/// and every handle are gone.
struct Watchdog {
    shared: Arc<Shared>,
    limit: Duration,
}

impl Watchdog {
    fn run(self) {
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
