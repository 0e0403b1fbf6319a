//! The key hierarchy: master key (KEK) → data keys (DEKs) → client keys and other secrets.
//!
//! Architecture invariant: nothing outside this module touches key bytes, nonces or
//! associated data; callers pass secrets in and get sealed blobs out, and back.

pub mod envelope;
pub mod master;
pub mod secret;

pub use envelope::{CryptoError, Purpose, SealContext, Sealed};
pub use master::{Argon2Params, MasterKey, MasterKeyError, MasterKeySource, Passphrase};
pub use secret::{AccessToken, ClientKey, Fingerprint, FingerprintKey, KeyHint, SubscriptionKey, SymmetricKey};
