//! Every error a request can meet, mapped to a gRPC status in this one place
//! (DESIGN.md section 6). The message tells the caller what to do next; retryable errors
//! carry `google.rpc.RetryInfo`. Detail meant for operators goes to the log, not here.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::InvalidInput;
use crate::store::StoreError;
use crate::tokens::BrokerError;
use crate::vault::VaultError;

/// The one `PERMISSION_DENIED`, identical whether or not the tenant exists. Roles that are
/// not tenant-scoped (`audit`, `operator`) are not "on this tenant".
pub fn permission_denied(role: crate::authz::Role) -> Status {
    use crate::authz::Role;
    let scope = match role {
        Role::Token | Role::Api | Role::TenantAdmin => " on this tenant",
        Role::Audit | Role::Operator => "",
    };
    Status::permission_denied(format!(
        "the caller's certificate identity is not granted the {role} role{scope}; ask the vault's operators to add a grant to the policy"
    ))
}

/// A caller whose certificate a reload stopped accepting (revoked, or its CA removed).
pub fn certificate_no_longer_accepted() -> Status {
    Status::unauthenticated(
        "the caller's certificate is no longer accepted (revoked, or its CA was removed): get a new certificate",
    )
}

/// At the gate: a connection made before a certificate/CRL reload whose certificate the
/// reload stopped accepting.
pub fn connection_no_longer_accepted() -> Status {
    Status::permission_denied(
        "the caller's certificate is no longer accepted (revoked, or its CA was removed): get a new certificate",
    )
}

/// At the gate: a method missing from the method table (deny by default).
pub fn method_not_served(path: &str) -> Status {
    Status::permission_denied(format!("method {path} is not served to callers"))
}

/// The audit log could not be read (the detail is logged by the caller).
pub fn audit_unreadable() -> Status {
    Status::unavailable("the audit log cannot be read right now; retry shortly")
}

/// Too many live streams: for this caller, or in total.
pub fn too_many_streams(whose: &str, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "{whose} already holds {limit} live audit streams, the most allowed; close one (or ask the operators to raise audit.max_watch_streams{})",
        if whose == "the vault" { "" } else { "_per_caller" }
    ))
}

/// How a request that ended with `status` is recorded: a refusal of what the caller asked
/// (`denied`), or a failure on our side or upstream (`error`).
pub fn outcome_of(status: &Status) -> crate::audit::Outcome {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::PermissionDenied => crate::audit::Outcome::Denied,
        _ => crate::audit::Outcome::Error,
    }
}

pub fn invalid(e: &InvalidInput) -> Status {
    let details = ErrorDetails::with_bad_request_violation(e.field, e.reason.clone());
    Status::with_error_details(Code::InvalidArgument, e.to_string(), details)
}

fn retryable(code: Code, message: String, retry_after: Duration) -> Status {
    let details = ErrorDetails::with_retry_info(Some(retry_after.max(Duration::from_secs(1))));
    Status::with_error_details(code, message, details)
}

/// A caller over its request budget (`usecase::caller_budget`): `RESOURCE_EXHAUSTED`
/// with the exact wait in RetryInfo.
pub fn over_budget(retry_after: Duration) -> Status {
    let wait = Duration::from_millis(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1));
    let details = ErrorDetails::with_retry_info(Some(wait));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "this caller is over its request budget; retry after {} ms, and reuse a token until shortly before its \
             expiry rather than asking for it again",
            wait.as_millis()
        ),
        details,
    )
}

pub fn audit_unavailable() -> Status {
    retryable(
        Code::Unavailable,
        "the audit log cannot be written right now, so nothing was done; retry after 1 s (operators are alerted by health checks)"
            .into(),
        Duration::from_secs(1),
    )
}

/// The master key's HSM is away. The caller hears what to do, not the module, token or
/// PKCS#11 detail (that goes to the log, the audit record and health).
fn hsm_unavailable() -> Status {
    retryable(
        Code::Unavailable,
        "the master key's HSM is unavailable, so nothing that needs the master key can be done (tokens already \
         cached are still issued); retry after 1 s (operators: health pogo_vault.MasterKey and the log say why)"
            .into(),
        Duration::from_secs(1),
    )
}

