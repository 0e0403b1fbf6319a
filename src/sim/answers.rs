//! The error shapes Go sends (go-api.md, "Token" and "Errors elsewhere"), as values: the
//! simulator answers with them, and tests hand them to [`super::Sim::answer_next`] to put
//! every shape in front of the vault.
//!
//! - the API gateway (Azure API Management): `{"statusCode": 401, "message": "..."}`, two
//!   401 messages (missing or invalid subscription key), 429 whose `statusCode` is a number
//!   or, in PowerOffice's own spec, a string, with or without `Retry-After`, and 403 with
//!   `Retry-After` when the subscription's quota is used up;
//! - the OAuth server: RFC 6749 `{"error", "error_description"}`;
//! - the API: ProblemDetails, camelCase with an `errors` map and a `traceId` since Go's move
//!   to .NET 8 (PascalCase before: the knob keeps both).

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The gateway's 401 for a request without a subscription key.
pub const MISSING_KEY_MESSAGE: &str = "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.";
/// The gateway's 401 for an unknown, regenerated or inactive subscription key.
pub const INVALID_KEY_MESSAGE: &str =
    "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription.";

/// One HTTP answer: status, extra headers and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// How the gateway writes a 429 (go-api.md: both are seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStyle {
    /// `"statusCode": "429"` (PowerOffice's spec) instead of `429` (the gateway's default).
    pub status_code_as_string: bool,
    /// Send `Retry-After`; without it, the wait is only in the message.
    pub retry_after_header: bool,
}

impl Default for RateLimitStyle {
    fn default() -> Self {
        Self { status_code_as_string: false, retry_after_header: true }
    }
}

impl SimAnswer {
    fn json(status: u16, body: &Value) -> Self {
        Self { status, headers: Vec::new(), body: body.to_string() }
    }

    /// Any status and body, as given (for shapes the constructors below do not make).
    pub fn raw(status: u16, body: &str) -> Self {
        Self { status, headers: Vec::new(), body: body.to_owned() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The gateway's `{statusCode, message}` with a numeric `statusCode`.
    pub fn gateway(status: u16, message: &str) -> Self {
        Self::json(status, &json!({"statusCode": status, "message": message}))
    }

    /// 401: no subscription key arrived.
    pub fn subscription_key_missing() -> Self {
        Self::gateway(401, MISSING_KEY_MESSAGE)
    }

    /// 401: the subscription key is not (or no longer) valid.
    pub fn subscription_key_invalid() -> Self {
        Self::gateway(401, INVALID_KEY_MESSAGE)
    }

    /// 429 "Rate limit is exceeded. Try again in N seconds." in `style`.
    pub fn rate_limited(secs: u64, style: RateLimitStyle) -> Self {
        let message = format!("Rate limit is exceeded. Try again in {secs} seconds.");
        let code = if style.status_code_as_string { json!("429") } else { json!(429) };
        let a = Self::json(429, &json!({"statusCode": code, "message": message}));
        if style.retry_after_header { a.with_header("retry-after", &secs.to_string()) } else { a }
    }

    /// 403: the subscription's call quota is used up; `Retry-After: secs` when given, and
    /// the gateway's "replenished in hh:mm:ss" message.
    pub fn quota_exceeded(secs: u64, retry_after_header: bool) -> Self {
        let message = format!(
            "Out of call volume quota. Quota will be replenished in {:02}:{:02}:{:02}.",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        let a = Self::gateway(403, &message);
        if retry_after_header { a.with_header("retry-after", &secs.to_string()) } else { a }
    }

    /// The OAuth server's RFC 6749 §5.2 error.
    pub fn oauth_error(status: u16, error: &str, description: &str) -> Self {
        Self::json(status, &json!({"error": error, "error_description": description}))
    }

    /// ProblemDetails (RFC 9457) as ASP.NET writes it: camelCase with a `traceId` and, for
    /// validation errors, an `errors` map; or PascalCase without either (`pascal`).
    pub fn problem(
        status: u16,
        title: &str,
        detail: &str,
        errors: &[(&str, &str)],
        trace_id: Option<&str>,
        pascal: bool,
    ) -> Self {
        let kind = match status {
            400 => "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            403 => "https://tools.ietf.org/html/rfc9110#section-15.5.4",
            415 => "https://tools.ietf.org/html/rfc9110#section-15.5.16",
            429 => "https://tools.ietf.org/html/rfc6585#section-4",
            500 => "https://tools.ietf.org/html/rfc9110#section-15.6.1",
            _ => "about:blank",
        };
        let mut body = Map::new();
        let mut put = |camel: &str, pascal_name: &str, v: Value| {
            body.insert(if pascal { pascal_name } else { camel }.to_owned(), v);
        };
        put("type", "Type", json!(kind));
        put("title", "Title", json!(title));
        put("status", "Status", json!(status));
        put("detail", "Detail", json!(detail));
        if !pascal {
            if !errors.is_empty() {
                let mut map = Map::new();
                for (field, message) in errors {
                    map.insert((*field).to_owned(), json!([message]));
                }
                body.insert("errors".to_owned(), Value::Object(map));
            }
            if let Some(t) = trace_id {
                body.insert("traceId".to_owned(), json!(t));
            }
        }
        Self::json(status, &Value::Object(body)).with_header("content-type", "application/problem+json")
    }

    /// The HTTP response (an invalid status becomes 500; invalid headers are skipped).
    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(serde_json::from_str::<Value>(&self.body).unwrap_or(Value::String(self.body))))
            .into_response();
        for (name, value) in self.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                r.headers_mut().insert(n, v);
            }
        }
        if !r.headers().contains_key(header::CONTENT_TYPE) {
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        r
    }
}

/// A W3C `traceparent`-shaped trace id, as Go's ProblemDetails carry (random; not secret).
pub fn random_trace_id() -> String {
    let mut b = [0u8; 24];
    if getrandom::fill(&mut b).is_err() {
        return "00-00000000000000000000000000000001-0000000000000001-00".to_owned();
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("00-{}-{}-00", &h[..32], &h[32..48])
}
