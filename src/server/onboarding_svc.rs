//! `OnboardingService`: Go's onboarding flow, so client keys reach the vault without any
//! person handling them.
//!
//! Begin: validate, ask Go for a temporary URL (our onboarding id rides in the redirect
//! URL's query, which Go ignores when matching its whitelist), persist the session.
//! Complete: the session's own caller only; at most once (a compare-and-set claims it);
//! not after expiry; a refusal status from Go closes it and is audited; on Success, Go's
//! Finalize hands over the keys and `Vault::apply_onboarding` stores all of them and
//! closes the session in one transaction.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{Caller, Extra, ServerState, caller_record, errors, timestamp_ms};
use crate::audit::{Action, AuditRecord, Outcome};
use crate::authz::Role;
use crate::domain::{DisplayName, Environment, InvalidInput, OrganizationNumber, TenantId};
use crate::proto::v1 as pb;
use crate::proto::v1::onboarding_service_server::OnboardingService;
use crate::store::onboarding::{Session, SessionStatus};
use crate::tokens::BrokerError;
use crate::upstream::OnboardingToken;
use crate::vault::{OnboardedKey, OnboardingOutcome};

pub struct OnboardingSvc {
    pub state: Arc<ServerState>,
}

/// Tries at storing the keys Go's Finalize handed over, while the log or database fails.
const APPLY_ATTEMPTS: u32 = 2;
/// The pause between those tries.
const APPLY_RETRY: Duration = Duration::from_millis(500);

/// The query parameter that carries our onboarding id through Go and back.
pub const STATE_PARAM: &str = "pogo_onboarding_id";
/// Grace after Go's temporary URL expires for the user to come back and us to finalize.
const COMPLETION_GRACE: Duration = Duration::from_secs(15 * 60);
/// Go's refusal statuses (go-api.md); anything else is refused as unknown.
const GO_STATUSES: &[&str] = &["Success", "Canceled", "ClientNotFound", "NoClientAccess", "IntegrationBlocked"];

struct Begin {
    env: Environment,
    redirect: reqwest::Url,
    org: Option<OrganizationNumber>,
    prefix: String,
}

/// The subject an onboarding is bound to: opaque, 1 to 256 bytes, no control characters.
fn check_subject(s: &str) -> Result<&str, InvalidInput> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            "subject",
            "required: 1 to 256 bytes without control characters identifying the integrator's end user or browser session",
        ));
    }
    Ok(s)
}

/// Fingerprint purpose of onboarding subjects.
const FP_SUBJECT: &str = "onboarding-subject";

fn parse_begin(r: &pb::BeginOnboardingRequest) -> Result<Begin, InvalidInput> {
    let env = Environment::parse_field("environment", &r.environment)?;
    let redirect = reqwest::Url::parse(r.redirect_url.trim())
        .map_err(|e| InvalidInput::new("redirect_url", format!("not an absolute URL: {e}")))?;
    let loopback = matches!(redirect.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match redirect.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(InvalidInput::new("redirect_url", "must be https (http only for localhost)")),
    }
    if redirect.fragment().is_some() || !redirect.username().is_empty() || redirect.password().is_some() {
        return Err(InvalidInput::new("redirect_url", "must not contain credentials or a fragment"));
    }
    if redirect.query_pairs().any(|(k, _)| k == STATE_PARAM || k == "token" || k == "status") {
        return Err(InvalidInput::new(
            "redirect_url",
            format!("must not already carry {STATE_PARAM}, token or status"),
        ));
    }
    let org = (!r.organization_number.trim().is_empty())
        .then(|| OrganizationNumber::parse_field("organization_number", &r.organization_number))
        .transpose()?;
    let prefix = r.tenant_id_prefix.trim().to_owned();
    if prefix.len() > 40 || prefix.chars().any(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.')) {
        return Err(InvalidInput::new("tenant_id_prefix", "up to 40 of a-z 0-9 - _ ."));
    }
    if let Some(first) = prefix.chars().next()
        && !first.is_ascii_alphanumeric()
    {
        return Err(InvalidInput::new("tenant_id_prefix", "must start with a letter or digit"));
    }
    Ok(Begin { env, redirect, org, prefix })
}

/// The onboarding id, sent to Go as the `state` of the redirect: 16 random bytes, because
/// it must be unguessable (request ids are only unique).
fn new_id() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).ok()?;
    Some(crate::crypto::secret::hex(&b))
}

