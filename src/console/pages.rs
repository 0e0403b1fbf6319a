//! The console's pages: login, the event table, the tenant and caller views, the charts
//! and the verification panel. Each parses its query (errors name the field), asks the
//! vault through `source`, and renders with `html`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Extension, Form, RawQuery, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use time::OffsetDateTime;

use super::charts::Chart;
use super::filter::{Filter, from_timestamp, parse_time, query_map, rfc3339};
use super::guard::Session;
use super::html::{enc, error_box, esc, events_table, filter_form, page, time_cell};
use super::state::{Shared, refused};

/// Rows per page of the event table.
const PAGE: u32 = 50;
/// At most this many events feed a tenant or caller view.
const MAX_VIEW: usize = 20_000;
/// At most this many events are read to find the newest of a filter.
pub const MAX_NEWEST_READ: usize = 20_000;
/// At most this many events feed each chart.
const MAX_CHART: usize = 20_000;

pub async fn login(State(c): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let q = query_map(q.as_deref());
    match c.access.log_in(q.get("token").map_or("", String::as_str)) {
        Ok(id) => ([(header::SET_COOKIE, c.access.cookie(&id))], Redirect::to("/")).into_response(),
        Err(r) => refused(r),
    }
}

fn truncated_note(truncated: bool, max: usize) -> String {
    if truncated {
        format!(
            "<p class=\"note\">Only the oldest {max} events of this range are counted here: narrow the time range.</p>"
        )
    } else {
        String::new()
    }
}

pub async fn events(State(c): State<Shared>, RawQuery(q): RawQuery) -> Html<String> {
    let q = query_map(q.as_deref());
    let mut body = String::new();
    match Filter::from_query(&q) {
        Err(e) => {
            body.push_str(&filter_form("/", &Filter::default()));
            body.push_str(&error_box(&e.to_string()));
        }
        Ok(f) => {
            body.push_str(&filter_form("/", &f));
            body.push_str(&quick_ranges(&f));
            let exports = format!(
                "Export this filter: <a id=\"export-csv\" href=\"/export.csv?{q}\">CSV</a> · \
                 <a id=\"export-json\" href=\"/export.jsonl?{q}\">JSON lines</a>",
                q = esc(&f.query(&[]))
            );
            let token = q.get("page").cloned().unwrap_or_default();
            if token.is_empty() && q.get("order").is_none_or(|o| o != "oldest") {
                match c.source.newest(&f, PAGE as usize, MAX_NEWEST_READ).await {
                    Err(e) => body.push_str(&error_box(&e.to_string())),
                    Ok(got) => {
                        let _ = write!(
                            body,
                            "<p class=\"bar\">The newest events of this filter, newest first \
                             (<a id=\"oldest-first\" href=\"/?{}\">page through from the oldest</a>). {exports}</p>",
                            esc(&f.query(&[("order", "oldest")]))
                        );
                        body.push_str(&newest_note(&got));
                        if !got.truncated {
                            body.push_str(&events_table("events", &got.events));
                        }
                    }
                }
                return Html(page("Audit events", "/", c.source.endpoint(), &body));
            }
            let n: u32 = q.get("n").and_then(|n| n.parse().ok()).filter(|n| *n >= 1).unwrap_or(1);
            match c.source.page(&f, PAGE, token).await {
                Err(e) => body.push_str(&error_box(&e.to_string())),
                Ok(r) => {
                    let _ = write!(
                        body,
                        "<p class=\"bar\">Page {n}, oldest first (<a href=\"/?{}\">the newest</a>). {exports}</p>",
                        esc(&f.query(&[]))
                    );
                    body.push_str(&events_table("events", &r.events));
                    body.push_str("<p class=\"paging\">");
                    if n > 1 {
                        let _ = write!(body, "<a href=\"/?{}\">First page</a> ", esc(&f.query(&[("order", "oldest")])));
                    }
                    if !r.next_page_token.is_empty() {
                        let next = n.saturating_add(1).to_string();
                        let _ = write!(
                            body,
                            "<a id=\"next\" href=\"/?{}\">Next page</a>",
                            esc(&f.query(&[("page", &r.next_page_token), ("n", &next)]))
                        );
                    }
                    body.push_str("</p>");
                }
            }
        }
    }
    Html(page("Audit events", "/", c.source.endpoint(), &body))
}

