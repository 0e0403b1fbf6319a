//! The unlocked vault: the store plus the master key, and the registry operations that put
//! secrets in (sealing them on the way) and manage tenants.
//!
//! Architecture invariants:
//! - every write here is one transaction: a failed call leaves the store unchanged;
//! - **audit before effect**: every write takes a [`Gate`] and calls it with the change
//!   it is about to commit, while the transaction is still open; the gate makes the
//!   change's audit record durable (or refuses), and only then does the transaction
//!   commit. A refusal rolls the transaction back ([`VaultError::NotRecorded`]). So a
//!   crash at any point leaves either no change, or a change whose record is durable
//!   (ARCHITECTURE.md, "Audit before effect");
//! - a plaintext client key enters only through [`Vault::add_tenant`] / [`Vault::rotate_key`]
//!   (sealed at once) and leaves only through [`Vault::open_client_key`], whose one caller
//!   is the token broker (`tokens`);
//! - destroying a key (rotation, deletion) deletes its sealed row with `secure_delete` on and
//!   then truncates the WAL, so the old DEK is overwritten, not merely unlinked.
//!
//! Methods block on SQLite; async callers run them on the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::crypto::envelope::{self, CryptoError};
use crate::crypto::master::{self, MasterKeyError};
use crate::crypto::secret::hex;
use crate::crypto::{
    Argon2Params, ClientKey, FingerprintKey, MasterKey, MasterKeySource, Purpose, SealContext, SymmetricKey,
};
use crate::domain::{DisplayName, Environment, InvalidInput, Labels, OrganizationNumber, TenantId, TenantStatus};
use crate::store::meta::{self, KekMeta, VaultKey};
use crate::store::onboarding::{self, Session, SessionStatus};
use crate::store::secrets::{self, SecretRef};
use crate::store::tenants::{self, TenantRecord};
use crate::store::{Store, StoreError, now_ms};

mod integrations;

pub use integrations::{
    GO_HOST, IntegrationChange, IntegrationInput, SubscriptionKeySwitch, SwitchIf, base_url_origin, is_go_base_url,
    validate_base_url,
};

/// The owner name of the vault's own keys in `sealed_secrets`.
const VAULT_OWNER: &str = "vault";
/// Fingerprint purpose label for client keys.
pub const FP_CLIENT_KEY: &str = "client-key";

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

/// Called by every write with the change it is about to commit, inside its transaction:
/// `Ok` only once the change's audit record is durable. See the module invariants.
/// Closures `Fn(&T) -> Result<(), NotRecorded>` are gates.
pub trait CommitGate<T: ?Sized>: Sync {
    fn record(&self, change: &T) -> Result<(), NotRecorded>;
}

impl<T: ?Sized, F: Fn(&T) -> Result<(), NotRecorded> + Sync> CommitGate<T> for F {
    fn record(&self, change: &T) -> Result<(), NotRecorded> {
        self(change)
    }
}

/// How a write receives its gate.
pub type Gate<'a, T> = &'a dyn CommitGate<T>;

/// The gate of test fixtures and benchmark set-up only: records nothing. No path a user
/// can reach uses it (`tests/architecture.rs` checks that `src/` never names it).
#[derive(Debug, Clone, Copy)]
pub struct UnauditedFixture;

impl<T: ?Sized> CommitGate<T> for UnauditedFixture {
    fn record(&self, _: &T) -> Result<(), NotRecorded> {
        Ok(())
    }
}

/// What a key rotation is about to commit.
#[derive(Debug, Clone)]
pub struct KeyChange {
    pub previous: TenantRecord,
    pub current: TenantRecord,
}

impl VaultError {
    fn integrity(r: &SecretRef) -> impl FnOnce(CryptoError) -> VaultError + '_ {
        move |_| VaultError::Integrity {
            what: format!("{} of {} (version {})", r.purpose.as_str(), r.owner, r.version),
        }
    }
}

/// How `init` gets its master key.
#[derive(Debug, Clone)]
pub enum InitKey {
    /// Create a new key file (mode 0600) and use it.
    GenerateKeyFile(std::path::PathBuf),
    /// Use an existing key file or a passphrase.
    Existing(MasterKeySource),
}

/// Argon2id costs for a new passphrase-derived key.
#[derive(Debug, Clone, Copy)]
pub struct Argon2Costs {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Costs {
    fn default() -> Self {
        Self {
            memory_kib: Argon2Params::DEFAULT_MEMORY_KIB,
            iterations: Argon2Params::DEFAULT_ITERATIONS,
            parallelism: Argon2Params::DEFAULT_PARALLELISM,
        }
    }
}

/// The fields of a new tenant besides its key.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub tenant_id: TenantId,
    pub environment: Environment,
    pub display_name: DisplayName,
    pub organization_number: Option<OrganizationNumber>,
    pub go_client_id: Option<String>,
    pub labels: Labels,
}

