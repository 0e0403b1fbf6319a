//! The API gateway's use case: a caller's request for Go's API v2 on a tenant, sent with
//! the vault's token and subscription key, so the caller never holds either.
//!
//! One request, after the transport parsed it and the policy admitted it
//! (`server/gateway/`):
//! 1. the tenant's token from the broker (cached, or minted under the shared limiter);
//! 2. `api_requested`, durable before anything reaches Go (audit before effect: a POST
//!    changes a customer's books), and before the limiter's slot is taken (a stalled audit
//!    log holds requests back; it never releases a burst of them afterwards);
//! 3. a slot of the environment's one limiter for the call itself (`Broker::api_slot`:
//!    the limiter token requests use too, fair between callers, with a bounded wait:
//!    beyond it [`GatewayError::Queue`], a 429 with `Retry-After` from the gateway itself,
//!    and `api_answered` says it was not sent);
//! 4. the call; a refusal's body is read ahead (64 KiB at most) to classify it: a 429 or
//!    the quota 403 pauses the limiter for every caller (`Broker::api_refused`); a 401 about
//!    the token, when the token came from the cache and the body can be sent again (none,
//!    or one small enough to have been kept whole), drops that token, mints once and
//!    retries once (recorded as a second `api_requested` naming the new token's
//!    fingerprint); never for a body already streamed;
//! 5. `api_answered` (Go's status, bytes sent, the answer's declared length, time, Go's
//!    `traceId`), durable before the answer starts back to the caller. If it cannot be
//!    written, Go may already have acted: the answer is withheld and the caller told so
//!    ([`GatewayError::SentUnrecorded`], not "retry, nothing was done");
//! 6. the answer streams back; when it ends otherwise than it declared (no length given,
//!    cut, or the caller went away) `api_completed` says how, without being awaited (the
//!    caller already has the status; a record that cannot be written is counted lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::gateway_body::{Answer, Chained, Ending, Meter, ReadAhead, read_ahead};
use crate::audit::{Action, AuditLog, AuditRecord, Outcome};
use crate::domain::{ApiMethod, ApiPath, ApiQuery, TenantId};
use crate::tokens::{Broker, BrokerError, CachedToken, Requester, TokenLease, TokenSource};
use crate::upstream::{ApiCall, GoClient, UpstreamError};

/// The most of a refused answer's body read ahead to classify it.
const REFUSAL_READ_AHEAD: usize = 64 * 1024;

/// The gateway's knobs (`[gateway]`).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The longest a request waits for its limiter slot before the gateway answers 429.
    pub max_queue_wait: Duration,
    /// Largest answer passed on; a longer one is cut.
    pub max_response_bytes: u64,
}

/// Who sends an API request, as its audit records name it.
#[derive(Debug, Clone)]
pub struct ApiCaller {
    pub identity: String,
    pub serial: String,
    pub peer: String,
    pub request_id: String,
    /// Its weight at the limiter (the deciding grant's `upstream_share`).
    pub share: Option<f64>,
}

/// A request's body as the gateway sends it.
pub enum OutgoingBody {
    /// Whole in memory (none, or small enough to keep): can be sent again.
    Kept(Bytes),
    /// Streamed from the caller as it arrives: sent once. The transport's [`Meter`] counts it.
    Streamed(reqwest::Body),
}

/// An admitted request.
pub struct ApiRequest {
    pub tenant: TenantId,
    pub method: ApiMethod,
    pub path: ApiPath,
    pub query: ApiQuery,
    /// The caller's headers, stripped of credentials and hop-by-hop headers.
    pub headers: HeaderMap,
    pub body: OutgoingBody,
    /// Counts the request body's bytes as they go (a [`Kept`](OutgoingBody::Kept) body
    /// was counted when read).
    pub sent: Arc<Meter>,
    /// Set by the transport when the caller went away: nothing more is sent for it.
    pub caller_gone: Arc<std::sync::atomic::AtomicBool>,
}

impl ApiRequest {
    /// `GET /v2/Customers?$top=` : the method, the path and the query's names, no values.
    pub fn describe(&self) -> String {
        let q = self.query.shown();
        let sep = if q.is_empty() { "" } else { "?" };
        format!("{} {}{sep}{q}", self.method.as_str(), self.path.as_sent())
    }
}

/// Go's answer, ready to stream back.
pub struct ApiAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Answer<reqwest::Body>,
    /// How long the request waited for limiter slots in all.
    pub queue_wait: Duration,
}

