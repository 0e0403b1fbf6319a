//! Envelope encryption: `seal[KEK](secret) = (wrap[KEK](DEK), seal[DEK](secret))`.
//!
//! Every secret gets its own fresh 256-bit data key (DEK). The secret is sealed with
//! XChaCha20-Poly1305 under the DEK; the DEK is sealed ("wrapped") with XChaCha20-Poly1305
//! under the master key (KEK). Why XChaCha20: its 192-bit nonce can be drawn at random for
//! every message with no practical collision risk, so no nonce counter has to survive
//! restarts or backups.
//!
//! Associated data binds each blob to where it belongs:
//! - the secret's ciphertext: purpose, owner (tenant id or environment) and key version;
//! - the wrapped DEK: the same, plus the KEK id.
//!
//! So a row copied onto another tenant or version fails to open, and a DEK wrapped under
//! one master key is refused under another. The KEK id is deliberately *not* in the
//! ciphertext's associated data: `rotate-kek` rewraps DEKs only and never touches a secret's
//! ciphertext (DESIGN.md invariant 3).
//!
//! Stored form of both blobs: `nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes)`.
//! Every failure to open is one coarse [`CryptoError::DoesNotOpen`]: no oracle.

use zeroize::Zeroizing;

pub use super::aead::CryptoError;
use super::aead::{decrypt, encrypt};
use super::master::MasterKey;
use super::secret::SymmetricKey;

const AAD_DOMAIN: &[u8] = b"pogo-vault/v1";

/// What a sealed secret is for; part of the associated data, so a blob sealed for one
/// purpose never opens as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    ClientKey,
    SubscriptionKey,
    FingerprintKey,
    AuditSigningKey,
    /// A Go access token in the cache replicas share on PostgreSQL (`store::shared`).
    AccessToken,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::ClientKey => "client-key",
            Purpose::SubscriptionKey => "subscription-key",
            Purpose::FingerprintKey => "fingerprint-key",
            Purpose::AuditSigningKey => "audit-signing-key",
            Purpose::AccessToken => "access-token",
        }
    }
}

/// Where a sealed secret belongs: bound into the associated data.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    pub purpose: Purpose,
    /// Tenant id for client keys, environment for subscription keys, `vault` for
    /// the vault's own keys.
    pub owner: &'a str,
    pub version: i64,
}

/// A sealed secret as stored: two opaque blobs.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} + {} bytes)", self.wrapped_dek.len(), self.ciphertext.len())
    }
}

impl<'a> SealContext<'a> {
    pub fn new(purpose: Purpose, owner: &'a str, version: i64) -> Self {
        Self { purpose, owner, version }
    }

    /// Length-prefixed, so no two contexts encode to the same bytes.
    fn aad(&self, kek_id: Option<&str>) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.owner.len());
        aad.extend_from_slice(AAD_DOMAIN);
        for part in [self.purpose.as_str().as_bytes(), self.owner.as_bytes()] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(&self.version.to_be_bytes());
        match kek_id {
            Some(id) => {
                aad.push(1);
                aad.extend_from_slice(&(id.len() as u32).to_be_bytes());
                aad.extend_from_slice(id.as_bytes());
            }
            None => aad.push(0),
        }
        aad
    }
}

/// `seal[KEK](plaintext)` under a fresh DEK, bound to `ctx`.
pub fn seal(kek: &MasterKey, ctx: &SealContext<'_>, plaintext: &[u8]) -> Result<Sealed, CryptoError> {
    let dek = SymmetricKey::generate().map_err(|_| CryptoError::Random)?;
    let ciphertext = encrypt(dek.expose_secret(), &ctx.aad(None), plaintext)?;
    let wrapped_dek = kek.wrap(&ctx.aad(Some(kek.id())), dek.expose_secret())?;
    Ok(Sealed { wrapped_dek, ciphertext })
}

/// `open[KEK](sealed)`: unwraps the DEK, then opens the secret. The plaintext is zeroized
/// when the caller drops it.
pub fn open(kek: &MasterKey, ctx: &SealContext<'_>, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let dek = unwrap_dek(kek, ctx, &sealed.wrapped_dek)?;
    decrypt(dek.expose_secret(), &ctx.aad(None), &sealed.ciphertext)
}

/// Rewraps a DEK from `old` to `new` without looking at the secret it protects.
pub fn rewrap(
    old: &MasterKey,
    new: &MasterKey,
    ctx: &SealContext<'_>,
    wrapped_dek: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let dek = unwrap_dek(old, ctx, wrapped_dek)?;
    new.wrap(&ctx.aad(Some(new.id())), dek.expose_secret())
}

