//! What every handler shares: who is asking ([`Caller`], set by the gate), the server's
//! state ([`ServerState`]: the vault, the broker, the policy, the audit log), and how a
//! handler records a decision (`record`, `refused`) or acts for the caller in a use case
//! (`actor`: its records gate the vault's changes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tonic::Status;

use super::{conn, errors, metrics};
use crate::audit::{Action, AuditLog, AuditRecord, Outcome};
use crate::authz::Authorizer;
use crate::domain::{Environment, TenantId};
use crate::tls::CallerIdentity;
use crate::tokens::Broker;
use crate::usecase::{Actor, CallerBudgets, Disclosures, Entry, Integrations, Onboarding, Registry};
use crate::vault::{NotRecorded, Vault};

/// Who is asking, set by the gate for every request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Arc<CallerIdentity>,
    pub peer: SocketAddr,
    /// `peer` as text (formatted once per connection).
    pub peer_text: Arc<str>,
    /// The server's id for this request: what logs and the audit record key on.
    pub request_id: String,
    /// The caller's own `x-request-id`, when well-formed: kept for correlation only (the
    /// audit record's detail names it), never used as the request's id.
    pub client_request_id: Option<Arc<str>>,
}

impl Caller {
    pub fn of<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
        req.extensions().get::<Caller>().cloned().ok_or_else(errors::no_verified_caller)
    }
}

/// Optional audit fields.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    pub key_version: Option<i64>,
    pub upstream_status: Option<u16>,
    pub token_fingerprint: Option<String>,
}

/// Everything the handlers share.
pub struct ServerState {
    pub vault: Arc<Vault>,
    pub broker: Broker,
    pub authz: Arc<Authorizer>,
    pub audit: AuditLog,
    pub return_subscription_key: bool,
    /// GetAccessToken requests a second per caller unless its grant says otherwise.
    pub caller_requests_per_second: f64,
    /// The (caller, serial, peer IP, token) pairs whose disclosure is durable.
    pub disclosures: Disclosures,
    /// Each caller's GetAccessToken budget and its open window of refusals.
    pub budgets: CallerBudgets,
    /// Turns true when the server starts stopping: long-lived streams end on it.
    pub stopping: watch::Receiver<bool>,
    /// The TLS configuration in force, to re-check connections made before a reload.
    pub tls: Arc<conn::TlsState>,
    pub metrics: crate::metrics::ServerMetrics,
    pub started_at: SystemTime,
    /// Bumped after every reload that put new certificates or a new policy in force:
    /// long-lived streams re-check their caller on it.
    pub reloaded: watch::Sender<u64>,
    /// The tenant registry use case (`usecase::registry`).
    pub registry: Registry,
    /// The onboarding use case (`usecase::onboarding`).
    pub onboarding: Onboarding,
    /// The integrations use case (`usecase::integrations`).
    pub integrations: Integrations,
    /// Live `WatchAuditEvents` streams, per caller identity.
    pub watchers: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// (per caller, in total): the most live `WatchAuditEvents` streams.
    pub watch_limits: (usize, usize),
}

