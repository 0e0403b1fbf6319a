//! Simulated onboarding (go-api.md, "Onboarding"): `Onboarding/Initiate`, the approval page
//! a user's browser visits, and `Onboarding/Finalize`, with the knobs tests use to play the
//! approving user.
//!
//! The flow as simulated:
//! 1. Initiate checks the subscription key (401, gateway shape), the rate limit (429), the
//!    application key and the redirect URI (400 ProblemDetails unless its scheme, host,
//!    port and path match a whitelisted URI of that environment, the query ignored as on
//!    Go, or it is a loopback URI while `SimConfig::loopback_redirects` is on: Go lets an
//!    integration test against `localhost`), then opens a session valid for 15 minutes and
//!    answers its `TemporaryUrl`.
//! 2. `GET {TemporaryUrl}`: the simulated user approves at once. The sim answers `302`
//!    to the redirect URI as given (query kept) plus `status` and, for `Success` only,
//!    `token`. Each approved client gets a **new** client key (its old keys are revoked),
//!    as Go issues a new key on every activation. The session is then used up.
//! 3. Finalize trades a valid, unused, unexpired token (of the same environment) for the
//!    approved clients' keys; anything else gets 400 ProblemDetails "Invalid onboarding
//!    token". Tokens are single use and live 10 minutes by default.
//!
//! Which clients are approved: with `ClientOrganizationNo`, the one client of that number
//! (`ClientNotFound` if none); without, every client of the environment the user can reach
//! (all by default; [`Sim::set_user_clients`] narrows it; `NoClientAccess` if none).
//!
//! Invariant: nothing here logs a key or a token; `OnboardingState`'s `Debug` prints counts.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use url::Url;

use super::answers::{RateLimitStyle, SimAnswer, random_trace_id};
use super::handlers::{environment_and_rest, gateway_checks, header_str};
use super::state::{Endpoint, State};
use super::{RecordedRequest, Shared, Sim, SimClient};
use crate::domain::Environment;

/// The statuses Go sends back on the redirect (go-api.md, "Onboarding" step 3). Only
/// `Success` carries a token.
pub const APPROVAL_STATUSES: [&str; 5] =
    ["Success", "Canceled", "ClientNotFound", "NoClientAccess", "IntegrationBlocked"];
/// The e-mail address of the simulated approving user (`UserEmail` in Finalize).
pub const SIM_USER_EMAIL: &str = "approver@sim.poweroffice.invalid";

/// How long a `TemporaryUrl` stays valid.
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Default lifetime of an onboarding token (Go does not document it; go-api.md).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);
/// Sessions or tokens kept before expired ones are pruned.
const PRUNE_ABOVE: usize = 10_000;
const PATH_PREFIX: &str = "/onboarding/approve/";

/// Onboarding's part of the simulator state.
pub(super) struct OnboardingState {
    /// Whitelisted redirect URIs (query and fragment dropped).
    redirects: Vec<(Environment, Url)>,
    /// Every loopback redirect URI is accepted too (`SimConfig::loopback_redirects`).
    pub(super) loopback: bool,
    /// Client ids the simulated user can reach, per environment; absent means all.
    user_clients: HashMap<Environment, HashSet<String>>,
    /// The outcome of the next approval, if a test chose one.
    next_status: Option<String>,
    token_ttl: Duration,
    sessions: HashMap<String, Session>,
    grants: HashMap<String, Grant>,
}

impl Default for OnboardingState {
    fn default() -> Self {
        Self {
            redirects: Vec::new(),
            loopback: false,
            user_clients: HashMap::new(),
            next_status: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            sessions: HashMap::new(),
            grants: HashMap::new(),
        }
    }
}

impl fmt::Debug for OnboardingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Grants hold client keys and are keyed by tokens: counts only.
        f.debug_struct("OnboardingState")
            .field("redirects", &self.redirects.len())
            .field("sessions", &self.sessions.len())
            .field("grants", &self.grants.len())
            .finish_non_exhaustive()
    }
}

