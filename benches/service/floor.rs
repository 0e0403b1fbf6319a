//! The floor: the same acceptor, TLS configuration and transport settings as the vault,
//! in front of a `TokenService` that does nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::token_service_server::{TokenService, TokenServiceServer};
use pogo_vault::server::{ServeOptions, conn};
use tokio::sync::{mpsc, watch};

/// The keep-alive interval `server::start` sets (not configurable), used for the floor too.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// The floor: tonic's generated `TokenService` server with no gate, no broker, no audit,
/// answering a canned response of a real response's size.
struct Floor {
    canned: pb::GetAccessTokenResponse,
}

#[tonic::async_trait]
impl TokenService for Floor {
    async fn get_access_token(
        &self,
        _req: tonic::Request<pb::GetAccessTokenRequest>,
    ) -> Result<tonic::Response<pb::GetAccessTokenResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.canned.clone()))
    }
}

pub struct FloorServer {
    pub addr: SocketAddr,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The floor with the vault's own transport settings (`opts`): TLS files, handshake
/// timeout, request timeout, per-connection concurrency, message size.
pub async fn start_floor(opts: &ServeOptions, canned: pb::GetAccessTokenResponse) -> FloorServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The same TLS configuration and the same acceptor as the vault (`server::start` does
    // exactly this with the configured files).
    let tls = Arc::new(conn::TlsState::new(pogo_vault::tls::load_server_tls(&opts.tls).unwrap()));
    let (stop, stop_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::channel(256);
    tokio::spawn(conn::accept_loop(listener, tls, opts.handshake_limits(), conn_tx, stop_rx.clone()));
    let router = tonic::transport::Server::builder()
        .timeout(opts.request_timeout)
        .concurrency_limit_per_connection(opts.concurrency_limit_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .add_service(TokenServiceServer::new(Floor { canned }).max_decoding_message_size(opts.max_request_bytes));
    let mut wait = stop_rx;
    let task = tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::ReceiverStream::new(conn_rx),
        async move {
            let _ = wait.wait_for(|s| *s).await;
        },
    ));
    FloorServer { addr, stop, task }
}
