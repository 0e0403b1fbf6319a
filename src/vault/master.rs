//! The master key's life: `init` (a new database with its master key, fingerprint key and
//! audit signing key), `unlock` (the key check before anything else), `rotate_kek` (every
//! DEK rewrapped in one transaction), and the vault's own keys sealed under it.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use super::Vault;
use super::error::VaultError;
use super::gate::Gate;
use crate::crypto::master::{self, MasterKeyError};
use crate::crypto::{
    Argon2Params, FingerprintKey, MasterKey, MasterKeySource, Purpose, SealContext, SigningSeed, SymmetricKey,
    audit_key_id,
};
use crate::crypto::{CryptoError, HsmKek, OpenError, Pkcs11Settings, Sealed, envelope};
use crate::domain::InvalidInput;
use crate::store::changes::{Change, announce};
use crate::store::meta::{self, KekMeta, VaultKey};
use crate::store::secrets::{self, SecretRef};
use crate::store::{Store, StoreError, now_ms};

/// How `init` (and `rotate-kek`) gets its master key.
#[derive(Debug, Clone)]
pub enum InitKey {
    /// Create a new key file (mode 0600) and use it.
    GenerateKeyFile(std::path::PathBuf),
    /// Create a new non-extractable AES-256 key in an HSM and use it.
    CreateHsmKey(Pkcs11Settings),
    /// Use an existing key file, passphrase or HSM key.
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

/// Summary of a `rotate-kek`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekRotation {
    pub old_kek_id: String,
    pub new_kek_id: String,
    pub rewrapped: usize,
}

