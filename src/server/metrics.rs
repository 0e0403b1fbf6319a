//! The `/metrics` answer: one scrape of the server, the broker and the audit writer rendered
//! in the Prometheus text format, and the plain-HTTP listener that serves it. The counters
//! themselves are `crate::metrics` primitives owned by whoever counts.
//!
//! Architecture invariant (`crate::metrics`): no secret and no unbounded label set.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::{AuditStatsSnapshot, SinkStatus, WitnessStatus};
use crate::domain::TenantStatus;
use crate::metrics::ServerMetrics;
use crate::tokens::BrokerStats;

/// The denial reason label of a gRPC code.
pub fn reason(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => "permission_denied",
        tonic::Code::NotFound => "not_found",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Internal => "internal",
        _ => "other",
    }
}

/// One scrape: everything rendered in the Prometheus text format.
pub struct Snapshot<'a> {
    pub server: &'a ServerMetrics,
    pub broker: &'a BrokerStats,
    pub audit: AuditStatsSnapshot,
    pub tenants_by_status: Vec<(TenantStatus, i64)>,
    pub disclosed_pairs: usize,
    /// `None`: the master key is in memory; else whether its HSM answers.
    pub master_key: Option<bool>,
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
        "# HELP pogo_vault_token_disclosures_total Tokens handed out: the first time to a caller, serial and peer IP (recorded durably before the answer), or a repeat (recorded in the next commit, not awaited).\n# TYPE pogo_vault_token_disclosures_total counter"
    );
    s.server.disclosures.render(o, "pogo_vault_token_disclosures_total", "kind");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_reloads_total Reloads of the policy and the certificates (SIGHUP or a change on disk), put in force or refused (the old kept).\n# TYPE pogo_vault_reloads_total counter"
    );
    s.server.reloads.render(o, "pogo_vault_reloads_total", "result");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_disclosed_pairs (caller, serial, peer IP, token) pairs kept to tell repeats from first disclosures (bounded; only tokens still valid).\n# TYPE pogo_vault_disclosed_pairs gauge\npogo_vault_disclosed_pairs {}",
        s.disclosed_pairs
    );
    let _ = writeln!(
        o,
        "# HELP pogo_vault_token_request_seconds GetAccessToken latency, audit included.\n# TYPE pogo_vault_token_request_seconds histogram"
    );
    s.server.token_latency.render(o, "pogo_vault_token_request_seconds", "");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_gateway_requests_total API gateway requests, by Go's status class or the gateway's own refusal.\n# TYPE pogo_vault_gateway_requests_total counter"
    );
    s.server.gateway_requests.render(o, "pogo_vault_gateway_requests_total", "result");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_gateway_request_seconds API gateway requests from arrival until the answer starts back (Go's time and audit included).\n# TYPE pogo_vault_gateway_request_seconds histogram"
    );
    s.server.gateway_latency.render(o, "pogo_vault_gateway_request_seconds", "");
    let _ = writeln!(
        o,
        "# HELP pogo_vault_gateway_queue_wait_seconds How long API gateway requests waited for the shared limiter.\n# TYPE pogo_vault_gateway_queue_wait_seconds histogram"
    );
    s.server.gateway_queue_wait.render(o, "pogo_vault_gateway_queue_wait_seconds", "");

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
        "# HELP pogo_vault_audit_unawaited_lost_total Repeat-disclosure records (answered without waiting) dropped because the log could not take them within the append bound.\n# TYPE pogo_vault_audit_unawaited_lost_total counter\npogo_vault_audit_unawaited_lost_total {}",
        a.unawaited_lost
    );
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
        "# HELP pogo_vault_master_key_available 1 while the master key can unwrap (0: its HSM is away; -1: the key is \
         in memory, no HSM).\n# TYPE pogo_vault_master_key_available gauge"
    );
    let available = match s.master_key {
        None => -1,
        Some(ok) => i8::from(ok),
    };
    let _ = writeln!(o, "pogo_vault_master_key_available {available}");
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
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_log_bytes Size of the audit database on disk, WAL included (bounded by the retention `audit archive` keeps).\n# TYPE pogo_vault_audit_log_bytes gauge"
    );
    let _ = writeln!(o, "pogo_vault_audit_log_bytes {}", a.log_bytes);
    let _ = writeln!(
        o,
        "# HELP pogo_vault_audit_oldest_sequence The oldest event the audit database holds (earlier ones are archived; 0: none).\n# TYPE pogo_vault_audit_oldest_sequence gauge"
    );
    let _ = writeln!(o, "pogo_vault_audit_oldest_sequence {}", a.oldest_sequence);
    render_witnesses(o, &a.witnesses);
    render_sinks(o, &a.sinks);
    out
}

/// Audit sink gauges and counters, one series per configured sink, labelled with its
/// configured name (checked at start-up to be 1 to 32 of `a-z 0-9 - _`; never an address).
fn render_sinks(o: &mut String, sinks: &[SinkStatus]) {
    if sinks.is_empty() {
        return;
    }
    type Series = (&'static str, &'static str, &'static str, fn(&SinkStatus) -> u64);
    let series: [Series; 7] = [
        (
            "pogo_vault_audit_sink_lag_events",
            "gauge",
            "Events committed that an audit sink's destination does not certainly have yet.",
            |s| s.lag,
        ),
        (
            "pogo_vault_audit_sink_delivered_sequence",
            "gauge",
            "The newest event sequence an audit sink's destination certainly has (its cursor).",
            |s| s.delivered_sequence.max(0) as u64,
        ),
        (
            "pogo_vault_audit_sink_sent_total",
            "counter",
            "Events and checkpoints sent to an audit sink, repeats included.",
            |s| s.sent_items,
        ),
        (
            "pogo_vault_audit_sink_failures_total",
            "counter",
            "Failed deliveries to an audit sink (retried from its cursor).",
            |s| s.failures,
        ),
        (
            "pogo_vault_audit_sink_skipped_total",
            "counter",
            "Events archived before an audit sink delivered them, and records a collector refused for good.",
            |s| s.skipped,
        ),
        ("pogo_vault_audit_sink_failing", "gauge", "1 while the last delivery to an audit sink failed.", |s| {
            u64::from(s.failing)
        }),
        (
            "pogo_vault_audit_sink_standby",
            "gauge",
            "1 while another replica holds an audit sink's lease and delivers it (PostgreSQL).",
            |s| u64::from(s.standby),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in sinks {
            let _ = writeln!(o, "{name}{{sink=\"{}\"}} {}", s.name, value(s));
        }
    }
}

/// The witness label values: a witness's kind, never its address or path.
pub const WITNESS_NAMES: &[&str] = &["file", "syslog"];

/// Witness gauges and counters, one series per configured witness (labels from
/// [`WITNESS_NAMES`] only).
fn render_witnesses(o: &mut String, witnesses: &[WitnessStatus]) {
    if witnesses.is_empty() {
        return;
    }
    type Series = (&'static str, &'static str, &'static str, fn(&WitnessStatus) -> u64);
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

/// One scrape's text, made when `GET /metrics` arrives.
pub type Scrape = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Serves `GET /metrics` on `listen` until `stop` fires; `scrape` renders each answer.
pub async fn serve(
    listen: std::net::SocketAddr,
    scrape: Scrape,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let scrape = scrape.clone();
            async move {
                let text = scrape().await;
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
