//! The OTLP sink: events and checkpoints as OpenTelemetry log records, exported over OTLP/gRPC
//! (`LogsService/Export`) to a collector, which forwards them wherever the platform sends
//! logs. One record per item: the body is the item's JSON (as the file sink writes it), the
//! attributes name the kind and sequence and, for an event, its action, outcome, caller and
//! tenant; the timestamp is the item's own.
//!
//! Accepted: a batch counts as delivered when the collector answers the export (what the
//! collector does with it next is its own durability). At least once: an export whose
//! answer was lost (the collector stopped mid-request) is sent again; every record carries
//! its sequence. An export the collector refuses (any gRPC error) is retried from the cursor
//! with back-off, alarmed, for as long as it refuses. Records the collector rejects for good
//! in an accepted export (`partial_success`, which OTLP says must not be sent again) are
//! counted as skipped (metrics, `status`) and alarmed; they stay in the audit log.
//!
//! The sink's thread is not on the server's runtime: the export runs on a small runtime of
//! its own, so a slow collector never takes a worker the requests need.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::transport::Channel;

use super::super::record::Outcome;
use super::super::syslog::local_hostname;
use super::config::SinkConfig;
use super::feed::{Destination, Item, SinkCursor};

/// How long one export (connection included) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// OpenTelemetry severity numbers.
const INFO: i32 = 9;
const WARN: i32 = 13;

pub(super) struct OtlpDest {
    /// Always `Some` until dropped (taken there, to shut it down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
    client: LogsServiceClient<Channel>,
    endpoint: String,
    resource: Resource,
    confirmed: Option<SinkCursor>,
    /// Records the collector refused for good since last asked.
    rejected: u64,
}

impl Drop for OtlpDest {
    fn drop(&mut self) {
        // Without blocking: a sink may be dropped on the server's runtime (a start that
        // failed after it was made), where a blocking runtime drop would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_owned()))
}

impl OtlpDest {
    /// From the checked configuration; connects when first used.
    pub(super) fn new(cfg: &SinkConfig) -> Result<OtlpDest, String> {
        let target = cfg.otlp_target();
        let url = target.endpoint.clone();
        let endpoint = target.endpoint(EXPORT_TIMEOUT)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP sink's runtime: {e}"))?;
        let channel = {
            let _in = runtime.enter();
            endpoint.connect_lazy()
        };
        let host = cfg.hostname.clone().unwrap_or_else(local_hostname);
        let resource = Resource {
            attributes: vec![
                text("service.name", "pogo-vault"),
                text("service.version", env!("CARGO_PKG_VERSION")),
                text("host.name", &host),
            ],
            ..Default::default()
        };
        Ok(OtlpDest {
            runtime: Some(runtime),
            client: LogsServiceClient::new(channel),
            endpoint: url,
            resource,
            confirmed: None,
            rejected: 0,
        })
    }

