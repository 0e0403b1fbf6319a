//! Go's onboarding, so client keys reach the vault without any person handling them: a
//! session state machine.
//!
//! ```text
//! begin ──▶ PENDING ──claim──▶ COMPLETING ──keys stored──▶ COMPLETED
//!              │                   │  └──Go unreachable──▶ PENDING (may be retried)
//!              └─expired / refused │
//!                 at Go ──▶ FAILED ◀┘ Go refused the token, or the keys could not be stored
//! ```
//!
//! Begin: ask Go for a temporary URL (our onboarding id rides in the redirect URL's query,
//! which Go ignores when matching its whitelist) and persist the session, recorded before
//! it commits. Complete: the session's own caller and subject only; at most once (a
//! compare-and-set claims it); not after expiry; a refusal status from Go closes it; on
//! Success, Go's one-time Finalize hands over the keys, and `Vault::apply_onboarding`
//! stores all of them and closes the session in one transaction behind the gate. Every
//! check that could refuse is made before Finalize, which spends the token and revokes a
//! known client's old key at Go: a refusal after it would lose the new key.
//!
//! Errors say whether the transport must record the refusal ([`OnboardingError::recorded`])
//! and as what ([`OnboardingError::outcome`]).

use std::sync::Arc;
use std::time::Duration;

use super::actor::{Actor, Entry, gate};
use super::blocking::{Blocking, on_vault};
use crate::audit::{Action, Outcome};
use crate::authz::{Authorizer, Policy, Role};
use crate::domain::{
    DisplayName, Environment, GoStatus, InvalidInput, OnboardingId, OrganizationNumber, RedirectUrl, Subject, TenantId,
    TenantIdPrefix,
};
use crate::store::onboarding::{Session, SessionStatus};
use crate::tokens::{Broker, BrokerError};
use crate::upstream::OnboardingToken;
use crate::vault::{OnboardedKey, OnboardingOutcome, Vault, VaultError};

/// Tries at storing the keys Go's Finalize handed over, while the log or database fails.
const APPLY_ATTEMPTS: u32 = 2;
/// The pause between those tries.
const APPLY_RETRY: Duration = Duration::from_millis(500);
/// Grace after Go's temporary URL expires for the user to come back and us to finalize.
const COMPLETION_GRACE: Duration = Duration::from_secs(15 * 60);
/// Fingerprint purpose of onboarding subjects.
const FP_SUBJECT: &str = "onboarding-subject";

/// Why an onboarding step did not happen.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum OnboardingError {
    /// The caller does not hold tenant-admin on every id the session may create.
    #[error(
        "the caller's certificate identity is not granted the tenant-admin role on every tenant id starting with {prefix:?}, \
         which this onboarding may create or re-activate; ask the vault's operators for a grant \"{prefix}*\""
    )]
    PrefixNotGranted { prefix: String },
    /// No random onboarding id could be made.
    #[error("the system random number generator failed; retry shortly")]
    Random,
    /// Go refused or could not be reached (Initiate or Finalize).
    #[error(transparent)]
    Go(BrokerError),
    #[error("onboarding {0} not found: start a new one with BeginOnboarding")]
    NotFound(OnboardingId),
    #[error("only the caller that began an onboarding may complete it")]
    NotYours,
    #[error("this onboarding was begun for another user or browser session (subject differs); start a new one")]
    OtherSubject,
    /// Two tenants under the prefix hold Go's organization number for the client.
    #[error(transparent)]
    Ambiguous(VaultError),
    #[error("onboarding {id} is already {status}; a session completes at most once: start a new one")]
    AlreadyEnded { id: OnboardingId, status: String },
    #[error("onboarding {0} has expired: start a new one")]
    Expired(OnboardingId),
    #[error("onboarding {id} ended with {status}: {}", status.advice())]
    EndedAtGo { id: OnboardingId, status: GoStatus },
    /// The onboarding token from Go's redirect is malformed.
    #[error(transparent)]
    BadToken(InvalidInput),
    #[error("onboarding {0} is being or has been completed")]
    BeingCompleted(OnboardingId),
    /// The keys Go handed over were not stored (the session is back to pending if the
    /// failure was transient, else failed).
    #[error(transparent)]
    NotStored(VaultError),
    /// The task storing the keys Go handed over was lost (it panicked or was cancelled):
    /// the session is closed as not stored.
    #[error("internal error; operators are alerted")]
    StoringLost,
    /// The session's own bookkeeping failed before any decision (not recorded: the store
    /// or the log is failing).
    #[error(transparent)]
    Vault(VaultError),
    #[error("internal error; operators are alerted")]
    Internal,
}

