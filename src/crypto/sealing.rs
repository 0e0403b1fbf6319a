//! Each secret type seals and opens itself: the one place where a secret's bytes meet the
//! envelope (`seal[KEK](plaintext, context)`, [`super::envelope`]). Callers outside
//! `crypto` (the vault) hand in a secret and a context and get a [`Sealed`] blob, or hand in
//! a blob and get the secret type back; they never hold the plaintext bytes.
//!
//! A plaintext that authenticates but is not what the context says (not a GUID where a
//! client key should be, a subscription key bound to another application or host) is an
//! [`OpenError::NotThatSecret`]: the row was written by something other than this vault,
//! or edited with the master key in hand. Both errors are coarse on purpose.

use zeroize::Zeroizing;

use super::envelope::{self, CryptoError, SealContext, Sealed};
use super::master::MasterKey;
use super::secret::{AccessToken, ClientKey, Fingerprint, FingerprintKey, SubscriptionKey, SymmetricKey};

/// Fingerprint purpose of client keys: the keyed fingerprint stored and audited in place
/// of the key.
pub const FP_CLIENT_KEY: &str = "client-key";

/// Why a sealed secret did not come back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The blob does not authenticate under this key and context.
    #[error("sealed data does not open")]
    DoesNotOpen,
    /// It authenticates, but the plaintext is not the secret the context names.
    #[error("sealed data is not the secret it should be")]
    NotThatSecret,
    /// The master key's HSM cannot be asked now: nothing is known about the blob.
    #[error("the master key's HSM is unavailable: {0}")]
    Unavailable(String),
}

impl From<CryptoError> for OpenError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::KeyUnavailable(reason) => OpenError::Unavailable(reason),
            _ => OpenError::DoesNotOpen,
        }
    }
}

impl ClientKey {
    /// `seal[KEK](client key, context)`.
    pub fn seal(&self, kek: &MasterKey, ctx: &SealContext<'_>) -> Result<Sealed, CryptoError> {
        envelope::seal(kek, ctx, self.expose_secret().as_bytes())
    }

    /// Opens a sealed client key.
    pub fn open(kek: &MasterKey, ctx: &SealContext<'_>, sealed: &Sealed) -> Result<ClientKey, OpenError> {
        let plain = envelope::open(kek, ctx, sealed)?;
        let s = std::str::from_utf8(&plain).map_err(|_| OpenError::NotThatSecret)?;
        ClientKey::parse(s).map_err(|_| OpenError::NotThatSecret)
    }

    /// The key's keyed fingerprint ([`FP_CLIENT_KEY`]): safe to store, show and audit (see
    /// [`FingerprintKey`]), and equal for equal keys under one fingerprint key, so a key
    /// registered twice can be recognised without opening anything.
    pub fn fingerprint(&self, fk: &FingerprintKey) -> Fingerprint {
        fk.fingerprint(FP_CLIENT_KEY, self.expose_secret().as_bytes())
    }
}

/// The plaintext sealed for a subscription key: the key together with the application key
/// and base URL it may be used with (`v1\n{application key}\n{base url}\n{subscription key}`),
/// so a row edited to send keys to another host or application does not open. Zeroized on
/// drop.
fn bind(application_key: &str, base_url: &str, key: &SubscriptionKey) -> Zeroizing<String> {
    Zeroizing::new(format!("v1\n{application_key}\n{base_url}\n{}", key.expose_secret()))
}

impl SubscriptionKey {
    /// Seals the key bound to the application key and base URL it may be sent with.
    pub fn seal_bound(
        &self,
        kek: &MasterKey,
        ctx: &SealContext<'_>,
        application_key: &str,
        base_url: &str,
    ) -> Result<Sealed, CryptoError> {
        envelope::seal(kek, ctx, bind(application_key, base_url, self).as_bytes())
    }

    /// Opens a key sealed with [`Self::seal_bound`], only if it was bound to exactly this
    /// application key and base URL.
    pub fn open_bound(
        kek: &MasterKey,
        ctx: &SealContext<'_>,
        sealed: &Sealed,
        application_key: &str,
        base_url: &str,
    ) -> Result<SubscriptionKey, OpenError> {
        let plain = envelope::open(kek, ctx, sealed)?;
        let s = std::str::from_utf8(&plain).map_err(|_| OpenError::NotThatSecret)?;
        let mut parts = s.splitn(4, '\n');
        let (Some("v1"), Some(app), Some(url), Some(key)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::NotThatSecret);
        };
        if app != application_key || url != base_url {
            return Err(OpenError::NotThatSecret);
        }
        SubscriptionKey::parse(key).map_err(|_| OpenError::NotThatSecret)
    }

    /// Whether two keys are the same, in constant time.
    pub fn same_as(&self, other: &SubscriptionKey) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.expose_secret().as_bytes(), other.expose_secret().as_bytes()).into()
    }
}

/// What is sealed with a shared access token besides the token: its type, when it expires
/// (Unix ms) and how long it lived, and the keyed fingerprint of the client key it was
/// minted with (so a token of a deleted tenant never serves a new tenant of the same id and
/// key version), so a row whose plain columns were edited still hands out only what was
/// minted, and only for that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub token_type: String,
    pub expires_at_ms: i64,
    pub lifetime_ms: i64,
    pub key_fingerprint: String,
}

