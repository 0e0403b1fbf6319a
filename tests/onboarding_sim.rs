#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Onboarding against the simulator over real loopback HTTP: the Go client's Initiate and
//! Finalize requests are what go-api.md describes, the simulated user's approval page
//! redirects back as Go does, the keys that come out mint tokens (and the old ones stop
//! working), every refusal is classified, and no error shows a key or a token.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::fixture::loopback;
use common::fixture::own_keys::{self, APP_KEY, BAD_SUB, DEMO_KEY as BAKERI_KEY, DEMO_SUB, PROD_KEY, PROD_SUB};
use pogo_vault::crypto::{ClientKey, SubscriptionKey};
use pogo_vault::domain::Environment;
use pogo_vault::sim::{self, SIM_USER_EMAIL, Sim, SimClient, SimConfig};
use pogo_vault::upstream::{
    GoClient, OnboardingResult, OnboardingSession, OnboardingToken, SubscriptionKeyProblem, UpstreamConfig,
    UpstreamError,
};
use reqwest::Url;
use serde_json::Value;

/// The second demo client's key: with `BAKERI_KEY` and `PROD_KEY`, the keys the clients
/// start with (before any onboarding).
const FISK_KEY: &str = "22222222-3333-4444-8555-666666666666";
const BAKERI_ORG: &str = "911111111";
const FISK_ORG: &str = "922222222";
/// The integrator's callback; the port is never connected to (redirects are not followed).
const CALLBACK: &str = "http://127.0.0.1:9/onboarding/callback";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Where the simulated user's browser lands after the approval page.
#[derive(Debug)]
struct Landing {
    url: Url,
}

impl Landing {
    fn param(&self, name: &str) -> Option<String> {
        let values: Vec<String> =
            self.url.query_pairs().filter(|(k, _)| k == name).map(|(_, v)| v.into_owned()).collect();
        assert!(values.len() <= 1, "{name} given {} times", values.len());
        values.into_iter().next()
    }

    fn status(&self) -> String {
        self.param("status").expect("a status on every redirect")
    }

    fn token(&self) -> OnboardingToken {
        OnboardingToken::parse(&self.param("token").expect("a token")).expect("a well-formed token")
    }
}

struct Harness {
    sim: Sim,
    go: GoClient,
    /// A browser that does not follow redirects.
    browser: reqwest::Client,
}

impl Harness {
    async fn start() -> Self {
        let config = SimConfig {
            redirect_uris: vec![(Environment::Demo, CALLBACK.into())],
            // Go's 10/s would make these tests depend on timing; `gateway_refusals_are_classified`
            // sets a limit of its own.
            rate_limit_per_second: 1000,
            ..own_keys::sim_config()
        };
        let sim = sim::start(loopback(), config).await.expect("simulator starts");
        sim.add_client(Environment::Demo, BAKERI_KEY, client("4711", "Demo Bakeri AS", BAKERI_ORG));
        sim.add_client(Environment::Demo, FISK_KEY, client("4712", "Demo Fisk AS", FISK_ORG));
        sim.add_client(Environment::Production, PROD_KEY, client("a-77", "Prod Fisk AS", FISK_ORG));
        let go = GoClient::new(&UpstreamConfig::default()).expect("client builds");
        // Plain HTTP only, but reqwest (built with `rustls-no-provider`) still wants a TLS
        // configuration: pass one with the ring provider rather than touch the process default.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let browser = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("browser");
        Self { sim, go, browser }
    }

    fn base(&self, env: Environment) -> String {
        self.sim.base_url(env)
    }

    async fn initiate_as(
        &self,
        env: Environment,
        sub: &str,
        app: &str,
        org: Option<&str>,
        redirect: &str,
    ) -> Result<OnboardingSession, UpstreamError> {
        let sub = SubscriptionKey::parse(sub).expect("test subscription key");
        self.go.onboarding_initiate(&self.base(env), &sub, app, org, redirect).await
    }

    async fn initiate(&self, org: Option<&str>, redirect: &str) -> Result<OnboardingSession, UpstreamError> {
        self.initiate_as(Environment::Demo, DEMO_SUB, APP_KEY, org, redirect).await
    }

