//! `TokenService`: the caller's budget, parse, authorize on the tenant, ask the broker,
//! audit, answer.
//!
//! The audit rule for a token handed out (DESIGN.md invariant 6): the first time a token
//! reaches a caller (identity, certificate serial, peer IP address) its record is durable
//! before the answer; a repeat of that pair is recorded in the next group commit without
//! being awaited, and refused like everything else while the log is failing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::{Caller, Extra, ServerState, errors, timestamp};
use crate::audit::{Action, Outcome};
use crate::authz::Role;
use crate::domain::{InvalidInput, TenantId};
use crate::proto::v1::token_service_server::TokenService;
use crate::proto::v1::{GetAccessTokenRequest, GetAccessTokenResponse};
use crate::tokens::{BrokerError, Requester, TokenSource};
use crate::usecase::{Admission, Asker, Disclosure, Pair};

pub struct TokenSvc {
    pub state: Arc<ServerState>,
}

#[tonic::async_trait]
impl TokenService for TokenSvc {
    async fn get_access_token(
        &self,
        req: Request<GetAccessTokenRequest>,
    ) -> Result<Response<GetAccessTokenResponse>, Status> {
        let started = std::time::Instant::now();
        let result = self.serve(req).await;
        let m = &self.state.metrics;
        m.token_latency.observe(started.elapsed());
        match &result {
            Ok((_, source)) => m.tokens_minted.inc(match source {
                TokenSource::Cache => "cache",
                TokenSource::Upstream { .. } => "upstream",
                TokenSource::SharedFlight => "shared",
                TokenSource::OtherReplica => "replica",
                TokenSource::StaleDuringOutage => "stale",
            }),
            Err(s) => m.tokens_denied.inc(super::metrics::reason(s.code())),
        }
        result.map(|(r, _)| r)
    }
}

impl TokenSvc {
    async fn serve(
        &self,
        req: Request<GetAccessTokenRequest>,
    ) -> Result<(Response<GetAccessTokenResponse>, TokenSource), Status> {
        let caller = Caller::of(&req)?;
        let st = &self.state;
        let (policy, generation) = st.authz.current();
        // Before anything else is done or recorded for the request: a runaway caller costs a
        // lookup, and its refusals one record a second (`usecase::caller_budget`).
        let asker = Asker {
            identity: &caller.identity.id,
            serial: &caller.identity.serial,
            peer: &caller.peer_text,
            request_id: &caller.request_id,
        };
        let rate = || policy.requests_per_second(&caller.identity.id).unwrap_or(st.caller_requests_per_second);
        if let Admission::Refused { retry_after } = st.budgets.admit(asker, generation, rate, Instant::now()) {
            return Err(errors::over_budget(retry_after));
        }
        let r = req.into_inner();
        let tenant = match TenantId::parse_field("tenant_id", &r.tenant_id) {
            Ok(t) => t,
            Err(e) => {
                st.record(&caller, Action::TokenDenied, None, Outcome::Denied, "invalid tenant_id", Extra::default())
                    .await?;
                return Err(errors::invalid(&e));
            }
        };
        // Above the cap is refused, not quietly capped: a caller that asked for 5000 s and
        // got OK would count on a token that expires after about 20 minutes.
        let cap = st.broker.config().max_min_validity.as_secs();
        if u64::from(r.min_validity_seconds) > cap {
            let e = InvalidInput::new(
                "min_validity_seconds",
                format!(
                    "{} is above the most this vault allows ({cap} s, tokens.max_min_validity_secs; Go's tokens live about 20 minutes): ask for {cap} or less",
                    r.min_validity_seconds
                ),
            );
            st.record(&caller, Action::TokenDenied, Some(&tenant), Outcome::Denied, &e.to_string(), Extra::default())
                .await?;
            return Err(errors::invalid(&e));
        }
        let Some(share) = policy.token_grant(&caller.identity.id, &tenant) else {
            st.record(
                &caller,
                Action::TokenDenied,
                Some(&tenant),
                Outcome::Denied,
                "caller not granted token on tenant",
                Extra::default(),
            )
            .await?;
            return Err(errors::permission_denied(Role::Token));
        };
        let min_validity = (r.min_validity_seconds > 0).then(|| Duration::from_secs(u64::from(r.min_validity_seconds)));
        let who = Requester::new(&caller.identity.id, share);
        match st.broker.get_token_for(&tenant, who, min_validity).await {
            Ok(lease) => {
                let t = &lease.token;
                let (detail, upstream_status) = match lease.source {
                    TokenSource::Cache => ("from cache", None),
                    TokenSource::Upstream { upstream_status } => ("minted upstream", Some(upstream_status)),
                    TokenSource::SharedFlight => ("shared upstream request", None),
                    TokenSource::OtherReplica => ("minted by another replica", None),
                    TokenSource::StaleDuringOutage => {
                        ("from cache, shorter than min_validity: upstream unavailable", None)
                    }
                };
                let extra = Extra {
                    key_version: Some(t.key_version),
                    upstream_status,
                    token_fingerprint: Some(t.fingerprint_text.clone()),
                };
                // Go's ClientId, so a support case can quote it (go-api.md, "Keys").
                let detail = match &lease.go_client_id {
                    Some(id) => format!("{detail}; Go ClientId {id}"),
                    None => detail.to_owned(),
                };
                let pair =
                    Pair::new(&caller.identity.id, &caller.identity.serial, caller.peer.ip(), &t.fingerprint_text);
                match st.disclosures.classify(&pair, Instant::now()) {
                    Disclosure::Repeat => {
                        // Held already, its disclosure durable: recorded in the next
                        // commit, not awaited; refused while the log is failing.
                        let detail = format!("{detail}; repeat");
                        st.record_unawaited(&caller, Action::TokenMinted, Some(&tenant), Outcome::Ok, &detail, extra)?;
                        st.metrics.disclosures.inc("repeat");
                    }
                    Disclosure::First => {
                        // Durable before the token leaves: fail closed.
                        st.record(&caller, Action::TokenMinted, Some(&tenant), Outcome::Ok, &detail, extra).await?;
                        st.disclosures.disclosed(pair, t.expires_at, Instant::now());
                        st.metrics.disclosures.inc("first");
                    }
                }
                let subscription_key = if st.return_subscription_key {
                    st.subscription_key(t.environment).await.unwrap_or_default()
                } else {
                    String::new()
                };
                let response = Response::new(GetAccessTokenResponse {
                    access_token: t.access_token.expose_secret().to_owned(),
                    token_type: t.token_type.clone(),
                    expires_at: Some(timestamp(t.expires_at_wall)),
                    environment: t.environment.to_string(),
                    api_base_url: t.api_base_url.clone(),
                    subscription_key,
                });
                Ok((response, lease.source))
            }
            Err(e) => {
                let outcome = match e {
                    BrokerError::NotFound(_) | BrokerError::Disabled(_) | BrokerError::KeyRejected(_) => {
                        Outcome::Denied
                    }
                    _ => Outcome::Error,
                };
                if matches!(e, BrokerError::Integrity(_)) {
                    tracing::error!(tenant = %tenant, "ALARM: {e}");
                }
                st.record(&caller, Action::TokenDenied, Some(&tenant), outcome, &e.to_string(), Extra::default())
                    .await?;
                Err(errors::broker(&e))
            }
        }
    }
}
