//! The broker's work beside requests: refresh ahead, and the "last token" times that the
//! hot path keeps in memory, read back and written to the store in one transaction; and
//! the background task that runs both every `refresh_interval`.
//!
//! Refresh ahead: tenants used within `refresh_window` get a new token in the background
//! once less than `refresh_ahead_share` of the lifetime remains (minus a random jitter, so
//! tenants minted together do not refresh together). Idle tenants are left alone: with
//! 10,000 tenants, eager refresh alone would eat Go's budget (go-api.md).

use std::sync::Arc;
use std::time::Duration;

use super::state::Slot;
use super::{Broker, BrokerError, REFRESHER};
use crate::domain::TenantId;

impl Broker {
    /// When a token was last handed out for the tenant by this process (Unix ms).
    pub fn last_served_ms(&self, tenant: &TenantId) -> Option<i64> {
        let slots = self.inner.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(tenant).and_then(|s| s.lock().last_served_ms)
    }

    /// Writes the "last token" times gathered in memory to the store, in one transaction.
    pub async fn flush_last_served(&self) -> Result<usize, BrokerError> {
        let mut batch = Vec::new();
        {
            let slots = self.inner.slots.read().unwrap_or_else(|p| p.into_inner());
            for (id, slot) in slots.iter() {
                let mut st = slot.lock();
                if st.last_served_dirty {
                    st.last_served_dirty = false;
                    if let Some(ms) = st.last_served_ms {
                        batch.push((id.clone(), ms));
                    }
                }
            }
        }
        let n = batch.len();
        if n > 0 {
            let vault = self.inner.vault.clone();
            self.blocking(move || vault.touch_last_tokens(&batch)).await?;
        }
        Ok(n)
    }

    /// Starts background refreshes for tenants used within the refresh window whose token
    /// has passed its refresh point, and waits for them. Returns how many were refreshed.
    /// A refresh never queues for the limiter: if no slot is free now, it tries next time.
    pub async fn refresh_due(&self) -> usize {
        let now = self.inner.clock.now();
        let window = self.inner.cfg.refresh_window;
        let mut flights = Vec::new();
        let slots: Vec<(TenantId, Arc<Slot>)> = self
            .inner
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, slot) in slots {
            let mut st = slot.lock();
            let due = match (&st.token, st.last_used) {
                (Some(t), Some(used)) => {
                    now >= t.refresh_at && t.expires_at > now && now.saturating_duration_since(used) <= window
                }
                _ => false,
            };
            let blocked = st.rejected || st.flight.is_some() || st.backoff_until.is_some_and(|u| u > now);
            if due && !blocked {
                flights.push(self.start_flight(&id, &slot, &mut st, Duration::ZERO, self.charge(REFRESHER, None)));
            }
        }
        let mut refreshed = 0;
        for mut rx in flights {
            if let Ok(v) = rx.wait_for(Option::is_some).await
                && matches!(&*v, Some(Ok(_)))
            {
                refreshed += 1;
            }
        }
        refreshed
    }

    /// Runs refresh-ahead and the "last token" flush every `refresh_interval` until the
    /// returned task is aborted.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.inner.clock.sleep(this.inner.cfg.refresh_interval).await;
                let n = this.refresh_due().await;
                if n > 0 {
                    tracing::debug!(refreshed = n, "refreshed tokens ahead of expiry");
                }
                if let Err(e) = this.flush_last_served().await {
                    tracing::warn!(error = %e, "could not record last-token times");
                }
            }
        })
    }
}
