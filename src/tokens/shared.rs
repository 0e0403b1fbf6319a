//! One upstream request per token across replicas (PostgreSQL): the broker's side of
//! `store::shared`.
//!
//! A flight (the one request of this replica for a tenant, `broker.rs`) first looks in the
//! shared cache: a token another replica minted for the tenant's current key version, still
//! fresh (before its refresh point, and valid for the longest `min_validity` a caller may
//! ask), is opened and served ([`TokenSource::OtherReplica`](super::TokenSource)). If there
//! is none, the flight takes the tenant's lease before asking Go, so of all the replicas
//! missing the tenant at once only the one holding the lease asks; the others look in the
//! cache every [`POLL`] until the token is there or the lease is free (then one of them takes
//! it: the holder failed or died). Refresh ahead goes the same way, so the first replica to
//! reach a token's refresh point refreshes it and the others take the new one.
//!
//! Nothing here decides whether a tenant may have a token: the flight has read the tenant
//! (active, its key version) before it looks, and a shared token opens only for that tenant
//! and version. A change through any replica destroys the tenant's shared token
//! ([`Broker::forget`]); a token Go refused is destroyed by its fingerprint.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::state::{Found, IntegrationCtx, Lease};
use super::{Broker, BrokerError, CachedToken, FP_ACCESS_TOKEN};
use crate::crypto::TokenFacts;
use crate::domain::TenantId;
use crate::store::shared::{Shared, SharedToken};
use crate::store::tenants::TenantRecord;
use crate::vault::VaultError;

