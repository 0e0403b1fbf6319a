//! The token broker against the simulator as a real HTTP server on loopback, with a real
//! SQLite vault and a manual clock: no test waits on wall time to pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::broker::{audit_of, go, start_sim, vault_of};
use common::fixture::client_key;
use pogo_vault::crypto::{ClientKey, SubscriptionKey};
use pogo_vault::domain::{Environment, TenantId, TenantStatus};
use pogo_vault::sim::{self, Sim, SimClient};
use pogo_vault::tokens::{Broker, BrokerConfig, BrokerError, Clock, ManualClock, SystemClock, TokenSource};
use pogo_vault::vault::{IntegrationInput, UnauditedFixture, Vault};

struct Harness {
    sim: Sim,
    vault: Arc<Vault>,
    broker: Broker,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn tid(i: usize) -> TenantId {
    format!("t{i}").parse().unwrap()
}

/// A vault with `n` demo tenants t0..t{n-1} holding the bulk keys, all known to the
/// simulator. With Go's ClientId known, no background ClientIntegrationInformation call
/// competes with the requests these tests count.
async fn setup(sim: &Sim, n: usize) -> (Arc<Vault>, tempfile::TempDir) {
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    vault_of(sim, &ids, true)
}

async fn harness(n: usize, cfg: BrokerConfig) -> Harness {
    let sim = start_sim().await;
    let (vault, dir) = setup(&sim, n).await;
    let clock = ManualClock::new();
    let broker = Broker::new(vault.clone(), go(Duration::from_secs(5)), cfg, clock.clone(), audit_of(&vault));
    Harness { sim, vault, broker, clock, _dir: dir }
}

/// Runs `fut`, advancing the manual clock while it waits (for backoff sleeps).
async fn drive<T>(clock: &ManualClock, step: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return r,
            _ = tokio::time::sleep(Duration::from_millis(2)) => clock.advance(step),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_cold_requests_make_one_upstream_request() {
    let h = harness(1, BrokerConfig::default()).await;
    let t = tid(0);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let b = h.broker.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move { b.get_token(&t, None).await }));
    }
    let mut fingerprints = std::collections::HashSet::new();
    let mut leaders = 0;
    for task in tasks {
        let lease = task.await.unwrap().unwrap();
        fingerprints.insert(lease.token.fingerprint.to_string());
        if matches!(lease.source, TokenSource::Upstream { .. }) {
            leaders += 1;
        }
    }
    assert_eq!(h.sim.token_requests(), 1, "exactly one upstream request");
    assert_eq!(fingerprints.len(), 1, "everyone got the same token");
    assert_eq!(leaders, 1);
}

#[tokio::test]
async fn cached_token_is_reused_until_min_validity_forces_a_refresh() {
    let h = harness(1, BrokerConfig::default()).await;
    let t = tid(0);
    let first = h.broker.get_token(&t, None).await.unwrap();
    assert_eq!(first.source, TokenSource::Upstream { upstream_status: 200 });
    assert_eq!(first.token.lifetime, Duration::from_secs(1200));
    assert_eq!(first.token.api_base_url, format!("{}/v2", h.sim.base_url(Environment::Demo)));

    h.clock.advance(Duration::from_secs(1100)); // 100 s left
    let again = h.broker.get_token(&t, None).await.unwrap(); // default min_validity 60 s
    assert_eq!(again.source, TokenSource::Cache);
    assert_eq!(again.token.fingerprint, first.token.fingerprint);
    assert_eq!(h.sim.token_requests(), 1);

    // A caller that needs 120 s forces a new token.
    let fresh = h.broker.get_token(&t, Some(Duration::from_secs(120))).await.unwrap();
    assert!(matches!(fresh.source, TokenSource::Upstream { .. }));
    assert_ne!(fresh.token.fingerprint, first.token.fingerprint);
    assert_eq!(h.sim.token_requests(), 2);

    // A min_validity beyond any token's lifetime is capped, not unsatisfiable.
    let capped = h.broker.get_token(&t, Some(Duration::from_secs(100_000))).await.unwrap();
    assert_eq!(capped.source, TokenSource::Cache);
}

