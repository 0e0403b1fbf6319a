//! A TCP listener whose connections a handler can cut, for the `drop_next` fault.
//!
//! axum gives a handler no way to close its connection without answering. So each accepted
//! stream carries a kill flag, the same flag is handed to the handler as connect info, and
//! once set, every further read or write on the stream fails: hyper gives up on the
//! connection and drops it (the client sees it closed with no answer).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Accepts TCP connections and wraps each in a [`SimConn`].
pub(super) struct SimListener(pub(super) TcpListener);

/// One accepted connection, as seen by a handler: the peer and the kill switch.
#[derive(Clone, Debug)]
pub(super) struct ConnHandle {
    pub(super) peer: SocketAddr,
    kill: Arc<AtomicBool>,
}

impl ConnHandle {
    /// Makes every further read and write on this connection fail, so hyper closes it.
    pub(super) fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }
}

/// A TCP stream that fails all I/O once its handle was killed.
pub(super) struct SimConn {
    stream: TcpStream,
    kill: Arc<AtomicBool>,
}

impl SimConn {
    fn killed() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "connection dropped by the simulator")
    }

    fn is_killed(&self) -> bool {
        self.kill.load(Ordering::SeqCst)
    }
}

impl Listener for SimListener {
    type Io = SimConn;
    type Addr = ConnHandle;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let kill = Arc::new(AtomicBool::new(false));
                    return (SimConn { stream, kill: kill.clone() }, ConnHandle { peer, kill });
                }
                // Out of file descriptors and the like: wait a little rather than spin.
                Err(e) => {
                    tracing::debug!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnHandle { peer: self.0.local_addr()?, kill: Arc::new(AtomicBool::new(false)) })
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl AsyncRead for SimConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.is_killed() {
            return Poll::Ready(Err(Self::killed()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.is_killed() {
            return Poll::Ready(Err(Self::killed()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_killed() {
            return Poll::Ready(Err(Self::killed()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_killed() {
            return Poll::Ready(Err(Self::killed()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
