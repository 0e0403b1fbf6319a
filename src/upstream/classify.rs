//! Classification of Go's failures: a non-2xx answer (token endpoint, API, onboarding) or
//! a reqwest failure becomes one [`UpstreamError`] variant, with the wait a 429 or quota 403
//! asks for.
//!
//! Why the order of checks matters: the gateway answers before the OAuth server, so its
//! answers (quota, subscription key) win over an OAuth error code, and only Go's own
//! `invalid_client` (or another OAuth code) from the token endpoint is a verdict on a client
//! key (ARCHITECTURE.md, the `KEY_REJECTED` invariant).
//!
//! Invariant: what is built here keeps the error type's promise (`error.rs`): no text from
//! the network or from reqwest, only fixed phrases, status numbers, the sanitised OAuth
//! code, a sanitised ProblemDetails title and a checked `traceId` (`parse`).

use std::error::Error as _;
use std::io;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::error::{MAX_RETRY_AFTER, MIN_RETRY_AFTER, SubscriptionKeyProblem, UpstreamError};
use super::parse;

/// Classifies a failed token-endpoint answer (any non-2xx status). `sent`: the values we
/// sent (keys), none of which may come back in a kept `traceId`.
pub(crate) fn classify_token_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    sent: &[&str],
) -> UpstreamError {
    let code = status.as_u16();
    // The gateway answers before the OAuth server, so its answers win: a quota first (a 403
    // from the gateway is never a verdict on a client key), then the subscription key; then
    // an OAuth error code names the credentials; a bare 401 can only be the gateway. A bare
    // 400/403 is not proof the key is bad: do not brand it so.
    match code {
        400 | 401 | 403 => {
            if let Some(quota) = quota_exceeded(code, headers, body) {
                quota
            } else if let Some(problem) = parse::subscription_key_problem(body).filter(|_| code != 400) {
                UpstreamError::SubscriptionKeyRejected { status: code, problem }
            } else if code != 400 && parse::gateway_message(body).is_some() {
                // The gateway's shape is never a verdict on the client key.
                UpstreamError::SubscriptionKeyRejected { status: code, problem: SubscriptionKeyProblem::Unspecified }
            } else if let Some(error) = parse::oauth_error_code(body) {
                UpstreamError::KeyRejected { status: code, error }
            } else if code == 401 {
                UpstreamError::SubscriptionKeyRejected { status: code, problem: SubscriptionKeyProblem::Unspecified }
            } else {
                UpstreamError::Protocol {
                    reason: format!("HTTP {code} without an OAuth error code"),
                    trace_id: parse::trace_id(body, sent),
                }
            }
        }
        _ => classify_common(status, headers, body, sent),
    }
}

/// Classifies a failed API answer (any non-2xx status) to a call made with a bearer token.
pub(crate) fn classify_api_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    sent: &[&str],
) -> UpstreamError {
    let code = status.as_u16();
    if let Some(quota) = quota_exceeded(code, headers, body) {
        return quota;
    }
    match code {
        401 | 403 => match parse::subscription_key_problem(body) {
            Some(problem) => UpstreamError::SubscriptionKeyRejected { status: code, problem },
            None => UpstreamError::Unauthorized { status: code, trace_id: parse::trace_id(body, sent) },
        },
        _ => classify_common(status, headers, body, sent),
    }
}

/// Classifies a failed onboarding answer (`Onboarding/Initiate` or `Onboarding/Finalize`;
/// any non-2xx status). These calls carry no bearer token, so a 401 can only be the
/// gateway's. `request_values` are the values we sent (keys, token, redirect URI,
/// organization number): none of them may come back in the title or the `traceId`.
pub(crate) fn classify_onboarding_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    request_values: &[&str],
) -> UpstreamError {
    let code = status.as_u16();
    if let Some(quota) = quota_exceeded(code, headers, body) {
        return quota;
    }
    match code {
        401 => UpstreamError::SubscriptionKeyRejected {
            status: code,
            problem: parse::subscription_key_problem(body).unwrap_or(SubscriptionKeyProblem::Unspecified),
        },
        403 if parse::subscription_key_problem(body).is_some() => UpstreamError::SubscriptionKeyRejected {
            status: code,
            problem: parse::subscription_key_problem(body).unwrap_or(SubscriptionKeyProblem::Unspecified),
        },
        400 | 403 => {
            let title = parse::problem_title(body)
                .map(|raw| parse::sanitize_title(&raw, request_values))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_owned());
            UpstreamError::OnboardingRejected { status: code, title, trace_id: parse::trace_id(body, request_values) }
        }
        _ => classify_common(status, headers, body, request_values),
    }
}

