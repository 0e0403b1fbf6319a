//! The OTLP sink: events and checkpoints as OpenTelemetry log records, exported over OTLP/gRPC
//! (`LogsService/Export`) to a collector, which forwards them wherever the platform sends
//! logs. One record per item: the body is the item's JSON (as the file sink writes it), the
//! attributes name the kind and sequence and, for an event, its action, outcome, caller and
//! tenant; the timestamp is the item's own.
//!
//! Acknowledged: a batch counts as delivered when the collector answers the export. At
//! least once: an export whose answer was lost (the collector stopped mid-request) is sent
//! again; every record carries its sequence. A collector that rejects records for good
//! (`partial_success`, which OTLP says must not be retried) is reported as an alarm and the
//! batch counts as delivered, since sending it again cannot succeed.
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
    runtime: tokio::runtime::Runtime,
    client: LogsServiceClient<Channel>,
    endpoint: String,
    resource: Resource,
    confirmed: Option<SinkCursor>,
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP sink's runtime: {e}"))?;
        let endpoint = target.endpoint(EXPORT_TIMEOUT)?;
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
        Ok(OtlpDest { runtime, client: LogsServiceClient::new(channel), endpoint: url, resource, confirmed: None })
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
        let answer =
            self.runtime.block_on(async move { tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await });
        let answer = match answer {
            Err(_) => return Err(format!("{}: no answer within {EXPORT_TIMEOUT:?}", self.endpoint)),
            // The status's code and message only: a collector's message names its own reason.
            Ok(Err(status)) => return Err(format!("{}: {:?}: {}", self.endpoint, status.code(), status.message())),
            Ok(Ok(a)) => a.into_inner(),
        };
        if let Some(p) = answer.partial_success.filter(|p| p.rejected_log_records > 0) {
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
}
