//! TLS to PostgreSQL through our rustls and ring provider: a `tokio-postgres` connector
//! whose server certificate must chain to the configured CA and be valid for the host name
//! connected to (libpq's `verify-full`). Ours rather than a crate's, which would bring its
//! own X.509 stack for channel binding we do not use.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// TLS to PostgreSQL through rustls: the server certificate must chain to the configured
/// CA and be valid for the host name connected to.
#[derive(Clone)]
pub(crate) struct RustlsConnect(pub(crate) Arc<rustls::ClientConfig>);

pub(crate) struct RustlsConnectTo {
    config: Arc<rustls::ClientConfig>,
    /// `None` when there is no name to check (a Unix socket, a bare `hostaddr`): then TLS
    /// is refused here; the connector is asked for it without TLS too, and unused then.
    name: Option<rustls::pki_types::ServerName<'static>>,
}

pub(crate) struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnectTo;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectTo, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned()).ok();
        Ok(RustlsConnectTo { config: self.0.clone(), name })
    }
}

impl TlsConnect<Socket> for RustlsConnectTo {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no host name to check the server certificate against")
            })?;
            let tls = tokio_rustls::TlsConnector::from(self.config).connect(name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding; the server is authenticated by its certificate.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
