//! The one table of RPC methods: the role each needs (DESIGN.md invariant 8) and the audit
//! action its decisions are recorded under. The server's gate consults it for every
//! request; a method that is not here is refused. One table, so the two can never
//! disagree (they were two tables once).

use super::Role;
use crate::audit::Action;

/// What a method needs beyond a verified client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// The role, checked coarsely before decoding and per tenant in the handler.
    Role(Role),
    /// Any caller with a verified certificate (health, reflection: no tenant data).
    Authenticated,
}

/// One served method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// `/package.Service/Method`, as it arrives in the HTTP/2 `:path`.
    pub path: &'static str,
    pub requirement: Requirement,
    /// What a decision on this method is recorded as (a refusal at the gate, and the
    /// handler's own records where it has no more precise action: a refused
    /// `GetAccessToken` is `token_denied`, a refused `CompleteOnboarding`
    /// `onboarding_failed`). `None` for health and reflection, which carry no tenant data;
    /// a refusal of one of them at the gate is recorded as `tenant_read`, the closest there is.
    pub action: Option<Action>,
}

impl Method {
    const fn role(path: &'static str, role: Role, action: Action) -> Self {
        Self { path, requirement: Requirement::Role(role), action: Some(action) }
    }

    const fn authenticated(path: &'static str) -> Self {
        Self { path, requirement: Requirement::Authenticated, action: None }
    }
}

/// Every method the server serves.
pub const METHODS: &[Method] = &[
    Method::role("/pogo_vault.v1.TokenService/GetAccessToken", Role::Token, Action::TokenDenied),
    Method::role("/pogo_vault.v1.TenantService/RegisterClientKey", Role::TenantAdmin, Action::KeyRegistered),
    Method::role("/pogo_vault.v1.TenantService/RotateClientKey", Role::TenantAdmin, Action::KeyRotated),
    Method::role("/pogo_vault.v1.TenantService/GetTenant", Role::TenantAdmin, Action::TenantRead),
    Method::role("/pogo_vault.v1.TenantService/ListTenants", Role::TenantAdmin, Action::TenantRead),
    Method::role("/pogo_vault.v1.TenantService/DeleteTenant", Role::TenantAdmin, Action::TenantDeleted),
    Method::role("/pogo_vault.v1.TenantService/DisableTenant", Role::TenantAdmin, Action::TenantDisabled),
    Method::role("/pogo_vault.v1.TenantService/EnableTenant", Role::TenantAdmin, Action::TenantEnabled),
    Method::role("/pogo_vault.v1.OnboardingService/BeginOnboarding", Role::TenantAdmin, Action::OnboardingBegun),
    Method::role("/pogo_vault.v1.OnboardingService/CompleteOnboarding", Role::TenantAdmin, Action::OnboardingFailed),
    Method::role("/pogo_vault.v1.AuditService/ListAuditEvents", Role::Audit, Action::AuditRead),
    Method::role("/pogo_vault.v1.AuditService/WatchAuditEvents", Role::Audit, Action::AuditRead),
    Method::role("/pogo_vault.v1.AuditService/GetCheckpoint", Role::Audit, Action::AuditRead),
    Method::role("/pogo_vault.v1.AuditService/VerifyAuditLog", Role::Audit, Action::AuditVerified),
    Method::role("/pogo_vault.v1.AuditService/GetPublicKey", Role::Audit, Action::AuditRead),
    Method::role("/pogo_vault.v1.StatusService/GetStatus", Role::Audit, Action::AuditRead),
    Method::role("/pogo_vault.v1.OperatorService/RotateKek", Role::Operator, Action::KekRotated),
    Method::role("/pogo_vault.v1.OperatorService/SetIntegration", Role::Operator, Action::IntegrationSet),
    Method::role("/pogo_vault.v1.OperatorService/ListIntegrations", Role::Operator, Action::IntegrationRead),
    Method::role("/pogo_vault.v1.OperatorService/UseSubscriptionKey", Role::Operator, Action::SubscriptionKeySwitched),
    Method::authenticated("/grpc.health.v1.Health/Check"),
    Method::authenticated("/grpc.health.v1.Health/Watch"),
    Method::authenticated("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
    Method::authenticated("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
];

/// The method of a path (`/package.Service/Method`), or `None`: refuse.
pub fn method(path: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.path == path)
}

/// The requirement of a method path, or `None`: refuse.
pub fn requirement(path: &str) -> Option<Requirement> {
    method(path).map(|m| m.requirement)
}
