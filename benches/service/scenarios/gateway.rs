//! The API gateway's overhead: `GET /v2/Customers?pageSize=1` through the gateway (HTTPS with
//! mutual TLS over HTTP/1.1 keep-alive; the policy, a limiter slot, `api_requested` and
//! `api_answered` durable, the answer streamed back) against the same call straight to the
//! simulator (plain HTTP keep-alive, the same token and subscription key), one after the
//! other, paced at 6 a second: each pair meets the machine in the same state.

use std::time::{Duration, Instant};

use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::server;
use pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY;

use crate::fixture::token_request;
use crate::harness::{Bench, issue_cert};
use crate::report::{Row, pct};
use crate::settings::Settings;

/// Pairs a second: below the gateway's default limiter rate (8/s with burst 4), so the
/// gateway rows measure the gateway, not a queue.
const PAIRS_PER_SEC: f64 = 6.0;

pub async fn phase_gateway(s: &Settings, b: &Bench, rows: &mut Vec<Row>) {
    let server = server::start(b.options_with(None, "\n[gateway]\nlisten = '127.0.0.1:0'\n")).await.unwrap();
    let gateway = server.gateway_addr.unwrap();
    let files = issue_cert(b, "api-caller", "api-caller");
    let tls = pogo_vault::tls::https_client_config(&files, &[b"http/1.1"]).unwrap();
    let via = reqwest::Client::builder().tls_backend_preconfigured(tls).resolve("localhost", gateway).build().unwrap();
    // The direct caller holds what the gateway spares a service: the token and the key.
    let endpoint = format!("https://{}", server.addr);
    let mut token = TokenServiceClient::new(b.channels(&endpoint, "token-caller", 1).await.remove(0));
    let access = token.get_access_token(token_request(&b.first)).await.unwrap().into_inner().access_token;
    let plain =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let direct = reqwest::Client::builder().tls_backend_preconfigured(plain).build().unwrap();
    let via_url = format!("https://localhost:{}/{}/v2/Customers?pageSize=1", gateway.port(), b.first);
    let direct_url = format!("{}/v2/Customers?pageSize=1", b.sim.base_url(pogo_vault::domain::Environment::Demo));
    let call_via = || async {
        let t = Instant::now();
        let r = via.get(&via_url).send().await.unwrap();
        assert_eq!(r.status(), 200, "through the gateway");
        r.bytes().await.unwrap();
        t.elapsed()
    };
    let call_direct = || async {
        let t = Instant::now();
        let r = direct
            .get(&direct_url)
            .bearer_auth(&access)
            .header("ocp-apim-subscription-key", DEFAULT_DEMO_SUBSCRIPTION_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "straight to the simulator");
        r.bytes().await.unwrap();
        t.elapsed()
    };
    for _ in 0..3 {
        call_via().await;
        call_direct().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v2_before = b.sim.v2_requests();
    let (mut lat_via, mut lat_direct) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let tick = Duration::from_secs_f64(1.0 / PAIRS_PER_SEC);
    for i in 0..s.gateway_requests {
        lat_via.push(call_via().await.as_micros() as u32);
        lat_direct.push(call_direct().await.as_micros() as u32);
        let next = tick * (i as u32 + 1);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert_eq!(b.sim.v2_requests() - v2_before, 2 * s.gateway_requests as u64, "every call reached the simulator once");
    lat_via.sort_unstable();
    lat_direct.sort_unstable();
    let (p50_via, p50_direct) = (pct(&lat_via, 0.5), pct(&lat_direct, 0.5));
    let scenario = format!("gateway: GET Customers, {PAIRS_PER_SEC}/s");
    let mut via_row = Row::new(scenario.clone(), "gateway");
    via_row.requests = lat_via.len() as u64;
    via_row.p50 = p50_via;
    via_row.p99 = pct(&lat_via, 0.99);
    via_row.p999 = pct(&lat_via, 0.999);
    if let (Some(g), Some(d)) = (p50_via, p50_direct) {
        via_row.ratio = format!("gateway/direct p50 {:.2}x (+{:.2} ms)", g / d, g - d);
    }
    via_row.notes = "HTTPS mTLS HTTP/1.1; policy, limiter slot, api_requested + api_answered durable".into();
    let mut direct_row = Row::new(scenario, "direct");
    direct_row.requests = lat_direct.len() as u64;
    direct_row.p50 = p50_direct;
    direct_row.p99 = pct(&lat_direct, 0.99);
    direct_row.p999 = pct(&lat_direct, 0.999);
    direct_row.notes = "plain HTTP to the simulator with the token and subscription key".into();
    rows.push(via_row);
    rows.push(direct_row);
    server.shutdown().await.unwrap();
}