/// How often a replica waiting for another's request looks again.
pub(super) const POLL: Duration = Duration::from_millis(20);
/// How long a replica waits for another replica's request beyond its own limiter wait:
/// the other may be waiting for its slot, then for Go.
const OTHERS_GRACE: Duration = Duration::from_secs(10);

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Broker {
    /// The shared token for `rec`'s tenant, or the lease to ask Go for one (module docs).
    /// Waits for another replica's request at most the limiter wait plus [`OTHERS_GRACE`].
    pub(super) async fn shared_or_lease(
        &self,
        shared: &Arc<Shared>,
        rec: TenantRecord,
        integ: &IntegrationCtx,
        max_wait: Duration,
    ) -> Result<Found, BrokerError> {
        let started = self.inner.clock.now();
        let give_up = started + max_wait.max(self.inner.cfg.limiter_max_wait) + OTHERS_GRACE;
        let tenant = rec.tenant_id.clone();
        let mut rec = rec;
        let mut waited = false;
        loop {
            if let Some(t) = self.adopt(shared, &rec, integ).await? {
                return Ok(Found::Token(t));
            }
            let taken = {
                let (shared, tenant) = (shared.clone(), tenant.clone());
                self.blocking(move || shared.try_lease(tenant.as_str()).map_err(VaultError::Store)).await?
            };
            if taken {
                let lease = Lease { shared: shared.clone(), tenant: tenant.clone() };
                if waited {
                    // Another replica asked meanwhile: it may have minted (and let go between
                    // our looks), failed, or found the tenant changed.
                    let vault = self.inner.vault.clone();
                    let id = tenant.clone();
                    rec = self
                        .blocking(move || vault.tenant(&id))
                        .await?
                        .ok_or_else(|| BrokerError::NotFound(tenant.clone()))?;
                    BrokerError::unless_active(&rec)?;
                    if let Some(t) = self.adopt(shared, &rec, integ).await? {
                        return Ok(Found::Token(t));
                    }
                }
                return Ok(Found::Lease { lease, record: Box::new(rec) });
            }
            if self.inner.clock.now() >= give_up {
                return Err(BrokerError::Unavailable {
                    reason: "another replica's request to PowerOffice Go for this tenant has not finished".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            waited = true;
            self.inner.clock.sleep(POLL).await;
        }
    }

    /// The shared token of `rec`'s tenant when it is bound to its current key version,
    /// opens, and is fresh: before its refresh point, and valid for `max_min_validity`.
    async fn adopt(
        &self,
        shared: &Arc<Shared>,
        rec: &TenantRecord,
        integ: &IntegrationCtx,
    ) -> Result<Option<Arc<CachedToken>>, BrokerError> {
        let inner = &self.inner;
        let (vault, shared, tenant, version) =
            (inner.vault.clone(), shared.clone(), rec.tenant_id.clone(), rec.key_version);
        let now_wall = ms(inner.clock.system_now());
        let min_ms = inner.cfg.max_min_validity.as_millis() as i64;
        let found = self
            .blocking(move || {
                let Some(row) = shared.token(tenant.as_str()).map_err(VaultError::Store)? else { return Ok(None) };
                if row.key_version != version || row.refresh_at_ms <= now_wall || row.expires_at_ms - now_wall < min_ms
                {
                    return Ok(None);
                }
                let opened = vault.open_access_token(&tenant, version, &row.sealed)?;
                if opened.is_none() {
                    tracing::warn!(tenant = %tenant, "a shared token does not open for this tenant and key version (sealed under a master key since rotated, or not this vault's); asking Go instead");
                }
                Ok(opened.map(|o| (row, o)))
            })
            .await?;
        let Some((row, (token, facts))) = found else { return Ok(None) };
        // The sealed facts decide; the plain columns only chose the row.
        if facts.expires_at_ms - now_wall < min_ms {
            return Ok(None);
        }
        let now = inner.clock.now();
        let after = |at_ms: i64| now + Duration::from_millis(u64::try_from(at_ms - now_wall).unwrap_or(0));
        let expires_at = after(facts.expires_at_ms);
        let fingerprint = token.fingerprint(inner.vault.fingerprint_key(), FP_ACCESS_TOKEN);
        Ok(Some(Arc::new(CachedToken {
            expires_at,
            expires_at_wall: UNIX_EPOCH + Duration::from_millis(u64::try_from(facts.expires_at_ms).unwrap_or(0)),
            refresh_at: after(row.refresh_at_ms).min(expires_at),
            lifetime: Duration::from_millis(u64::try_from(facts.lifetime_ms).unwrap_or(0)),
            access_token: token,
            token_type: facts.token_type,
            environment: integ.record.environment,
            api_base_url: format!("{}/v2", integ.record.base_url),
            key_version: rec.key_version,
            fingerprint_text: fingerprint.to_string(),
            fingerprint,
            go_client_id: rec.go_client_id.clone(),
            from_other_replica: true,
        })))
    }

    /// Seals a token this replica minted into the shared cache, for the other replicas. A
    /// failure costs them their own request, nothing more: logged.
    pub(super) async fn publish(&self, shared: &Arc<Shared>, tenant: &TenantId, t: &Arc<CachedToken>) {
        let inner = &self.inner;
        let now = inner.clock.now();
        let now_wall = ms(inner.clock.system_now());
        let in_ms = |at: Instant| now_wall + at.saturating_duration_since(now).as_millis() as i64;
        let facts = TokenFacts {
            token_type: t.token_type.clone(),
            expires_at_ms: ms(t.expires_at_wall),
            lifetime_ms: t.lifetime.as_millis() as i64,
        };
        let refresh_at_ms = in_ms(t.refresh_at);
        let (vault, shared, tenant, t) = (inner.vault.clone(), shared.clone(), tenant.clone(), t.clone());
        let minted_by = vault.change_origin().unwrap_or_default();
        let done = self
            .blocking(move || {
                let sealed = vault.seal_access_token(&tenant, t.key_version, &t.access_token, &facts)?;
                let row = SharedToken {
                    key_version: t.key_version,
                    sealed,
                    fingerprint: t.fingerprint_text.clone(),
                    expires_at_ms: facts.expires_at_ms,
                    refresh_at_ms,
                };
                shared.put_token(tenant.as_str(), &row, &minted_by, now_wall).map_err(VaultError::Store)
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not share a new token with the other replicas");
        }
    }

    /// Destroys `tenant`'s shared token (all of it, or only the one with `fingerprint`).
    /// Blocks on the database: call it where blocking is allowed.
    pub(super) fn drop_shared(&self, tenant: &TenantId, fingerprint: Option<&str>) {
        if let Some(shared) = &self.inner.shared
            && let Err(e) = shared.drop_token(tenant.as_str(), fingerprint)
        {
            tracing::warn!(tenant = %tenant, error = %e, "could not destroy the tenant's shared token (it is bound to the key version and expires on its own)");
        }
    }
}