impl OnboardingState {
    /// Whitelists `uri` for `env`: an absolute http(s) URL with a host.
    pub(super) fn allow_redirect(&mut self, env: Environment, uri: &str) -> io::Result<()> {
        let url = redirect_url(uri).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a redirect URI must be an absolute http(s) URL with a host")
        })?;
        self.redirects.push((env, comparable(url)));
        Ok(())
    }

    /// Whether `uri` matches a whitelisted URI of `env` by scheme, host, port and path, or
    /// is a loopback URI while those are accepted.
    fn redirect_allowed(&self, env: Environment, uri: &Url) -> bool {
        if self.loopback && is_loopback(uri) {
            return true;
        }
        let uri = comparable(uri.clone());
        self.redirects.iter().any(|(e, allowed)| *e == env && *allowed == uri)
    }
}

/// An onboarding session opened by Initiate.
struct Session {
    environment: Environment,
    /// As given, query included.
    redirect_uri: Url,
    organization_no: Option<String>,
    created: Instant,
    /// Set by [`Sim::expire_onboarding_sessions`].
    expired: bool,
}

impl Session {
    fn valid_at(&self, now: Instant) -> bool {
        !self.expired && now.saturating_duration_since(self.created) < SESSION_LIFETIME
    }
}

/// What an onboarding token buys: the approved clients and their new keys.
struct Grant {
    environment: Environment,
    /// `(client key, client)` per approved client.
    clients: Vec<(String, SimClient)>,
    expires_at: Instant,
}

/// `POST /v2/Onboarding/Initiate`.
pub(super) fn initiate(
    shared: &Shared,
    env: Environment,
    arrived: Instant,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let now = Instant::now();
    let mut st = shared.lock();
    if let Some(refused) = gateway_checks(&mut st, env, Endpoint::OnboardingInitiate, arrived, headers) {
        return refused;
    }
    let obj = match json_body(headers, body) {
        Ok(obj) => obj,
        Err(e) => return e.response(),
    };
    match get_ci(&obj, "ApplicationKey") {
        Some(Value::String(k)) if k.trim().eq_ignore_ascii_case(&st.application_key) => {}
        _ => return invalid_request("Invalid application key", "The application key is unknown."),
    }
    let redirect_uri = match get_ci(&obj, "RedirectUri") {
        Some(Value::String(u)) => redirect_url(u.trim()),
        _ => None,
    };
    let Some(redirect_uri) = redirect_uri.filter(|u| st.onboarding.redirect_allowed(env, u)) else {
        let detail = if st.onboarding.loopback {
            "The redirect URI is not an absolute URL whitelisted for this integration. This simulator accepts any \
             loopback URI (http://localhost:PORT/PATH, http://127.0.0.1:PORT/PATH) and those given with \
             `pogo-vault sim --redirect-uri URL`."
        } else {
            "The redirect URI is not an absolute URL whitelisted for this integration."
        };
        return invalid_request("Invalid redirect URI", detail);
    };
    let organization_no = match get_ci(&obj, "ClientOrganizationNo") {
        None | Some(Value::Null) => None,
        // Go refuses an empty string where the field is optional (go-api.md, "Errors elsewhere").
        Some(Value::String(s)) if s.trim().is_empty() => {
            return validation_error("ClientOrganizationNo", "The ClientOrganizationNo field is required.");
        }
        Some(Value::String(s)) => Some(digits_only(s)).filter(|s| !s.is_empty()),
        Some(_) => return invalid_request("Invalid request", "ClientOrganizationNo must be a string."),
    };
    let Ok(id) = random_hex(16) else {
        return internal_error();
    };
    if st.onboarding.sessions.len() >= PRUNE_ABOVE {
        st.onboarding.sessions.retain(|_, s| s.valid_at(now));
    }
    st.onboarding
        .sessions
        .insert(id.clone(), Session { environment: env, redirect_uri, organization_no, created: now, expired: false });
    let prefix = match env {
        Environment::Production => "",
        Environment::Demo => "/Demo",
    };
    let valid_until = OffsetDateTime::now_utc() + SESSION_LIFETIME;
    Json(json!({
        "TemporaryUrl": format!("http://{}{prefix}{PATH_PREFIX}{id}", st.addr),
        "ValidUntilDateTimeOffset": dotnet_time(valid_until),
    }))
    .into_response()
}

