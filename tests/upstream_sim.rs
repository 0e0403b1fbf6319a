//! The Go client against the simulator over real loopback HTTP: the request on the wire is
//! exactly what go-api.md describes, every error class comes out as the right
//! `UpstreamError`, and no error ever shows a key or a token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::fixture::loopback;
use common::fixture::own_keys::{self, APP_KEY, BAD_SUB, DEMO_KEY, DEMO_SUB, PROD_KEY, PROD_SUB};
use pogo_vault::crypto::{AccessToken, ClientKey, SubscriptionKey};
use pogo_vault::domain::Environment;
use pogo_vault::sim::{self, Sim, SimClient, SimConfig};
use pogo_vault::upstream::{GoClient, SubscriptionKeyProblem, TokenGrant, UpstreamConfig, UpstreamError};

const UNKNOWN_KEY: &str = "deadbeef-0000-4000-8000-00000000f00d";

struct Harness {
    sim: Sim,
    go: GoClient,
}

impl Harness {
    async fn start() -> Self {
        Self::with(UpstreamConfig::default()).await
    }

    async fn with(config: UpstreamConfig) -> Self {
        let sim = sim::start(loopback(), own_keys::sim_config()).await.expect("simulator starts");
        sim.add_client(Environment::Demo, DEMO_KEY, client("4711", "Demo Bakeri AS"));
        sim.add_client(Environment::Production, PROD_KEY, client("a-77", "Prod Fisk AS"));
        let go = GoClient::new(&config).expect("client builds");
        Self { sim, go }
    }

    async fn token(&self, env: Environment, key: &str, sub: &str) -> Result<TokenGrant, UpstreamError> {
        self.token_as(env, APP_KEY, key, sub).await
    }

    async fn token_as(&self, env: Environment, app: &str, key: &str, sub: &str) -> Result<TokenGrant, UpstreamError> {
        let key = ClientKey::parse(key).expect("test key is a GUID");
        let sub = SubscriptionKey::parse(sub).expect("test subscription key");
        self.go.request_token(&self.sim.base_url(env), app, &key, &sub).await
    }

    async fn demo_token(&self) -> Result<TokenGrant, UpstreamError> {
        self.token(Environment::Demo, DEMO_KEY, DEMO_SUB).await
    }

    async fn info(
        &self,
        env: Environment,
        token: &AccessToken,
        sub: &str,
    ) -> Result<pogo_vault::upstream::ClientIntegrationInfo, UpstreamError> {
        let sub = SubscriptionKey::parse(sub).expect("test subscription key");
        self.go.client_integration_information(&self.sim.base_url(env), token, &sub).await
    }
}

fn client(id: &str, name: &str) -> SimClient {
    SimClient { client_id: id.into(), name: name.into(), organization_number: "987654321".into() }
}

fn short_timeouts() -> UpstreamConfig {
    UpstreamConfig { connect_timeout: Duration::from_millis(300), request_timeout: Duration::from_millis(300) }
}

/// Every value that must never appear in an error message.
fn assert_no_secrets(err: &UpstreamError, tokens: &[&str]) {
    let shown = format!("{err} | {err:?}");
    for secret in [DEMO_KEY, PROD_KEY, UNKNOWN_KEY, DEMO_SUB, PROD_SUB, BAD_SUB].iter().chain(tokens) {
        assert!(!shown.contains(secret), "error shows a secret: {shown}");
    }
    // Nor the Basic credentials as they travel.
    let basic = STANDARD.encode(format!("{APP_KEY}:{DEMO_KEY}"));
    assert!(!shown.contains(&basic), "error shows the Basic credentials: {shown}");
}

#[tokio::test]
async fn token_request_is_byte_for_byte_what_go_expects() {
    let h = Harness::start().await;
    // A trailing slash on the base must not change the path.
    let base = format!("{}/", h.sim.base_url(Environment::Demo));
    let key = ClientKey::parse(DEMO_KEY).expect("guid");
    let sub = SubscriptionKey::parse(DEMO_SUB).expect("sub");
    h.go.request_token(&base, APP_KEY, &key, &sub).await.expect("token");

    let req = h.sim.last_token_request().expect("recorded");
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/Demo/OAuth/Token");
    assert_eq!(req.query, None);
    assert_eq!(req.environment, Environment::Demo);
    let expected_basic = format!("Basic {}", STANDARD.encode(format!("{APP_KEY}:{DEMO_KEY}").as_bytes()));
    assert_eq!(req.header("authorization"), Some(expected_basic.as_str()));
    assert_eq!(req.header("ocp-apim-subscription-key"), Some(DEMO_SUB));
    assert_eq!(req.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.body, b"grant_type=client_credentials");
    assert_eq!(req.header("content-length"), Some("29"));
    let allowed = [
        "accept",
        "authorization",
        "content-length",
        "content-type",
        "host",
        "ocp-apim-subscription-key",
        "user-agent",
    ];
    for name in req.headers.keys() {
        assert!(allowed.contains(&name.as_str()), "unexpected header {name}");
    }
    // The record's Debug shows header names, not the credentials.
    let shown = format!("{req:?}");
    assert!(!shown.contains(DEMO_SUB) && !shown.contains(&expected_basic), "{shown}");
}

