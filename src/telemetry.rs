//! Traces: OpenTelemetry over OTLP/gRPC (`[traces]` in the serve config), off unless a
//! collector is named. The vault's `tracing` spans are bridged to OpenTelemetry
//! (`tracing-opentelemetry`) and exported in batches (`opentelemetry-otlp`, over the one
//! tonic and rustls of the build) to the collector, which puts them in the caller's trace:
//! a caller's W3C `traceparent` is continued ([`continue_trace`]).
//!
//! What a trace shows of one RPC: the server span (`rpc`, named after the method: the
//! handler) with the `gate` (identity, method, role) as its first child, then the broker
//! (`broker.get_token`: cache hit or miss, leader or follower of a flight), the flight
//! (`broker.flight`) with the limiter's wait (`limiter.wait`) and the request to Go
//! (`upstream.request`: method, host, status), and the audit append (`audit.append`: the
//! batch it joined, and the wait for its commit as the span's length).
//!
//! Invariants:
//! - **Only spans leave, never log events**, and only the vault's own (target `pogo_vault`):
//!   a per-layer filter keeps every log line, whatever it holds, out of the exported data.
//! - **Attribute values are chosen where each span is made**: identities, method names,
//!   hosts, statuses, counts, the tenant id. Never a secret, a token fingerprint, a tenant
//!   label or a URL path (tested with canaries by `tests/traces.rs`).
//! - A caller's sampling decision is followed (parent-based); traces the vault starts are
//!   sampled at `sample_ratio`.
//! - Exporting never holds up a request: spans are queued (bounded, dropped when full) and
//!   sent by the batch processor's own thread on a runtime of their own.
//! - The spans below the request's own are `debug`: with traces off (and logs at `info`)
//!   they are never created, so the hot path pays nothing for them.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::tls::OtlpTarget;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for the last spans to leave (a collector that hangs must not hold
/// up the vault's stop).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// `[traces]`: where spans go (nowhere unless `otlp_endpoint` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's OTLP/gRPC URL (`https://collector:4317`; `http://` on loopback only).
    pub otlp_endpoint: Option<String>,
    /// PEM file of the CA(s) that issued the collector's certificate (required with https).
    pub ca: Option<PathBuf>,
    /// The name the collector's certificate must carry; default: the endpoint's host.
    pub server_name: Option<String>,
    /// PEM certificate and key presented to the collector (mutual TLS), both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The share of traces the vault starts itself that are kept (0 to 1); a caller's
    /// `traceparent` decides for its own requests.
    pub sample_ratio: f64,
    /// How often queued spans are sent, in milliseconds.
    pub export_interval_ms: u64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp_endpoint: None,
            ca: None,
            server_name: None,
            cert: None,
            key: None,
            sample_ratio: 1.0,
            export_interval_ms: 1000,
            service_name: "pogo-vault".into(),
        }
    }
}

impl TracesConfig {
    fn target(&self) -> Option<OtlpTarget> {
        Some(OtlpTarget {
            endpoint: self.otlp_endpoint.clone()?,
            ca: self.ca.clone(),
            server_name: self.server_name.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        })
    }

    /// Checks the section before serving: `Err((key, reason))` names the bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(("traces.sample_ratio", format!("{} is not between 0 and 1", self.sample_ratio)));
        }
        if !(10..=60_000).contains(&self.export_interval_ms) {
            return Err((
                "traces.export_interval_ms",
                format!("{} is not between 10 and 60000", self.export_interval_ms),
            ));
        }
        if self.service_name.trim().is_empty() || self.service_name.len() > 128 {
            return Err(("traces.service_name", "must be 1 to 128 characters".into()));
        }
        let Some(target) = self.target() else {
            return match (&self.ca, &self.cert, &self.key, &self.server_name) {
                (None, None, None, None) => Ok(()),
                _ => Err(("traces.otlp_endpoint", "ca, cert, key and server_name need otlp_endpoint".into())),
            };
        };
        target.check().map_err(|(field, reason)| {
            let key = match field {
                "ca" => "traces.ca",
                "cert" => "traces.cert",
                "key" => "traces.key",
                "server_name" => "traces.server_name",
                _ => "traces.otlp_endpoint",
            };
            (key, reason)
        })
    }

    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }
}

/// The running exporter: dropping it (or [`Tracing::shutdown`]) sends what is queued.
pub struct Tracing {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Tracing {
    /// Sends the spans still queued (waiting at most 3 s) and stops exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(STOP_TIMEOUT) {
            tracing::warn!(error = %e, "could not send the last spans to the trace collector");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            self.stop();
        }
    }
}

/// The layer that exports the vault's spans, and the exporter behind it; `None` when
/// `[traces]` names no collector. Add the layer to the subscriber; keep the [`Tracing`]
/// until the process stops.
pub fn layer<S>(cfg: &TracesConfig) -> Result<Option<(impl Layer<S> + use<S>, Tracing)>, String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(target) = cfg.target() else { return Ok(None) };
    // The exporter's gRPC channel lives on a runtime of its own: the batch processor's
    // thread drives exports, and no request ever waits for them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pogo-traces")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the trace exporter's runtime: {e}"))?;
    let channel = {
        let _in = runtime.enter();
        target.endpoint(EXPORT_TIMEOUT)?.connect_lazy()
    };
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let exporter = {
        let _in = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the trace exporter: {e}"))?
    };
    let batch =
        BatchConfigBuilder::default().with_scheduled_delay(Duration::from_millis(cfg.export_interval_ms)).build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("pogo-vault");
    // Spans only (no log event becomes a span event), and only the vault's own.
    let only_our_spans = tracing_subscriber::filter::filter_fn(|m| m.is_span() && m.target().starts_with("pogo_vault"));
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_target(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(only_our_spans);
    Ok(Some((layer, Tracing { provider, runtime: Some(runtime) })))
}

/// Makes `span` continue the trace a caller's W3C `traceparent` (and `tracestate`) header
/// names; without one (or with a malformed one) the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    struct Headers<'a>(&'a http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        // Fails only when no OpenTelemetry layer is installed (traces off): nothing to do.
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_off_by_default_and_errors_name_the_key() {
        let c = TracesConfig::default();
        c.validate().unwrap();
        assert!(!c.enabled());
        let with = |f: fn(&mut TracesConfig)| {
            let mut c = TracesConfig::default();
            f(&mut c);
            c.validate().map_err(|e| e.0)
        };
        assert_eq!(with(|c| c.sample_ratio = 1.5), Err("traces.sample_ratio"));
        assert_eq!(with(|c| c.export_interval_ms = 0), Err("traces.export_interval_ms"));
        assert_eq!(with(|c| c.ca = Some("ca.pem".into())), Err("traces.otlp_endpoint"));
        assert_eq!(
            with(|c| c.otlp_endpoint = Some("http://collector.internal:4317".into())),
            Err("traces.otlp_endpoint")
        );
        assert_eq!(with(|c| c.otlp_endpoint = Some("https://collector.internal:4317".into())), Err("traces.ca"));
        assert_eq!(with(|c| c.otlp_endpoint = Some("http://127.0.0.1:4317".into())), Ok(()));
    }
}
