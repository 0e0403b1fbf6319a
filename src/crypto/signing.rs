//! The audit signing key's seed: 32 random bytes (Ed25519, RFC 8032 §5.1.5), generated at
//! `init` (or `audit rotate-signing-key`) and kept sealed under the master key like every
//! other secret. This type is the only holder of the seed's bytes outside the envelope;
//! callers get the `ed25519_dalek::SigningKey` to sign with, the public key to publish, and
//! the key id that names it in checkpoints.

use sha2::Digest;

use super::envelope::{CryptoError, SealContext, Sealed};
use super::master::MasterKey;
use super::sealing::OpenError;
use super::secret::{SymmetricKey, hex};

/// An Ed25519 seed. Zeroized on drop (it is a [`SymmetricKey`]); no `Display`, a redacted
/// `Debug`.
#[derive(Debug)]
pub struct SigningSeed(SymmetricKey);

impl SigningSeed {
    /// A fresh seed from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        Ok(Self(SymmetricKey::generate()?))
    }

    /// The seed of a signing key (to seal it). `ed25519_dalek::SigningKey` zeroizes its own
    /// copy on drop.
    pub fn of(key: &ed25519_dalek::SigningKey) -> Self {
        let bytes = zeroize::Zeroizing::new(key.to_bytes());
        // Exactly 32 bytes: `from_bytes` cannot fail on them.
        Self(SymmetricKey::from_bytes(&bytes[..]).unwrap_or_else(|| unreachable!("an Ed25519 seed is 32 bytes")))
    }

    /// The key to sign with.
    pub fn signing_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(self.0.expose_secret())
    }

    /// The public key (what verifiers hold).
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key().verifying_key().to_bytes()
    }

    pub fn seal(&self, kek: &MasterKey, ctx: &SealContext<'_>) -> Result<Sealed, CryptoError> {
        self.0.seal(kek, ctx)
    }

    pub fn open(kek: &MasterKey, ctx: &SealContext<'_>, sealed: &Sealed) -> Result<Self, OpenError> {
        SymmetricKey::open(kek, ctx, sealed).map(Self)
    }
}

/// The id of an audit signing key: the first 6 bytes of SHA-256 of its public key, in hex.
pub fn audit_key_id(public: &[u8; 32]) -> String {
    hex(&sha2::Sha256::digest(public)[..6])
}