/// Links to the same filter over the last hour and the last day.
fn quick_ranges(f: &Filter) -> String {
    let now = OffsetDateTime::now_utc();
    let mut s = String::from("<p class=\"bar\">Events of the ");
    for (label, back) in [("last hour", time::Duration::hours(1)), ("last 24 hours", time::Duration::hours(24))] {
        let g = Filter { since: Some(now - back), until: None, ..f.clone() };
        let _ = write!(s, "<a href=\"/?{}\">{label}</a> · ", esc(&g.query(&[])));
    }
    s.push_str("or the <a href=\"/live\">live view</a>.</p>");
    s
}

/// The form of the tenant and caller views: the id and the time range.
fn id_form(action: &str, label: &str, id: &str, f: &Filter) -> String {
    let time = |t: Option<OffsetDateTime>| t.map(rfc3339).unwrap_or_default();
    format!(
        "<form class=\"filter\" method=\"get\" action=\"{action}\"><label>{label} <input name=\"id\" id=\"id\" value=\"{}\" size=\"60\"></label> \
         <label>Since (UTC) <input name=\"since\" value=\"{}\"></label><label>Until (UTC) <input name=\"until\" value=\"{}\"></label> \
         <button type=\"submit\">Show</button></form>",
        esc(id),
        esc(&time(f.since)),
        esc(&time(f.until))
    )
}

/// The id and range of a tenant or caller view: the range defaults to the last 30 days.
fn view_query(
    q: &BTreeMap<String, String>,
    field: &'static str,
) -> (String, Result<Filter, super::filter::FieldError>) {
    let id = q.get("id").map(|s| s.trim().to_owned()).unwrap_or_default();
    let mut q = q.clone();
    q.remove("tenant");
    q.remove("caller");
    q.entry("since".into()).or_insert_with(|| rfc3339(OffsetDateTime::now_utc() - time::Duration::days(30)));
    q.insert(field.into(), id.clone());
    let f = Filter::from_query(&q).map_err(|e| super::filter::FieldError {
        field: if e.field == field { "id" } else { e.field },
        reason: e.reason,
    });
    (id, f)
}

/// First and last time of a group of events.
#[derive(Default)]
struct Span {
    count: u64,
    first: Option<OffsetDateTime>,
    last: Option<OffsetDateTime>,
}

impl Span {
    fn add(&mut self, t: Option<OffsetDateTime>) {
        self.count += 1;
        self.first = self.first.or(t);
        self.last = t.or(self.last);
    }
    fn cells(&self) -> String {
        let show =
            |t: Option<OffsetDateTime>| t.map(|t| rfc3339(t.replace_nanosecond(0).unwrap_or(t)).replace('T', " "));
        format!(
            "<td>{}</td><td>{}</td><td>{}</td>",
            self.count,
            esc(&show(self.first).unwrap_or_default()),
            esc(&show(self.last).unwrap_or_default())
        )
    }
}

/// The newest events of a tenant or caller view (`whose`: "tenant" or "caller"), newest
/// first, as a table (`#tenant-events`, `#caller-events`) under a link to all of them.
async fn newest_section(c: &Shared, f: &Filter, whose: &str) -> String {
    let table = match c.source.newest(f, PAGE as usize, MAX_NEWEST_READ).await {
        Ok(got) if got.truncated => newest_note(&got),
        Ok(got) => newest_note(&got) + events_table(&format!("{whose}-events"), &got.events).as_str(),
        Err(e) => error_box(&e.to_string()),
    };
    format!(
        "<h2>Newest events</h2><p><a href=\"/?{}\">All events of this {whose} in the table</a></p>{table}",
        esc(&f.query(&[]))
    )
}

/// What a short or unreachable "newest" answer means, said above it.
pub fn newest_note(got: &super::source::Newest) -> String {
    if got.truncated {
        format!(
            "<p class=\"note\">More than {MAX_NEWEST_READ} events matched in the minute before the end of this range: the \
             newest cannot be shown. Narrow the filter, page through from the oldest, or use the live view.</p>"
        )
    } else if got.short {
        format!(
            "<p class=\"note\">The {} newest events only: the wider range before them holds more than {MAX_NEWEST_READ} \
             events. Narrow the filter to see further back.</p>",
            got.events.len()
        )
    } else {
        String::new()
    }
}

