//! The [`Broker`] and its hot path: tenant id in, Go access token out.
//!
//! - Cache: one slot per tenant holding its current token. A request gets the cached token
//!   when it stays valid for the caller's `min_validity`; an expired token is never handed
//!   out.
//! - Single flight: concurrent misses for one tenant share one upstream request (a spawned
//!   task, so a caller that gives up does not cancel it for the others) and its result,
//!   error included.
//! - One limiter per subscription key ([`limiter`](super::limiter)); a `429` pauses it for
//!   `Retry-After`. Transient failures are retried with exponential backoff and jitter, then
//!   the tenant backs off. While upstream is in trouble a cached token that is still valid
//!   is served.
//! - Callers share that limiter fairly: each request names its caller and share
//!   ([`Requester`]), and while several callers wait for upstream slots they get them in
//!   proportion to their shares (half each for two with the default); a caller alone gets
//!   the whole budget. Only the request that reaches the limiter is charged (the flight's
//!   leader, or the refresher): cache hits and callers joining a flight cost nothing, and
//!   a joiner shares the leader's turn (and its refusal).
//! - A key Go rejects (`invalid_client`) marks the tenant `KEY_REJECTED` in the store,
//!   durably, and stops upstream calls for it until a new key is registered.
//!
//! The rest of `impl Broker` lives beside this file: refresh ahead and the "last token"
//! times (`background.rs`), key validation and onboarding calls (`checks.rs`), the ClientId
//! fill-in (`client_id.rs`), the integration cache and the subscription-key switch
//! (`integration.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::clock::Clock;
use super::error::is_key_rejection;
use super::limiter::Limiter;
use super::state::{Charge, FlightResult, Found, IntegrationCtx, Slot, SlotState};
use super::stats::outcome_label;
use super::{
    BrokerConfig, BrokerError, BrokerStats, CachedToken, FP_ACCESS_TOKEN, Requester, SERVER_IDENTITY, TokenLease,
    TokenSource, UNATTRIBUTED,
};
use crate::audit::{Action, AuditLog, AuditRecord, Outcome};
use crate::crypto::{ClientKey, SubscriptionKey};
use crate::domain::{Environment, TenantId};
use crate::store::shared::Shared;
use crate::store::tenants::TenantRecord;
use crate::upstream::{GoClient, UpstreamError};
use crate::vault::{NotRecorded, Vault, VaultError};

pub(super) struct Inner {
    pub(super) vault: Arc<Vault>,
    pub(super) go: GoClient,
    pub(super) cfg: BrokerConfig,
    pub(super) clock: Arc<dyn Clock>,
    /// Where the broker's own changes (a tenant marked KEY_REJECTED) are recorded before
    /// they commit.
    pub(super) audit: AuditLog,
    pub(super) slots: RwLock<HashMap<TenantId, Arc<Slot>>>,
    pub(super) integrations: Mutex<HashMap<Environment, Arc<IntegrationCtx>>>,
    pub(super) limiters: Mutex<HashMap<Environment, Arc<Limiter>>>,
    pub(super) stats: BrokerStats,
    /// What replicas on one PostgreSQL database share (the upstream budget, the sealed
    /// token cache and its leases: `shared.rs`); `None` on SQLite.
    pub(super) shared: Option<Arc<Shared>>,
    /// Fingerprints of tokens Go refused on API calls through this replica, newest last
    /// (`shared.rs`: never taken from the shared cache again).
    pub(super) refused: Mutex<std::collections::VecDeque<String>>,
}

/// The token broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Broker")
    }
}

impl Broker {
    pub fn new(vault: Arc<Vault>, go: GoClient, cfg: BrokerConfig, clock: Arc<dyn Clock>, audit: AuditLog) -> Self {
        Self::sharing(vault, go, cfg, clock, audit, None)
    }

