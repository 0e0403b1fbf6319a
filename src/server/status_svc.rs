//! `StatusService`: what an operator asks of a running vault (`pogo-vault status`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Caller, Extra, ServerState, timestamp};
use crate::audit::{Action, Outcome};
use crate::proto::v1 as pb;
use crate::proto::v1::status_service_server::StatusService;

pub struct StatusSvc {
    pub state: Arc<ServerState>,
}

#[tonic::async_trait]
impl StatusService for StatusSvc {
    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::VaultStatus>, Status> {
        let caller = Caller::of(&req)?;
        let st = &self.state;
        st.record(&caller, Action::AuditRead, None, Outcome::Ok, "status", Extra::default()).await?;
        let vault = st.vault.clone();
        let (counts, schema, integrations) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::vault::VaultError>((
                vault.count_tenants_by_status()?,
                vault.schema_version()?,
                vault.integrations()?,
            ))
        })
        .await
        .map_err(|_| super::errors::internal())?
        .map_err(|e| super::errors::vault(&e))?;
        let healthy = st.audit.is_healthy();
        let checkpoint = st.audit.latest_checkpoint().await.ok().flatten();
        Ok(Response::new(pb::VaultStatus {
            health: if healthy { "SERVING" } else { "NOT_SERVING" }.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            schema_version: schema,
            tenants: counts.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
            master_key_id: st.vault.kek_id().to_owned(),
            last_checkpoint: checkpoint.as_ref().map(super::audit_svc::checkpoint_to_proto),
            started_at: Some(timestamp(st.started_at)),
            audit_healthy: healthy,
            integrations: integrations
                .iter()
                .map(|i| pb::IntegrationSlots {
                    environment: i.environment.to_string(),
                    active_slot: i.active_slot.to_string(),
                    primary_key_hint: i.subscription_key_hint.to_string(),
                    secondary_key_hint: i.secondary_key_hint.as_ref().map(ToString::to_string).unwrap_or_default(),
                    upstream_paused_seconds: st
                        .broker
                        .upstream_paused_for(i.environment)
                        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
                })
                .collect(),
            audit_witnesses: st
                .audit
                .witness_status()
                .into_iter()
                .map(|w| pb::AuditWitness {
                    name: w.name.to_owned(),
                    backlog: w.backlog,
                    delivered: w.delivered,
                    failures: w.failures,
                    dropped: w.dropped,
                    failing: w.failing,
                    last_error: w.last_error.unwrap_or_default(),
                    last_delivered_sequence: w.last_delivered_sequence,
                })
                .collect(),
            audit_sinks: st
                .audit
                .sink_status()
                .into_iter()
                .map(|s| pb::AuditSink {
                    name: s.name,
                    kind: s.kind.to_owned(),
                    delivered_sequence: s.delivered_sequence,
                    lag: s.lag,
                    sent: s.sent_items,
                    failures: s.failures,
                    skipped: s.skipped,
                    failing: s.failing,
                    last_error: s.last_error.unwrap_or_default(),
                    standby: s.standby,
                })
                .collect(),
        }))
    }
}
