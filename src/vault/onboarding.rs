//! Onboarding sessions and what a completed one stores: every client key Go handed over,
//! as a new tenant or a re-activated one, with the session's completion, in one
//! transaction behind the gate.

use super::Vault;
use super::error::VaultError;
use super::gate::Gate;
use super::keys::public_forms;
use crate::crypto::ClientKey;
use crate::domain::InvalidInput;
use crate::domain::{DisplayName, Labels, OrganizationNumber, TenantId, TenantStatus};
use crate::store::changes::{Change, announce};
use crate::store::onboarding::{self, Session, SessionStatus};
use crate::store::tenants::{self, TenantRecord};
use crate::store::{StoreError, now_ms};

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
    conn: &mut dyn crate::store::Sql,
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

impl Vault {
    pub fn insert_onboarding(&self, session: &Session, gate: Gate<'_, Session>) -> Result<(), VaultError> {
        let mut store = self.store();
        let mut tx = store.write_tx()?;
        onboarding::insert(&mut tx, session)?;
        gate.record(session)?;
        tx.commit()?;
        Ok(())
    }

    pub fn onboarding(&self, id: &str) -> Result<Option<Session>, VaultError> {
        Ok(onboarding::get(self.store().db()?, id)?)
    }

    /// Compare-and-set of a session's status (see [`onboarding::transition`]).
    pub fn onboarding_transition(
        &self,
        id: &str,
        from: SessionStatus,
        to: SessionStatus,
        go_status: Option<&str>,
    ) -> Result<bool, VaultError> {
        Ok(onboarding::transition(self.store().db()?, id, from, to, go_status, &[])?)
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
        let mut tx = store.write_tx()?;
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
                    let mut found: Vec<TenantRecord> = tenants::find_by_verified_organization(&mut tx, env, org)?
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
            let (hint, fp) = public_forms(&self.fingerprint_key, &c.key);
            let (id, previous) = match existing {
                Some(cur) => {
                    let id = cur.tenant_id.clone();
                    let version = cur.key_version + 1;
                    self.enter_client_key(&mut tx, &kek, &id, version, &c.key)?;
                    tenants::set_key(&mut tx, &id, version, &hint, &fp)?;
                    (id, Some(cur.key_version))
                }
                None => {
                    let id = new_tenant_id(&mut tx, &session.tenant_id_prefix, c, &taken)?;
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
                        key_hint: hint,
                        key_fingerprint: fp,
                        created_at: now,
                        updated_at: now,
                        last_token_at: None,
                    };
                    tenants::insert(&mut tx, &rec)?;
                    self.enter_client_key(&mut tx, &kek, &id, 1, &c.key)?;
                    (id, None)
                }
            };
            if let Some(org) = &c.organization_number {
                tenants::set_verified_organization(&mut tx, &id, env, org)?;
            }
            taken.push(id.clone());
            let record =
                tenants::get(&mut tx, &id)?.ok_or_else(|| StoreError::NotFound { what: format!("tenant {id}") })?;
            outcomes.push(OnboardingOutcome { record, previous_version: previous });
        }
        let ids: Vec<String> = outcomes.iter().map(|o| o.record.tenant_id.to_string()).collect();
        if !onboarding::transition(
            &mut tx,
            &session.onboarding_id,
            SessionStatus::Completing,
            SessionStatus::Completed,
            Some("Success"),
            &ids,
        )? {
            return Err(StoreError::Corrupt("onboarding session was not being completed".into()).into());
        }
        for o in &outcomes {
            announce(&mut tx, &Change::Tenant(o.record.tenant_id.to_string()))?;
        }
        gate.record(&outcomes)?;
        tx.commit()?;
        if outcomes.iter().any(|o| o.previous_version.is_some()) {
            store.checkpoint_truncate()?;
        }
        Ok(outcomes)
    }
}