/// Who touched this customer's key, when, with what outcome.
pub async fn tenant(State(c): State<Shared>, RawQuery(q): RawQuery) -> Html<String> {
    let q = query_map(q.as_deref());
    let (id, f) = view_query(&q, "tenant");
    let mut body = id_form("/tenant", "Tenant id", &id, f.as_ref().unwrap_or(&Filter::default()));
    let f = match f {
        Ok(f) => f,
        Err(e) => {
            body.push_str(&error_box(&e.to_string()));
            return Html(page("Tenant", "/tenant", c.source.endpoint(), &body));
        }
    };
    if !id.is_empty() {
        // A summary, not the events: a view of 20,000 long events stays small.
        let mut groups: BTreeMap<(String, String, String), Span> = BTreeMap::new();
        let read = c.source.scan(&f, MAX_VIEW, |e| {
            let t = from_timestamp(&e.time);
            groups.entry((e.caller, e.action, e.outcome)).or_default().add(t);
        });
        match read.await {
            Err(e) => body.push_str(&error_box(&e.to_string())),
            Ok(truncated) => {
                body.push_str(&truncated_note(truncated, MAX_VIEW));
                let _ = write!(
                    body,
                    "<h2>Who touched tenant {}</h2><table id=\"tenant-summary\" class=\"numbers\"><thead><tr><th>Caller</th><th>Action</th>\
                     <th>Outcome</th><th>Events</th><th>First (UTC)</th><th>Last (UTC)</th></tr></thead><tbody>",
                    esc(&id)
                );
                for ((caller, action, outcome), span) in &groups {
                    let _ = write!(
                        body,
                        "<tr class=\"{o}\"><td><a href=\"/caller?id={ce}\">{c}</a></td><td>{a}</td><td>{o}</td>{cells}</tr>",
                        ce = esc(&enc(caller)),
                        c = esc(caller),
                        a = esc(action),
                        o = esc(outcome),
                        cells = span.cells()
                    );
                }
                body.push_str("</tbody></table>");
                body.push_str(
                    "<p class=\"note\">A caller refused for want of the role is refused before its request is read, so \
                     that record names no tenant: find those under <a href=\"/?outcome=denied\">denied events</a>.</p>",
                );
                body.push_str(&newest_section(&c, &f, "tenant").await);
            }
        }
    }
    Html(page("Tenant", "/tenant", c.source.endpoint(), &body))
}

/// Which tenants this caller reached, how often, with what outcome.
pub async fn caller(State(c): State<Shared>, RawQuery(q): RawQuery) -> Html<String> {
    let q = query_map(q.as_deref());
    let (id, f) = view_query(&q, "caller");
    let mut body = id_form("/caller", "Caller identity", &id, f.as_ref().unwrap_or(&Filter::default()));
    let f = match f {
        Ok(f) => f,
        Err(e) => {
            body.push_str(&error_box(&e.to_string()));
            return Html(page("Caller", "/caller", c.source.endpoint(), &body));
        }
    };
    if !id.is_empty() {
        // tenant → (tokens handed out, denied, errors, all events with their span)
        let mut per: BTreeMap<String, (u64, u64, u64, Span)> = BTreeMap::new();
        let read = c.source.scan(&f, MAX_VIEW, |e| {
            let row = per.entry(e.tenant_id).or_default();
            row.0 += u64::from(e.action == "token_minted" && e.outcome == "ok");
            row.1 += u64::from(e.outcome == "denied");
            row.2 += u64::from(e.outcome == "error");
            row.3.add(from_timestamp(&e.time));
        });
        match read.await {
            Err(e) => body.push_str(&error_box(&e.to_string())),
            Ok(truncated) => {
                body.push_str(&truncated_note(truncated, MAX_VIEW));
                let _ = write!(
                    body,
                    "<h2>Tenants reached by {}</h2><table id=\"caller-tenants\" class=\"numbers\"><thead><tr><th>Tenant</th>\
                     <th>Tokens handed out</th><th>Denied</th><th>Errors</th><th>Events</th><th>First (UTC)</th><th>Last (UTC)</th></tr></thead><tbody>",
                    esc(&id)
                );
                for (tenant, (tokens, denied, errors, span)) in &per {
                    let name = if tenant.is_empty() {
                        "(no tenant)".to_owned()
                    } else {
                        format!("<a href=\"/tenant?id={}\">{}</a>", esc(&enc(tenant)), esc(tenant))
                    };
                    let _ = write!(
                        body,
                        "<tr><td>{name}</td><td>{tokens}</td><td>{denied}</td><td>{errors}</td>{}</tr>",
                        span.cells()
                    );
                }
                body.push_str("</tbody></table>");
                body.push_str(&newest_section(&c, &f, "caller").await);
            }
        }
    }
    Html(page("Caller", "/caller", c.source.endpoint(), &body))
}

