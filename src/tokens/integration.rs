//! The broker's view of an environment's integration: the record and its opened
//! subscription keys (the active one and, when set, the other slot's), cached for a short
//! while so a change made beside a running server takes effect; and the automatic switch to
//! the other key when Go's gateway calls the active one invalid (go-api.md, "Keys": a
//! subscription has a primary and a secondary key, both valid at once, sharing one budget).
//!
//! The switch ([`Broker::with_failover`], around every call to Go that sends the subscription
//! key: token requests, key checks, onboarding) is tried once per failing request, costs one
//! more upstream slot from the same limiter (both keys share Go's budget), and is made
//! durable through the vault's commit gate with a `subscription_key_switched` record before
//! the broker uses the new key for others.

use std::sync::Arc;
use std::time::Duration;

use super::state::{Charge, IntegrationCtx};
use super::{Broker, BrokerError, KEY_CHECKS, SERVER_IDENTITY};
use crate::audit::{Action, AuditRecord, Outcome};
use crate::crypto::{ClientKey, SubscriptionKey};
use crate::domain::Environment;
use crate::upstream::{SubscriptionKeyProblem, UpstreamError};
use crate::vault::{NotRecorded, SubscriptionKeySwitch, SwitchIf};

/// The client key of a probe: a GUID no Go client has (version nibble 4, all zeros else).
const PROBE_CLIENT_KEY: &str = "00000000-0000-4000-8000-000000000000";

/// How long integration records (and their opened subscription keys) are cached, so a
/// change made with the CLI next to a running server takes effect.
pub(super) const INTEGRATION_TTL: Duration = Duration::from_secs(30);

