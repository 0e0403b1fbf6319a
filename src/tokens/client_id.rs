//! The ClientId fill-in: Go's ClientId of a tenant's client (support quotes it) is learnt
//! from ClientIntegrationInformation with a token just minted, when the tenant record lacks
//! it (after onboarding), and recorded in the store through the audit gate
//! (`tenant_metadata_updated`). It costs an upstream slot ([`METADATA`]) only when one is
//! free: metadata never makes callers wait.

use std::sync::Arc;
use std::time::Duration;

use super::{Broker, CachedToken, KEY_CHECKS, METADATA, Requester, SERVER_IDENTITY};
use crate::audit::{Action, AuditRecord, Outcome};
use crate::domain::TenantId;
use crate::store::tenants::TenantRecord;
use crate::vault::NotRecorded;

impl Broker {
    /// Fills in the ClientId of tenants that lack one (after onboarding): mints a token for
    /// each (waiting for upstream slots as key checks do) and asks ClientIntegrationInformation.
    /// Failures are logged; a later mint tries again.
    pub async fn fill_client_ids(&self, tenants: &[TenantId]) {
        for tenant in tenants {
            match self.get_token_for(tenant, Requester::new(KEY_CHECKS, None), None).await {
                Ok(lease) if lease.go_client_id.is_none() => {
                    self.fill_client_id(tenant.clone(), lease.token, self.inner.cfg.limiter_max_wait).await
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(tenant = %tenant, error = %e, "could not mint a token to learn the tenant's ClientId")
                }
            }
        }
    }

    /// Records the ClientId of `tenant` from ClientIntegrationInformation, asked with `token`
    /// (just minted with the tenant's current key), if an upstream slot is free within
    /// `wait` (zero after an ordinary mint: metadata never makes callers wait). Recorded in
    /// the audit log (`tenant_metadata_updated`) before it commits.
    pub(super) async fn fill_client_id(&self, tenant: TenantId, token: Arc<CachedToken>, wait: Duration) {
        let inner = &self.inner;
        let env = token.environment;
        let limiter = self.limiter(env);
        if limiter.acquire(METADATA, inner.cfg.default_upstream_share, wait).await.is_err() {
            tracing::debug!(tenant = %tenant, "no upstream slot free to learn the tenant's ClientId; a later mint tries again");
            self.slot(&tenant).lock().client_id_tried = false;
            return;
        }
        let Ok(integ) = self.integration(env).await else { return };
        inner.stats.upstream_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let info = inner
            .go
            .client_integration_information(&integ.record.base_url, &token.access_token, &integ.subscription_key)
            .await;
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                if let Some(w) = e.retry_after() {
                    limiter.pause(w);
                }
                // A later mint tries again.
                self.slot(&tenant).lock().client_id_tried = false;
                tracing::info!(tenant = %tenant, error = %e, "ClientIntegrationInformation failed; the tenant's ClientId stays unknown for now");
                return;
            }
        };
        let Some(client_id) = info.client_id else { return };
        let known: Arc<str> = Arc::from(client_id.as_str());
        let vault = inner.vault.clone();
        let audit = inner.audit.clone();
        let key_version = token.key_version;
        let id = tenant.clone();
        let filled = self
            .blocking(move || {
                let gate = |t: &TenantRecord| {
                    let rec = AuditRecord::new(Action::TenantMetadataUpdated, Outcome::Ok)
                        .caller(SERVER_IDENTITY, "")
                        .tenant(t.tenant_id.to_string())
                        .key_version(t.key_version)
                        .upstream_status(200)
                        .detail(format!(
                            "Go ClientId {} recorded from ClientIntegrationInformation (client key version {})",
                            t.go_client_id.as_deref().unwrap_or("-"),
                            t.key_version
                        ))
                        .request("go-client-integration-information", "");
                    audit.append_wait(rec).map(|_| ()).map_err(|e| NotRecorded(e.to_string()))
                };
                vault.set_go_client_id(&id, key_version, &client_id, &gate)
            })
            .await;
        match filled {
            Ok(Some(_)) => {
                tracing::info!(tenant = %tenant, "recorded the tenant's Go ClientId");
                self.slot(&tenant).lock().go_client_id = Some(known);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(tenant = %tenant, error = %e, "could not record the tenant's Go ClientId"),
        }
    }
}
