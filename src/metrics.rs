//! Metric primitives: fixed-bucket histograms and counters over fixed label lists, and the
//! label lists themselves. Whoever counts owns its counters (the broker, the audit writer,
//! the server); `server::metrics` renders them on their own listener (loopback by default).
//! Low in the house: it imports nothing of the vault, so every layer may count.
//!
//! Architecture invariant: no secret and no unbounded label set. Labels take values only
//! from fixed lists (token source, denial reason, upstream outcome, tenant status, RPC
//! method from the method→role map); there is no per-tenant or per-caller label.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets in seconds, from a cache hit to a slow upstream call.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A fixed-bucket histogram with atomic counters (no lock on the hot path).
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: (0..=BUCKETS.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A counter per value of a fixed label set.
#[derive(Debug)]
pub struct LabeledCounter {
    labels: &'static [&'static str],
    values: Vec<AtomicU64>,
}

impl LabeledCounter {
    pub fn new(labels: &'static [&'static str]) -> Self {
        Self { labels, values: labels.iter().map(|_| AtomicU64::new(0)).collect() }
    }

    /// Counts one for `label`; a label outside the set counts as the last one ("other").
    pub fn inc(&self, label: &str) {
        let i = self.labels.iter().position(|l| *l == label).unwrap_or(self.labels.len() - 1);
        self.values[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, label: &str) -> u64 {
        self.labels.iter().position(|l| *l == label).map_or(0, |i| self.values[i].load(Ordering::Relaxed))
    }

    pub fn render(&self, out: &mut String, name: &str, key: &str) {
        for (l, v) in self.labels.iter().zip(&self.values) {
            let _ = writeln!(out, "{name}{{{key}=\"{l}\"}} {}", v.load(Ordering::Relaxed));
        }
    }
}

/// What the server itself counts (the broker and audit writer count their own).
#[derive(Debug)]
pub struct ServerMetrics {
    pub tokens_minted: LabeledCounter,
    pub tokens_denied: LabeledCounter,
    pub token_latency: Histogram,
    /// Tokens handed out, by whether the caller got that token for the first time there.
    pub disclosures: LabeledCounter,
    /// Reloads of the policy and of the certificates, put in force or refused.
    pub reloads: LabeledCounter,
    /// The API gateway's requests, by Go's status class or the gateway's own refusal.
    pub gateway_requests: LabeledCounter,
    /// Gateway requests from arrival until the answer starts back (Go's time included).
    pub gateway_latency: Histogram,
    /// How long gateway requests waited for limiter slots.
    pub gateway_queue_wait: Histogram,
}

/// What became of a gateway request: Go's answer by status class, or the gateway's own
/// refusal (`denied`: policy; `rate_limited`: the caller's budget or the limiter's bounded
/// wait; `unavailable`: audit log, Go unreachable or the tenant's token not to be had;
/// `invalid`: a request the gateway does not forward; `too_large`: a body over a limit).
pub const GATEWAY_RESULTS: &[&str] =
    &["2xx", "3xx", "4xx", "5xx", "denied", "rate_limited", "unavailable", "invalid", "too_large", "other"];

pub const TOKEN_SOURCES: &[&str] = &["cache", "upstream", "shared", "stale"];
pub const DISCLOSURE_KINDS: &[&str] = &["first", "repeat"];
pub const RELOAD_RESULTS: &[&str] =
    &["policy_reloaded", "policy_refused", "certificates_reloaded", "certificates_refused", "other"];
pub const DENIAL_REASONS: &[&str] = &[
    "invalid_argument",
    "permission_denied",
    "not_found",
    "failed_precondition",
    "unavailable",
    "resource_exhausted",
    "internal",
    "other",
];
pub const UPSTREAM_OUTCOMES: &[&str] = &[
    "ok",
    "key_rejected",
    "subscription_key_rejected",
    "rate_limited",
    "quota_exceeded",
    "transient",
    "timeout",
    "other",
];

impl Default for ServerMetrics {
    fn default() -> Self {
        Self {
            tokens_minted: LabeledCounter::new(TOKEN_SOURCES),
            tokens_denied: LabeledCounter::new(DENIAL_REASONS),
            token_latency: Histogram::default(),
            disclosures: LabeledCounter::new(DISCLOSURE_KINDS),
            reloads: LabeledCounter::new(RELOAD_RESULTS),
            gateway_requests: LabeledCounter::new(GATEWAY_RESULTS),
            gateway_latency: Histogram::default(),
            gateway_queue_wait: Histogram::default(),
        }
    }
}
