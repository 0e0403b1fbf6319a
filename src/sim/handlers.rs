//! The simulator's HTTP surface: a route table and one handler per endpoint.
//!
//! Every request goes through [`dispatch`]: route (path case ignored, `/Demo` prefix picks
//! the demo environment), record, apply a pending fault, then the endpoint. The onboarding
//! approval page (the user's browser, not an API call) skips recording and faults; the
//! onboarding endpoints themselves are in `onboarding`, the gateway's checks both use in
//! `gateway`. Endpoints check
//! in the order a real gateway then OAuth server would: subscription key, rate limit,
//! request shape, credentials.
//!
//! Logs name environment, endpoint and status; never a key, a token or a body.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::answers::SimAnswer;
use super::conn::ConnHandle;
use super::gateway::{environment_and_rest, gateway_checks, gateway_error, header_str, rate_limited};
use super::state::{Endpoint, Fault, IssuedToken, Shared};
use super::types::{RecordedRequest, SimClient};
use super::{api, onboarding, problem};
use crate::domain::Environment;

/// Privileges the simulated integration holds for every client.
const VALID_PRIVILEGES: [&str; 3] = ["ClientIntegrationInformation", "Customer_Full", "Invoice_Full"];

/// Subscriptions every simulated client has.
const ACTIVE_CLIENT_SUBSCRIPTIONS: [&str; 1] = ["Go Complete"];

/// The route table: `(method, path after the environment prefix, lowercased)`. The
/// approval page (`GET /onboarding/approve/{session}`) carries an id, so
/// `onboarding::approval_route` matches it before this table is consulted.
const ROUTES: [(&str, &str, Endpoint); 8] = [
    ("POST", "/oauth/token", Endpoint::Token),
    ("GET", "/v2/clientintegrationinformation", Endpoint::ClientIntegrationInformation),
    ("POST", "/v2/onboarding/initiate", Endpoint::OnboardingInitiate),
    ("POST", "/v2/onboarding/finalize", Endpoint::OnboardingFinalize),
    ("GET", "/v2/customers", Endpoint::Customers),
    ("POST", "/v2/outgoinginvoices", Endpoint::OutgoingInvoices),
    ("GET", "/v2/sim/download", Endpoint::Download),
    ("POST", "/v2/sim/upload", Endpoint::Upload),
];

/// Largest body read whole (every endpoint but the streamed upload); larger is refused.
const MAX_READ_BODY: usize = 1024 * 1024;

/// Maps a request to its environment and endpoint. Path casing does not matter (as on Go);
/// one trailing `/` is ignored.
pub(super) fn route(method: &Method, path: &str) -> Option<(Environment, Endpoint)> {
    let (env, rest) = environment_and_rest(path);
    ROUTES.iter().find(|(m, p, _)| *m == method.as_str() && *p == rest).map(|(_, _, endpoint)| (env, *endpoint))
}

