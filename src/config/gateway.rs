//! `[gateway]`: the optional HTTPS listener that forwards callers' requests to Go's API
//! with the vault's token and subscription key (`server/gateway/`), and the defaults that
//! change when it is on.
//!
//! With the gateway on, the one limiter per subscription carries the callers' API calls as
//! well as the vault's token requests, so its default rate rises from 2 to
//! [`GATEWAY_DEFAULT_RATE`] a second with a burst of [`GATEWAY_DEFAULT_BURST`] (at most 10 in
//! any second: Go's own limit, which a burst of 4 on top of 8 a second would pass), and
//! `server.return_subscription_key` defaults to false: a caller that goes through the
//! gateway needs no key. Each stays as written when the file sets it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `tokens.upstream_rate_per_second` when the gateway is on and the file does not set it.
pub const GATEWAY_DEFAULT_RATE: f64 = 8.0;

/// `tokens.upstream_burst` when the gateway is on and the file does not set it.
pub const GATEWAY_DEFAULT_BURST: u32 = 2;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Where the gateway listens (HTTPS with mutual TLS: the gRPC port's CAs, CRLs and
    /// identity rules). Not set: the gateway is off (the rest of the table is kept).
    #[serde(default, deserialize_with = "listen_address")]
    pub listen: Option<SocketAddr>,
    /// Largest request body passed to Go; a larger one is refused (413).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    /// Largest answer passed back; a longer one is cut.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Request bodies up to this size are read whole before they are sent, so a request
    /// refused with 401 for a stale token can be sent again with a new one; larger ones
    /// stream and are never sent twice.
    #[serde(default = "default_replay_body_bytes")]
    pub replay_body_bytes: u64,
    /// Time allowed to open the connection to Go.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: f64,
    /// Time allowed for one call to Go, from sending to the answer's last byte.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: f64,
    /// The longest a request waits for its slot at the shared limiter; beyond it the
    /// gateway answers 429 with `Retry-After`.
    #[serde(default = "default_max_queue_wait")]
    pub max_queue_wait_secs: f64,
}

fn default_max_request_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_max_response_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_replay_body_bytes() -> u64 {
    64 * 1024
}
fn default_connect_timeout() -> f64 {
    5.0
}
fn default_request_timeout() -> f64 {
    120.0
}
fn default_max_queue_wait() -> f64 {
    2.0
}

impl GatewaySection {
    /// `[gateway]` with only `listen` set: every other key at its default.
    pub fn with_listen(listen: SocketAddr) -> Self {
        Self {
            listen: Some(listen),
            max_request_bytes: default_max_request_bytes(),
            max_response_bytes: default_max_response_bytes(),
            replay_body_bytes: default_replay_body_bytes(),
            connect_timeout_secs: default_connect_timeout(),
            request_timeout_secs: default_request_timeout(),
            max_queue_wait_secs: default_max_queue_wait(),
        }
    }

    /// Checks the values; `Err((key, reason))` names the key.
    pub fn validate(&self, others: &[(&'static str, Option<SocketAddr>)]) -> Result<(), (&'static str, String)> {
        const GIB: u64 = 1024 * 1024 * 1024;
        for (key, n) in [
            ("gateway.max_request_bytes", self.max_request_bytes),
            ("gateway.max_response_bytes", self.max_response_bytes),
        ] {
            if !(1024..=GIB).contains(&n) {
                return Err((key, format!("must be 1 KiB to 1 GiB, not {n}")));
            }
        }
        if self.replay_body_bytes > 1024 * 1024 || self.replay_body_bytes > self.max_request_bytes {
            return Err((
                "gateway.replay_body_bytes",
                "must be at most 1 MiB and at most gateway.max_request_bytes (such bodies are held whole in memory)"
                    .into(),
            ));
        }
        for (key, secs, most) in [
            ("gateway.connect_timeout_secs", self.connect_timeout_secs, 3600.0),
            ("gateway.request_timeout_secs", self.request_timeout_secs, 3600.0),
            ("gateway.max_queue_wait_secs", self.max_queue_wait_secs, 60.0),
        ] {
            if !(secs.is_finite() && secs > 0.0 && secs <= most) {
                return Err((key, format!("{secs} is not a number of seconds above 0 and at most {most}")));
            }
        }
        if let Some(listen) = self.listen
            && let Some((key, _)) = others.iter().find(|(_, a)| *a == Some(listen) && listen.port() != 0)
        {
            return Err(("gateway.listen", format!("{listen} is also {key}")));
        }
        Ok(())
    }

    /// Whether the gateway is on (`listen` set).
    pub fn is_on(&self) -> bool {
        self.listen.is_some()
    }

    /// The server's options for the gateway; `None` while it is off.
    pub fn options(&self) -> Option<crate::server::GatewayOptions> {
        Some(crate::server::GatewayOptions {
            listen: self.listen?,
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            replay_body_bytes: self.replay_body_bytes,
            upstream: crate::upstream::UpstreamConfig {
                connect_timeout: Duration::from_secs_f64(self.connect_timeout_secs),
                request_timeout: Duration::from_secs_f64(self.request_timeout_secs),
            },
            max_queue_wait: Duration::from_secs_f64(self.max_queue_wait_secs),
        })
    }
}

fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    s.trim()
        .parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an address like 0.0.0.0:8444")))
}

/// Whether the TOML text sets `[section] key` (so a default that depends on the gateway
/// does not override what the file says).
pub(super) fn is_set(text: &str, section: &str, key: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get(section).and_then(|s| s.as_table()).map(|s| s.contains_key(key)))
        .unwrap_or(false)
}