/// Why a request got no answer from Go.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The tenant's token could not be had (unknown, disabled, key rejected, Go away).
    #[error(transparent)]
    Token(BrokerError),
    /// The limiter's turn is further away than the bounded wait.
    #[error("the integration's request budget at PowerOffice Go is taken; retry after {} s", retry_after.as_secs().max(1))]
    Queue { retry_after: Duration },
    /// A record could not be made durable before anything was sent: nothing was.
    #[error("the audit log cannot be written right now")]
    AuditUnavailable,
    /// The request was sent (Go may have acted), but the record of its answer could not be
    /// made durable: the answer is withheld. Not to be repeated blindly.
    #[error("the request reached PowerOffice Go, but its answer could not be recorded and is withheld")]
    SentUnrecorded,
    /// Go gave no answer (connection, TLS, timeout), or its answer could not be read.
    #[error(transparent)]
    Upstream(UpstreamError),
    /// The caller's body passed `gateway.max_request_bytes` while it streamed.
    #[error("the request body is larger than the gateway accepts")]
    RequestTooLarge,
    /// The caller's body broke off while it streamed.
    #[error("the request body ended early")]
    RequestBroken,
    /// The caller went away before its turn at the limiter came: not sent.
    #[error("the caller went away before the request was sent")]
    CallerGone,
    /// Go's answer declared a length above `gateway.max_response_bytes`.
    #[error("PowerOffice Go's answer ({declared} bytes) is larger than the gateway passes on")]
    AnswerTooLarge { declared: u64 },
}

/// The gateway use case. Cheap to clone.
#[derive(Clone)]
pub struct ApiGateway {
    broker: Broker,
    go: GoClient,
    audit: AuditLog,
    cfg: GatewayConfig,
}