    fn record(item: &Item) -> LogRecord {
        let time_unix_nano = u64::try_from(item.time_ms()).unwrap_or(0).saturating_mul(1_000_000);
        let (event_name, severity, mut attributes) = match item {
            Item::Event(e) => {
                let r = &e.record;
                let severity = if r.outcome == Outcome::Ok { INFO } else { WARN };
                let mut a = vec![
                    text("pogo_vault.audit.kind", "event"),
                    kv("pogo_vault.audit.sequence", Value::IntValue(e.sequence)),
                    text("pogo_vault.audit.action", r.action.as_str()),
                    text("pogo_vault.audit.outcome", r.outcome.as_str()),
                    text("pogo_vault.audit.caller", &r.caller),
                ];
                if let Some(t) = &r.tenant_id {
                    a.push(text("pogo_vault.tenant_id", t));
                }
                ("pogo_vault.audit.event", severity, a)
            }
            Item::Checkpoint(c) => (
                "pogo_vault.audit.checkpoint",
                INFO,
                vec![
                    text("pogo_vault.audit.kind", "checkpoint"),
                    kv("pogo_vault.audit.sequence", Value::IntValue(c.sequence)),
                    text("pogo_vault.audit.key_id", &c.key_id),
                ],
            ),
        };
        attributes.shrink_to_fit();
        LogRecord {
            time_unix_nano,
            observed_time_unix_nano: time_unix_nano,
            severity_number: severity,
            severity_text: if severity == INFO { "INFO" } else { "WARN" }.to_owned(),
            body: Some(AnyValue { value: Some(Value::StringValue(item.json())) }),
            attributes,
            event_name: event_name.to_owned(),
            ..Default::default()
        }
    }
}

impl Destination for OtlpDest {
    fn send(&mut self, items: &[Item], end: SinkCursor) -> Result<(), String> {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "pogo-vault.audit".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    log_records: items.iter().map(OtlpDest::record).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut client = self.client.clone();
        let Some(runtime) = self.runtime.as_ref() else { return Err("the OTLP sink is stopping".into()) };
        let answer =
            runtime.block_on(async move { tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await });
        let answer = match answer {
            Err(_) => return Err(format!("{}: no answer within {EXPORT_TIMEOUT:?}", self.endpoint)),
            // The status's code and message only: a collector's message names its own reason.
            Ok(Err(status)) => return Err(format!("{}: {:?}: {}", self.endpoint, status.code(), status.message())),
            Ok(Ok(a)) => a.into_inner(),
        };
        if let Some(p) = answer.partial_success.filter(|p| p.rejected_log_records > 0) {
            self.rejected += u64::try_from(p.rejected_log_records).unwrap_or(0);
            tracing::error!(
                endpoint = %self.endpoint,
                rejected = p.rejected_log_records,
                reason = %p.error_message,
                "ALARM: the OTLP collector rejected audit records for good (OTLP forbids sending them again); they stay in the audit log"
            );
        }
        self.confirmed = Some(end);
        Ok(())
    }

    fn confirm(&mut self) -> Result<Option<SinkCursor>, String> {
        Ok(self.confirmed.take())
    }

    fn reset(&mut self) {
        self.confirmed = None;
    }

    fn take_rejected(&mut self) -> u64 {
        std::mem::take(&mut self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
    use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};

    use super::*;
    use crate::audit::{Action, AuditEvent, AuditRecord};

    /// Accepts every export with one record rejected for good.
    struct Moody(Arc<AtomicU32>);

    #[tonic::async_trait]
    impl LogsService for Moody {
        async fn export(
            &self,
            _: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let partial = ExportLogsPartialSuccess { rejected_log_records: 1, error_message: "too old".into() };
            Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: Some(partial) }))
        }
    }

    #[test]
    fn a_failed_export_confirms_nothing_and_records_rejected_for_good_are_counted() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = format!("name = \"o\"\nkind = \"otlp\"\nendpoint = \"http://127.0.0.1:{port}\"\n");
        let mut d = OtlpDest::new(&toml::from_str(&text).unwrap()).unwrap();
        let record = AuditRecord::new(Action::TokenMinted, Outcome::Ok);
        let item = Item::Event(AuditEvent { sequence: 1, time_ms: 1, prev_hash: [0; 32], hash: [1; 32], record });
        let end = SinkCursor { event_sequence: 1, checkpoint_sequence: 0 };
        // No collector yet: the export fails and confirms nothing.
        let e = d.send(std::slice::from_ref(&item), end).unwrap_err();
        assert!(e.contains(&port.to_string()), "{e}");
        assert_eq!(d.confirm().unwrap(), None, "a failed export confirms nothing");
        let server_rt = tokio::runtime::Runtime::new().unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        server_rt.block_on(async {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            let svc = LogsServiceServer::new(Moody(calls.clone()));
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
        });
        d.send(std::slice::from_ref(&item), end).unwrap();
        assert_eq!(d.confirm().unwrap(), Some(end));
        assert_eq!((d.take_rejected(), d.take_rejected()), (1, 0), "counted once");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