/// The refusal for a caller that does not hold tenant-admin on every id under a prefix.
fn prefix_denied(prefix: &str) -> Status {
    Status::permission_denied(format!(
        "the caller's certificate identity is not granted the tenant-admin role on every tenant id starting with {prefix:?}, \
         which this onboarding may create or re-activate; ask the vault's operators for a grant \"{prefix}*\""
    ))
}

impl OnboardingSvc {
    async fn refuse(&self, caller: &Caller, action: Action, outcome: Outcome, status: Status) -> Status {
        self.state.refused(caller, action, None, outcome, status).await
    }
}

#[tonic::async_trait]
impl OnboardingService for OnboardingSvc {
    async fn begin_onboarding(
        &self,
        req: Request<pb::BeginOnboardingRequest>,
    ) -> Result<Response<pb::BeginOnboardingResponse>, Status> {
        let caller = Caller::of(&req)?;
        let action = Action::OnboardingBegun;
        let b = match parse_begin(req.get_ref()) {
            Ok(b) => b,
            Err(e) => return Err(self.refuse(&caller, action, Outcome::Denied, errors::invalid(&e)).await),
        };
        let subject_hash = match check_subject(&req.get_ref().subject) {
            Ok(s) => self.state.vault.fingerprint_key().fingerprint(FP_SUBJECT, s.as_bytes()).to_string(),
            Err(e) => return Err(self.refuse(&caller, action, Outcome::Denied, errors::invalid(&e)).await),
        };
        // The caller must hold tenant-admin on every tenant this session could create or
        // re-activate: checked now, and again before Go's one-time Finalize is spent.
        if !self.state.authz.policy().allows_every_tenant_with_prefix(&caller.identity.id, Role::TenantAdmin, &b.prefix)
        {
            let s = prefix_denied(&b.prefix);
            return Err(self.refuse(&caller, action, Outcome::Denied, s).await);
        }
        let Some(id) = new_id() else {
            let status = Status::unavailable("the system random number generator failed; retry shortly");
            return Err(self.refuse(&caller, action, Outcome::Error, status).await);
        };
        let mut redirect = b.redirect.clone();
        redirect.query_pairs_mut().append_pair(STATE_PARAM, &id);
        let org = b.org.as_ref().map(|o| o.as_str().to_owned());
        let session = match self.state.broker.onboarding_initiate(b.env, org.as_deref(), redirect.as_str()).await {
            Ok(s) => s,
            Err(e) => return Err(self.refuse(&caller, action, Outcome::Error, errors::broker(&e)).await),
        };
        let now = crate::store::now_ms();
        let expires_at = session.valid_until_ms.max(now) + COMPLETION_GRACE.as_millis() as i64;
        let row = Session {
            onboarding_id: id.clone(),
            environment: b.env,
            redirect_url: redirect.to_string(),
            organization_number: b.org,
            tenant_id_prefix: b.prefix,
            caller: caller.identity.id.clone(),
            created_at: now,
            expires_at,
            status: SessionStatus::Pending,
            go_status: None,
            tenants: Vec::new(),
            subject_hash: Some(subject_hash),
        };
        let detail = format!("onboarding {id} begun for {}", b.env);
        let gate = self.state.gate(&caller, move |c, _: &Session| {
            vec![caller_record(c, action, None, Outcome::Ok, &detail, Extra::default())]
        });
        self.state.vault_op(move |v| v.insert_onboarding(&row, &gate)).await?;
        Ok(Response::new(pb::BeginOnboardingResponse {
            onboarding_id: id,
            authorization_url: session.temporary_url,
            expires_at: Some(timestamp_ms(expires_at)),
        }))
    }

