//! The tenant registry: register a client key (validated with Go unless skipped), rotate
//! it, change a tenant's status, delete it, read and list. Each change goes through the
//! vault behind the actor's commit gate (audit before effect) and then drops whatever the
//! broker cached for the tenant, so the next token is minted with what was just stored.
//!
//! Authorization is the caller's (the transport checks the exact tenant before calling
//! here, so a refusal never tells whether a tenant exists); a list reads only the id
//! ranges it is given and keeps only the rows `admits` lets through.

use std::sync::Arc;

use super::actor::{Actor, Entry, gate};
use super::blocking::{Blocking, on_vault};
use crate::audit::Action;
use crate::authz::policy::IdRange;
use crate::crypto::ClientKey;
use crate::domain::{DisplayName, TenantId, TenantStatus};
use crate::store::tenants::TenantRecord;
use crate::tokens::{Broker, BrokerError};
use crate::vault::{KeyChange, NewTenant, Vault, VaultError};

/// Rows read from the store per range query of a list.
const LIST_BATCH: usize = 500;

/// Why a registry operation did not happen. Nothing was changed in any case.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Registering a tenant id that is taken.
    #[error("tenant {0} already exists; use RotateClientKey to replace its key")]
    AlreadyExists(TenantId),
    /// No such tenant.
    #[error("tenant {0} not found")]
    NotFound(TenantId),
    /// Go refused or could not check the key, or could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The vault refused or failed (including a gate that could not record the change).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The blocking task running the vault operation failed.
    #[error("internal error; operators are alerted")]
    Internal,
    /// Reading the tenant before a change failed (the store is failing): no decision was
    /// made, so there is nothing to record.
    #[error(transparent)]
    Read(VaultError),
}

impl RegistryError {
    /// Whether the transport records this refusal (all but a failed read before any
    /// decision).
    pub fn recorded(&self) -> bool {
        !matches!(self, RegistryError::Read(_))
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub tenants: Vec<TenantRecord>,
    /// The id to resume after, when the page is full.
    pub next_after: Option<TenantId>,
    /// How many rows the scan read: what the list cost the store.
    pub rows_read: usize,
}

/// The registry over a vault and the broker whose cache it keeps true.
#[derive(Clone, Debug)]
pub struct Registry {
    vault: Arc<Vault>,
    broker: Broker,
}

impl Registry {
    pub fn new(vault: Arc<Vault>, broker: Broker) -> Self {
        Self { vault, broker }
    }

    /// Registers `new` with its first key. With `validate`, Go is asked first (a key Go does
    /// not know is refused, and Go's client name fills an empty display name, its ClientId
    /// the tenant's).
    pub async fn register(
        &self,
        actor: &Arc<dyn Actor>,
        mut new: NewTenant,
        key: ClientKey,
        validate: bool,
    ) -> Result<TenantRecord, RegistryError> {
        let id = new.tenant_id.clone();
        if on_vault(&self.vault, move |v| v.tenant(&id)).await.map_err(read)?.is_some() {
            return Err(RegistryError::AlreadyExists(new.tenant_id));
        }
        let mut detail = "registered without validation (skip_validation)".to_owned();
        if validate {
            let v = self.broker.validate_key(new.environment, &key).await?;
            if new.display_name.as_str().is_empty()
                && let Some(name) = v.info.client_name.as_deref()
                && let Ok(d) = DisplayName::parse_field("display_name", name)
            {
                new.display_name = d;
            }
            new.go_client_id = v.info.client_id.clone();
            detail = "registered; key validated against PowerOffice Go".to_owned();
        }
        let gate = gate(actor, move |rec: &TenantRecord| {
            vec![Entry::change(Action::KeyRegistered, &rec.tenant_id, rec.key_version, &detail)]
        });
        let broker = self.broker.clone();
        // The cache is dropped in the blocking task, right after the change (or its failure:
        // a commit without answer may have landed), so a caller that gives up meanwhile
        // cannot leave it behind; on PostgreSQL this replica skips its own notification.
        let rec = on_vault(&self.vault, move |v| {
            let r = v.add_tenant(&new, &key, &gate);
            broker.forget(&new.tenant_id);
            r
        })
        .await?;
        Ok(rec)
    }