impl OnboardingError {
    /// Whether the transport records this refusal: everything but a failure of the vault's
    /// own bookkeeping, which means the store or the log cannot be written anyway.
    pub fn recorded(&self) -> bool {
        !matches!(self, OnboardingError::Vault(_) | OnboardingError::Internal)
    }

    /// How the refusal is recorded: the caller's request refused (`denied`), or a failure
    /// on our side or at Go (`error`).
    pub fn outcome(&self) -> Outcome {
        match self {
            OnboardingError::Random | OnboardingError::Go(_) | OnboardingError::Internal => Outcome::Error,
            OnboardingError::NotStored(e) | OnboardingError::Vault(e) if e.is_transient() => Outcome::Error,
            _ => Outcome::Denied,
        }
    }
}

impl From<Blocking> for OnboardingError {
    fn from(e: Blocking) -> Self {
        e.into_error(OnboardingError::Vault, OnboardingError::Internal)
    }
}

/// What a session is begun with, parsed.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    pub environment: Environment,
    pub redirect: RedirectUrl,
    pub organization_number: Option<OrganizationNumber>,
    pub prefix: TenantIdPrefix,
    pub subject: Subject,
}

/// A begun session: where to send the user's browser, and until when it may complete.
#[derive(Debug, Clone)]
pub struct Begun {
    pub onboarding_id: OnboardingId,
    pub authorization_url: String,
    pub expires_at_ms: i64,
}

/// What completes a session: Go's redirect back, parsed. The token's parse result is
/// carried as is, because a malformed token is refused only after the session's own
/// checks (an onboarding Go ended with a refusal is closed whatever its token).
#[derive(Debug)]
pub struct CompleteRequest {
    pub onboarding_id: OnboardingId,
    pub go_status: GoStatus,
    pub token: Result<OnboardingToken, InvalidInput>,
    /// The subject as sent (compared by keyed fingerprint with the session's).
    pub subject: String,
}

/// Onboarding over a vault and the broker that talks to Go.
#[derive(Clone, Debug)]
pub struct Onboarding {
    vault: Arc<Vault>,
    broker: Broker,
}

impl Onboarding {
    pub fn new(vault: Arc<Vault>, broker: Broker) -> Self {
        Self { vault, broker }
    }

    /// Begins a session for `actor` (who must hold tenant-admin on every id under the
    /// prefix, in `policy`).
    pub async fn begin(
        &self,
        actor: &Arc<dyn Actor>,
        policy: &Policy,
        req: BeginRequest,
    ) -> Result<Begun, OnboardingError> {
        let subject_hash = self.vault.fingerprint_key().fingerprint(FP_SUBJECT, req.subject.as_bytes()).to_string();
        // The caller must hold tenant-admin on every tenant this session could create or
        // re-activate: checked now, and again before Go's one-time Finalize is spent.
        if !policy.allows_every_tenant_with_prefix(actor.identity(), Role::TenantAdmin, req.prefix.as_str()) {
            return Err(OnboardingError::PrefixNotGranted { prefix: req.prefix.as_str().to_owned() });
        }
        let id = OnboardingId::generate().ok_or(OnboardingError::Random)?;
        let redirect = req.redirect.with_onboarding_id(&id);
        let org = req.organization_number.as_ref().map(|o| o.as_str().to_owned());
        let env = req.environment;
        let session =
            self.broker.onboarding_initiate(env, org.as_deref(), &redirect).await.map_err(OnboardingError::Go)?;
        let now = crate::store::now_ms();
        let expires_at = session.valid_until_ms.max(now) + COMPLETION_GRACE.as_millis() as i64;
        let row = Session {
            onboarding_id: id.as_str().to_owned(),
            environment: env,
            redirect_url: redirect,
            organization_number: req.organization_number,
            tenant_id_prefix: req.prefix.into_string(),
            caller: actor.identity().to_owned(),
            created_at: now,
            expires_at,
            status: SessionStatus::Pending,
            go_status: None,
            tenants: Vec::new(),
            subject_hash: Some(subject_hash),
        };
        let detail = format!("onboarding {id} begun for {env}");
        let gate = gate(actor, move |_: &Session| vec![Entry::ok(Action::OnboardingBegun, &detail)]);
        on_vault(&self.vault, move |v| v.insert_onboarding(&row, &gate)).await?;
        Ok(Begun { onboarding_id: id, authorization_url: session.temporary_url, expires_at_ms: expires_at })
    }

