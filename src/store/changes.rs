//! Changes made through one replica, told to the others: PostgreSQL's `LISTEN`/`NOTIFY`
//! on one channel ([`CHANNEL`]).
//!
//! A write announces what it changes inside its transaction ([`announce`]); PostgreSQL
//! delivers the notification when, and only if, the transaction commits, to every session
//! listening at that moment. A [`ChangeFeed`] is one replica's listener: its own thread and
//! connection, handing each change to its subscribers (the broker drops what it cached).
//!
//! A listener that was not listening misses what was sent meanwhile, so every (re)connect
//! begins with [`Change::All`] (drop everything cached), and so does a subscriber that fell
//! behind. A connection that goes quiet is found out by a heartbeat (`SELECT 1` every
//! [`HEARTBEAT`], answered within it) and replaced. On SQLite there is one process and
//! nothing to announce.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use super::error::StoreError;
use super::pg_connect::{configure, connect};
use super::postgres::{PostgresOptions, failed};
use super::sql::{Backend, Sql, args};

/// The notification channel of the vault's changes.
pub const CHANNEL: &str = "pogo_vault_changes";
/// How often a listening connection proves it is alive, and how long it has to answer.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A tenant's key, status, metadata or existence.
    Tenant(String),
    /// An environment's integration (application key, base URL, subscription keys, the
    /// active one).
    Integration(String),
    /// The master key or the vault's own keys.
    MasterKey,
    /// Anything: drop every cache (a listener that (re)connected or fell behind).
    All,
}

impl Change {
    fn payload(&self) -> String {
        match self {
            Change::Tenant(id) => format!("tenant:{id}"),
            Change::Integration(env) => format!("integration:{env}"),
            Change::MasterKey => "master-key".into(),
            Change::All => "all".into(),
        }
    }

    /// A notification's payload `ORIGIN CHANGE` (or `CHANGE` alone): the origin (the
    /// connection that made the change) and the change.
    pub fn parse_with_origin(payload: &str) -> (Option<&str>, Change) {
        match payload.split_once(' ') {
            Some((origin, change)) => (Some(origin), Change::parse(change)),
            None => (None, Change::parse(payload)),
        }
    }

    /// A change's payload; anything unknown (a newer replica's) is [`Change::All`].
    pub fn parse(payload: &str) -> Change {
        match payload.split_once(':') {
            Some(("tenant", id)) if !id.is_empty() => Change::Tenant(id.to_owned()),
            Some(("integration", env)) if !env.is_empty() => Change::Integration(env.to_owned()),
            _ if payload == "master-key" => Change::MasterKey,
            _ => Change::All,
        }
    }
}

/// Announces `change` inside write transaction `tx`: delivered to the other replicas when
/// the transaction commits, never if it rolls back. Nothing on SQLite.
pub fn announce(tx: &mut dyn Sql, change: &Change) -> Result<(), StoreError> {
    if tx.backend() != Backend::Postgres {
        return Ok(());
    }
    // Its origin first: the replica that made it has updated its own caches already, and
    // skips it (its own write would otherwise evict what it cached just after).
    let payload = match tx.origin() {
        Some(origin) => format!("{origin} {}", change.payload()),
        None => change.payload(),
    };
    tx.execute("SELECT pg_notify(?1, ?2)", args![CHANNEL, payload])?;
    Ok(())
}

/// One replica's listener: a thread with its own connection, reconnecting on its own.
/// Dropping it stops the thread (within a second).
pub struct ChangeFeed {
    sender: broadcast::Sender<Change>,
    stop: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChangeFeed(listening={})", self.is_listening())
    }
}

impl ChangeFeed {
    /// Starts listening on the database `options` names.
    pub fn start(options: PostgresOptions) -> Result<ChangeFeed, StoreError> {
        Self::start_ignoring(options, None)
    }