impl ApiGateway {
    pub fn new(broker: Broker, go: GoClient, audit: AuditLog, cfg: GatewayConfig) -> Self {
        Self { broker, go, audit, cfg }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// Sends `req` to Go for `who` (module docs for the steps and their records).
    pub async fn forward(&self, who: &ApiCaller, mut req: ApiRequest) -> Result<ApiAnswer, GatewayError> {
        let started = Instant::now();
        let requester = Requester::new(&who.identity, who.share);
        let mut lease = match self.broker.get_token_for(&req.tenant, requester, None).await {
            Ok(lease) => lease,
            Err(e) => return Err(self.refused(who, &req, GatewayError::Token(e)).await),
        };
        let env = lease.token.environment;
        let subscription_key = match self.broker.subscription_key(env).await {
            Ok(k) => k,
            Err(e) => return Err(self.refused(who, &req, GatewayError::Token(e)).await),
        };
        let url = match crate::upstream::api_url(&lease.token.api_base_url, req.path.as_sent(), req.query.forward()) {
            Ok(u) => u,
            Err(e) => return Err(self.refused(who, &req, GatewayError::Upstream(e)).await),
        };
        let method = match reqwest::Method::from_bytes(req.method.as_str().as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                let e = UpstreamError::config("an HTTP method the client cannot send");
                return Err(self.refused(who, &req, GatewayError::Upstream(e)).await);
            }
        };
        let what = req.describe();
        let body_shown = match &req.body {
            OutgoingBody::Kept(b) if b.is_empty() => "no body".to_owned(),
            OutgoingBody::Kept(b) => format!("body {} bytes", b.len()),
            OutgoingBody::Streamed(_) => "body streamed".to_owned(),
        };
        // Durable before the limiter's slot is taken: a stall of the audit log then holds
        // requests back before their turn, never releases a burst of them after it.
        let intent = format!("{what} ({body_shown})");
        self.record(who, &req.tenant, &lease.token, Action::ApiRequested, Outcome::Ok, intent, None).await?;
        let mut queue_wait = self.slot_or_record(who, &req, &lease.token, env, requester, false).await?;

        let mut retried = false;
        let got = loop {
            let body = match &mut req.body {
                OutgoingBody::Kept(b) => reqwest::Body::from(b.clone()),
                OutgoingBody::Streamed(b) => std::mem::replace(b, reqwest::Body::from(Bytes::new())),
            };
            let call = ApiCall { method: method.clone(), url: url.clone(), headers: req.headers.clone(), body };
            let sent = self.go.forward(call, &lease.token.access_token, &subscription_key).await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    let error = if req.sent.over_limit() {
                        GatewayError::RequestTooLarge
                    } else if req.sent.failed() {
                        GatewayError::RequestBroken
                    } else {
                        GatewayError::Upstream(e)
                    };
                    let detail = format!("{what}: no answer from PowerOffice Go ({error}) after {} ms", ms(started));
                    let rec =
                        self.record(who, &req.tenant, &lease.token, Action::ApiAnswered, Outcome::Error, detail, None);
                    // Go may have acted before it failed to answer: never "retry, nothing was done".
                    return Err(match rec.await {
                        Ok(()) => error,
                        Err(_) => GatewayError::SentUnrecorded,
                    });
                }
            };
            let status = response.status();
            if status.as_u16() < 400 {
                break Got::Answer(response);
            }
            // A refusal: its small body says which (and carries Go's traceId).
            let (parts, prefix) = split_body(response);
            let (kept, rest) = match read_ahead(prefix, REFUSAL_READ_AHEAD).await {
                Ok(ReadAhead::Complete(b)) => (b, None),
                Ok(ReadAhead::Partial { prefix, rest }) => (prefix, Some(rest)),
                Err(_) => {
                    let detail = format!("{what}: PowerOffice Go's {status} answer broke off");
                    let code = Some(status.as_u16());
                    let rec =
                        self.record(who, &req.tenant, &lease.token, Action::ApiAnswered, Outcome::Error, detail, code);
                    let broke = UpstreamError::Transient { reason: "the answer broke off".into(), trace_id: None };
                    return Err(match rec.await {
                        Ok(()) => GatewayError::Upstream(broke),
                        Err(_) => GatewayError::SentUnrecorded,
                    });
                }
            };
            let refusal = crate::upstream::classify_refusal(
                status,
                &parts.headers,
                &kept,
                &lease.token.access_token,
                &subscription_key,
            );
            let with_retry_after = parts.headers.contains_key(http::header::RETRY_AFTER);
            self.broker.api_refused(env, &refusal, with_retry_after);
            let cached =
                matches!(lease.source, TokenSource::Cache | TokenSource::StaleDuringOutage | TokenSource::OtherReplica)
                    || lease.token.from_other_replica;
            if matches!(refusal, UpstreamError::Unauthorized { status: 401, .. }) && cached && !retried {
                // Go no longer takes the cached token: nobody gets it again.
                self.broker.drop_refused_token(&req.tenant, &lease.token);
                if matches!(req.body, OutgoingBody::Kept(_)) {
                    retried = true;
                    tracing::info!(tenant = %req.tenant, request_id = %who.request_id, "401 from PowerOffice Go with a cached token: minting a new one and retrying once");
                    let refused = lease.token.clone();
                    lease = match self.fresh_token(&req.tenant, requester, &refused).await {
                        Ok(l) => l,
                        Err(e) => return Err(self.failed(who, &req, &refused, GatewayError::Token(e)).await),
                    };
                    // The retry carries another token: on record, by its fingerprint, first.
                    let again = format!("{what} ({body_shown}), again with a new token after PowerOffice Go's 401");
                    let rec =
                        self.record(who, &req.tenant, &lease.token, Action::ApiRequested, Outcome::Ok, again, None);
                    rec.await.map_err(|_| GatewayError::SentUnrecorded)?;
                    queue_wait += self.slot_or_record(who, &req, &lease.token, env, requester, true).await?;
                    continue;
                }
            }
            break Got::Refused { parts, kept, rest, refusal };
        };

        let (status, headers, declared, body, refusal) = match got {
            Got::Answer(response) => {
                let (parts, body) = split_body(response);
                (parts.status, parts.headers, parts.declared, Chained::new(Bytes::new(), Some(body)), None)
            }
            Got::Refused { parts, kept, rest, refusal } => {
                let declared = if rest.is_none() { Some(kept.len() as u64) } else { parts.declared };
                (parts.status, parts.headers, declared, Chained::new(kept, rest), Some(refusal))
            }
        };
        let code = Some(status.as_u16());
        if let Some(d) = declared.filter(|d| *d > self.cfg.max_response_bytes) {
            let detail = format!(
                "{what}: PowerOffice Go answered {status} with {d} bytes, above gateway.max_response_bytes ({}): not passed on",
                self.cfg.max_response_bytes
            );
            let rec = self.record(who, &req.tenant, &lease.token, Action::ApiAnswered, Outcome::Error, detail, code);
            rec.await.map_err(|_| GatewayError::SentUnrecorded)?;
            return Err(GatewayError::AnswerTooLarge { declared: d });
        }
        let trace = refusal.as_ref().and_then(UpstreamError::trace_id).map(|t| format!("; Go traceId {}", t.as_str()));
        let length = declared.map_or_else(|| "length not declared (streamed)".to_owned(), |d| format!("{d} bytes"));
        let detail = format!(
            "{what}: PowerOffice Go answered {} after {} ms; sent {} bytes; answer {length}; waited {} ms for the limiter{}{}",
            status.as_u16(),
            ms(started),
            req.sent.bytes(),
            queue_wait.as_millis(),
            trace.unwrap_or_default(),
            if retried { "; retried once with a new token after a 401" } else { "" },
        );
        let outcome = if status.is_success() || status.is_redirection() { Outcome::Ok } else { Outcome::Error };
        let rec = self.record(who, &req.tenant, &lease.token, Action::ApiAnswered, outcome, detail, code);
        // Go has acted: an answer that cannot be recorded is withheld, and the caller told so.
        rec.await.map_err(|_| GatewayError::SentUnrecorded)?;

        let on_end = self.completion(who, &req, &lease.token, status, declared, started);
        let body = Answer::new(body, self.cfg.max_response_bytes, on_end);
        Ok(ApiAnswer { status, headers, body, queue_wait })
    }

    /// Records a request refused before anything was sent (`api_denied`) and returns why;
    /// [`GatewayError::AuditUnavailable`] if the record cannot be made durable.
    async fn refused(&self, who: &ApiCaller, req: &ApiRequest, why: GatewayError) -> GatewayError {
        let outcome = match &why {
            GatewayError::Token(BrokerError::NotFound(_) | BrokerError::Disabled(_) | BrokerError::KeyRejected(_))
            | GatewayError::Queue { .. } => Outcome::Denied,
            _ => Outcome::Error,
        };
        let detail = format!("{}: not sent: {why}", req.describe());
        let rec = refusal_record(who, Some(&req.tenant), outcome, detail);
        match self.audit.append_receipt(rec).await {
            Ok(_) => why,
            Err(e) => {
                tracing::error!(request_id = %who.request_id, error = %e, "audit record not committed: gateway request refused (fail closed)");
                GatewayError::AuditUnavailable
            }
        }
    }

    /// Records a request Go refused with 401 whose retry could not be made, and returns why.
    async fn failed(&self, who: &ApiCaller, req: &ApiRequest, token: &CachedToken, why: GatewayError) -> GatewayError {
        let detail = format!("{}: PowerOffice Go answered 401; the retry could not be sent: {why}", req.describe());
        match self.record(who, &req.tenant, token, Action::ApiAnswered, Outcome::Error, detail, Some(401)).await {
            Ok(()) => why,
            Err(_) => GatewayError::SentUnrecorded,
        }
    }

    /// A slot of `env`'s limiter for one call (`retry`: the second, after Go's 401 to the
    /// first). When the wait would pass the bound, or the caller went away meanwhile, the
    /// request's `api_answered` says it was not sent (again), and the caller gets the
    /// gateway's 429.
    async fn slot_or_record(
        &self,
        who: &ApiCaller,
        req: &ApiRequest,
        token: &CachedToken,
        env: crate::domain::Environment,
        requester: Requester<'_>,
        retry: bool,
    ) -> Result<Duration, GatewayError> {
        let not_sent = if retry { "PowerOffice Go answered the first attempt 401; not sent again" } else { "not sent" };
        match self.broker.api_slot(env, requester, self.cfg.max_queue_wait).await {
            Ok(_) if req.caller_gone.load(std::sync::atomic::Ordering::Relaxed) => {
                let detail = format!("{}: {not_sent}: the caller went away before its turn", req.describe());
                self.record(who, &req.tenant, token, Action::ApiAnswered, Outcome::Denied, detail, None).await?;
                Err(GatewayError::CallerGone)
            }
            Ok(waited) => Ok(waited),
            Err(wait) => {
                let retry_after = wait.max(Duration::from_secs(1));
                let detail = format!(
                    "{}: {not_sent}: the integration's budget at PowerOffice Go is taken for longer than {} ms",
                    req.describe(),
                    self.cfg.max_queue_wait.as_millis()
                );
                self.record(who, &req.tenant, token, Action::ApiAnswered, Outcome::Denied, detail, None).await?;
                Err(GatewayError::Queue { retry_after })
            }
        }
    }

    /// A token other than `refused`: minted unless another request already replaced it.
    async fn fresh_token(
        &self,
        tenant: &TenantId,
        who: Requester<'_>,
        refused: &Arc<CachedToken>,
    ) -> Result<TokenLease, BrokerError> {
        let lease = self.broker.get_token_for(tenant, who, None).await?;
        if !Arc::ptr_eq(&lease.token, refused) {
            return Ok(lease);
        }
        // Dropped between our drop and our request by nobody else: drop and ask once more.
        self.broker.drop_refused_token(tenant, refused);
        self.broker.get_token_for(tenant, who, None).await
    }

    /// What runs when the answer's body ends: `api_completed` when it ended otherwise than
    /// declared (module docs), not awaited.
    fn completion(
        &self,
        who: &ApiCaller,
        req: &ApiRequest,
        token: &Arc<CachedToken>,
        status: StatusCode,
        declared: Option<u64>,
        started: Instant,
    ) -> super::gateway_body::OnEnd {
        let (audit, who, tenant, token) = (self.audit.clone(), who.clone(), req.tenant.clone(), token.clone());
        let what = req.describe();
        Box::new(move |ending| {
            let (outcome, how) = match ending {
                Ending::Complete { bytes } if declared == Some(bytes) => return,
                Ending::Complete { bytes } => (Outcome::Ok, format!("ended after {bytes} bytes")),
                Ending::Failed { bytes, over_limit: true } => {
                    (Outcome::Error, format!("cut after {bytes} bytes: above gateway.max_response_bytes"))
                }
                Ending::Failed { bytes, .. } => {
                    (Outcome::Error, format!("broke off after {bytes} bytes (PowerOffice Go's side)"))
                }
                Ending::Dropped { bytes } => {
                    (Outcome::Error, format!("not read to its end: the caller went away after {bytes} bytes"))
                }
            };
            let declared = declared.map_or_else(|| "not declared".to_owned(), |d| format!("{d} bytes declared"));
            let detail = format!(
                "{what}: the answer ({}; {declared}) {how}, {} ms after the request",
                status.as_u16(),
                ms(started)
            );
            let rec = record(&who, &tenant, &token, Action::ApiCompleted, outcome, detail, Some(status.as_u16()));
            if let Err(e) = audit.append_unawaited(rec) {
                tracing::warn!(request_id = %who.request_id, error = %e, "the record of an answer's end could not be queued");
            }
        })
    }

    /// Appends one of this request's records and waits until it is durable.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        who: &ApiCaller,
        tenant: &TenantId,
        token: &CachedToken,
        action: Action,
        outcome: Outcome,
        detail: String,
        upstream_status: Option<u16>,
    ) -> Result<(), GatewayError> {
        let rec = record(who, tenant, token, action, outcome, detail, upstream_status);
        self.audit.append_receipt(rec).await.map(|_| ()).map_err(|e| {
            tracing::error!(request_id = %who.request_id, error = %e, "audit record not committed: gateway request refused (fail closed)");
            GatewayError::AuditUnavailable
        })
    }
}

