//! Why no token was handed out ([`BrokerError`]): the broker's one error type, with how
//! long to wait before asking again, how a store failure becomes one, and which of Go's
//! OAuth error codes blame a client key.
//!
//! It is cloned to every caller sharing a flight, so it carries text, not the underlying
//! errors. `server::errors` maps it to a gRPC status.

use std::time::Duration;

use crate::domain::{Environment, TenantId};
use crate::vault::VaultError;

/// Why no token was handed out. Cloned to every caller sharing a flight.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// No tenant with that id.
    #[error("tenant {0} not found")]
    NotFound(TenantId),
    /// An admin disabled the tenant.
    #[error("tenant {0} is disabled: an admin must enable it before tokens are issued")]
    Disabled(TenantId),
    /// Go rejected the tenant's client key; no upstream calls until a new key is registered.
    #[error(
        "PowerOffice Go rejected the client key of tenant {0}: the customer must re-activate the integration in \
         PowerOffice Go, and the new key must be registered (RotateClientKey or onboarding)"
    )]
    KeyRejected(TenantId),
    /// No integration (application key, subscription key) for the tenant's environment.
    #[error("no {0} integration is configured: an operator must run `pogo-vault integration set --environment {0}`")]
    NoIntegration(Environment),
    /// Go's gateway refused the integration's subscription key: an integration-wide alarm.
    #[error(
        "PowerOffice Go refused the {env} integration's subscription key: an operator must check it \
         (`pogo-vault integration set`); retry after {} s", secs(*retry_after)
    )]
    SubscriptionKeyRejected { env: Environment, retry_after: Duration },
    /// The shared upstream budget is used up (our limiter, or Go's 429).
    #[error("rate limited: PowerOffice Go's request budget for the {env} integration is used up; retry after {} s", secs(*retry_after))]
    RateLimited { env: Environment, retry_after: Duration },
    /// Go's gateway answered 403 with `Retry-After`: the subscription's call quota is used up.
    /// Upstream calls for the environment are paused; no key is blamed.
    #[error(
        "PowerOffice Go's call quota for the {env} integration's subscription is used up (HTTP 403 from its gateway); \
         retry after {} s",
        secs(*retry_after)
    )]
    QuotaExceeded { env: Environment, retry_after: Duration },
    /// Go is unreachable, failing or too slow; retried already.
    #[error("PowerOffice Go is unavailable ({}); retry after {} s", unavailable_reason(reason), secs(*retry_after))]
    Unavailable { reason: String, retry_after: Duration },
    /// Go's gateway refuses a subscription key an operator offered (to switch to, or as the
    /// other key): nothing was changed.
    #[error(
        "PowerOffice Go's gateway refuses this subscription key for the {0} integration (HTTP 401): nothing was changed; \
         check that it is the other key of the same subscription, from the same environment"
    )]
    SubscriptionKeyRefused(Environment),
    /// A key offered for registration was refused by Go.
    #[error(
        "PowerOffice Go does not accept this client key for the {0} environment: check that it was copied \
         whole from the right PowerOffice Go client and environment, or have the customer re-activate the integration"
    )]
    InvalidKey(Environment),
    /// Go refused an onboarding step (a token that is invalid, expired or used, or a
    /// redirect URL that is not whitelisted).
    #[error("PowerOffice Go refused the onboarding ({0}): start a new onboarding")]
    OnboardingRejected(String),
    /// A sealed row did not open: audited and alarmed by the caller.
    #[error("integrity failure: {0}")]
    Integrity(String),
    /// The master key's HSM cannot be used now: a token that is not cached cannot be minted
    /// (its client key cannot be unwrapped). Cached tokens are still served.
    #[error(
        "the master key's HSM is unavailable ({0}): tokens not already cached cannot be issued until it is back; \
         retry after 1 s"
    )]
    MasterKeyUnavailable(String),
    /// The store failed.
    #[error("internal error: {0}")]
    Internal(String),
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The reason without the upstream error's own "PowerOffice Go is unavailable: " (issue 21:
/// the message said it twice).
fn unavailable_reason(reason: &str) -> &str {
    reason.strip_prefix("PowerOffice Go is unavailable: ").unwrap_or(reason)
}

impl BrokerError {
    /// Refuses a tenant that may not have a token now (disabled, or its key rejected).
    pub fn unless_active(rec: &crate::store::tenants::TenantRecord) -> Result<(), BrokerError> {
        match rec.status {
            crate::domain::TenantStatus::Active => Ok(()),
            crate::domain::TenantStatus::Disabled => Err(BrokerError::Disabled(rec.tenant_id.clone())),
            crate::domain::TenantStatus::KeyRejected => Err(BrokerError::KeyRejected(rec.tenant_id.clone())),
        }
    }

    /// How long a caller should wait before asking again, for retryable errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BrokerError::SubscriptionKeyRejected { retry_after, .. }
            | BrokerError::RateLimited { retry_after, .. }
            | BrokerError::QuotaExceeded { retry_after, .. }
            | BrokerError::Unavailable { retry_after, .. } => Some(*retry_after),
            BrokerError::MasterKeyUnavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    pub(super) fn from_vault(e: VaultError) -> Self {
        match e {
            VaultError::Integrity { what } => BrokerError::Integrity(format!("the sealed {what} does not open")),
            VaultError::KeyUnavailable { reason } => BrokerError::MasterKeyUnavailable(reason),
            VaultError::NotRecorded { reason } => BrokerError::Unavailable {
                reason: format!("the audit log cannot be written ({reason}); nothing was changed"),
                retry_after: Duration::from_secs(1),
            },
            other => BrokerError::Internal(other.to_string()),
        }
    }
}

/// `invalid_client` (unknown, deleted or wrong-environment key) and `unauthorized_client`
/// are about the key; other OAuth codes point at how we ask, not at the customer.
pub(super) fn is_key_rejection(error: &str) -> bool {
    matches!(error, "invalid_client" | "unauthorized_client")
}
