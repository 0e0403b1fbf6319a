//! The simulator's mutable state: clients, issued tokens, the per-subscription-key rate
//! limiter, pending faults, onboarding sessions (see `onboarding`) and the counters tests
//! read.
//!
//! One `std::sync::Mutex` guards it all ([`Shared`], with the shutdown signal); it is never
//! held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::answers::{RateLimitStyle, SimAnswer};
use super::onboarding_state::OnboardingState;
use super::types::{RecordedRequest, SimClient};
use crate::domain::Environment;

/// How many arrival times are kept (oldest dropped first), so a long `pogo-vault sim` run
/// does not grow without bound.
const MAX_ARRIVALS: usize = 100_000;

/// Issued tokens kept before expired ones are pruned.
const PRUNE_TOKENS_ABOVE: usize = 10_000;

/// Which endpoint a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Token,
    ClientIntegrationInformation,
    OnboardingInitiate,
    OnboardingFinalize,
    /// `GET /v2/Customers` (`api.rs`, as the remaining three).
    Customers,
    /// `POST /v2/OutgoingInvoices`.
    OutgoingInvoices,
    /// `GET /v2/Sim/Download`.
    Download,
    /// `POST /v2/Sim/Upload`.
    Upload,
    // The approval page is not here: it is the user's browser talking to Go's web front, not
    // an API call, so it is routed before faults, counters and the rate limit apply.
}

impl Endpoint {
    /// Whether errors here use ProblemDetails (the onboarding API) rather than the
    /// gateway's `{statusCode, message}`.
    pub(super) fn is_onboarding(self) -> bool {
        matches!(self, Self::OnboardingInitiate | Self::OnboardingFinalize)
    }

    /// Whether this is one of the v2 API endpoints a gateway forwards to (`api.rs`).
    pub(super) fn is_v2_api(self) -> bool {
        matches!(self, Self::Customers | Self::OutgoingInvoices | Self::Download | Self::Upload)
    }
}

/// A fault to inject instead of the normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fault {
    /// Answer exactly this.
    Answer(SimAnswer),
    /// Answer 403 "out of call volume quota" for this many seconds, with or without
    /// `Retry-After`.
    Quota(u64, bool),
    /// Close the connection without answering.
    Drop,
    /// Never answer (until the simulator shuts down).
    Hang,
    /// Answer with this status and a gateway-shaped body.
    Status(u16),
    /// Answer 429 with `Retry-After: secs`.
    RateLimited(u64),
}

/// Pending faults, consumed one per request in the order canned answers, drop, hang,
/// status, 429, quota 403.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) answers: VecDeque<SimAnswer>,
    pub(super) quota: u32,
    pub(super) quota_secs: u64,
    pub(super) quota_header: bool,
    pub(super) latency: Duration,
    pub(super) drop: u32,
    pub(super) hang: u32,
    pub(super) status: u32,
    pub(super) status_code: u16,
    pub(super) rate_limited: u32,
    pub(super) retry_after_secs: u64,
}

impl Faults {
    pub(super) fn take(&mut self) -> Option<Fault> {
        fn dec(n: &mut u32) -> bool {
            let had = *n > 0;
            *n = n.saturating_sub(1);
            had
        }
        if let Some(a) = self.answers.pop_front() {
            Some(Fault::Answer(a))
        } else if dec(&mut self.drop) {
            Some(Fault::Drop)
        } else if dec(&mut self.hang) {
            Some(Fault::Hang)
        } else if dec(&mut self.status) {
            Some(Fault::Status(self.status_code))
        } else if dec(&mut self.rate_limited) {
            Some(Fault::RateLimited(self.retry_after_secs))
        } else if dec(&mut self.quota) {
            Some(Fault::Quota(self.quota_secs, self.quota_header))
        } else {
            None
        }
    }
}

/// A sliding-window limiter per subscription key: at most `limit` admitted requests in any
/// `window`. Refused requests do not count (as with Azure API Management's rate-limit).
#[derive(Debug)]
pub(super) struct RateLimiter {
    pub(super) limit: u32,
    pub(super) window: Duration,
    admitted: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    pub(super) fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, admitted: HashMap::new() }
    }

    /// Admits a request at `now` if the key has had fewer than `limit` in the window.
    pub(super) fn admit(&mut self, key: &str, now: Instant) -> bool {
        let q = self.admitted.entry(key.to_owned()).or_default();
        while q.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            q.pop_front();
        }
        if q.len() >= self.limit as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}

/// A client key registered with the simulator. Several keys may name the same client
/// (`client.client_id`): re-onboarding revokes the old one and adds a new one.
#[derive(Debug, Clone)]
pub(super) struct ClientEntry {
    pub(super) client: SimClient,
    pub(super) revoked: bool,
    /// Order of registration: the highest is a client's newest key.
    pub(super) seq: u64,
}

/// A token the simulator issued.
#[derive(Debug, Clone)]
pub(super) struct IssuedToken {
    pub(super) environment: Environment,
    pub(super) client: SimClient,
    pub(super) expires_at: Instant,
}

/// Everything the handlers and the handle share.
#[derive(Debug)]
pub(super) struct State {
    /// Where the simulator listens (for the onboarding `TemporaryUrl`).
    pub(super) addr: SocketAddr,
    pub(super) application_key: String,
    pub(super) subscription_keys: Vec<(Environment, String)>,
    pub(super) token_lifetime: Duration,
    pub(super) limiter: RateLimiter,
    pub(super) clients: HashMap<(Environment, String), ClientEntry>,
    /// The `seq` of the last client key registered.
    pub(super) client_seq: u64,
    pub(super) tokens: HashMap<String, IssuedToken>,
    pub(super) faults: Faults,
    pub(super) counters: Counters,
    pub(super) onboarding: OnboardingState,
    /// How 429s are written.
    pub(super) rate_limit_style: RateLimitStyle,
    /// Every bearer token is refused (401) by the v2 API endpoints while set.
    pub(super) reject_bearer: bool,
}

