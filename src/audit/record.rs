//! What an audit record says: the caller-supplied [`AuditRecord`], its [`Action`] and
//! [`Outcome`], and the stored, chained [`AuditEvent`].
//!
//! Invariant: the names returned by [`Action::as_str`] and [`Outcome::as_str`] are stored in
//! the database, hashed into the chain and exported; they never change once released. A new
//! action gets a new name.

use std::fmt;
use std::str::FromStr;

/// The longest a text field of a record may be, in bytes. Longer values are cut (at a
/// character boundary, with [`TRUNCATION_MARK`] appended) before hashing, so a client that
/// sends an enormous request id cannot bloat the log, yet its request is still recorded.
pub const MAX_FIELD_BYTES: usize = 2048;
/// Appended to a field that was cut to [`MAX_FIELD_BYTES`].
pub const TRUNCATION_MARK: &str = "…[truncated]";

macro_rules! named_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident : $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable snake_case name stored, hashed and exported.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { what: $what, name: s.chars().take(64).collect() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A name that is not an [`Action`] or [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    /// The name given (at most 64 characters of it).
    pub name: String,
}

named_enum! {
    /// What happened.
    #[non_exhaustive]
    pub enum Action: "action" {
        /// An access token was handed to a caller.
        TokenMinted => "token_minted",
        /// A token request was refused (policy, disabled tenant, rejected key, upstream failure).
        TokenDenied => "token_denied",
        /// A caller's GetAccessToken requests were refused over its request budget: one
        /// record per caller per second, with the count and the first and last request id.
        TokenThrottled => "token_throttled",
        /// A tenant's first client key was registered.
        KeyRegistered => "key_registered",
        /// A tenant's client key was replaced.
        KeyRotated => "key_rotated",
        /// Re-onboarding replaced the key of a tenant whose key Go had rejected.
        KeyReactivated => "key_reactivated",
        /// A tenant and its key were deleted.
        TenantDeleted => "tenant_deleted",
        /// A tenant was disabled.
        TenantDisabled => "tenant_disabled",
        /// A tenant was enabled again.
        TenantEnabled => "tenant_enabled",
        /// A tenant was read (get or list).
        TenantRead => "tenant_read",
        /// Go's token endpoint rejected a tenant's client key.
        KeyRejectedByGo => "key_rejected_by_go",
        /// An onboarding session was started.
        OnboardingBegun => "onboarding_begun",
        /// An onboarding session delivered client keys.
        OnboardingCompleted => "onboarding_completed",
        /// An onboarding session failed, was cancelled or was refused.
        OnboardingFailed => "onboarding_failed",
        /// The audit log was listed, watched or exported.
        AuditRead => "audit_read",
        /// The audit log was verified.
        AuditVerified => "audit_verified",
        /// The policy file was reloaded.
        PolicyReloaded => "policy_reloaded",
        /// The TLS certificates were reloaded.
        CertificatesReloaded => "certificates_reloaded",
        /// The master key (KEK) was rotated.
        KekRotated => "kek_rotated",
        /// An environment's integration (application and subscription key) was set.
        IntegrationSet => "integration_set",
        /// The integrations were listed (hints only).
        IntegrationRead => "integration_read",
        /// The vault switched the subscription key it sends (primary or secondary): by an
        /// operator, or by itself when Go's gateway called the active key invalid and the
        /// other one worked.
        SubscriptionKeySwitched => "subscription_key_switched",
        /// Go's metadata about a tenant's client (its ClientId) was filled in.
        TenantMetadataUpdated => "tenant_metadata_updated",
        /// A backup of the vault and audit databases was taken (recorded before the copy).
        BackupTaken => "backup_taken",
        /// A backup was restored (recorded in the restored log before it is put in place).
        Restored => "restored",
        /// The vault and its audit log were copied to another storage backend (`storage
        /// migrate`, `storage export`; recorded in the source's log before the copy).
        StorageMoved => "storage_moved",
        /// The server started serving.
        ServerStarted => "server_started",
        /// The server stopped.
        ServerStopped => "server_stopped",
        /// A server started on a log whose newest events no checkpoint covered (after a
        /// crash) and signed them; the detail names the range.
        UnsignedTailSigned => "unsigned_tail_signed",
        /// The audit signing key was replaced; the old key signed the hand-over to the new one.
        SigningKeyRotated => "signing_key_rotated",
        /// Events up to a signed checkpoint were moved into an archive file (`audit
        /// archive`); the detail names the range, the file and its SHA-256.
        AuditArchived => "audit_archived",
        /// A request through the API gateway is about to be sent to Go (durable before it
        /// is): method, path and query names, body size, the limiter wait.
        ApiRequested => "api_requested",
        /// Go answered a gateway request, or gave no answer (durable before the answer
        /// starts back): Go's status, bytes sent, the answer's length, time, Go's `traceId`.
        ApiAnswered => "api_answered",
        /// A gateway answer ended otherwise than it declared: its length was not given, it
        /// was cut, or the caller went away (written without being awaited).
        ApiCompleted => "api_completed",
        /// A gateway request was refused before it reached Go (policy, a request the
        /// gateway does not forward, a body over the limit).
        ApiDenied => "api_denied",
    }
}

named_enum! {
    /// How it ended.
    #[non_exhaustive]
    pub enum Outcome: "outcome" {
        /// Done as asked.
        Ok => "ok",
        /// Refused by policy or by a rule (the caller may not, or the tenant is not usable).
        Denied => "denied",
        /// Failed (upstream, storage, integrity).
        Error => "error",
    }
}

/// One audit record, as a caller appends it. The writer adds the sequence, time and hashes.
///
/// Invariant (DESIGN.md 3.1): no field ever holds a secret. `detail` is a short
/// human-readable note written by our own code (never a client key, token, subscription key
/// or request body); a token appears only as `token_fingerprint`. Text fields longer than
/// [`MAX_FIELD_BYTES`] are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The caller's identity (SPIFFE URI, DNS name or CN), or `pogo-vault` for the server's
    /// own events, or `cli:<user>` for operator commands.
    pub caller: String,
    /// The serial number of the caller's certificate (hex), empty when there is none.
    pub caller_serial: String,
    pub action: Action,
    pub tenant_id: Option<String>,
    pub key_version: Option<i64>,
    pub outcome: Outcome,
    /// The HTTP status Go answered with, when Go was asked.
    pub upstream_status: Option<u16>,
    /// The keyed fingerprint of the token handed out, formatted `keyid:tag`.
    pub token_fingerprint: Option<String>,
    /// A short note. Callers must never put a secret here.
    pub detail: String,
    pub request_id: String,
    /// The peer's socket address.
    pub peer: String,
}

