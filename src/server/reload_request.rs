//! A reload asked for (by SIGHUP, `RunningServer::reload`, or the file watcher): which
//! files to read again, and who to tell when it is done. A leaf, so the reload loop and
//! the watcher that asks it can both name it.

use tokio::sync::oneshot;

/// Which files a reload reads again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parts {
    pub policy: bool,
    /// The server certificate and key, the client CA bundle and the CRLs.
    pub tls: bool,
}

impl Parts {
    pub const ALL: Parts = Parts { policy: true, tls: true };
    pub const NONE: Parts = Parts { policy: false, tls: false };
    pub const POLICY: Parts = Parts { policy: true, tls: false };
    pub const TLS: Parts = Parts { policy: false, tls: true };

    pub fn or(self, other: Parts) -> Parts {
        Parts { policy: self.policy || other.policy, tls: self.tls || other.tls }
    }
}

/// A reload asked for: what to read again, and who to tell when it is done.
pub(super) struct Request {
    pub parts: Parts,
    pub done: oneshot::Sender<()>,
}

impl Request {
    pub fn new(parts: Parts) -> (Request, oneshot::Receiver<()>) {
        let (done, wait) = oneshot::channel();
        (Request { parts, done }, wait)
    }
}