impl NewTenant {
    /// A tenant with no display name, organization number, Go client id or labels.
    pub fn new(tenant_id: TenantId, environment: Environment) -> NewTenant {
        NewTenant {
            tenant_id,
            environment,
            display_name: DisplayName::default(),
            organization_number: None,
            go_client_id: None,
            labels: Labels::default(),
        }
    }
}

/// Summary of a `rotate-kek`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekRotation {
    pub old_kek_id: String,
    pub new_kek_id: String,
    pub rewrapped: usize,
}

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

/// Derives the master key a source gives for this database.
fn resolve_master_key(source: &MasterKeySource, meta: &KekMeta) -> Result<MasterKey, VaultError> {
    let key = match (source, &meta.argon2) {
        (MasterKeySource::KeyFile(p), None) => master::read_key_file(p)?,
        (MasterKeySource::PassphraseFile(_) | MasterKeySource::PassphraseEnv(_), Some(params)) => {
            source.passphrase()?.derive(params)?
        }
        (MasterKeySource::KeyFile(_), Some(_)) => {
            return Err(InvalidInput::new(
                "master key",
                "this database's master key comes from a passphrase: use --master-passphrase-file or --master-passphrase-env",
            )
            .into());
        }
        (_, None) => {
            return Err(InvalidInput::new(
                "master key",
                "this database's master key comes from a key file: use --master-key-file",
            )
            .into());
        }
    };
    if !key.matches_check(&meta.key_check) {
        let rotated_at = meta.kek_rotated_at.map(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_else(|| ms.to_string())
        });
        let (given, expected) = (key.id().to_owned(), meta.kek_id.clone());
        return Err(MasterKeyError::WrongMasterKey { given, expected, rotated_at }.into());
    }
    Ok(key)
}

/// Checks `source` against the database at `path` without changing anything (the file is
/// opened read-only, no migration runs): what `config check` uses. Returns the key's id.
pub fn check_master_key(path: &Path, source: &MasterKeySource) -> Result<String, VaultError> {
    if !path.exists() {
        return Err(StoreError::Missing { path: path.display().to_string() }.into());
    }
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(StoreError::from)?;
    let not_a_vault = || StoreError::NotInitialized { path: path.display().to_string() };
    let meta = meta::get(&conn).map_err(|_| not_a_vault())?.ok_or_else(not_a_vault)?;
    Ok(resolve_master_key(source, &meta)?.id().to_owned())
}

/// Obtains a new master key for `init` or `rotate-kek` (before anything is written).
fn new_master_key(init: &InitKey, costs: Argon2Costs) -> Result<(MasterKey, Option<Argon2Params>), VaultError> {
    Ok(match init {
        InitKey::GenerateKeyFile(p) => (master::generate_key_file(p)?, None),
        InitKey::Existing(MasterKeySource::KeyFile(p)) => (master::read_key_file(p)?, None),
        InitKey::Existing(s) => {
            let pass = s.passphrase()?;
            let params = Argon2Params::with_costs(costs.memory_kib, costs.iterations, costs.parallelism)?;
            (pass.derive(&params)?, Some(params))
        }
    })
}

/// Validates everything about `init` that can be checked without writing.
fn precheck_init(init: &InitKey) -> Result<(), VaultError> {
    match init {
        InitKey::GenerateKeyFile(p) if p.exists() => {
            Err(MasterKeyError::KeyFileExists { path: p.display().to_string() }.into())
        }
        InitKey::GenerateKeyFile(_) => Ok(()),
        InitKey::Existing(MasterKeySource::KeyFile(p)) => master::read_key_file(p).map(|_| ()).map_err(Into::into),
        InitKey::Existing(s) => s.passphrase().map(|_| ()).map_err(Into::into),
    }
}