/// A 403 that is the gateway's quota answer: it has `Retry-After`, or the gateway's
/// `{statusCode, message}` shape with a message that is not about the subscription key.
fn quota_exceeded(code: u16, headers: &HeaderMap, body: &[u8]) -> Option<UpstreamError> {
    if code != 403 {
        return None;
    }
    let gateway = parse::gateway_message(body);
    let has_retry_after = headers.contains_key(RETRY_AFTER);
    let about_key = parse::subscription_key_problem(body).is_some();
    let gateway_quota = gateway.is_some() && !about_key && parse::oauth_error_code(body).is_none();
    (has_retry_after || gateway_quota)
        .then(|| UpstreamError::QuotaExceeded { retry_after: retry_after(headers, body, SystemTime::now()) })
}

fn classify_common(status: StatusCode, headers: &HeaderMap, body: &[u8], sent: &[&str]) -> UpstreamError {
    let code = status.as_u16();
    let trace_id = || parse::trace_id(body, sent);
    if code == 429 {
        UpstreamError::RateLimited { retry_after: retry_after(headers, body, SystemTime::now()) }
    } else if code == 408 || status.is_server_error() {
        UpstreamError::Transient { reason: format!("HTTP {code}"), trace_id: trace_id() }
    } else if status.is_redirection() {
        // We follow no redirects: a token request must never be replayed elsewhere.
        UpstreamError::protocol(format!("unexpected redirect (HTTP {code})"))
    } else {
        UpstreamError::Protocol { reason: format!("unexpected HTTP {code}"), trace_id: trace_id() }
    }
}

/// The wait a 429 or quota 403 asks for: `Retry-After` (delta-seconds or HTTP-date), else
/// the gateway's "Try again in N seconds." or "Quota will be replenished in hh:mm:ss."
/// message, else one second (PowerOffice's advice); clamped to 1 s ..= 1 h.
pub(crate) fn retry_after(headers: &HeaderMap, body: &[u8], now: SystemTime) -> Duration {
    let from_header =
        headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after_value(v, now));
    let wait = from_header
        .or_else(|| parse_try_again_message(body))
        .or_else(|| parse_replenished_message(body))
        .unwrap_or(MIN_RETRY_AFTER);
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

