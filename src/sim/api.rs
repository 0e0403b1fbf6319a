//! A few of Go's v2 API endpoints, so the vault's gateway is tested end to end: each checks
//! the gateway's subscription key and rate limit (`gateway`), then the bearer token, as Go
//! does, and counts what it served.
//!
//! - `GET /v2/Customers?page=N&pageSize=M`: the token's client's customers (120 of them),
//!   one page at a time (1-based; `pageSize` 1 to 500, default 50), with `X-Total-Count`.
//!   Go's own paging parameters are not in `go-api.md`; these are the simulator's.
//! - `POST /v2/OutgoingInvoices`: a JSON object in, `201` with the new invoice's `Id` out.
//! - `GET /v2/Sim/Download?bytes=N` and `POST /v2/Sim/Upload`: simulator-only endpoints for
//!   large bodies: the download streams `N` bytes of a fixed pattern ([`pattern_byte`]), the
//!   upload reads the body as it streams and answers its length and SHA-256. Neither holds
//!   a whole body.
//!
//! Logs and counters hold no header or body.

use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::gateway::{gateway_checks, gateway_error, header_str};
use super::state::{Endpoint, IssuedToken, Shared};
use crate::domain::Environment;

/// Customers every simulated client has.
pub const CUSTOMERS_PER_CLIENT: u64 = 120;

/// Largest download the simulator serves.
const MAX_DOWNLOAD: u64 = 1 << 30;

/// Byte `i` of a download (and of what tests upload): a pattern that is not all zeros and
/// does not repeat on a power of two.
pub fn pattern_byte(i: u64) -> u8 {
    ((i.wrapping_mul(31) + 7) % 251) as u8
}

/// The gateway's checks, then the bearer token: the token's client, or the refusal.
fn authorize(
    shared: &Shared,
    env: Environment,
    endpoint: Endpoint,
    arrived: Instant,
    headers: &HeaderMap,
) -> Result<IssuedToken, Box<Response>> {
    let now = Instant::now();
    let mut st = shared.lock();
    if let Some(refused) = gateway_checks(&mut st, env, endpoint, arrived, headers) {
        return Err(Box::new(refused));
    }
    let issued = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .and_then(|(_, token)| st.tokens.get(token.trim()))
        .filter(|t| t.environment == env && t.expires_at > now && !st.reject_bearer)
        .cloned();
    issued.ok_or_else(|| {
        let mut r = gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized. Access token is missing or invalid.");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        Box::new(r)
    })
}

/// A query parameter's value (names compared without case).
fn param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn problem(status: StatusCode, title: &str) -> Response {
    let body = json!({"type": "https://tools.ietf.org/html/rfc9110", "title": title, "status": status.as_u16()});
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    r
}

/// `GET /v2/Customers`.
pub(super) fn customers(
    shared: &Shared,
    env: Environment,
    arrived: Instant,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    let issued = match authorize(shared, env, Endpoint::Customers, arrived, headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let page = param(uri, "page").map_or(Ok(1), str::parse::<u64>);
    let size = param(uri, "pageSize").map_or(Ok(50), str::parse::<u64>);
    let (Ok(page @ 1..), Ok(size @ 1..=500)) = (page, size) else {
        return problem(StatusCode::BAD_REQUEST, "page must be 1 or more and pageSize 1 to 500.");
    };
    let first = (page - 1).saturating_mul(size);
    let items: Vec<Value> = (first..CUSTOMERS_PER_CLIENT.min(first.saturating_add(size)))
        .map(|i| {
            json!({
                "Id": i + 1,
                "CustomerNo": 10_000 + i + 1,
                "Name": format!("Customer {} of {}", i + 1, issued.client.name),
            })
        })
        .collect();
    let mut r = Json(Value::Array(items)).into_response();
    r.headers_mut().insert("x-total-count", HeaderValue::from(CUSTOMERS_PER_CLIENT));
    r
}

/// `POST /v2/OutgoingInvoices`.
pub(super) fn outgoing_invoice(
    shared: &Shared,
    env: Environment,
    arrived: Instant,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Err(r) = authorize(shared, env, Endpoint::OutgoingInvoices, arrived, headers) {
        return *r;
    }
    let json = header_str(headers, header::CONTENT_TYPE.as_str())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
    let (true, Some(invoice)) = (json, parsed) else {
        return problem(StatusCode::BAD_REQUEST, "The body must be a JSON object (application/json).");
    };
    let id = {
        let mut st = shared.lock();
        st.counters.invoices_created += 1;
        st.counters.invoices_created
    };
    let mut out = invoice;
    out.insert("Id".into(), Value::from(id));
    (StatusCode::CREATED, Json(Value::Object(out))).into_response()
}

/// `GET /v2/Sim/Download?bytes=N`: streamed in 64 KiB frames, with its length declared.
pub(super) fn download(
    shared: &Shared,
    env: Environment,
    arrived: Instant,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    if let Err(r) = authorize(shared, env, Endpoint::Download, arrived, headers) {
        return *r;
    }
    let Some(n) = param(uri, "bytes").and_then(|v| v.parse::<u64>().ok()).filter(|n| *n <= MAX_DOWNLOAD) else {
        return problem(StatusCode::BAD_REQUEST, "bytes must be a number up to 1 GiB.");
    };
    const FRAME: u64 = 64 * 1024;
    let frames = (0..n.div_ceil(FRAME)).map(move |k| {
        let from = k * FRAME;
        let chunk: Vec<u8> = (from..n.min(from + FRAME)).map(pattern_byte).collect();
        Ok::<_, std::convert::Infallible>(Bytes::from(chunk))
    });
    let mut r = Response::new(Body::from_stream(tokio_stream::iter(frames)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    r
}

/// `POST /v2/Sim/Upload`: reads the body frame by frame, answers its length and SHA-256.
pub(super) async fn upload(
    shared: &Shared,
    env: Environment,
    arrived: Instant,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = authorize(shared, env, Endpoint::Upload, arrived, headers) {
        return *r;
    }
    let mut body = body;
    let mut hash = Sha256::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return problem(StatusCode::BAD_REQUEST, "The body broke off.");
        };
        if let Ok(data) = frame.into_data() {
            n += data.len() as u64;
            hash.update(&data);
        }
    }
    let hex = crate::crypto::secret::hex(&hash.finalize());
    Json(json!({"Bytes": n, "Sha256": hex})).into_response()
}