/// A record of `who`'s request on `tenant` made with `token` (its keyed fingerprint, never
/// the token).
fn record(
    who: &ApiCaller,
    tenant: &TenantId,
    token: &CachedToken,
    action: Action,
    outcome: Outcome,
    detail: String,
    upstream_status: Option<u16>,
) -> AuditRecord {
    let mut rec = AuditRecord::new(action, outcome)
        .caller(who.identity.clone(), who.serial.clone())
        .tenant(tenant.to_string())
        .key_version(token.key_version)
        .token_fingerprint(token.fingerprint_text.clone())
        .detail(detail)
        .request(who.request_id.clone(), who.peer.clone());
    rec.upstream_status = upstream_status;
    rec
}

/// The record of `who`'s request refused before it reached Go (no token involved).
pub fn refusal_record(who: &ApiCaller, tenant: Option<&TenantId>, outcome: Outcome, detail: String) -> AuditRecord {
    let mut rec = AuditRecord::new(Action::ApiDenied, outcome)
        .caller(who.identity.clone(), who.serial.clone())
        .detail(detail)
        .request(who.request_id.clone(), who.peer.clone());
    rec.tenant_id = tenant.map(TenantId::to_string);
    rec
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// What a call brought back: an answer to stream, or a refusal whose body was read ahead.
enum Got {
    Answer(reqwest::Response),
    Refused { parts: Parts, kept: Bytes, rest: Option<reqwest::Body>, refusal: UpstreamError },
}

/// A response's status, headers and declared length, kept apart from its body.
struct Parts {
    status: StatusCode,
    headers: HeaderMap,
    declared: Option<u64>,
}

fn split_body(response: reqwest::Response) -> (Parts, reqwest::Body) {
    let declared = response.content_length();
    let response: http::Response<reqwest::Body> = response.into();
    let (parts, body) = response.into_parts();
    (Parts { status: parts.status, headers: parts.headers, declared }, body)
}
