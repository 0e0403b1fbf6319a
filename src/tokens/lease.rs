//! What a caller hands the broker and gets back: who asks ([`Requester`]), the token
//! ([`CachedToken`], as cached and handed out), where it came from ([`TokenSource`]) and the
//! lease that carries both ([`TokenLease`]); and what Go said about a key the broker proved
//! ([`ValidatedKey`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::crypto::{AccessToken, Fingerprint};
use crate::domain::Environment;

/// Who asks for a token, as the limiter's fairness sees it: the caller's identity (the
/// certificate identity) and its share of the upstream budget (`upstream_share` of its
/// policy grant; `None`: `tokens.default_upstream_share`). Borrowed, so the cache-hit path
/// neither allocates nor locks for it; only a request that reaches the limiter copies it.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub caller: &'a str,
    pub share: Option<f64>,
}

impl<'a> Requester<'a> {
    pub fn new(caller: &'a str, share: Option<f64>) -> Self {
        Self { caller, share }
    }
}

/// A token as cached and handed out.
#[derive(Debug)]
pub struct CachedToken {
    pub access_token: AccessToken,
    pub token_type: String,
    pub expires_at: Instant,
    pub expires_at_wall: SystemTime,
    pub lifetime: Duration,
    pub environment: Environment,
    /// `{base}/v2`: where the caller sends its API calls.
    pub api_base_url: String,
    pub key_version: i64,
    /// Keyed fingerprint of the token, for the audit log.
    pub fingerprint: Fingerprint,
    /// `fingerprint` as the audit log writes it (`keyid:tag`), formatted once per token
    /// rather than on every cache hit.
    pub fingerprint_text: String,
    /// Go's ClientId of the tenant's client when the token was minted (support quotes it).
    pub go_client_id: Option<String>,
    pub(super) refresh_at: Instant,
    /// Minted by another replica and taken from the shared cache (PostgreSQL).
    pub from_other_replica: bool,
}

/// What Go said about a key proven by [`Broker::validate_key`](super::Broker::validate_key).
#[derive(Debug, Clone)]
pub struct ValidatedKey {
    pub info: crate::upstream::ClientIntegrationInfo,
}

/// Where a handed-out token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The cache, valid for at least the caller's `min_validity`.
    Cache,
    /// A new upstream request this caller started; Go answered with `upstream_status`.
    Upstream { upstream_status: u16 },
    /// Another caller's upstream request for the same tenant.
    SharedFlight,
    /// A token another replica minted, from the cache replicas share on PostgreSQL.
    OtherReplica,
    /// Upstream is in trouble: a cached token still valid but shorter than `min_validity`.
    StaleDuringOutage,
}

#[derive(Debug, Clone)]
pub struct TokenLease {
    pub token: Arc<CachedToken>,
    pub source: TokenSource,
    /// Go's ClientId of the tenant's client, when known (for the audit record: support
    /// quotes it).
    pub go_client_id: Option<Arc<str>>,
}