/// What tests read back.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) token_requests: u64,
    pub(super) token_requests_by_client: HashMap<String, u64>,
    pub(super) successful_tokens: u64,
    pub(super) api_requests: u64,
    pub(super) arrivals: VecDeque<(Instant, Endpoint)>,
    pub(super) last_token_request: Option<RecordedRequest>,
    pub(super) onboarding_initiations: u64,
    pub(super) onboarding_finalizations: u64,
    pub(super) last_onboarding_request: Option<RecordedRequest>,
    /// Requests that reached the v2 API endpoints of `api.rs`.
    pub(super) v2_requests: u64,
    /// The last of them (headers, path and query; never an upload's body).
    pub(super) last_v2_request: Option<RecordedRequest>,
    pub(super) invoices_created: u64,
    /// Every request that reached the simulator, routed or not (the approval page aside).
    pub(super) requests_seen: u64,
}

impl State {
    /// Whether `key` is a subscription key of `env`.
    pub(super) fn subscription_known(&self, env: Environment, key: &str) -> bool {
        self.subscription_keys.iter().any(|(e, k)| *e == env && k == key)
    }

    pub(super) fn record_arrival(&mut self, at: Instant, endpoint: Endpoint) {
        if self.counters.arrivals.len() >= MAX_ARRIVALS {
            self.counters.arrivals.pop_front();
        }
        self.counters.arrivals.push_back((at, endpoint));
        match endpoint {
            Endpoint::Token => self.counters.token_requests += 1,
            Endpoint::ClientIntegrationInformation => self.counters.api_requests += 1,
            Endpoint::OnboardingInitiate => self.counters.onboarding_initiations += 1,
            Endpoint::OnboardingFinalize => self.counters.onboarding_finalizations += 1,
            Endpoint::Customers | Endpoint::OutgoingInvoices | Endpoint::Download | Endpoint::Upload => {
                self.counters.v2_requests += 1
            }
        }
    }

    /// Registers (or replaces) an active client key as the newest key of its client.
    pub(super) fn insert_client(&mut self, env: Environment, client_key: String, client: SimClient) {
        self.client_seq += 1;
        self.clients.insert((env, client_key), ClientEntry { client, revoked: false, seq: self.client_seq });
    }

    pub(super) fn store_token(&mut self, token: String, issued: IssuedToken, now: Instant) {
        if self.tokens.len() >= PRUNE_TOKENS_ABOVE {
            self.tokens.retain(|_, t| t.expires_at > now);
        }
        self.tokens.insert(token, issued);
    }

    /// The arrival times of requests to `endpoint` (all endpoints for `None`), oldest first.
    pub(super) fn arrivals(&self, endpoint: Option<Endpoint>) -> Vec<Instant> {
        self.counters.arrivals.iter().filter(|(_, e)| endpoint.is_none_or(|want| want == *e)).map(|(t, _)| *t).collect()
    }
}

/// The largest number of `times` (sorted ascending) that fall in any half-open interval
/// `[t, t + window)`.
pub(super) fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while t.saturating_duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

/// State shared by the handle and the handlers.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) shutdown: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn wait_for_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        // Err means the sender is gone, which is a shutdown too.
        let _ = rx.wait_for(|down| *down).await;
    }

    /// Sleeps for `d`; false if the simulator shut down first.
    pub(super) async fn sleep_unless_shutdown(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.wait_for_shutdown() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_admits_n_per_window_and_slides() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = RateLimiter::new(3, Duration::from_secs(1));
        assert!(l.admit("k", t0));
        assert!(l.admit("k", t0 + ms(100)));
        assert!(l.admit("k", t0 + ms(200)));
        assert!(!l.admit("k", t0 + ms(300)), "fourth in the same second");
        assert!(l.admit("other", t0 + ms(300)), "keys are limited separately");
        assert!(!l.admit("k", t0 + ms(999)));
        assert!(l.admit("k", t0 + ms(1000)), "the first left the window");
        assert!(!l.admit("k", t0 + ms(1050)));
        assert!(l.admit("k", t0 + ms(1100)));
    }

    #[test]
    fn max_in_window_counts_rolling_seconds() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = Duration::from_secs(1);
        assert_eq!(max_in_window(&[], s), 0);
        assert_eq!(max_in_window(&[t0], s), 1);
        let times = [t0, t0 + ms(600), t0 + ms(900), t0 + ms(1000), t0 + ms(1500), t0 + ms(1599)];
        // [600, 1599] holds 600, 900, 1000, 1500, 1599.
        assert_eq!(max_in_window(&times, s), 5);
        let spread = [t0, t0 + ms(1000), t0 + ms(2000)];
        assert_eq!(max_in_window(&spread, s), 1);
    }

    #[test]
    fn faults_are_consumed_one_per_request() {
        let mut f =
            Faults { drop: 1, status: 2, status_code: 503, rate_limited: 1, retry_after_secs: 2, ..Faults::default() };
        assert_eq!(f.take(), Some(Fault::Drop));
        assert_eq!(f.take(), Some(Fault::Status(503)));
        assert_eq!(f.take(), Some(Fault::Status(503)));
        assert_eq!(f.take(), Some(Fault::RateLimited(2)));
        assert_eq!(f.take(), None);
    }
}
