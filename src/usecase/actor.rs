//! Who a use case acts for, and how its decisions become durable records: the seam between
//! the use cases and their transports. The gRPC server's actor is a verified caller
//! (identity, certificate serial, peer, request id); the CLI's is the operator at the
//! terminal. A use case builds [`Entry`]s (what was decided, about which tenant) and the
//! actor adds who asked.

use std::sync::Arc;

use crate::audit::{Action, Outcome};
use crate::domain::TenantId;
use crate::vault::NotRecorded;

/// One decision to record, without who made it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub action: Action,
    pub tenant: Option<TenantId>,
    pub outcome: Outcome,
    pub detail: String,
    pub key_version: Option<i64>,
}

impl Entry {
    /// A successful change of `tenant` at `key_version`.
    pub fn change(action: Action, tenant: &TenantId, key_version: i64, detail: impl Into<String>) -> Self {
        Self {
            action,
            tenant: Some(tenant.clone()),
            outcome: Outcome::Ok,
            detail: detail.into(),
            key_version: Some(key_version),
        }
    }

    /// A successful decision about no single tenant.
    pub fn ok(action: Action, detail: impl Into<String>) -> Self {
        Self { action, tenant: None, outcome: Outcome::Ok, detail: detail.into(), key_version: None }
    }
}

/// Who a use case acts for.
pub trait Actor: Send + Sync {
    /// The identity the policy and onboarding sessions know the actor by.
    fn identity(&self) -> &str;

    /// Appends `entries` as this actor's records and waits until they are durable.
    /// Blocking: a vault gate calls it inside its open transaction, on the blocking pool.
    fn record_durably(&self, entries: Vec<Entry>) -> Result<(), NotRecorded>;
}

/// The commit gate of a vault change made for `actor`: the entries `make` builds from the
/// change are durable before the vault commits it (audit before effect).
pub fn gate<T: ?Sized>(
    actor: &Arc<dyn Actor>,
    make: impl Fn(&T) -> Vec<Entry> + Send + Sync + 'static,
) -> impl Fn(&T) -> Result<(), NotRecorded> + Send + Sync + 'static {
    let actor = actor.clone();
    move |change: &T| actor.record_durably(make(change))
}
