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
    /// Use-case tasks running (each may outlive its caller): the gateway's stop waits for
    /// them, bounded, so none is cut between Go's answer and its record.
    pub(crate) tasks: tokio::sync::watch::Sender<usize>,
}

/// One running use-case task; counted down when dropped.
pub(crate) struct Running(pub(crate) tokio::sync::watch::Sender<usize>);

impl Running {
    pub(crate) fn start(tasks: &tokio::sync::watch::Sender<usize>) -> Self {
        tasks.send_modify(|n| *n += 1);
        Self(tasks.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Gateway requests one caller identity may have open at once (until the answer starts).
pub const MAX_OPEN_PER_CALLER: usize = 64;

/// Gateway requests open at once from all callers together.
pub const MAX_OPEN: usize = 1024;

/// The gateway requests open at once, per caller identity and in all. A request counts
/// from its admission until its answer's body ends (or it is refused), wherever it is:
/// the handler, the use case's task (which outlives a caller that went away), the answer
/// streaming back. A caller that opens requests and walks away cannot hold more than its
/// share.
#[derive(Debug, Default, Clone)]
pub(crate) struct OpenRequests {
    counts: Arc<std::sync::Mutex<(std::collections::HashMap<String, usize>, usize)>>,
}

/// One open request; counted down when dropped. Owned, so it can move into the use case's
/// task and on into the answer's body.
pub(crate) struct Open {
    open: OpenRequests,
    caller: String,
}

impl OpenRequests {
    /// Counts a request of `caller`, or says whose limit it would pass.
    pub(crate) fn open(&self, caller: &str) -> Result<Open, (&'static str, usize)> {
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
        Ok(Open { open: self.clone(), caller: caller.to_owned() })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

impl Drop for Open {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_requests_are_bounded_per_caller_and_given_back_when_dropped() {
        let open = OpenRequests::default();
        let mine: Vec<Open> = (0..MAX_OPEN_PER_CALLER).map(|_| open.open("a").unwrap()).collect();
        assert_eq!(open.open("a").err(), Some(("this caller", MAX_OPEN_PER_CALLER)));
        let other = open.open("b").unwrap();
        assert_eq!(open.total(), MAX_OPEN_PER_CALLER + 1);
        drop(mine);
        drop(other);
        assert_eq!(open.total(), 0);
        assert!(open.open("a").is_ok(), "given back");
        let all: Vec<Open> = (0..MAX_OPEN).map(|i| open.open(&format!("c{i}")).unwrap()).collect();
        assert_eq!(open.open("z").err(), Some(("the vault", MAX_OPEN)));
        drop(all);
    }
}
