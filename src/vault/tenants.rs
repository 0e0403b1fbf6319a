//! The registry's rows: registering tenants with their first key, rotating a key (the old
//! version destroyed), status changes, deletion, and reads.

use super::Vault;
use super::error::VaultError;
use super::gate::Gate;
use super::keys::public_forms;
use crate::crypto::ClientKey;
use crate::crypto::Purpose;
use crate::domain::InvalidInput;
use crate::domain::{DisplayName, Environment, Labels, OrganizationNumber, TenantId, TenantStatus};
use crate::store::changes::{Change, announce};
use crate::store::secrets;
use crate::store::tenants::{self, TenantRecord};
use crate::store::{StoreError, now_ms};

/// What a key rotation is about to commit.
#[derive(Debug, Clone)]
pub struct KeyChange {
    pub previous: TenantRecord,
    pub current: TenantRecord,
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

impl Vault {
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
            let (key_hint, key_fingerprint) = public_forms(&self.fingerprint_key, key);
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
                key_hint,
                key_fingerprint,
                created_at: now,
                updated_at: now,
                last_token_at: None,
            };
            rows.push((rec, *key));
        }
        let mut tx = store.write_tx()?;
        for (rec, key) in &rows {
            tenants::insert(&mut tx, rec)?;
            self.enter_client_key(&mut tx, &kek, &rec.tenant_id, 1, key)?;
        }
        let recs: Vec<TenantRecord> = rows.into_iter().map(|(rec, _)| rec).collect();
        let news: Vec<Change> = recs.iter().map(|r| Change::Tenant(r.tenant_id.to_string())).collect();
        for c in if news.len() > 100 { vec![Change::All] } else { news } {
            announce(&mut tx, &c)?;
        }
        gate.record(&recs)?;
        tx.commit()?;
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
        let mut tx = store.write_tx()?;
        let cur = tenants::get(&mut tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        let version = cur.key_version + 1;
        let kek = self.kek();
        self.enter_client_key(&mut tx, &kek, id, version, key)?;
        let (hint, fp) = public_forms(&self.fingerprint_key, key);
        tenants::set_key(&mut tx, id, version, &hint, &fp)?;
        tenants::replace_go_client_id(&mut tx, id, go_client_id)?;
        let rec = tenants::get(&mut tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        announce(&mut tx, &Change::Tenant(id.to_string()))?;
        gate.record(&KeyChange { previous: cur, current: rec.clone() })?;
        tx.commit()?;
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
        let mut tx = store.write_tx()?;
        tenants::set_status(&mut tx, id, status)?;
        let rec = tenants::get(&mut tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        announce(&mut tx, &Change::Tenant(id.to_string()))?;
        gate.record(&rec)?;
        tx.commit()?;
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
        let mut tx = store.write_tx()?;
        if !tenants::mark_rejected_if_version(&mut tx, id, version)? {
            return Ok(false);
        }
        let rec = tenants::get(&mut tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        announce(&mut tx, &Change::Tenant(id.to_string()))?;
        gate.record(&rec)?;
        tx.commit()?;
        Ok(true)
    }

    /// Deletes a tenant and destroys its key (crypto-shredding). The gate sees the tenant
    /// as it was.
    pub fn delete_tenant(&self, id: &TenantId, gate: Gate<'_, TenantRecord>) -> Result<(), VaultError> {
        let mut store = self.store();
        let mut tx = store.write_tx()?;
        let before = tenants::get(&mut tx, id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
        tenants::delete(&mut tx, id)?;
        secrets::delete_all(&mut tx, Purpose::ClientKey, id.as_str())?;
        announce(&mut tx, &Change::Tenant(id.to_string()))?;
        gate.record(&before)?;
        tx.commit()?;
        store.checkpoint_truncate()?;
        Ok(())
    }

    pub fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, VaultError> {
        Ok(tenants::get(self.store().db()?, id)?)
    }

    /// The tenants of `env` whose organization number Go reported as `org` (see
    /// `apply_onboarding`), in id order.
    pub fn verified_tenants(
        &self,
        env: Environment,
        org: &OrganizationNumber,
    ) -> Result<Vec<TenantRecord>, VaultError> {
        Ok(tenants::find_by_verified_organization(self.store().db()?, env, org)?)
    }

    pub fn list_tenants(&self, after: Option<&str>, limit: usize) -> Result<Vec<TenantRecord>, VaultError> {
        Ok(tenants::list(self.store().db()?, after, limit)?)
    }

    pub fn count_tenants_by_status(&self) -> Result<Vec<(TenantStatus, i64)>, VaultError> {
        Ok(tenants::count_by_status(self.store().db()?)?)
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
        let mut tx = store.write_tx()?;
        let Some(t) = tenants::get(&mut tx, id)? else { return Ok(None) };
        if t.key_version != key_version || t.go_client_id.is_some() {
            return Ok(None);
        }
        tenants::set_go_metadata(&mut tx, id, Some(go_client_id), None)?;
        let Some(current) = tenants::get(&mut tx, id)? else { return Ok(None) };
        announce(&mut tx, &Change::Tenant(id.to_string()))?;
        gate.record(&current)?;
        tx.commit()?;
        Ok(Some(current))
    }

    /// Records when tokens were last handed out, for many tenants in one transaction.
    pub fn touch_last_tokens(&self, times: &[(TenantId, i64)]) -> Result<(), VaultError> {
        let mut store = self.store();
        let mut tx = store.write_tx()?;
        for (id, ms) in times {
            tenants::touch_last_token(&mut tx, id, *ms)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Tenants with `from <= id < to` (byte order), in id order, at most `limit`: one
    /// range search on the primary-key index (ListTenants for a caller scoped to prefixes).
    pub fn list_tenants_in_range(&self, from: &str, to: &str, limit: usize) -> Result<Vec<TenantRecord>, VaultError> {
        Ok(tenants::list_range(self.store().db()?, from, to, limit)?)
    }
}
