//! Prometheus text exposition on its own listener (loopback by default).
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

    fn render(&self, out: &mut String, name: &str, labels: &str) {
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

    fn render(&self, out: &mut String, name: &str, key: &str) {
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
}

pub const TOKEN_SOURCES: &[&str] = &["cache", "upstream", "shared", "stale"];
pub const DENIAL_REASONS: &[&str] =
    &["invalid_argument", "permission_denied", "not_found", "failed_precondition", "unavailable", "internal", "other"];
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
        }
    }
}

/// The denial reason label of a gRPC code.
pub fn reason(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => "permission_denied",
        tonic::Code::NotFound => "not_found",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Internal => "internal",
        _ => "other",
    }
}

/// One scrape: everything rendered in the Prometheus text format.
pub struct Snapshot<'a> {
    pub server: &'a ServerMetrics,
    pub broker: &'a crate::tokens::BrokerStats,
    pub audit: crate::audit::AuditStatsSnapshot,
    pub tenants_by_status: Vec<(crate::domain::TenantStatus, i64)>,
}

pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(8192);
    let o = &mut out;
    let _ = writeln!(o, "# HELP pogo_vault_build_info Build information.\n# TYPE pogo_vault_build_info gauge");
    let _ = writeln!(o, "pogo_vault_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

    let _ = writeln!(
        o,
        "# HELP pogo_vault_tokens_minted_total Tokens handed out, by where they came from.\n# TYPE pogo_vault_tokens_minted_total counter"
    );
    s.server.tokens_minted.render(o, "pogo_vault_tokens_minted_total", "source");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_tokens_denied_total GetAccessToken refusals, by reason.\n# TYPE pogo_vault_tokens_denied_total counter"
    );
    s.server.tokens_denied.render(o, "pogo_vault_tokens_denied_total", "reason");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_token_request_seconds GetAccessToken latency, audit included.\n# TYPE pogo_vault_token_request_seconds histogram"
    );
    s.server.token_latency.render(o, "pogo_vault_token_request_seconds", "");

    let b = s.broker;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        o,
        "# HELP pogo_vault_cache_hits_total Token requests served from the cache.\n# TYPE pogo_vault_cache_hits_total counter"
    );
    let _ = writeln!(o, "pogo_vault_cache_hits_total {}", load(&b.cache_hits));
    let _ = writeln!(
        o,
        "# HELP pogo_vault_cache_misses_total Token requests that needed an upstream request (own or shared).\n# TYPE pogo_vault_cache_misses_total counter"
    );
    let _ = writeln!(o, "pogo_vault_cache_misses_total {}", load(&b.cache_misses));
    let _ = writeln!(
        o,
        "# HELP pogo_vault_upstream_requests_total Requests to PowerOffice Go, by outcome.\n# TYPE pogo_vault_upstream_requests_total counter"
    );
    b.upstream_outcomes.render(o, "pogo_vault_upstream_requests_total", "outcome");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_upstream_request_seconds Latency of token requests to PowerOffice Go.\n# TYPE pogo_vault_upstream_request_seconds histogram"
    );
    b.upstream_latency.render(o, "pogo_vault_upstream_request_seconds", "");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_limiter_waits_total Upstream requests that waited for the shared limiter.\n# TYPE pogo_vault_limiter_waits_total counter"
    );
    let _ = writeln!(o, "pogo_vault_limiter_waits_total {}", load(&b.limiter_waits));
    let _ = writeln!(
        o,
        "# HELP pogo_vault_limiter_refusals_total Requests refused because the limiter's wait would exceed the deadline.\n# TYPE pogo_vault_limiter_refusals_total counter"
    );
    let _ = writeln!(o, "pogo_vault_limiter_refusals_total {}", load(&b.limiter_refusals));

    let _ = writeln!(o, "# HELP pogo_vault_tenants Tenants by status.\n# TYPE pogo_vault_tenants gauge");
    for status in ["ACTIVE", "DISABLED", "KEY_REJECTED"] {
        let n = s.tenants_by_status.iter().find(|(st, _)| st.as_str() == status).map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "pogo_vault_tenants{{status=\"{status}\"}} {n}");
    }

    let a = &s.audit;
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_queue_depth Audit records waiting for the writer.\n# TYPE pogo_vault_audit_queue_depth gauge"
    );
    let _ = writeln!(o, "pogo_vault_audit_queue_depth {}", a.queue_depth);
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_records_total Audit records committed.\n# TYPE pogo_vault_audit_records_total counter"
    );
    let _ = writeln!(o, "pogo_vault_audit_records_total {}", a.records);
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_commit_failures_total Audit batches that failed to commit.\n# TYPE pogo_vault_audit_commit_failures_total counter"
    );
    let _ = writeln!(o, "pogo_vault_audit_commit_failures_total {}", a.commit_failures);
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_commit_seconds Audit batch commit latency (fsync included).\n# TYPE pogo_vault_audit_commit_seconds histogram"
    );
    a.commit_latency.latency().render(o, "pogo_vault_audit_commit_seconds", "");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_healthy 1 while audit records commit.\n# TYPE pogo_vault_audit_healthy gauge"
    );
    let _ = writeln!(o, "pogo_vault_audit_healthy {}", u8::from(a.healthy));
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_last_checkpoint_age_seconds Seconds since the last signed checkpoint (-1: none yet).\n# TYPE pogo_vault_audit_last_checkpoint_age_seconds gauge"
    );
    let _ = writeln!(o, "pogo_vault_audit_last_checkpoint_age_seconds {}", a.last_checkpoint_age_secs);
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_tenant_index_lag_events Audit events not yet in the background tenant index (tenant queries scan them).\n# TYPE pogo_vault_audit_tenant_index_lag_events gauge"
    );
    let _ = writeln!(o, "pogo_vault_audit_tenant_index_lag_events {}", a.tenant_index_lag);
    render_witnesses(o, &a.witnesses);
    out
}