    async fn finalize_as(
        &self,
        env: Environment,
        sub: &str,
        token: &OnboardingToken,
    ) -> Result<OnboardingResult, UpstreamError> {
        let sub = SubscriptionKey::parse(sub).expect("test subscription key");
        self.go.onboarding_finalize(&self.base(env), &sub, token).await
    }

    async fn finalize(&self, token: &OnboardingToken) -> Result<OnboardingResult, UpstreamError> {
        self.finalize_as(Environment::Demo, DEMO_SUB, token).await
    }

    /// The user's browser opens the temporary URL; returns the status and Location.
    async fn visit(&self, url: &str) -> (u16, Option<String>) {
        let r = self.browser.get(url).send().await.expect("approval page answers");
        let location = r.headers().get("location").map(|v| v.to_str().expect("ASCII Location").to_owned());
        (r.status().as_u16(), location)
    }

    /// Visits the approval page, expects a 302 back to our callback, returns where it lands.
    async fn approve(&self, session: &OnboardingSession) -> Landing {
        let (status, location) = self.visit(&session.temporary_url).await;
        assert_eq!(status, 302, "the approval page redirects back");
        let url = Url::parse(&location.expect("a Location")).expect("an absolute Location");
        let callback = Url::parse(CALLBACK).unwrap();
        assert_eq!(
            (url.scheme(), url.host_str(), url.port(), url.path()),
            (callback.scheme(), callback.host_str(), callback.port(), callback.path()),
            "back to the redirect URI"
        );
        Landing { url }
    }

    /// Initiate (with `state=our-state` riding along), approve, and return the landing.
    async fn onboard(&self, org: Option<&str>) -> Landing {
        let session = self.initiate(org, &format!("{CALLBACK}?state=our-state")).await.expect("initiate");
        let landing = self.approve(&session).await;
        assert_eq!(landing.param("state").as_deref(), Some("our-state"), "our own query survives");
        landing
    }

    async fn token_with(&self, env: Environment, key: &str) -> Result<(), UpstreamError> {
        let key = ClientKey::parse(key).expect("a GUID");
        let sub = SubscriptionKey::parse(if env == Environment::Demo { DEMO_SUB } else { PROD_SUB }).unwrap();
        self.go.request_token(&self.base(env), APP_KEY, &key, &sub).await.map(|_| ())
    }
}

fn client(id: &str, name: &str, org: &str) -> SimClient {
    SimClient { client_id: id.into(), name: name.into(), organization_number: org.into() }
}

fn invalid_client() -> UpstreamError {
    UpstreamError::KeyRejected { status: 400, error: "invalid_client".into() }
}

/// A 400 ProblemDetails refusal with this title; Go (and the simulator) add a `traceId`,
/// which the error keeps.
fn assert_rejected(e: &UpstreamError, title: &str) {
    match e {
        UpstreamError::OnboardingRejected { status: 400, title: t, trace_id: Some(_) } if t == title => {}
        other => panic!("expected a 400 refusal titled {title:?} with Go's traceId, got {other:?}"),
    }
}

