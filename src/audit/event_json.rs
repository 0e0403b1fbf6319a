//! The JSON form of an event: what `audit export --format jsonl` writes per line and what
//! the audit sinks send. Every field of the record, its time in RFC 3339 and in Unix ms, and
//! both hashes in hex, so a reader can check the chain without the database.

use serde::Serialize;

use super::format_time_ms;
use super::record::AuditEvent;
use crate::crypto::secret::hex;

/// One event as a JSON object (the `jsonl` export's line, without its line end).
pub(super) fn event_json(e: &AuditEvent) -> String {
    // Serialising strings, integers and options cannot fail.
    serde_json::to_string(&JsonEvent::of(e)).unwrap_or_default()
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    sequence: i64,
    time: String,
    time_ms: i64,
    caller: &'a str,
    caller_serial: &'a str,
    action: &'static str,
    tenant_id: Option<&'a str>,
    key_version: Option<i64>,
    outcome: &'static str,
    upstream_status: Option<u16>,
    token_fingerprint: Option<&'a str>,
    detail: &'a str,
    request_id: &'a str,
    peer: &'a str,
    prev_hash: String,
    hash: String,
}

impl<'a> JsonEvent<'a> {
    fn of(e: &'a AuditEvent) -> Self {
        let r = &e.record;
        JsonEvent {
            sequence: e.sequence,
            time: format_time_ms(e.time_ms),
            time_ms: e.time_ms,
            caller: &r.caller,
            caller_serial: &r.caller_serial,
            action: r.action.as_str(),
            tenant_id: r.tenant_id.as_deref(),
            key_version: r.key_version,
            outcome: r.outcome.as_str(),
            upstream_status: r.upstream_status,
            token_fingerprint: r.token_fingerprint.as_deref(),
            detail: &r.detail,
            request_id: &r.request_id,
            peer: &r.peer,
            prev_hash: hex(&e.prev_hash),
            hash: hex(&e.hash),
        }
    }
}
