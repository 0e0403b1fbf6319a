//! `UpstreamError`: what went wrong talking to Go, classified for the token broker.
//!
//! Invariant: no variant carries text that came from the network or from reqwest's own
//! messages. Reasons are fixed phrases plus status numbers, and the one value taken from a
//! response (the OAuth `error` code) is cut down to `[A-Za-z0-9_]{0,64}`. So `Display` and
//! `Debug` can never leak a client key, subscription key, token or response body, even if
//! Go echoed one back.

use std::error::Error as _;
use std::io;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::parse;

/// The shortest wait we ever ask for: PowerOffice advises waiting at least a second.
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest wait we accept from a `Retry-After`; a larger value is more likely a bug
/// (or a hostile answer) than a real instruction, and would park tenants for too long.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// An upstream (PowerOffice Go) call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The token endpoint refused the credentials with an RFC 6749 §5.2 error (400, or 401/403
    /// with an OAuth `error` body). `error == "invalid_client"` means the client key is
    /// unknown, deleted or from the other environment (or the application key is wrong):
    /// the customer must re-activate the integration. Other codes (`invalid_request`,
    /// `unsupported_grant_type`) point at a bug in how we ask, not at the key.
    #[error("PowerOffice Go rejected the client credentials (HTTP {status}, error \"{error}\")")]
    KeyRejected {
        /// The HTTP status.
        status: u16,
        /// The OAuth error code, sanitised: only `[A-Za-z0-9_]`, at most 64 characters.
        error: String,
    },
    /// Go's API gateway refused the subscription key (401, or 403 naming the subscription
    /// key): an integration-wide problem, not one tenant's.
    #[error("PowerOffice Go's gateway rejected the subscription key (HTTP {status})")]
    SubscriptionKeyRejected {
        /// The HTTP status.
        status: u16,
    },
    /// 429: too many requests for this subscription key; wait `retry_after` (1 s to 1 h).
    #[error("PowerOffice Go is rate limiting; retry after {} s", retry_after.as_secs())]
    RateLimited {
        /// How long Go asked us to wait, clamped to 1 s ..= 1 h.
        retry_after: Duration,
    },
    /// An API call was refused with 401/403 although the gateway accepted the subscription
    /// key: the bearer token is invalid, expired or lacks the privilege.
    #[error("PowerOffice Go refused the access token (HTTP {status})")]
    Unauthorized {
        /// The HTTP status.
        status: u16,
    },
    /// Go or the network failed in a way that may pass: 5xx, 408, connection refused,
    /// reset or closed early, TLS handshake failure.
    #[error("PowerOffice Go is unavailable: {reason}")]
    Transient {
        /// A fixed phrase such as `HTTP 503` or `connection refused`.
        reason: String,
    },
    /// Go refused an onboarding call with a ProblemDetails answer (400, or 403 not about the
    /// subscription key). On `Onboarding/Finalize` this means the onboarding token is
    /// invalid, expired or already used: the user must start the onboarding again. On
    /// `Onboarding/Initiate` the request itself was refused (redirect URI not whitelisted,
    /// wrong application key): a configuration problem on our side.
    #[error("PowerOffice Go refused the onboarding (HTTP {status}: {title})")]
    OnboardingRejected {
        /// The HTTP status.
        status: u16,
        /// The ProblemDetails `title`, sanitised: printable ASCII only, at most 120
        /// characters, with every value we sent and every long token-like word replaced by
        /// `[redacted]`. Falls back to the status's reason phrase.
        title: String,
    },
    /// No answer within the connect or total timeout.
    #[error("PowerOffice Go did not answer in time")]
    Timeout,
    /// Go answered something we cannot use: an unexpected status, or a body that does not
    /// parse or lacks required fields.
    #[error("unexpected answer from PowerOffice Go: {reason}")]
    Protocol {
        /// A fixed phrase naming what was wrong (never the body).
        reason: String,
    },
    /// Our side is misconfigured: a base URL that is not a plain http(s) URL, a key that
    /// cannot go in a header, or a TLS setup that failed (no CA certificates).
    #[error("upstream client configuration: {reason}")]
    Config {
        /// What is wrong (never a key).
        reason: String,
    },
}