#[tokio::test]
async fn initiate_approve_finalize_yields_keys_that_mint_tokens() {
    let h = Harness::start().await;
    let redirect = format!("{CALLBACK}?state=our-state&x=1");
    let session = h.initiate(None, &redirect).await.expect("initiate");

    // The request on the wire: subscription key only, Go's JSON field names.
    let req = h.sim.last_onboarding_request().expect("recorded");
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/Demo/v2/Onboarding/Initiate"));
    assert_eq!(req.header("ocp-apim-subscription-key"), Some(DEMO_SUB));
    assert_eq!(req.header("authorization"), None, "no bearer on onboarding");
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"ApplicationKey": APP_KEY, "RedirectUri": redirect}),
        "no ClientOrganizationNo"
    );

    // The session: a URL on the simulator, valid for about 15 minutes.
    assert!(session.temporary_url.starts_with(&format!("{}/onboarding/approve/", h.base(Environment::Demo))));
    let left = session.valid_until_ms - now_ms();
    assert!((14 * 60_000..=15 * 60_000 + 1_000).contains(&left), "{left} ms left");

    // The browser: 302 back to our URI, our query kept, Success and a token.
    let landing = h.approve(&session).await;
    assert_eq!(landing.status(), "Success");
    assert_eq!(landing.param("state").as_deref(), Some("our-state"));
    assert_eq!(landing.param("x").as_deref(), Some("1"));
    let query = landing.url.query().unwrap();
    assert!(query.starts_with("state=our-state&x=1&status=Success&token="), "{query}");
    let token = landing.token();

    let result = h.finalize(&token).await.expect("finalize");
    let req = h.sim.last_onboarding_request().expect("recorded");
    assert_eq!(req.path, "/Demo/v2/Onboarding/Finalize");
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.header("ocp-apim-subscription-key"), Some(DEMO_SUB));
    let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(body, serde_json::json!({"OnboardingToken": token.expose_secret()}));

    assert_eq!(result.user_email.as_deref(), Some(SIM_USER_EMAIL));
    let mut seen: Vec<(Option<&str>, Option<&str>)> =
        result.clients.iter().map(|c| (c.client_name.as_deref(), c.organization_number.as_deref())).collect();
    seen.sort();
    assert_eq!(seen, [(Some("Demo Bakeri AS"), Some(BAKERI_ORG)), (Some("Demo Fisk AS"), Some(FISK_ORG))]);
    for c in &result.clients {
        let key = c.client_key.expose_secret();
        assert!(key != BAKERI_KEY && key != FISK_KEY, "activation issues a new key");
        h.token_with(Environment::Demo, key).await.expect("the onboarded key mints tokens");
        let org = c.organization_number.as_deref().unwrap();
        assert_eq!(h.sim.current_key_of(Environment::Demo, org).as_deref(), Some(key));
        assert!(!format!("{c:?} {result:?}").contains(key), "Debug shows a client key");
    }
    // Production's client was not touched.
    h.token_with(Environment::Production, PROD_KEY).await.expect("other environment untouched");
    assert_eq!(h.sim.onboarding_initiations(), 1);
    assert_eq!(h.sim.onboarding_finalizations(), 1);
}

#[tokio::test]
async fn a_token_is_single_use() {
    let h = Harness::start().await;
    let token = h.onboard(None).await.token();
    h.finalize(&token).await.expect("first use");
    let err = h.finalize(&token).await.expect_err("second use");
    assert_rejected(&err, "Invalid onboarding token");
    assert!(!err.is_retryable());
    assert_eq!(h.sim.onboarding_finalizations(), 2, "refused requests are counted too");
}

#[tokio::test]
async fn expired_tokens_are_rejected() {
    let h = Harness::start().await;
    let token = h.onboard(None).await.token();
    h.sim.expire_onboarding_tokens();
    assert_rejected(&h.finalize(&token).await.expect_err("expired"), "Invalid onboarding token");

    // A zero lifetime: expired as soon as issued.
    h.sim.set_onboarding_token_ttl(Duration::ZERO);
    let token = h.onboard(None).await.token();
    assert_rejected(&h.finalize(&token).await.expect_err("expired"), "Invalid onboarding token");

    // Back to a normal lifetime: tokens work again; unknown ones never do.
    h.sim.set_onboarding_token_ttl(Duration::from_secs(600));
    let token = h.onboard(None).await.token();
    h.finalize(&token).await.expect("fresh token");
    let made_up = OnboardingToken::parse("bm90LWEtcmVhbC10b2tlbi1hdC1hbGwtMDAwMDAwMDA").unwrap();
    assert_rejected(&h.finalize(&made_up).await.expect_err("unknown"), "Invalid onboarding token");
}

#[tokio::test]
async fn a_demo_token_is_unknown_to_production() {
    let h = Harness::start().await;
    let token = h.onboard(None).await.token();
    let err = h.finalize_as(Environment::Production, PROD_SUB, &token).await.expect_err("wrong environment");
    assert_rejected(&err, "Invalid onboarding token");
    h.finalize(&token).await.expect("still good where it was issued");
}