/// Tokens handed out and denials over time, per caller.
pub async fn charts(State(c): State<Shared>, RawQuery(q): RawQuery) -> Html<String> {
    let mut q = query_map(q.as_deref());
    let now = OffsetDateTime::now_utc();
    // The range defaults to the 24 hours before `until` (default: now); only a caller
    // filters besides.
    let until = parse_time("until", q.get("until").map_or("", String::as_str)).ok().flatten().unwrap_or(now);
    q.entry("until".into()).or_insert_with(|| rfc3339(until));
    q.entry("since".into()).or_insert_with(|| rfc3339(until - time::Duration::hours(24)));
    q.retain(|k, _| ["since", "until", "caller"].contains(&k.as_str()));
    let mut body = String::new();
    let base = match Filter::from_query(&q) {
        Ok(f) => f,
        Err(e) => {
            body.push_str(&error_box(&e.to_string()));
            Filter { since: Some(now - time::Duration::hours(24)), until: Some(now), ..Filter::default() }
        }
    };
    let (since, until) = (base.since.unwrap_or(now), base.until.unwrap_or(now));
    let caller = base.caller.clone();
    let _ = write!(
        body,
        "<form class=\"filter\" method=\"get\" action=\"/charts\"><label>Since (UTC) <input name=\"since\" value=\"{}\"></label>\
         <label>Until (UTC) <input name=\"until\" value=\"{}\"></label><label>Caller <input name=\"caller\" value=\"{}\"></label>\
         <button type=\"submit\">Draw</button></form>",
        esc(&rfc3339(since)),
        esc(&rfc3339(until)),
        esc(&caller)
    );
    let tokens = Filter { action: "token_minted".into(), outcome: "ok".into(), ..base.clone() };
    let denials = Filter { outcome: "denied".into(), ..base };
    for (f, id, title) in [(tokens, "tokens", "Tokens handed out"), (denials, "denials", "Denials (every action)")] {
        // Only what a bar needs: the time and the caller.
        let mut points = Vec::new();
        let read = c.source.scan(&f, MAX_CHART, |e| {
            points.push(crate::proto::v1::AuditEvent { time: e.time, caller: e.caller, ..Default::default() })
        });
        match read.await {
            Err(e) => body.push_str(&error_box(&e.to_string())),
            Ok(truncated) => {
                let chart = Chart::of(&points, since, until);
                body.push_str(&truncated_note(truncated, MAX_CHART));
                body.push_str(&chart.svg(&format!("{id}-chart"), &format!("{title}: {} in all", chart.total())));
                let _ = write!(
                    body,
                    "<details><summary>The numbers</summary>{}</details>",
                    chart.table(&format!("{id}-numbers"))
                );
            }
        }
    }
    Html(page("Charts", "/charts", c.source.endpoint(), &body))
}

