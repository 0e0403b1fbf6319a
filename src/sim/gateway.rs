//! What the simulator's API endpoints share, as the gateway in front of Go does it: the
//! environment a path selects, header reading, the gateway's error shape, and its checks
//! (subscription key, then the rate limit) in the gateway's order. Used by the token and
//! API endpoints (`handlers`) and the onboarding endpoints (`onboarding`).

use std::time::Instant;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::answers::SimAnswer;
use super::problem;
use super::state::{Endpoint, State};
use crate::domain::Environment;

pub(super) const SUBSCRIPTION_KEY_HEADER: &str = "ocp-apim-subscription-key";

/// The environment a path selects and the rest of the path, lowercased, with one trailing
/// `/` dropped.
pub(super) fn environment_and_rest(path: &str) -> (Environment, String) {
    let lower = path.to_ascii_lowercase();
    let lower = lower.strip_suffix('/').unwrap_or(&lower);
    match lower.strip_prefix("/demo") {
        Some(rest) if rest.starts_with('/') => (Environment::Demo, rest.to_owned()),
        _ => (Environment::Production, lower.to_owned()),
    }
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The API gateway's error shape.
pub(super) fn gateway_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"statusCode": status.as_u16(), "message": message}))).into_response()
}

/// The gateway's checks, in its order: a subscription key at all (401 "missing"), a valid
/// one (401 "invalid"), then the rate limit (429). The limit is per subscription, not per
/// key: the primary and secondary key of an environment share one budget, as on Go.
pub(super) fn gateway_checks(
    st: &mut State,
    env: Environment,
    endpoint: Endpoint,
    arrived: Instant,
    headers: &HeaderMap,
) -> Option<Response> {
    let Some(key) = header_str(headers, SUBSCRIPTION_KEY_HEADER) else {
        return Some(SimAnswer::subscription_key_missing().into_response());
    };
    if !st.subscription_known(env, key) {
        return Some(SimAnswer::subscription_key_invalid().into_response());
    }
    if st.limiter.admit(env.as_str(), arrived) {
        return None;
    }
    // The onboarding API answers its 429 as ProblemDetails (go-api.md, "Onboarding").
    Some(if endpoint.is_onboarding() { problem::rate_limited(st.rate_limit_style, 1) } else { rate_limited(st, 1) })
}

/// The gateway's 429, in the configured style.
pub(super) fn rate_limited(st: &State, retry_after_secs: u64) -> Response {
    SimAnswer::rate_limited(retry_after_secs, st.rate_limit_style).into_response()
}