/// Finds "replenished in [d.]hh:mm:ss" (any case) in the gateway's quota message.
pub(crate) fn parse_replenished_message(body: &[u8]) -> Option<Duration> {
    const NEEDLE: &[u8] = b"replenished in ";
    let lower = body.to_ascii_lowercase();
    let start = lower.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let span: Vec<u8> = lower[start..]
        .iter()
        .copied()
        .take_while(|b| b.is_ascii_digit() || *b == b':' || *b == b'.')
        .take(20)
        .collect();
    let span = std::str::from_utf8(&span).ok()?.trim_end_matches('.');
    let (days, clock) = match span.split_once('.') {
        Some((d, c)) => (d.parse::<u64>().ok()?, c),
        None => (0, span),
    };
    let parts: Vec<u64> = clock.split(':').map(|p| p.parse::<u64>().ok()).collect::<Option<_>>()?;
    let [h, m, s] = parts[..] else { return None };
    let secs = h.saturating_mul(3600).saturating_add(m.saturating_mul(60)).saturating_add(s);
    Some(Duration::from_secs(days.saturating_mul(86_400).saturating_add(secs)))
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
    use crate::upstream::TraceId;
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
            classify_token_failure(st(400), &h, invalid_client, &[]),
            UpstreamError::KeyRejected { status: 400, error: "invalid_client".into() }
        );
        let gateway = br#"{"statusCode": 401, "message": "Access denied due to invalid subscription key."}"#;
        assert_eq!(
            classify_token_failure(st(401), &h, gateway, &[]),
            UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid }
        );
        assert_eq!(
            classify_token_failure(st(401), &h, b"", &[]),
            UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Unspecified }
        );
        assert_eq!(
            classify_token_failure(st(401), &h, br#"{"error":"invalid_client"}"#, &[]),
            UpstreamError::KeyRejected { status: 401, error: "invalid_client".into() }
        );
        assert!(matches!(classify_token_failure(st(400), &h, b"<html>", &[]), UpstreamError::Protocol { .. }));
        assert!(matches!(classify_token_failure(st(429), &h, b"", &[]), UpstreamError::RateLimited { .. }));
        assert_eq!(classify_token_failure(st(503), &h, b"", &[]), UpstreamError::transient("HTTP 503"));
        assert_eq!(classify_token_failure(st(408), &h, b"", &[]), UpstreamError::transient("HTTP 408"));
        assert!(matches!(classify_token_failure(st(302), &h, b"", &[]), UpstreamError::Protocol { .. }));
        assert!(matches!(classify_token_failure(st(404), &h, b"", &[]), UpstreamError::Protocol { .. }));
    }

    #[test]
    fn api_failures_are_classified() {
        let h = HeaderMap::new();
        let st = |c| StatusCode::from_u16(c).expect("valid status");
        let gateway = br#"{"statusCode": 401, "message": "Access denied due to missing subscription key."}"#;
        assert_eq!(
            classify_api_failure(st(401), &h, gateway, &[]),
            UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Missing }
        );
        let jwt = br#"{"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."}"#;
        assert_eq!(
            classify_api_failure(st(401), &h, jwt, &[]),
            UpstreamError::Unauthorized { status: 401, trace_id: None }
        );
        assert_eq!(
            classify_api_failure(st(403), &h, b"", &[]),
            UpstreamError::Unauthorized { status: 403, trace_id: None }
        );
        assert!(matches!(classify_api_failure(st(500), &h, b"", &[]), UpstreamError::Transient { .. }));
    }

    #[test]
    fn messages_never_contain_the_body() {
        let h = HeaderMap::new();
        let secret = "6b0c3b7e-0000-4000-8000-5ecre7c11e47";
        let body = format!(r#"{{"error":"invalid_client","error_description":"{secret}","message":"{secret}"}}"#);
        for code in [400u16, 401, 403, 404, 429, 500] {
            let st = StatusCode::from_u16(code).expect("valid status");
            for e in [
                classify_token_failure(st, &h, body.as_bytes(), &[]),
                classify_api_failure(st, &h, body.as_bytes(), &[]),
            ] {
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
            UpstreamError::OnboardingRejected { status: 400, title: "Invalid onboarding token".into(), trace_id: None }
        );
        // Casing varies (go-api.md, "Errors elsewhere").
        let upper = br#"{"Type":"t","Title":"Invalid redirect URI","Status":400}"#;
        assert_eq!(
            classify_onboarding_failure(st(400), &h, upper, &[]),
            UpstreamError::OnboardingRejected { status: 400, title: "Invalid redirect URI".into(), trace_id: None }
        );
        assert_eq!(
            classify_onboarding_failure(st(400), &h, b"<html>", &[]),
            UpstreamError::OnboardingRejected { status: 400, title: "Bad Request".into(), trace_id: None }
        );
        let gateway = br#"{"statusCode": 401, "message": "Access denied due to invalid subscription key."}"#;
        assert_eq!(
            classify_onboarding_failure(st(401), &h, gateway, &[]),
            UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid }
        );
        assert_eq!(
            classify_onboarding_failure(st(401), &h, b"", &[]),
            UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Unspecified }
        );
        let problem429 =
            br#"{"title":"Too many requests","status":429,"detail":"Rate limit is exceeded. Try again in 4 seconds."}"#;
        assert_eq!(
            classify_onboarding_failure(st(429), &h, problem429, &[]),
            UpstreamError::RateLimited { retry_after: Duration::from_secs(4) }
        );
        assert_eq!(classify_onboarding_failure(st(502), &h, b"", &[]), UpstreamError::transient("HTTP 502"));
        assert!(matches!(classify_onboarding_failure(st(404), &h, b"", &[]), UpstreamError::Protocol { .. }));
        assert!(!UpstreamError::OnboardingRejected { status: 400, title: "x".into(), trace_id: None }.is_retryable());
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
    fn go_shapes_of_rate_limits_and_quotas() {
        let st = |c| StatusCode::from_u16(c).expect("valid status");
        let none = HeaderMap::new();
        let mut with = HeaderMap::new();
        with.insert(RETRY_AFTER, HeaderValue::from_static("9"));
        let as_string = br#"{"statusCode": "429", "message": "Rate limit is exceeded. Try again in 4 seconds."}"#;
        let as_number = br#"{"statusCode": 429, "message": "Rate limit is exceeded. Try again in 4 seconds."}"#;
        for body in [&as_string[..], &as_number[..]] {
            for classify in [classify_token_failure, classify_api_failure] {
                assert_eq!(classify(st(429), &none, body, &[]).retry_after(), Some(Duration::from_secs(4)));
                assert_eq!(classify(st(429), &with, body, &[]).retry_after(), Some(Duration::from_secs(9)));
            }
        }
        let bare = br#"{"statusCode": "429", "message": "Rate limit is exceeded."}"#;
        assert_eq!(classify_token_failure(st(429), &none, bare, &[]).retry_after(), Some(MIN_RETRY_AFTER));

        let quota =
            br#"{"statusCode": 403, "message": "Out of call volume quota. Quota will be replenished in 00:01:05."}"#;
        for classify in [classify_token_failure, classify_api_failure] {
            assert_eq!(
                classify(st(403), &with, quota, &[]),
                UpstreamError::QuotaExceeded { retry_after: Duration::from_secs(9) }
            );
            assert_eq!(
                classify(st(403), &none, quota, &[]),
                UpstreamError::QuotaExceeded { retry_after: Duration::from_secs(65) }
            );
        }
        assert_eq!(
            classify_onboarding_failure(st(403), &with, b"", &[]),
            UpstreamError::QuotaExceeded { retry_after: Duration::from_secs(9) }
        );
        // A 403 with an OAuth error and no Retry-After is the OAuth server's, not a quota.
        assert!(matches!(
            classify_token_failure(st(403), &none, br#"{"error":"unauthorized_client"}"#, &[]),
            UpstreamError::KeyRejected { .. }
        ));
        // Even with an OAuth-looking body, Retry-After makes it the gateway's quota.
        assert!(matches!(
            classify_token_failure(st(403), &with, br#"{"error":"invalid_client"}"#, &[]),
            UpstreamError::QuotaExceeded { .. }
        ));
        assert_eq!(parse_replenished_message(b"replenished in 1.02:00:00."), Some(Duration::from_secs(93_600)));
        assert_eq!(parse_replenished_message(b"replenished in soon"), None);
        assert!(parse_replenished_message(b"replenished in 99999999999999999999:00:00").is_none());
        assert_eq!(
            parse_replenished_message(b"replenished in 999999999:00:00"),
            Some(Duration::from_secs(999_999_999 * 3600))
        );
    }

    #[test]
    fn gateway_subscription_key_messages() {
        let st = |c| StatusCode::from_u16(c).expect("valid status");
        let h = HeaderMap::new();
        let missing = br#"{"statusCode": 401, "message": "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API."}"#;
        let invalid = br#"{"statusCode": 401, "message": "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."}"#;
        for (body, problem) in
            [(&missing[..], SubscriptionKeyProblem::Missing), (&invalid[..], SubscriptionKeyProblem::Invalid)]
        {
            let want = UpstreamError::SubscriptionKeyRejected { status: 401, problem };
            assert_eq!(classify_token_failure(st(401), &h, body, &[]), want);
            assert_eq!(classify_api_failure(st(401), &h, body, &[]), want);
            assert_eq!(classify_onboarding_failure(st(401), &h, body, &[]), want);
        }
    }

    #[test]
    fn problem_details_keep_the_trace_id_and_field_names() {
        let st = |c| StatusCode::from_u16(c).expect("valid status");
        let h = HeaderMap::new();
        let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let body = format!(
            r#"{{"type":"https://tools.ietf.org/html/rfc9110#section-15.5.1","title":"One or more validation errors occurred.","status":400,"errors":{{"ClientOrganizationNo":["The ClientOrganizationNo field is required."]}},"traceId":"{trace}"}}"#
        );
        let e = classify_onboarding_failure(st(400), &h, body.as_bytes(), &[]);
        assert_eq!(e.trace_id().map(TraceId::as_str), Some(trace));
        let shown = e.to_string();
        assert!(shown.contains("fields: ClientOrganizationNo") && shown.contains(trace), "{shown}");
        let e = classify_api_failure(st(503), &h, body.as_bytes(), &[]);
        assert_eq!(e.trace_id().map(TraceId::as_str), Some(trace));
        assert!(e.to_string().ends_with(&format!("(Go traceId {trace})")), "{e}");
        let aspnet = br#"{"title":"x","status":403,"traceId":"0HMVD5NQ3LJ0K:00000001"}"#;
        assert_eq!(
            classify_api_failure(st(403), &h, aspnet, &[]).trace_id().map(TraceId::as_str),
            Some("0HMVD5NQ3LJ0K:00000001")
        );
    }
}