fn age(t: OffsetDateTime) -> String {
    let s = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// The verification panel: the log's health, the newest checkpoint, the witnesses, and
/// the last verification run from here, with the button that runs one.
pub async fn verify_panel(State(c): State<Shared>, Extension(session): Extension<Session>) -> Html<String> {
    let mut body = String::from("<section id=\"verification\">");
    if let Some(v) = c.source.last_verification() {
        let _ =
            write!(body, "<p class=\"when\">Verified from this console {} ({}).</p>", esc(&rfc3339(v.at)), age(v.at));
        match &v.result {
            Ok(r) if r.ok => {
                let through = v.through.as_ref().map_or(0, |c| c.sequence);
                let _ = write!(
                    body,
                    "<p id=\"verdict\" class=\"ok\">The log verifies: the vault reports that the hash chain and every \
                     signature hold through sequence {through} at least; {} events checked, head hash {}.</p>",
                    r.events_checked,
                    esc(&r.head_hash)
                );
                let _ = write!(body, "<p class=\"note\" id=\"detail\">{}</p>", esc(&r.detail));
                // After `audit archive`, a kept checkpoint in the archived range is not
                // checked by the vault (its detail says so): claim nothing for it.
                let kept_checked = !r.detail.contains("are not checked here");
                match &v.kept {
                    Some((k, _)) if !kept_checked => {
                        let _ = write!(
                            body,
                            "<p id=\"kept\" class=\"note\">This console's last checkpoint (sequence {}) is in the archived \
                             range and was not checked here: verify the archives with <code>audit verify --archive</code>.</p>",
                            k.sequence
                        );
                    }
                    Some((k, at)) => {
                        let _ = write!(
                            body,
                            "<p id=\"kept\">No event up to sequence {} was removed since this console's run at {}: \
                             that run's checkpoint was handed back for the vault to check.</p>",
                            k.sequence,
                            esc(&rfc3339(*at))
                        );
                    }
                    None => body.push_str(
                        "<p id=\"kept\" class=\"note\">First run from this console: nothing yet proves that the newest \
                         events were not cut before it. Verify again later: this run's checkpoint is kept and checked then.</p>",
                    ),
                }
                if !c.source.pinned() {
                    body.push_str(
                        "<p class=\"note\">Verified from the first signing key the log names. Start the console with \
                         <code>--public-key</code> (your own copy of the vault's audit public key) to verify from a key you hold.</p>",
                    );
                }
                if !r.warning.is_empty() {
                    let _ = write!(body, "<p class=\"note\">{}</p>", esc(&r.warning));
                }
            }
            Ok(r) if r.first_bad_sequence > 0 => {
                let _ = write!(
                    body,
                    "<p id=\"verdict\" class=\"denied\">The log does NOT verify: the chain breaks at sequence {}. {}</p>",
                    r.first_bad_sequence,
                    esc(&r.detail)
                );
            }
            Ok(r) => {
                let _ =
                    write!(body, "<p id=\"verdict\" class=\"denied\">The log does NOT verify: {}</p>", esc(&r.detail));
            }
            Err(e) => {
                let _ = write!(
                    body,
                    "<p id=\"verdict\" class=\"error\">The vault could not verify: {}</p>",
                    esc(&e.to_string())
                );
            }
        }
    } else {
        body.push_str("<p id=\"verdict\">Not verified from this console yet.</p>");
    }
    body.push_str(
        "<p class=\"note\">The vault runs this verification on its own log. For one that trusts nothing of the vault, \
         run <code>pogo-vault audit verify</code> on a copy of the audit database with your public key and a \
         checkpoint kept outside the vault (or a witness file).</p>",
    );
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/verify\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" id=\"verify-button\">Verify the log now</button></form>",
        esc(&session.csrf)
    );
    match c.source.status().await {
        // Reading the status is itself recorded: while the log cannot be written, the
        // vault refuses it, and that refusal is the answer.
        Err(e) if e.code == tonic::Code::Unavailable => body.push_str(&error_box(&format!(
            "The vault answers UNAVAILABLE: its audit log may be failing (every request that needs a record is \
             refused meanwhile). {}",
            e.message
        ))),
        Err(e) => body.push_str(&error_box(&e.to_string())),
        Ok(s) => {
            let health = if s.audit_healthy { "healthy" } else { "FAILING: requests that need a record are refused" };
            let _ = write!(
                body,
                "<p class=\"note\">Vault {} (schema {}), health {}.</p>",
                esc(&s.version),
                s.schema_version,
                esc(&s.health)
            );
            let _ = write!(body, "<h2>The log now</h2><dl><dt>Audit log</dt><dd id=\"audit-health\">{health}</dd>");
            match &s.last_checkpoint {
                Some(cp) if cp.sequence > 0 => {
                    let when = from_timestamp(&cp.time);
                    let _ = write!(
                        body,
                        "<dt>Newest signed checkpoint</dt><dd id=\"checkpoint\">sequence {}, signed {} ({}) with key {}</dd>",
                        cp.sequence,
                        esc(&time_cell(&cp.time)),
                        when.map(age).unwrap_or_default(),
                        esc(&cp.key_id)
                    );
                }
                _ => body.push_str("<dt>Newest signed checkpoint</dt><dd id=\"checkpoint\">none yet</dd>"),
            }
            body.push_str("</dl><h2>Witnesses</h2>");
            if s.audit_witnesses.is_empty() {
                body.push_str("<p id=\"witnesses\">No witness is configured (<code>[audit.witness]</code>).</p>");
            } else {
                body.push_str(
                    "<table id=\"witnesses\" class=\"numbers\"><thead><tr><th>Witness</th><th>State</th><th>Delivered</th>\
                     <th>Newest delivered</th><th>Backlog</th><th>Failures</th><th>Dropped</th><th>Last error</th></tr></thead><tbody>",
                );
                for w in &s.audit_witnesses {
                    let _ = write!(
                        body,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&w.name),
                        if w.failing { "failing" } else { "delivering" },
                        w.delivered,
                        w.last_delivered_sequence,
                        w.backlog,
                        w.failures,
                        w.dropped,
                        esc(&w.last_error)
                    );
                }
                body.push_str("</tbody></table>");
            }
        }
    }
    body.push_str("</section>");
    Html(page("Verification", "/verify", c.source.endpoint(), &body))
}

/// The button: checks the form's CSRF token, runs the verification, shows the panel.
pub async fn verify_now(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = session.csrf_ok(form.get("csrf").map_or("", String::as_str)) {
        return refused(r);
    }
    c.source.verify().await;
    Redirect::to("/verify").into_response()
}
