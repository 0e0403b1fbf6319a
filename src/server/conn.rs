//! The TLS front door: accepts TCP, performs the TLS 1.3 handshake with the *current*
//! server configuration (swapped on SIGHUP), requires and verifies a client certificate,
//! and derives the caller's identity once per connection.
//!
//! Why our own acceptor rather than tonic's TLS: it lets certificates and CRLs reload
//! without a restart, bounds the handshake time, and computes the identity once per
//! connection instead of parsing the certificate on every request.
//!
//! # Handshake slots
//!
//! Before its handshake a peer is anonymous and costs us a socket and a task until the
//! handshake timeout. Two bounds keep such peers from locking real callers out:
//! [`MAX_PENDING_HANDSHAKES`] in all, and [`HandshakeLimits::per_address`] per source
//! address (an IPv4 address; for IPv6 the /64 prefix, since one host usually holds a whole
//! /64). A connection over either bound is closed at once, without a handshake. So a single
//! address that opens idle connections as fast as it can holds at most `per_address`
//! slots, and everyone else keeps the rest. Callers behind one NAT address share its
//! slots: raise `server.max_pending_handshakes_per_address` for them.
//!
//! The accept loop itself never waits on a peer: it accepts, counts, and hands each
//! connection to a task of its own, whose handshake is bounded by the timeout. Slots are
//! given back when the handshake ends, before the verified stream is queued for tonic.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::CertificateDer;

use crate::tls::{CallerIdentity, ServerTls, identity_from_der};

/// What every request on a connection knows about its caller.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub identity: Arc<CallerIdentity>,
    pub peer: SocketAddr,
    /// `peer` as text, formatted once per connection for the audit records of its requests.
    pub peer_text: Arc<str>,
    /// The client's certificate chain, to check again after a certificate/CRL reload.
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    /// The TLS generation this connection was last verified against.
    pub verified: Arc<AtomicU64>,
}

/// A verified mTLS connection with its caller identity.
pub struct CallerStream {
    inner: TlsStream<TcpStream>,
    info: ConnInfo,
}

impl CallerStream {
    /// Who the connection's caller is.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl Connected for CallerStream {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for CallerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CallerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The server TLS configuration in force; replaced whole on reload. Each reload bumps the
/// generation, and connections verified under an older one are checked again against the
/// new CAs and CRLs on their next request (a revoked caller must not keep an open channel).
///
/// The API gateway's listener shares it (same certificate, CAs, CRLs and reloads), with its
/// own ALPN list (HTTP/2 and HTTP/1.1; gRPC is HTTP/2 only).
#[derive(Debug)]
pub struct TlsState {
    current: RwLock<(ServerTls, Arc<rustls::ServerConfig>)>,
    generation: AtomicU64,
}

/// Which listener a connection came to: what its TLS offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// gRPC: `h2` only.
    Grpc,
    /// The API gateway: `h2` and `http/1.1`.
    Gateway,
}

/// `tls`'s configuration offering HTTP/2 and HTTP/1.1 (the gateway's).
fn gateway_config(tls: &ServerTls) -> Arc<rustls::ServerConfig> {
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl TlsState {
    pub fn new(tls: ServerTls) -> Self {
        let gateway = gateway_config(&tls);
        Self { current: RwLock::new((tls, gateway)), generation: AtomicU64::new(0) }
    }
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.config.clone()
    }
    /// The configuration for `listener`'s new connections.
    pub fn get_for(&self, listener: Listener) -> Arc<rustls::ServerConfig> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        match listener {
            Listener::Grpc => current.0.config.clone(),
            Listener::Gateway => current.1.clone(),
        }
    }
    pub fn set(&self, tls: ServerTls) {
        let gateway = gateway_config(&tls);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (tls, gateway);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether the connection's certificate is still accepted under the current CAs and
    /// CRLs. Cheap when nothing was reloaded since the connection was last checked.
    pub fn still_valid(&self, conn: &ConnInfo) -> bool {
        let generation = self.generation();
        if conn.verified.load(Ordering::SeqCst) == generation {
            return true;
        }
        let Some((leaf, intermediates)) = conn.chain.split_first() else { return false };
        let verifier = self.current.read().unwrap_or_else(|p| p.into_inner()).0.verifier.clone();
        let ok = verifier.verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now()).is_ok();
        if ok {
            conn.verified.store(generation, Ordering::SeqCst);
        }
        ok
    }
}

/// TLS handshakes in progress at once, from all addresses together, beyond which new
/// connections are dropped.
pub const MAX_PENDING_HANDSHAKES: usize = 512;

/// Default of [`HandshakeLimits::per_address`] (`server.max_pending_handshakes_per_address`).
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS: usize = 32;

/// How long, and how many at once, anonymous peers may hold a handshake open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// A handshake must finish within this.
    pub timeout: Duration,
    /// Handshakes in progress at once from one source address (IPv6: one /64).
    pub per_address: usize,
    /// Handshakes in progress at once in all.
    pub total: usize,
}

impl HandshakeLimits {
    /// `timeout` and `per_address`, with the global bound [`MAX_PENDING_HANDSHAKES`].
    pub fn new(timeout: Duration, per_address: usize) -> Self {
        Self { timeout, per_address, total: MAX_PENDING_HANDSHAKES }
    }
}

/// The source a per-address bound counts against: the IPv4 address, or the /64 of an IPv6
/// address (an IPv4-mapped IPv6 address counts as its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Source::V6Prefix(prefix)
            }
        }
    }
}

