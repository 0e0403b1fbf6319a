//! Issue 13, "onboarding trust": the policy is checked before Go's one-time Finalize is
//! spent; a session is bound to the integrator's end user (subject); re-activation matches
//! only organization numbers Go itself reported, and two such tenants refuse; the CLI reads
//! the redirect URL (which carries the token) from standard input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::{policy_text, sim_key};
use common::server::TestServer;
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::onboarding_service_client::OnboardingServiceClient;
use tonic::Code;

const CALLBACK: &str = "http://127.0.0.1:9/onboarding/callback";

fn begin(prefix: &str, org: &str, subject: &str) -> pb::BeginOnboardingRequest {
    pb::BeginOnboardingRequest {
        environment: "demo".into(),
        redirect_url: CALLBACK.into(),
        organization_number: org.into(),
        tenant_id_prefix: prefix.into(),
        subject: subject.into(),
    }
}

/// Approves as the user's browser would; returns (onboarding id, status, token) from the
/// redirect back.
async fn approve(url: &str) -> (String, String, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http.get(url).send().await.unwrap();
    let back = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q = |k: &str| back.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap_or_default();
    (q("pogo_onboarding_id"), q("status"), q("token"))
}

fn complete(id: &str, token: &str, subject: &str) -> pb::CompleteOnboardingRequest {
    pb::CompleteOnboardingRequest {
        onboarding_id: id.into(),
        onboarding_token: token.into(),
        go_status: "Success".into(),
        subject: subject.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_and_the_subject_are_checked_before_gos_one_time_finalize() {
    let mut ts = TestServer::start().await;
    ts.sim.allow_redirect(Environment::Demo, CALLBACK);
    // `a-only` holds tenant-admin on a-* only.
    let mut scoped = OnboardingServiceClient::new(ts.channel("a-only").await);
    let s = scoped.begin_onboarding(begin("b-", "910000003", "u1")).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
    let s = scoped.begin_onboarding(begin("a-", "910000003", "")).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("subject"), "{}", s.message());

    let b = scoped.begin_onboarding(begin("a-", "910000003", "alice")).await.unwrap().into_inner();
    let (id, _, token) = approve(&b.authorization_url).await;
    // Another user's browser (another subject) cannot complete it; Go is not asked.
    let s = scoped.complete_onboarding(complete(&id, &token, "mallory")).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("subject"), "{}", s.message());
    assert_eq!(ts.sim.onboarding_finalizations(), 0, "a refusal never spends Go's token");

    // The grant is withdrawn before completion: refused before Finalize, session kept.
    std::fs::write(&ts.policy, policy_text("").replace("tenants = [\"a-*\"]", "tenants = [\"a-1\"]")).unwrap();
    ts.server().reload().await;
    let s = scoped.complete_onboarding(complete(&id, &token, "alice")).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
    assert_eq!(ts.sim.onboarding_finalizations(), 0, "a refusal never spends Go's token");

    // Granted again, the same session and token complete.
    std::fs::write(&ts.policy, policy_text("")).unwrap();
    ts.server().reload().await;
    let done = scoped.complete_onboarding(complete(&id, &token, "alice")).await.unwrap().into_inner();
    assert_eq!(done.tenants.len(), 1);
    assert_eq!(done.tenants[0].tenant_id, "a-910000003");
    assert_eq!(ts.sim.onboarding_finalizations(), 1);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_activation_trusts_only_numbers_go_reported_and_refuses_two() {
    let mut ts = TestServer::start().await;
    ts.sim.allow_redirect(Environment::Demo, CALLBACK);
    let mut admin = ts.tenant_client("admin").await;
    let onboarding = OnboardingServiceClient::new(ts.channel("admin").await);
    // An admin registers a tenant and types client 3's organization number on it.
    admin
        .register_client_key(pb::RegisterClientKeyRequest {
            tenant_id: "acme-910000003".into(),
            environment: "demo".into(),
            client_key: sim_key(5),
            organization_number: "910000003".into(),
            skip_validation: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let onboard = |prefix: &'static str| {
        let mut onboarding = onboarding.clone();
        async move {
            let b = onboarding.begin_onboarding(begin(prefix, "910000003", "u")).await.unwrap().into_inner();
            let (id, _, token) = approve(&b.authorization_url).await;
            onboarding.complete_onboarding(complete(&id, &token, "u")).await
        }
    };
    // Client 3 onboards under acme-: the typed number is not trusted, so the existing
    // tenant keeps its key and the client becomes a new tenant.
    let done = onboard("acme-").await.unwrap().into_inner();
    assert_eq!(done.tenants[0].tenant_id, "acme-910000003-2");
    let typed = ts.vault().tenant(&"acme-910000003".parse().unwrap()).unwrap().unwrap();
    assert_eq!(typed.key_version, 1, "a tenant matched only by a typed number never receives the key");
    // Onboarding again re-activates the tenant Go's number belongs to.
    let done = onboard("acme-").await.unwrap().into_inner();
    assert_eq!((done.tenants[0].tenant_id.as_str(), done.tenants[0].key_version), ("acme-910000003-2", 2));

    // A second tenant with the same verified number under acme- (onboarded under acme-x-).
    let done = onboard("acme-x-").await.unwrap().into_inner();
    assert_eq!(done.tenants[0].tenant_id, "acme-x-910000003");
    // The vault learns each new client's ClientId in the background after onboarding:
    // let that settle before comparing the database.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ts.vault().tenant(&"acme-x-910000003".parse().unwrap()).unwrap().unwrap().go_client_id.is_none() {
        assert!(std::time::Instant::now() < deadline, "the onboarded tenant's ClientId was never filled in");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = common::dump(&ts.dir.path().join("vault.db"));
    let finalized = ts.sim.onboarding_finalizations();
    let s = onboard("acme-").await.unwrap_err();
    assert_eq!(ts.sim.onboarding_finalizations(), finalized, "refused before Go's one-time Finalize");
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("acme-910000003-2") && s.message().contains("acme-x-910000003"), "{}", s.message());
    let after = common::dump(&ts.dir.path().join("vault.db"));
    let keys = |d: &[String]| {
        d.iter().filter(|r| r.starts_with("sealed_secrets") || r.starts_with("tenants")).cloned().collect::<Vec<_>>()
    };
    assert_eq!(keys(&after), keys(&before), "nothing stored");
    // Audited.
    let conn = common::rusqlite_open(&ts.audit_db());
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE action = 'onboarding_failed' AND detail LIKE '%all hold organization number%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboard_complete_reads_the_redirect_url_from_standard_input() {
    let mut ts = TestServer::start().await;
    ts.sim.allow_redirect(Environment::Demo, CALLBACK);
    let conn = ts.cli_args("admin");
    let conn: Vec<&str> = conn.iter().map(String::as_str).collect();
    let out = common::run_bin(
        &[
            &[
                "onboard",
                "begin",
                "--environment",
                "demo",
                "--redirect-url",
                CALLBACK,
                "--organization-number",
                "910000004",
            ][..],
            &conn[..],
        ]
        .concat(),
        "",
    );
    common::assert_ok(&out);
    let url = common::stdout(&out).lines().find(|l| l.starts_with("http")).unwrap().to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let back = http.get(&url).send().await.unwrap().headers()["location"].to_str().unwrap().to_owned();
    // The token rides only on standard input; the old argv flag is gone.
    let out = common::run_bin(&[&["onboard", "complete", "--redirect", &back][..], &conn[..]].concat(), "");
    assert!(!out.status.success());
    let out = common::run_bin(&[&["onboard", "complete"][..], &conn[..]].concat(), &format!("{back}\n"));
    common::assert_ok(&out);
    assert!(common::stdout(&out).contains("tenant 910000004"), "{}", common::stdout(&out));
    ts.stop().await;
}