#[tokio::test]
async fn every_refusal_redirects_without_a_token_and_rotates_nothing() {
    let h = Harness::start().await;
    for status in ["Canceled", "NoClientAccess", "IntegrationBlocked", "ClientNotFound"] {
        h.sim.next_approval_status(status);
        let landing = h.onboard(None).await;
        assert_eq!(landing.status(), status);
        assert_eq!(landing.param("token"), None, "{status} carries no token");
        assert_eq!(h.sim.current_key_of(Environment::Demo, BAKERI_ORG).as_deref(), Some(BAKERI_KEY));
        h.token_with(Environment::Demo, BAKERI_KEY).await.expect("old key still works");
    }
    // The knob covers only the next approval.
    assert_eq!(h.onboard(None).await.status(), "Success");
}

#[tokio::test]
async fn an_organization_number_restricts_the_onboarding_to_one_client() {
    let h = Harness::start().await;
    let landing = h.onboard(Some(FISK_ORG)).await;
    assert_eq!(landing.status(), "Success");
    let req = h.sim.last_onboarding_request().unwrap();
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["ClientOrganizationNo"], FISK_ORG);

    let result = h.finalize(&landing.token()).await.expect("finalize");
    assert_eq!(result.clients.len(), 1);
    let only = &result.clients[0];
    assert_eq!(only.organization_number.as_deref(), Some(FISK_ORG));
    assert_eq!(only.client_name.as_deref(), Some("Demo Fisk AS"));
    h.token_with(Environment::Demo, only.client_key.expose_secret()).await.expect("new key works");
    // The other client kept its key.
    h.token_with(Environment::Demo, BAKERI_KEY).await.expect("untouched");

    // A number the environment does not know: ClientNotFound, no token.
    let landing = h.onboard(Some("933333333")).await;
    assert_eq!(landing.status(), "ClientNotFound");
    assert_eq!(landing.param("token"), None);
}

#[tokio::test]
async fn the_user_approves_only_the_clients_they_can_reach() {
    let h = Harness::start().await;
    h.sim.set_user_clients(Environment::Demo, [BAKERI_KEY]);
    let result = h.finalize(&h.onboard(None).await.token()).await.expect("finalize");
    assert_eq!(result.clients.len(), 1);
    assert_eq!(result.clients[0].organization_number.as_deref(), Some(BAKERI_ORG));
    // Still reachable after its key rotated (clients are named by key, kept by identity).
    let result = h.finalize(&h.onboard(None).await.token()).await.expect("finalize");
    assert_eq!(result.clients.len(), 1);

    // An organization number the user cannot reach, or nobody reachable at all.
    assert_eq!(h.onboard(Some(FISK_ORG)).await.status(), "NoClientAccess");
    h.sim.set_user_clients(Environment::Demo, Vec::<String>::new());
    assert_eq!(h.onboard(None).await.status(), "NoClientAccess");
    h.sim.reset_user_clients(Environment::Demo);
    assert_eq!(h.finalize(&h.onboard(None).await.token()).await.expect("finalize").clients.len(), 2);
}

#[tokio::test]
async fn re_onboarding_rotates_the_clients_key() {
    let h = Harness::start().await;
    h.token_with(Environment::Demo, BAKERI_KEY).await.expect("original key works");
    let first = h.finalize(&h.onboard(Some(BAKERI_ORG)).await.token()).await.expect("first activation");
    let key1 = first.clients[0].client_key.expose_secret().to_owned();
    assert_eq!(h.token_with(Environment::Demo, BAKERI_KEY).await, Err(invalid_client()), "original key revoked");

    let second = h.finalize(&h.onboard(Some(BAKERI_ORG)).await.token()).await.expect("second activation");
    let key2 = second.clients[0].client_key.expose_secret().to_owned();
    assert_ne!(key1, key2, "every activation yields a new key");
    assert_eq!(h.token_with(Environment::Demo, &key1).await, Err(invalid_client()), "previous key revoked");
    h.token_with(Environment::Demo, &key2).await.expect("new key works");
    assert_eq!(h.sim.current_key_of(Environment::Demo, BAKERI_ORG), Some(key2));

    // A customer who deleted the integration can activate it again.
    h.sim.revoke_client(&h.sim.current_key_of(Environment::Demo, FISK_ORG).unwrap());
    assert_eq!(h.sim.current_key_of(Environment::Demo, FISK_ORG), None);
    let again = h.finalize(&h.onboard(Some(FISK_ORG)).await.token()).await.expect("re-activation");
    h.token_with(Environment::Demo, again.clients[0].client_key.expose_secret()).await.expect("works");
}

