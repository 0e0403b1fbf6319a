//! Simulated onboarding (go-api.md, "Onboarding"): `Onboarding/Initiate`, the approval page
//! a user's browser visits, and `Onboarding/Finalize`. The knobs tests use to play the
//! approving user are methods of [`Sim`](super::Sim) (`mod.rs`); the sessions, grants and
//! redirect whitelist they act on are in `onboarding_state`.
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
//! (all by default; [`Sim::set_user_clients`](super::Sim::set_user_clients) narrows it; `NoClientAccess` if none).
//!
//! Invariant: nothing here logs a key or a token; `OnboardingState`'s `Debug` prints counts.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::gateway::{environment_and_rest, gateway_checks, header_str};
use super::onboarding_state::{Grant, SESSION_LIFETIME, Session, redirect_url};
use super::problem::{internal_error, invalid_request, problem, validation_error};
use super::state::{Endpoint, Shared, State};
use super::types::SimClient;
use crate::domain::Environment;

/// The statuses Go sends back on the redirect (go-api.md, "Onboarding" step 3). Only
/// `Success` carries a token.
pub const APPROVAL_STATUSES: [&str; 5] =
    ["Success", "Canceled", "ClientNotFound", "NoClientAccess", "IntegrationBlocked"];

/// The e-mail address of the simulated approving user (`UserEmail` in Finalize).
pub const SIM_USER_EMAIL: &str = "approver@sim.poweroffice.invalid";

/// Sessions or tokens kept before expired ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

const PATH_PREFIX: &str = "/onboarding/approve/";

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

pub(super) fn digits_only(s: &str) -> String {
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

/// A page for the user's browser.
fn page(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
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