/// The witness label values: a witness's kind, never its address or path.
pub const WITNESS_NAMES: &[&str] = &["file", "syslog"];

/// Witness gauges and counters, one series per configured witness (labels from
/// [`WITNESS_NAMES`] only).
fn render_witnesses(o: &mut String, witnesses: &[crate::audit::WitnessStatus]) {
    if witnesses.is_empty() {
        return;
    }
    type Series = (&'static str, &'static str, &'static str, fn(&crate::audit::WitnessStatus) -> u64);
    let series: [Series; 5] = [
        ("pogo_vault_audit_witness_backlog", "gauge", "Signed checkpoints waiting for delivery to a witness.", |w| {
            w.backlog
        }),
        ("pogo_vault_audit_witness_delivered_total", "counter", "Checkpoints delivered to a witness.", |w| w.delivered),
        (
            "pogo_vault_audit_witness_failures_total",
            "counter",
            "Failed deliveries to a witness (it is retried).",
            |w| w.failures,
        ),
        (
            "pogo_vault_audit_witness_dropped_total",
            "counter",
            "Checkpoints dropped from a full witness backlog (newer ones cover them).",
            |w| w.dropped,
        ),
        ("pogo_vault_audit_witness_failing", "gauge", "1 while the last delivery to a witness failed.", |w| {
            u64::from(w.failing)
        }),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for w in witnesses {
            let label = WITNESS_NAMES.iter().find(|n| **n == w.name).copied().unwrap_or("other");
            let _ = writeln!(o, "{name}{{witness=\"{label}\"}} {}", value(w));
        }
    }
}

/// Serves `GET /metrics` on `listen` until `stop` fires.
pub async fn serve(
    listen: std::net::SocketAddr,
    state: std::sync::Arc<crate::server::ServerState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                let text = state.metrics_text().await;
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(addr)
}
