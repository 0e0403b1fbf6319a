//! `OnboardingService`: Go's onboarding flow over gRPC. The session state machine is the
//! use case's (`usecase::onboarding`); here a request is parsed into domain types, handed
//! to it with the caller as actor, and a refusal is recorded and mapped to a status.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Caller, ServerState, errors, timestamp_ms};
use crate::audit::Action;
use crate::domain::{
    Environment, GoStatus, InvalidInput, OnboardingId, OrganizationNumber, RedirectUrl, Subject, TenantIdPrefix,
};
use crate::proto::v1 as pb;
use crate::proto::v1::onboarding_service_server::OnboardingService;
use crate::upstream::OnboardingToken;
use crate::usecase::OnboardingError;
use crate::usecase::onboarding::{BeginRequest, CompleteRequest};

pub struct OnboardingSvc {
    pub state: Arc<ServerState>,
}

fn parse_begin(r: &pb::BeginOnboardingRequest) -> Result<BeginRequest, InvalidInput> {
    Ok(BeginRequest {
        environment: Environment::parse_field("environment", &r.environment)?,
        redirect: RedirectUrl::parse_field("redirect_url", &r.redirect_url)?,
        organization_number: (!r.organization_number.trim().is_empty())
            .then(|| OrganizationNumber::parse_field("organization_number", &r.organization_number))
            .transpose()?,
        prefix: TenantIdPrefix::parse_field("tenant_id_prefix", &r.tenant_id_prefix)?,
        subject: Subject::parse_field("subject", &r.subject)?,
    })
}

impl OnboardingSvc {
    /// Records a refusal (as the error says: some are the vault's own failures, already
    /// beyond recording) and returns its status.
    async fn refuse(&self, caller: &Caller, action: Action, e: OnboardingError) -> Status {
        let status = errors::onboarding(&e);
        if !e.recorded() {
            return status;
        }
        self.state.refused(caller, action, None, e.outcome(), status).await
    }

    async fn refuse_invalid(&self, caller: &Caller, action: Action, e: &InvalidInput) -> Status {
        self.state.refused(caller, action, None, crate::audit::Outcome::Denied, errors::invalid(e)).await
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
        let begin = match parse_begin(req.get_ref()) {
            Ok(b) => b,
            Err(e) => return Err(self.refuse_invalid(&caller, action, &e).await),
        };
        let policy = self.state.authz.policy();
        match self.state.onboarding.begin(&self.state.actor(&caller), &policy, begin).await {
            Ok(b) => Ok(Response::new(pb::BeginOnboardingResponse {
                onboarding_id: b.onboarding_id.to_string(),
                authorization_url: b.authorization_url,
                expires_at: Some(timestamp_ms(b.expires_at_ms)),
            })),
            Err(e) => Err(self.refuse(&caller, action, e).await),
        }
    }

    async fn complete_onboarding(
        &self,
        req: Request<pb::CompleteOnboardingRequest>,
    ) -> Result<Response<pb::CompleteOnboardingResponse>, Status> {
        let caller = Caller::of(&req)?;
        let mut r = req.into_inner();
        let action = Action::OnboardingFailed;
        self.state.audit_ready()?;
        // The token is parsed (and the request's copy wiped) at once; a malformed one is
        // refused by the use case after the session's own checks.
        let token = OnboardingToken::parse(&r.onboarding_token);
        zeroize::Zeroize::zeroize(&mut r.onboarding_token);
        let onboarding_id = match OnboardingId::parse_field("onboarding_id", &r.onboarding_id) {
            Ok(id) => id,
            Err(e) => return Err(self.refuse_invalid(&caller, action, &e).await),
        };
        let go_status = match GoStatus::parse_field("go_status", &r.go_status) {
            Ok(g) => g,
            Err(e) => return Err(self.refuse_invalid(&caller, action, &e).await),
        };
        let complete = CompleteRequest { onboarding_id, go_status, token, subject: r.subject };
        match self.state.onboarding.complete(&self.state.actor(&caller), &self.state.authz, complete).await {
            Ok(outcomes) => Ok(Response::new(pb::CompleteOnboardingResponse {
                tenants: outcomes.iter().map(|o| super::tenant_svc::to_proto(&o.record, None)).collect(),
            })),
            Err(e) => Err(self.refuse(&caller, action, e).await),
        }
    }
}
