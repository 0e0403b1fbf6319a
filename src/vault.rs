//! The unlocked vault: the store plus the master key. Every secret enters sealed and
//! leaves opened only here; every change is one transaction behind an audit gate.
//!
//! Files, by concern: `error` (what fails), `gate` (audit before effect), `keys` (the one
//! path by which a client key enters the store, and the opening of sealed rows),
//! `master` (init, unlock, the master key's check and rotation, the vault's own keys),
//! `tenants` (the registry's rows), `onboarding` (sessions and what a completed one
//! stores), `integrations` (the application and subscription keys). This file holds the
//! [`Vault`] itself and names the rest.
//!
//! Architecture invariants:
//! - every write here is one transaction: a failed call leaves the store unchanged;
//! - **audit before effect**: every write takes a [`Gate`] and calls it with the change
//!   it is about to commit, while the transaction is still open; the gate makes the
//!   change's audit record durable (or refuses), and only then does the transaction
//!   commit. A refusal rolls the transaction back ([`VaultError::NotRecorded`]). So a
//!   crash at any point leaves either no change, or a change whose record is durable
//!   (ARCHITECTURE.md, "Audit before effect");
//! - a plaintext client key enters the store only through `keys::enter_client_key` (called
//!   by [`Vault::add_tenants`], [`Vault::rotate_key`] and [`Vault::apply_onboarding`]; sealed
//!   at once) and leaves only through [`Vault::open_client_key`], whose one caller is the
//!   token broker (`tokens`);
//! - no key bytes here: secrets seal, open and fingerprint themselves (`crypto::sealing`,
//!   `crypto::signing`);
//! - destroying a key (rotation, deletion) deletes its sealed row with `secure_delete` on and
//!   then truncates the WAL, so the old DEK is overwritten, not merely unlinked.
//!
//! Methods block on the database (SQLite or PostgreSQL); async callers run them on the
//! blocking pool, never on an async worker (the PostgreSQL client runs its own small
//! runtime inside each call).

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::crypto::{FingerprintKey, MasterKey};
use crate::store::Store;

mod error;
mod gate;
mod integrations;
mod keys;
mod master;
mod onboarding;
mod tenants;

pub use crate::crypto::{FP_CLIENT_KEY, audit_key_id};
pub use error::{NotRecorded, VaultError};
pub use gate::{CommitGate, Gate, UnauditedFixture};
pub use integrations::{
    GO_HOST, IntegrationChange, IntegrationInput, SubscriptionKeySwitch, SwitchIf, base_url_origin, is_go_base_url,
    validate_base_url,
};
pub use master::{Argon2Costs, InitKey, KekRotation, check_master_key};
pub use onboarding::{OnboardedKey, OnboardingOutcome};
pub use tenants::{KeyChange, NewTenant};

pub struct Vault {
    store: Mutex<Store>,
    /// The master key in force. Read only while the store lock is held, and replaced by
    /// `rotate_kek` while it holds that lock, so nothing seals under a key that a concurrent
    /// rotation is retiring, nor opens a row with a key it was not wrapped under.
    kek: RwLock<Arc<MasterKey>>,
    fingerprint_key: FingerprintKey,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault(kek={})", self.kek().id())
    }
}

impl Vault {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions
        // roll back on drop), so a poisoned lock is safe to reuse.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The master key in force (see the field's invariant: read it under the store lock).
    fn kek(&self) -> Arc<MasterKey> {
        self.kek.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The master key's HSM health: `None` for a key in memory, else whether its HSM
    /// answers (and why not).
    pub fn master_key_health(&self) -> Option<Result<(), String>> {
        self.kek().hsm().map(|h| h.health())
    }

    pub fn kek_id(&self) -> String {
        self.kek().id().to_owned()
    }

    pub fn fingerprint_key(&self) -> &FingerprintKey {
        &self.fingerprint_key
    }

    /// Where the vault is kept: the SQLite file, or PostgreSQL's hosts and database.
    pub fn location(&self) -> String {
        self.store().describe()
    }

    /// The SQLite file, when the vault is kept in one.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self.store().sqlite_path().map(ToOwned::to_owned)
    }

    pub fn backend(&self) -> crate::store::Backend {
        self.store().backend()
    }

    /// What this vault's change notifications carry (PostgreSQL), so its replica's change
    /// feed skips them: its own changes are in its caches already.
    pub fn change_origin(&self) -> Option<String> {
        self.store().change_origin()
    }

    pub fn schema_version(&self) -> Result<i64, VaultError> {
        Ok(self.store().schema_version()?)
    }
}
