//! What the API gateway (`usecase::gateway`) asks of the broker beside tokens: a slot of
//! the environment's one limiter for every API call (the limiter token requests take
//! theirs from, so the whole integration keeps one budget at Go and callers share it
//! fairly), the pause a refusal from Go's gateway calls for, and dropping a token Go
//! refused.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Broker, CachedToken, Requester};
use crate::domain::{Environment, TenantId};
use crate::upstream::UpstreamError;

impl Broker {
    /// Waits for a slot of `env`'s limiter for one API call by `who` (its share, as for a
    /// token request): `Ok(how long it waited)`, or `Err(how long it would have waited)`
    /// when its turn is further than `max_wait` away (or a pause lasts longer).
    pub async fn api_slot(
        &self,
        env: Environment,
        who: Requester<'_>,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let charge = self.charge(who.caller, who.share);
        let limiter = self.limiter(env);
        let span = tracing::debug_span!("limiter.wait", environment = %env);
        let r = tracing::Instrument::instrument(limiter.acquire(&charge.caller, charge.share, max_wait), span).await;
        let stats = &self.inner.stats;
        match &r {
            Ok(waited) if !waited.is_zero() => {
                stats.limiter_waits.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                stats.limiter_refusals.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    /// Takes Go's refusal of an API call into account. The path was the caller's choice, so
    /// only what speaks for the whole subscription moves the shared limiter: a 429 pauses it
    /// for its `Retry-After`, as does a quota 403 that carries a `Retry-After` header
    /// (`with_retry_after`). A 403 in the gateway's shape without one, or an answer about
    /// the subscription key (Azure API Management answers so for an API outside the
    /// subscription's product too), is the caller's answer only: logged, never a pause of
    /// every tenant that a caller could repeat at will. The vault's own token requests
    /// still pause on them (`broker.rs`).
    pub fn api_refused(&self, env: Environment, e: &UpstreamError, with_retry_after: bool) {
        let limiter = self.limiter(env);
        match e {
            UpstreamError::RateLimited { retry_after } => {
                tracing::warn!(environment = %env, retry_after_s = retry_after.as_secs(), "PowerOffice Go answered an API call with 429; pausing upstream calls");
                limiter.pause(*retry_after);
            }
            UpstreamError::QuotaExceeded { retry_after } if with_retry_after => {
                tracing::warn!(environment = %env, retry_after_s = retry_after.as_secs(), "PowerOffice Go's gateway answered an API call with 403 (quota used up); pausing upstream calls");
                limiter.pause(*retry_after);
            }
            UpstreamError::SubscriptionKeyRejected { status, problem } => {
                tracing::warn!(environment = %env, status, problem = problem.as_str(), "PowerOffice Go's gateway refused an API call naming the subscription key (passed to the caller; the vault's own next token request tells whether the key is at fault)");
            }
            _ => {}
        }
    }

    /// Drops `tenant`'s cached token if it is still `token` (Go answered an API call made
    /// with it with 401): the next request mints a new one. A token another request already
    /// replaced is left alone, so many requests that saw one stale token cost one new
    /// token. True if this call dropped it.
    pub fn drop_refused_token(&self, tenant: &TenantId, token: &Arc<CachedToken>) -> bool {
        let Some(slot) = self.inner.slots.read().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned() else {
            return false;
        };
        let mut st = slot.lock();
        if st.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            st.token = None;
            // The other replicas must not serve it either, nor this one take it back.
            if self.inner.shared.is_some() {
                self.refused_shared(tenant, &token.fingerprint_text);
            }
            tracing::info!(tenant = %tenant, "PowerOffice Go refused a cached token (401 on an API call); dropped it");
            true
        } else {
            false
        }
    }
}