#[tokio::test]
async fn production_token_goes_to_the_root_path() {
    let h = Harness::start().await;
    h.token(Environment::Production, PROD_KEY, PROD_SUB).await.expect("token");
    let req = h.sim.last_token_request().expect("recorded");
    assert_eq!(req.path, "/OAuth/Token");
    assert_eq!(req.environment, Environment::Production);
}

#[tokio::test]
async fn success_returns_a_fresh_bearer_token_with_the_stated_lifetime() {
    let h = Harness::start().await;
    let a = h.demo_token().await.expect("token");
    assert_eq!(a.token_type, "Bearer");
    assert_eq!(a.expires_in, Duration::from_secs(1200));
    assert_eq!(a.access_token.expose_secret().split('.').count(), 3, "JWT-shaped");
    assert!(!format!("{a:?}").contains(a.access_token.expose_secret()), "TokenGrant Debug shows the token");

    h.sim.set_token_lifetime(Duration::from_secs(600));
    let b = h.demo_token().await.expect("token");
    assert_eq!(b.expires_in, Duration::from_secs(600));
    assert_ne!(a.access_token.expose_secret(), b.access_token.expose_secret(), "tokens are unique");
    assert_eq!(h.sim.successful_tokens(), 2);
    assert_eq!(h.sim.token_requests(), 2);
    assert_eq!(h.sim.token_requests_for(DEMO_KEY), 2);
    assert_eq!(h.sim.token_requests_for(PROD_KEY), 0);
}

#[tokio::test]
async fn unknown_revoked_and_wrong_environment_keys_are_rejected() {
    let h = Harness::start().await;
    let invalid_client = UpstreamError::KeyRejected { status: 400, error: "invalid_client".into() };

    let err = h.token(Environment::Demo, UNKNOWN_KEY, DEMO_SUB).await.expect_err("unknown key");
    assert_eq!(err, invalid_client);
    assert!(!err.is_retryable());

    // A demo key sent to production, with production's subscription key.
    let err = h.token(Environment::Production, DEMO_KEY, PROD_SUB).await.expect_err("wrong environment");
    assert_eq!(err, invalid_client);

    let err = h.token_as(Environment::Demo, "00000000-0000-4000-8000-000000000000", DEMO_KEY, DEMO_SUB).await;
    assert_eq!(err.expect_err("wrong application key"), invalid_client);

    h.demo_token().await.expect("works before revocation");
    assert!(h.sim.revoke_client(DEMO_KEY));
    let err = h.demo_token().await.expect_err("revoked key");
    assert_eq!(err, invalid_client);
    assert_eq!(h.sim.token_requests_for(UNKNOWN_KEY), 1);
}

#[tokio::test]
async fn bad_subscription_key_is_an_integration_wide_rejection() {
    let h = Harness::start().await;
    let err = h.token(Environment::Demo, DEMO_KEY, BAD_SUB).await.expect_err("bad subscription key");
    assert_eq!(err, UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid });
    // Subscription keys do not cross environments either.
    let err = h.token(Environment::Production, PROD_KEY, DEMO_SUB).await.expect_err("demo key on production");
    assert_eq!(err, UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid });
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured_and_the_fault_passes() {
    let h = Harness::start().await;
    h.sim.fail_next_429(1, 2);
    let err = h.demo_token().await.expect_err("429");
    assert_eq!(err, UpstreamError::RateLimited { retry_after: Duration::from_secs(2) });
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    h.demo_token().await.expect("only the next request was failed");
}

#[tokio::test]
async fn server_errors_are_transient() {
    let h = Harness::start().await;
    h.sim.fail_next_5xx(2, 503);
    let err = h.demo_token().await.expect_err("503");
    assert_eq!(err, UpstreamError::Transient { reason: "HTTP 503".into(), trace_id: None });
    assert!(err.is_retryable());
    let token = h.demo_token().await.expect_err("second 503 on the token endpoint");
    assert!(matches!(token, UpstreamError::Transient { .. }));
    h.demo_token().await.expect("recovered");
    assert_eq!(h.sim.token_requests(), 3, "failed requests are counted too");
    assert_eq!(h.sim.successful_tokens(), 1);
}

