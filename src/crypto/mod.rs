//! The key hierarchy: master key (KEK) → data keys (DEKs) → client keys and other secrets.
//!
//! Architecture invariant: nothing outside this module touches key bytes, nonces or
//! associated data; callers pass secrets in and get sealed blobs out, and back.

mod aead;
pub mod envelope;
pub mod hsm;
pub mod master;
mod pkcs11;
pub mod sealing;
pub mod secret;
pub mod signing;

pub use envelope::{CryptoError, Purpose, SealContext, Sealed};
pub use hsm::{HsmError, HsmKek, Pkcs11Settings};
pub use master::{Argon2Params, MasterKey, MasterKeyError, MasterKeySource, Passphrase};
pub use sealing::{FP_CLIENT_KEY, OpenError, TokenFacts};
pub use secret::{AccessToken, ClientKey, Fingerprint, FingerprintKey, KeyHint, SubscriptionKey, SymmetricKey};
pub use signing::{SigningSeed, audit_key_id};