    /// Completes a session: the checks, Go's Finalize, and the keys stored with the
    /// session's completion. Returns what was stored, one outcome per client. The policy
    /// in force is read at each check, so a grant revoked by a reload while Go's Finalize
    /// is in flight is not honoured when the keys are stored.
    pub async fn complete(
        &self,
        actor: &Arc<dyn Actor>,
        authz: &Authorizer,
        req: CompleteRequest,
    ) -> Result<Vec<OnboardingOutcome>, OnboardingError> {
        let id = req.onboarding_id;
        let lookup = id.clone();
        let Some(session) = on_vault(&self.vault, move |v| v.onboarding(lookup.as_str())).await? else {
            return Err(OnboardingError::NotFound(id));
        };
        if session.caller != actor.identity() {
            return Err(OnboardingError::NotYours);
        }
        // Bound to the integrator's end user: a redirect that reached another user's browser
        // (a shared link, a login CSRF) cannot complete it.
        if let Some(expected) = &session.subject_hash {
            let given = self.vault.fingerprint_key().fingerprint(FP_SUBJECT, req.subject.as_bytes()).to_string();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes())) {
                return Err(OnboardingError::OtherSubject);
            }
        }
        // Checked before Go's Finalize, which spends the one-time token and revokes the
        // client's old key at Go: a refusal after it would lose the new key.
        let who = actor.identity().to_owned();
        if !authz.policy().allows_every_tenant_with_prefix(&who, Role::TenantAdmin, &session.tenant_id_prefix) {
            return Err(OnboardingError::PrefixNotGranted { prefix: session.tenant_id_prefix.clone() });
        }
        // Which tenant a re-onboarded client belongs to must be clear before Go's Finalize
        // revokes its old key: two tenants holding Go's number for it under the prefix are
        // refused now, while the session can still be completed once an admin resolved it.
        if let Some(org) = session.organization_number.clone() {
            let env = session.environment;
            let found = on_vault(&self.vault, move |v| v.verified_tenants(env, &org)).await?;
            let policy = authz.policy();
            let under: Vec<String> = found
                .iter()
                .filter(|t| t.tenant_id.as_str().starts_with(&session.tenant_id_prefix))
                .filter(|t| policy.allows(&who, Role::TenantAdmin, &t.tenant_id))
                .map(|t| t.tenant_id.to_string())
                .collect();
            if under.len() > 1 {
                return Err(OnboardingError::Ambiguous(VaultError::AmbiguousOrganization {
                    organization_number: session
                        .organization_number
                        .as_ref()
                        .map(|o| o.to_string())
                        .unwrap_or_default(),
                    tenants: under.join(", "),
                }));
            }
        }
        if session.status != SessionStatus::Pending {
            let status = format!("{:?}", session.status).to_lowercase();
            return Err(OnboardingError::AlreadyEnded { id, status });
        }
        if crate::store::now_ms() > session.expires_at {
            self.transition(&id, SessionStatus::Pending, SessionStatus::Failed, Some("Expired")).await?;
            return Err(OnboardingError::Expired(id));
        }
        if req.go_status != GoStatus::Success {
            let g = req.go_status.as_str();
            self.transition(&id, SessionStatus::Pending, SessionStatus::Failed, Some(g)).await?;
            return Err(OnboardingError::EndedAtGo { id, status: req.go_status });
        }
        let token = req.token.map_err(OnboardingError::BadToken)?;
        // Claim the session: concurrent or replayed completions stop here.
        if !self.transition(&id, SessionStatus::Pending, SessionStatus::Completing, None).await? {
            return Err(OnboardingError::BeingCompleted(id));
        }
        let result = match self.broker.onboarding_finalize(session.environment, &token).await {
            Ok(r) => r,
            Err(e) => {
                // Go refused the token: the session is over. Go unreachable: it may be retried.
                let (to, g) = match e {
                    BrokerError::OnboardingRejected(_) => (SessionStatus::Failed, Some("FinalizeRejected")),
                    _ => (SessionStatus::Pending, None),
                };
                self.transition(&id, SessionStatus::Completing, to, g).await?;
                return Err(OnboardingError::Go(e));
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
        let oid = id.clone();
        // Every tenant's record and the completion record are durable before the keys and
        // the session's completion commit (audit before effect).
        let gate = Arc::new(gate(actor, move |outcomes: &[OnboardingOutcome]| completion_entries(&oid, outcomes)));
        // Go's Finalize is spent and, for a known client, its old key revoked: the keys live
        // only in this request now. A log or database that fails for a moment must not lose
        // them, so storing is tried a few times (each try waits at most the append timeout).
        let policy = authz.policy();
        let mut applied = Err(Blocking::Lost);
        for attempt in 0..APPLY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(APPLY_RETRY).await;
            }
            let (s, clients, policy, who, gate) =
                (session.clone(), clients.clone(), policy.clone(), who.clone(), gate.clone());
            let broker = self.broker.clone();
            applied = on_vault(&self.vault, move |v| {
                let r =
                    v.apply_onboarding(&s, &clients, &|t: &TenantId| policy.allows(&who, Role::TenantAdmin, t), &*gate);
                // In the blocking task, whatever the caller does meanwhile (see `registry`).
                if let Ok(outcomes) = &r {
                    for o in outcomes {
                        broker.forget(&o.record.tenant_id);
                    }
                }
                r
            })
            .await;
            if !matches!(&applied, Err(Blocking::Vault(e)) if e.is_transient()) {
                break;
            }
            tracing::warn!(onboarding = %id, attempt = attempt + 1, "could not store the onboarded keys yet; retrying");
        }
        let outcomes = match applied {
            Ok(o) => o,
            Err(Blocking::Lost) => {
                self.transition(&id, SessionStatus::Completing, SessionStatus::Failed, Some("NotStored")).await?;
                return Err(OnboardingError::StoringLost);
            }
            Err(Blocking::Vault(e)) => {
                // Transient (the audit log or the database could not be written): nothing
                // was stored, the session goes back to where it was. Otherwise it failed.
                let (to, g) = if e.is_transient() {
                    (SessionStatus::Pending, None)
                } else {
                    (SessionStatus::Failed, Some("NotStored"))
                };
                self.transition(&id, SessionStatus::Completing, to, g).await?;
                return Err(OnboardingError::NotStored(e));
            }
        };
        // Go's ClientId of each onboarded client (ClientIntegrationInformation), in the
        // background: within the upstream budget, and never holding up the answer.
        let unknown: Vec<_> =
            outcomes.iter().filter(|o| o.record.go_client_id.is_none()).map(|o| o.record.tenant_id.clone()).collect();
        if !unknown.is_empty() {
            let broker = self.broker.clone();
            tokio::spawn(async move { broker.fill_client_ids(&unknown).await });
        }
        Ok(outcomes)
    }

    /// Moves the session from `from` to `to` if it is in `from`; false if it was not.
    async fn transition(
        &self,
        id: &OnboardingId,
        from: SessionStatus,
        to: SessionStatus,
        go_status: Option<&'static str>,
    ) -> Result<bool, OnboardingError> {
        let id = id.clone();
        Ok(on_vault(&self.vault, move |v| v.onboarding_transition(id.as_str(), from, to, go_status)).await?)
    }
}

/// The records of a completed onboarding: one per tenant (registered, or re-activated with
/// the version its new key replaces), then the completion.
fn completion_entries(id: &OnboardingId, outcomes: &[OnboardingOutcome]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = outcomes
        .iter()
        .map(|o| {
            let t = &o.record;
            let (action, detail) = match o.previous_version {
                Some(old) => (
                    Action::KeyReactivated,
                    format!(
                        "re-activation via onboarding {id}: key version {} replaces {old} (destroyed)",
                        t.key_version
                    ),
                ),
                None => (Action::KeyRegistered, format!("registered via onboarding {id}")),
            };
            Entry::change(action, &t.tenant_id, t.key_version, detail)
        })
        .collect();
    let ids: Vec<String> = outcomes.iter().map(|o| o.record.tenant_id.to_string()).collect();
    entries.push(Entry::ok(Action::OnboardingCompleted, format!("onboarding {id} completed: {}", ids.join(", "))));
    entries
}
