//! The onboarding API's error answers: RFC 9457 ProblemDetails as ASP.NET (Go since .NET 8)
//! writes them, each with a fresh `traceId`. Used by the onboarding endpoints, and by the
//! gateway checks for the onboarding API's 429. A leaf above `answers` only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::answers::{RateLimitStyle, SimAnswer, random_trace_id};

/// An RFC 9457 ProblemDetails answer, as ASP.NET (Go since .NET 8) writes it: camelCase,
/// with a `traceId`.
pub(super) fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    SimAnswer::problem(status.as_u16(), title, detail, &[], Some(&random_trace_id()), false).into_response()
}

pub(super) fn invalid_request(title: &str, detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, title, detail)
}

/// ASP.NET's model-validation answer: 400 with an `errors` map naming the field.
pub(super) fn validation_error(field: &str, message: &str) -> Response {
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

pub(super) fn internal_error() -> Response {
    problem(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", "The simulator could not complete the request.")
}
