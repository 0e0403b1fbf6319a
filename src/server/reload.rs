//! Reloading certificates, CRLs and the policy (SIGHUP, `RunningServer::reload`, or a
//! change on disk seen by `watch.rs`): read and check, record, then put in force; a reload
//! whose record cannot be written is retried until it is (a revocation must not be lost to
//! a full disk). A refused reload (a file that does not parse or does not fit) keeps the
//! old in force, is recorded as an error, logged and counted
//! (`pogo_vault_reloads_total{result="..._refused"}`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::conn;
pub(super) use super::reload_request::{Parts, Request};
use super::state::{Caller, Extra, ServerState};
use super::watch::Files;
use crate::audit::{Action, Outcome};

/// What became of one half of a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loaded {
    /// Recorded and put in force.
    InForce,
    /// Did not read or check: recorded as an error, the old kept.
    Refused,
    /// Valid, but its record could not be written: the old kept, tried again.
    Unrecorded,
}

impl Loaded {
    /// Notes what became of reloading `part`: a refusal for the watcher (not tried again
    /// at once), an unwritten record for the retry.
    fn settle(self, part: Parts, watched: &Files, unrecorded: &mut Parts) {
        match self {
            Loaded::InForce => {}
            Loaded::Refused => watched.refused(part),
            Loaded::Unrecorded => *unrecorded = unrecorded.or(part),
        }
    }
}

/// One half of a reload: a new `what` that was read and checked (or why not) is recorded,
/// then put in force with `install`; a refused one is recorded as an error and the old one
/// kept.
async fn reload_one<T, F: FnOnce()>(
    state: &ServerState,
    me: &Caller,
    action: Action,
    what: &str,
    new: Result<T, String>,
    install: impl FnOnce(T) -> (String, F),
    counted: &str,
) -> Loaded {
    match new {
        Ok(value) => {
            let (detail, put) = install(value);
            match state.record(me, action, None, Outcome::Ok, &detail, Extra::default()).await {
                Ok(()) => {
                    put();
                    state.metrics.reloads.inc(&format!("{counted}_reloaded"));
                    state.reloaded.send_modify(|g| *g += 1);
                    tracing::info!("{detail}");
                    Loaded::InForce
                }
                Err(_) => {
                    tracing::error!(
                        "{what} reload not recorded in the audit log; the old {what} stay in force until it can be (retrying)"
                    );
                    Loaded::Unrecorded
                }
            }
        }
        Err(e) => {
            let detail = format!("{what} reload refused, the old {what} kept: {e}");
            // A warning: the file an operator just changed is not in force.
            tracing::warn!("{detail}");
            state.metrics.reloads.inc(&format!("{counted}_refused"));
            let _ = state.record(me, action, None, Outcome::Error, &detail, Extra::default()).await;
            Loaded::Refused
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
    source: super::spiffe::TlsSource,
    me: Caller,
    watched: Arc<Files>,
) {
    // The parts whose valid new version could not be recorded, waiting for a retry, and
    // whether one is scheduled (so failures do not pile up retries): they are tried again
    // until recorded (a revocation must not be lost to a full disk), not only at the next
    // SIGHUP, and only they (a certificate retry records no policy reload).
    let retry = Arc::new(Mutex::new((Parts::NONE, false)));
    while let Some(Request { parts, done }) = rx.recv().await {
        if *state.stopping.borrow() {
            // Stopping: nothing more is put in force, recorded or retried.
            let _ = done.send(());
            continue;
        }
        let mut unrecorded = Parts::NONE;
        // Audit before effect: the new policy and certificates are read and checked, their
        // record is made durable, and only then are they put in force. A record that cannot
        // be written keeps the old ones (and says so in the log).
        if parts.policy {
            watched.loading(Parts::POLICY);
            // `None`: this server has no policy file to reload.
            if let Some(policy) = state.authz.read_file().map_err(|e| e.to_string()).transpose() {
                let authz = &state.authz;
                let loaded = reload_one(
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
                )
                .await;
                loaded.settle(Parts::POLICY, &watched, &mut unrecorded);
            }
        }
        if parts.tls {
            watched.loading(Parts::TLS);
            let certs = source.load();
            let tls = &tls;
            let loaded = reload_one(
                &state,
                &me,
                Action::CertificatesReloaded,
                "certificates and CRLs",
                certs,
                |(cfg, detail)| (detail, move || tls.set(cfg)),
                "certificates",
            )
            .await;
            loaded.settle(Parts::TLS, &watched, &mut unrecorded);
        }
        if unrecorded != Parts::NONE {
            let mut r = retry.lock().unwrap_or_else(|p| p.into_inner());
            r.0 = r.0.or(unrecorded);
            if !r.1 {
                r.1 = true;
                let (again, retry) = (again.clone(), retry.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(RELOAD_RETRY).await;
                    let parts = {
                        let mut r = retry.lock().unwrap_or_else(|p| p.into_inner());
                        r.1 = false;
                        std::mem::replace(&mut r.0, Parts::NONE)
                    };
                    let _ = again.send(Request::new(parts).0).await;
                });
            }
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