#[tokio::test]
async fn an_expired_token_is_never_handed_out() {
    let h = harness(1, BrokerConfig { retry_attempts: 1, ..BrokerConfig::default() }).await;
    let t = tid(0);
    h.broker.get_token(&t, None).await.unwrap();
    h.clock.advance(Duration::from_secs(1201));
    h.sim.fail_next_5xx(1, 503);
    let err = h.broker.get_token(&t, Some(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("retry after"), "{err}");
    // While backing off, still no expired token, and no upstream call.
    let before = h.sim.token_requests();
    let err = h.broker.get_token(&t, Some(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err}");
    assert_eq!(h.sim.token_requests(), before);
}

#[tokio::test]
async fn refresh_ahead_renews_busy_tenants_and_leaves_idle_ones() {
    let h = harness(2, BrokerConfig::default()).await;
    let (busy, idle) = (tid(0), tid(1));
    let b0 = h.broker.get_token(&busy, None).await.unwrap();
    h.broker.get_token(&idle, None).await.unwrap();
    assert_eq!(h.sim.token_requests(), 2);

    // Nothing is due early on.
    h.clock.advance(Duration::from_secs(600));
    assert_eq!(h.broker.refresh_due().await, 0);
    h.broker.get_token(&busy, None).await.unwrap(); // the busy tenant is used at 600 s

    // At 950 s less than a quarter (plus jitter) of 1200 s is left for both; only the busy
    // one was used within the 600 s window.
    h.clock.advance(Duration::from_secs(350));
    assert_eq!(h.broker.refresh_due().await, 1);
    assert_eq!(h.sim.token_requests(), 3);
    assert_eq!(h.sim.token_requests_for(&client_key(0)), 2);
    assert_eq!(h.sim.token_requests_for(&client_key(1)), 1);
    let b1 = h.broker.get_token(&busy, None).await.unwrap();
    assert_eq!(b1.source, TokenSource::Cache);
    assert_ne!(b1.token.fingerprint, b0.token.fingerprint, "renewed before expiry");
}

#[tokio::test]
async fn retry_after_pauses_upstream_while_valid_tokens_keep_being_served() {
    let cfg = BrokerConfig { limiter_max_wait: Duration::from_secs(1), ..BrokerConfig::default() };
    let h = harness(2, cfg).await;
    let (a, b) = (tid(0), tid(1));
    h.broker.get_token(&a, None).await.unwrap();
    h.clock.advance(Duration::from_secs(1170)); // 30 s left: below the 60 s default
    h.sim.fail_next_429(1, 2);
    let stale = h.broker.get_token(&a, None).await.unwrap();
    assert_eq!(stale.source, TokenSource::StaleDuringOutage, "the still-valid token is served");
    assert_eq!(h.sim.token_requests(), 2);

    // For 2 s: no upstream request at all, for any tenant under that subscription key.
    for _ in 0..5 {
        assert_eq!(h.broker.get_token(&a, None).await.unwrap().source, TokenSource::StaleDuringOutage);
        let err = h.broker.get_token(&b, None).await.unwrap_err();
        assert!(matches!(err, BrokerError::RateLimited { .. }), "{err}");
        assert!(err.to_string().contains("retry after 2 s"), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    }
    // 1.1 s of the pause left: more than the 1 s a caller may wait, so still refused.
    h.clock.advance(Duration::from_millis(900));
    assert!(matches!(h.broker.get_token(&b, None).await, Err(BrokerError::RateLimited { .. })));
    assert_eq!(h.sim.token_requests(), 2, "no upstream request during Retry-After");

    h.clock.advance(Duration::from_millis(1100));
    assert!(matches!(h.broker.get_token(&b, None).await.unwrap().source, TokenSource::Upstream { .. }));
    assert!(matches!(h.broker.get_token(&a, None).await.unwrap().source, TokenSource::Upstream { .. }));
    assert_eq!(h.sim.token_requests(), 4);
}

#[tokio::test]
async fn invalid_client_marks_the_tenant_key_rejected_and_stops_upstream_calls() {
    let h = harness(1, BrokerConfig::default()).await;
    let t = tid(0);
    h.sim.revoke_client(&client_key(0));
    let err = h.broker.get_token(&t, None).await.unwrap_err();
    assert_eq!(err, BrokerError::KeyRejected(t.clone()));
    assert!(err.to_string().contains("re-activate"), "{err}");
    assert_eq!(h.vault.tenant(&t).unwrap().unwrap().status, TenantStatus::KeyRejected, "durably marked");
    for _ in 0..10 {
        assert_eq!(h.broker.get_token(&t, None).await.unwrap_err(), BrokerError::KeyRejected(t.clone()));
    }
    assert_eq!(h.sim.token_requests(), 1);

    // A restarted broker reads the status from the store: still no upstream call.
    let restarted = Broker::new(
        h.vault.clone(),
        go(Duration::from_secs(5)),
        BrokerConfig::default(),
        h.clock.clone(),
        audit_of(&h.vault),
    );
    assert_eq!(restarted.get_token(&t, None).await.unwrap_err(), BrokerError::KeyRejected(t.clone()));
    assert_eq!(h.sim.token_requests(), 1);

    // A new key (the customer re-activated) makes the tenant active again.
    let new_key = "feedface-0000-4000-8000-000000000001";
    h.sim.add_client(
        Environment::Demo,
        new_key,
        SimClient { client_id: "9".into(), name: "n".into(), organization_number: "999999999".into() },
    );
    h.vault.rotate_key(&t, &ClientKey::parse(new_key).unwrap(), None, &UnauditedFixture).unwrap();
    h.broker.forget(&t);
    assert!(h.broker.get_token(&t, None).await.is_ok());
    assert_eq!(h.vault.tenant(&t).unwrap().unwrap().status, TenantStatus::Active);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_succeed() {
    let h = harness(1, BrokerConfig::default()).await;
    h.sim.fail_next_5xx(2, 503);
    let lease = drive(&h.clock, Duration::from_millis(100), h.broker.get_token(&tid(0), None)).await.unwrap();
    assert!(matches!(lease.source, TokenSource::Upstream { .. }));
    assert_eq!(h.sim.token_requests(), 3, "two failures, then success");
}

#[tokio::test]
async fn rejected_subscription_key_is_reported_as_an_integration_problem() {
    let h = harness(1, BrokerConfig::default()).await;
    h.vault
        .set_integration(
            &IntegrationInput {
                environment: Environment::Demo,
                application_key: sim::DEFAULT_APPLICATION_KEY.into(),
                base_url: h.sim.base_url(Environment::Demo),
                subscription_key: SubscriptionKey::parse("ffffffffffffffffffffffffffffffff").unwrap(),
                allow_custom_base_url: true,
            },
            &UnauditedFixture,
        )
        .unwrap();
    let err = h.broker.get_token(&tid(0), None).await.unwrap_err();
    assert!(matches!(err, BrokerError::SubscriptionKeyRejected { env: Environment::Demo, .. }), "{err}");
    assert!(err.to_string().contains("subscription key") && err.to_string().contains("operator"), "{err}");
    // It is not the tenant's fault: the tenant stays active.
    assert_eq!(h.vault.tenant(&tid(0)).unwrap().unwrap().status, TenantStatus::Active);
}

#[tokio::test]
async fn a_hanging_upstream_is_cut_at_the_configured_timeout() {
    let sim = start_sim().await;
    let (vault, _dir) = setup(&sim, 1).await;
    let cfg = BrokerConfig { retry_attempts: 1, ..BrokerConfig::default() };
    let audit = audit_of(&vault);
    let broker = Broker::new(vault, go(Duration::from_millis(300)), cfg, ManualClock::new(), audit);
    sim.hang_next(1);
    let started = std::time::Instant::now();
    let err = broker.get_token(&tid(0), None).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("did not answer in time"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "cut by the timeout, not left hanging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_holds_with_five_thousand_cold_tenants() {
    let sim = start_sim().await;
    let (vault, _dir) = setup(&sim, 5000).await;
    let rate = 5.0;
    let cfg = BrokerConfig {
        upstream_rate_per_second: rate,
        upstream_burst: 1,
        limiter_max_wait: Duration::from_secs(1),
        ..BrokerConfig::default()
    };
    let audit = audit_of(&vault);
    let broker = Broker::new(vault, go(Duration::from_secs(5)), cfg, Arc::new(SystemClock), audit);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..5000 {
        let b = broker.clone();
        tasks.push(tokio::spawn(async move { b.get_token(&tid(i), None).await }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e @ BrokerError::RateLimited { .. }) => {
                assert!(e.to_string().contains("rate limited") && e.to_string().contains("retry after"), "{e}");
                limited += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let max = sim.max_token_requests_in_any_second();
    // GCRA with burst 1 sends requests 1/rate apart, so a rolling second holds at most
    // rate + 1 sends (both ends of a closed window); one more is allowed for loopback and
    // scheduling jitter between sending and the simulator's arrival stamp on a loaded machine.
    assert!(max <= rate as usize + 2, "the simulator saw {max} requests in one second");
    // Jitter cannot inflate the total: over the whole run no more than rate × time + burst.
    let seen = sim.token_requests() as f64;
    assert!(seen <= rate * elapsed + 1.0, "{seen} requests in {elapsed:.2} s");
    assert_eq!(ok + limited, 5000, "ok {ok}, limited {limited}");
    assert!(ok >= 2 && limited >= 4900, "ok {ok}, limited {limited}");
    assert_eq!(sim.token_requests() as usize, ok);
}

#[tokio::test]
async fn unknown_tenant_is_not_found_and_leaves_no_state() {
    let h = harness(1, BrokerConfig::default()).await;
    let ghost: TenantId = "ghost".parse().unwrap();
    assert_eq!(h.broker.get_token(&ghost, None).await.unwrap_err(), BrokerError::NotFound(ghost.clone()));
    assert_eq!(h.broker.last_served_ms(&ghost), None);
    assert_eq!(h.sim.token_requests(), 0);
    h.vault.set_status(&tid(0), TenantStatus::Disabled, &UnauditedFixture).unwrap();
    assert_eq!(h.broker.get_token(&tid(0), None).await.unwrap_err(), BrokerError::Disabled(tid(0)));
}

#[tokio::test]
async fn last_token_times_are_flushed_to_the_store() {
    let h = harness(2, BrokerConfig::default()).await;
    h.broker.get_token(&tid(0), None).await.unwrap();
    assert_eq!(h.broker.flush_last_served().await.unwrap(), 1);
    assert_eq!(h.broker.flush_last_served().await.unwrap(), 0, "only what changed is written");
    let rec = h.vault.tenant(&tid(0)).unwrap().unwrap();
    assert_eq!(rec.last_token_at, h.broker.last_served_ms(&tid(0)));
    assert!(h.vault.tenant(&tid(1)).unwrap().unwrap().last_token_at.is_none());
    let _ = h.clock.system_now();
}
