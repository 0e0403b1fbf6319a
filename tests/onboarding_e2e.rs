//! Getting keys in, end to end: an HTTP client plays the browser through the example
//! integrator web app (examples/integrator_web.rs, compiled in here), the simulator's Go
//! approval page and back; the vault is the real server over mTLS.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;

#[path = "../examples/integrator_web.rs"]
mod integrator_web;

use common::browser::Browser;
use common::fixture::{TRUST, sim_key};
use common::server::TestServer;
use pogo_vault::audit::{Action, AuditFilter, Outcome};
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;

async fn start_app(ts: &TestServer) -> String {
    let cfg = integrator_web::AppConfig {
        vault_endpoint: ts.endpoint.clone(),
        tls: ts.files("admin"),
        listen: "127.0.0.1:0".parse().unwrap(),
        environment: "demo".into(),
        tenant_prefix: "web-".into(),
        gateway: None,
    };
    let (addr, _task) = integrator_web::start(cfg).await.unwrap();
    let app = format!("http://{addr}");
    ts.sim.allow_redirect(Environment::Demo, &format!("{app}/callback"));
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_through_the_web_app_creates_tenants_without_showing_a_key() {
    let mut ts = TestServer::start().await;
    let app = start_app(&ts).await;
    ts.sim.set_user_clients(Environment::Demo, vec![sim_key(0), sim_key(1)]);
    let mut browser = Browser::new();

    let (_, _, home) = browser.get(&format!("{app}/")).await;
    assert!(home.contains("Connect PowerOffice Go"));

    // Two clients activated at once: one tenant each, named prefix + organization number.
    let (callback, page) = browser.connect(&app).await;
    assert!(page.contains("web-910000000") && page.contains("web-910000001"), "{page}");
    let mut tokens = ts.token_client("token-caller").await;
    for t in ["web-910000000", "web-910000001"] {
        let r =
            tokens.get_access_token(pb::GetAccessTokenRequest { tenant_id: t.into(), min_validity_seconds: 0 }).await;
        assert!(r.is_ok(), "{t}: {r:?}");
    }
    let first_keys: Vec<String> =
        ["910000000", "910000001"].iter().map(|o| ts.sim.current_key_of(Environment::Demo, o).unwrap()).collect();

    // Replaying the callback completes nothing.
    let (_, _, replay) = browser.get(&callback).await;
    assert!(replay.contains("Not connected") && replay.contains("at most once"), "{replay}");

    // Re-onboarding a known client rotates its key: a new version, the old one destroyed.
    let (_, page) = browser.connect(&app).await;
    assert!(page.contains("web-910000000"), "{page}");
    let t = ts.vault().tenant(&"web-910000000".parse().unwrap()).unwrap().unwrap();
    assert_eq!(t.key_version, 2);
    let conn = rusqlite::Connection::open(ts.dir.path().join("vault.db")).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM sealed_secrets WHERE owner = 'web-910000000'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions, [2], "the old key version is destroyed");
    tokens
        .get_access_token(pb::GetAccessTokenRequest { tenant_id: "web-910000000".into(), min_validity_seconds: 600 })
        .await
        .unwrap();

    // Each refusal from Go is recorded and reported.
    for status in ["Canceled", "NoClientAccess", "IntegrationBlocked"] {
        ts.sim.next_approval_status(status);
        let (_, page) = browser.connect(&app).await;
        assert!(page.contains("Not connected") && page.contains(status), "{status}: {page}");
    }
    // An expired onboarding token completes nothing.
    let csrf = browser.csrf(&app).await;
    let (_, to_go, _) = browser.post(&format!("{app}/connect"), &[("csrf", &csrf)]).await;
    let (_, back, _) = browser.get(&to_go.unwrap()).await;
    ts.sim.expire_onboarding_tokens();
    let (_, _, page) = browser.get(&back.unwrap()).await;
    assert!(page.contains("Not connected"), "{page}");

    // No page, redirect or header the browser saw carries a client key.
    let mut keys: Vec<String> = (0..8).map(sim_key).collect();
    keys.extend(first_keys);
    for o in ["910000000", "910000001"] {
        keys.push(ts.sim.current_key_of(Environment::Demo, o).unwrap());
    }
    for k in &keys {
        common::assert_no_leak("pages the browser received", &browser.pages, k);
    }

    // Every step is in the audit log with the caller that drove it.
    let admin = format!("spiffe://{TRUST}/service/admin");
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    let events = pogo_vault::audit::list(&conn, &AuditFilter::default(), None, 10_000).unwrap();
    let count = |a: Action, o: Outcome| {
        events.iter().filter(|e| e.record.action == a && e.record.outcome == o && e.record.caller == admin).count()
    };
    assert_eq!(count(Action::OnboardingBegun, Outcome::Ok), 6);
    assert_eq!(count(Action::OnboardingCompleted, Outcome::Ok), 2);
    assert_eq!(count(Action::KeyRegistered, Outcome::Ok), 2);
    assert_eq!(count(Action::KeyReactivated, Outcome::Ok), 2);
    assert!(count(Action::OnboardingFailed, Outcome::Denied) + count(Action::OnboardingFailed, Outcome::Error) >= 5);
    for status in ["Canceled", "NoClientAccess", "IntegrationBlocked"] {
        assert!(
            events.iter().any(|e| e.record.action == Action::OnboardingFailed && e.record.detail.contains(status)),
            "{status}"
        );
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pasted_key_path_validates_and_shows_only_the_hint() {
    let mut ts = TestServer::start().await;
    let app = start_app(&ts).await;
    let mut browser = Browser::new();
    let csrf: &'static str = Box::leak(browser.csrf(&app).await.into_boxed_str());
    let form = |t: &'static str, k: String| {
        vec![("csrf", csrf), ("tenant_id", t), ("client_key", Box::leak(k.into_boxed_str()) as &str)]
    };

    // A mistyped key: refused with words a customer understands, nothing stored.
    let typo = format!("{}x", &sim_key(5)[..35]);
    let (_, _, page) = browser.post(&format!("{app}/settings/key"), &form("manual-1", typo.clone())).await;
    assert!(page.contains("Not saved") && page.contains("copy the whole key again"), "{page}");
    // A well-formed key Go does not know: refused after asking Go.
    let unknown = "0badc0de-0000-4000-8000-00000000beef".to_owned();
    let (_, _, page) = browser.post(&format!("{app}/settings/key"), &form("manual-1", unknown.clone())).await;
    assert!(page.contains("Not saved") && page.contains("does not accept this client key"), "{page}");
    assert!(ts.vault().tenant(&"manual-1".parse().unwrap()).unwrap().is_none());

    // The right key: validated against Go, stored, shown as a hint only.
    let (_, _, page) = browser.post(&format!("{app}/settings/key"), &form("manual-1", sim_key(5))).await;
    assert!(page.contains("Saved") && page.contains(&format!("…{}", &sim_key(5)[32..])), "{page}");
    let (_, _, home) = browser.get(&format!("{app}/")).await;
    assert!(home.contains("manual-1"));
    for k in [sim_key(5), typo, unknown] {
        common::assert_no_leak("pages", &browser.pages, &k);
    }
    ts.stop().await;
}