impl UpstreamError {
    /// Whether the same request may succeed later without anyone changing anything:
    /// rate limits, 5xx, network failures and timeouts.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient { .. } | Self::Timeout)
    }

    /// The wait Go asked for, for `RateLimited`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self::Protocol { reason: reason.into() }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::Config { reason: reason.into() }
    }

    fn transient(reason: impl Into<String>) -> Self {
        Self::Transient { reason: reason.into() }
    }
}

/// Classifies a failed token-endpoint answer (any non-2xx status).
pub(crate) fn classify_token_failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let code = status.as_u16();
    match code {
        400 | 401 | 403 => {
            // The gateway answers before the OAuth server, so its subscription-key message
            // wins; then an OAuth error code names the credentials; a bare 401 can only be
            // the gateway. A bare 400/403 is not proof the key is bad: do not brand it so.
            if parse::mentions_subscription_key(body) {
                UpstreamError::SubscriptionKeyRejected { status: code }
            } else if let Some(error) = parse::oauth_error_code(body) {
                UpstreamError::KeyRejected { status: code, error }
            } else if code == 401 {
                UpstreamError::SubscriptionKeyRejected { status: code }
            } else {
                UpstreamError::protocol(format!("HTTP {code} without an OAuth error code"))
            }
        }
        _ => classify_common(status, headers, body),
    }
}

/// Classifies a failed API answer (any non-2xx status) to a call made with a bearer token.
pub(crate) fn classify_api_failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let code = status.as_u16();
    match code {
        401 | 403 if parse::mentions_subscription_key(body) => UpstreamError::SubscriptionKeyRejected { status: code },
        401 | 403 => UpstreamError::Unauthorized { status: code },
        _ => classify_common(status, headers, body),
    }
}

/// Classifies a failed onboarding answer (`Onboarding/Initiate` or `Onboarding/Finalize`;
/// any non-2xx status). These calls carry no bearer token, so a 401 can only be the
/// gateway's. `request_values` are the values we sent (keys, token, redirect URI,
/// organization number): none of them may come back in the title.
pub(crate) fn classify_onboarding_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    request_values: &[&str],
) -> UpstreamError {
    let code = status.as_u16();
    match code {
        401 => UpstreamError::SubscriptionKeyRejected { status: code },
        403 if parse::mentions_subscription_key(body) => UpstreamError::SubscriptionKeyRejected { status: code },
        400 | 403 => {
            let title = parse::problem_title(body)
                .map(|raw| parse::sanitize_title(&raw, request_values))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_owned());
            UpstreamError::OnboardingRejected { status: code, title }
        }
        _ => classify_common(status, headers, body),
    }
}

fn classify_common(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let code = status.as_u16();
    if code == 429 {
        UpstreamError::RateLimited { retry_after: retry_after(headers, body, SystemTime::now()) }
    } else if code == 408 || status.is_server_error() {
        UpstreamError::transient(format!("HTTP {code}"))
    } else if status.is_redirection() {
        // We follow no redirects: a token request must never be replayed elsewhere.
        UpstreamError::protocol(format!("unexpected redirect (HTTP {code})"))
    } else {
        UpstreamError::protocol(format!("unexpected HTTP {code}"))
    }
}

/// The wait a 429 asks for: `Retry-After` (delta-seconds or HTTP-date), else the gateway's
/// "Try again in N seconds." message, else one second; clamped to 1 s ..= 1 h.
pub(crate) fn retry_after(headers: &HeaderMap, body: &[u8], now: SystemTime) -> Duration {
    let from_header =
        headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after_value(v, now));
    let wait = from_header.or_else(|| parse_try_again_message(body)).unwrap_or(MIN_RETRY_AFTER);
    wait.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
}