fn unwrap_dek(kek: &MasterKey, ctx: &SealContext<'_>, wrapped: &[u8]) -> Result<SymmetricKey, CryptoError> {
    let bytes = kek.unwrap(&ctx.aad(Some(kek.id())), wrapped)?;
    SymmetricKey::from_bytes(&bytes).ok_or(CryptoError::DoesNotOpen)
}

#[cfg(test)]
mod tests {
    use super::super::aead::{NONCE_LEN, TAG_LEN};
    use super::*;
    use proptest::prelude::*;

    fn kek(byte: u8) -> MasterKey {
        MasterKey::from_key(SymmetricKey::from_bytes(&[byte; 32]).unwrap())
    }

    #[test]
    fn fixed_vector_opens_and_context_matters() {
        let k = kek(7);
        let ctx = SealContext::new(Purpose::ClientKey, "acme", 1);
        let s = seal(&k, &ctx, b"secret").unwrap();
        assert_eq!(&open(&k, &ctx, &s).unwrap()[..], b"secret");
        assert_eq!(s.ciphertext.len(), NONCE_LEN + 6 + TAG_LEN);
        assert_eq!(s.wrapped_dek.len(), NONCE_LEN + 32 + TAG_LEN);
        for other in [
            SealContext::new(Purpose::ClientKey, "acme", 2),
            SealContext::new(Purpose::ClientKey, "acmf", 1),
            SealContext::new(Purpose::SubscriptionKey, "acme", 1),
        ] {
            assert!(matches!(open(&k, &other, &s), Err(CryptoError::DoesNotOpen)));
        }
        assert!(matches!(open(&kek(8), &ctx, &s), Err(CryptoError::DoesNotOpen)));
    }

    #[test]
    fn rewrap_keeps_ciphertext_and_moves_to_new_kek() {
        let (old, new) = (kek(1), kek(2));
        let ctx = SealContext::new(Purpose::ClientKey, "t", 3);
        let s = seal(&old, &ctx, b"k").unwrap();
        let wrapped = rewrap(&old, &new, &ctx, &s.wrapped_dek).unwrap();
        let moved = Sealed { wrapped_dek: wrapped, ciphertext: s.ciphertext.clone() };
        assert_eq!(&open(&new, &ctx, &moved).unwrap()[..], b"k");
        assert!(open(&old, &ctx, &moved).is_err());
    }

    #[test]
    fn truncated_blobs_do_not_open() {
        let k = kek(3);
        let ctx = SealContext::new(Purpose::ClientKey, "t", 1);
        let s = seal(&k, &ctx, b"x").unwrap();
        let short = Sealed { wrapped_dek: s.wrapped_dek[..10].to_vec(), ciphertext: s.ciphertext.clone() };
        assert!(open(&k, &ctx, &short).is_err());
        let empty = Sealed { wrapped_dek: s.wrapped_dek.clone(), ciphertext: vec![] };
        assert!(open(&k, &ctx, &empty).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(secret in proptest::collection::vec(any::<u8>(), 0..200),
                      tenant in "[a-z0-9][a-z0-9._-]{0,63}", version in 1i64..1000) {
            let k = kek(9);
            let ctx = SealContext::new(Purpose::ClientKey, &tenant, version);
            let s = seal(&k, &ctx, &secret).unwrap();
            prop_assert_eq!(&open(&k, &ctx, &s).unwrap()[..], &secret[..]);
        }

        #[test]
        fn any_flipped_byte_fails(secret in proptest::collection::vec(any::<u8>(), 1..64),
                                  which in any::<bool>(), pos in any::<usize>(), bit in 0u8..8) {
            let k = kek(5);
            let ctx = SealContext::new(Purpose::ClientKey, "acme", 1);
            let mut s = seal(&k, &ctx, &secret).unwrap();
            let blob = if which { &mut s.wrapped_dek } else { &mut s.ciphertext };
            let i = pos % blob.len();
            blob[i] ^= 1 << bit;
            prop_assert!(open(&k, &ctx, &s).is_err());
        }

        #[test]
        fn copied_to_another_tenant_fails(a in "[a-z][a-z0-9]{0,20}", b in "[a-z][a-z0-9]{0,20}") {
            prop_assume!(a != b);
            let k = kek(4);
            let s = seal(&k, &SealContext::new(Purpose::ClientKey, &a, 1), b"key").unwrap();
            prop_assert!(open(&k, &SealContext::new(Purpose::ClientKey, &b, 1), &s).is_err());
        }
    }
}
