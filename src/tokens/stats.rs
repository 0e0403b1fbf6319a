//! The broker's counters ([`BrokerStats`]), read by `metrics` and by tests, and the metrics
//! label of an upstream token request's outcome.

use crate::upstream::UpstreamError;

/// Counters for metrics and tests.
#[derive(Debug)]
pub struct BrokerStats {
    pub cache_hits: std::sync::atomic::AtomicU64,
    pub cache_misses: std::sync::atomic::AtomicU64,
    pub upstream_requests: std::sync::atomic::AtomicU64,
    pub upstream_failures: std::sync::atomic::AtomicU64,
    pub limiter_refusals: std::sync::atomic::AtomicU64,
    pub limiter_waits: std::sync::atomic::AtomicU64,
    /// Token requests to Go by outcome ([`crate::metrics::UPSTREAM_OUTCOMES`]).
    pub upstream_outcomes: crate::metrics::LabeledCounter,
    pub upstream_latency: crate::metrics::Histogram,
}

impl Default for BrokerStats {
    fn default() -> Self {
        Self {
            cache_hits: Default::default(),
            cache_misses: Default::default(),
            upstream_requests: Default::default(),
            upstream_failures: Default::default(),
            limiter_refusals: Default::default(),
            limiter_waits: Default::default(),
            upstream_outcomes: crate::metrics::LabeledCounter::new(crate::metrics::UPSTREAM_OUTCOMES),
            upstream_latency: Default::default(),
        }
    }
}

/// The metrics label of an upstream result.
pub(super) fn outcome_label(r: &Result<crate::upstream::TokenGrant, UpstreamError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(UpstreamError::KeyRejected { .. }) => "key_rejected",
        Err(UpstreamError::SubscriptionKeyRejected { .. }) => "subscription_key_rejected",
        Err(UpstreamError::RateLimited { .. }) => "rate_limited",
        Err(UpstreamError::QuotaExceeded { .. }) => "quota_exceeded",
        Err(UpstreamError::Transient { .. }) => "transient",
        Err(UpstreamError::Timeout) => "timeout",
        Err(_) => "other",
    }
}