/// `Retry-After` per RFC 9110 §10.2.3: delta-seconds or an HTTP-date (IMF-fixdate, which is
/// valid RFC 2822). A date in the past means "now" (the caller clamps to the minimum).
pub(crate) fn parse_retry_after_value(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: a huge value saturates rather than failing, then gets clamped.
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let when = OffsetDateTime::parse(value, &Rfc2822).ok()?;
    let now = OffsetDateTime::from(now);
    let delta = when - now;
    if delta.is_negative() {
        return Some(Duration::ZERO);
    }
    // Round up: waiting a fraction less than asked would hit the limit again.
    let secs = delta.whole_seconds().max(0) as u64 + u64::from(delta.subsec_nanoseconds() > 0);
    Some(Duration::from_secs(secs))
}

/// Finds "try again in N second(s)" (any case) in a gateway message.
pub(crate) fn parse_try_again_message(body: &[u8]) -> Option<Duration> {
    const NEEDLE: &[u8] = b"try again in ";
    let lower = body.to_ascii_lowercase();
    let start = lower.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits: Vec<u8> = lower[start..].iter().copied().take_while(u8::is_ascii_digit).take(10).collect();
    if digits.is_empty() {
        return None;
    }
    let n: u64 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
    Some(Duration::from_secs(n))
}

/// Turns a reqwest failure into a class, keeping none of reqwest's text (which may name the
/// URL or echo parts of an answer).
pub(crate) fn from_reqwest(err: reqwest::Error) -> UpstreamError {
    let err = err.without_url();
    // A connect timeout is also a connect error: check timeouts first.
    if err.is_timeout() {
        return UpstreamError::Timeout;
    }
    if err.is_builder() {
        return UpstreamError::config("the HTTP request could not be built");
    }
    if err.is_redirect() {
        return UpstreamError::protocol("unexpected redirect");
    }
    if has_tls_error(&err) {
        return UpstreamError::transient("TLS handshake failed");
    }
    let io_kind = io_error_kind(&err);
    if err.is_connect() {
        let reason = match io_kind {
            Some(io::ErrorKind::ConnectionRefused) => "connection refused",
            Some(io::ErrorKind::ConnectionReset) => "connection reset",
            _ if err.is_dns() => "host name did not resolve",
            _ => "connection failed",
        };
        return UpstreamError::transient(reason);
    }
    let reason = match io_kind {
        Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe) => {
            "connection reset"
        }
        _ if err.is_body() || err.is_decode() => "response body interrupted",
        // hyper's "connection closed before message completed" lands here.
        _ => "connection closed before a response",
    };
    UpstreamError::transient(reason)
}

/// Walks the source chain, looking inside `io::Error`s too (their `source()` skips the
/// wrapped error, so `get_ref` is needed to see it).
fn chain(err: &reqwest::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = err.source();
    while let Some(e) = next {
        out.push(e);
        next = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
        if out.len() > 16 {
            break;
        }
    }
    out
}

fn io_error_kind(err: &reqwest::Error) -> Option<io::ErrorKind> {
    chain(err).into_iter().find_map(|e| e.downcast_ref::<io::Error>().map(io::Error::kind))
}

