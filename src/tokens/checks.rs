//! The broker's calls to Go that are not a tenant's token: proving a client key that is
//! not stored yet (registration, rotation) and the onboarding steps (Initiate, Finalize).
//! Each waits for a slot of the environment's shared limiter as [`KEY_CHECKS`], goes
//! through the automatic subscription-key switch (`integration.rs`), and stores nothing.
//!
//! Also how Go's answer to such a call becomes a [`BrokerError`]: a refused client key is
//! the caller's `InvalidKey` (nothing is marked), while gateway answers (429, quota 403)
//! pause the environment's limiter as they do for tokens.

use std::time::Duration;

use super::error::is_key_rejection;
use super::state::Charge;
use super::{Broker, BrokerError, KEY_CHECKS, ValidatedKey};
use crate::crypto::ClientKey;
use crate::domain::Environment;
use crate::upstream::UpstreamError;

impl Broker {
    /// Proves a client key that is not stored yet (registration, rotation): mints a token
    /// with it through the shared limiter and reads ClientIntegrationInformation. The key
    /// is the caller's; nothing is stored here.
    pub async fn validate_key(&self, env: Environment, key: &ClientKey) -> Result<ValidatedKey, BrokerError> {
        let inner = &self.inner;
        let integ = self.integration(env).await?;
        let limiter = self.limiter(env);
        for _ in 0..2 {
            if let Err(wait) =
                limiter.acquire(KEY_CHECKS, inner.cfg.default_upstream_share, inner.cfg.limiter_max_wait).await
            {
                inner.stats.limiter_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(BrokerError::RateLimited { env, retry_after: wait.max(Duration::from_secs(1)) });
            }
        }
        inner.stats.upstream_requests.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let r = &integ.record;
        let (charge, max_wait) = self.key_checks();
        let proof = self
            .with_failover(&integ, (&charge, max_wait, 2), |sub| async move {
                let grant = inner.go.request_token(&r.base_url, &r.application_key, key, sub).await?;
                inner.go.client_integration_information(&r.base_url, &grant.access_token, sub).await
            })
            .await?;
        let info = proof.map_err(|e| self.validation_error(env, e))?;
        Ok(ValidatedKey { info })
    }

    /// The charge of key validation and onboarding calls.
    fn key_checks(&self) -> (Charge, Duration) {
        (self.charge(KEY_CHECKS, None), self.inner.cfg.limiter_max_wait)
    }

    /// Go's `Onboarding/Initiate` for `env`, through the shared limiter.
    pub async fn onboarding_initiate(
        &self,
        env: Environment,
        organization_number: Option<&str>,
        redirect_uri: &str,
    ) -> Result<crate::upstream::OnboardingSession, BrokerError> {
        let integ = self.integration(env).await?;
        self.acquire_for(env).await?;
        let r = &integ.record;
        let go = &self.inner.go;
        let (charge, max_wait) = self.key_checks();
        self.with_failover(&integ, (&charge, max_wait, 1), |sub| {
            go.onboarding_initiate(&r.base_url, sub, &r.application_key, organization_number, redirect_uri)
        })
        .await?
        .map_err(|e| self.onboarding_error(env, e))
    }

    /// Go's `Onboarding/Finalize` for `env`, through the shared limiter: the client keys of
    /// the clients the user activated.
    pub async fn onboarding_finalize(
        &self,
        env: Environment,
        token: &crate::upstream::OnboardingToken,
    ) -> Result<crate::upstream::OnboardingResult, BrokerError> {
        let integ = self.integration(env).await?;
        self.acquire_for(env).await?;
        let go = &self.inner.go;
        let (charge, max_wait) = self.key_checks();
        self.with_failover(&integ, (&charge, max_wait, 1), |sub| {
            go.onboarding_finalize(&integ.record.base_url, sub, token)
        })
        .await?
        .map_err(|e| self.onboarding_error(env, e))
    }

    async fn acquire_for(&self, env: Environment) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if let Err(wait) =
            self.limiter(env).acquire(KEY_CHECKS, inner.cfg.default_upstream_share, inner.cfg.limiter_max_wait).await
        {
            inner.stats.limiter_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(BrokerError::RateLimited { env, retry_after: wait.max(Duration::from_secs(1)) });
        }
        inner.stats.upstream_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn onboarding_error(&self, env: Environment, e: UpstreamError) -> BrokerError {
        match e {
            UpstreamError::OnboardingRejected { title, trace_id: Some(t), .. } => {
                BrokerError::OnboardingRejected(format!("{title}; Go traceId {t}"))
            }
            UpstreamError::OnboardingRejected { title, .. } => BrokerError::OnboardingRejected(title),
            e => self.validation_error(env, e),
        }
    }

    pub(super) fn validation_error(&self, env: Environment, e: UpstreamError) -> BrokerError {
        match e {
            UpstreamError::KeyRejected { error, .. } if is_key_rejection(&error) => BrokerError::InvalidKey(env),
            UpstreamError::SubscriptionKeyRejected { .. } => {
                tracing::error!(environment = %env, "ALARM: PowerOffice Go rejected the integration's subscription key");
                BrokerError::SubscriptionKeyRejected { env, retry_after: self.inner.cfg.subscription_key_pause }
            }
            UpstreamError::RateLimited { retry_after } => {
                self.limiter(env).pause(retry_after);
                BrokerError::RateLimited { env, retry_after }
            }
            UpstreamError::QuotaExceeded { retry_after } => {
                self.limiter(env).pause(retry_after);
                BrokerError::QuotaExceeded { env, retry_after }
            }
            e => BrokerError::Unavailable { reason: e.to_string(), retry_after: Duration::from_secs(1) },
        }
    }
}