/// Handshake slots: a global count and one count per source. Only the accept loop takes
/// slots; the handshake tasks give them back when they drop their [`Slot`].
#[derive(Debug)]
struct Slots {
    limits: HandshakeLimits,
    inner: Mutex<SlotCounts>,
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    /// Only sources with a handshake in progress: entries are removed at zero, so the map
    /// never holds more than `limits.total` entries.
    per_source: HashMap<Source, usize>,
}

/// Why a connection got no handshake slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    PerAddress,
    Total,
}

impl Slots {
    fn new(limits: HandshakeLimits) -> Arc<Self> {
        Arc::new(Self { limits, inner: Mutex::new(SlotCounts::default()) })
    }

    /// A slot for a handshake from `ip`, or why there is none. Never waits.
    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let source = Source::of(ip);
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.per_source.get(&source).copied().unwrap_or(0);
        if mine >= self.limits.per_address {
            return Err(Refusal::PerAddress);
        }
        if c.total >= self.limits.total {
            return Err(Refusal::Total);
        }
        c.total += 1;
        c.per_source.insert(source, mine + 1);
        Ok(Slot { slots: self.clone(), source })
    }

    #[cfg(test)]
    fn pending(&self) -> (usize, usize) {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (c.total, c.per_source.len())
    }
}

/// One handshake in progress; gives its slot back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

/// Logs refused connections at most once per interval, with a count, so a flood of idle
/// connections cannot also flood the log.
#[derive(Debug)]
struct RefusalLog {
    interval: Duration,
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    fn refused(&mut self, peer: SocketAddr, why: Refusal, limits: &HandshakeLimits) {
        self.since_last += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.interval) {
            return;
        }
        let (reason, limit) = match why {
            Refusal::PerAddress => ("too many TLS handshakes in progress from this address", limits.per_address),
            Refusal::Total => ("too many TLS handshakes in progress", limits.total),
        };
        tracing::warn!(peer = %peer, limit, refused = self.since_last, "{reason}; connection dropped");
        self.last = Some(now);
        self.since_last = 0;
    }
}

/// Accepts connections until `stop` fires, handing verified streams to tonic (or, for
/// [`Listener::Gateway`], to the API gateway).
pub async fn accept_loop(
    listener: TcpListener,
    (tls, which): (Arc<TlsState>, Listener),
    limits: HandshakeLimits,
    tx: mpsc::Sender<Result<CallerStream, io::Error>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Unauthenticated peers can hold a handshake open until the timeout: bound how many,
    // per source address and in all.
    let slots = Slots::new(limits);
    let mut refusals = RefusalLog { interval: Duration::from_secs(10), last: None, since_last: 0 };
    let handshake_timeout = limits.timeout;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.try_take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // Closed at once: no handshake, no task, no slot.
                refusals.refused(peer, why, &limits);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Read the generation with the config, so a reload in between only costs a re-check.
        let generation = tls.generation();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get_for(which));
        let tx = tx.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
            // The handshake is over either way: give the slot back before anything else.
            drop(slot);
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(peer = %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let (identity, chain) = {
                let (_, conn) = stream.get_ref();
                let chain: Vec<CertificateDer<'static>> = conn
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                    .unwrap_or_default();
                match chain.first() {
                    Some(cert) => (identity_from_der(cert.as_ref()), chain),
                    None => {
                        tracing::info!(peer = %peer, "connection without a client certificate refused");
                        return;
                    }
                }
            };
            match identity {
                Ok(identity) => {
                    let info = ConnInfo {
                        identity: Arc::new(identity),
                        peer,
                        peer_text: peer.to_string().into(),
                        chain: Arc::new(chain),
                        verified: Arc::new(AtomicU64::new(generation)),
                    };
                    let _ = tx.send(Ok(CallerStream { inner: stream, info })).await;
                }
                Err(e) => {
                    tracing::info!(peer = %peer, error = %e, "client certificate has no usable identity; refused")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: usize, total: usize) -> HandshakeLimits {
        HandshakeLimits { timeout: Duration::from_secs(3), per_address, total }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let slots = Slots::new(limits(3, 10));
        let held: Vec<Slot> = (0..3).map(|_| slots.try_take(ip("10.0.0.1")).expect("within share")).collect();
        assert_eq!(slots.try_take(ip("10.0.0.1")).unwrap_err(), Refusal::PerAddress);
        // The same IPv4 address written as IPv4-mapped IPv6 is the same source.
        assert_eq!(slots.try_take(ip("::ffff:10.0.0.1")).unwrap_err(), Refusal::PerAddress);
        // Others are not affected.
        let other = slots.try_take(ip("10.0.0.2")).expect("another address");
        drop(held);
        assert_eq!(slots.pending(), (1, 1), "slots come back when dropped, and empty entries go");
        drop(other);
        assert_eq!(slots.pending(), (0, 0));
        assert!(slots.try_take(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn the_global_bound_still_holds() {
        let slots = Slots::new(limits(2, 5));
        let held: Vec<Slot> =
            (0..5).map(|i| slots.try_take(ip(&format!("10.0.0.{i}"))).expect("within total")).collect();
        assert_eq!(slots.try_take(ip("10.0.1.1")).unwrap_err(), Refusal::Total);
        drop(held);
        assert_eq!(slots.pending(), (0, 0));
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let slots = Slots::new(limits(2, 10));
        let _a = slots.try_take(ip("2001:db8:1:2::1")).expect("first");
        let _b = slots.try_take(ip("2001:db8:1:2:ffff::9")).expect("second");
        assert_eq!(slots.try_take(ip("2001:db8:1:2::77")).unwrap_err(), Refusal::PerAddress);
        assert!(slots.try_take(ip("2001:db8:1:3::1")).is_ok(), "another /64");
    }
}
