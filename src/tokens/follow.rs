//! Following other replicas' changes (PostgreSQL storage): each change another vault
//! commits reaches this one through the database's change feed (`store::changes`), and the
//! broker drops what it cached about it, so the next request reads the database again.
//!
//! Invariant: a cache is trusted only while the feed is listening. While it is not (the
//! connection lost, or not yet made), everything cached is dropped at every tick, so this
//! replica answers only from what it reads in the database; when it listens again it drops
//! everything once more (`Change::All`), for what it may have missed.

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::Broker;
use crate::domain::{Environment, TenantId};
use crate::store::changes::{Change, ChangeFeed};

/// How often the feed's state is looked at while no change arrives.
const TICK: Duration = Duration::from_millis(250);

impl Broker {
    /// Applies `feed`'s changes (`changes`, subscribed when the feed started, so nothing
    /// between then and now is missed) to this broker's caches until `stop` turns true.
    pub async fn follow_changes(
        &self,
        feed: &ChangeFeed,
        mut changes: tokio::sync::broadcast::Receiver<Change>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let next = tokio::select! {
                c = changes.recv() => Some(c),
                _ = tokio::time::sleep(TICK) => None,
                _ = stop.changed() => return,
            };
            match next {
                Some(Ok(Change::Tenant(id))) => match id.parse::<TenantId>() {
                    Ok(t) => self.forget_local(&t),
                    Err(_) => self.forget_all(),
                },
                Some(Ok(Change::Integration(env))) => match env.parse::<Environment>() {
                    Ok(e) => self.forget_integration(e),
                    Err(_) => self.forget_all(),
                },
                // A master key rotated elsewhere: this vault refuses to seal under the old
                // one and names it on reads (`vault`); nothing cached survives it either.
                Some(Ok(Change::MasterKey | Change::All)) | Some(Err(RecvError::Lagged(_))) => self.forget_all(),
                Some(Err(RecvError::Closed)) => return,
                None if !feed.is_listening() => self.forget_all(),
                None => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Drops every cached token and integration.
    pub fn forget_all(&self) {
        self.inner.slots.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.inner.integrations.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
