//! The broker's knobs, with their defaults and why.

use std::time::Duration;

use serde::Deserialize;

/// Durations are written in seconds in the TOML configuration (`[tokens]`), fractions allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `min_validity` when a caller gives none: a token handed out stays valid at least this long.
    #[serde(rename = "default_min_validity_secs", with = "secs")]
    pub default_min_validity: Duration,
    /// The most a caller may ask for; Go's tokens live 20 minutes, so asking for more could
    /// never be met from the cache.
    #[serde(rename = "max_min_validity_secs", with = "secs")]
    pub max_min_validity: Duration,
    /// Refresh ahead once less than this share of a token's lifetime remains.
    pub refresh_ahead_share: f64,
    /// Up to this share of the lifetime earlier still, at random, so tenants minted
    /// together do not refresh together.
    pub refresh_jitter_share: f64,
    /// Only tenants used within this window are refreshed ahead; idle ones mint on demand.
    #[serde(rename = "refresh_window_secs", with = "secs")]
    pub refresh_window: Duration,
    /// How often the background task looks for tokens to refresh.
    #[serde(rename = "refresh_interval_secs", with = "secs")]
    pub refresh_interval: Duration,
    /// Upstream token requests per second per subscription key. Go allows 10/s for the
    /// whole integration, the callers' own API calls included: the vault takes a small share.
    pub upstream_rate_per_second: f64,
    /// Each caller's share of the upstream budget when its policy grant names none
    /// (`upstream_share`). A share is a weight: while several callers wait for upstream
    /// slots they get them in proportion to their shares, so with 0.5 no caller gets more
    /// than half while another waits; a caller alone may use the whole budget.
    pub default_upstream_share: f64,
    /// Requests that may go at once after a quiet spell.
    pub upstream_burst: u32,
    /// A caller waits at most this long for a limiter slot, then gets "rate limited,
    /// retry after N s" instead of queueing.
    #[serde(rename = "limiter_max_wait_secs", with = "secs")]
    pub limiter_max_wait: Duration,
    /// Attempts per token request on transient failures (5xx, timeouts, resets), backing
    /// off exponentially with jitter in between.
    pub retry_attempts: u32,
    #[serde(rename = "backoff_initial_secs", with = "secs")]
    pub backoff_initial: Duration,
    #[serde(rename = "backoff_max_secs", with = "secs")]
    pub backoff_max: Duration,
    /// After Go rejects the subscription key, upstream calls pause this long (the key will
    /// not fix itself in a second; hammering would only add to Go's rate limit).
    #[serde(rename = "subscription_key_pause_secs", with = "secs")]
    pub subscription_key_pause: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            default_min_validity: Duration::from_secs(60),
            max_min_validity: Duration::from_secs(900),
            refresh_ahead_share: 0.25,
            refresh_jitter_share: 0.1,
            refresh_window: Duration::from_secs(600),
            refresh_interval: Duration::from_secs(5),
            upstream_rate_per_second: 2.0,
            default_upstream_share: 0.5,
            upstream_burst: 4,
            limiter_max_wait: Duration::from_secs(2),
            retry_attempts: 3,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            subscription_key_pause: Duration::from_secs(30),
        }
    }
}

impl BrokerConfig {
    /// Checks the values make sense together; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.upstream_rate_per_second > 0.0 && self.upstream_rate_per_second <= 10.0) {
            return Err("tokens.upstream_rate_per_second must be above 0 and at most 10 (Go's limit)".into());
        }
        if !(0.0..=1.0).contains(&self.default_upstream_share) {
            return Err("tokens.default_upstream_share must be 0 to 1 (a share of the upstream budget)".into());
        }
        if self.upstream_burst == 0 || self.upstream_burst > 10 {
            return Err("tokens.upstream_burst must be 1 to 10".into());
        }
        if !(0.0..=0.9).contains(&self.refresh_ahead_share) || !(0.0..=0.5).contains(&self.refresh_jitter_share) {
            return Err("tokens.refresh_ahead_share must be 0 to 0.9 and tokens.refresh_jitter_share 0 to 0.5".into());
        }
        if self.default_min_validity > self.max_min_validity {
            return Err("tokens.default_min_validity_secs must not exceed tokens.max_min_validity_secs".into());
        }
        if self.retry_attempts == 0 {
            return Err("tokens.retry_attempts must be at least 1".into());
        }
        if self.refresh_interval.is_zero() {
            return Err("tokens.refresh_interval_secs must be above 0".into());
        }
        Ok(())
    }
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(|_| serde::de::Error::custom("must be a non-negative number of seconds"))
    }
}