    async fn complete_onboarding(
        &self,
        req: Request<pb::CompleteOnboardingRequest>,
    ) -> Result<Response<pb::CompleteOnboardingResponse>, Status> {
        let caller = Caller::of(&req)?;
        let mut r = req.into_inner();
        let st = &self.state;
        st.audit_ready()?;
        let id = r.onboarding_id.trim().to_owned();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            let s = errors::invalid(&InvalidInput::new("onboarding_id", "not an onboarding id from BeginOnboarding"));
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        }
        let go_status = r.go_status.trim().to_owned();
        if !GO_STATUSES.contains(&go_status.as_str()) {
            let e = InvalidInput::new("go_status", format!("must be one of {}", GO_STATUSES.join(", ")));
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, errors::invalid(&e)).await);
        }
        let lookup = id.clone();
        let Some(session) = self.state.vault_op(move |v| v.onboarding(&lookup)).await? else {
            let s = Status::not_found(format!("onboarding {id} not found: start a new one with BeginOnboarding"));
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        };
        if session.caller != caller.identity.id {
            let s = Status::permission_denied("only the caller that began an onboarding may complete it");
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        }
        // Bound to the integrator's end user: a redirect that reached another user's browser
        // (a shared link, a login CSRF) cannot complete it.
        if let Some(expected) = &session.subject_hash {
            let given = self.state.vault.fingerprint_key().fingerprint(FP_SUBJECT, r.subject.as_bytes()).to_string();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes())) {
                let s = Status::permission_denied(
                    "this onboarding was begun for another user or browser session (subject differs); start a new one",
                );
                return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
            }
        }
        // Checked before Go's Finalize, which spends the one-time token and revokes the
        // client's old key at Go: a refusal after it would lose the new key.
        if !st.authz.policy().allows_every_tenant_with_prefix(
            &caller.identity.id,
            Role::TenantAdmin,
            &session.tenant_id_prefix,
        ) {
            let s = prefix_denied(&session.tenant_id_prefix);
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        }
        // Which tenant a re-onboarded client belongs to must be clear before Go's Finalize
        // revokes its old key: two tenants holding Go's number for it under the prefix are
        // refused now, while the session can still be completed once an admin resolved it.
        if let Some(org) = session.organization_number.clone() {
            let env = session.environment;
            let found = self.state.vault_op(move |v| v.verified_tenants(env, &org)).await?;
            let policy = st.authz.policy();
            let under: Vec<String> = found
                .iter()
                .filter(|t| t.tenant_id.as_str().starts_with(&session.tenant_id_prefix))
                .filter(|t| policy.allows(&caller.identity.id, Role::TenantAdmin, &t.tenant_id))
                .map(|t| t.tenant_id.to_string())
                .collect();
            if under.len() > 1 {
                let e = crate::vault::VaultError::AmbiguousOrganization {
                    organization_number: session
                        .organization_number
                        .as_ref()
                        .map(|o| o.to_string())
                        .unwrap_or_default(),
                    tenants: under.join(", "),
                };
                return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, errors::vault(&e)).await);
            }
        }
        if session.status != SessionStatus::Pending {
            let s = Status::failed_precondition(format!(
                "onboarding {id} is already {}; a session completes at most once: start a new one",
                format!("{:?}", session.status).to_lowercase()
            ));
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        }
        let (sid, now) = (id.clone(), crate::store::now_ms());
        if now > session.expires_at {
            self.state
                .vault_op(move |v| {
                    v.onboarding_transition(&sid, SessionStatus::Pending, SessionStatus::Failed, Some("Expired"))
                })
                .await?;
            let s = Status::failed_precondition(format!("onboarding {id} has expired: start a new one"));
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        }
        if go_status != "Success" {
            let g = go_status.clone();
            self.state
                .vault_op(move |v| {
                    v.onboarding_transition(&sid, SessionStatus::Pending, SessionStatus::Failed, Some(&g))
                })
                .await?;
            let advice = match go_status.as_str() {
                "Canceled" => "the user cancelled in PowerOffice Go",
                "ClientNotFound" => "PowerOffice Go found no client for that organization number",
                "NoClientAccess" => {
                    "the user has no access to activate the client (an administrator or the Settings > Organization privilege is needed)"
                }
                _ => "the integration is blocked for this client in PowerOffice Go",
            };
            let s = Status::failed_precondition(format!("onboarding {id} ended with {go_status}: {advice}"));
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        }
        let parsed = OnboardingToken::parse(&r.onboarding_token);
        zeroize::Zeroize::zeroize(&mut r.onboarding_token);
        let token = match parsed {
            Ok(t) => t,
            Err(e) => {
                return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, errors::invalid(&e)).await);
            }
        };
        // Claim the session: concurrent or replayed completions stop here.
        let claim = id.clone();
        if !self
            .state
            .vault_op(move |v| v.onboarding_transition(&claim, SessionStatus::Pending, SessionStatus::Completing, None))
            .await?
        {
            let s = Status::failed_precondition(format!("onboarding {id} is being or has been completed"));
            return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
        }
        let result = match st.broker.onboarding_finalize(session.environment, &token).await {
            Ok(r) => r,
            Err(e) => {
                // Go refused the token: the session is over. Go unreachable: it may be retried.
                let (to, g) = match e {
                    BrokerError::OnboardingRejected(_) => (SessionStatus::Failed, Some("FinalizeRejected")),
                    _ => (SessionStatus::Pending, None),
                };
                let sid = id.clone();
                self.state.vault_op(move |v| v.onboarding_transition(&sid, SessionStatus::Completing, to, g)).await?;
                return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Error, errors::broker(&e)).await);
            }
        };
        let clients: Arc<Vec<OnboardedKey>> = result
            .clients
            .into_iter()
            .map(|c| OnboardedKey {
                key: c.client_key,
                name: c.client_name.and_then(|n| DisplayName::parse_field("display_name", &n).ok()),
                organization_number: c
                    .organization_number
                    .and_then(|o| OrganizationNumber::parse_field("organization_number", &o).ok()),
            })
            .collect::<Vec<_>>()
            .into();
        let policy = st.authz.policy();
        let who = caller.identity.id.clone();
        let s2 = session.clone();
        let oid = id.clone();
        // Every tenant's record and the completion record are durable before the keys and
        // the session's completion commit (audit before effect).
        let gate = Arc::new(st.gate(&caller, move |c, outcomes: &[OnboardingOutcome]| {
            let mut recs: Vec<AuditRecord> = outcomes
                .iter()
                .map(|o| {
                    let t = &o.record;
                    let (action, detail) = match o.previous_version {
                        Some(old) => (
                            Action::KeyReactivated,
                            format!(
                                "re-activation via onboarding {oid}: key version {} replaces {old} (destroyed)",
                                t.key_version
                            ),
                        ),
                        None => (Action::KeyRegistered, format!("registered via onboarding {oid}")),
                    };
                    let extra = Extra { key_version: Some(t.key_version), ..Extra::default() };
                    caller_record(c, action, Some(&t.tenant_id), Outcome::Ok, &detail, extra)
                })
                .collect();
            let ids: Vec<String> = outcomes.iter().map(|o| o.record.tenant_id.to_string()).collect();
            let detail = format!("onboarding {oid} completed: {}", ids.join(", "));
            recs.push(caller_record(c, Action::OnboardingCompleted, None, Outcome::Ok, &detail, Extra::default()));
            recs
        }));
        // Go's Finalize is spent and, for a known client, its old key revoked: the keys live
        // only in this request now. A log or database that fails for a moment must not lose
        // them, so storing is tried a few times (each try waits at most the append timeout).
        let mut applied = Err(errors::audit_unavailable());
        for attempt in 0..APPLY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(APPLY_RETRY).await;
            }
            let (s2, clients, policy, who, gate) =
                (s2.clone(), clients.clone(), policy.clone(), who.clone(), gate.clone());
            applied = self
                .state
                .vault_op(move |v| {
                    v.apply_onboarding(&s2, &clients, &|t: &TenantId| policy.allows(&who, Role::TenantAdmin, t), &*gate)
                })
                .await;
            if !matches!(&applied, Err(s) if s.code() == tonic::Code::Unavailable) {
                break;
            }
            tracing::warn!(onboarding = %id, attempt = attempt + 1, "could not store the onboarded keys yet; retrying");
        }
        let outcomes = match applied {
            Ok(o) => o,
            Err(s) if s.code() == tonic::Code::Unavailable => {
                // Nothing was stored (the audit log or the database could not be written):
                // the session goes back to where it was, unchanged.
                let sid = id.clone();
                self.state
                    .vault_op(move |v| {
                        v.onboarding_transition(&sid, SessionStatus::Completing, SessionStatus::Pending, None)
                    })
                    .await?;
                return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Error, s).await);
            }
            Err(s) => {
                let sid = id.clone();
                self.state
                    .vault_op(move |v| {
                        v.onboarding_transition(
                            &sid,
                            SessionStatus::Completing,
                            SessionStatus::Failed,
                            Some("NotStored"),
                        )
                    })
                    .await?;
                return Err(self.refuse(&caller, Action::OnboardingFailed, Outcome::Denied, s).await);
            }
        };
        for o in &outcomes {
            st.broker.forget(&o.record.tenant_id);
        }
        // Go's ClientId of each onboarded client (ClientIntegrationInformation), in the
        // background: within the upstream budget, and never holding up the answer.
        let unknown: Vec<_> =
            outcomes.iter().filter(|o| o.record.go_client_id.is_none()).map(|o| o.record.tenant_id.clone()).collect();
        if !unknown.is_empty() {
            let broker = st.broker.clone();
            tokio::spawn(async move { broker.fill_client_ids(&unknown).await });
        }
        Ok(Response::new(pb::CompleteOnboardingResponse {
            tenants: outcomes.iter().map(|o| super::tenant_svc::to_proto(&o.record, None)).collect(),
        }))
    }
}