pub(super) async fn dispatch(
    AxumState(shared): AxumState<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some((env, session)) = onboarding::approval_route(&method, uri.path()) {
        let response = onboarding::approve(&shared, env, &session);
        tracing::debug!(environment = env.as_str(), status = response.status().as_u16(), "simulator approval page");
        return response;
    }
    shared.lock().counters.requests_seen += 1;
    let Some((env, endpoint)) = route(&method, uri.path()) else {
        return gateway_error(StatusCode::NOT_FOUND, "Resource not found");
    };
    let arrived = Instant::now();
    // The upload streams; every other endpoint reads its (small) body whole.
    let (body, stream) = if endpoint == Endpoint::Upload {
        (Bytes::new(), Some(body))
    } else {
        match axum::body::to_bytes(body, MAX_READ_BODY).await {
            Ok(b) => (b, None),
            Err(_) => return gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
        }
    };
    // Record and take the fault in one step, so a knob turned later affects only later requests.
    let (latency, fault) = {
        let mut st = shared.lock();
        st.record_arrival(arrived, endpoint);
        if endpoint == Endpoint::Token {
            if let Some((_, client_key)) = basic_credentials(&headers) {
                *st.counters.token_requests_by_client.entry(client_key).or_default() += 1;
            }
            st.counters.last_token_request = Some(RecordedRequest::new(env, &method, &uri, &headers, &body));
        }
        if endpoint.is_onboarding() {
            st.counters.last_onboarding_request = Some(RecordedRequest::new(env, &method, &uri, &headers, &body));
        }
        if endpoint.is_v2_api() {
            st.counters.last_v2_request = Some(RecordedRequest::new(env, &method, &uri, &headers, &[]));
        }
        (st.faults.latency, st.faults.take())
    };
    if !latency.is_zero() && !shared.sleep_unless_shutdown(latency).await {
        conn.kill();
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let response = match fault {
        Some(Fault::Drop) => {
            tracing::debug!(peer = %conn.peer, "simulator drops the connection");
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(Fault::Hang) => {
            shared.wait_for_shutdown().await;
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            gateway_error(status, status.canonical_reason().unwrap_or("Simulated failure"))
        }
        Some(Fault::Answer(a)) => a.into_response(),
        Some(Fault::Quota(secs, header)) => SimAnswer::quota_exceeded(secs, header).into_response(),
        Some(Fault::RateLimited(secs)) if endpoint.is_onboarding() => {
            problem::rate_limited(shared.lock().rate_limit_style, secs)
        }
        Some(Fault::RateLimited(secs)) => rate_limited(&shared.lock(), secs),
        None => match endpoint {
            Endpoint::Token => token(&shared, env, arrived, &headers, &body),
            Endpoint::ClientIntegrationInformation => client_integration_information(&shared, env, arrived, &headers),
            Endpoint::OnboardingInitiate => onboarding::initiate(&shared, env, arrived, &headers, &body),
            Endpoint::OnboardingFinalize => onboarding::finalize(&shared, env, arrived, &headers, &body),
            Endpoint::Customers => api::customers(&shared, env, arrived, &headers, &uri),
            Endpoint::OutgoingInvoices => api::outgoing_invoice(&shared, env, arrived, &headers, &body),
            Endpoint::Download => api::download(&shared, env, arrived, &headers, &uri),
            Endpoint::Upload => {
                let stream = stream.unwrap_or_default();
                api::upload(&shared, env, arrived, &headers, stream).await
            }
        },
    };
    tracing::debug!(environment = env.as_str(), ?endpoint, status = response.status().as_u16(), "simulator answered");
    response
}

/// `POST /OAuth/Token`. The rate limit counts requests at `arrived`, as the gateway does.
fn token(shared: &Shared, env: Environment, arrived: Instant, headers: &HeaderMap, body: &[u8]) -> Response {
    let now = Instant::now();
    let mut st = shared.lock();
    if let Some(refused) = gateway_checks(&mut st, env, Endpoint::Token, arrived, headers) {
        return refused;
    }
    if !is_form(headers) {
        return oauth_error("invalid_request", "Content-Type must be application/x-www-form-urlencoded.");
    }
    match grant_type(body) {
        Ok(g) if g == "client_credentials" => {}
        Ok(_) => return oauth_error("unsupported_grant_type", "Only client_credentials is supported."),
        Err(why) => return oauth_error("invalid_request", why),
    }
    let client = match basic_credentials(headers) {
        Some((app, key)) if app == st.application_key => match st.clients.get(&(env, key)) {
            Some(entry) if !entry.revoked => entry.client.clone(),
            _ => return invalid_client(),
        },
        _ => return invalid_client(),
    };
    let lifetime = st.token_lifetime;
    let Ok(jwt) = mint_jwt(env, &client, lifetime) else {
        return gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
    };
    st.store_token(jwt.clone(), IssuedToken { environment: env, client, expires_at: now + lifetime }, now);
    st.counters.successful_tokens += 1;
    let mut response =
        Json(json!({"access_token": jwt, "token_type": "bearer", "expires_in": lifetime.as_secs()})).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /v2/ClientIntegrationInformation`.
fn client_integration_information(
    shared: &Shared,
    env: Environment,
    arrived: Instant,
    headers: &HeaderMap,
) -> Response {
    let now = Instant::now();
    let mut st = shared.lock();
    if let Some(refused) = gateway_checks(&mut st, env, Endpoint::ClientIntegrationInformation, arrived, headers) {
        return refused;
    }
    let issued = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .and_then(|(_, token)| st.tokens.get(token.trim()))
        .filter(|t| t.environment == env && t.expires_at > now);
    let Some(issued) = issued else {
        let mut r = gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized. Access token is missing or invalid.");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        return r;
    };
    let client_id = match issued.client.client_id.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(issued.client.client_id.clone()),
    };
    Json(json!({
        "ClientId": client_id,
        "ClientName": issued.client.name,
        "ClientOrganizationNumber": issued.client.organization_number,
        "ActiveClientSubscriptions": ACTIVE_CLIENT_SUBSCRIPTIONS,
        "ValidPrivileges": VALID_PRIVILEGES,
        "InvalidPrivileges": [],
    }))
    .into_response()
}

/// `Authorization: Basic base64(id ":" secret)` decoded; `None` if absent or malformed.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let (scheme, encoded) = header_str(headers, header::AUTHORIZATION.as_str())?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// The media type is `application/x-www-form-urlencoded` (parameters such as charset allowed).
fn is_form(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// The single `grant_type` of a form body (RFC 6749 §3.2: parameters must not repeat).
pub(super) fn grant_type(body: &[u8]) -> Result<String, &'static str> {
    let body = std::str::from_utf8(body).map_err(|_| "The request body is not UTF-8.")?;
    let mut found = None;
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k)? == "grant_type" {
            if found.is_some() {
                return Err("grant_type is given more than once.");
            }
            found = Some(form_decode(v)?);
        }
    }
    found.ok_or("The grant_type parameter is missing.")
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("Malformed percent-encoding.")?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "The form is not UTF-8.")
}

/// A JWT-shaped token: real header and claims, random bytes for a signature (nothing
/// verifies it; the simulator looks tokens up in its table). `jti` makes each unique.
pub(super) fn mint_jwt(env: Environment, client: &SimClient, lifetime: Duration) -> Result<String, getrandom::Error> {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti)?;
    let mut signature = [0u8; 64];
    getrandom::fill(&mut signature)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "pogo-vault-sim"});
    let claims = json!({
        "iss": "https://goapi.poweroffice.net/sim",
        "aud": "goapi",
        "goClientId": client.client_id,
        "goClientName": client.name,
        "goClientOrganizationNumber": client.organization_number,
        "goEnvironment": env.as_str(),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime.as_secs(),
        "jti": URL_SAFE_NO_PAD.encode(jti),
    });
    Ok(format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The OAuth server's error shape (RFC 6749 §5.2); Go answers 400 for all of them.
fn oauth_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error, "error_description": description}))).into_response()
}

fn invalid_client() -> Response {
    oauth_error(
        "invalid_client",
        "Client integration not found. The client key is unknown, deleted or belongs to another environment.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_ignore_case_and_pick_the_environment() {
        let post = Method::POST;
        assert_eq!(route(&post, "/OAuth/Token"), Some((Environment::Production, Endpoint::Token)));
        assert_eq!(route(&post, "/oauth/token/"), Some((Environment::Production, Endpoint::Token)));
        assert_eq!(route(&post, "/Demo/OAuth/Token"), Some((Environment::Demo, Endpoint::Token)));
        assert_eq!(route(&post, "/DEMO/OAUTH/TOKEN"), Some((Environment::Demo, Endpoint::Token)));
        assert_eq!(
            route(&Method::GET, "/demo/v2/ClientIntegrationInformation"),
            Some((Environment::Demo, Endpoint::ClientIntegrationInformation))
        );
        assert_eq!(route(&Method::GET, "/OAuth/Token"), None);
        assert_eq!(route(&post, "/Demoo/OAuth/Token"), None);
        assert_eq!(route(&post, "/Demo"), None);
        assert_eq!(route(&post, "/v2/OAuth/Token"), None);
        assert_eq!(
            route(&post, "/Demo/v2/Onboarding/Initiate"),
            Some((Environment::Demo, Endpoint::OnboardingInitiate))
        );
        assert_eq!(
            route(&post, "/V2/ONBOARDING/FINALIZE/"),
            Some((Environment::Production, Endpoint::OnboardingFinalize))
        );
        assert_eq!(route(&Method::GET, "/v2/Onboarding/Initiate"), None);
    }

    #[test]
    fn grant_type_parsing() {
        assert_eq!(grant_type(b"grant_type=client_credentials").as_deref(), Ok("client_credentials"));
        assert_eq!(grant_type(b"grant_type=client%5Fcredentials&x=1").as_deref(), Ok("client_credentials"));
        assert_eq!(grant_type(b"grant_type=password").as_deref(), Ok("password"));
        assert!(grant_type(b"").is_err());
        assert!(grant_type(b"grant_type=a&grant_type=b").is_err());
        assert!(grant_type(b"grant_type=%zz").is_err());
        assert!(grant_type(&[0xff]).is_err());
    }

    #[test]
    fn basic_credentials_decode() {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode("app:key:with:colons"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).expect("ascii"));
        assert_eq!(basic_credentials(&h), Some(("app".into(), "key:with:colons".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn jwts_are_shaped_and_unique() {
        let c = SimClient { client_id: "42".into(), name: "Acme".into(), organization_number: "123456789".into() };
        let a = mint_jwt(Environment::Demo, &c, Duration::from_secs(60)).expect("random");
        let b = mint_jwt(Environment::Demo, &c, Duration::from_secs(60)).expect("random");
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url")).expect("json claims");
        assert_eq!(claims["goClientId"], "42");
        assert_eq!(claims["goClientName"], "Acme");
        let exp = claims["exp"].as_u64().expect("exp");
        let iat = claims["iat"].as_u64().expect("iat");
        assert_eq!(exp - iat, 60);
    }
}