fn has_tls_error(err: &reqwest::Error) -> bool {
    chain(err).into_iter().any(|e| e.is::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn at(s: &str) -> SystemTime {
        SystemTime::from(OffsetDateTime::parse(s, &Rfc2822).expect("test date parses"))
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after_value("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after_value(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after_value("99999999999999999999999", now), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(parse_retry_after_value("-1", now), None);
        assert_eq!(parse_retry_after_value("1.5", now), None);
        assert_eq!(parse_retry_after_value("", now), None);
        assert_eq!(parse_retry_after_value("soon", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = at("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_retry_after_value("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after_value("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(Duration::ZERO));
        let now_frac = now + Duration::from_millis(200);
        // 29.8 s left rounds up to 30.
        assert_eq!(parse_retry_after_value("Sun, 06 Nov 1994 08:50:07 GMT", now_frac), Some(Duration::from_secs(30)));
    }

    #[test]
    fn retry_after_prefers_header_then_message_then_one_second_and_clamps() {
        let now = SystemTime::now();
        let body = br#"{"statusCode": 429, "message": "Rate limit is exceeded. Try again in 7 seconds."}"#;
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, body, now), Duration::from_secs(7));
        assert_eq!(retry_after(&h, b"{}", now), Duration::from_secs(1));
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h, body, now), Duration::from_secs(3));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0"));
        assert_eq!(retry_after(&h, body, now), MIN_RETRY_AFTER);
        h.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h, body, now), MAX_RETRY_AFTER);
        h.insert(RETRY_AFTER, HeaderValue::from_static("garbage"));
        assert_eq!(retry_after(&h, body, now), Duration::from_secs(7));
    }

    #[test]
    fn try_again_message_variants() {
        assert_eq!(parse_try_again_message(b"Try again in 1 seconds."), Some(Duration::from_secs(1)));
        assert_eq!(parse_try_again_message(b"TRY AGAIN IN 12 second"), Some(Duration::from_secs(12)));
        assert_eq!(parse_try_again_message(b"try again in a while"), None);
        assert_eq!(parse_try_again_message(b""), None);
    }

    #[test]
    fn token_failures_are_classified() {
        let h = HeaderMap::new();
        let st = |c| StatusCode::from_u16(c).expect("valid status");
        let invalid_client = br#"{"error":"invalid_client","error_description":"Client integration not found. abc"}"#;
        assert_eq!(
            classify_token_failure(st(400), &h, invalid_client),
            UpstreamError::KeyRejected { status: 400, error: "invalid_client".into() }
        );
        let gateway = br#"{"statusCode": 401, "message": "Access denied due to invalid subscription key."}"#;
        assert_eq!(
            classify_token_failure(st(401), &h, gateway),
            UpstreamError::SubscriptionKeyRejected { status: 401 }
        );
        assert_eq!(classify_token_failure(st(401), &h, b""), UpstreamError::SubscriptionKeyRejected { status: 401 });
        assert_eq!(
            classify_token_failure(st(401), &h, br#"{"error":"invalid_client"}"#),
            UpstreamError::KeyRejected { status: 401, error: "invalid_client".into() }
        );
        assert!(matches!(classify_token_failure(st(400), &h, b"<html>"), UpstreamError::Protocol { .. }));
        assert!(matches!(classify_token_failure(st(429), &h, b""), UpstreamError::RateLimited { .. }));
        assert_eq!(classify_token_failure(st(503), &h, b""), UpstreamError::Transient { reason: "HTTP 503".into() });
        assert_eq!(classify_token_failure(st(408), &h, b""), UpstreamError::Transient { reason: "HTTP 408".into() });
        assert!(matches!(classify_token_failure(st(302), &h, b""), UpstreamError::Protocol { .. }));
        assert!(matches!(classify_token_failure(st(404), &h, b""), UpstreamError::Protocol { .. }));
    }

    #[test]
    fn api_failures_are_classified() {
        let h = HeaderMap::new();
        let st = |c| StatusCode::from_u16(c).expect("valid status");
        let gateway = br#"{"statusCode": 401, "message": "Access denied due to missing subscription key."}"#;
        assert_eq!(classify_api_failure(st(401), &h, gateway), UpstreamError::SubscriptionKeyRejected { status: 401 });
        let jwt = br#"{"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."}"#;
        assert_eq!(classify_api_failure(st(401), &h, jwt), UpstreamError::Unauthorized { status: 401 });
        assert_eq!(classify_api_failure(st(403), &h, b""), UpstreamError::Unauthorized { status: 403 });
        assert!(matches!(classify_api_failure(st(500), &h, b""), UpstreamError::Transient { .. }));
    }

    #[test]
    fn messages_never_contain_the_body() {
        let h = HeaderMap::new();
        let secret = "6b0c3b7e-0000-4000-8000-5ecre7c11e47";
        let body = format!(r#"{{"error":"invalid_client","error_description":"{secret}","message":"{secret}"}}"#);
        for code in [400u16, 401, 403, 404, 429, 500] {
            let st = StatusCode::from_u16(code).expect("valid status");
            for e in [classify_token_failure(st, &h, body.as_bytes()), classify_api_failure(st, &h, body.as_bytes())] {
                assert!(!e.to_string().contains(secret), "{e}");
                assert!(!format!("{e:?}").contains(secret), "{e:?}");
            }
        }
    }

    #[test]
    fn onboarding_failures_are_classified() {
        let h = HeaderMap::new();
        let st = |c| StatusCode::from_u16(c).expect("valid status");
        let problem = br#"{"type":"https://tools.ietf.org/html/rfc9110#section-15.5.1","title":"Invalid onboarding token","status":400,"detail":"x"}"#;
        assert_eq!(
            classify_onboarding_failure(st(400), &h, problem, &[]),
            UpstreamError::OnboardingRejected { status: 400, title: "Invalid onboarding token".into() }
        );
        // Casing varies (go-api.md, "Errors elsewhere").
        let upper = br#"{"Type":"t","Title":"Invalid redirect URI","Status":400}"#;
        assert_eq!(
            classify_onboarding_failure(st(400), &h, upper, &[]),
            UpstreamError::OnboardingRejected { status: 400, title: "Invalid redirect URI".into() }
        );
        assert_eq!(
            classify_onboarding_failure(st(400), &h, b"<html>", &[]),
            UpstreamError::OnboardingRejected { status: 400, title: "Bad Request".into() }
        );
        let gateway = br#"{"statusCode": 401, "message": "Access denied due to invalid subscription key."}"#;
        assert_eq!(
            classify_onboarding_failure(st(401), &h, gateway, &[]),
            UpstreamError::SubscriptionKeyRejected { status: 401 }
        );
        assert_eq!(
            classify_onboarding_failure(st(401), &h, b"", &[]),
            UpstreamError::SubscriptionKeyRejected { status: 401 }
        );
        let problem429 =
            br#"{"title":"Too many requests","status":429,"detail":"Rate limit is exceeded. Try again in 4 seconds."}"#;
        assert_eq!(
            classify_onboarding_failure(st(429), &h, problem429, &[]),
            UpstreamError::RateLimited { retry_after: Duration::from_secs(4) }
        );
        assert_eq!(
            classify_onboarding_failure(st(502), &h, b"", &[]),
            UpstreamError::Transient { reason: "HTTP 502".into() }
        );
        assert!(matches!(classify_onboarding_failure(st(404), &h, b"", &[]), UpstreamError::Protocol { .. }));
        assert!(!UpstreamError::OnboardingRejected { status: 400, title: "x".into() }.is_retryable());
    }

    #[test]
    fn onboarding_rejection_never_echoes_what_we_sent() {
        let h = HeaderMap::new();
        let token = "q9Vx-7sKp2LmN4bR8tYw1ZcD3fGh5JkE6uIo0aSd";
        let app = "5b1b5bd4-0f0c-4a57-9d8e-0d3f54a1c001";
        let body = format!(
            r#"{{"title":"Token {token} for {} via https://app.example/cb?state=s3cr3t is invalid","detail":"{token}"}}"#,
            app.to_uppercase()
        );
        let e = classify_onboarding_failure(
            StatusCode::BAD_REQUEST,
            &h,
            body.as_bytes(),
            &[token, app, "https://app.example/cb?state=s3cr3t"],
        );
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(!shown.to_lowercase().contains(app), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("Token [redacted]"), "{shown}");
    }

    #[test]
    fn retryable_classes() {
        assert!(UpstreamError::Timeout.is_retryable());
        assert!(UpstreamError::transient("HTTP 502").is_retryable());
        assert!(UpstreamError::RateLimited { retry_after: MIN_RETRY_AFTER }.is_retryable());
        assert!(!UpstreamError::KeyRejected { status: 400, error: "invalid_client".into() }.is_retryable());
        assert!(!UpstreamError::SubscriptionKeyRejected { status: 401 }.is_retryable());
        assert!(!UpstreamError::Unauthorized { status: 401 }.is_retryable());
        assert!(!UpstreamError::protocol("x").is_retryable());
    }
}
