//! The console's HTML, rendered on the server: the page frame, the event table, the filter
//! form. Every value that comes from the log or the query string passes through [`esc`]
//! (the log holds caller identities from certificates and free-text details, which an
//! attacker with a certificate chooses); nothing else is written raw. Pages work with
//! JavaScript off: the table, filters, paging, views and exports are links and forms; the
//! one script (`assets/console.js`) only feeds the live view.

use std::fmt::Write as _;

use super::filter::{Filter, OUTCOMES, from_timestamp, rfc3339};
use crate::proto::v1 as pb;

/// Escapes text for an HTML element or a double- or single-quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A link's query value, percent-encoded (then escaped where it is written).
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The pages of the navigation bar: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Events"),
    ("/live", "Live"),
    ("/charts", "Charts"),
    ("/tenant", "Tenant"),
    ("/caller", "Caller"),
    ("/verify", "Verification"),
];

/// A whole page: title, navigation (the current one marked), then `body`.
pub fn page(title: &str, current: &str, endpoint: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, label) in NAV {
        let here = if *path == current { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"{path}\"{here}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · pogo-vault audit</title><link rel=\"stylesheet\" href=\"/assets/console.css\"></head>\
         <body><header><strong>pogo-vault audit</strong><nav>{nav}</nav><span class=\"vault\">vault {e}</span></header>\
         <main><h1>{t}</h1>{body}</main></body></html>\n",
        t = esc(title),
        e = esc(endpoint),
    )
}

/// An error box (a field that did not parse, or the vault's answer).
pub fn error_box(text: &str) -> String {
    format!("<p class=\"error\" role=\"alert\">{}</p>", esc(text))
}

/// A time as the table shows it: UTC to the second.
pub fn time_cell(t: &Option<prost_types::Timestamp>) -> String {
    match from_timestamp(t) {
        Some(t) => {
            let s = rfc3339(t.replace_nanosecond(0).unwrap_or(t));
            s.replace('T', " ")
        }
        None => "?".into(),
    }
}

/// The filter form of the event table (GET, so it works without JavaScript and the
/// address bar keeps the filter).
pub fn filter_form(action: &str, f: &Filter) -> String {
    let time = |t: Option<time::OffsetDateTime>| t.map(rfc3339).unwrap_or_default();
    let mut outcomes = String::from("<option value=\"\">any</option>");
    for o in OUTCOMES {
        let sel = if f.outcome == *o { " selected" } else { "" };
        let _ = write!(outcomes, "<option{sel}>{o}</option>");
    }
    format!(
        "<form class=\"filter\" method=\"get\" action=\"{action}\">\
         <label>Since (UTC) <input name=\"since\" id=\"since\" value=\"{since}\" placeholder=\"2026-12-02T08:00\"></label>\
         <label>Until (UTC) <input name=\"until\" id=\"until\" value=\"{until}\" placeholder=\"2026-12-02T18:00\"></label>\
         <label>Caller <input name=\"caller\" id=\"caller\" value=\"{caller}\" placeholder=\"spiffe://…\"></label>\
         <label>Tenant <input name=\"tenant\" id=\"tenant\" value=\"{tenant}\"></label>\
         <label>Action <input name=\"action\" id=\"action\" value=\"{act}\" placeholder=\"token_minted\"></label>\
         <label>Outcome <select name=\"outcome\" id=\"outcome\">{outcomes}</select></label>\
         <button type=\"submit\" id=\"apply\">Apply</button> <a href=\"{action}\">Clear</a></form>",
        action = esc(action),
        since = esc(&time(f.since)),
        until = esc(&time(f.until)),
        caller = esc(&f.caller),
        tenant = esc(&f.tenant),
        act = esc(&f.action),
    )
}

/// The event table: one row per event, caller and tenant linking to their views.
pub fn events_table(id: &str, events: &[pb::AuditEvent]) -> String {
    let mut s = format!(
        "<table id=\"{id}\" class=\"events\"><thead><tr><th>Seq</th><th>Time (UTC)</th><th>Caller</th><th>Action</th>\
         <th>Tenant</th><th>Outcome</th><th>Detail</th><th>Peer</th></tr></thead><tbody>"
    );
    for e in events {
        s.push_str(&event_row(e));
    }
    s.push_str("</tbody></table>");
    if events.is_empty() {
        s.push_str("<p class=\"empty\">No events.</p>");
    }
    s
}

fn event_row(e: &pb::AuditEvent) -> String {
    let link = |view: &str, v: &str| {
        if v.is_empty() { String::new() } else { format!("<a href=\"/{view}?id={}\">{}</a>", esc(&enc(v)), esc(v)) }
    };
    format!(
        "<tr data-seq=\"{seq}\" class=\"{outcome}\"><td>{seq}</td><td>{time}</td><td>{caller}</td><td>{action}</td>\
         <td>{tenant}</td><td>{outcome_text}</td><td class=\"detail\">{detail}</td><td>{peer}</td></tr>",
        seq = e.sequence,
        outcome = esc(&e.outcome),
        time = time_cell(&e.time),
        caller = link("caller", &e.caller),
        action = esc(&e.action),
        tenant = link("tenant", &e.tenant_id),
        outcome_text = esc(&e.outcome),
        detail = esc(&e.detail),
        peer = esc(&e.peer),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_hostile_detail_is_text_not_markup() {
        let e = pb::AuditEvent {
            sequence: 7,
            caller: "spiffe://x/\"><script>alert(1)</script>".into(),
            tenant_id: "t'1".into(),
            detail: "<img src=x onerror=alert(1)>".into(),
            outcome: "ok\" onmouseover=\"x".into(),
            ..Default::default()
        };
        let row = event_row(&e);
        assert!(!row.contains("<script>") && !row.contains("<img"), "{row}");
        assert!(!row.contains("ok\" onmouseover"), "{row}");
        assert!(row.contains("&lt;img src=x onerror=alert(1)&gt;"), "{row}");
        assert!(row.contains("/caller?id=spiffe%3A%2F%2Fx%2F%22%3E%3Cscript%3E"), "{row}");
    }

    proptest! {
        /// Whatever the log holds, escaped text opens no tag, attribute or entity of its own.
        #[test]
        fn escaped_text_holds_no_markup(s in any::<String>()) {
            let e = esc(&s);
            prop_assert!(!e.contains(['<', '>', '"', '\'']));
            prop_assert_eq!(e.matches('&').count(), e.matches(';').count() - s.matches(';').count());
        }
    }
}
