//! The gateway's own answers: RFC 9457 problem details (`application/problem+json`, the
//! shape Go's API uses too, so a caller's error handling reads both), marked
//! `"source": "pogo-vault"` so a caller tells the gateway's refusals from Go's, with the
//! request id in `x-request-id` and `Retry-After` where waiting helps. Every error the
//! gateway meets is mapped to its status here, and only here.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;

use crate::domain::InvalidInput;
use crate::tokens::BrokerError;
use crate::upstream::UpstreamError;
use crate::usecase::GatewayError;
use crate::usecase::gateway_body::BoxError;

/// Every body the gateway answers with.
pub type GwBody = UnsyncBoxBody<Bytes, BoxError>;

/// A refusal: its status, metric label, text, and how long to wait, if waiting helps.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: StatusCode,
    /// `pogo_vault_gateway_requests_total`'s `result`.
    pub label: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<Duration>,
}

impl Problem {
    fn new(status: StatusCode, label: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, label, title, detail: detail.into(), retry_after: None }
    }

    fn retry(mut self, after: Duration) -> Self {
        self.retry_after = Some(after.max(Duration::from_secs(1)));
        self
    }

    /// The answer: the problem as JSON, with the request id and any `Retry-After`.
    pub fn response(&self, request_id: &str) -> Response<GwBody> {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "source": "pogo-vault",
        });
        let mut r = Response::new(
            http_body_util::Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync(),
        );
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(wait) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs_f64().ceil() as u64));
        }
        set_request_id(&mut r, request_id);
        r
    }
}

pub fn set_request_id<B>(r: &mut Response<B>, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
}

/// The one refusal for a caller not granted the request: the same whether or not the
/// tenant exists (decided before any lookup).
pub fn denied() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "denied",
        "Forbidden",
        "the caller's certificate identity is not granted this request (the api role on this tenant, with a rule \
         admitting this method and path); ask the vault's operators to add a grant to the policy",
    )
}

/// A connection whose certificate a reload stopped accepting.
pub fn certificate_no_longer_accepted() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "denied",
        "Forbidden",
        "the caller's certificate is no longer accepted (revoked, or its CA was removed): get a new certificate",
    )
}

pub fn invalid(e: &InvalidInput) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid", "Bad Request", e.to_string())
}

pub fn over_budget(retry_after: Duration) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too Many Requests",
        "over this caller's request budget (server.caller_requests_per_second, or requests_per_second in its grant); \
         slow down",
    )
    .retry(retry_after)
}

pub fn body_too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "Content Too Large",
        format!(
            "the request body is larger than the gateway passes to PowerOffice Go ({limit} bytes, gateway.max_request_bytes)"
        ),
    )
}

pub fn audit_unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service Unavailable",
        "the audit log cannot be written right now, and nothing goes to PowerOffice Go unrecorded; retry shortly",
    )
    .retry(Duration::from_secs(1))
}

/// A gateway error as the caller's answer (module docs).
pub fn from_error(e: &GatewayError) -> Problem {
    match e {
        GatewayError::Token(b) => broker(b),
        GatewayError::Queue { retry_after } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too Many Requests",
            format!(
                "the integration's shared request budget at PowerOffice Go is taken for longer than the gateway lets a \
                 request wait (gateway.max_queue_wait_secs); retry after {} s",
                retry_after.as_secs().max(1)
            ),
        )
        .retry(*retry_after),
        GatewayError::AuditUnavailable => audit_unavailable(),
        GatewayError::SentUnrecorded => Problem::new(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            "Bad Gateway",
            "the request reached PowerOffice Go, but the audit log could not record its answer, so the answer is \
             withheld; PowerOffice Go may have acted on it: check before repeating a request that changes data",
        ),
        GatewayError::Upstream(UpstreamError::Timeout) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "unavailable",
            "Gateway Timeout",
            "PowerOffice Go did not answer in time (gateway.request_timeout_secs)",
        ),
        GatewayError::Upstream(u) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            "Bad Gateway",
            format!("no answer from PowerOffice Go: {u}"),
        ),
        GatewayError::RequestTooLarge => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "Content Too Large",
            "the request body grew larger than the gateway passes to PowerOffice Go (gateway.max_request_bytes); \
             the call was cut",
        ),
        GatewayError::CallerGone => {
            Problem::new(StatusCode::BAD_REQUEST, "other", "Bad Request", "the caller went away; nothing was sent")
        }
        GatewayError::RequestBroken => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid", "Bad Request", "the request body ended early")
        }
        GatewayError::AnswerTooLarge { .. } => {
            Problem::new(StatusCode::BAD_GATEWAY, "too_large", "Bad Gateway", e.to_string())
        }
    }
}

/// Why the tenant's token could not be had, as the caller's answer: the statuses of
/// `server::errors::broker` in HTTP's words (a precondition is 409), with the same rule
/// that internal and HSM detail stays in the log.
fn broker(e: &BrokerError) -> Problem {
    let text = e.to_string();
    match e {
        BrokerError::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, "4xx", "Not Found", text),
        BrokerError::Disabled(_)
        | BrokerError::KeyRejected(_)
        | BrokerError::InvalidKey(_)
        | BrokerError::NoIntegration(_)
        | BrokerError::SubscriptionKeyRefused(_)
        | BrokerError::OnboardingRejected(_) => Problem::new(StatusCode::CONFLICT, "4xx", "Conflict", text),
        BrokerError::RateLimited { retry_after, .. } => {
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too Many Requests", text).retry(*retry_after)
        }
        BrokerError::SubscriptionKeyRejected { retry_after, .. }
        | BrokerError::QuotaExceeded { retry_after, .. }
        | BrokerError::Unavailable { retry_after, .. } => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service Unavailable", text)
                .retry(*retry_after)
        }
        BrokerError::MasterKeyUnavailable(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service Unavailable",
            "the master key's HSM is unavailable, so a new token cannot be minted; retry after 1 s",
        )
        .retry(std::time::Duration::from_secs(1)),
        BrokerError::Integrity(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "other",
            "Internal Server Error",
            "integrity failure in the vault's storage; operators are alerted",
        ),
        BrokerError::Internal(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "other",
            "Internal Server Error",
            "internal error; operators are alerted",
        ),
    }
}

/// Too many of this caller's requests (or of all callers') are open at once.
pub fn too_many_open(whose: &str, limit: usize) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too Many Requests",
        format!("{whose} already has {limit} gateway requests open, the most allowed; wait for one to finish"),
    )
    .retry(std::time::Duration::from_secs(1))
}

/// The caller took longer than the gateway waits to send its (small) body.
pub fn body_too_slow() -> Problem {
    Problem::new(
        StatusCode::REQUEST_TIMEOUT,
        "invalid",
        "Request Timeout",
        "the request body did not arrive in time (gateway.request_timeout_secs)",
    )
}

/// The metric label of Go's answer.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_problem_details_with_retry_after_where_waiting_helps() {
        let r = from_error(&GatewayError::Queue { retry_after: Duration::from_millis(1500) }).response("rid");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(r.headers()["x-request-id"], "rid");
        assert_eq!(from_error(&GatewayError::AuditUnavailable).status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(from_error(&GatewayError::Upstream(UpstreamError::Timeout)).status, StatusCode::GATEWAY_TIMEOUT);
        let t: crate::domain::TenantId = "acme".parse().unwrap();
        assert_eq!(from_error(&GatewayError::Token(BrokerError::NotFound(t))).status, StatusCode::NOT_FOUND);
    }
}