/// Matches `GET {/Demo}/onboarding/approve/{session}` (any case): the environment and the
/// session id (lowercase hex).
pub(super) fn approval_route(method: &Method, path: &str) -> Option<(Environment, String)> {
    if method != Method::GET {
        return None;
    }
    let (env, rest) = environment_and_rest(path);
    let id = rest.strip_prefix(PATH_PREFIX)?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (env, id.to_owned()))
}

/// `GET {TemporaryUrl}`: the simulated user approves (or refuses, per the knobs) and is
/// redirected back. The session is used up either way.
pub(super) fn approve(shared: &Shared, env: Environment, session_id: &str) -> Response {
    let now = Instant::now();
    let mut st = shared.lock();
    let known = st.onboarding.sessions.get(session_id).is_some_and(|s| s.environment == env);
    let Some(session) = known.then(|| st.onboarding.sessions.remove(session_id)).flatten() else {
        return page(StatusCode::NOT_FOUND, "This onboarding link is unknown or was already used.");
    };
    if !session.valid_at(now) {
        return page(StatusCode::GONE, "This onboarding link has expired. Start the activation again.");
    }
    let outcome = match st.onboarding.next_status.take() {
        Some(status) if status != "Success" => Err(status),
        _ => approved_clients(&st, env, session.organization_no.as_deref()).map_err(str::to_owned),
    };
    let mut location = session.redirect_uri;
    match outcome {
        Err(status) => {
            location.query_pairs_mut().append_pair("status", &status);
        }
        Ok(approved) => {
            let Ok(token) = random_token() else {
                return internal_error();
            };
            let mut clients = Vec::with_capacity(approved.len());
            for client in approved {
                match activate(&mut st, env, &client) {
                    Ok(key) => clients.push((key, client)),
                    Err(_) => return internal_error(),
                }
            }
            let expires_at = now + st.onboarding.token_ttl;
            if st.onboarding.grants.len() >= PRUNE_ABOVE {
                st.onboarding.grants.retain(|_, g| g.expires_at > now);
            }
            st.onboarding.grants.insert(token.clone(), Grant { environment: env, clients, expires_at });
            location.query_pairs_mut().append_pair("status", "Success").append_pair("token", &token);
        }
    }
    let Ok(value) = HeaderValue::from_str(location.as_str()) else {
        return internal_error();
    };
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert(header::LOCATION, value);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /v2/Onboarding/Finalize`.
pub(super) fn finalize(
    shared: &Shared,
    env: Environment,
    arrived: Instant,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let now = Instant::now();
    let mut st = shared.lock();
    if let Some(refused) = gateway_checks(&mut st, env, Endpoint::OnboardingFinalize, arrived, headers) {
        return refused;
    }
    let obj = match json_body(headers, body) {
        Ok(obj) => obj,
        Err(e) => return e.response(),
    };
    let Some(Value::String(token)) = get_ci(&obj, "OnboardingToken") else {
        return invalid_request("Invalid request", "OnboardingToken is required.");
    };
    // Single use: a token leaves the table when redeemed (or found expired). A token of the
    // other environment is unknown here and stays redeemable there.
    let grant = match st.onboarding.grants.remove(token.as_str()) {
        Some(g) if g.environment != env => {
            st.onboarding.grants.insert(token.clone(), g);
            None
        }
        Some(g) if g.expires_at > now => Some(g),
        _ => None,
    };
    let Some(grant) = grant else {
        return invalid_request(
            "Invalid onboarding token",
            "The onboarding token is unknown, expired or already used. Start the onboarding again.",
        );
    };
    let clients: Vec<Value> = grant
        .clients
        .iter()
        .map(|(key, c)| {
            json!({"ClientKey": key, "ClientName": c.name, "ClientOrganizationNumber": c.organization_number})
        })
        .collect();
    Json(json!({"OnboardedClientsInformation": clients, "UserEmail": SIM_USER_EMAIL})).into_response()
}

/// Why a request body was refused.
enum BodyError {
    /// Not JSON by its `Content-Type`: 415.
    MediaType,
    /// Not a JSON object: 400.
    NotAnObject,
}

impl BodyError {
    fn response(self) -> Response {
        match self {
            Self::MediaType => {
                problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type", "Send application/json.")
            }
            Self::NotAnObject => invalid_request("Invalid request", "The request body must be a JSON object."),
        }
    }
}

/// The body as a JSON object.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    let json_type = header_str(headers, header::CONTENT_TYPE.as_str())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m == "text/json" || m.ends_with("+json"));
    if !json_type {
        return Err(BodyError::MediaType);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        _ => Err(BodyError::NotAnObject),
    }
}

/// Which clients the user approves; else the refusal status.
fn approved_clients(
    st: &State,
    env: Environment,
    organization_no: Option<&str>,
) -> Result<Vec<SimClient>, &'static str> {
    let reachable = |c: &SimClient| st.onboarding.user_clients.get(&env).is_none_or(|ids| ids.contains(&c.client_id));
    let clients = clients_of(st, env);
    match organization_no {
        Some(org) => {
            let matching: Vec<SimClient> =
                clients.into_iter().filter(|c| digits_only(&c.organization_number) == org).collect();
            if matching.is_empty() {
                return Err("ClientNotFound");
            }
            // Organization numbers should be unique; if tests share one, the newest wins.
            matching.into_iter().rev().find(|c| reachable(c)).map(|c| vec![c]).ok_or("NoClientAccess")
        }
        None => {
            let approved: Vec<SimClient> = clients.into_iter().filter(|c| reachable(c)).collect();
            if approved.is_empty() { Err("NoClientAccess") } else { Ok(approved) }
        }
    }
}

/// The clients of `env` (one per `client_id`, revoked keys included, since a customer who
/// deleted the integration may activate it again), oldest first, each as its newest key
/// describes it.
fn clients_of(st: &State, env: Environment) -> Vec<SimClient> {
    // client id -> (first seq, newest seq, client as of the newest key)
    let mut by_id: HashMap<&str, (u64, u64, &SimClient)> = HashMap::new();
    for ((e, _), entry) in &st.clients {
        if *e != env {
            continue;
        }
        by_id
            .entry(entry.client.client_id.as_str())
            .and_modify(|(first, newest, client)| {
                *first = (*first).min(entry.seq);
                if entry.seq > *newest {
                    *newest = entry.seq;
                    *client = &entry.client;
                }
            })
            .or_insert((entry.seq, entry.seq, &entry.client));
    }
    let mut clients: Vec<(u64, SimClient)> =
        by_id.into_values().map(|(first, _, client)| (first, client.clone())).collect();
    clients.sort_by_key(|(first, _)| *first);
    clients.into_iter().map(|(_, c)| c).collect()
}

/// Activates the integration for a client: a fresh key, its old keys revoked (so they now
/// get 400 `invalid_client`, while tokens already issued live out their time).
fn activate(st: &mut State, env: Environment, client: &SimClient) -> Result<String, getrandom::Error> {
    let key = random_guid()?;
    for ((e, _), entry) in st.clients.iter_mut() {
        if *e == env && entry.client.client_id == client.client_id {
            entry.revoked = true;
        }
    }
    st.insert_client(env, key.clone(), client.clone());
    Ok(key)
}

/// An absolute http(s) URL with a host, without credentials.
fn redirect_url(s: &str) -> Option<Url> {
    let u = Url::parse(s).ok()?;
    let ok = matches!(u.scheme(), "http" | "https")
        && u.host_str().is_some_and(|h| !h.is_empty())
        && u.username().is_empty()
        && u.password().is_none();
    ok.then_some(u)
}

/// `localhost` (or a name under it), `127.0.0.0/8` or `[::1]`.
fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The parts Go compares: scheme, host, port and path (the url crate lowercases scheme and
/// host and drops a default port, so equality of what is left is the comparison).
fn comparable(mut u: Url) -> Url {
    u.set_query(None);
    u.set_fragment(None);
    u
}

fn digits_only(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Looks up a JSON key, the exact spelling first, then ignoring ASCII case.
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// A .NET `DateTimeOffset` as Go writes it: seven fractional digits and a numeric offset.
fn dotnet_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)?;
    Ok(b)
}

fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A random (version 4) GUID, lowercase, as Go's client keys look.
fn random_guid() -> Result<String, getrandom::Error> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// 256 random bits, base64url: safe in a query string as is.
fn random_token() -> Result<String, getrandom::Error> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// An RFC 9457 ProblemDetails answer, as ASP.NET (Go since .NET 8) writes it: camelCase,
/// with a `traceId`.
fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    SimAnswer::problem(status.as_u16(), title, detail, &[], Some(&random_trace_id()), false).into_response()
}

fn invalid_request(title: &str, detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, title, detail)
}

/// ASP.NET's model-validation answer: 400 with an `errors` map naming the field.
fn validation_error(field: &str, message: &str) -> Response {
    let title = "One or more validation errors occurred.";
    SimAnswer::problem(400, title, "", &[(field, message)], Some(&random_trace_id()), false).into_response()
}

/// 429 for the onboarding endpoints: ProblemDetails plus `Retry-After` (or not, as the
/// rate-limit style says).
pub(super) fn rate_limited(style: RateLimitStyle, retry_after_secs: u64) -> Response {
    let with_header = style.retry_after_header;
    let mut r = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        &format!("Rate limit is exceeded. Try again in {retry_after_secs} seconds."),
    );
    if with_header {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    r
}

fn internal_error() -> Response {
    problem(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", "The simulator could not complete the request.")
}

/// A page for the user's browser.
fn page(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_route_takes_hex_ids_in_either_environment() {
        let get = Method::GET;
        assert_eq!(approval_route(&get, "/onboarding/approve/ab12"), Some((Environment::Production, "ab12".into())));
        assert_eq!(approval_route(&get, "/Demo/Onboarding/Approve/AB12/"), Some((Environment::Demo, "ab12".into())));
        assert_eq!(approval_route(&get, "/onboarding/approve/"), None);
        assert_eq!(approval_route(&get, "/onboarding/approve/xyz"), None);
        assert_eq!(approval_route(&get, "/onboarding/approve/ab/cd"), None);
        assert_eq!(approval_route(&Method::POST, "/onboarding/approve/ab12"), None);
    }

    #[test]
    fn redirects_compare_scheme_host_port_and_path_only() {
        let mut o = OnboardingState::default();
        o.allow_redirect(Environment::Demo, "https://App.Example/cb?x=1").expect("ok");
        o.allow_redirect(Environment::Demo, "http://localhost:8080/cb").expect("ok");
        let ok = |s: &str| o.redirect_allowed(Environment::Demo, &redirect_url(s).expect("url"));
        assert!(ok("https://app.example/cb"));
        assert!(ok("https://app.example:443/cb?state=abc#f"));
        assert!(ok("http://localhost:8080/cb?state=1"));
        assert!(!ok("http://app.example/cb"), "scheme");
        assert!(!ok("https://evil.example/cb"), "host");
        assert!(!ok("https://app.example:8443/cb"), "port");
        assert!(!ok("https://app.example/cb/other"), "path");
        assert!(!ok("http://localhost:8081/cb"), "port");
        assert!(!o.redirect_allowed(Environment::Production, &redirect_url("https://app.example/cb").expect("url")));
        for bad in ["/cb", "ftp://x/cb", "https://u:p@x/cb", "not a url"] {
            assert!(o.allow_redirect(Environment::Demo, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_redirects_are_accepted_only_when_allowed() {
        let mut o = OnboardingState::default();
        let ok = |o: &OnboardingState, s: &str| o.redirect_allowed(Environment::Demo, &redirect_url(s).expect("url"));
        let loopback =
            ["http://127.0.0.1:9999/callback", "http://localhost:8080/cb?x=1", "https://[::1]/a", "http://127.8.0.1/"];
        for u in loopback {
            assert!(!ok(&o, u), "off by default: {u}");
        }
        o.loopback = true;
        for u in loopback {
            assert!(ok(&o, u), "{u}");
        }
        for u in ["https://integrator.example/cb", "http://localhost.example/cb", "http://128.0.0.1/cb"] {
            assert!(!ok(&o, u), "not loopback: {u}");
        }
    }

    #[test]
    fn generated_values_have_gos_shapes() {
        let g = random_guid().expect("random");
        assert!(crate::crypto::ClientKey::parse(&g).is_ok(), "a GUID");
        assert_eq!(&g[14..15], "4");
        assert_ne!(random_guid().expect("random"), g);
        let t = random_token().expect("random");
        assert_eq!(t.len(), 43);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let when = OffsetDateTime::from_unix_timestamp_nanos(1_714_557_600_123_456_789).expect("time");
        assert_eq!(dotnet_time(when), "2024-05-01T10:00:00.1234567+00:00");
    }
}