impl AccessToken {
    /// Seals the token and its facts for the replicas' shared cache
    /// (`v1\n{type}\n{expires ms}\n{lifetime ms}\n{key fingerprint}\n{token}`), under `ctx`
    /// (purpose access-token, the tenant, its key version).
    pub fn seal_shared(
        &self,
        kek: &MasterKey,
        ctx: &SealContext<'_>,
        facts: &TokenFacts,
    ) -> Result<Sealed, CryptoError> {
        if facts.token_type.contains('\n') || facts.key_fingerprint.contains('\n') {
            // Not a token this format can carry (Go sent a line break): not shared.
            return Err(CryptoError::DoesNotOpen);
        }
        let plain = Zeroizing::new(format!(
            "v1\n{}\n{}\n{}\n{}\n{}",
            facts.token_type,
            facts.expires_at_ms,
            facts.lifetime_ms,
            facts.key_fingerprint,
            self.expose_secret()
        ));
        envelope::seal(kek, ctx, plain.as_bytes())
    }

    /// Opens a token sealed with [`Self::seal_shared`] under the same context.
    pub fn open_shared(
        kek: &MasterKey,
        ctx: &SealContext<'_>,
        sealed: &Sealed,
    ) -> Result<(AccessToken, TokenFacts), OpenError> {
        let plain = envelope::open(kek, ctx, sealed)?;
        let s = std::str::from_utf8(&plain).map_err(|_| OpenError::NotThatSecret)?;
        let mut parts = s.splitn(6, '\n');
        let (Some("v1"), Some(token_type), Some(expires), Some(lifetime), Some(key_fingerprint), Some(token)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::NotThatSecret);
        };
        let (Ok(expires_at_ms), Ok(lifetime_ms)) = (expires.parse(), lifetime.parse()) else {
            return Err(OpenError::NotThatSecret);
        };
        if token.is_empty() {
            return Err(OpenError::NotThatSecret);
        }
        let facts = TokenFacts {
            token_type: token_type.to_owned(),
            expires_at_ms,
            lifetime_ms,
            key_fingerprint: key_fingerprint.to_owned(),
        };
        Ok((AccessToken::new(token.to_owned()), facts))
    }

    /// The token's keyed fingerprint under `purpose`: what the audit record of its
    /// disclosure carries (see [`FingerprintKey`]).
    pub fn fingerprint(&self, fk: &FingerprintKey, purpose: &str) -> Fingerprint {
        fk.fingerprint(purpose, self.expose_secret().as_bytes())
    }
}

impl SymmetricKey {
    /// `seal[KEK](key, context)`: the vault's own keys (fingerprint key, audit signing seed).
    pub fn seal(&self, kek: &MasterKey, ctx: &SealContext<'_>) -> Result<Sealed, CryptoError> {
        envelope::seal(kek, ctx, self.expose_secret())
    }

    /// Opens a sealed 256-bit key.
    pub fn open(kek: &MasterKey, ctx: &SealContext<'_>, sealed: &Sealed) -> Result<SymmetricKey, OpenError> {
        let plain = envelope::open(kek, ctx, sealed)?;
        SymmetricKey::from_bytes(&plain).ok_or(OpenError::NotThatSecret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Purpose;

    fn kek(byte: u8) -> MasterKey {
        MasterKey::from_key(SymmetricKey::from_bytes(&[byte; 32]).unwrap())
    }

    #[test]
    fn a_shared_token_opens_only_for_its_tenant_version_and_master_key() {
        let facts = TokenFacts {
            token_type: "Bearer".into(),
            expires_at_ms: 1_800_000_000_000,
            lifetime_ms: 1_200_000,
            key_fingerprint: "k1:abc".into(),
        };
        let token = AccessToken::new("eyJ.shared.token".into());
        let ctx = SealContext::new(Purpose::AccessToken, "acme", 3);
        let sealed = token.seal_shared(&kek(1), &ctx, &facts).unwrap();
        let (opened, f) = AccessToken::open_shared(&kek(1), &ctx, &sealed).unwrap();
        assert_eq!((opened.expose_secret(), &f), ("eyJ.shared.token", &facts));
        for other in [
            SealContext::new(Purpose::AccessToken, "acme", 4),
            SealContext::new(Purpose::AccessToken, "other", 3),
            SealContext::new(Purpose::ClientKey, "acme", 3),
        ] {
            assert!(AccessToken::open_shared(&kek(1), &other, &sealed).is_err(), "{other:?}");
        }
        assert!(AccessToken::open_shared(&kek(2), &ctx, &sealed).is_err(), "another master key");
        let mut edited = sealed.clone();
        let last = edited.ciphertext.len() - 1;
        edited.ciphertext[last] ^= 1;
        assert!(AccessToken::open_shared(&kek(1), &ctx, &edited).is_err(), "an edited blob");
        // A client key sealed for the same owner and version does not open as a token.
        let key = crate::crypto::ClientKey::parse("5eed0000-0000-4000-8000-000000abc001").unwrap();
        let as_key = key.seal(&kek(1), &ctx).unwrap();
        assert_eq!(AccessToken::open_shared(&kek(1), &ctx, &as_key).unwrap_err(), OpenError::NotThatSecret);
    }
}