impl ServerState {
    /// Appends an audit record and waits until it is durable; `UNAVAILABLE` if it cannot be.
    pub async fn record(
        &self,
        caller: &Caller,
        action: Action,
        tenant: Option<&TenantId>,
        outcome: Outcome,
        detail: &str,
        extra: Extra,
    ) -> Result<(), Status> {
        let rec = caller_record(caller, action, tenant, outcome, detail, extra);
        match self.audit.append_receipt(rec).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(request_id = %caller.request_id, error = %e, "audit record not committed: request refused (fail closed)");
                Err(errors::audit_unavailable())
            }
        }
    }

    /// Appends a record without waiting for it to be durable (a repeat disclosure: DESIGN.md
    /// invariant 6). Fail closed all the same: `UNAVAILABLE` at once while the log is failing.
    pub fn record_unawaited(
        &self,
        caller: &Caller,
        action: Action,
        tenant: Option<&TenantId>,
        outcome: Outcome,
        detail: &str,
        extra: Extra,
    ) -> Result<(), Status> {
        let rec = caller_record(caller, action, tenant, outcome, detail, extra);
        self.audit.append_unawaited(rec).map_err(|e| {
            tracing::error!(request_id = %caller.request_id, error = %e, "audit record not accepted: request refused (fail closed)");
            errors::audit_unavailable()
        })
    }

    /// `caller` as the actor of a use case: its records go through the group-commit writer.
    pub fn actor(&self, caller: &Caller) -> Arc<dyn Actor> {
        Arc::new(CallerActor { caller: caller.clone(), audit: self.audit.clone() })
    }

    /// Audits a refused or failed request and returns its status. While the audit log is
    /// failing (a refused commit gate turned it unhealthy) nothing can be recorded:
    /// `UNAVAILABLE` at once, rather than a second wait for a record that cannot be written.
    pub async fn refused(
        &self,
        caller: &Caller,
        action: Action,
        tenant: Option<&TenantId>,
        outcome: Outcome,
        status: Status,
    ) -> Status {
        if !self.audit.is_healthy() {
            return errors::audit_unavailable();
        }
        match self.record(caller, action, tenant, outcome, status.message(), Extra::default()).await {
            Ok(()) => status,
            Err(s) => s,
        }
    }

    /// Refuses a change up front while the audit log is known to be failing (a fast path
    /// only: the guarantee is the commit gate of the caller's [`actor`](Self::actor), since
    /// health turns false only after a failure).
    pub fn audit_ready(&self) -> Result<(), Status> {
        if self.audit.is_healthy() { Ok(()) } else { Err(errors::audit_unavailable()) }
    }

    /// Runs a blocking vault operation on the blocking pool, mapping its error to a status.
    pub async fn vault_op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Vault) -> Result<T, crate::vault::VaultError> + Send + 'static,
    ) -> Result<T, Status> {
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || f(&vault))
            .await
            .map_err(|_| errors::internal())?
            .map_err(|e| errors::vault(&e))
    }

    /// One Prometheus scrape.
    pub async fn metrics_text(&self) -> String {
        let vault = self.vault.clone();
        let tenants = tokio::task::spawn_blocking(move || vault.count_tenants_by_status())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        metrics::render(&metrics::Snapshot {
            server: &self.metrics,
            broker: self.broker.stats(),
            audit: self.audit.stats(),
            tenants_by_status: tenants,
            disclosed_pairs: self.disclosures.len(),
            master_key: self.vault.master_key_health().map(|h| h.is_ok()),
        })
    }

    /// The subscription key for GetAccessToken responses.
    pub async fn subscription_key(&self, env: Environment) -> Option<String> {
        self.broker.subscription_key(env).await.ok().map(|k| k.expose_secret().to_owned())
    }
}

/// The actor of a gRPC request: the verified caller, recorded through the group-commit
/// writer (`AuditLog::append_wait`, on the blocking pool inside the vault's transaction).
struct CallerActor {
    caller: Caller,
    audit: AuditLog,
}

impl Actor for CallerActor {
    fn identity(&self) -> &str {
        &self.caller.identity.id
    }

    fn record_durably(&self, entries: Vec<Entry>) -> Result<(), NotRecorded> {
        for e in entries {
            let extra = Extra { key_version: e.key_version, ..Extra::default() };
            let rec = caller_record(&self.caller, e.action, e.tenant.as_ref(), e.outcome, &e.detail, extra);
            if let Err(err) = self.audit.append_wait(rec) {
                tracing::error!(request_id = %self.caller.request_id, error = %err, "audit record not committed: change rolled back (fail closed)");
                return Err(NotRecorded(err.to_string()));
            }
        }
        Ok(())
    }
}

/// An audit record of a decision made for `caller`.
pub fn caller_record(
    caller: &Caller,
    action: Action,
    tenant: Option<&TenantId>,
    outcome: Outcome,
    detail: &str,
    extra: Extra,
) -> AuditRecord {
    AuditRecord {
        caller: caller.identity.id.clone(),
        caller_serial: caller.identity.serial.clone(),
        action,
        tenant_id: tenant.map(|t| t.to_string()),
        key_version: extra.key_version,
        outcome,
        upstream_status: extra.upstream_status,
        token_fingerprint: extra.token_fingerprint,
        detail: match &caller.client_request_id {
            None => detail.to_owned(),
            Some(c) => format!("{detail} [client_request_id={c}]"),
        },
        request_id: caller.request_id.clone(),
        peer: caller.peer_text.to_string(),
    }
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}
