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
    pub(crate) open: OpenRequests,
}

/// Gateway requests one caller identity may have open at once (until the answer starts).
pub const MAX_OPEN_PER_CALLER: usize = 64;

/// Gateway requests open at once from all callers together.
pub const MAX_OPEN: usize = 1024;

/// The gateway requests open at once, per caller identity and in all. A request counts
/// from its admission until its answer starts back (or it is refused); a caller that opens
/// requests and never finishes their bodies cannot hold more than its share.
#[derive(Debug, Default)]
pub(crate) struct OpenRequests {
    counts: std::sync::Mutex<(std::collections::HashMap<String, usize>, usize)>,
}

/// One open request; counted down when dropped.
pub(crate) struct Open<'a> {
    open: &'a OpenRequests,
    caller: String,
}

impl OpenRequests {
    /// Counts a request of `caller`, or says whose limit it would pass.
    pub(crate) fn open(&self, caller: &str) -> Result<Open<'_>, (&'static str, usize)> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.0.get(caller).copied().unwrap_or(0);
        if mine >= MAX_OPEN_PER_CALLER {
            return Err(("this caller", MAX_OPEN_PER_CALLER));
        }
        if c.1 >= MAX_OPEN {
            return Err(("the vault", MAX_OPEN));
        }
        c.0.insert(caller.to_owned(), mine + 1);
        c.1 += 1;
        Ok(Open { open: self, caller: caller.to_owned() })
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut c = self.open.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.1 = c.1.saturating_sub(1);
        if let Some(n) = c.0.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.0.remove(&self.caller);
            }
        }
    }
}