#[tokio::test]
async fn only_whitelisted_redirects_are_accepted() {
    let h = Harness::start().await;
    let bad = "Invalid redirect URI";
    // Scheme, host, port and path count; the query does not.
    h.initiate(None, &format!("{CALLBACK}?anything=goes")).await.expect("query ignored");
    for uri in [
        "https://127.0.0.1:9/onboarding/callback",
        "http://localhost:9/onboarding/callback",
        "http://127.0.0.1:10/onboarding/callback",
        "http://127.0.0.1:9/onboarding/callback/other",
        "http://evil.example/onboarding/callback",
        "/onboarding/callback",
        "not a uri",
    ] {
        assert_rejected(&h.initiate(None, uri).await.expect_err(uri), bad);
    }
    // Whitelists are per environment.
    let err = h.initiate_as(Environment::Production, PROD_SUB, APP_KEY, None, CALLBACK).await.expect_err("prod");
    assert_rejected(&err, bad);
    assert!(h.sim.allow_redirect(Environment::Production, "http://localhost:8080/cb"));
    h.initiate_as(Environment::Production, PROD_SUB, APP_KEY, None, "http://LOCALHOST:8080/cb?s=1")
        .await
        .expect("whitelisted now; host case ignored");
    assert!(!h.sim.allow_redirect(Environment::Production, "ftp://x/cb"), "not an http(s) URL");

    let err = h.initiate_as(Environment::Demo, DEMO_SUB, "00000000-0000-4000-8000-000000000000", None, CALLBACK).await;
    assert_rejected(&err.expect_err("wrong application key"), "Invalid application key");
}

#[tokio::test]
async fn production_sessions_live_at_the_root_and_approval_pages_are_single_use() {
    let h = Harness::start().await;
    assert!(h.sim.allow_redirect(Environment::Production, CALLBACK));
    let session = h.initiate_as(Environment::Production, PROD_SUB, APP_KEY, None, CALLBACK).await.expect("initiate");
    assert!(session.temporary_url.starts_with(&format!("http://{}/onboarding/approve/", h.sim.addr())));
    // The production session is unknown under /Demo.
    let demo_path = session.temporary_url.replace("/onboarding/", "/Demo/onboarding/");
    assert_eq!(h.visit(&demo_path).await.0, 404);
    let landing = h.approve(&session).await;
    assert_eq!(landing.status(), "Success", "no query of ours: `?` starts Go's");
    assert!(landing.url.query().unwrap().starts_with("status=Success&token="));
    let result = h.finalize_as(Environment::Production, PROD_SUB, &landing.token()).await.expect("finalize");
    assert_eq!(result.clients.len(), 1);
    h.token_with(Environment::Production, result.clients[0].client_key.expose_secret()).await.expect("works");
    assert_eq!(h.token_with(Environment::Production, PROD_KEY).await, Err(invalid_client()));

    // A used session, and an expired one.
    assert_eq!(h.visit(&session.temporary_url).await.0, 404);
    let session = h.initiate(None, CALLBACK).await.expect("initiate");
    h.sim.expire_onboarding_sessions();
    assert_eq!(h.visit(&session.temporary_url).await.0, 410);
}

