//! The one path by which a client key enters the store ([`Vault::enter_client_key`]:
//! sealed under the master key in force, stored, every other version destroyed), and the
//! opening of sealed rows. Registration, rotation and onboarding all come through here,
//! so how a key is sealed and stored is written once.

use super::Vault;
use super::error::VaultError;
use crate::crypto::{
    AccessToken, ClientKey, Fingerprint, FingerprintKey, KeyHint, MasterKey, OpenError, Purpose, SealContext, Sealed,
    TokenFacts,
};
use crate::domain::TenantId;
use crate::store::secrets::{self, SecretRef};
use crate::store::tenants::TenantRecord;

/// How a sealed row opens as a `T` (`ClientKey::open`, `SymmetricKey::open`, ...).
pub(super) type Opener<'a, T> = &'a dyn Fn(&MasterKey, &SealContext<'_>, &Sealed) -> Result<T, OpenError>;

/// What a tenant row shows of its key: the hint and the keyed fingerprint.
pub(super) fn public_forms(fk: &FingerprintKey, key: &ClientKey) -> (KeyHint, Fingerprint) {
    (key.hint(), key.fingerprint(fk))
}

impl Vault {
    /// Opens a tenant's current client key. Only the token broker calls this (see the
    /// module invariants); the key lives as long as the caller holds it.
    pub fn open_client_key(&self, tenant: &TenantRecord) -> Result<ClientKey, VaultError> {
        let r = SecretRef {
            purpose: Purpose::ClientKey,
            owner: tenant.tenant_id.as_str().to_owned(),
            version: tenant.key_version,
        };
        // Row and master key read under one store lock: a rotation cannot slip between.
        let mut store = self.store();
        let sealed = Self::sealed_row(store.db()?, &r)?;
        let kek = self.kek();
        let opened = open_sealed(&kek, &r, &sealed, &format!("client key of {}", tenant.tenant_id), &ClientKey::open);
        opened.map_err(|e| rotated_elsewhere(store.db(), &kek, e))
    }

    /// Opens the sealed row `r` as a `T` on a connection (or open transaction) the caller
    /// holds; `what` names it when it opens to something else than a `T`.
    pub(super) fn open_in<T>(
        &self,
        conn: &mut dyn crate::store::Sql,
        r: &SecretRef,
        what: &str,
        open: Opener<'_, T>,
    ) -> Result<T, VaultError> {
        let sealed = Self::sealed_row(conn, r)?;
        let kek = self.kek();
        open_sealed(&kek, r, &sealed, what, open).map_err(|e| rotated_elsewhere(Ok(conn), &kek, e))
    }

    fn sealed_row(conn: &mut dyn crate::store::Sql, r: &SecretRef) -> Result<Sealed, VaultError> {
        secrets::get(conn, r)?.ok_or_else(|| VaultError::Integrity {
            what: format!("{} of {} (version {}) is missing", r.purpose.as_str(), r.owner, r.version),
        })
    }

    /// The one path by which a client key enters the store: sealed under `kek` (the master
    /// key read under the store lock the caller holds) for `tenant` at `version`, stored in
    /// the caller's open transaction `tx`, and every other version of the tenant's key
    /// destroyed. For a new tenant (version 1), a sealed row left under its id (there should
    /// be none) is cleared first, so a re-added tenant never inherits an old key.
    pub(super) fn enter_client_key(
        &self,
        tx: &mut dyn crate::store::Sql,
        kek: &MasterKey,
        tenant: &TenantId,
        version: i64,
        key: &ClientKey,
    ) -> Result<(), VaultError> {
        check_kek_current(tx, kek)?;
        let r = SecretRef { purpose: Purpose::ClientKey, owner: tenant.as_str().to_owned(), version };
        let sealed = key.seal(kek, &SealContext::new(r.purpose, &r.owner, r.version)).map_err(VaultError::sealing)?;
        if version == 1 {
            secrets::delete_all(tx, Purpose::ClientKey, tenant.as_str())?;
        }
        secrets::put(tx, &r, &sealed, kek.id())?;
        secrets::delete_other_versions(tx, Purpose::ClientKey, tenant.as_str(), version)?;
        Ok(())
    }
}

impl Vault {
    /// Seals an access token for the cache replicas share on PostgreSQL, bound to the
    /// tenant, the key version it was minted with, and purpose access-token. No store call.
    pub fn seal_access_token(
        &self,
        tenant: &TenantId,
        key_version: i64,
        token: &AccessToken,
        facts: &TokenFacts,
    ) -> Result<Sealed, VaultError> {
        let kek = self.kek();
        token
            .seal_shared(&kek, &SealContext::new(Purpose::AccessToken, tenant.as_str(), key_version), facts)
            .map_err(VaultError::sealing)
    }

    /// Opens a shared access token sealed by [`Vault::seal_access_token`] (of any replica of
    /// this vault) for exactly this tenant and key version. `None` when it does not open:
    /// sealed under a master key since rotated, or for another tenant or version; the caller
    /// treats that as no token (and may say so), never as a secret to guess at.
    pub fn open_access_token(
        &self,
        tenant: &TenantId,
        key_version: i64,
        sealed: &Sealed,
    ) -> Result<Option<(AccessToken, TokenFacts)>, VaultError> {
        let kek = self.kek();
        match AccessToken::open_shared(
            &kek,
            &SealContext::new(Purpose::AccessToken, tenant.as_str(), key_version),
            sealed,
        ) {
            Ok(t) => Ok(Some(t)),
            Err(OpenError::Unavailable(reason)) => Err(VaultError::KeyUnavailable { reason }),
            Err(OpenError::DoesNotOpen | OpenError::NotThatSecret) => Ok(None),
        }
    }
}

/// Refuses to seal under `kek` inside write transaction `tx` unless it is still the vault's
/// master key: on PostgreSQL another replica may have rotated it (this process keeps the
/// old one in memory until restarted), and a row sealed under a retired key would open
/// nowhere. Read under the write lock, so no rotation can land between this and the commit.
pub(super) fn check_kek_current(tx: &mut dyn crate::store::Sql, kek: &MasterKey) -> Result<(), VaultError> {
    let meta = crate::store::meta::get(tx)?
        .ok_or_else(|| VaultError::Integrity { what: "vault record (vault_meta) is missing".into() })?;
    if meta.kek_id != kek.id() {
        return Err(VaultError::MasterKeyRotated { current: meta.kek_id });
    }
    Ok(())
}

/// A row that does not open under `kek` because another process (a second replica on the
/// same PostgreSQL) rotated the master key is [`VaultError::MasterKeyRotated`], not an
/// integrity failure; any other error stays as it is.
pub(super) fn rotated_elsewhere(
    db: Result<&mut dyn crate::store::Sql, crate::store::StoreError>,
    kek: &MasterKey,
    e: VaultError,
) -> VaultError {
    if !matches!(e, VaultError::Integrity { .. }) {
        return e;
    }
    match db.and_then(crate::store::meta::get) {
        Ok(Some(meta)) if meta.kek_id != kek.id() => VaultError::MasterKeyRotated { current: meta.kek_id },
        // The record could not be read now: say that, not "integrity", which alerts.
        Err(read) if read.is_unavailable() => VaultError::Store(read),
        _ => e,
    }
}

/// Opens `sealed` (row `r`) as a `T`: a blob that does not authenticate is an integrity
/// failure naming the row; one that opens to something else names `what`.
fn open_sealed<T>(
    kek: &MasterKey,
    r: &SecretRef,
    sealed: &Sealed,
    what: &str,
    open: Opener<'_, T>,
) -> Result<T, VaultError> {
    open(kek, &SealContext::new(r.purpose, &r.owner, r.version), sealed).map_err(|e| match e {
        OpenError::DoesNotOpen => VaultError::does_not_open(r),
        OpenError::NotThatSecret => VaultError::Integrity { what: what.to_owned() },
        OpenError::Unavailable(reason) => VaultError::KeyUnavailable { reason },
    })
}
