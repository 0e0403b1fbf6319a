//! What a vault operation can fail with, and why a gate refused.

use crate::crypto::master::MasterKeyError;
use crate::domain::InvalidInput;
use crate::store::StoreError;
use crate::store::secrets::SecretRef;

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A request value broke its rules.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The master key could not be obtained or is the wrong one.
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    /// The database failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed row does not open under the current master key: an integrity failure.
    #[error("integrity failure: the sealed {what} does not open")]
    Integrity { what: String },
    /// The random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// The caller may not administer a tenant this operation would change.
    #[error("the caller is not granted tenant-admin on tenant {tenant}")]
    Denied { tenant: String },
    /// Two tenants hold the same organization number, as Go reported it, under the
    /// onboarding's prefix: which one the client's new key belongs to is not ours to guess.
    #[error(
        "tenants {tenants} all hold organization number {organization_number} (as PowerOffice Go reported it): \
         nothing was stored; delete or rename the wrong one, then onboard again"
    )]
    AmbiguousOrganization { organization_number: String, tenants: String },
    /// The master key's HSM cannot be used now (it went away): nothing sealed opens or is
    /// sealed until it returns; tokens already cached are still served.
    #[error("the master key's HSM is unavailable ({reason}); retry when it is back")]
    KeyUnavailable { reason: String },
    /// Another process on the same database (a second replica) rotated the master key:
    /// nothing is sealed under the retired one; this process must be restarted with the new
    /// key.
    #[error(
        "the master key was rotated by another process (now {current}); nothing was changed: restart with the new key"
    )]
    MasterKeyRotated { current: String },
    /// The change's audit record could not be made durable, so the change was rolled back.
    #[error("the audit record of this change could not be written ({reason}); nothing was changed")]
    NotRecorded { reason: String },
}

/// Why a [`Gate`] refused a change: its audit record is not durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRecorded(pub String);

impl From<NotRecorded> for VaultError {
    fn from(e: NotRecorded) -> Self {
        VaultError::NotRecorded { reason: e.0 }
    }
}

impl VaultError {
    /// A sealed row that does not open: an integrity failure naming the row.
    pub(super) fn does_not_open(r: &SecretRef) -> VaultError {
        VaultError::Integrity { what: format!("{} of {} (version {})", r.purpose.as_str(), r.owner, r.version) }
    }

    /// A failure that may pass on its own (the audit log could not record the change, or
    /// the database is busy or failing): retrying makes sense, and the caller hears
    /// `UNAVAILABLE`.
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Store(s) => s.is_unavailable(),
            e => matches!(
                e,
                VaultError::NotRecorded { .. }
                    | VaultError::KeyUnavailable { .. }
                    | VaultError::MasterKeyRotated { .. }
            ),
        }
    }

    /// A failure to seal: the HSM went away, or the random source failed.
    pub(crate) fn sealing(e: crate::crypto::CryptoError) -> VaultError {
        match e {
            crate::crypto::CryptoError::KeyUnavailable(reason) => VaultError::KeyUnavailable { reason },
            _ => VaultError::Random,
        }
    }

    /// For `map_err` on opening row `r`: an HSM that went away is not an integrity failure.
    pub(super) fn opening(r: &SecretRef) -> impl FnOnce(crate::crypto::CryptoError) -> VaultError + '_ {
        move |e| match e {
            crate::crypto::CryptoError::KeyUnavailable(reason) => VaultError::KeyUnavailable { reason },
            _ => Self::does_not_open(r),
        }
    }
}
