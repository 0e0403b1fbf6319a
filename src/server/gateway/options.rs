//! What the gateway's requests share: its options (`[gateway]`, `config/gateway.rs`), the
//! server's state and the use case.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::server::ServerState;
use crate::usecase::ApiGateway;

/// The gateway's options (`[gateway]`, `config/gateway.rs`).
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub listen: SocketAddr,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    /// Request bodies up to this size are kept whole, so they can be sent again.
    pub replay_body_bytes: u64,
    /// Connect and total timeouts of calls to Go.
    pub upstream: crate::upstream::UpstreamConfig,
    pub max_queue_wait: Duration,
}

/// What every gateway request shares.
pub(crate) struct Gateway {
    pub(crate) state: Arc<ServerState>,
    pub(crate) api: ApiGateway,
    pub(crate) opts: GatewayOptions,
}