/// Derives the master key a source gives for this database.
fn resolve_master_key(source: &MasterKeySource, meta: &KekMeta) -> Result<MasterKey, VaultError> {
    let wrong_kind =
        |what: &str| Err(InvalidInput::new("master key", format!("this database's master key {what}")).into());
    let key = match (source, &meta.argon2, meta.hsm) {
        (MasterKeySource::KeyFile(p), None, false) => master::read_key_file(p)?,
        (MasterKeySource::PassphraseFile(_) | MasterKeySource::PassphraseEnv(_), Some(params), _) => {
            source.passphrase()?.derive(params)?
        }
        (MasterKeySource::Pkcs11(s), None, true) => MasterKey::from_hsm(HsmKek::open(s).map_err(MasterKeyError::from)?),
        (_, Some(_), _) => {
            return wrong_kind("comes from a passphrase: use --master-passphrase-file or --master-passphrase-env");
        }
        (_, None, true) => {
            return wrong_kind(
                "is in an HSM: give --pkcs11-module, --pkcs11-token-label, --pkcs11-key-label and --pkcs11-pin-file \
                 (or vault.master_key.pkcs11 in the configuration)",
            );
        }
        (_, None, false) => return wrong_kind("comes from a key file: use --master-key-file"),
    };
    let matches = key.matches_check(&meta.key_check).map_err(|e| match e {
        CryptoError::KeyUnavailable(reason) => MasterKeyError::HsmUnavailable(reason),
        _ => MasterKeyError::Random,
    })?;
    if !matches {
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
    let mut conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(StoreError::from)?;
    let not_a_vault = || StoreError::NotInitialized { path: path.display().to_string() };
    let meta = meta::get(&mut conn).map_err(|_| not_a_vault())?.ok_or_else(not_a_vault)?;
    Ok(resolve_master_key(source, &meta)?.id().to_owned())
}

/// Obtains a new master key for `init` or `rotate-kek` (before anything is written).
fn new_master_key(init: &InitKey, costs: Argon2Costs) -> Result<(MasterKey, Option<Argon2Params>), VaultError> {
    Ok(match init {
        InitKey::GenerateKeyFile(p) => (master::generate_key_file(p)?, None),
        InitKey::CreateHsmKey(s) => (MasterKey::from_hsm(HsmKek::create(s).map_err(MasterKeyError::from)?), None),
        InitKey::Existing(MasterKeySource::Pkcs11(s)) => {
            (MasterKey::from_hsm(HsmKek::open(s).map_err(MasterKeyError::from)?), None)
        }
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
        // Checked when the key is created or opened (nothing is written before that).
        InitKey::CreateHsmKey(_) | InitKey::Existing(MasterKeySource::Pkcs11(_)) => Ok(()),
        InitKey::Existing(MasterKeySource::KeyFile(p)) => master::read_key_file(p).map(|_| ()).map_err(Into::into),
        InitKey::Existing(s) => s.passphrase().map(|_| ()).map_err(Into::into),
    }
}

/// One of the vault's own keys, opened as `T` by `open`: a row that does not open is an
/// integrity failure naming the row; one that opens to something else names `what`.
fn open_vault_secret<T>(
    store: &mut Store,
    kek: &MasterKey,
    purpose: Purpose,
    what: &str,
    open: impl FnOnce(&MasterKey, &SealContext<'_>, &Sealed) -> Result<T, OpenError>,
) -> Result<T, VaultError> {
    let r = SecretRef { purpose, owner: VAULT_OWNER.to_owned(), version: 1 };
    let sealed = secrets::get(store.db()?, &r)?
        .ok_or_else(|| VaultError::Integrity { what: format!("{} is missing", purpose.as_str()) })?;
    match open(kek, &SealContext::new(purpose, VAULT_OWNER, 1), &sealed) {
        Ok(t) => Ok(t),
        Err(OpenError::DoesNotOpen) => {
            Err(super::keys::rotated_elsewhere(store.db(), kek, VaultError::does_not_open(&r)))
        }
        Err(OpenError::NotThatSecret) => Err(VaultError::Integrity { what: what.to_owned() }),
        Err(OpenError::Unavailable(reason)) => Err(VaultError::KeyUnavailable { reason }),
    }
}

/// The owner name of the vault's own keys in `sealed_secrets`.
const VAULT_OWNER: &str = "vault";

impl Vault {
    /// Creates a new vault database: schema, master-key record, the vault's own keys.
    /// On failure nothing is left behind: no database file, no generated key file.
    pub fn init(path: &Path, init: &InitKey, costs: Argon2Costs) -> Result<Vault, VaultError> {
        if path.exists() {
            let mut store = Store::open(path)?;
            if meta::get(store.db()?)?.is_some() {
                return Err(StoreError::AlreadyInitialized { path: path.display().to_string() }.into());
            }
        }
        precheck_init(init)?;
        let existed = path.exists();
        let result =
            Store::create(path).map_err(VaultError::from).and_then(|store| Self::init_inner(store, init, costs));
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

    /// Initialises a vault in a PostgreSQL database (an empty one gets the schema). On
    /// failure nothing is left but the (empty) schema: no master-key record, no keys, no
    /// generated key file.
    pub fn init_postgres(
        options: &crate::store::PostgresOptions,
        init: &InitKey,
        costs: Argon2Costs,
    ) -> Result<Vault, VaultError> {
        let mut store = Store::connect_postgres(options)?;
        if meta::get(store.db()?)?.is_some() {
            return Err(StoreError::AlreadyInitialized { path: store.describe() }.into());
        }
        precheck_init(init)?;
        let result = Self::init_inner(store, init, costs);
        if result.is_err()
            && let InitKey::GenerateKeyFile(p) = init
        {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    fn init_inner(mut store: Store, init: &InitKey, costs: Argon2Costs) -> Result<Vault, VaultError> {
        let (kek, argon2) = new_master_key(init, costs)?;
        let fp_raw = SymmetricKey::generate().map_err(|_| VaultError::Random)?;
        let signing_seed = SigningSeed::generate().map_err(|_| VaultError::Random)?;
        let signing_public = signing_seed.public_key();

        let mut tx = store.write_tx()?;
        let now = now_ms();
        meta::put(
            &mut tx,
            &KekMeta {
                kek_id: kek.id().to_owned(),
                key_check: kek.key_check().map_err(VaultError::sealing)?,
                hsm: kek.hsm().is_some(),
                argon2,
                created_at: now,
                kek_rotated_at: None,
            },
        )?;
        let ctx = |purpose| SealContext::new(purpose, VAULT_OWNER, 1);
        for (purpose, sealed, key_id, public) in [
            (
                Purpose::FingerprintKey,
                fp_raw.seal(&kek, &ctx(Purpose::FingerprintKey)),
                FingerprintKey::id_for(&fp_raw),
                None,
            ),
            (
                Purpose::AuditSigningKey,
                signing_seed.seal(&kek, &ctx(Purpose::AuditSigningKey)),
                audit_key_id(&signing_public),
                Some(signing_public.to_vec()),
            ),
        ] {
            let r = SecretRef { purpose, owner: VAULT_OWNER.to_owned(), version: 1 };
            let sealed = sealed.map_err(VaultError::sealing)?;
            secrets::put(&mut tx, &r, &sealed, kek.id())?;
            meta::put_vault_key(
                &mut tx,
                &VaultKey { purpose: purpose.as_str().to_owned(), key_id, public_key: public, created_at: now },
            )?;
        }
        tx.commit()?;
        Ok(Vault {
            store: Mutex::new(store),
            kek: RwLock::new(Arc::new(kek)),
            fingerprint_key: FingerprintKey::new(fp_raw),
        })
    }

    /// Opens an initialised vault, checking the master key before anything else.
    pub fn unlock(path: &Path, source: &MasterKeySource) -> Result<Vault, VaultError> {
        Self::unlock_store(Store::open(path)?, source)
    }

    /// Opens an initialised vault in a PostgreSQL database (migrating it first if this
    /// binary is newer), checking the master key before anything else.
    pub fn unlock_postgres(
        options: &crate::store::PostgresOptions,
        source: &MasterKeySource,
    ) -> Result<Vault, VaultError> {
        Self::unlock_store(Store::connect_postgres(options)?, source)
    }

    fn unlock_store(mut store: Store, source: &MasterKeySource) -> Result<Vault, VaultError> {
        let meta = meta::get(store.db()?)?.ok_or_else(|| StoreError::NotInitialized { path: store.describe() })?;
        let kek = resolve_master_key(source, &meta)?;
        let fp = open_vault_secret(&mut store, &kek, Purpose::FingerprintKey, "fingerprint key", SymmetricKey::open)?;
        let fingerprint_key = FingerprintKey::new(fp);
        Ok(Vault { store: Mutex::new(store), kek: RwLock::new(Arc::new(kek)), fingerprint_key })
    }

    /// The Ed25519 audit signing key (seed), opened from its sealed row.
    pub fn audit_signing_key(&self) -> Result<ed25519_dalek::SigningKey, VaultError> {
        let mut store = self.store();
        let seed = open_vault_secret(
            &mut store,
            &self.kek(),
            Purpose::AuditSigningKey,
            "audit signing key",
            SigningSeed::open,
        )?;
        drop(store);
        Ok(seed.signing_key())
    }

    /// The public record of one of the vault's own keys.
    pub fn vault_key(&self, purpose: Purpose) -> Result<Option<VaultKey>, VaultError> {
        Ok(meta::vault_key(self.store().db()?, purpose.as_str())?)
    }

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
        let mut tx = store.write_tx()?;
        let old_meta = meta::get(&mut tx)?.ok_or_else(|| StoreError::NotInitialized { path: String::new() })?;
        if old_meta.kek_id != old_kek.id() {
            return Err(VaultError::MasterKeyRotated { current: old_meta.kek_id });
        }
        let rows = secrets::all_wrapped(&mut tx)?;
        for (r, wrapped) in &rows {
            let ctx = SealContext::new(r.purpose, &r.owner, r.version);
            let rewrapped = envelope::rewrap(&old_kek, &new_kek, &ctx, wrapped).map_err(VaultError::opening(r))?;
            secrets::update_wrapped(&mut tx, r, &rewrapped, new_kek.id())?;
        }
        meta::put(
            &mut tx,
            &KekMeta {
                kek_id: new_kek.id().to_owned(),
                key_check: new_kek.key_check().map_err(VaultError::sealing)?,
                hsm: new_kek.hsm().is_some(),
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
        announce(&mut tx, &Change::MasterKey)?;
        gate.record(&rotation)?;
        *recorded = true;
        tx.commit()?;
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
        let seed = SigningSeed::of(new);
        let public = seed.public_key();
        let mut store = self.store();
        let kek = self.kek();
        let sealed = seed.seal(&kek, &SealContext::new(purpose, VAULT_OWNER, 1)).map_err(VaultError::sealing)?;
        let mut tx = store.write_tx()?;
        super::keys::check_kek_current(&mut tx, &kek)?;
        secrets::delete_all(&mut tx, purpose, VAULT_OWNER)?;
        secrets::put(&mut tx, &SecretRef { purpose, owner: VAULT_OWNER.to_owned(), version: 1 }, &sealed, kek.id())?;
        crate::store::Sql::execute(
            &mut tx,
            "UPDATE vault_keys SET key_id = ?1, public_key = ?2, created_at = ?3 WHERE purpose = ?4",
            crate::store::sql::args![audit_key_id(&public), &public[..], now_ms(), purpose.as_str()],
        )?;
        announce(&mut tx, &Change::MasterKey)?;
        tx.commit()?;
        store.checkpoint_truncate()?;
        Ok(())
    }
}
