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
use std::time::{Duration, Instant};

use super::clock::unix_ms as ms;

use super::state::{Found, IntegrationCtx, Lease};
use super::{Broker, BrokerError, CachedToken, FP_ACCESS_TOKEN};
use crate::crypto::TokenFacts;
use crate::domain::TenantId;
use crate::store::shared::{Shared, SharedToken};
use crate::store::tenants::TenantRecord;
use crate::vault::VaultError;

/// How often a replica waiting for another's request looks again: first after this long,
/// then twice as long each time up to [`POLL_MAX`].
pub(super) const POLL: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(200);
/// How many fingerprints of tokens Go refused a replica remembers.
const REFUSED_KEPT: usize = 1024;
/// How long a replica waits for another replica's request beyond its own limiter wait:
/// the other may be waiting for its slot, then for Go.
const OTHERS_GRACE: Duration = Duration::from_secs(10);
/// How long a refresh ahead waits for another replica refreshing the same tenant (which
/// normally takes one request to Go) before it leaves it to the next tick.
const REFRESH_GRACE: Duration = Duration::from_secs(3);

impl Broker {
    /// The shared token for `rec`'s tenant, or the lease to ask Go for one (module docs).
    /// Waits for another replica's request at most the limiter wait plus [`OTHERS_GRACE`]
    /// (a refresh ahead, `max_wait` zero: [`REFRESH_GRACE`]).
    pub(super) async fn shared_or_lease(
        &self,
        shared: &Arc<Shared>,
        rec: TenantRecord,
        integ: &IntegrationCtx,
        max_wait: Duration,
    ) -> Result<Found, BrokerError> {
        let started = self.inner.clock.now();
        let refresh = max_wait.is_zero();
        let give_up = started
            + if refresh { REFRESH_GRACE } else { max_wait.max(self.inner.cfg.limiter_max_wait) + OTHERS_GRACE };
        let tenant = rec.tenant_id.clone();
        let mut rec = rec;
        let mut waited = false;
        let mut poll = POLL;
        loop {
            if let Some(t) = self.adopt(shared, &rec, integ).await? {
                if !waited {
                    return Ok(Found::Token(t));
                }
                // The tenant was read before the wait: it must still be what the token
                // was bound to (a disable meanwhile keeps key and version).
                let now = self.reread(&tenant).await?;
                BrokerError::unless_active(&now)?;
                if now.key_version == rec.key_version && now.key_fingerprint == rec.key_fingerprint {
                    return Ok(Found::Token(t));
                }
                rec = now;
                continue;
            }
            let taken = {
                let (shared, tenant) = (shared.clone(), tenant.clone());
                self.blocking(move || shared.try_lease(tenant.as_str()).map_err(VaultError::Store)).await?
            };
            if taken {
                let lease = Lease { shared: shared.clone(), tenant: tenant.clone() };
                if waited {
                    // Another replica asked meanwhile: it may have failed, or found the
                    // tenant changed.
                    rec = self.reread(&tenant).await?;
                    BrokerError::unless_active(&rec)?;
                }
                // Looked again under the lease: another replica may have minted, published
                // and let go between the first look and the lease (a storm's second request
                // to Go, seen when the shared statements left the lease's connection).
                if let Some(t) = self.adopt(shared, &rec, integ).await? {
                    return Ok(Found::Token(t));
                }
                return Ok(Found::Lease { lease, record: Box::new(rec) });
            }
            if self.inner.clock.now() >= give_up {
                if refresh {
                    // Another replica is still refreshing: its token is taken at the next
                    // tick. Not a failure of this tenant (no backoff).
                    return Err(BrokerError::RateLimited { env: rec.environment, retry_after: POLL_MAX });
                }
                return Err(BrokerError::Unavailable {
                    reason: "another replica's request to PowerOffice Go for this tenant has not finished".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            waited = true;
            self.inner.clock.sleep(poll).await;
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    async fn reread(&self, tenant: &TenantId) -> Result<TenantRecord, BrokerError> {
        let (vault, id) = (self.inner.vault.clone(), tenant.clone());
        self.blocking(move || vault.tenant(&id)).await?.ok_or_else(|| BrokerError::NotFound(tenant.clone()))
    }

    /// The shared token of `rec`'s tenant when it is bound to its current key version and
    /// client key, opens, was not refused by Go here, and is fresh: before its refresh
    /// point, and valid for `max_min_validity` by the database's clock and by the expiry
    /// sealed with it (the shorter wins).
    async fn adopt(
        &self,
        shared: &Arc<Shared>,
        rec: &TenantRecord,
        integ: &IntegrationCtx,
    ) -> Result<Option<Arc<CachedToken>>, BrokerError> {
        let inner = &self.inner;
        let (vault, shared, tenant, version) =
            (inner.vault.clone(), shared.clone(), rec.tenant_id.clone(), rec.key_version);
        let key_fingerprint = rec.key_fingerprint.to_string();
        let min_ms = inner.cfg.max_min_validity.as_millis() as i64;
        let found = self
            .blocking(move || {
                let Some(row) = shared.token(tenant.as_str()).map_err(VaultError::Store)? else { return Ok(None) };
                if row.key_version != version || row.refresh_in_ms <= 0 || row.expires_in_ms < min_ms {
                    return Ok(None);
                }
                let opened = vault.open_access_token(&tenant, version, &row.sealed)?;
                let unusable = match &opened {
                    None => Some("does not open for this tenant and key version (sealed under a master key since rotated, or not this vault's)"),
                    Some((_, facts)) if facts.key_fingerprint != key_fingerprint => {
                        Some("was minted with another client key (a tenant deleted and registered again)")
                    }
                    Some(_) => None,
                };
                if let Some(why) = unusable {
                    // Of no use to anyone: gone, so nobody waits on it or keeps it again.
                    tracing::warn!(tenant = %tenant, "a shared token {why}: destroyed, asking Go instead");
                    if let Err(e) = shared.drop_token(tenant.as_str(), Some(&row.fingerprint)) {
                        tracing::warn!(tenant = %tenant, error = %e, "could not destroy an unusable shared token");
                    }
                    return Ok(None);
                }
                Ok(opened.map(|o| (row, o)))
            })
            .await?;
        let Some((row, (token, facts))) = found else { return Ok(None) };
        let now_wall = ms(inner.clock.system_now());
        let remaining_ms = row.expires_in_ms.min(facts.expires_at_ms - now_wall);
        let fingerprint = token.fingerprint(inner.vault.fingerprint_key(), FP_ACCESS_TOKEN);
        let fingerprint_text = fingerprint.to_string();
        if remaining_ms < min_ms
            || facts.key_fingerprint != rec.key_fingerprint.to_string()
            || fingerprint_text != row.fingerprint
            || self.was_refused(&fingerprint_text)
        {
            return Ok(None);
        }
        let now = inner.clock.now();
        let after = |in_ms: i64| now + Duration::from_millis(u64::try_from(in_ms).unwrap_or(0));
        let expires_at = after(remaining_ms);
        Ok(Some(Arc::new(CachedToken {
            expires_at,
            expires_at_wall: inner.clock.system_now() + Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)),
            refresh_at: after(row.refresh_in_ms).min(expires_at),
            lifetime: Duration::from_millis(u64::try_from(facts.lifetime_ms).unwrap_or(0)),
            access_token: token,
            token_type: facts.token_type,
            environment: integ.record.environment,
            api_base_url: format!("{}/v2", integ.record.base_url),
            key_version: rec.key_version,
            fingerprint_text,
            fingerprint,
            go_client_id: rec.go_client_id.clone(),
            from_other_replica: true,
        })))
    }

    /// Seals a token this replica minted with `rec`'s key into the shared cache, for the
    /// other replicas (stored only if the tenant is still active with that key). A failure
    /// costs them their own request, nothing more: logged.
    pub(super) async fn publish(&self, shared: &Arc<Shared>, rec: &TenantRecord, t: &Arc<CachedToken>) {
        let inner = &self.inner;
        let now = inner.clock.now();
        let in_ms = |at: Instant| at.saturating_duration_since(now).as_millis() as i64;
        let facts = TokenFacts {
            token_type: t.token_type.clone(),
            expires_at_ms: ms(t.expires_at_wall),
            lifetime_ms: t.lifetime.as_millis() as i64,
            key_fingerprint: rec.key_fingerprint.to_string(),
        };
        let (expires_in_ms, refresh_in_ms) = (in_ms(t.expires_at), in_ms(t.refresh_at));
        let (vault, shared, tenant, t) = (inner.vault.clone(), shared.clone(), rec.tenant_id.clone(), t.clone());
        let done = self
            .blocking(move || {
                let sealed = vault.seal_access_token(&tenant, t.key_version, &t.access_token, &facts)?;
                let row = SharedToken {
                    key_version: t.key_version,
                    sealed,
                    fingerprint: t.fingerprint_text.clone(),
                    expires_in_ms,
                    refresh_in_ms,
                };
                let minted_by = vault.change_origin().unwrap_or_default();
                shared.put_token(tenant.as_str(), &row, &facts.key_fingerprint, &minted_by).map_err(VaultError::Store)
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not share a new token with the other replicas");
        }
    }

    /// Whether Go refused the token with this fingerprint on an API call through this
    /// replica (it is never taken from the shared cache again).
    fn was_refused(&self, fingerprint: &str) -> bool {
        self.inner.refused.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|f| f == fingerprint)
    }

    /// Remembers a token Go refused, and destroys it in the shared cache (in the background:
    /// until then, [`Broker::was_refused`] keeps this replica from taking it back).
    pub(super) fn refused_shared(&self, tenant: &TenantId, fingerprint: &str) {
        {
            let mut refused = self.inner.refused.lock().unwrap_or_else(|p| p.into_inner());
            if refused.len() >= REFUSED_KEPT {
                refused.pop_front();
            }
            refused.push_back(fingerprint.to_owned());
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (this, tenant, fp) = (self.clone(), tenant.clone(), fingerprint.to_owned());
            rt.spawn_blocking(move || this.drop_shared(&tenant, Some(&fp)));
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
