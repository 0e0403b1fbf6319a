//! An audit event as the security team's files hold it: one JSON object per line, or CSV
//! with a header. `pogo-vault audit list/export` and the console's export links write the
//! same fields in the same form, so a file from either reads the same.

use crate::proto::v1 as pb;

/// A wire time as RFC 3339, to the millisecond the log keeps.
pub fn time_str(t: &Option<prost_types::Timestamp>) -> String {
    let ms = t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The event as one JSON object.
pub fn event_json(e: &pb::AuditEvent) -> serde_json::Value {
    serde_json::json!({
        "sequence": e.sequence, "time": time_str(&e.time), "caller": e.caller, "caller_serial": e.caller_serial,
        "action": e.action, "tenant_id": e.tenant_id, "key_version": e.key_version, "outcome": e.outcome,
        "upstream_status": e.upstream_status, "token_fingerprint": e.token_fingerprint, "detail": e.detail,
        "request_id": e.request_id, "peer": e.peer, "hash": e.hash,
    })
}

/// The CSV header line, the fields of [`event_csv`] in order.
pub const CSV_HEADER: &str = "sequence,time,caller,caller_serial,action,tenant_id,key_version,outcome,upstream_status,token_fingerprint,detail,request_id,peer,hash";

fn csv_field(s: &str) -> String {
    // A field a spreadsheet would run as a formula is prefixed with a quote mark
    // (OWASP's CSV injection advice): details and caller names come from callers.
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// The event as one CSV line (no line end).
pub fn event_csv(e: &pb::AuditEvent) -> String {
    [
        e.sequence.to_string(),
        time_str(&e.time),
        e.caller.clone(),
        e.caller_serial.clone(),
        e.action.clone(),
        e.tenant_id.clone(),
        e.key_version.to_string(),
        e.outcome.clone(),
        e.upstream_status.to_string(),
        e.token_fingerprint.clone(),
        e.detail.clone(),
        e.request_id.clone(),
        e.peer.clone(),
        e.hash.clone(),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_defuses_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
        let e = pb::AuditEvent { sequence: 3, detail: "x,y".into(), ..Default::default() };
        assert_eq!(event_csv(&e).split(',').count(), CSV_HEADER.split(',').count() + 1, "one comma inside quotes");
    }
}