#[tokio::test]
async fn a_hanging_go_is_cut_by_the_total_timeout() {
    let h = Harness::with(short_timeouts()).await;
    h.sim.hang_next(1);
    let started = Instant::now();
    let err = h.demo_token().await.expect_err("hang");
    assert_eq!(err, UpstreamError::Timeout);
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // Shutdown releases the hung handler instead of waiting for it forever.
    tokio::time::timeout(Duration::from_secs(10), h.sim.shutdown()).await.expect("shutdown finishes");
}

#[tokio::test]
async fn latency_beyond_the_timeout_is_a_timeout() {
    let h = Harness::with(short_timeouts()).await;
    h.sim.set_latency(Duration::from_secs(3));
    let err = h.demo_token().await.expect_err("slow");
    assert_eq!(err, UpstreamError::Timeout);
    h.sim.set_latency(Duration::ZERO);
    h.demo_token().await.expect("fast again");
}

#[tokio::test]
async fn a_dropped_connection_is_transient_or_a_timeout() {
    let h = Harness::with(short_timeouts()).await;
    h.sim.drop_next(1);
    let err = h.demo_token().await.expect_err("dropped");
    assert!(matches!(err, UpstreamError::Transient { .. } | UpstreamError::Timeout), "{err:?}");
    assert!(err.is_retryable());
    h.demo_token().await.expect("next connection works");
    assert_eq!(h.sim.token_requests(), 2);
}

#[tokio::test]
async fn nobody_listening_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind(loopback()).expect("bind");
        l.local_addr().expect("addr").port()
    };
    let go = GoClient::new(&short_timeouts()).expect("client");
    let key = ClientKey::parse(DEMO_KEY).expect("guid");
    let sub = SubscriptionKey::parse(DEMO_SUB).expect("sub");
    let err = go.request_token(&format!("http://127.0.0.1:{port}"), APP_KEY, &key, &sub).await.expect_err("refused");
    assert_eq!(err, UpstreamError::Transient { reason: "connection refused".into(), trace_id: None });
    assert_no_secrets(&err, &[]);
}

#[tokio::test]
async fn the_sims_rate_limit_refuses_after_n_requests() {
    let h = Harness::start().await;
    // A one-minute window: the first three are admitted however slow this machine is.
    h.sim.set_rate_limit(3, Duration::from_secs(60));
    for _ in 0..3 {
        h.demo_token().await.expect("within the limit");
    }
    let err = h.demo_token().await.expect_err("over the limit");
    assert_eq!(err, UpstreamError::RateLimited { retry_after: Duration::from_secs(1) });
    // The limit is per subscription key: production's key has its own budget.
    h.token(Environment::Production, PROD_KEY, PROD_SUB).await.expect("other subscription key");
    assert_eq!(h.sim.token_requests(), 5);
    assert_eq!(h.sim.successful_tokens(), 4);
    assert!(h.sim.max_token_requests_in_any_second() <= 5);
    assert_eq!(h.sim.token_request_times().len(), 5);
}

