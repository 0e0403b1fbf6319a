//! A simulated PowerOffice Go: a real HTTP server (axum on a tokio `TcpListener`, plain
//! HTTP) speaking the parts of Go's API v2 that pogo-vault uses (see `shared/go-api.md`),
//! with fault knobs and counters. Used by tests, `pogo-vault dev` and `pogo-vault sim`.
//!
//! Layout: this file holds the configuration and the [`Sim`] handle (knobs, the onboarding
//! knobs included, counters, shutdown); `handlers` the route table and the token and API
//! endpoints; `onboarding` the onboarding endpoints and the simulated approving user;
//! `gateway` the gateway's checks and error shape both use; `problem` the onboarding API's
//! ProblemDetails answers; `state` the shared state, rate limiter and faults;
//! `onboarding_state` the sessions, grants and redirect whitelist; `types` the client and
//! recorded-request types; `answers` Go's error shapes as values; `conn` the listener that
//! lets a handler cut its connection. Files import only files later in this list, and
//! none imports this one.
//!
//! Endpoints (path case ignored; a `/Demo` prefix selects the demo environment):
//! - `POST /OAuth/Token`: client credentials grant.
//! - `GET /v2/ClientIntegrationInformation`: who a token belongs to.
//! - `POST /v2/Onboarding/Initiate`, `POST /v2/Onboarding/Finalize`: onboarding.
//! - `GET /onboarding/approve/{session}`: the `TemporaryUrl`; the simulated user approves
//!   at once and is redirected (302) back to the integrator's redirect URI.
//! - `GET /v2/Customers`, `POST /v2/OutgoingInvoices`, `GET /v2/Sim/Download`,
//!   `POST /v2/Sim/Upload`: API calls with the bearer token, for the vault's gateway (`api`).
//!
//! Invariant: the simulator may log, but never a key, a token or a request body. Its
//! configuration's `Debug` is redacted. Its fixed demo values ([`DEMO_CLIENTS`], the default
//! application and subscription keys) are public constants of this source, accepted by
//! nothing but a simulator: `pogo-vault sim` and `dev` print them on standard output (so a
//! newcomer can paste them), never in a log. It keeps the last token request and the last
//! onboarding request (with their credentials) in memory for tests; that record's `Debug`
//! is redacted too.

mod answers;
mod api;
mod conn;
mod gateway;
mod handlers;
mod onboarding;
mod onboarding_state;
mod problem;
mod state;
mod types;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::answers::{INVALID_KEY_MESSAGE, MISSING_KEY_MESSAGE, RateLimitStyle, SimAnswer};
pub use self::api::{CUSTOMERS_PER_CLIENT, pattern_byte};
pub use self::onboarding::{APPROVAL_STATUSES, SIM_USER_EMAIL};
pub use self::types::{RecordedRequest, SimClient};

use self::conn::{ConnHandle, SimListener};
use self::onboarding::digits_only;
use self::onboarding_state::OnboardingState;
use self::state::{Counters, Endpoint, Faults, RateLimiter, Shared, State};
use crate::domain::Environment;

/// The simulator's default application key (a fixed, public demo value).
pub const DEFAULT_APPLICATION_KEY: &str = "5b1b5bd4-0f0c-4a57-9d8e-0d3f54a1c001";

/// The simulator's default demo subscription key (a fixed, public demo value).
pub const DEFAULT_DEMO_SUBSCRIPTION_KEY: &str = "0d9e5c1f4b2a4e6f8a7b3c2d1e0f9a8b";

/// The simulator's default production subscription key (a fixed, public demo value).
pub const DEFAULT_PRODUCTION_SUBSCRIPTION_KEY: &str = "7c4e2a9b1d3f4c5e8a6b0d2f1e3c5a7b";

/// The secondary key of the simulator's demo subscription (a fixed, public demo value):
/// Go's gateway gives every subscription two keys, both valid at once.
pub const DEFAULT_DEMO_SECONDARY_SUBSCRIPTION_KEY: &str = "3a8f6c2e9b1d4e7fa0c5b2d8e6f1a9c4";

/// The secondary key of the simulator's production subscription.
pub const DEFAULT_PRODUCTION_SECONDARY_SUBSCRIPTION_KEY: &str = "9e2b7d4a6c1f4b8e9d3a5c7e0f2b4d6a";

