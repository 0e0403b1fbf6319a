//! The one AEAD of the key hierarchy in memory: XChaCha20-Poly1305, stored as
//! `nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes)`. Why XChaCha20: its 192-bit nonce can be
//! drawn at random for every message with no practical collision risk, so no nonce counter
//! has to survive restarts or backups. A leaf: `envelope` seals secrets under data keys with
//! it, and `master` wraps data keys under a master key in memory with it.
//!
//! Every failure to open is one coarse [`CryptoError::DoesNotOpen`]: no oracle.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A blob failed authentication: wrong key, wrong context, or tampered bytes.
    #[error("sealed data does not open (wrong master key, data moved between rows, or tampering)")]
    DoesNotOpen,
    /// The operating system's random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// The master key's HSM cannot be used now (it went away, or refuses the session).
    #[error("the master key's HSM is unavailable: {0}")]
    KeyUnavailable(String),
}

/// XChaCha20-Poly1305 under `key`: `nonce ‖ ciphertext ‖ tag` (also a software KEK's wrap).
pub(crate) fn encrypt(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .map_err(|_| CryptoError::DoesNotOpen)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

pub(crate) fn decrypt(key: &[u8; 32], aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::DoesNotOpen);
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::DoesNotOpen)
}
