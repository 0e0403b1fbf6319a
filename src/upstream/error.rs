//! `UpstreamError`: what went wrong talking to Go, classified for the token broker.
//!
//! Invariant: no variant carries text that came from the network or from reqwest's own
//! messages. Reasons are fixed phrases plus status numbers, and the one value taken from a
//! response (the OAuth `error` code) is cut down to `[A-Za-z0-9_]{0,64}`. So `Display` and
//! `Debug` can never leak a client key, subscription key, token or response body, even if
//! Go echoed one back.
//!
//! A leaf: it imports nothing of its siblings. Turning Go's answers into these types is
//! `classify`'s work.

use std::time::Duration;

/// The shortest wait we ever ask for: PowerOffice advises waiting at least a second.
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest wait we accept from a `Retry-After`; a larger value is more likely a bug
/// (or a hostile answer) than a real instruction, and would park tenants for too long.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Which of the API gateway's subscription-key answers Go gave (go-api.md, "Token": the
/// gateway has two messages, "missing" and "invalid subscription key").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionKeyProblem {
    /// "Access denied due to missing subscription key": no key arrived (a proxy between us
    /// and Go stripped the header, or a bug of ours). Another key would not help.
    Missing,
    /// "Access denied due to invalid subscription key": the key is unknown, regenerated in
    /// Go's portal, or its subscription is inactive. The other key of the subscription
    /// (primary or secondary) may still work.
    Invalid,
    /// A 401 (or 403) about the subscription key without either message.
    Unspecified,
}

impl SubscriptionKeyProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Unspecified => "refused",
        }
    }
}

/// The `traceId` of a ProblemDetails answer (Go since .NET 8): not a secret, and what
/// PowerOffice support asks for, so it is kept in logs and audit details. Only Go's two
/// shapes are accepted, a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`) or an ASP.NET
/// request id (`<13 of 0-9A-Z>:<8 hex>`), and never one that contains a value we sent:
/// so no key or token can pass for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceId(String);

