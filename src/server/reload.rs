//! Reloading certificates, CRLs and the policy (SIGHUP, `RunningServer::reload`, or a
//! change on disk seen by `watch.rs`): read and check, record, then put in force; a reload
//! whose record cannot be written is retried until it is (a revocation must not be lost to
//! a full disk). A refused reload (a file that does not parse or does not fit) keeps the
//! old in force, is recorded as an error, logged and counted
//! (`pogo_vault_reloads_total{result="..._refused"}`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::conn;
use super::state::{Caller, Extra, ServerState};
use crate::audit::{Action, Outcome};
use crate::tls::ServerTlsFiles;

/// Which files a reload reads again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parts {
    pub policy: bool,
    /// The server certificate and key, the client CA bundle and the CRLs.
    pub tls: bool,
}

impl Parts {
    pub const ALL: Parts = Parts { policy: true, tls: true };
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

/// One half of a reload: a new `what` that was read and checked (or why not) is recorded,
/// then put in force with `install`; a refused one is recorded as an error and the old one
/// kept. False when a valid new one could not be recorded (the caller retries).
async fn reload_one<T, F: FnOnce()>(
    state: &ServerState,
    me: &Caller,
    action: Action,
    what: &str,
    new: Result<T, String>,
    install: impl FnOnce(T) -> (String, F),
    counted: &str,
) -> bool {
    match new {
        Ok(value) => {
            let (detail, put) = install(value);
            match state.record(me, action, None, Outcome::Ok, &detail, Extra::default()).await {
                Ok(()) => {
                    put();
                    state.metrics.reloads.inc(&format!("{counted}_reloaded"));
                    state.reloaded.send_modify(|g| *g += 1);
                    tracing::info!("{detail}");
                    true
                }
                Err(_) => {
                    tracing::error!(
                        "{what} reload not recorded in the audit log; the old {what} stay in force until it can be (retrying)"
                    );
                    false
                }
            }
        }
        Err(e) => {
            let detail = format!("{what} reload refused, the old {what} kept: {e}");
            // A warning: the file an operator just changed is not in force.
            tracing::warn!("{detail}");
            state.metrics.reloads.inc(&format!("{counted}_refused"));
            let _ = state.record(me, action, None, Outcome::Error, &detail, Extra::default()).await;
            true
        }
    }
}

/// How soon a reload whose record could not be written is tried again.
const RELOAD_RETRY: Duration = Duration::from_secs(2);

pub(super) async fn reload_loop(
    mut rx: mpsc::Receiver<Request>,
    again: mpsc::Sender<Request>,
    state: Arc<ServerState>,
    tls: Arc<conn::TlsState>,
    files: ServerTlsFiles,
    me: Caller,
) {
    // A retry is scheduled and has not run yet (so failures do not pile up retries).
    let scheduled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    while let Some(Request { parts, done }) = rx.recv().await {
        // Set when a valid new policy or certificate could not be put in force because its
        // record could not be written: it is tried again until it is (a revocation must not
        // be lost to a full disk), not only at the next SIGHUP.
        let mut unrecorded = false;
        // Audit before effect: the new policy and certificates are read and checked, their
        // record is made durable, and only then are they put in force. A record that cannot
        // be written keeps the old ones (and says so in the log).
        // `None`: this server has no policy file to reload.
        if let Some(policy) = state.authz.read_file().map_err(|e| e.to_string()).transpose().filter(|_| parts.policy) {
            let authz = &state.authz;
            let put = reload_one(
                &state,
                &me,
                Action::PolicyReloaded,
                "policy",
                policy,
                |p| {
                    let detail = format!("policy reloaded: {} grants", p.grant_count());
                    (detail, move || {
                        authz.install(p);
                    })
                },
                "policy",
            );
            unrecorded |= !put.await;
        }
        if parts.tls {
            let certs = crate::tls::load_server_tls(&files).map_err(|e| e.to_string());
            let tls = &tls;
            let put = reload_one(
                &state,
                &me,
                Action::CertificatesReloaded,
                "certificates and CRLs",
                certs,
                |cfg| ("certificates and CRLs reloaded".to_owned(), move || tls.set(cfg)),
                "certificates",
            );
            unrecorded |= !put.await;
        }
        if unrecorded && !scheduled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let (again, scheduled) = (again.clone(), scheduled.clone());
            tokio::spawn(async move {
                tokio::time::sleep(RELOAD_RETRY).await;
                scheduled.store(false, std::sync::atomic::Ordering::SeqCst);
                let _ = again.send(Request::new(Parts::ALL).0).await;
            });
        }
        let _ = done.send(());
    }
}

pub(super) fn spawn_sighup(tx: mpsc::Sender<Request>) {
    // Registered before `start` returns, not inside the task: a SIGHUP sent as soon as the
    // server says it serves must reload it, not end it (SIGHUP's default action).
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading certificates and policy");
            if tx.send(Request::new(Parts::ALL).0).await.is_err() {
                return;
            }
        }
    });
}
