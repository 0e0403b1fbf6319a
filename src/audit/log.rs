//! [`AuditLog`]: the audit log's handle, what servers append through (cheap to clone; all
//! clones share one writer thread). Opening it refuses a signing key the log has handed
//! over, signs an unsigned tail found at open (`signing`), and starts the writer thread
//! (`writer`), the watchdog (`handoff`), the tenant indexer and the witnesses. An append
//! joins the open batch and waits on its completion cell (`handoff`), so `Ok` means durable.
//! Also the one-shot append of CLI commands ([`AuditLog::append_blocking_once`]), in a
//! transaction of its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::sync::{broadcast, oneshot, watch};

use super::chain::Checkpoint;
use super::db_backend::{AuditDb, Readers};
use super::handoff::{Batch, Done, Queue, Receipt, Shared, Watchdog, lock};
use super::record::{AuditEvent, AuditRecord};
use super::signing::{retired_at_open, sign_unsigned_tail};
use super::sinks::{Origin, SinkSet, SinkStatus};
use super::stats::{AuditStats, AuditStatsSnapshot};
use super::tenant_indexer::Indexer;
use super::witness::{WitnessSet, WitnessStatus};
use super::writer::{INITIAL_BACKOFF, Writer};
use super::{AuditConfig, AuditError, db, handover};
use crate::store::sql::Backend;
use crate::store::{PostgresOptions, now_ms};

/// How long a stop waits for the witnesses to take what they still hold.
const WITNESS_DRAIN_AT_STOP: Duration = Duration::from_secs(2);
/// How long a stop waits for the audit sinks to deliver the log's last events.
const SINK_DRAIN_AT_STOP: Duration = Duration::from_secs(2);

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
    location: AuditLocation,
    /// Where this process's queries, watches and sinks read (on PostgreSQL, a bounded pool).
    readers: Readers,
    public_key: VerifyingKey,
    /// The tenant index beside a SQLite file (PostgreSQL indexes `tenant_id` itself).
    indexer: Option<Arc<Indexer>>,
    witness: Arc<WitnessSet>,
    sinks: Arc<SinkSet>,
}

/// Where the audit log lives.
#[derive(Clone, Debug)]
pub enum AuditLocation {
    /// Its own SQLite file.
    File(PathBuf),
    /// The audit tables of a PostgreSQL database shared by every replica.
    Postgres(PostgresOptions),
}

impl AuditLocation {
    /// The file or the database, for messages (never a password).
    pub fn describe(&self) -> String {
        match self {
            AuditLocation::File(p) => p.display().to_string(),
            AuditLocation::Postgres(o) => o.describe(),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(i) = &self.indexer {
            i.stop();
        }
        // Every handle is gone: the writer finishes what is queued and stops, like a shutdown.
        lock(&self.shared.queue).closed = true;
        self.writer.unpark();
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({})", self.inner.location.describe())
    }
}

impl AuditLog {
    /// Opens (creating it with mode 0600 if missing) the audit database at `path` and starts
    /// the writer thread. `signing_key` signs checkpoints ([`crate::vault::Vault::audit_signing_key`]).
    pub fn open(path: &Path, signing_key: SigningKey, cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        let conn = db::open_writer(path, &signing_key.verifying_key(), Some(cfg.busy_timeout))?;
        Self::start(AuditDb::Sqlite(conn), AuditLocation::File(path.to_owned()), signing_key, cfg)
    }

    /// Opens the audit tables of a PostgreSQL database (creating them if missing) and starts
    /// the writer thread: one global chain shared with every other replica on the database,
    /// each group commit under the advisory lock `AUDIT_LOCK` and signed (see `writer`).
    /// Sinks keep their cursors in the vault's tables there, one replica delivering each.
    pub fn open_postgres(
        options: &PostgresOptions,
        signing_key: SigningKey,
        cfg: AuditConfig,
    ) -> Result<AuditLog, AuditError> {
        let mut conn = AuditDb::connect_postgres(options)?;
        db::register_key(conn.sql()?, &signing_key.verifying_key())?;
        Self::start(conn, AuditLocation::Postgres(options.clone()), signing_key, cfg)
    }