    /// Replaces the tenant's key with a new version, checked with Go first; the old key is
    /// destroyed, and a tenant whose key Go rejected is active again.
    pub async fn rotate(
        &self,
        actor: &Arc<dyn Actor>,
        tenant: &TenantId,
        key: ClientKey,
    ) -> Result<TenantRecord, RegistryError> {
        let id = tenant.clone();
        let Some(cur) = on_vault(&self.vault, move |v| v.tenant(&id)).await.map_err(read)? else {
            return Err(RegistryError::NotFound(tenant.clone()));
        };
        let client_id = self.broker.validate_key(cur.environment, &key).await?.info.client_id;
        let gate = gate(actor, move |k: &KeyChange| {
            let (new, old) = (k.current.key_version, k.previous.key_version);
            let client = |t: &TenantRecord| t.go_client_id.clone().unwrap_or_else(|| "unknown".into());
            let detail = format!(
                "key version {new} replaces {old} (destroyed); Go ClientId {} -> {}",
                client(&k.previous),
                client(&k.current)
            );
            vec![Entry::change(Action::KeyRotated, &k.current.tenant_id, new, detail)]
        });
        let (id, broker) = (tenant.clone(), self.broker.clone());
        let rec = on_vault(&self.vault, move |v| {
            let r = v.rotate_key(&id, &key, client_id.as_deref(), &gate);
            broker.forget(&id);
            r
        })
        .await?;
        Ok(rec)
    }

    /// Disables a tenant (no tokens) or makes it active again; recorded as
    /// `tenant_disabled` or `tenant_enabled`.
    pub async fn set_status(
        &self,
        actor: &Arc<dyn Actor>,
        tenant: &TenantId,
        status: TenantStatus,
    ) -> Result<TenantRecord, RegistryError> {
        let action = status_action(status);
        let gate = gate(actor, move |rec: &TenantRecord| {
            vec![Entry::change(action, &rec.tenant_id, rec.key_version, status.as_str())]
        });
        let (id, broker) = (tenant.clone(), self.broker.clone());
        let rec = on_vault(&self.vault, move |v| {
            let r = v.set_status(&id, status, &gate);
            broker.forget(&id);
            r
        })
        .await?;
        Ok(rec)
    }

    /// Deletes a tenant and destroys its key.
    pub async fn delete(&self, actor: &Arc<dyn Actor>, tenant: &TenantId) -> Result<(), RegistryError> {
        let gate = gate(actor, move |rec: &TenantRecord| {
            vec![Entry::change(Action::TenantDeleted, &rec.tenant_id, rec.key_version, "deleted; client key destroyed")]
        });
        let (id, broker) = (tenant.clone(), self.broker.clone());
        on_vault(&self.vault, move |v| {
            let r = v.delete_tenant(&id, &gate);
            broker.forget(&id);
            r
        })
        .await?;
        Ok(())
    }

    pub async fn get(&self, tenant: &TenantId) -> Result<TenantRecord, RegistryError> {
        let id = tenant.clone();
        on_vault(&self.vault, move |v| v.tenant(&id)).await?.ok_or_else(|| RegistryError::NotFound(tenant.clone()))
    }

    /// Up to `size` tenants in id order from `ranges` (sorted, disjoint), after `after`,
    /// that `admits`; each range is read through the primary-key index, `LIST_BATCH`
    /// rows at a time. `next_after` is the last id scanned for a full page, so a resumed
    /// list never skips a row and hidden tenants never show through it.
    pub async fn list(
        &self,
        ranges: Vec<IdRange>,
        mut after: Option<String>,
        size: usize,
        admits: impl Fn(&TenantRecord) -> bool,
    ) -> Result<Page, RegistryError> {
        let mut page = Page { tenants: Vec::new(), next_after: None, rows_read: 0 };
        'scan: for range in ranges {
            loop {
                let from = match &after {
                    Some(a) if *a >= range.from => format!("{a}{}", IdRange::AFTER_ID),
                    _ => range.from.clone(),
                };
                if from >= range.to {
                    break;
                }
                let to = range.to.clone();
                let batch = on_vault(&self.vault, move |v| v.list_tenants_in_range(&from, &to, LIST_BATCH)).await?;
                page.rows_read += batch.len();
                let Some(last) = batch.last() else { break };
                let last = last.tenant_id.to_string();
                let full = batch.len() == LIST_BATCH;
                for t in batch {
                    if admits(&t) {
                        let id = t.tenant_id.clone();
                        page.tenants.push(t);
                        if page.tenants.len() == size {
                            page.next_after = Some(id);
                            break 'scan;
                        }
                    }
                }
                after = Some(last);
                if !full {
                    break;
                }
            }
        }
        Ok(page)
    }

    /// When the tenant last had a token handed out: the stored time or, newer, the
    /// broker's in-memory one (written to the store once per refresh interval).
    pub fn last_token_at(&self, t: &TenantRecord) -> Option<i64> {
        [t.last_token_at, self.broker.last_served_ms(&t.tenant_id)].into_iter().flatten().max()
    }
}

/// A failed read before any decision: not recorded ([`RegistryError::recorded`]).
fn read(e: Blocking) -> RegistryError {
    e.into_error(RegistryError::Read, RegistryError::Internal)
}

/// The audit action of a status change.
fn status_action(status: TenantStatus) -> Action {
    match status {
        TenantStatus::Disabled => Action::TenantDisabled,
        _ => Action::TenantEnabled,
    }
}

impl From<Blocking> for RegistryError {
    fn from(e: Blocking) -> Self {
        e.into_error(RegistryError::Vault, RegistryError::Internal)
    }
}