pub fn broker(e: &BrokerError) -> Status {
    let msg = e.to_string();
    match e {
        BrokerError::NotFound(_) => Status::not_found(msg),
        BrokerError::Disabled(_)
        | BrokerError::KeyRejected(_)
        | BrokerError::InvalidKey(_)
        | BrokerError::NoIntegration(_)
        | BrokerError::SubscriptionKeyRefused(_)
        | BrokerError::OnboardingRejected(_) => Status::failed_precondition(msg),
        BrokerError::SubscriptionKeyRejected { retry_after, .. }
        | BrokerError::RateLimited { retry_after, .. }
        | BrokerError::QuotaExceeded { retry_after, .. }
        | BrokerError::Unavailable { retry_after, .. } => retryable(Code::Unavailable, msg, *retry_after),
        BrokerError::Integrity(_) => {
            Status::internal("integrity failure in the vault's storage; operators are alerted")
        }
        BrokerError::MasterKeyUnavailable(_) => hsm_unavailable(),
        BrokerError::Internal(_) => Status::internal("internal error; operators are alerted"),
    }
}

pub fn vault(e: &VaultError) -> Status {
    match e {
        VaultError::Invalid(i) => invalid(i),
        VaultError::Store(StoreError::NotFound { what }) => Status::not_found(format!("{what} not found")),
        VaultError::Store(StoreError::AlreadyExists { what }) => {
            Status::already_exists(format!("{what} already exists; use RotateClientKey to replace its key"))
        }
        VaultError::Integrity { .. } => {
            Status::internal("integrity failure in the vault's storage; operators are alerted")
        }
        VaultError::KeyUnavailable { .. } => hsm_unavailable(),
        VaultError::Denied { .. } => permission_denied(crate::authz::Role::TenantAdmin),
        VaultError::NotRecorded { .. } => audit_unavailable(),
        VaultError::AmbiguousOrganization { .. } => Status::failed_precondition(e.to_string()),
        VaultError::Store(StoreError::CommitUnknown(_)) => Status::unknown(
            "the database did not confirm the change: it may or may not have been applied; look before retrying",
        ),
        VaultError::MasterKeyRotated { .. } => retryable(
            Code::Unavailable,
            "this replica holds a retired master key; retry on another (operators are alerted)".into(),
            Duration::from_secs(1),
        ),
        VaultError::Store(s) if s.is_unavailable() => retryable(
            Code::Unavailable,
            "the vault's database is busy or failing; retry shortly".into(),
            Duration::from_secs(1),
        ),
        _ => Status::internal("internal error; operators are alerted"),
    }
}

/// A refused or failed registry operation.
pub fn registry(e: &crate::usecase::RegistryError) -> Status {
    use crate::usecase::RegistryError as E;
    match e {
        E::AlreadyExists(_) => Status::already_exists(e.to_string()),
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::Broker(b) => broker(b),
        E::Vault(v) | E::Read(v) => vault(v),
        _ => internal(),
    }
}

/// A refused or failed onboarding step.
pub fn onboarding(e: &crate::usecase::OnboardingError) -> Status {
    use crate::usecase::OnboardingError as E;
    match e {
        E::PrefixNotGranted { .. } | E::NotYours | E::OtherSubject => Status::permission_denied(e.to_string()),
        E::Random => Status::unavailable(e.to_string()),
        E::Go(b) => broker(b),
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::AlreadyEnded { .. } | E::Expired(_) | E::EndedAtGo { .. } | E::BeingCompleted(_) => {
            Status::failed_precondition(e.to_string())
        }
        E::BadToken(i) => invalid(i),
        E::Ambiguous(v) | E::NotStored(v) | E::Vault(v) => vault(v),
        _ => internal(),
    }
}

/// A refused or failed integration change.
pub fn integration(e: &crate::usecase::IntegrationError) -> Status {
    use crate::usecase::IntegrationError as E;
    match e {
        E::Invalid(i) => invalid(i),
        E::Go(b) => broker(b),
        E::Vault(v) | E::Read(v) => vault(v),
        E::AuditUnavailable => audit_unavailable(),
        _ => internal(),
    }
}

/// A failure of ours the caller cannot act on; operators see the detail in the log.
pub fn internal() -> Status {
    Status::internal("internal error; operators are alerted")
}

/// A request that reached a handler without the caller the gate sets (a wiring error:
/// every served method passes the gate).
pub fn no_verified_caller() -> Status {
    Status::unauthenticated("a verified client certificate is required")
}
