//! The API gateway's listener (`[gateway] listen`): HTTPS with mutual TLS, HTTP/1.1 and
//! HTTP/2 from callers, forwarding `https://<gateway>/<tenant-id>/v2/<path>?<query>` to
//! that tenant's environment at Go with the vault's token and subscription key
//! (`usecase::gateway`), so a service calls Go without ever holding either.
//!
//! It shares everything that decides who may connect with the gRPC port: the acceptor and
//! its handshake bounds (`conn.rs`), the certificate, client CAs and CRLs in force
//! (`TlsState`, with its own ALPN list), reloads (a connection made before a reload is
//! checked again on its next request), the identity rules, the policy (role `api`,
//! `authz/policy/api.rs`) and the caller budgets. Files: `request.rs` (the URL and the
//! headers that pass each way), `respond.rs` (the gateway's own answers), `handler.rs` (one
//! request).
//!
//! Stopping: new connections end at the stop signal; open ones finish the requests they
//! carry (HTTP/1.1 closes after the current one, HTTP/2 sends GOAWAY) for at most the
//! server's shutdown grace, before the server writes its last records.

mod handler;
mod options;
pub mod request;
pub mod respond;

use options::Gateway;
pub use options::GatewayOptions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::ServerState;
use super::conn::{self, CallerStream, HandshakeLimits};
use crate::usecase::ApiGateway;

/// How long an HTTP/1.1 connection may take to send a request's headers (idle keep-alive
/// connections included), so an idle or slow peer does not hold a connection forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 streams one caller connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Binds the gateway's address (before the server records its start, like the gRPC port).
pub(crate) async fn bind(opts: &GatewayOptions) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves `listener` until `stop`; the task ends when the open connections are done
/// (bounded).
pub(crate) fn start(
    (listener, addr): (TcpListener, SocketAddr),
    opts: &GatewayOptions,
    state: Arc<ServerState>,
    (limits, grace): (HandshakeLimits, Duration),
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, crate::upstream::UpstreamError> {
    let go = crate::upstream::GoClient::new(&opts.upstream)?;
    let cfg = crate::usecase::GatewayConfig {
        max_queue_wait: opts.max_queue_wait,
        max_response_bytes: opts.max_response_bytes,
    };
    let api = ApiGateway::new(state.broker.clone(), go, state.audit.clone(), cfg);
    let gw = Arc::new(Gateway {
        state: state.clone(),
        api,
        opts: opts.clone(),
        open: Default::default(),
        tasks: watch::Sender::new(0),
    });
    let (tx, mut rx) = mpsc::channel(256);
    tokio::spawn(conn::accept_loop(listener, (state.tls.clone(), conn::Listener::Gateway), limits, tx, stop.clone()));
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let mut stopping = stop.clone();
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(Ok(stream)) => { conns.spawn(serve_connection(gw.clone(), stream, stop.clone())); }
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = stopping.wait_for(|s| *s) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("gateway requests still open {grace:?} after the stop; cut");
            conns.abort_all();
        }
        // Use-case tasks outlive their connections: each finishes with its record (bounded
        // by the calls' own timeout), before the server writes its stop.
        let mut tasks = gw.tasks.subscribe();
        if tokio::time::timeout(grace, tasks.wait_for(|n| *n == 0)).await.is_err() {
            tracing::error!(
                "gateway calls to Go still running {grace:?} after the stop: their answers may be unrecorded"
            );
        }
    });
    tracing::info!(%addr, "pogo-vault serving the Go API gateway over mutual TLS");
    Ok(task)
}

/// Serves one verified connection (HTTP/1.1 or HTTP/2, as ALPN chose) until it closes or
/// the server stops.
async fn serve_connection(gw: Arc<Gateway>, stream: CallerStream, mut stop: watch::Receiver<bool>) {
    let info = stream.info().clone();
    let service = hyper::service::service_fn(move |req| {
        let (gw, info) = (gw.clone(), info.clone());
        async move { Ok::<_, Infallible>(handler::handle(gw, info, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let stopping = tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "gateway connection ended with an error");
            }
            false
        }
        _ = async { let _ = stop.wait_for(|s| *s).await; } => true,
    };
    if stopping {
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }
}