impl Broker {
    pub(super) async fn integration(&self, env: Environment) -> Result<Arc<IntegrationCtx>, BrokerError> {
        let now = self.inner.clock.now();
        if let Some(c) = self.inner.integrations.lock().unwrap_or_else(|p| p.into_inner()).get(&env)
            && now.saturating_duration_since(c.loaded_at) < INTEGRATION_TTL
        {
            return Ok(c.clone());
        }
        let vault = self.inner.vault.clone();
        let (record, subscription_key, standby) = self
            .blocking(move || {
                let Some(rec) = vault.integration(env)? else { return Ok(None) };
                let key = vault.open_subscription_key(&rec)?;
                let other = rec.active_slot.other();
                let standby = match rec.version_of(other) {
                    None => None,
                    Some(_) => match vault.open_subscription_key_in(&rec, other) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            // The active key still works: keep serving, but say so loudly.
                            tracing::error!(environment = %env, slot = %other, error = %e, "ALARM: the standby subscription key does not open; no automatic switch is possible");
                            None
                        }
                    },
                };
                Ok(Some((rec, key, standby)))
            })
            .await?
            .ok_or(BrokerError::NoIntegration(env))?;
        let ctx = Arc::new(IntegrationCtx { record, subscription_key, standby, loaded_at: now });
        self.inner.integrations.lock().unwrap_or_else(|p| p.into_inner()).insert(env, ctx.clone());
        Ok(ctx)
    }

    /// The integration's active subscription key for `env` (cached like the integration
    /// record), for `GetAccessToken` responses when the configuration hands it to callers.
    pub async fn subscription_key(&self, env: Environment) -> Result<SubscriptionKey, BrokerError> {
        Ok(self.integration(env).await?.subscription_key.clone())
    }

    /// Asks Go's gateway whether it accepts `key` as a subscription key of the `env`
    /// integration, before an operator makes it the key in use or stores it as the other key:
    /// one token request with a client key no client has, from the shared budget. The
    /// gateway answers 401 for a key it refuses; a key it accepts reaches the OAuth server,
    /// which answers `invalid_client`. Anything else (a quota, 5xx) is returned as is.
    pub async fn probe_subscription_key(&self, env: Environment, key: &SubscriptionKey) -> Result<(), BrokerError> {
        let integ = self.integration(env).await?;
        let inner = &self.inner;
        if let Err(wait) =
            self.limiter(env).acquire(KEY_CHECKS, inner.cfg.default_upstream_share, inner.cfg.limiter_max_wait).await
        {
            return Err(BrokerError::RateLimited { env, retry_after: wait.max(Duration::from_secs(1)) });
        }
        inner.stats.upstream_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nobody = ClientKey::parse(PROBE_CLIENT_KEY).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let r = &integ.record;
        match inner.go.request_token(&r.base_url, &r.application_key, &nobody, key).await {
            Ok(_) | Err(UpstreamError::KeyRejected { .. }) => Ok(()),
            Err(UpstreamError::SubscriptionKeyRejected { status, problem }) => {
                tracing::warn!(environment = %env, status, problem = problem.as_str(), "PowerOffice Go's gateway refuses the subscription key an operator offered");
                Err(BrokerError::SubscriptionKeyRefused(env))
            }
            Err(e) => Err(self.validation_error(env, e)),
        }
    }

    /// Drops the cached integration for `env` (after `integration set` or a rejection).
    pub fn forget_integration(&self, env: Environment) {
        self.inner.integrations.lock().unwrap_or_else(|p| p.into_inner()).remove(&env);
    }

    /// Runs `call` with the active subscription key; if Go's gateway calls that key
    /// invalid and the other slot holds one, runs it once more with the other key and, if
    /// that works, switches to it durably ([`Broker::switch_to_standby`]).
    ///
    /// The second run costs `cost` more slots (the requests `call` sends) from the same
    /// limiter, charged to `charge` and waiting at most `max_wait`: both keys are one
    /// subscription's, with one budget. Only the active key's answer may speak about a
    /// client key: if the other key fails in any way (refused too, or Go calls the client key
    /// unknown, which means that key is another subscription's), nothing is switched or
    /// blamed, the active key's refusal stands, and the alarm says the other key is unusable.
    /// The outer error is the limiter's refusal.
    pub(super) async fn with_failover<'a, T, F, Fut>(
        &self,
        integ: &'a IntegrationCtx,
        (charge, max_wait, cost): (&Charge, Duration, u32),
        call: F,
    ) -> Result<Result<T, UpstreamError>, BrokerError>
    where
        F: Fn(&'a SubscriptionKey) -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        let first = call(&integ.subscription_key).await;
        let (
            Err(UpstreamError::SubscriptionKeyRejected { problem: SubscriptionKeyProblem::Invalid, status }),
            Some(standby),
        ) = (&first, &integ.standby)
        else {
            return Ok(first);
        };
        let status = *status;
        let env = integ.record.environment;
        tracing::warn!(environment = %env, slot = %integ.record.active_slot, "PowerOffice Go called the active subscription key invalid; trying the other key");
        let limiter = self.limiter(env);
        for _ in 0..cost {
            if let Err(wait) = limiter.acquire(&charge.caller, charge.share, max_wait).await {
                self.inner.stats.limiter_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(BrokerError::RateLimited { env, retry_after: wait.max(Duration::from_secs(1)) });
            }
        }
        self.inner.stats.upstream_requests.fetch_add(u64::from(cost), std::sync::atomic::Ordering::Relaxed);
        match call(standby).await {
            Ok(v) => {
                self.switch_to_standby(integ, status).await;
                Ok(Ok(v))
            }
            Err(e) => {
                tracing::error!(environment = %env, slot = %integ.record.active_slot.other(), error = %e, "ALARM: the other subscription key does not work either; nothing switched");
                Ok(first)
            }
        }
    }

    /// Makes the standby key the active one, durably: called after a request with the
    /// standby key worked where the active key was called invalid. Recorded before it
    /// commits (`subscription_key_switched`); a switch another request already made is not
    /// made or recorded twice. If the record cannot be written, nothing is switched and the
    /// next request tries again.
    pub(super) async fn switch_to_standby(&self, integ: &IntegrationCtx, status: u16) {
        let env = integ.record.environment;
        let from = integ.record.active_slot;
        let to = from.other();
        let (Some(from_version), Some(to_version)) = (integ.record.version_of(from), integ.record.version_of(to))
        else {
            return;
        };
        let only_if = SwitchIf { from, from_version, to_version };
        let vault = self.inner.vault.clone();
        let audit = self.inner.audit.clone();
        let switched = self
            .blocking(move || {
                let gate = move |s: &SubscriptionKeySwitch| {
                    let why = format!(
                        "automatically: PowerOffice Go's gateway called the {from} key invalid (HTTP {status}) and the {to} key worked; \
                         regenerate the {from} key in Go's portal and set it again (`integration set --slot {from}`)"
                    );
                    let rec = AuditRecord::new(Action::SubscriptionKeySwitched, Outcome::Ok)
                        .caller(SERVER_IDENTITY, "")
                        .upstream_status(status)
                        .detail(s.describe(&why))
                        .request("go-token-response", "");
                    audit.append_wait(rec).map(|_| ()).map_err(|e| NotRecorded(e.to_string()))
                };
                vault.use_subscription_key(env, to, Some(only_if), &gate)
            })
            .await;
        match switched {
            Ok((_, true)) => {
                tracing::warn!(environment = %env, from = %from, to = %to, "ALARM: PowerOffice Go called the active subscription key invalid; switched to the other key")
            }
            Ok((_, false)) => {}
            Err(e) => {
                tracing::error!(environment = %env, error = %e, "could not switch to the standby subscription key; will try again")
            }
        }
        self.forget_integration(env);
    }
}
