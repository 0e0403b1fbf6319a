#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The API gateway (`[gateway]`, `server/gateway/`, `usecase::gateway`) end to end: real
//! mutual TLS on loopback, HTTP/1.1 and HTTP/2 from callers, the simulator as Go over HTTP.
//!
//! - a caller lists customers and posts an invoice; the simulator saw the vault's bearer
//!   token and subscription key, the caller's answer holds neither (scanned), and every
//!   request has its records;
//! - the authorization table: allowed path, denied path, denied tenant, missing tenant (the
//!   same 403), no certificate, revoked certificate;
//! - a 401 with a cached token: one new token, one retry; never for a streamed body;
//! - with the audit log locked: 503, and nothing reaches the simulator.
//!
//! The fair share under load and the streaming test have files of their own
//! (`gateway_load.rs`, `gateway_streaming.rs`).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::fixture::{grant, sim_key};
use common::server::TestServer;
use pogo_vault::audit::{Action, AuditEvent, AuditFilter, Outcome};
use pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY;
use serde_json::Value;

/// An `api` grant for `spiffe://TRUST/service/{caller}` on `tenants` with `rules`.
fn api_grant(caller: &str, tenants: &[&str], rules: &[&str]) -> String {
    let rules = rules.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
    format!("{}api = [{rules}]\n", grant(&format!("service/{caller}"), &["api"], tenants))
}

fn policy() -> String {
    [
        api_grant(
            "api-caller",
            &["*"],
            &["GET /v2/Customers", "POST /v2/OutgoingInvoices", "GET /v2/Sim/Download", "POST /v2/Sim/Upload"],
        ),
        api_grant("narrow", &["a-*"], &["GET /v2/Customers"]),
        // An api grant without rules: everything under /v2/ (but Go's onboarding, never).
        grant("service/wide", &["api"], &["*"]),
    ]
    .concat()
}

fn events(ts: &TestServer) -> Vec<AuditEvent> {
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    pogo_vault::audit::list(&conn, &AuditFilter::default(), None, 100_000).unwrap()
}