/// How long a graceful shutdown may take before the server task is aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the simulated Go accepts.
#[derive(Clone)]
pub struct SimConfig {
    /// The integration's application key (the OAuth client id).
    pub application_key: String,
    /// Subscription keys and the environment each belongs to. An environment's keys are
    /// keys of one subscription (primary and secondary): they share one rate limit.
    pub subscription_keys: Vec<(Environment, String)>,
    /// `expires_in` of issued tokens; default 1200 s.
    pub token_lifetime: Duration,
    /// Requests admitted per subscription key in any rolling second (token and API calls
    /// together, as on Go); default 10. 0 refuses everything with 429.
    pub rate_limit_per_second: u32,
    /// Whitelisted onboarding redirect URIs per environment (only scheme, host, port and
    /// path count); default none. More can be added with [`Sim::allow_redirect`].
    pub redirect_uris: Vec<(Environment, String)>,
    /// Also accept every loopback redirect URI (`localhost`, `127.0.0.0/8`, `[::1]`, any
    /// port and path), as Go lets an integration test against `localhost` (go-api.md); on
    /// for `pogo-vault sim` and `dev`, off by default so tests whitelist what they use.
    pub loopback_redirects: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            application_key: DEFAULT_APPLICATION_KEY.to_owned(),
            subscription_keys: vec![
                (Environment::Demo, DEFAULT_DEMO_SUBSCRIPTION_KEY.to_owned()),
                (Environment::Demo, DEFAULT_DEMO_SECONDARY_SUBSCRIPTION_KEY.to_owned()),
                (Environment::Production, DEFAULT_PRODUCTION_SUBSCRIPTION_KEY.to_owned()),
                (Environment::Production, DEFAULT_PRODUCTION_SECONDARY_SUBSCRIPTION_KEY.to_owned()),
            ],
            token_lifetime: Duration::from_secs(1200),
            rate_limit_per_second: 10,
            redirect_uris: Vec::new(),
            loopback_redirects: false,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let envs: Vec<&str> = self.subscription_keys.iter().map(|(e, _)| e.as_str()).collect();
        f.debug_struct("SimConfig")
            .field("application_key", &"[redacted]")
            .field("subscription_keys", &format_args!("[redacted; environments {envs:?}]"))
            .field("token_lifetime", &self.token_lifetime)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("redirect_uris", &self.redirect_uris)
            .field("loopback_redirects", &self.loopback_redirects)
            .finish()
    }
}

/// A client of the demo environment that `pogo-vault sim` and `dev` start with.
#[derive(Debug, Clone, Copy)]
pub struct DemoClient {
    /// Its client key: a fixed, public demo value (paste it into `tenant add`).
    pub client_key: &'static str,
    pub client_id: &'static str,
    pub name: &'static str,
    pub organization_number: &'static str,
    /// Whether the simulated approving user administers it, so an onboarding activates it.
    /// The others are for registering by hand: an onboarding never replaces their keys.
    pub onboarding: bool,
}

/// The demo clients of [`Sim::add_demo_clients`]: two to register by hand (`dev` registers
/// them as `demo-acme` and `demo-fjord`), one that an onboarding activates.
pub const DEMO_CLIENTS: [DemoClient; 3] = [
    DemoClient {
        client_key: "de000000-0000-4000-8000-00000000ac01",
        client_id: "10991",
        name: "Acme Regnskap AS",
        organization_number: "999999991",
        onboarding: false,
    },
    DemoClient {
        client_key: "de000000-0000-4000-8000-00000000f302",
        client_id: "10992",
        name: "Fjord Bygg AS",
        organization_number: "999999992",
        onboarding: false,
    },
    DemoClient {
        client_key: "de000000-0000-4000-8000-00000000b003",
        client_id: "10993",
        name: "Nordlys Handel AS",
        organization_number: "999999993",
        onboarding: true,
    },
];