#[tokio::test]
async fn gateway_refusals_are_classified() {
    let h = Harness::start().await;
    let err = h.initiate_as(Environment::Demo, BAD_SUB, APP_KEY, None, CALLBACK).await.expect_err("bad sub");
    assert_eq!(err, UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid });
    // Subscription keys do not cross environments.
    let err = h.initiate_as(Environment::Demo, PROD_SUB, APP_KEY, None, CALLBACK).await.expect_err("prod sub");
    assert_eq!(err, UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid });
    let token = h.onboard(None).await.token();
    let err = h.finalize_as(Environment::Demo, BAD_SUB, &token).await.expect_err("bad sub");
    assert_eq!(err, UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid });

    h.sim.fail_next_429(1, 2);
    let err = h.finalize(&token).await.expect_err("429");
    assert_eq!(err, UpstreamError::RateLimited { retry_after: Duration::from_secs(2) });
    h.sim.fail_next_5xx(1, 503);
    let err = h.initiate(None, CALLBACK).await.expect_err("503");
    assert_eq!(err, UpstreamError::Transient { reason: "HTTP 503".into(), trace_id: None });
    h.finalize(&token).await.expect("the token survived the refused attempts");

    // Onboarding shares the subscription key's rate limit; its 429 is ProblemDetails.
    h.sim.set_rate_limit(1, Duration::from_secs(60));
    h.initiate(None, CALLBACK).await.expect("within the limit");
    let err = h.initiate(None, CALLBACK).await.expect_err("over the limit");
    assert_eq!(err, UpstreamError::RateLimited { retry_after: Duration::from_secs(1) });
}

#[tokio::test]
async fn no_error_shows_a_key_a_token_or_the_subscription_key() {
    let h = Harness::start().await;
    let used = h.onboard(None).await.token();
    let result = h.finalize(&used).await.expect("finalize");
    let mut secrets: Vec<String> = vec![BAKERI_KEY.into(), FISK_KEY.into(), PROD_KEY.into(), DEMO_SUB.into()];
    secrets.extend([PROD_SUB.into(), BAD_SUB.into(), used.expose_secret().into()]);
    secrets.extend(result.clients.iter().map(|c| c.client_key.expose_secret().to_owned()));

    let expired = h.onboard(None).await.token();
    secrets.push(expired.expose_secret().into());
    h.sim.expire_onboarding_tokens();
    let mut errors = vec![
        h.finalize(&used).await.expect_err("reused"),
        h.finalize(&expired).await.expect_err("expired"),
        h.finalize_as(Environment::Demo, BAD_SUB, &used).await.expect_err("bad sub"),
        h.finalize_as(Environment::Production, PROD_SUB, &used).await.expect_err("wrong env"),
        h.initiate(None, "http://evil.example/cb?state=x").await.expect_err("bad redirect"),
        h.initiate_as(Environment::Demo, BAD_SUB, APP_KEY, None, CALLBACK).await.expect_err("bad sub"),
    ];
    h.sim.fail_next_429(1, 1);
    errors.push(h.finalize(&used).await.expect_err("429"));
    for e in &errors {
        let shown = format!("{e} | {e:?}");
        for s in &secrets {
            assert!(!shown.contains(s.as_str()), "error shows a secret: {shown}");
        }
    }
    // Secret types print redacted; the check itself can fail.
    assert_eq!(format!("{used:?}"), "OnboardingToken([redacted])");
    assert!(!format!("{result:?}").contains(result.clients[0].client_key.expose_secret()));
    assert!(format!("x{}x", secrets[0]).contains(&secrets[0]));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn an_empty_organization_number_is_left_out_not_sent_empty() {
    let h = Harness::start().await;
    // Go refuses `"ClientOrganizationNo": ""` ("field is required"); the simulator does too,
    // with ASP.NET's validation answer naming the field and a traceId.
    let raw = h
        .browser
        .post(format!("{}/v2/Onboarding/Initiate", h.sim.base_url(Environment::Demo)))
        .header("Ocp-Apim-Subscription-Key", DEMO_SUB)
        .json(&serde_json::json!({"ApplicationKey": APP_KEY, "ClientOrganizationNo": "", "RedirectUri": CALLBACK}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert!(body["errors"]["ClientOrganizationNo"].is_array(), "{body}");
    assert!(body["traceId"].as_str().is_some_and(|t| t.starts_with("00-")), "{body}");
    // The vault's client never sends it empty: blank means "not given".
    for blank in ["", "   "] {
        h.initiate(Some(blank), CALLBACK).await.expect("a blank number is left out");
        let req = h.sim.last_onboarding_request().unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert!(sent.get("ClientOrganizationNo").is_none(), "{sent}");
    }
}
