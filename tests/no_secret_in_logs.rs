//! Runs the broker through success and every failure class with all tracing output
//! captured at TRACE level (our crate and every dependency: reqwest, hyper, rustls), then
//! scans the captured log, every error's Display and Debug for any secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fixture;
use pogo_vault::crypto::{ClientKey, SubscriptionKey};
use pogo_vault::domain::{Environment, TenantId};
use pogo_vault::sim::{self, SimClient};
use pogo_vault::tokens::{Broker, BrokerConfig, ManualClock};
use pogo_vault::vault::{IntegrationInput, NewTenant, UnauditedFixture};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const KEYS: [&str; 3] = [
    "a1b2c3d4-0000-4000-8000-00000000000a",
    "a1b2c3d4-0000-4000-8000-00000000000b",
    "a1b2c3d4-0000-4000-8000-00000000000c",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_or_error_strings() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let sim = fixture::start_sim(1000).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(fixture::init_vault(&dir.path().join("v.db"), &dir.path().join("k"), &sim));
    for (i, k) in KEYS.iter().enumerate() {
        // Go's ClientId known: no background ClientIntegrationInformation call takes the
        // faults meant for the token requests below.
        let mut new = NewTenant::new(format!("t{i}").parse().unwrap(), Environment::Demo);
        new.go_client_id = Some(format!("{i}"));
        vault.add_tenant(&new, &ClientKey::parse(k).unwrap(), &UnauditedFixture).unwrap();
        sim.add_client(
            Environment::Demo,
            k,
            SimClient { client_id: format!("{i}"), name: format!("c{i}"), organization_number: "123456789".into() },
        );
    }
    let go = common::broker::go(Duration::from_millis(400));
    let clock = ManualClock::new();
    let cfg = BrokerConfig { retry_attempts: 1, limiter_max_wait: Duration::ZERO, ..BrokerConfig::default() };
    let audit = pogo_vault::audit::AuditLog::open(
        &dir.path().join("a.db"),
        vault.audit_signing_key().unwrap(),
        pogo_vault::audit::AuditConfig::default(),
    )
    .unwrap();
    let broker = Broker::new(vault.clone(), go.clone(), cfg, clock.clone(), audit);
    let t = |i: usize| -> TenantId { format!("t{i}").parse().unwrap() };

    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    fn record(
        tokens: &mut Vec<String>,
        errors: &mut Vec<String>,
        r: Result<pogo_vault::tokens::TokenLease, pogo_vault::tokens::BrokerError>,
    ) {
        match r {
            Ok(l) => tokens.push(l.token.access_token.expose_secret().to_owned()),
            Err(e) => errors.push(format!("{e} {e:?}")),
        }
    }

    record(&mut tokens, &mut errors, broker.get_token(&t(0), None).await); // success
    record(&mut tokens, &mut errors, broker.get_token(&t(0), None).await); // cache
    let info = go
        .client_integration_information(
            &sim.base_url(Environment::Demo),
            &pogo_vault::crypto::AccessToken::new(tokens[0].clone()),
            &SubscriptionKey::parse(sim::DEFAULT_DEMO_SUBSCRIPTION_KEY).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(info.client_name.as_deref(), Some("c0"));
    sim.fail_next_5xx(1, 502);
    record(&mut tokens, &mut errors, broker.get_token(&t(1), None).await); // transient
    sim.hang_next(1);
    clock.advance(Duration::from_secs(60));
    record(&mut tokens, &mut errors, broker.get_token(&t(2), None).await); // timeout
    clock.advance(Duration::from_secs(60));
    sim.fail_next_429(1, 1);
    record(&mut tokens, &mut errors, broker.get_token(&t(2), None).await); // 429
    clock.advance(Duration::from_secs(5));
    sim.revoke_client(KEYS[1]);
    record(&mut tokens, &mut errors, broker.get_token(&t(1), None).await); // key rejected
    vault
        .set_integration(
            &IntegrationInput {
                environment: Environment::Demo,
                application_key: sim::DEFAULT_APPLICATION_KEY.into(),
                base_url: sim.base_url(Environment::Demo),
                subscription_key: SubscriptionKey::parse("0123456789abcdef0123456789abcdef").unwrap(),
                allow_custom_base_url: true,
            },
            &UnauditedFixture,
        )
        .unwrap();
    broker.forget_integration(Environment::Demo);
    record(&mut tokens, &mut errors, broker.get_token(&t(2), None).await); // subscription key rejected
    // The subscription's other key: the vault switches to it when Go calls the active one
    // invalid (the switch is logged and recorded), then Go's quota runs out.
    let secondary = SubscriptionKey::parse(sim::DEFAULT_DEMO_SECONDARY_SUBSCRIPTION_KEY).unwrap();
    vault.set_secondary_subscription_key(Environment::Demo, &secondary, &UnauditedFixture).unwrap();
    broker.forget_integration(Environment::Demo);
    clock.advance(Duration::from_secs(31));
    record(&mut tokens, &mut errors, broker.get_token(&t(2), None).await); // switched to the secondary
    sim.fail_next_403_quota(1, 20, true);
    clock.advance(Duration::from_secs(1200));
    record(&mut tokens, &mut errors, broker.get_token(&t(0), None).await); // quota 403
    sim.shutdown().await;

    assert!(!tokens.is_empty(), "at least one token was minted");
    assert!(errors.len() >= 5, "failure paths ran: {errors:?}");
    assert!(errors.iter().any(|e| e.contains("quota")), "the quota path ran: {errors:?}");
    let log = capture.0.lock().unwrap().clone();
    assert!(log.len() > 1000, "the capture works ({} bytes)", log.len());
    assert!(common::contains(&log, b"switched to the other key"), "the switch ran");
    assert!(common::contains(&log, b"t1"), "tenant ids do appear in the log");

    let mut secrets: Vec<String> = KEYS.iter().map(|s| s.to_string()).collect();
    secrets.push(sim::DEFAULT_DEMO_SUBSCRIPTION_KEY.into());
    secrets.push("0123456789abcdef0123456789abcdef".into());
    secrets.push(sim::DEFAULT_DEMO_SECONDARY_SUBSCRIPTION_KEY.into());
    secrets.extend(tokens.iter().cloned());
    for s in &secrets {
        common::assert_no_leak("the tracing log", &log, s);
        for e in &errors {
            common::assert_no_leak(&format!("error {e:?}"), e.as_bytes(), s);
        }
    }
}