    /// A broker that shares its upstream budget and its tokens with the other replicas on
    /// the same PostgreSQL database through `shared` (`None`: it shares nothing).
    pub fn sharing(
        vault: Arc<Vault>,
        go: GoClient,
        cfg: BrokerConfig,
        clock: Arc<dyn Clock>,
        audit: AuditLog,
        shared: Option<Arc<Shared>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                vault,
                go,
                cfg,
                clock,
                audit,
                slots: RwLock::new(HashMap::new()),
                integrations: Mutex::new(HashMap::new()),
                limiters: Mutex::new(HashMap::new()),
                stats: BrokerStats::default(),
                shared,
                refused: Mutex::new(std::collections::VecDeque::new()),
            }),
        }
    }

    pub fn stats(&self) -> &BrokerStats {
        &self.inner.stats
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.cfg
    }

    /// A token for `tenant` valid for at least `min_validity` (default from the config,
    /// capped at `max_min_validity`), with every upstream request charged to one
    /// unattributed caller (tests, benchmarks, the CLI). Callers over gRPC use
    /// [`Broker::get_token_for`].
    pub async fn get_token(
        &self,
        tenant: &TenantId,
        min_validity: Option<Duration>,
    ) -> Result<TokenLease, BrokerError> {
        self.get_token_for(tenant, Requester::new(UNATTRIBUTED, None), min_validity).await
    }

    /// A token for `tenant` valid for at least `min_validity`, for `who`: if it takes an
    /// upstream request, that request waits for an upstream slot as `who` (fair share
    /// between callers, module docs); refused with [`BrokerError::RateLimited`] when its
    /// turn is further away than `limiter_max_wait`.
    // Spans below the request's own are `debug`: created only when traces are exported (or
    // debug logs are on), so the hot path pays nothing for them otherwise.
    #[tracing::instrument(
        name = "broker.get_token",
        level = "debug",
        skip_all,
        fields(tenant_id = %tenant, cache = tracing::field::Empty, flight = tracing::field::Empty)
    )]
    pub async fn get_token_for(
        &self,
        tenant: &TenantId,
        who: Requester<'_>,
        min_validity: Option<Duration>,
    ) -> Result<TokenLease, BrokerError> {
        let inner = &self.inner;
        let minv = min_validity.unwrap_or(inner.cfg.default_min_validity).min(inner.cfg.max_min_validity);
        let slot = self.slot(tenant);
        let now = inner.clock.now();
        let (mut rx, leader) = {
            let mut st = slot.lock();
            st.last_used = Some(now);
            if st.rejected {
                return Err(BrokerError::KeyRejected(tenant.clone()));
            }
            if let Some(t) = &st.token
                && t.expires_at >= now + minv
            {
                let t = t.clone();
                self.served(&mut st);
                inner.stats.cache_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::Span::current().record("cache", "hit");
                return Ok(TokenLease { token: t, source: TokenSource::Cache, go_client_id: st.go_client_id.clone() });
            }
            // Upstream in trouble (this tenant backing off, or its limiter paused by a 429):
            // serve a still-valid token rather than wait, or fail fast.
            let backoff = st.backoff_until.filter(|u| *u > now).map(|u| u - now);
            let paused = st.token.as_ref().and_then(|t| self.limiter(t.environment).paused_for());
            if backoff.is_some() || paused.is_some() {
                if let Some(t) = st.token.as_ref().filter(|t| t.expires_at > now) {
                    let t = t.clone();
                    self.served(&mut st);
                    tracing::Span::current().record("cache", "stale_during_outage");
                    return Ok(TokenLease {
                        token: t,
                        source: TokenSource::StaleDuringOutage,
                        go_client_id: st.go_client_id.clone(),
                    });
                }
                if let Some(wait) = backoff {
                    let reason = st.backoff_reason.clone().unwrap_or_else(|| "recent failures".to_owned());
                    return Err(BrokerError::Unavailable { reason, retry_after: wait });
                }
            }
            inner.stats.cache_misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::Span::current().record("cache", "miss");
            match &st.flight {
                Some(rx) => {
                    tracing::Span::current().record("flight", "follower");
                    (rx.clone(), false)
                }
                None => {
                    tracing::Span::current().record("flight", "leader");
                    let charge = self.charge(who.caller, who.share);
                    (self.start_flight(tenant, &slot, &mut st, inner.cfg.limiter_max_wait, charge), true)
                }
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => {
                v.clone().unwrap_or_else(|| Err(BrokerError::Internal("token request ended without a result".into())))
            }
            Err(_) => Err(BrokerError::Internal("token request task ended early".into())),
        };
        let mut st = slot.lock();
        match result {
            Ok(t) => {
                self.served(&mut st);
                let source = match (leader, t.from_other_replica) {
                    (true, false) => TokenSource::Upstream { upstream_status: 200 },
                    (true, true) => TokenSource::OtherReplica,
                    (false, _) => TokenSource::SharedFlight,
                };
                Ok(TokenLease { token: t, source, go_client_id: st.go_client_id.clone() })
            }
            Err(e) if e.retry_after().is_some() => {
                let now = inner.clock.now();
                match st.token.as_ref().filter(|t| t.expires_at > now) {
                    Some(t) => {
                        let t = t.clone();
                        self.served(&mut st);
                        Ok(TokenLease {
                            token: t,
                            source: TokenSource::StaleDuringOutage,
                            go_client_id: st.go_client_id.clone(),
                        })
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn served(&self, st: &mut SlotState) {
        st.last_served_ms = Some(super::clock::unix_ms(self.inner.clock.system_now()));
        st.last_served_dirty = true;
    }

    pub(super) fn slot(&self, tenant: &TenantId) -> Arc<Slot> {
        if let Some(s) = self.inner.slots.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            return s.clone();
        }
        self.inner.slots.write().unwrap_or_else(|p| p.into_inner()).entry(tenant.clone()).or_default().clone()
    }

    pub(super) fn charge(&self, caller: &str, share: Option<f64>) -> Charge {
        Charge { caller: caller.into(), share: share.unwrap_or(self.inner.cfg.default_upstream_share) }
    }

    pub(super) fn limiter(&self, env: Environment) -> Arc<Limiter> {
        let mut m = self.inner.limiters.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(env)
            .or_insert_with(|| {
                let (clock, cfg) = (self.inner.clock.clone(), &self.inner.cfg);
                Arc::new(match &self.inner.shared {
                    None => Limiter::new(clock, cfg.upstream_rate_per_second, cfg.upstream_burst),
                    Some(shared) => Limiter::shared(
                        clock,
                        cfg.upstream_rate_per_second,
                        cfg.upstream_burst,
                        shared.clone(),
                        &env.to_string(),
                    ),
                })
            })
            .clone()
    }

    /// Starts the one upstream request for a tenant; the slot lock is held by the caller.
    pub(super) fn start_flight(
        &self,
        tenant: &TenantId,
        slot: &Arc<Slot>,
        st: &mut SlotState,
        max_wait: Duration,
        charge: Charge,
    ) -> watch::Receiver<Option<FlightResult>> {
        let (tx, rx) = watch::channel(None);
        st.flight = Some(rx.clone());
        let this = self.clone();
        let slot = slot.clone();
        let tenant = tenant.clone();
        // The one upstream request, in the trace of the request that started it.
        let span = tracing::debug_span!("broker.flight", tenant_id = %tenant, ok = tracing::field::Empty);
        let flight = async move {
            let result = this.fetch(&tenant, max_wait, &charge).await;
            tracing::Span::current().record("ok", result.is_ok());
            let now = this.inner.clock.now();
            {
                let mut st = slot.lock();
                st.flight = None;
                match &result {
                    Ok(t) => {
                        st.token = Some(t.clone());
                        st.failures = 0;
                        st.backoff_until = None;
                        st.backoff_reason = None;
                        if st.go_client_id.is_none() {
                            st.go_client_id = t.go_client_id.as_deref().map(Arc::from);
                        }
                        if st.go_client_id.is_none() && !st.client_id_tried {
                            st.client_id_tried = true;
                            let (this, tenant, t) = (this.clone(), tenant.clone(), t.clone());
                            tokio::spawn(async move { this.fill_client_id(tenant, t, Duration::ZERO).await });
                        }
                    }
                    Err(BrokerError::KeyRejected(_)) => {
                        st.rejected = true;
                        st.token = None;
                    }
                    Err(BrokerError::Unavailable { reason, .. }) => {
                        st.failures = st.failures.saturating_add(1);
                        st.backoff_until = Some(now + this.backoff(st.failures));
                        st.backoff_reason = Some(reason.clone());
                    }
                    Err(BrokerError::Disabled(_)) => st.token = None,
                    Err(BrokerError::NotFound(_)) => st.token = None,
                    Err(_) => {}
                }
            }
            if matches!(result, Err(BrokerError::NotFound(_))) {
                // No slot lingers for an id that does not exist: memory stays bounded by
                // the tenants that do.
                this.inner.slots.write().unwrap_or_else(|p| p.into_inner()).remove(&tenant);
            }
            let _ = tx.send(Some(result));
        };
        tokio::spawn(tracing::Instrument::instrument(flight, span));
        rx
    }

    /// Exponential backoff with up to 50 % random jitter, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let cfg = &self.inner.cfg;
        let base = cfg.backoff_initial.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(cfg.backoff_max);
        base.mul_f64(1.0 - 0.5 * random_unit())
    }

    async fn fetch(&self, tenant: &TenantId, max_wait: Duration, charge: &Charge) -> FlightResult {
        let inner = &self.inner;
        let rec = self
            .blocking({
                let vault = inner.vault.clone();
                let tenant = tenant.clone();
                move || vault.tenant(&tenant)
            })
            .await?
            .ok_or_else(|| BrokerError::NotFound(tenant.clone()))?;
        BrokerError::unless_active(&rec)?;
        let env = rec.environment;
        let integ = self.integration(env).await?;
        // On PostgreSQL: a token another replica minted, or the lease to ask Go ourselves
        // (held until this request is over).
        let (rec, _lease) = match &inner.shared {
            None => (rec, None),
            Some(shared) => match self.shared_or_lease(shared, rec, &integ, max_wait).await? {
                Found::Token(t) => return Ok(t),
                Found::Lease { lease, record } => (*record, Some(lease)),
            },
        };
        let limiter = self.limiter(env);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let wait = tracing::debug_span!("limiter.wait", environment = %env);
            match tracing::Instrument::instrument(limiter.acquire(&charge.caller, charge.share, max_wait), wait).await {
                Ok(waited) if !waited.is_zero() => {
                    inner.stats.limiter_waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(wait) => {
                    inner.stats.limiter_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(BrokerError::RateLimited { env, retry_after: wait.max(Duration::from_secs(1)) });
                }
            }
            let key = self.open_key(&rec).await?;
            // The key lives for this attempt: one request, or two when the other
            // subscription key is tried.
            let result = self
                .with_failover(&integ, (charge, max_wait, 1), |sub| self.request_once(&rec, &integ, sub, &key))
                .await;
            drop(key);
            let result = result?;
            match result {
                Ok(token) => {
                    if let Some(shared) = &inner.shared {
                        self.publish(shared, &rec, &token).await;
                    }
                    return Ok(token);
                }
                Err(UpstreamError::KeyRejected { error, status }) if is_key_rejection(&error) => {
                    tracing::warn!(tenant = %tenant, status, error = %error, "PowerOffice Go rejected the client key; marking the tenant KEY_REJECTED");
                    let marked = self
                        .blocking({
                            let vault = inner.vault.clone();
                            let tenant = tenant.clone();
                            let version = rec.key_version;
                            let audit = inner.audit.clone();
                            // Recorded before the status changes: the server's own decision
                            // (the refresher makes it too, with no caller waiting).
                            let gate = move |t: &TenantRecord| {
                                let rec = AuditRecord::new(Action::KeyRejectedByGo, Outcome::Ok)
                                    .caller(SERVER_IDENTITY, "")
                                    .tenant(t.tenant_id.to_string())
                                    .key_version(t.key_version)
                                    .upstream_status(status)
                                    .detail(format!(
                                        "PowerOffice Go rejected client key version {} ({error}); tenant marked KEY_REJECTED: the customer must re-activate the integration",
                                        t.key_version
                                    ))
                                    .request("go-token-response", "");
                                audit.append_wait(rec).map(|_| ()).map_err(|e| NotRecorded(e.to_string()))
                            };
                            move || vault.mark_key_rejected(&tenant, version, &gate)
                        })
                        .await?;
                    if !marked {
                        // The key was rotated while we asked Go about the old one.
                        return Err(BrokerError::Unavailable {
                            reason: "the tenant's key changed during the request".into(),
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    return Err(BrokerError::KeyRejected(tenant.clone()));
                }
                Err(UpstreamError::SubscriptionKeyRejected { status, problem }) => {
                    tracing::error!(environment = %env, status, problem = problem.as_str(), "ALARM: PowerOffice Go rejected the integration's subscription key");
                    limiter.pause(inner.cfg.subscription_key_pause);
                    self.forget_integration(env);
                    return Err(BrokerError::SubscriptionKeyRejected {
                        env,
                        retry_after: inner.cfg.subscription_key_pause,
                    });
                }
                Err(UpstreamError::RateLimited { retry_after }) => {
                    tracing::warn!(environment = %env, retry_after_s = retry_after.as_secs(), "PowerOffice Go answered 429; pausing upstream calls");
                    limiter.pause(retry_after);
                    return Err(BrokerError::RateLimited { env, retry_after });
                }
                Err(UpstreamError::QuotaExceeded { retry_after }) => {
                    // The gateway's quota answer is about the subscription, never the key:
                    // the tenant's status is left alone (go-api.md, "Token").
                    tracing::warn!(environment = %env, retry_after_s = retry_after.as_secs(), "PowerOffice Go's gateway answered 403 (quota used up); pausing upstream calls");
                    limiter.pause(retry_after);
                    return Err(BrokerError::QuotaExceeded { env, retry_after });
                }
                Err(e) if e.is_retryable() && attempt < inner.cfg.retry_attempts => {
                    let wait = self.backoff(attempt);
                    tracing::info!(tenant = %tenant, attempt, wait_ms = wait.as_millis() as u64, error = %e, "transient upstream failure; retrying");
                    inner.clock.sleep(wait).await;
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, attempt, error = %e, "upstream token request failed");
                    return Err(BrokerError::Unavailable {
                        reason: e.to_string(),
                        retry_after: self.backoff(1).max(Duration::from_secs(1)),
                    });
                }
            }
        }
    }

    /// Opens the tenant's client key for one request. A row that does not open is an
    /// integrity failure: logged as an alarm and reported as such.
    async fn open_key(&self, rec: &TenantRecord) -> Result<ClientKey, BrokerError> {
        let vault = self.inner.vault.clone();
        let rec = rec.clone();
        let id = rec.tenant_id.clone();
        let result = self.blocking(move || vault.open_client_key(&rec)).await;
        if let Err(BrokerError::Integrity(what)) = &result {
            tracing::error!(tenant = %id, "ALARM: integrity failure: {what}");
        }
        result
    }

    /// One upstream token request. The caller drops (zeroizes) the client key as soon as
    /// this attempt is over.
    async fn request_once(
        &self,
        rec: &TenantRecord,
        integ: &IntegrationCtx,
        subscription_key: &SubscriptionKey,
        key: &ClientKey,
    ) -> Result<Arc<CachedToken>, UpstreamError> {
        let inner = &self.inner;
        inner.stats.upstream_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent_at = inner.clock.now();
        let sent_wall = inner.clock.system_now();
        let started = std::time::Instant::now();
        let grant =
            inner.go.request_token(&integ.record.base_url, &integ.record.application_key, key, subscription_key).await;
        inner.stats.upstream_latency.observe(started.elapsed());
        inner.stats.upstream_outcomes.inc(outcome_label(&grant));
        let grant = grant.inspect_err(|_| {
            inner.stats.upstream_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        // Expiry counts from when we sent the request: never later than Go's own clock.
        let lifetime = grant.expires_in;
        let refresh_share = lifetime.mul_f64(inner.cfg.refresh_ahead_share.clamp(0.0, 1.0));
        let jitter = lifetime.mul_f64(inner.cfg.refresh_jitter_share.clamp(0.0, 1.0) * random_unit());
        let fingerprint = grant.access_token.fingerprint(inner.vault.fingerprint_key(), FP_ACCESS_TOKEN);
        Ok(Arc::new(CachedToken {
            expires_at: sent_at + lifetime,
            expires_at_wall: sent_wall + lifetime,
            refresh_at: (sent_at + lifetime).checked_sub(refresh_share + jitter).unwrap_or(sent_at),
            lifetime,
            access_token: grant.access_token,
            token_type: grant.token_type,
            environment: integ.record.environment,
            api_base_url: format!("{}/v2", integ.record.base_url),
            key_version: rec.key_version,
            fingerprint_text: fingerprint.to_string(),
            fingerprint,
            go_client_id: rec.go_client_id.clone(),
            from_other_replica: false,
        }))
    }

    /// How much longer upstream calls for `env` are paused (after a 429, a quota 403 or a
    /// refused subscription key), if they are.
    pub fn upstream_paused_for(&self, env: Environment) -> Option<Duration> {
        self.limiter(env).paused_for()
    }

    /// Drops everything cached for a tenant after its key, status or existence changed
    /// through this replica, and destroys its shared token (PostgreSQL). Blocks on the
    /// database: the use cases call it in their blocking task, right after the change.
    pub fn forget(&self, tenant: &TenantId) {
        self.forget_local(tenant);
        self.drop_shared(tenant, None);
    }

    /// Drops what this replica cached for a tenant (another replica changed it, and
    /// destroyed the shared token itself).
    pub fn forget_local(&self, tenant: &TenantId) {
        self.inner.slots.write().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| BrokerError::Internal("store task failed".into()))?
            .map_err(BrokerError::from_vault)
    }
}

/// A uniform number in [0, 1) from the OS random source (jitter only; not for secrets).
fn random_unit() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}
