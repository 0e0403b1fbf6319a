//! The TLS front door: accepts TCP, performs the TLS 1.3 handshake with the *current*
//! server configuration (swapped on SIGHUP), requires and verifies a client certificate,
//! and derives the caller's identity once per connection.
//!
//! Why our own acceptor rather than tonic's TLS: it lets certificates and CRLs reload
//! without a restart, bounds the handshake time, and computes the identity once per
//! connection instead of parsing the certificate on every request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

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
#[derive(Debug)]
pub struct TlsState {
    current: RwLock<ServerTls>,
    generation: AtomicU64,
}

impl TlsState {
    pub fn new(tls: ServerTls) -> Self {
        Self { current: RwLock::new(tls), generation: AtomicU64::new(0) }
    }
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).config.clone()
    }
    pub fn set(&self, tls: ServerTls) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = tls;
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
        let verifier = self.current.read().unwrap_or_else(|p| p.into_inner()).verifier.clone();
        let ok = verifier.verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now()).is_ok();
        if ok {
            conn.verified.store(generation, Ordering::SeqCst);
        }
        ok
    }
}

/// TLS handshakes in progress at once, beyond which new connections are dropped.
const MAX_PENDING_HANDSHAKES: usize = 512;

/// Accepts connections until `stop` fires, handing verified streams to tonic.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    handshake_timeout: Duration,
    tx: mpsc::Sender<Result<CallerStream, io::Error>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Unauthenticated peers can hold a handshake open until the timeout: bound how many.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
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
        let _ = tcp.set_nodelay(true);
        // Read the generation with the config, so a reload in between only costs a re-check.
        let generation = tls.generation();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "too many TLS handshakes in progress; connection dropped");
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
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
