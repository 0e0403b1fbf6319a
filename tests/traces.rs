#![allow(clippy::unwrap_used, clippy::expect_used)]
//! OpenTelemetry traces, end to end: `pogo-vault serve` (a real process) exports its spans
//! over OTLP/gRPC to a collector this test runs in-process (a tonic server of OTLP's
//! TraceService). A caller sends GetAccessToken with a W3C `traceparent`: the vault's spans
//! join that trace, under the caller's span, in the shape `telemetry.rs` promises (the RPC's
//! server span; the gate, the broker and the audit append under it; the flight under the
//! broker; the limiter's wait and the request to Go under the flight). Nothing exported
//! holds the client key, the subscription key, the token or the token's fingerprint, and no
//! log line became a span event.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture::{self, policy_text, sim_key};
use common::serve_process;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::{NewTenant, UnauditedFixture};
use tokio::net::TcpListener;

/// Keeps every export request whole (for the canary scan) and every span.
#[derive(Default, Clone)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn spans(&self) -> Vec<Span> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()?.value)
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attr(span, key)? {
        Value::StringValue(s) => Some(s),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_holds_the_vaults_spans_in_shape_and_no_secret() {
    let collector = Collector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_port = listener.local_addr().unwrap().port();
    let serve = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(serve);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = fixture::start_sim(1000).await;
    fixture::add_sim_clients(&sim, 1);
    let (pki, vault) = fixture::serve_files(d, &sim, &policy_text(""));
    let mut new = NewTenant::new("t0".parse().unwrap(), Environment::Demo);
    // A label value as a canary: tenant labels stay out of traces.
    new.labels = pogo_vault::domain::Labels::parse_field("labels", [("customer-tier", "label-canary-7f3a9c")]).unwrap();
    vault.add_tenant(&new, &pogo_vault::crypto::ClientKey::parse(&sim_key(0)).unwrap(), &UnauditedFixture).unwrap();
    // No metrics listener: its default port would collide with the other serve processes.
    let extra = format!(
        "metrics_listen = \"\"\n\n[traces]\notlp_endpoint = \"http://127.0.0.1:{otlp_port}\"\nexport_interval_ms = 100\n"
    );
    let (config, endpoint) = serve_process::write_config(d, &extra);
    let mut child = serve_process::start(&config, "warn");
    let files = pki.client_files("token-caller").unwrap();
    let ch = serve_process::wait_ready(&endpoint, &files, &config, 300, Duration::from_millis(50)).await;
    let mut tokens = pb::token_service_client::TokenServiceClient::new(ch);

    // The caller's own trace and span; sampled.
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traced = |tenant: &str| {
        let mut req =
            tonic::Request::new(pb::GetAccessTokenRequest { tenant_id: tenant.into(), min_validity_seconds: 0 });
        let tp = format!("00-{trace_id}-{caller_span}-01");
        req.metadata_mut().insert("traceparent", tp.parse().unwrap());
        req
    };
    let first = tokens.get_access_token(traced("t0")).await.unwrap().into_inner();
    let second = tokens.get_access_token(traced("t0")).await.unwrap().into_inner();
    assert_eq!(first.access_token, second.access_token, "the second came from the cache");
    // The auditor has no token role: refused at the gate, in the same trace.
    let auditor = pki.client_files("auditor").unwrap();
    let auditor = pogo_vault::client::connect(&endpoint, &auditor, Some("localhost")).await.unwrap();
    let refused = pb::token_service_client::TokenServiceClient::new(auditor).get_access_token(traced("t0")).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);

    // A graceful stop sends the last spans.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success(), "{}", serve_process::log(&config));

    let deadline = Instant::now() + Duration::from_secs(10);
    let ours = loop {
        let ours: Vec<Span> = collector.spans().into_iter().filter(|s| hex(&s.trace_id) == trace_id).collect();
        if ours.iter().filter(|s| s.name.ends_with("GetAccessToken")).count() >= 3 || Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    let by_id: HashMap<String, &Span> = ours.iter().map(|s| (hex(&s.span_id), s)).collect();
    let parent =
        |s: &Span| by_id.get(&hex(&s.parent_span_id)).map(|p| p.name.clone()).unwrap_or_else(|| hex(&s.parent_span_id));
    let rpcs: Vec<&Span> = ours.iter().filter(|s| s.name == "pogo_vault.v1.TokenService/GetAccessToken").collect();
    assert_eq!(rpcs.len(), 3, "three server spans in the caller's trace: {names:?}");
    for rpc in &rpcs {
        assert_eq!(hex(&rpc.parent_span_id), caller_span, "the server span continues the caller's span");
        assert_eq!(rpc.kind, SpanKind::Server as i32);
    }
    let token_caller = format!("spiffe://{}/service/token-caller", fixture::TRUST);
    assert_eq!(rpcs.iter().filter(|r| text(r, "caller").as_deref() == Some(token_caller.as_str())).count(), 2);
    let under = |name: &str, parent_name: &str| -> Vec<&Span> {
        ours.iter().filter(|s| s.name == name && parent(s) == parent_name).collect()
    };
    let rpc_name = "pogo_vault.v1.TokenService/GetAccessToken";
    let gates = under("gate", rpc_name);
    assert_eq!(gates.len(), 3, "{names:?}");
    let allowed: Vec<Option<String>> = gates.iter().map(|g| text(g, "allowed")).collect();
    assert_eq!(allowed.iter().filter(|a| a.as_deref() == Some("true")).count(), 2, "{allowed:?}");
    assert_eq!(allowed.iter().filter(|a| a.as_deref() == Some("false")).count(), 1, "the refusal: {allowed:?}");
    let brokers = under("broker.get_token", rpc_name);
    assert_eq!(brokers.len(), 2, "{names:?}");
    let caches: Vec<Option<String>> = brokers.iter().map(|b| text(b, "cache")).collect();
    assert!(caches.contains(&Some("miss".into())) && caches.contains(&Some("hit".into())), "{caches:?}");
    assert!(brokers.iter().all(|b| text(b, "tenant_id").as_deref() == Some("t0")));
    let flights = under("broker.flight", "broker.get_token");
    assert_eq!(flights.len(), 1, "one upstream flight, under the miss: {names:?}");
    assert_eq!(under("limiter.wait", "broker.flight").len(), 1, "{names:?}");
    let upstream = under("upstream.request", "broker.flight");
    assert_eq!(upstream.len(), 1, "{names:?}");
    let up = upstream[0];
    assert_eq!(up.kind, SpanKind::Client as i32);
    assert_eq!(text(up, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(text(up, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(text(up, "http.response.status_code").as_deref(), Some("200"));
    let appends = under("audit.append", rpc_name);
    assert!(!appends.is_empty(), "the token's disclosure record was awaited in the trace: {names:?}");
    assert!(appends.iter().all(|a| matches!(attr(a, "batch_size"), Some(Value::IntValue(n)) if n >= 1)), "{appends:?}");
    // No log line became a span event, anywhere.
    let all = collector.spans();
    assert!(all.iter().all(|s| s.events.is_empty()), "span events were exported");

    // Canaries: nothing exported holds a secret or the token's fingerprint.
    let exported = format!("{:?}", collector.requests.lock().unwrap());
    let audit =
        pogo_vault::audit::open_reader(&pogo_vault::config::default_audit_db(&d.join(fixture::VAULT_DB))).unwrap();
    let events = pogo_vault::audit::events_from(&audit, 1, 10_000).unwrap();
    let fingerprints: Vec<String> = events.iter().filter_map(|e| e.record.token_fingerprint.clone()).collect();
    assert!(!fingerprints.is_empty());
    let sim_defaults = pogo_vault::sim::SimConfig::default();
    let master_key: String =
        std::fs::read(d.join(fixture::MASTER_KEY)).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let mut canaries = vec![first.access_token.clone(), sim_key(0), "label-canary-7f3a9c".to_owned(), master_key];
    canaries.extend(sim_defaults.subscription_keys.iter().map(|(_, k)| k.clone()));
    canaries.extend(fingerprints);
    for c in &canaries {
        common::assert_no_leak("the exported traces", exported.as_bytes(), c);
    }
    eprintln!("{} spans exported in all; the caller's trace: {names:?}", all.len());
}

/// A collector that is down holds nothing up: token requests succeed, and a graceful stop
/// still ends promptly (the last spans are given up after a bounded wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_no_request_and_does_not_hold_up_the_stop() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = fixture::start_sim(1000).await;
    fixture::add_sim_clients(&sim, 1);
    let (pki, vault) = fixture::serve_files(d, &sim, &policy_text(""));
    let new = NewTenant::new("t0".parse().unwrap(), Environment::Demo);
    vault.add_tenant(&new, &pogo_vault::crypto::ClientKey::parse(&sim_key(0)).unwrap(), &UnauditedFixture).unwrap();
    let extra = format!(
        "metrics_listen = \"\"\n\n[traces]\notlp_endpoint = \"http://127.0.0.1:{closed_port}\"\nexport_interval_ms = 50\n"
    );
    let (config, endpoint) = serve_process::write_config(d, &extra);
    let mut child = serve_process::start(&config, "warn");
    let files = pki.client_files("token-caller").unwrap();
    let ch = serve_process::wait_ready(&endpoint, &files, &config, 300, Duration::from_millis(50)).await;
    let mut tokens = pb::token_service_client::TokenServiceClient::new(ch);
    for _ in 0..20 {
        let mut req =
            tonic::Request::new(pb::GetAccessTokenRequest { tenant_id: "t0".into(), min_validity_seconds: 0 });
        req.metadata_mut()
            .insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        tokens.get_access_token(req).await.expect("a collector that is down must not fail a request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success(), "{}", serve_process::log(&config));
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    eprintln!("stopped in {took:?} with the collector down");
}