    /// [`ChangeFeed::start`], skipping the changes made through the connection whose origin
    /// is `own` (`Store::change_origin`): this replica's own.
    pub fn start_ignoring(options: PostgresOptions, own: Option<String>) -> Result<ChangeFeed, StoreError> {
        options.check()?;
        let (sender, _) = broadcast::channel(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let listening = Arc::new(AtomicBool::new(false));
        let feed = ChangeFeed { sender: sender.clone(), stop: stop.clone(), listening: listening.clone() };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the change feed's runtime: {e}")))?;
        std::thread::Builder::new()
            .name("pogo-vault-changes".into())
            .spawn(move || {
                // However the thread ends (a panic included), the feed no longer listens.
                struct NotListening(Arc<AtomicBool>);
                impl Drop for NotListening {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::SeqCst);
                    }
                }
                let _guard = NotListening(listening.clone());
                rt.block_on(listen(options, own, sender, stop, listening))
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the change feed: {e}")))?;
        Ok(feed)
    }

    /// Changes from now on. A receiver that lags gets `Lagged`: treat it as [`Change::All`].
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }

    /// Whether the feed is connected and listening now (if not, changes made elsewhere are
    /// not seen until it is, and then as [`Change::All`]).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn listen(
    options: PostgresOptions,
    own: Option<String>,
    sender: broadcast::Sender<Change>,
    stop: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::SeqCst) {
        let result = listen_once(&options, own.as_deref(), &sender, &stop, &listening).await;
        listening.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(db = %options.describe(), error = %e, "change feed: not listening; connecting again");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Listens until the connection fails (`Err`) or the feed is stopped (`Ok`).
async fn listen_once(
    options: &PostgresOptions,
    own: Option<&str>,
    sender: &broadcast::Sender<Change>,
    stop: &AtomicBool,
    listening: &AtomicBool,
) -> Result<(), StoreError> {
    let (cfg, tls, deadline) = configure(options)?;
    let (client, mut conn) = connect(&cfg, &tls, deadline).await?;
    let closed = || StoreError::Unavailable("the change feed's connection closed".into());
    // A request is answered only while the connection is driven: drive it beside each.
    let mut request: Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + '_>> =
        Box::pin(client.batch_execute("LISTEN pogo_vault_changes"));
    let mut asked = Instant::now();
    let mut pending = true;
    let mut next_beat = Instant::now() + HEARTBEAT;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if pending && asked.elapsed() > HEARTBEAT {
            return Err(StoreError::Unavailable(format!("no answer within {} s", HEARTBEAT.as_secs())));
        }
        if !pending && Instant::now() >= next_beat {
            request = Box::pin(async { client.simple_query("SELECT 1").await.map(drop) });
            asked = Instant::now();
            pending = true;
        }
        tokio::select! {
            answered = &mut request, if pending => {
                answered.map_err(|e| failed(&e))?;
                if !listening.swap(true, Ordering::SeqCst) {
                    // Whatever changed while nobody here was listening.
                    let _ = sender.send(Change::All);
                    tracing::info!(db = %options.describe(), "change feed: listening");
                }
                pending = false;
                next_beat = Instant::now() + HEARTBEAT;
            }
            message = tokio::time::timeout(Duration::from_secs(1), poll_fn(|cx| conn.poll_message(cx))) => {
                match message {
                    Err(_) => {}
                    Ok(None) => return Err(closed()),
                    Ok(Some(Err(e))) => return Err(failed(&e)),
                    Ok(Some(Ok(AsyncMessage::Notification(n)))) if n.channel() == CHANNEL => {
                        let (origin, change) = Change::parse_with_origin(n.payload());
                        if own.is_none() || origin != own {
                            let _ = sender.send(change);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_unknown_ones_mean_everything() {
        for c in [Change::Tenant("acme-1".into()), Change::Integration("demo".into()), Change::MasterKey, Change::All] {
            assert_eq!(Change::parse(&c.payload()), c);
        }
        assert_eq!(Change::parse("tenant:"), Change::All);
        assert_eq!(Change::parse("subscription:demo"), Change::All);
    }
}