impl TraceId {
    /// Accepts Go's two shapes (see the type), refusing any that contains one of `sent`.
    pub(crate) fn parse(raw: &str, sent: &[&str]) -> Option<TraceId> {
        let t = raw.trim();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let parts: Vec<&str> = t.split('-').collect();
        let traceparent =
            parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2);
        let aspnet = t.split_once(':').is_some_and(|(conn, n)| {
            conn.len() == 13 && conn.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) && hex(n, 8)
        });
        // Compared as letters and digits only, any case: a key without its dashes, or part of
        // one (any 12 characters in a row), does not pass either.
        let alnum = |s: &str| s.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
        let trace = alnum(t);
        let echoes = sent.iter().map(|v| alnum(v)).filter(|v| v.len() >= 6).any(|v| {
            let b = v.as_bytes();
            if b.len() <= ECHO_WINDOW {
                return trace.contains(&v);
            }
            // ASCII after `alnum`, so every window is a str.
            b.windows(ECHO_WINDOW).any(|w| std::str::from_utf8(w).is_ok_and(|w| trace.contains(w)))
        });
        ((traceparent || aspnet) && !echoes).then(|| TraceId(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A trace id sharing this many letters and digits in a row with a value we sent is not kept.
const ECHO_WINDOW: usize = 12;

/// `" (Go traceId X)"`, or nothing: appended to messages that may carry one.
pub(crate) struct TraceSuffix<'a>(pub &'a Option<TraceId>);

impl std::fmt::Display for TraceSuffix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(t) => write!(f, " (Go traceId {t})"),
            None => Ok(()),
        }
    }
}

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
    /// key): an integration-wide problem, not one tenant's, and never a verdict on a
    /// client key.
    #[error("PowerOffice Go's gateway refused the subscription key as {} (HTTP {status})", problem.as_str())]
    SubscriptionKeyRejected {
        /// The HTTP status.
        status: u16,
        /// Which of the gateway's messages it was.
        problem: SubscriptionKeyProblem,
    },
    /// 403 from the gateway with `Retry-After`, or its `{statusCode, message}` body: the
    /// subscription's call quota is used up (go-api.md, "Token"). Like a 429 for the whole
    /// integration: pause, and never mark a key rejected.
    #[error("PowerOffice Go's quota for this subscription is used up; retry after {} s", retry_after.as_secs())]
    QuotaExceeded {
        /// How long Go asked us to wait, clamped to 1 s ..= 1 h.
        retry_after: Duration,
    },
    /// 429: too many requests for this subscription key; wait `retry_after` (1 s to 1 h).
    #[error("PowerOffice Go is rate limiting; retry after {} s", retry_after.as_secs())]
    RateLimited {
        /// How long Go asked us to wait, clamped to 1 s ..= 1 h.
        retry_after: Duration,
    },
    /// An API call was refused with 401/403 although the gateway accepted the subscription
    /// key: the bearer token is invalid, expired or lacks the privilege.
    #[error("PowerOffice Go refused the access token (HTTP {status}){}", TraceSuffix(trace_id))]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// The ProblemDetails `traceId`, if Go sent one.
        trace_id: Option<TraceId>,
    },
    /// Go or the network failed in a way that may pass: 5xx, 408, connection refused,
    /// reset or closed early, TLS handshake failure.
    #[error("PowerOffice Go is unavailable: {reason}{}", TraceSuffix(trace_id))]
    Transient {
        /// A fixed phrase such as `HTTP 503` or `connection refused`.
        reason: String,
        /// The ProblemDetails `traceId` of a 5xx, if Go sent one.
        trace_id: Option<TraceId>,
    },
    /// Go refused an onboarding call with a ProblemDetails answer (400, or 403 not about the
    /// subscription key). On `Onboarding/Finalize` this means the onboarding token is
    /// invalid, expired or already used: the user must start the onboarding again. On
    /// `Onboarding/Initiate` the request itself was refused (redirect URI not whitelisted,
    /// wrong application key): a configuration problem on our side.
    #[error("PowerOffice Go refused the onboarding (HTTP {status}: {title}){}", TraceSuffix(trace_id))]
    OnboardingRejected {
        /// The HTTP status.
        status: u16,
        /// The ProblemDetails `title`, with the names of the fields in its `errors` map,
        /// sanitised: printable ASCII only, at most 120 characters, with every value we sent
        /// and every long token-like word replaced by `[redacted]`. Falls back to the
        /// status's reason phrase.
        title: String,
        /// The ProblemDetails `traceId`, if Go sent one.
        trace_id: Option<TraceId>,
    },
    /// No answer within the connect or total timeout.
    #[error("PowerOffice Go did not answer in time")]
    Timeout,
    /// Go answered something we cannot use: an unexpected status, or a body that does not
    /// parse or lacks required fields.
    #[error("unexpected answer from PowerOffice Go: {reason}{}", TraceSuffix(trace_id))]
    Protocol {
        /// A fixed phrase naming what was wrong (never the body).
        reason: String,
        /// The ProblemDetails `traceId`, if Go sent one.
        trace_id: Option<TraceId>,
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
    /// rate limits, quotas, 5xx, network failures and timeouts.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::QuotaExceeded { .. } | Self::Transient { .. } | Self::Timeout)
    }

    /// The wait Go asked for, for `RateLimited` and `QuotaExceeded`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::QuotaExceeded { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The ProblemDetails `traceId` Go sent with this failure, if any.
    pub fn trace_id(&self) -> Option<&TraceId> {
        match self {
            Self::Unauthorized { trace_id, .. }
            | Self::Transient { trace_id, .. }
            | Self::OnboardingRejected { trace_id, .. }
            | Self::Protocol { trace_id, .. } => trace_id.as_ref(),
            _ => None,
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self::Protocol { reason: reason.into(), trace_id: None }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::Config { reason: reason.into() }
    }

    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        Self::Transient { reason: reason.into(), trace_id: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        assert!(UpstreamError::Timeout.is_retryable());
        assert!(UpstreamError::transient("HTTP 502").is_retryable());
        assert!(UpstreamError::RateLimited { retry_after: MIN_RETRY_AFTER }.is_retryable());
        assert!(!UpstreamError::KeyRejected { status: 400, error: "invalid_client".into() }.is_retryable());
        assert!(
            !UpstreamError::SubscriptionKeyRejected { status: 401, problem: SubscriptionKeyProblem::Invalid }
                .is_retryable()
        );
        assert!(!UpstreamError::Unauthorized { status: 401, trace_id: None }.is_retryable());
        assert!(!UpstreamError::protocol("x").is_retryable());
    }

    #[test]
    fn trace_ids_of_other_shapes_or_echoing_what_we_sent_are_dropped() {
        let sub = "0d9e5c1f4b2a4e6f8a7b3c2d1e0f9a8b";
        assert!(TraceId::parse("c0ffee00-1234-4abc-8def-0123456789ab", &[]).is_none(), "a GUID is not a trace id");
        assert!(TraceId::parse(sub, &[]).is_none(), "bare 32 hex could be a subscription key");
        assert!(TraceId::parse(&format!("00-{sub}-b7ad6b7169203331-00"), &[sub]).is_none());
        // Half of the key in the 16-hex part, or a client key without its dashes.
        assert!(TraceId::parse(&format!("00-0af7651916cd43dd8448eb211c80319c-{}-00", &sub[..16]), &[sub]).is_none());
        let client = "c0ffee00-1234-4abc-8def-0123456789ab";
        assert!(TraceId::parse("00-c0ffee0012344abc8def0123456789ab-b7ad6b7169203331-00", &[client]).is_none());
        assert!(TraceId::parse("eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.U0lH", &[]).is_none());
        assert!(TraceId::parse("", &[]).is_none());
        assert!(TraceId::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", &[sub]).is_some());
    }
}
