//! The one map from RPC method to the role it needs (DESIGN.md invariant 8). The server's
//! authorization layer consults it for every request; a method that is not here is refused.

use super::Role;

/// What a method needs beyond a verified client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// The role, checked coarsely before decoding and per tenant in the handler.
    Role(Role),
    /// Any caller with a verified certificate (health, reflection: no tenant data).
    Authenticated,
}

/// Every method the server serves, with its requirement.
pub const METHODS: &[(&str, Requirement)] = &[
    ("/pogo_vault.v1.TokenService/GetAccessToken", Requirement::Role(Role::Token)),
    ("/pogo_vault.v1.TenantService/RegisterClientKey", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.TenantService/RotateClientKey", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.TenantService/GetTenant", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.TenantService/ListTenants", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.TenantService/DeleteTenant", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.TenantService/DisableTenant", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.TenantService/EnableTenant", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.OnboardingService/BeginOnboarding", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.OnboardingService/CompleteOnboarding", Requirement::Role(Role::TenantAdmin)),
    ("/pogo_vault.v1.AuditService/ListAuditEvents", Requirement::Role(Role::Audit)),
    ("/pogo_vault.v1.AuditService/WatchAuditEvents", Requirement::Role(Role::Audit)),
    ("/pogo_vault.v1.AuditService/GetCheckpoint", Requirement::Role(Role::Audit)),
    ("/pogo_vault.v1.AuditService/VerifyAuditLog", Requirement::Role(Role::Audit)),
    ("/pogo_vault.v1.AuditService/GetPublicKey", Requirement::Role(Role::Audit)),
    ("/pogo_vault.v1.StatusService/GetStatus", Requirement::Role(Role::Audit)),
    ("/pogo_vault.v1.OperatorService/RotateKek", Requirement::Role(Role::Operator)),
    ("/pogo_vault.v1.OperatorService/SetIntegration", Requirement::Role(Role::Operator)),
    ("/pogo_vault.v1.OperatorService/ListIntegrations", Requirement::Role(Role::Operator)),
    ("/pogo_vault.v1.OperatorService/UseSubscriptionKey", Requirement::Role(Role::Operator)),
    ("/grpc.health.v1.Health/Check", Requirement::Authenticated),
    ("/grpc.health.v1.Health/Watch", Requirement::Authenticated),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Requirement::Authenticated),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Requirement::Authenticated),
];

/// The requirement of a method path (`/package.Service/Method`), or `None`: refuse.
pub fn requirement(path: &str) -> Option<Requirement> {
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}