    fn start(
        mut conn: AuditDb,
        location: AuditLocation,
        signing_key: SigningKey,
        cfg: AuditConfig,
    ) -> Result<AuditLog, AuditError> {
        let cfg = AuditConfig {
            max_batch: cfg.max_batch.max(1),
            queue_capacity: cfg.queue_capacity.max(1),
            broadcast_capacity: cfg.broadcast_capacity.max(1),
            append_timeout: cfg.append_timeout.max(Duration::from_millis(10)),
            ..cfg
        };
        let public_key = signing_key.verifying_key();
        let key_id = crate::crypto::audit_key_id(public_key.as_bytes());
        let failed = |what: &str, e: std::io::Error| AuditError::Unavailable {
            reason: format!("cannot start the audit {what} thread: {e}"),
        };
        if handover::is_retired(conn.sql()?, &key_id)? {
            return Err(retired_at_open(&key_id));
        }
        let witness = Arc::new(WitnessSet::start(&cfg.witness).map_err(|e| failed("witness", e))?);
        let stats = Arc::new(AuditStats::default());
        let (mut head_seq, mut head_hash) = db::head(conn.sql()?)?;
        let mut checkpointed_seq = db::latest_checkpoint(conn.sql()?)?.map_or(0, |c| c.sequence);
        let mut last_signed = None;
        if conn.backend() == Backend::Postgres {
            // Every commit on PostgreSQL carries its checkpoint: no writer leaves a tail, so
            // the head must be covered by a checkpoint that verifies under this key.
            super::signing::head_is_signed(conn.sql()?, (head_seq, head_hash), &public_key, checkpointed_seq)?;
        }
        if head_seq > checkpointed_seq {
            let cp = sign_unsigned_tail(&mut conn, &signing_key)?;
            witness.offer(&cp);
            stats.last_checkpoint_ms.store(cp.time_ms, Ordering::Relaxed);
            (head_seq, head_hash, checkpointed_seq) = (cp.sequence, cp.head_hash, cp.sequence);
            last_signed = Some(cp);
        }
        stats.head.store(head_seq, Ordering::Relaxed);
        let readers = match &location {
            AuditLocation::File(path) => Readers::File(path.clone()),
            AuditLocation::Postgres(options) => Readers::postgres(options),
        };
        let sinks = Arc::new(match (&cfg.sinks[..], &cfg.sink_cursors, &location) {
            ([], _, _) => SinkSet::none(stats.clone()),
            (sinks, Some(cursors), AuditLocation::File(path)) => {
                SinkSet::start(sinks, Origin::File { audit_db: path, cursors }, stats.clone())?
            }
            (sinks, _, AuditLocation::Postgres(options)) => {
                SinkSet::start(sinks, Origin::Postgres { readers: &readers, options }, stats.clone())?
            }
            (_, None, _) => {
                return Err(AuditError::Unavailable {
                    reason: "audit sinks need the vault database for their cursors".into(),
                });
            }
        });

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
        let indexer = match &location {
            AuditLocation::File(path) => {
                Some(Arc::new(Indexer::start(path, cfg.tenant_index_interval).map_err(|e| failed("index", e))?))
            }
            AuditLocation::Postgres(_) => None,
        };
        let stop_indexer = |indexer: &Option<Arc<Indexer>>| {
            if let Some(i) = indexer {
                i.stop();
            }
        };
        let thread = std::thread::Builder::new().name("pogo-audit-writer".into()).spawn(move || writer.run());
        let thread = thread.map_err(|e| {
            stop_indexer(&indexer);
            failed("writer", e)
        })?;
        let _ = shared.writer.set(thread.thread().clone());
        let watchdog = Watchdog { shared: shared.clone(), limit: cfg.append_timeout };
        if let Err(e) = std::thread::Builder::new().name("pogo-audit-watch".into()).spawn(move || watchdog.run()) {
            stop_indexer(&indexer);
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
                location,
                readers,
                public_key,
                witness,
                sinks,
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
            unawaited_lost: s.unawaited_lost.load(Ordering::Relaxed),
            commit_latency: s.clone(),
            healthy: self.is_healthy(),
            last_checkpoint_age_secs: if last == 0 { -1.0 } else { (now_ms() - last).max(0) as f64 / 1000.0 },
            tenant_index_lag: s.head.load(Ordering::Relaxed).saturating_sub(self.tenant_index_through()).max(0) as u64,
            witnesses: self.witness_status(),
            sinks: self.sink_status(),
            log_bytes: self.path().map_or(0, super::archive::log_bytes),
            oldest_sequence: self.inner.indexer.as_ref().map_or(0, |i| i.oldest()),
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
    #[tracing::instrument(name = "audit.append", level = "debug", skip_all, fields(batch_size = tracing::field::Empty))]
    pub async fn append_receipt(&self, mut rec: AuditRecord) -> Result<Receipt, AuditError> {
        rec.bound_lengths();
        let (done, index) = self.enqueue(rec, true)?;
        let outcome = done.wait().await;
        if let super::handoff::Outcome::Durable { links, .. } = outcome {
            tracing::Span::current().record("batch_size", links.len() as i64);
        }
        outcome.receipt(index)
    }

    /// Appends a record without waiting for it: it joins the open batch and is durable
    /// when that batch commits (within the writer's next commit; a batch that fails is
    /// tried again with the next one, within [`AuditConfig::append_timeout`] of the append).
    /// For a record whose fact is durable already (a caller asking again for a token it
    /// holds: DESIGN.md invariant 6). Still fail closed: refused at once
    /// ([`AuditError::Unavailable`]) while the log is failing, while its queue is full, and
    /// while the writer has left a batch uncommitted for longer than
    /// [`AuditConfig::busy_timeout`] (a lock or a stuck disk it has not given up on yet), so
    /// an outage answers unawaited appends for at most that long.
    pub fn append_unawaited(&self, mut rec: AuditRecord) -> Result<(), AuditError> {
        if !self.is_healthy() {
            return Err(AuditError::Unavailable { reason: "the audit log is failing".into() });
        }
        rec.bound_lengths();
        self.enqueue(rec, false).map(|_| ())
    }

    /// [`AuditLog::append_receipt`] for blocking code: a vault transaction that waits, still
    /// open, for its change's record (audit before effect). Blocks the calling thread (never
    /// call it on a runtime worker); bounded like every append by the watchdog.
    pub fn append_wait(&self, mut rec: AuditRecord) -> Result<Receipt, AuditError> {
        rec.bound_lengths();
        let (done, index) = self.enqueue(rec, true)?;
        block_on(done.wait()).receipt(index)
    }

    /// Puts `rec` in the open batch; returns the batch's cell and the record's index in it.
    /// `awaited`: someone waits on the cell for this record.
    fn enqueue(&self, rec: AuditRecord, awaited: bool) -> Result<(Arc<Done>, usize), AuditError> {
        let inner = &self.inner;
        let mut q = lock(&inner.shared.queue);
        if q.closed {
            return Err(AuditError::Closed);
        }
        if !awaited {
            let oldest = q.in_flight.iter().map(|(_, t)| *t).chain(q.batches.front().map(|b| b.queued_at)).min();
            if let Some(t) = oldest
                && t.elapsed() > inner.cfg.busy_timeout
            {
                return Err(AuditError::Unavailable {
                    reason: format!("the audit writer has not committed for {} ms", t.elapsed().as_millis()),
                });
            }
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
            let batch = Batch { records, unawaited: Vec::new(), done: Arc::default(), queued_at: Instant::now() };
            q.batches.push_back(batch);
        }
        let Some(batch) = q.batches.back_mut() else { unreachable!("a batch was just ensured") };
        if !awaited {
            batch.unawaited.push(batch.records.len());
        }
        batch.records.push(rec);
        let found = (batch.done.clone(), batch.records.len() - 1);
        q.queued += 1;
        inner.shared.stats.queued.store(q.queued as u64, Ordering::Relaxed);
        let wake = if !q.lingering || awaited || q.batches.len() > 1 {
            q.lingering = false;
            std::mem::take(&mut q.writer_idle)
        } else {
            false
        };
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
        if let Some(indexer) = self.inner.indexer.clone() {
            let _ = tokio::task::spawn_blocking(move || indexer.stop_and_join()).await;
        }
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
        // The sinks deliver the last events (the stop's record, the final checkpoint) and
        // save their cursors; one that is down resumes from its cursor at the next start.
        let sinks = self.inner.sinks.clone();
        let _ = tokio::task::spawn_blocking(move || sinks.close_and_wait(SINK_DRAIN_AT_STOP)).await;
    }

    /// The newest checkpoint this process signed (kept in memory; see [`AuditLog::verify`]).
    pub fn last_signed(&self) -> Option<Checkpoint> {
        self.inner.shared.last_signed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each configured audit sink's delivery figures (cursor, lag, failures).
    pub fn sink_status(&self) -> Vec<SinkStatus> {
        self.inner.sinks.status()
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

    /// The audit database file (`None` on PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.location {
            AuditLocation::File(p) => Some(p),
            AuditLocation::Postgres(_) => None,
        }
    }

    /// Where the log lives.
    pub fn location(&self) -> &AuditLocation {
        &self.inner.location
    }

    /// Where this process's queries read (see [`Readers`]).
    pub(crate) fn readers(&self) -> Readers {
        self.inner.readers.clone()
    }

    /// The highest sequence the background tenant index covers (tenant queries scan the
    /// events after it). For metrics and tests. On PostgreSQL, where `tenant_id` is indexed
    /// in the table itself, the head.
    pub fn tenant_index_through(&self) -> i64 {
        match &self.inner.indexer {
            Some(i) => i.through(),
            None => self.inner.shared.stats.head.load(Ordering::Relaxed),
        }
    }

    /// How often this process started the tenant index over (found damaged, deleted,
    /// replaced, or not matching the log). For tests and operators.
    pub fn tenant_index_rebuilds(&self) -> u64 {
        self.inner.indexer.as_ref().map_or(0, |i| i.rebuilds())
    }

    /// The public half of the checkpoint signing key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.inner.public_key
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