impl AuditRecord {
    /// A record with every optional field empty; fill the rest with the builder methods.
    pub fn new(action: Action, outcome: Outcome) -> Self {
        Self {
            caller: String::new(),
            caller_serial: String::new(),
            action,
            tenant_id: None,
            key_version: None,
            outcome,
            upstream_status: None,
            token_fingerprint: None,
            detail: String::new(),
            request_id: String::new(),
            peer: String::new(),
        }
    }

    pub fn caller(mut self, identity: impl Into<String>, serial: impl Into<String>) -> Self {
        self.caller = identity.into();
        self.caller_serial = serial.into();
        self
    }

    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    pub fn key_version(mut self, version: i64) -> Self {
        self.key_version = Some(version);
        self
    }

    pub fn upstream_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
        self
    }

    /// `fingerprint` is `keyid:tag` (the `Display` of [`crate::crypto::secret::Fingerprint`]).
    pub fn token_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.token_fingerprint = Some(fingerprint.into());
        self
    }

    /// A short note; never a secret.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn request(mut self, request_id: impl Into<String>, peer: impl Into<String>) -> Self {
        self.request_id = request_id.into();
        self.peer = peer.into();
        self
    }

    /// Cuts every text field to [`MAX_FIELD_BYTES`]. The writer calls this before hashing.
    pub(crate) fn bound_lengths(&mut self) {
        for f in [&mut self.caller, &mut self.caller_serial, &mut self.detail, &mut self.request_id, &mut self.peer] {
            truncate(f);
        }
        for f in [&mut self.tenant_id, &mut self.token_fingerprint].into_iter().flatten() {
            truncate(f);
        }
    }
}

fn truncate(s: &mut String) {
    if s.len() <= MAX_FIELD_BYTES {
        return;
    }
    let mut end = MAX_FIELD_BYTES - TRUNCATION_MARK.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(TRUNCATION_MARK);
}

/// A committed audit event: the record plus its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// 1-based and gap-free.
    pub sequence: i64,
    /// When the event's batch was committed, Unix milliseconds.
    pub time_ms: i64,
    pub record: AuditRecord,
    /// The hash of event `sequence - 1` (32 zero bytes for event 1).
    pub prev_hash: [u8; 32],
    /// `SHA-256(prev_hash ‖ canonical encoding)`, see the [module docs](super).
    pub hash: [u8; 32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_snake_case() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), *a);
            assert!(a.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{a}");
        }
        for o in Outcome::ALL {
            assert_eq!(o.to_string().parse::<Outcome>().unwrap(), *o);
        }
        assert_eq!(Action::TokenMinted.as_str(), "token_minted");
        assert_eq!(Action::KeyRejectedByGo.as_str(), "key_rejected_by_go");
        assert_eq!(Outcome::Denied.as_str(), "denied");
        assert!("TokenMinted".parse::<Action>().is_err());
    }

    #[test]
    fn long_fields_are_cut_at_a_char_boundary() {
        let mut r = AuditRecord::new(Action::TokenDenied, Outcome::Denied).request("é".repeat(MAX_FIELD_BYTES), "p");
        r.tenant_id = Some("t".repeat(MAX_FIELD_BYTES + 1));
        r.bound_lengths();
        assert!(r.request_id.len() <= MAX_FIELD_BYTES);
        assert!(r.request_id.ends_with(TRUNCATION_MARK));
        assert!(r.tenant_id.as_deref().unwrap().len() <= MAX_FIELD_BYTES);
        assert_eq!(r.peer, "p");
    }
}