/// A running simulator. Cheap to clone; all clones control the same server.
#[derive(Clone)]
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<JoinHandle<io::Result<()>>>>>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Starts a simulator listening on `listen` (use port 0 for any free port). Fails if a
/// configured redirect URI is not an absolute http(s) URL.
pub async fn start(listen: SocketAddr, config: SimConfig) -> io::Result<Sim> {
    let mut onboarding = OnboardingState::default();
    onboarding.loopback = config.loopback_redirects;
    for (env, uri) in &config.redirect_uris {
        onboarding.allow_redirect(*env, uri)?;
    }
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (shutdown, _) = watch::channel(false);
    let state = State {
        addr,
        application_key: config.application_key,
        subscription_keys: config.subscription_keys,
        token_lifetime: config.token_lifetime,
        limiter: RateLimiter::new(config.rate_limit_per_second, Duration::from_secs(1)),
        clients: HashMap::new(),
        client_seq: 0,
        tokens: HashMap::new(),
        faults: Faults::default(),
        counters: Counters::default(),
        onboarding,
        rate_limit_style: RateLimitStyle::default(),
        reject_bearer: false,
    };
    let shared = Arc::new(Shared { state: Mutex::new(state), shutdown });
    let router = Router::new().fallback(handlers::dispatch).with_state(shared.clone());
    let signal = {
        let shared = shared.clone();
        async move { shared.wait_for_shutdown().await }
    };
    let server = axum::serve(SimListener(listener), router.into_make_service_with_connect_info::<ConnHandle>())
        .with_graceful_shutdown(signal);
    let task = tokio::spawn(async move { server.await });
    tracing::debug!(%addr, "simulated PowerOffice Go started");
    Ok(Sim { addr, shared, task: Arc::new(Mutex::new(Some(task))) })
}

impl Sim {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of an environment: `http://{addr}` (production), `http://{addr}/Demo`.
    pub fn base_url(&self, env: Environment) -> String {
        match env {
            Environment::Production => format!("http://{}", self.addr),
            Environment::Demo => format!("http://{}/Demo", self.addr),
        }
    }

    /// The Demo integration that points a vault at this simulator: its application key, its
    /// Demo base URL and its Demo subscription key (what `dev` mode, the tests and the
    /// benchmark store with [`crate::vault::Vault::set_integration`]).
    pub fn demo_integration(&self) -> Result<crate::vault::IntegrationInput, crate::domain::InvalidInput> {
        Ok(crate::vault::IntegrationInput {
            environment: Environment::Demo,
            application_key: DEFAULT_APPLICATION_KEY.into(),
            base_url: self.base_url(Environment::Demo),
            subscription_key: crate::crypto::SubscriptionKey::parse(DEFAULT_DEMO_SUBSCRIPTION_KEY)?,
            // The simulator is not Go: say so, as an operator must.
            allow_custom_base_url: true,
        })
    }

    /// Registers (or replaces) a client key for `env`; it is active (not revoked). Keys with
    /// the same `client_id` are keys of one client (onboarding rotates them).
    pub fn add_client(&self, env: Environment, client_key: &str, client: SimClient) {
        self.shared.lock().insert_client(env, client_key.to_owned(), client);
    }

    /// Adds the [`DEMO_CLIENTS`] to the demo environment and lets the simulated approving
    /// user reach only those marked `onboarding`.
    pub fn add_demo_clients(&self) {
        for c in DEMO_CLIENTS {
            let client = SimClient {
                client_id: c.client_id.to_owned(),
                name: c.name.to_owned(),
                organization_number: c.organization_number.to_owned(),
            };
            self.add_client(Environment::Demo, c.client_key, client);
        }
        self.set_user_clients(Environment::Demo, DEMO_CLIENTS.iter().filter(|c| c.onboarding).map(|c| c.client_key));
    }

    /// Revokes a client key in every environment (as when the customer deletes the
    /// integration): later token requests get 400 `invalid_client`; tokens already issued
    /// keep working until they expire. Returns whether the key was known.
    pub fn revoke_client(&self, client_key: &str) -> bool {
        let mut st = self.shared.lock();
        let mut found = false;
        for ((_, key), entry) in st.clients.iter_mut() {
            if key == client_key {
                entry.revoked = true;
                found = true;
            }
        }
        found
    }

    // ---- fault knobs: each affects only requests arriving after the call ----