#[tokio::test]
async fn the_default_one_second_window_refuses_the_fourth_of_three_per_second() {
    let sim_config = SimConfig {
        subscription_keys: vec![(Environment::Demo, DEMO_SUB.into())],
        rate_limit_per_second: 3,
        ..own_keys::sim_config()
    };
    let sim = sim::start(loopback(), sim_config).await.expect("simulator starts");
    sim.add_client(Environment::Demo, DEMO_KEY, client("1", "A"));
    let go = GoClient::new(&UpstreamConfig::default()).expect("client");
    let key = ClientKey::parse(DEMO_KEY).expect("guid");
    let sub = SubscriptionKey::parse(DEMO_SUB).expect("sub");
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(go.request_token(&sim.base_url(Environment::Demo), APP_KEY, &key, &sub).await);
    }
    let times = sim.token_request_times();
    assert_eq!(times.len(), 4);
    let limited = outcomes.iter().filter(|o| matches!(o, Err(UpstreamError::RateLimited { .. }))).count();
    assert!(outcomes[..3].iter().all(Result::is_ok), "the first three are within any window");
    // Only when all four arrived within one second must the fourth be refused; on a machine
    // stalled for a second the window has legitimately slid (no timing dependence).
    if times[3].duration_since(times[0]) < Duration::from_secs(1) {
        assert_eq!(limited, 1, "fourth request within a second must get 429");
        assert_eq!(sim.successful_tokens(), 3);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn api_calls_share_the_rate_limit_with_token_requests() {
    let h = Harness::start().await;
    h.sim.set_rate_limit(2, Duration::from_secs(60));
    let grant = h.demo_token().await.expect("token");
    h.info(Environment::Demo, &grant.access_token, DEMO_SUB).await.expect("info");
    let err = h.demo_token().await.expect_err("budget spent");
    assert!(matches!(err, UpstreamError::RateLimited { .. }), "{err:?}");
    assert_eq!(h.sim.request_times().len(), 3);
    assert_eq!(h.sim.api_requests(), 1);
}

#[tokio::test]
async fn client_integration_information_needs_a_token_the_sim_issued() {
    let h = Harness::start().await;
    let grant = h.demo_token().await.expect("token");
    let info = h.info(Environment::Demo, &grant.access_token, DEMO_SUB).await.expect("info");
    assert_eq!(info.client_id.as_deref(), Some("4711"));
    assert_eq!(info.client_name.as_deref(), Some("Demo Bakeri AS"));
    assert!(!info.valid_privileges.is_empty());
    assert!(info.invalid_privileges.is_empty());

    let prod = h.token(Environment::Production, PROD_KEY, PROD_SUB).await.expect("token");
    let info = h.info(Environment::Production, &prod.access_token, PROD_SUB).await.expect("info");
    assert_eq!(info.client_id.as_deref(), Some("a-77"), "string client ids too");

    let made_up = AccessToken::new("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl".into());
    let err = h.info(Environment::Demo, &made_up, DEMO_SUB).await.expect_err("made-up token");
    assert_eq!(err, UpstreamError::Unauthorized { status: 401, trace_id: None });

    // A demo token is no good on production.
    let err = h.info(Environment::Production, &grant.access_token, PROD_SUB).await.expect_err("wrong environment");
    assert_eq!(err, UpstreamError::Unauthorized { status: 401, trace_id: None });

    let err = h.info(Environment::Demo, &grant.access_token, BAD_SUB).await.expect_err("bad subscription key");
    assert_eq!(err, UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid });

    // Revoking the key does not kill tokens already issued (go-api.md, "Keys").
    h.sim.revoke_client(DEMO_KEY);
    h.info(Environment::Demo, &grant.access_token, DEMO_SUB).await.expect("issued token still works");
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let h = Harness::start().await;
    h.sim.set_token_lifetime(Duration::from_secs(1));
    let grant = h.demo_token().await.expect("token");
    assert_eq!(grant.expires_in, Duration::from_secs(1));
    // Sleeping longer only makes the token more expired: no timing dependence.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let err = h.info(Environment::Demo, &grant.access_token, DEMO_SUB).await.expect_err("expired");
    assert_eq!(err, UpstreamError::Unauthorized { status: 401, trace_id: None });
}

#[tokio::test]
async fn no_error_shows_a_key_or_a_token() {
    let h = Harness::with(short_timeouts()).await;
    let grant = h.demo_token().await.expect("token");
    let token = grant.access_token.expose_secret().to_owned();
    let mut errors = vec![
        h.token(Environment::Demo, UNKNOWN_KEY, DEMO_SUB).await.expect_err("unknown"),
        h.token(Environment::Production, DEMO_KEY, PROD_SUB).await.expect_err("wrong env"),
        h.token(Environment::Demo, DEMO_KEY, BAD_SUB).await.expect_err("bad sub"),
        h.info(Environment::Production, &grant.access_token, PROD_SUB).await.expect_err("wrong env token"),
        h.info(Environment::Demo, &grant.access_token, BAD_SUB).await.expect_err("bad sub on API"),
    ];
    h.sim.fail_next_429(1, 2);
    errors.push(h.demo_token().await.expect_err("429"));
    h.sim.fail_next_5xx(1, 502);
    errors.push(h.info(Environment::Demo, &grant.access_token, DEMO_SUB).await.expect_err("502"));
    h.sim.hang_next(1);
    errors.push(h.demo_token().await.expect_err("hang"));
    h.sim.drop_next(1);
    errors.push(h.info(Environment::Demo, &grant.access_token, DEMO_SUB).await.expect_err("drop"));
    let bad_base = GoClient::new(&short_timeouts())
        .expect("client")
        .request_token(
            "ftp://example.invalid",
            APP_KEY,
            &ClientKey::parse(DEMO_KEY).expect("guid"),
            &SubscriptionKey::parse(DEMO_SUB).expect("sub"),
        )
        .await
        .expect_err("bad base URL");
    assert!(matches!(bad_base, UpstreamError::Config { .. }), "{bad_base:?}");
    errors.push(bad_base);

    assert_eq!(errors.len(), 10);
    for err in &errors {
        assert_no_secrets(err, &[&token]);
    }
    // Make sure the check itself can fail: a string holding the token is caught.
    assert!(format!("x{token}x").contains(&token));
    h.sim.shutdown().await;
}
