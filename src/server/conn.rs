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

use crate::tls::{CallerIdentity, identity_from_der};

/// What every request on a connection knows about its caller.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub identity: Arc<CallerIdentity>,
    pub peer: SocketAddr,
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

/// The server TLS configuration in force; replaced whole on reload.
#[derive(Debug)]
pub struct TlsState {
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsState {
    pub fn new(cfg: Arc<rustls::ServerConfig>) -> Self {
        Self { current: RwLock::new(cfg) }
    }
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set(&self, cfg: Arc<rustls::ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }
}

/// Accepts connections until `stop` fires, handing verified streams to tonic.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    handshake_timeout: Duration,
    tx: mpsc::Sender<Result<CallerStream, io::Error>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
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
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
        let tx = tx.clone();
        tokio::spawn(async move {
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
            let identity = {
                let (_, conn) = stream.get_ref();
                match conn.peer_certificates().and_then(|c| c.first()) {
                    Some(cert) => identity_from_der(cert.as_ref()),
                    None => {
                        tracing::info!(peer = %peer, "connection without a client certificate refused");
                        return;
                    }
                }
            };
            match identity {
                Ok(identity) => {
                    let info = ConnInfo { identity: Arc::new(identity), peer };
                    let _ = tx.send(Ok(CallerStream { inner: stream, info })).await;
                }
                Err(e) => {
                    tracing::info!(peer = %peer, error = %e, "client certificate has no usable identity; refused")
                }
            }
        });
    }
}