    /// Delay added before every answer (0 to turn off).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().faults.latency = latency;
    }

    /// The next `n` requests get 429 with `Retry-After: retry_after_secs`.
    pub fn fail_next_429(&self, n: u32, retry_after_secs: u64) {
        let mut st = self.shared.lock();
        st.faults.rate_limited = n;
        st.faults.retry_after_secs = retry_after_secs;
    }

    /// The next `n` requests get 403 "Out of call volume quota. Quota will be replenished in
    /// hh:mm:ss." for `secs`, with `Retry-After: secs` when `retry_after_header`.
    pub fn fail_next_403_quota(&self, n: u32, secs: u64, retry_after_header: bool) {
        let mut st = self.shared.lock();
        st.faults.quota = n;
        st.faults.quota_secs = secs;
        st.faults.quota_header = retry_after_header;
    }

    /// The next request gets exactly `answer` (queued after earlier canned answers; these
    /// come before every other fault). For shapes Go sends, see [`SimAnswer`]'s constructors.
    pub fn answer_next(&self, answer: SimAnswer) {
        self.shared.lock().faults.answers.push_back(answer);
    }

    /// How 429s are written from now on: `statusCode` as a string or a number, with or
    /// without `Retry-After` (go-api.md: both are seen).
    pub fn set_rate_limit_style(&self, style: RateLimitStyle) {
        self.shared.lock().rate_limit_style = style;
    }

    /// Revokes a subscription key (as regenerating it in Go's portal does): later requests
    /// with it get 401 "invalid subscription key". Returns whether it was known.
    pub fn revoke_subscription_key(&self, key: &str) -> bool {
        let mut st = self.shared.lock();
        let before = st.subscription_keys.len();
        st.subscription_keys.retain(|(_, k)| k != key);
        st.subscription_keys.len() != before
    }

    /// Adds a subscription key to an environment's subscription (a regenerated key).
    pub fn add_subscription_key(&self, env: Environment, key: &str) {
        self.shared.lock().subscription_keys.push((env, key.to_owned()));
    }

    /// The next `n` requests get `status` (meant for 5xx; an invalid code becomes 503).
    pub fn fail_next_5xx(&self, n: u32, status: u16) {
        let mut st = self.shared.lock();
        st.faults.status = n;
        st.faults.status_code = status;
    }

    /// The next `n` requests have their connection closed without an answer.
    pub fn drop_next(&self, n: u32) {
        self.shared.lock().faults.drop = n;
    }

    /// The next `n` requests are never answered (released, unanswered, at shutdown).
    pub fn hang_next(&self, n: u32) {
        self.shared.lock().faults.hang = n;
    }

    /// Lifetime (`expires_in`) of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// Replaces the rate limit: at most `limit` requests per subscription key in any
    /// `window`. A long window makes "N then 429" tests independent of timing.
    pub fn set_rate_limit(&self, limit: u32, window: Duration) {
        let mut st = self.shared.lock();
        st.limiter = RateLimiter::new(limit, window);
    }

    /// Cancels every pending fault and the latency.
    pub fn clear_faults(&self) {
        self.shared.lock().faults = Faults::default();
    }

    // ---- counters ----

    /// Requests that reached the token endpoint, failed ones included.
    pub fn token_requests(&self) -> u64 {
        self.shared.lock().counters.token_requests
    }

    /// Token requests whose Basic credentials named this client key.
    pub fn token_requests_for(&self, client_key: &str) -> u64 {
        self.shared.lock().counters.token_requests_by_client.get(client_key).copied().unwrap_or(0)
    }

    /// Tokens issued.
    pub fn successful_tokens(&self) -> u64 {
        self.shared.lock().counters.successful_tokens
    }

    /// Requests that reached a bearer-token API endpoint (ClientIntegrationInformation).
    /// Onboarding calls have their own counters.
    pub fn api_requests(&self) -> u64 {
        self.shared.lock().counters.api_requests
    }

    /// Requests that reached the v2 API endpoints the gateway is tested with (Customers,
    /// OutgoingInvoices, the large download and upload), refused ones included.
    pub fn v2_requests(&self) -> u64 {
        self.shared.lock().counters.v2_requests
    }

    /// The last request that reached one of those endpoints (headers and query included).
    pub fn last_v2_request(&self) -> Option<RecordedRequest> {
        self.shared.lock().counters.last_v2_request.clone()
    }

    /// Every request that reached the simulator, whatever its path (a path it does not
    /// serve included), but the onboarding approval page.
    pub fn requests_seen(&self) -> u64 {
        self.shared.lock().counters.requests_seen
    }

    /// While `on`, the v2 API endpoints refuse every bearer token with 401 (a new one too).
    pub fn reject_all_tokens(&self, on: bool) {
        self.shared.lock().reject_bearer = on;
    }

    /// Invoices `POST /v2/OutgoingInvoices` created.
    pub fn invoices_created(&self) -> u64 {
        self.shared.lock().counters.invoices_created
    }

    /// Forgets every issued token, as if they had all been revoked: API calls with them get
    /// 401 until a new token is minted.
    pub fn invalidate_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// Arrival times of token requests, oldest first (the last 100,000 requests).
    pub fn token_request_times(&self) -> Vec<Instant> {
        self.shared.lock().arrivals(Some(Endpoint::Token))
    }

    /// Arrival times of all requests, token, API and onboarding (not the approval page),
    /// oldest first.
    pub fn request_times(&self) -> Vec<Instant> {
        self.shared.lock().arrivals(None)
    }

    /// The most token requests that arrived within any rolling second.
    pub fn max_token_requests_in_any_second(&self) -> usize {
        state::max_in_window(&self.token_request_times(), Duration::from_secs(1))
    }

    /// The most requests (token and API, which share Go's limit) within any rolling second.
    pub fn max_requests_in_any_second(&self) -> usize {
        state::max_in_window(&self.request_times(), Duration::from_secs(1))
    }

    /// The last request that reached the token endpoint.
    pub fn last_token_request(&self) -> Option<RecordedRequest> {
        self.shared.lock().counters.last_token_request.clone()
    }

    /// Stops accepting, releases hung requests, lets open requests finish, and waits for
    /// the server to stop (aborting it after 5 s). Later calls return at once.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut task) = task {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "simulator stopped with an error"),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("simulator did not stop in time; aborting it");
                    task.abort();
                }
            }
        }
    }
}

