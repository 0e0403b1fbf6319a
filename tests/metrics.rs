//! The Prometheus endpoint after a scripted sequence of requests: the counters moved as they
//! should, and the scrape holds no secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::sim_key;
use common::server::TestServer;
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::UnauditedFixture;

fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_a_scripted_sequence_and_hold_no_secret() {
    let mut ts = TestServer::start().await;
    let metrics = format!("http://{}/metrics", ts.server().metrics_addr.unwrap());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let scrape = || async { http.get(&metrics).send().await.unwrap().text().await.unwrap() };
    let before = scrape().await;
    assert_eq!(value(&before, "pogo_vault_tokens_minted_total{source=\"upstream\"}"), 0.0);

    let mut admin = ts.tenant_client("admin").await;
    let reg = pb::RegisterClientKeyRequest {
        tenant_id: "acme".into(),
        environment: "demo".into(),
        client_key: sim_key(0),
        ..Default::default()
    };
    admin.register_client_key(reg).await.unwrap();
    admin.disable_tenant(pb::DisableTenantRequest { tenant_id: "acme".into() }).await.unwrap();
    let reg = pb::RegisterClientKeyRequest {
        tenant_id: "beta".into(),
        environment: "demo".into(),
        client_key: sim_key(1),
        ..Default::default()
    };
    admin.register_client_key(reg).await.unwrap();
    let mut tokens = ts.token_client("token-caller").await;
    let get = |t: &str| pb::GetAccessTokenRequest { tenant_id: t.into(), min_validity_seconds: 0 };
    let tok = tokens.get_access_token(get("beta")).await.unwrap().into_inner();
    tokens.get_access_token(get("beta")).await.unwrap();
    tokens.get_access_token(get("beta")).await.unwrap();
    assert_eq!(tokens.get_access_token(get("ghost")).await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(tokens.get_access_token(get("acme")).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    assert_eq!(tokens.get_access_token(get("Bad Id")).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let after = scrape().await;
    assert_eq!(value(&after, "pogo_vault_tokens_minted_total{source=\"upstream\"}"), 1.0);
    assert_eq!(value(&after, "pogo_vault_tokens_minted_total{source=\"cache\"}"), 2.0);
    assert_eq!(value(&after, "pogo_vault_tokens_denied_total{reason=\"not_found\"}"), 1.0);
    assert_eq!(value(&after, "pogo_vault_tokens_denied_total{reason=\"failed_precondition\"}"), 1.0);
    assert_eq!(value(&after, "pogo_vault_tokens_denied_total{reason=\"invalid_argument\"}"), 1.0);
    assert_eq!(value(&after, "pogo_vault_cache_hits_total"), 2.0);
    assert_eq!(value(&after, "pogo_vault_upstream_requests_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(value(&after, "pogo_vault_upstream_request_seconds_count"), 1.0);
    assert_eq!(value(&after, "pogo_vault_token_request_seconds_count"), 6.0);
    assert_eq!(value(&after, "pogo_vault_tenants{status=\"ACTIVE\"}"), 1.0);
    assert_eq!(value(&after, "pogo_vault_tenants{status=\"DISABLED\"}"), 1.0);
    assert!(value(&after, "pogo_vault_audit_records_total") >= 9.0);
    assert_eq!(value(&after, "pogo_vault_audit_healthy"), 1.0);
    assert_eq!(value(&after, "pogo_vault_audit_commit_failures_total"), 0.0);
    // The background tenant index catches up with the log (bounded wait, no timing asserted).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lag = value(&scrape().await, "pogo_vault_audit_tenant_index_lag_events");
        if lag == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "tenant index lag stays at {lag}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(after.contains("pogo_vault_build_info{version=\""));
    assert!(!after.contains("tenant=") && !after.contains("acme") && !after.contains("beta"), "no per-tenant labels");

    for s in [sim_key(0), sim_key(1), pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY.to_owned(), tok.access_token] {
        common::assert_no_leak("the metrics scrape", after.as_bytes(), &s);
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_reports_a_running_vault() {
    let mut ts = TestServer::start().await;
    ts.vault()
        .add_tenant(
            &pogo_vault::vault::NewTenant::new("acme".parse().unwrap(), pogo_vault::domain::Environment::Demo),
            &common::fixture::key(0),
            &UnauditedFixture,
        )
        .unwrap();
    let run = |who: &str| {
        let conn = ts.cli_args(who);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_pogo-vault")).arg("status").args(conn).output().unwrap()
        })
    };
    let out = run("auditor").await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("health:          SERVING"), "{text}");
    assert!(text.contains("ACTIVE 1"), "{text}");
    assert!(text.contains(&format!("master key id:   {}", ts.vault().kek_id())), "{text}");
    assert!(text.contains("last checkpoint: sequence"), "{text}");
    // Not for callers without the audit role.
    let out = run("token-caller").await.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    ts.stop().await;
}