/// The events of each request id.
fn by_request(ts: &TestServer) -> HashMap<String, Vec<AuditEvent>> {
    let mut m: HashMap<String, Vec<AuditEvent>> = HashMap::new();
    for e in events(ts) {
        m.entry(e.record.request_id.clone()).or_default().push(e);
    }
    m
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// Every header of an answer, as text, for the leak scan.
fn header_text(r: &reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in r.headers() {
        out.extend_from_slice(n.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_lists_customers_and_posts_an_invoice_and_never_sees_a_credential() {
    let ts = TestServer::start_gateway(&policy(), |_| {}).await;
    ts.issue("api-caller");
    ts.register("acme", 0).await;
    let mut ids = Vec::new();
    let mut tokens_seen = Vec::new();
    for h2 in [false, true] {
        let c = ts.https("api-caller", h2);
        let url = format!("{}/acme/v2/Customers?page=2&pageSize=10&subscription-key=caller-chosen", ts.gateway_url());
        let r = c
            .get(url)
            .header("authorization", "Bearer caller-token")
            .header("ocp-apim-subscription-key", "caller-key")
            .header("x-request-id", "caller-42")
            .header("ocp-apim-trace", "true")
            .header("x-http-method-override", "DELETE")
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), if h2 { reqwest::Version::HTTP_2 } else { reqwest::Version::HTTP_11 });
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-total-count"], "120", "Go's own headers pass");
        ids.push(request_id(&r));
        let headers = header_text(&r);
        let body = r.bytes().await.unwrap();
        let customers: Vec<Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(customers.len(), 10);
        assert_eq!(customers[0]["Id"], 11, "page 2 of 10");

        // What Go saw: the vault's credentials, none of the caller's.
        let seen = ts.sim.last_v2_request().unwrap();
        let bearer = seen.header("authorization").unwrap().to_owned();
        assert!(bearer.starts_with("Bearer ") && bearer != "Bearer caller-token", "{bearer:.12}");
        assert_eq!(seen.header("ocp-apim-subscription-key"), Some(DEFAULT_DEMO_SUBSCRIPTION_KEY));
        assert_eq!(seen.query.as_deref(), Some("page=2&pageSize=10"), "the caller's subscription-key is not sent");
        assert_eq!(seen.header("x-request-id"), Some("caller-42"), "a listed header passes");
        assert_eq!(seen.header("ocp-apim-trace"), None, "Go's gateway is never asked to trace");
        assert_eq!(seen.header("x-http-method-override"), None);
        assert_eq!(seen.header("accept-encoding"), Some("identity"));
        let token = bearer.trim_start_matches("Bearer ").to_owned();
        // What the caller saw: neither the token nor the subscription key, in any form.
        for secret in [token.as_str(), DEFAULT_DEMO_SUBSCRIPTION_KEY, &sim_key(0)] {
            common::assert_no_leak("the answer's headers", &headers, secret);
            common::assert_no_leak("the answer's body", &body, secret);
        }
        tokens_seen.push(token);
    }

    let c = ts.https("api-caller", false);
    let r = c
        .post(format!("{}/acme/v2/OutgoingInvoices", ts.gateway_url()))
        .json(&serde_json::json!({"CustomerNo": 10001, "Lines": [{"Description": "Consulting", "Amount": 1200}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    ids.push(request_id(&r));
    let invoice: Value = r.json().await.unwrap();
    assert_eq!((invoice["Id"].as_u64(), invoice["CustomerNo"].as_u64()), (Some(1), Some(10001)));
    assert_eq!(ts.sim.invoices_created(), 1);
    assert_eq!(ts.sim.v2_requests(), 3);

    // Each request: `api_requested` then `api_answered` with Go's status; the path and the
    // query's names, never a value; the token's fingerprint, never the token.
    let records = by_request(&ts);
    for (id, status) in ids.iter().zip([200u16, 200, 201]) {
        let evs = &records[id];
        let actions: Vec<Action> = evs.iter().map(|e| e.record.action).collect();
        assert_eq!(actions, [Action::ApiRequested, Action::ApiAnswered], "{id}");
        let answered = &evs[1].record;
        assert_eq!((answered.upstream_status, answered.outcome), (Some(status), Outcome::Ok));
        assert!(answered.token_fingerprint.is_some());
        assert_eq!(answered.caller, format!("spiffe://{}/service/api-caller", common::fixture::TRUST));
        assert_eq!(answered.tenant_id.as_deref(), Some("acme"));
    }
    let first = &records[&ids[0]][0].record.detail;
    assert!(first.starts_with("GET /v2/Customers?page=&pageSize= (no body)"), "{first}");
    assert!(!first.contains("page=2") && !first.contains("caller-chosen"), "{first}");
    let all: Vec<u8> = events(&ts).iter().flat_map(|e| format!("{:?}", e.record).into_bytes()).collect();
    for t in &tokens_seen {
        common::assert_no_leak("the audit log", &all, t);
    }
    common::assert_no_leak("the audit log", &all, DEFAULT_DEMO_SUBSCRIPTION_KEY);

    // The metrics: requests by Go's status class, latency, the limiter wait; no secret.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scrape = format!("http://{}/metrics", ts.server().metrics_addr.unwrap());
    let text = reqwest::Client::new().get(scrape).send().await.unwrap().text().await.unwrap();
    for line in [
        "pogo_vault_gateway_requests_total{result=\"2xx\"} 3",
        "pogo_vault_gateway_request_seconds_count 3",
        "pogo_vault_gateway_queue_wait_seconds_count 3",
    ] {
        assert!(text.contains(line), "{line} not in the metrics:\n{text}");
    }
    for t in &tokens_seen {
        common::assert_no_leak("the metrics", text.as_bytes(), t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_table() {
    let ts = TestServer::start_gateway(&policy(), TestServer::with_crl).await;
    ts.issue("api-caller");
    ts.issue("narrow");
    ts.issue("wide");
    ts.register("acme", 0).await;
    ts.register("a-one", 1).await;
    let base = ts.gateway_url();
    let narrow = ts.https("narrow", false);
    let get = |c: &reqwest::Client, path: &str| c.get(format!("{base}{path}")).send();

    // Allowed: the tenant and the rule.
    for h2 in [false, true] {
        let r = get(&ts.https("narrow", h2), "/a-one/v2/Customers").await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let before = ts.sim.requests_seen();

    // Refused, each the same 403 whether or not the tenant exists: a method or path no rule
    // admits, a tenant not granted, a tenant that does not exist, a caller without the role.
    let mut bodies = Vec::new();
    let token_caller = ts.https("token-caller", false);
    let refusals = [
        (narrow.post(format!("{base}/a-one/v2/Customers")).send().await.unwrap(), "a method no rule admits"),
        (get(&narrow, "/a-one/v2/Customers/7").await.unwrap(), "a path no rule admits"),
        (get(&narrow, "/a-one/v2/Salaries").await.unwrap(), "another path"),
        (get(&narrow, "/acme/v2/Customers").await.unwrap(), "a tenant not granted"),
        (get(&narrow, "/zz-missing/v2/Customers").await.unwrap(), "a missing tenant not granted"),
        (get(&token_caller, "/acme/v2/Customers").await.unwrap(), "a caller without the api role"),
    ];
    let narrow_h2 = ts.https("narrow", true);
    let refusals = refusals.into_iter().chain([
        (get(&narrow_h2, "/acme/v2/Customers").await.unwrap(), "a tenant not granted, over HTTP/2"),
        (get(&narrow_h2, "/zz-missing/v2/Customers").await.unwrap(), "a missing tenant not granted, over HTTP/2"),
    ]);
    let mut refused_ids = Vec::new();
    for (r, what) in refusals {
        assert_eq!(r.status(), 403, "{what}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{what}");
        refused_ids.push(request_id(&r));
        bodies.push((r.bytes().await.unwrap(), what));
    }
    for (b, what) in &bodies {
        assert_eq!(b, &bodies[0].0, "{what}: the same body as every other refusal");
    }
    // Allowed on a tenant that does not exist: 404 (the caller may know).
    let r = get(&narrow, "/a-missing/v2/Customers").await.unwrap();
    assert_eq!(r.status(), 404);
    // A request the gateway does not forward: 400 naming the field.
    let r = get(&narrow, "/a-one/v2/Customers/..%2F..%2FSalaries").await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("path (after the tenant id"), "{text}");
    // Go's onboarding is never forwarded, whatever the grant: Finalize hands out client keys.
    let wide = ts.https("wide", false);
    for path in ["/acme/v2/Onboarding/Finalize", "/acme/v2/onboarding/initiate", "/acme/v2/%4Fnboarding/Finalize"] {
        let r = wide.post(format!("{base}{path}")).json(&serde_json::json!({"OnboardingToken": "t"})).send().await;
        let r = r.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let t = r.text().await.unwrap();
        assert!(t.contains("onboarding") || t.contains("must be written as it is"), "{path}: {t}");
    }
    assert_eq!(ts.sim.requests_seen(), before, "no refusal reached Go");
    assert_eq!(get(&wide, "/acme/v2/Customers").await.unwrap().status(), 200, "a grant without rules: all of /v2/");
    let before = ts.sim.requests_seen();
    let records = by_request(&ts);
    for id in &refused_ids {
        let evs = &records[id];
        assert_eq!(evs.len(), 1);
        assert_eq!((evs[0].record.action, evs[0].record.outcome), (Action::ApiDenied, Outcome::Denied));
    }

    // No certificate: no handshake, no request.
    let anonymous = {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &std::fs::read(&ts.pki.ca_cert).unwrap()[..]) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve("localhost", ts.server().gateway_addr.unwrap())
            .build()
            .unwrap()
    };
    assert!(get(&anonymous, "/a-one/v2/Customers").await.is_err(), "served without a client certificate");

    // Revoked: the open connection is refused from the reload on, a new one at the handshake.
    ts.revoke("narrow");
    ts.server().reload().await;
    let r = get(&narrow, "/a-one/v2/Customers").await.unwrap();
    assert_eq!(r.status(), 403, "an open connection of a revoked caller");
    let id = request_id(&r);
    assert!(r.text().await.unwrap().contains("no longer accepted"));
    let rec = &by_request(&ts)[&id][0].record;
    assert_eq!((rec.action, rec.outcome), (Action::ApiDenied, Outcome::Denied), "the refusal is on record");
    let fresh = ts.https("narrow", false);
    assert!(get(&fresh, "/a-one/v2/Customers").await.is_err(), "a revoked certificate passed the handshake");
    assert_eq!(ts.sim.requests_seen(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_with_a_cached_token_mints_once_and_retries_once_but_never_a_streamed_body() {
    let ts = TestServer::start_gateway(&policy(), |_| {}).await;
    ts.issue("api-caller");
    ts.register("acme", 0).await;
    let c = ts.https("api-caller", false);
    let base = ts.gateway_url();
    assert_eq!(c.get(format!("{base}/acme/v2/Customers")).send().await.unwrap().status(), 200);
    let (v2, tokens) = (ts.sim.v2_requests(), ts.sim.token_requests());

    // Go stops taking the cached token: one 401, one new token, one retry, and the caller
    // sees only the answer to the retry.
    ts.sim.invalidate_tokens();
    let r = c.get(format!("{base}/acme/v2/Customers")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    assert_eq!((ts.sim.v2_requests() - v2, ts.sim.token_requests() - tokens), (2, 1));
    let evs = &by_request(&ts)[&id];
    let actions: Vec<Action> = evs.iter().map(|e| e.record.action).collect();
    assert_eq!(actions, [Action::ApiRequested, Action::ApiRequested, Action::ApiAnswered], "the retry is on record");
    assert_ne!(evs[0].record.token_fingerprint, evs[1].record.token_fingerprint, "each names its own token");
    assert!(evs[2].record.detail.contains("retried once with a new token after a 401"), "{}", evs[2].record.detail);

    // A small body is kept, so it is sent again.
    ts.sim.invalidate_tokens();
    let (v2, tokens) = (ts.sim.v2_requests(), ts.sim.token_requests());
    let r = c
        .post(format!("{base}/acme/v2/OutgoingInvoices"))
        .json(&serde_json::json!({"CustomerNo": 10002}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!((ts.sim.v2_requests() - v2, ts.sim.token_requests() - tokens), (2, 1));
    assert_eq!(ts.sim.invoices_created(), 1, "created once");

    // A body larger than gateway.replay_body_bytes streams: Go's 401 is passed on, never
    // retried; the refused token is dropped, so the next request mints a new one.
    ts.sim.invalidate_tokens();
    let (v2, tokens) = (ts.sim.v2_requests(), ts.sim.token_requests());
    let big = vec![7u8; 200 * 1024];
    let r = c.post(format!("{base}/acme/v2/Sim/Upload")).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!((ts.sim.v2_requests() - v2, ts.sim.token_requests() - tokens), (1, 0), "not retried");
    let r = c.post(format!("{base}/acme/v2/Sim/Upload")).body(big).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let up: Value = r.json().await.unwrap();
    assert_eq!(up["Bytes"], 200 * 1024);
    assert_eq!((ts.sim.v2_requests() - v2, ts.sim.token_requests() - tokens), (2, 1));

    // Retried once, never twice: when Go refuses the new token too, its 401 is the answer.
    ts.sim.reject_all_tokens(true);
    let (v2, tokens) = (ts.sim.v2_requests(), ts.sim.token_requests());
    let r = c.get(format!("{base}/acme/v2/Customers")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!((ts.sim.v2_requests() - v2, ts.sim.token_requests() - tokens), (2, 1));
    ts.sim.reject_all_tokens(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_audit_log_locked_requests_fail_with_503_and_nothing_reaches_go() {
    let ts = TestServer::start_gateway(&policy(), |_| {}).await;
    ts.issue("api-caller");
    ts.register("acme", 0).await;
    let c = ts.https("api-caller", true);
    let url = format!("{}/acme/v2/Customers", ts.gateway_url());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    let before = (ts.sim.v2_requests(), ts.sim.invoices_created());

    let lock = common::rusqlite_open(&ts.audit_db());
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert!(started.elapsed() < Duration::from_secs(5), "fail closed in bounded time: {:?}", started.elapsed());
        let r = c
            .post(format!("{}/acme/v2/OutgoingInvoices", ts.gateway_url()))
            .json(&serde_json::json!({"CustomerNo": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
    }
    // A refusal cannot be recorded either: 503, not 403.
    let r = ts.https("token-caller", false).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!((ts.sim.v2_requests(), ts.sim.invoices_created()), before, "a request reached Go unrecorded");

    lock.execute_batch("ROLLBACK").unwrap();
    let started = Instant::now();
    loop {
        let r = c.get(&url).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "still {} after the lock was gone", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The log fails after the request reached Go and before its answer is on record: Go
    // acted, so the answer is withheld with a 502 that says so, never "retry, nothing done".
    ts.sim.set_latency(Duration::from_millis(1500));
    let post = {
        let c = c.clone();
        let url = format!("{}/acme/v2/OutgoingInvoices", ts.gateway_url());
        tokio::spawn(async move { c.post(url).json(&serde_json::json!({"CustomerNo": 2})).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = post.await.unwrap();
    lock.execute_batch("ROLLBACK").unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().get("retry-after").is_none(), "not an invitation to repeat it");
    let text = r.text().await.unwrap();
    assert!(text.contains("may have acted"), "{text}");
    assert_eq!(ts.sim.invoices_created(), before.1 + 1, "Go created the invoice once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gos_5xx_and_403_pass_through_recorded_and_only_a_quota_403_with_retry_after_pauses_everyone() {
    use pogo_vault::domain::Environment;
    let ts = TestServer::start_gateway(&policy(), |_| {}).await;
    ts.issue("api-caller");
    ts.register("acme", 0).await;
    let c = ts.https("api-caller", false);
    let url = format!("{}/acme/v2/Customers", ts.gateway_url());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    let broker = &ts.server().state.broker;

    // A 5xx from Go is Go's answer: passed on, on record with its status, no pause.
    ts.sim.fail_next_5xx(1, 503);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let id = request_id(&r);
    let answered = by_request(&ts)[&id].iter().find(|e| e.record.action == Action::ApiAnswered).unwrap().record.clone();
    assert_eq!((answered.upstream_status, answered.outcome), (Some(503), Outcome::Error));
    assert!(broker.upstream_paused_for(Environment::Demo).is_none());

    // A 403 in the gateway's shape without Retry-After: the caller's answer only.
    ts.sim.fail_next_403_quota(1, 5, false);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 403);
    assert!(broker.upstream_paused_for(Environment::Demo).is_none(), "a caller's path cannot pause everyone");

    // The quota 403 with Retry-After speaks for the subscription: everyone waits.
    ts.sim.fail_next_403_quota(1, 5, true);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(broker.upstream_paused_for(Environment::Demo).is_some(), "Go's quota pauses the shared limiter");
    let before = ts.sim.requests_seen();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429, "the gateway's own answer while paused longer than the queue wait");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(ts.sim.requests_seen(), before, "nothing reached Go during the pause");
}