/// Onboarding knobs and counters. Each knob affects only what happens after the call.
impl Sim {
    /// Whitelists a redirect URI for `env` (only its scheme, host, port and path count).
    /// Returns false (and logs a warning) if it is not an absolute http(s) URL with a host;
    /// such a URI is not whitelisted.
    pub fn allow_redirect(&self, env: Environment, uri: &str) -> bool {
        let result = self.shared.lock().onboarding.allow_redirect(env, uri);
        if let Err(e) = &result {
            tracing::warn!(environment = env.as_str(), error = %e, "simulator: redirect URI not whitelisted");
        }
        result.is_ok()
    }

    /// Narrows the clients the simulated user can reach in `env` (for approvals without an
    /// organization number) to the clients of these keys; unknown keys are ignored. Keys
    /// name clients: after a rotation the client stays reachable.
    pub fn set_user_clients<I, K>(&self, env: Environment, client_keys: I)
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let mut st = self.shared.lock();
        let ids: HashSet<String> = client_keys
            .into_iter()
            .filter_map(|k| st.clients.get(&(env, k.as_ref().to_owned())).map(|e| e.client.client_id.clone()))
            .collect();
        st.onboarding.user_clients.insert(env, ids);
    }

    /// Undoes [`Sim::set_user_clients`]: the user reaches every client of `env` again.
    pub fn reset_user_clients(&self, env: Environment) {
        self.shared.lock().onboarding.user_clients.remove(&env);
    }

    /// The outcome of the next approval: `"Success"` (the default behaviour), or any other
    /// status (`Canceled`, `NoClientAccess`, `IntegrationBlocked`, `ClientNotFound`, or an
    /// unknown one), which redirects with that status and no token.
    pub fn next_approval_status(&self, status: &str) {
        self.shared.lock().onboarding.next_status = Some(status.to_owned());
    }

    /// Lifetime of onboarding tokens issued from now on (default 10 minutes).
    pub fn set_onboarding_token_ttl(&self, ttl: Duration) {
        self.shared.lock().onboarding.token_ttl = ttl;
    }

    /// Makes every outstanding onboarding token expired now.
    pub fn expire_onboarding_tokens(&self) {
        let now = Instant::now();
        for grant in self.shared.lock().onboarding.grants.values_mut() {
            grant.expires_at = now;
        }
    }

    /// Makes every open onboarding session (`TemporaryUrl`) expired now.
    pub fn expire_onboarding_sessions(&self) {
        for session in self.shared.lock().onboarding.sessions.values_mut() {
            session.expired = true;
        }
    }

    /// The active key of the newest client with this organization number in `env`, if any.
    pub fn current_key_of(&self, env: Environment, organization_number: &str) -> Option<String> {
        let org = digits_only(organization_number);
        let st = self.shared.lock();
        st.clients
            .iter()
            .filter(|((e, _), entry)| {
                *e == env && !entry.revoked && digits_only(&entry.client.organization_number) == org
            })
            .max_by_key(|(_, entry)| entry.seq)
            .map(|((_, key), _)| key.clone())
    }

    /// Requests that reached `Onboarding/Initiate`, refused ones included.
    pub fn onboarding_initiations(&self) -> u64 {
        self.shared.lock().counters.onboarding_initiations
    }

    /// Requests that reached `Onboarding/Finalize`, refused ones included.
    pub fn onboarding_finalizations(&self) -> u64 {
        self.shared.lock().counters.onboarding_finalizations
    }

    /// The last request that reached `Onboarding/Initiate` or `Onboarding/Finalize`.
    pub fn last_onboarding_request(&self) -> Option<RecordedRequest> {
        self.shared.lock().counters.last_onboarding_request.clone()
    }
}
