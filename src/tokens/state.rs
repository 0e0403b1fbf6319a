//! What the broker keeps in memory between requests: one slot per tenant (its cached token,
//! the upstream request in flight, backoff, "last token" time, ClientId), the integration
//! cache entry per environment ([`IntegrationCtx`]), and the limiter's view of a request
//! ([`Charge`]).
//!
//! Plain data: the rules that fill and read it are the broker's (`broker.rs`,
//! `integration.rs`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::{BrokerError, CachedToken};
use crate::crypto::SubscriptionKey;
use crate::domain::TenantId;
use crate::store::integrations::IntegrationRecord;
use crate::store::shared::Shared;
use crate::store::tenants::TenantRecord;

/// The limiter's view of a request that reached it.
#[derive(Debug, Clone)]
pub(super) struct Charge {
    pub(super) caller: Arc<str>,
    pub(super) share: f64,
}

pub(super) type FlightResult = Result<Arc<CachedToken>, BrokerError>;

#[derive(Default)]
pub(super) struct SlotState {
    pub(super) token: Option<Arc<CachedToken>>,
    pub(super) flight: Option<watch::Receiver<Option<FlightResult>>>,
    pub(super) last_used: Option<Instant>,
    pub(super) last_served_ms: Option<i64>,
    pub(super) last_served_dirty: bool,
    pub(super) failures: u32,
    pub(super) backoff_until: Option<Instant>,
    pub(super) backoff_reason: Option<String>,
    pub(super) rejected: bool,
    /// A ClientId fill-in was started for this tenant (at most one per process and slot).
    pub(super) client_id_tried: bool,
    /// Go's ClientId of the tenant's client, once known (from the tenant record at mint, or
    /// filled in since).
    pub(super) go_client_id: Option<Arc<str>>,
}

#[derive(Default)]
pub(super) struct Slot {
    state: Mutex<SlotState>,
}

impl Slot {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) struct IntegrationCtx {
    pub(super) record: IntegrationRecord,
    /// The key of the active slot: the one sent.
    pub(super) subscription_key: SubscriptionKey,
    /// The other slot's key, when one is set and opens: tried once when Go's gateway calls
    /// the active key invalid.
    pub(super) standby: Option<SubscriptionKey>,
    pub(super) loaded_at: Instant,
}

/// What a flight found in the shared cache: a token to serve, or the lease to ask Go.
pub(super) enum Found {
    Token(Arc<CachedToken>),
    /// This replica holds the lease; let go when dropped. `record` is the tenant as read
    /// after the lease was taken (a replica that waited may find it changed).
    Lease {
        lease: Lease,
        record: Box<TenantRecord>,
    },
}

/// A tenant's lease, let go of when dropped (on the blocking pool: it is a database call).
pub(super) struct Lease {
    pub(super) shared: Arc<Shared>,
    pub(super) tenant: TenantId,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (shared, tenant) = (self.shared.clone(), self.tenant.clone());
        let release = move || {
            if let Err(e) = shared.release(tenant.as_str()) {
                tracing::warn!(tenant = %tenant, error = %e, "could not let go of a token lease (it ends with the connection)");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}