impl Vault {
    /// Creates a new vault database: schema, master-key record, the vault's own keys.
    /// On failure nothing is left behind: no database file, no generated key file.
    pub fn init(path: &Path, init: &InitKey, costs: Argon2Costs) -> Result<Vault, VaultError> {
        if path.exists() {
            let store = Store::open(path)?;
            if meta::get(store.conn())?.is_some() {
                return Err(StoreError::AlreadyInitialized { path: path.display().to_string() }.into());
            }
        }
        precheck_init(init)?;
        let existed = path.exists();
        let result = Self::init_inner(path, init, costs);
        if result.is_err() {
            if let InitKey::GenerateKeyFile(p) = init {
                // Only if we got as far as creating it: precheck refused an existing file.
                let _ = std::fs::remove_file(p);
            }
            if !existed {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
        }
        result
    }

    fn init_inner(path: &Path, init: &InitKey, costs: Argon2Costs) -> Result<Vault, VaultError> {
        let (kek, argon2) = new_master_key(init, costs)?;
        let fp_raw = SymmetricKey::generate().map_err(|_| VaultError::Random)?;
        let signing_seed = SymmetricKey::generate().map_err(|_| VaultError::Random)?;
        let signing_public =
            ed25519_dalek::SigningKey::from_bytes(signing_seed.expose_secret()).verifying_key().to_bytes();

        let mut store = Store::create(path)?;
        let tx = store.write_tx()?;
        let now = now_ms();
        meta::put(
            &tx,
            &KekMeta {
                kek_id: kek.id().to_owned(),
                key_check: kek.key_check(),
                argon2,
                created_at: now,
                kek_rotated_at: None,
            },
        )?;
        for (purpose, secret, key_id, public) in [
            (Purpose::FingerprintKey, &fp_raw, FingerprintKey::id_for(&fp_raw), None),
            (Purpose::AuditSigningKey, &signing_seed, audit_key_id(&signing_public), Some(signing_public.to_vec())),
        ] {
            let r = SecretRef { purpose, owner: VAULT_OWNER.to_owned(), version: 1 };
            let sealed = envelope::seal(&kek, &SealContext::new(purpose, VAULT_OWNER, 1), secret.expose_secret())
                .map_err(|_| VaultError::Random)?;
            secrets::put(&tx, &r, &sealed, kek.id())?;
            meta::put_vault_key(
                &tx,
                &VaultKey { purpose: purpose.as_str().to_owned(), key_id, public_key: public, created_at: now },
            )?;
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(Vault {
            store: Mutex::new(store),
            kek: RwLock::new(Arc::new(kek)),
            fingerprint_key: FingerprintKey::new(fp_raw),
        })
    }

    /// Opens an initialised vault, checking the master key before anything else.
    pub fn unlock(path: &Path, source: &MasterKeySource) -> Result<Vault, VaultError> {
        let store = Store::open(path)?;
        let meta =
            meta::get(store.conn())?.ok_or_else(|| StoreError::NotInitialized { path: path.display().to_string() })?;
        let kek = resolve_master_key(source, &meta)?;
        let fp = open_vault_secret(&store, &kek, Purpose::FingerprintKey)?;
        let fingerprint_key = FingerprintKey::new(
            SymmetricKey::from_bytes(&fp).ok_or(VaultError::Integrity { what: "fingerprint key".to_owned() })?,
        );
        Ok(Vault { store: Mutex::new(store), kek: RwLock::new(Arc::new(kek)), fingerprint_key })
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions
        // roll back on drop), so a poisoned lock is safe to reuse.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The master key in force (see the field's invariant: read it under the store lock).
    fn kek(&self) -> Arc<MasterKey> {
        self.kek.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn kek_id(&self) -> String {
        self.kek().id().to_owned()
    }

    pub fn fingerprint_key(&self) -> &FingerprintKey {
        &self.fingerprint_key
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.store().path().to_owned()
    }

    pub fn schema_version(&self) -> Result<i64, VaultError> {
        Ok(self.store().schema_version()?)
    }

    /// The Ed25519 audit signing key (seed), opened from its sealed row.
    pub fn audit_signing_key(&self) -> Result<ed25519_dalek::SigningKey, VaultError> {
        let store = self.store();
        let seed = open_vault_secret(&store, &self.kek(), Purpose::AuditSigningKey)?;
        drop(store);
        let seed: [u8; 32] =
            seed[..].try_into().map_err(|_| VaultError::Integrity { what: "audit signing key".to_owned() })?;
        Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The public record of one of the vault's own keys.
    pub fn vault_key(&self, purpose: Purpose) -> Result<Option<VaultKey>, VaultError> {
        Ok(meta::vault_key(self.store().conn(), purpose.as_str())?)
    }

    // ---- tenants ----

    /// Registers a tenant with its first key (version 1).
    pub fn add_tenant(
        &self,
        new: &NewTenant,
        key: &ClientKey,
        gate: Gate<'_, TenantRecord>,
    ) -> Result<TenantRecord, VaultError> {
        let one = |recs: &[TenantRecord]| recs.iter().try_for_each(|r| gate.record(r));
        let mut recs = self.add_tenants(&[(new.clone(), key)], &one)?;
        recs.pop().ok_or_else(|| VaultError::Integrity { what: "tenant insert returned nothing".into() })
    }

    /// Registers many tenants in one transaction: all or none (bulk import, onboarding of
    /// several clients at once).
    pub fn add_tenants(
        &self,
        batch: &[(NewTenant, &ClientKey)],
        gate: Gate<'_, [TenantRecord]>,
    ) -> Result<Vec<TenantRecord>, VaultError> {
        // The store lock first: sealing reads the master key, which only changes under it.
        let mut store = self.store();
        let kek = self.kek();
        let mut rows = Vec::with_capacity(batch.len());
        for (new, key) in batch {
            let r = SecretRef { purpose: Purpose::ClientKey, owner: new.tenant_id.as_str().to_owned(), version: 1 };
            let sealed = Self::seal_client_key(&kek, &r, key)?;
            let now = now_ms();
            let rec = TenantRecord {
                tenant_id: new.tenant_id.clone(),
                environment: new.environment,
                display_name: new.display_name.clone(),
                organization_number: new.organization_number.clone(),
                go_client_id: new.go_client_id.clone(),
                labels: new.labels.clone(),
                status: TenantStatus::Active,
                key_version: 1,
                key_hint: key.hint(),
                key_fingerprint: self.fingerprint_key.fingerprint(FP_CLIENT_KEY, key.expose_secret().as_bytes()),
                created_at: now,
                updated_at: now,
                last_token_at: None,
            };
            rows.push((rec, r, sealed));
        }
        let tx = store.write_tx()?;
        for (rec, r, sealed) in &rows {
            tenants::insert(&tx, rec)?;
            // A leftover sealed row under this id (there should be none) would block the
            // insert: clear it so a re-added tenant never inherits an old key.
            secrets::delete_all(&tx, Purpose::ClientKey, &r.owner)?;
            secrets::put(&tx, r, sealed, kek.id())?;
        }
        let recs: Vec<TenantRecord> = rows.into_iter().map(|(rec, _, _)| rec).collect();
        gate.record(&recs)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(recs)
    }

    /// Replaces a tenant's key with a new version and destroys the old one. A tenant whose
    /// key Go rejected becomes active again with the new key.
    /// Replaces a tenant's client key with a new version (the old one destroyed).
    /// `go_client_id`: Go's ClientId learnt with the new key (validation), or `None`: the
    /// old one is dropped, since it was learnt with the old key (a later mint fills it in).
    pub fn rotate_key(
        &self,
        id: &TenantId,
        key: &ClientKey,
        go_client_id: Option<&str>,
        gate: Gate<'_, KeyChange>,
    ) -> Result<TenantRecord, VaultError> {
        let mut store = self.store();
        let tx = store.write_tx()?;
        let cur = tenants::get(&tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        let version = cur.key_version + 1;
        let r = SecretRef { purpose: Purpose::ClientKey, owner: id.as_str().to_owned(), version };
        let kek = self.kek();
        let sealed = Self::seal_client_key(&kek, &r, key)?;
        secrets::put(&tx, &r, &sealed, kek.id())?;
        let fp = self.fingerprint_key.fingerprint(FP_CLIENT_KEY, key.expose_secret().as_bytes());
        tenants::set_key(&tx, id, version, &key.hint(), &fp)?;
        tenants::replace_go_client_id(&tx, id, go_client_id)?;
        secrets::delete_other_versions(&tx, Purpose::ClientKey, id.as_str(), version)?;
        let rec = tenants::get(&tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        gate.record(&KeyChange { previous: cur, current: rec.clone() })?;
        tx.commit().map_err(StoreError::from)?;
        store.checkpoint_truncate()?;
        Ok(rec)
    }

    pub fn set_status(
        &self,
        id: &TenantId,
        status: TenantStatus,
        gate: Gate<'_, TenantRecord>,
    ) -> Result<TenantRecord, VaultError> {
        let mut store = self.store();
        let tx = store.write_tx()?;
        tenants::set_status(&tx, id, status)?;
        let rec = tenants::get(&tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        gate.record(&rec)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(rec)
    }

    /// Marks a tenant `KEY_REJECTED` if `version` is still its key version (see
    /// [`tenants::mark_rejected_if_version`]).
    /// The gate is asked only when the tenant is marked.
    pub fn mark_key_rejected(
        &self,
        id: &TenantId,
        version: i64,
        gate: Gate<'_, TenantRecord>,
    ) -> Result<bool, VaultError> {
        let mut store = self.store();
        let tx = store.write_tx()?;
        if !tenants::mark_rejected_if_version(&tx, id, version)? {
            return Ok(false);
        }
        let rec = tenants::get(&tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        gate.record(&rec)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(true)
    }

    /// Deletes a tenant and destroys its key (crypto-shredding). The gate sees the tenant
    /// as it was.
    pub fn delete_tenant(&self, id: &TenantId, gate: Gate<'_, TenantRecord>) -> Result<(), VaultError> {
        let mut store = self.store();
        let tx = store.write_tx()?;
        let before = tenants::get(&tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        tenants::delete(&tx, id)?;
        secrets::delete_all(&tx, Purpose::ClientKey, id.as_str())?;
        gate.record(&before)?;
        tx.commit().map_err(StoreError::from)?;
        store.checkpoint_truncate()?;
        Ok(())
    }

    pub fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, VaultError> {
        Ok(tenants::get(self.store().conn(), id)?)
    }

    /// The tenants of `env` whose organization number Go reported as `org` (see
    /// `apply_onboarding`), in id order.
    pub fn verified_tenants(
        &self,
        env: Environment,
        org: &OrganizationNumber,
    ) -> Result<Vec<TenantRecord>, VaultError> {
        Ok(tenants::find_by_verified_organization(self.store().conn(), env, org)?)
    }

    pub fn list_tenants(&self, after: Option<&str>, limit: usize) -> Result<Vec<TenantRecord>, VaultError> {
        Ok(tenants::list(self.store().conn(), after, limit)?)
    }

    pub fn count_tenants_by_status(&self) -> Result<Vec<(TenantStatus, i64)>, VaultError> {
        Ok(tenants::count_by_status(self.store().conn())?)
    }

    /// Fills in the ClientId Go gave for a tenant's client (ClientIntegrationInformation).
    /// Only while the tenant still holds key `key_version` (the ClientId was learnt with
    /// that key) and has no ClientId yet: a fill-in never overwrites. Returns the updated
    /// tenant, or `None` when nothing changed (no record then).
    pub fn set_go_client_id(
        &self,
        id: &TenantId,
        key_version: i64,
        go_client_id: &str,
        gate: Gate<'_, TenantRecord>,
    ) -> Result<Option<TenantRecord>, VaultError> {
        let go_client_id = go_client_id.trim();
        if go_client_id.is_empty() || go_client_id.len() > 64 || !go_client_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidInput::new("go_client_id", "1 to 64 printable ASCII characters").into());
        }
        let mut store = self.store();
        let tx = store.write_tx()?;
        let Some(t) = tenants::get(&tx, id)? else { return Ok(None) };
        if t.key_version != key_version || t.go_client_id.is_some() {
            return Ok(None);
        }
        tenants::set_go_metadata(&tx, id, Some(go_client_id), None)?;
        let Some(current) = tenants::get(&tx, id)? else { return Ok(None) };
        gate.record(&current)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(Some(current))
    }

    /// Records when tokens were last handed out, for many tenants in one transaction.
    pub fn touch_last_tokens(&self, times: &[(TenantId, i64)]) -> Result<(), VaultError> {
        let mut store = self.store();
        let tx = store.write_tx()?;
        for (id, ms) in times {
            tenants::touch_last_token(&tx, id, *ms)?;
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(())
    }

    /// Opens a tenant's current client key. Only the token broker calls this (see the
    /// module invariants); the key lives as long as the caller holds it.
    pub fn open_client_key(&self, tenant: &TenantRecord) -> Result<ClientKey, VaultError> {
        let r = SecretRef {
            purpose: Purpose::ClientKey,
            owner: tenant.tenant_id.as_str().to_owned(),
            version: tenant.key_version,
        };
        let plain = self.open_secret(&r)?;
        let s = std::str::from_utf8(&plain)
            .map_err(|_| VaultError::Integrity { what: format!("client key of {}", tenant.tenant_id) })?;
        ClientKey::parse(s).map_err(|_| VaultError::Integrity { what: format!("client key of {}", tenant.tenant_id) })
    }

    fn open_secret(&self, r: &SecretRef) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        // Row and master key read under one store lock: a rotation cannot slip between.
        let store = self.store();
        let sealed = secrets::get(store.conn(), r)?.ok_or_else(|| VaultError::Integrity {
            what: format!("{} of {} (version {}) is missing", r.purpose.as_str(), r.owner, r.version),
        })?;
        let kek = self.kek();
        drop(store);
        envelope::open(&kek, &SealContext::new(r.purpose, &r.owner, r.version), &sealed)
            .map_err(VaultError::integrity(r))
    }

    /// [`Vault::open_secret`] on a connection (or open transaction) the caller holds.
    fn open_secret_in(
        &self,
        conn: &rusqlite::Connection,
        r: &SecretRef,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        let sealed = secrets::get(conn, r)?.ok_or_else(|| VaultError::Integrity {
            what: format!("{} of {} (version {}) is missing", r.purpose.as_str(), r.owner, r.version),
        })?;
        envelope::open(&self.kek(), &SealContext::new(r.purpose, &r.owner, r.version), &sealed)
            .map_err(VaultError::integrity(r))
    }

    /// Seals a client key under `kek` (the master key read under the store lock).
    fn seal_client_key(kek: &MasterKey, r: &SecretRef, key: &ClientKey) -> Result<crate::crypto::Sealed, VaultError> {
        envelope::seal(kek, &SealContext::new(r.purpose, &r.owner, r.version), key.expose_secret().as_bytes())
            .map_err(|_| VaultError::Random)
    }

    // ---- onboarding ----

    pub fn insert_onboarding(&self, session: &Session, gate: Gate<'_, Session>) -> Result<(), VaultError> {
        let mut store = self.store();
        let tx = store.write_tx()?;
        onboarding::insert(&tx, session)?;
        gate.record(session)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(())
    }

    pub fn onboarding(&self, id: &str) -> Result<Option<Session>, VaultError> {
        Ok(onboarding::get(self.store().conn(), id)?)
    }

    /// Compare-and-set of a session's status (see [`onboarding::transition`]).
    pub fn onboarding_transition(
        &self,
        id: &str,
        from: SessionStatus,
        to: SessionStatus,
        go_status: Option<&str>,
    ) -> Result<bool, VaultError> {
        Ok(onboarding::transition(self.store().conn(), id, from, to, go_status, &[])?)
    }

    /// Stores what an onboarding brought, in one transaction with the session's completion:
    /// a client already known in the environment (same organization number) gets its key
    /// rotated (new version, old one destroyed: how a customer recovers a lost key); others
    /// become new tenants named `prefix + organization number` (or a slug of the client
    /// name). `allowed` is asked about every tenant id first: if it refuses one, nothing is
    /// stored. The session must be `COMPLETING`.
    pub fn apply_onboarding(
        &self,
        session: &Session,
        clients: &[OnboardedKey],
        allowed: &dyn Fn(&TenantId) -> bool,
        gate: Gate<'_, [OnboardingOutcome]>,
    ) -> Result<Vec<OnboardingOutcome>, VaultError> {
        let env = session.environment;
        let mut store = self.store();
        let kek = self.kek();
        let tx = store.write_tx()?;
        let mut outcomes = Vec::with_capacity(clients.len());
        let mut taken: Vec<TenantId> = Vec::new();
        for c in clients {
            // A known client is one under this onboarding's prefix that the caller administers:
            // an organization number claimed by some other tenant (registered by hand with any
            // number) must never receive this client's key.
            // Only on a number Go itself reported for the tenant (an earlier onboarding): a
            // number an admin typed at registration could name another customer's client.
            let existing = match &c.organization_number {
                Some(org) => {
                    let mut found: Vec<TenantRecord> = tenants::find_by_verified_organization(&tx, env, org)?
                        .into_iter()
                        .filter(|t| {
                            t.tenant_id.as_str().starts_with(&session.tenant_id_prefix) && allowed(&t.tenant_id)
                        })
                        .collect();
                    if found.len() > 1 {
                        return Err(VaultError::AmbiguousOrganization {
                            organization_number: org.to_string(),
                            tenants: found.iter().map(|t| t.tenant_id.to_string()).collect::<Vec<_>>().join(", "),
                        });
                    }
                    found.pop()
                }
                None => None,
            };
            let fp = self.fingerprint_key.fingerprint(FP_CLIENT_KEY, c.key.expose_secret().as_bytes());
            let (id, previous) = match existing {
                Some(cur) => {
                    let id = cur.tenant_id.clone();
                    let version = cur.key_version + 1;
                    let r = SecretRef { purpose: Purpose::ClientKey, owner: id.as_str().to_owned(), version };
                    secrets::put(&tx, &r, &Self::seal_client_key(&kek, &r, &c.key)?, kek.id())?;
                    tenants::set_key(&tx, &id, version, &c.key.hint(), &fp)?;
                    secrets::delete_other_versions(&tx, Purpose::ClientKey, id.as_str(), version)?;
                    (id, Some(cur.key_version))
                }
                None => {
                    let id = new_tenant_id(&tx, &session.tenant_id_prefix, c, &taken)?;
                    if !allowed(&id) {
                        return Err(VaultError::Denied { tenant: id.to_string() });
                    }
                    let now = now_ms();
                    let rec = TenantRecord {
                        tenant_id: id.clone(),
                        environment: env,
                        display_name: c.name.clone().unwrap_or_default(),
                        organization_number: c.organization_number.clone(),
                        go_client_id: None,
                        labels: Labels::default(),
                        status: TenantStatus::Active,
                        key_version: 1,
                        key_hint: c.key.hint(),
                        key_fingerprint: fp,
                        created_at: now,
                        updated_at: now,
                        last_token_at: None,
                    };
                    let r = SecretRef { purpose: Purpose::ClientKey, owner: id.as_str().to_owned(), version: 1 };
                    tenants::insert(&tx, &rec)?;
                    secrets::delete_all(&tx, Purpose::ClientKey, id.as_str())?;
                    secrets::put(&tx, &r, &Self::seal_client_key(&kek, &r, &c.key)?, kek.id())?;
                    (id, None)
                }
            };
            if let Some(org) = &c.organization_number {
                tenants::set_verified_organization(&tx, &id, env, org)?;
            }
            taken.push(id.clone());
            let record =
                tenants::get(&tx, &id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
            outcomes.push(OnboardingOutcome { record, previous_version: previous });
        }
        let ids: Vec<String> = outcomes.iter().map(|o| o.record.tenant_id.to_string()).collect();
        if !onboarding::transition(
            &tx,
            &session.onboarding_id,
            SessionStatus::Completing,
            SessionStatus::Completed,
            Some("Success"),
            &ids,
        )? {
            return Err(StoreError::Corrupt("onboarding session was not being completed".into()).into());
        }
        gate.record(&outcomes)?;
        tx.commit().map_err(StoreError::from)?;
        if outcomes.iter().any(|o| o.previous_version.is_some()) {
            store.checkpoint_truncate()?;
        }
        Ok(outcomes)
    }

    // ---- master key rotation ----

    /// Rewraps every DEK under a new master key in one transaction; no secret's ciphertext
    /// is touched. Afterwards the old key fails the key check.
    pub fn rotate_kek(
        &self,
        new: &InitKey,
        costs: Argon2Costs,
        gate: Gate<'_, KekRotation>,
    ) -> Result<KekRotation, VaultError> {
        precheck_init(new)?;
        let (new_kek, argon2) = new_master_key(new, costs)?;
        if new_kek.id() == self.kek().id() {
            if let InitKey::GenerateKeyFile(p) = new {
                let _ = std::fs::remove_file(p);
            }
            return Err(InvalidInput::new("new master key", "is the same as the current master key").into());
        }
        let mut recorded = false;
        let result = self.rotate_kek_inner(new_kek, argon2, gate, &mut recorded);
        // A generated key file goes only if the rotation surely did not happen: once its
        // record is durable, a commit that reported an error may still have landed (an
        // fsync error after the WAL frame was written), and then this file is the only key
        // that opens the vault.
        if result.is_err()
            && !recorded
            && let InitKey::GenerateKeyFile(p) = new
        {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    /// Rewraps under the store lock and puts the new key in force before releasing it, so a
    /// running server seals everything after the rotation under the new key.
    fn rotate_kek_inner(
        &self,
        new_kek: MasterKey,
        argon2: Option<Argon2Params>,
        gate: Gate<'_, KekRotation>,
        recorded: &mut bool,
    ) -> Result<KekRotation, VaultError> {
        let mut store = self.store();
        let old_kek = self.kek();
        let tx = store.write_tx()?;
        let old_meta = meta::get(&tx)?.ok_or_else(|| StoreError::NotInitialized { path: String::new() })?;
        let rows = secrets::all_wrapped(&tx)?;
        for (r, wrapped) in &rows {
            let ctx = SealContext::new(r.purpose, &r.owner, r.version);
            let rewrapped = envelope::rewrap(&old_kek, &new_kek, &ctx, wrapped).map_err(VaultError::integrity(r))?;
            secrets::update_wrapped(&tx, r, &rewrapped, new_kek.id())?;
        }
        meta::put(
            &tx,
            &KekMeta {
                kek_id: new_kek.id().to_owned(),
                key_check: new_kek.key_check(),
                argon2,
                created_at: old_meta.created_at,
                kek_rotated_at: Some(now_ms()),
            },
        )?;
        let rotation = KekRotation {
            old_kek_id: old_kek.id().to_owned(),
            new_kek_id: new_kek.id().to_owned(),
            rewrapped: rows.len(),
        };
        gate.record(&rotation)?;
        *recorded = true;
        tx.commit().map_err(StoreError::from)?;
        *self.kek.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new_kek);
        // Best effort: the rotation is committed and in force whatever the WAL does.
        if let Err(e) = store.checkpoint_truncate() {
            tracing::warn!(error = %e, "could not truncate the WAL after the master-key rotation");
        }
        Ok(rotation)
    }

    /// Replaces the audit signing key with `new` in one transaction: the seed sealed under
    /// the master key in the same row identity (purpose, owner, version 1), the old sealed
    /// row destroyed (`secure_delete`, WAL truncated), and the public record updated. Only
    /// `audit rotate-signing-key` calls this, after the old key's hand-over is durable in the
    /// audit log (`src/audit/rotate.rs`).
    pub fn replace_audit_signing_key(&self, new: &ed25519_dalek::SigningKey) -> Result<(), VaultError> {
        let purpose = Purpose::AuditSigningKey;
        let seed = zeroize::Zeroizing::new(new.to_bytes());
        let public = new.verifying_key().to_bytes();
        let mut store = self.store();
        let kek = self.kek();
        let sealed = envelope::seal(&kek, &SealContext::new(purpose, VAULT_OWNER, 1), &seed[..])
            .map_err(|_| VaultError::Random)?;
        let tx = store.write_tx()?;
        secrets::delete_all(&tx, purpose, VAULT_OWNER)?;
        secrets::put(&tx, &SecretRef { purpose, owner: VAULT_OWNER.to_owned(), version: 1 }, &sealed, kek.id())?;
        tx.execute(
            "UPDATE vault_keys SET key_id = ?1, public_key = ?2, created_at = ?3 WHERE purpose = ?4",
            rusqlite::params![audit_key_id(&public), &public[..], now_ms(), purpose.as_str()],
        )
        .map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        store.checkpoint_truncate()?;
        Ok(())
    }

    /// Tenants with `from <= id < to` (byte order), in id order, at most `limit`: one
    /// range search on the primary-key index (ListTenants for a caller scoped to prefixes).
    pub fn list_tenants_in_range(&self, from: &str, to: &str, limit: usize) -> Result<Vec<TenantRecord>, VaultError> {
        Ok(tenants::list_range(self.store().conn(), from, to, limit)?)
    }
}

fn open_vault_secret(
    store: &Store,
    kek: &MasterKey,
    purpose: Purpose,
) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
    let r = SecretRef { purpose, owner: VAULT_OWNER.to_owned(), version: 1 };
    let sealed = secrets::get(store.conn(), &r)?
        .ok_or_else(|| VaultError::Integrity { what: format!("{} is missing", purpose.as_str()) })?;
    envelope::open(kek, &SealContext::new(purpose, VAULT_OWNER, 1), &sealed).map_err(VaultError::integrity(&r))
}

/// A client key Go handed over in an onboarding, with what Go said about the client.
#[derive(Debug)]
pub struct OnboardedKey {
    pub key: ClientKey,
    pub name: Option<DisplayName>,
    pub organization_number: Option<OrganizationNumber>,
}

/// What an onboarding did to one tenant.
#[derive(Debug, Clone)]
pub struct OnboardingOutcome {
    pub record: TenantRecord,
    /// `Some(old version)` when a known client's key was replaced (re-activation).
    pub previous_version: Option<i64>,
}

/// `prefix + organization number`, or `prefix + slug(client name)`; a suffix `-2`, `-3`...
/// when the id is taken (by another client, or earlier in this onboarding).
fn new_tenant_id(
    conn: &rusqlite::Connection,
    prefix: &str,
    c: &OnboardedKey,
    taken: &[TenantId],
) -> Result<TenantId, VaultError> {
    let stem = match (&c.organization_number, &c.name) {
        (Some(org), _) => org.as_str().to_owned(),
        (None, Some(name)) => slug(name.as_str()),
        (None, None) => "client".to_owned(),
    };
    let base: String = format!("{prefix}{stem}").chars().take(TenantId::MAX_LEN - 3).collect();
    for n in 1..100 {
        let candidate = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let id = TenantId::parse_field("tenant_id_prefix", &candidate)?;
        if !taken.contains(&id) && tenants::get(conn, &id)?.is_none() {
            return Ok(id);
        }
    }
    Err(InvalidInput::new("tenant_id_prefix", "no free tenant id for this client").into())
}

/// Lowercase ASCII letters and digits, other runs become one `-`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for ch in name.chars().flat_map(|c| c.to_lowercase()) {
        let ch = match ch {
            'æ' => 'a',
            'ø' => 'o',
            'å' => 'a',
            c => c,
        };
        if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() { "client".to_owned() } else { out }
}

/// The id of an audit signing key: the first 6 bytes of SHA-256 of its public key, in hex.
pub fn audit_key_id(public: &[u8; 32]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(public)[..6])
}
