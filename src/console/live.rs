//! What streams: the live view (a page, then `WatchAuditEvents` relayed to the browser as
//! server-sent events) and the exports (every page of a filter, written as it arrives, so
//! a large export never sits whole in memory).

use std::convert::Infallible;
use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use tokio_stream::wrappers::ReceiverStream;

use super::export::{CSV_HEADER, event_csv, event_json};
use super::filter::{Filter, query_map};
use super::html::{error_box, events_table, page};
use super::source::MAX_PAGE;
use super::state::Shared;

/// Rows the live page starts with (and keeps: older ones leave as new ones come).
const LIVE_ROWS: usize = 100;

/// The live page: the newest events (newest first), then whatever the vault commits,
/// put in sequence order by `assets/console.js`. Without JavaScript, a reload shows the
/// newer events.
async fn render(c: &Shared) -> String {
    let mut body = String::new();
    // Follow from just after the newest event shown, so nothing committed after the page
    // was made is missed. When the newest could not be read, from just after the newest
    // signed checkpoint (at most a second old while events flow): the events since then
    // are relayed too, and the script drops any already shown.
    let (events, from) = match c.source.newest(&Filter::default(), LIVE_ROWS, super::pages::MAX_NEWEST_READ).await {
        Ok(got) if !got.truncated => {
            body.push_str(&super::pages::newest_note(&got));
            let from = got.events.first().map_or(1, |e| e.sequence + 1);
            (got.events, from)
        }
        shown => {
            // Not the newest (or nothing): no rows, only what comes from here on.
            match &shown {
                Err(e) => body.push_str(&error_box(&e.to_string())),
                Ok(got) => body.push_str(&super::pages::newest_note(got)),
            }
            let from = match c.source.status().await {
                Ok(s) => s.last_checkpoint.map_or(0, |cp| cp.sequence + 1),
                Err(e) => {
                    body.push_str(&error_box(&e.to_string()));
                    0
                }
            };
            (Vec::new(), from)
        }
    };
    let _ = write!(
        body,
        "<p id=\"live-state\" data-from=\"{from}\">The newest events, newest first.</p>\
         <noscript><p>JavaScript is off: <a href=\"/live\">reload</a> to see newer events.</p></noscript>{}\
         <script src=\"/assets/console.js\"></script>",
        events_table("live", &events)
    );
    page("Live", "/live", c.source.endpoint(), &body)
}

pub async fn live_page(State(c): State<Shared>) -> Html<String> {
    Html(render(&c).await)
}

/// Server-sent events: each audit event as JSON (`event: audit`, `id:` its sequence). A
/// browser that reconnects sends `Last-Event-ID` and resumes after it. When the vault's
/// stream ends (the vault stopped, the log cannot be read), an `event: failed` says why
/// and the browser reconnects on its own. When the vault refuses the watch itself (too
/// many streams of this auditor, a revoked certificate or grant), `event: ended` says why
/// and the page stops: retrying would only add refusals to the log.
pub async fn events(State(c): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let q = query_map(q.as_deref());
    let last_seen = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    let from = match last_seen {
        Some(n) => n.saturating_add(1),
        None => q.get("from").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        // After a failure the browser reconnects in 2 s (not its default 3), sending the
        // last sequence it saw.
        let failed = |e: super::source::VaultError| {
            let refused = matches!(
                e.code,
                tonic::Code::ResourceExhausted | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            );
            Event::default()
                .event(if refused { "ended" } else { "failed" })
                .retry(std::time::Duration::from_secs(2))
                .data(e.to_string().replace(['\r', '\n'], " "))
        };
        let mut stream = match c.source.watch(from).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Ok(failed(e))).await;
                return;
            }
        };
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return, // the page was closed: end the watch now
                _ = c.stopped() => return, // the console stops: end the stream
                m = stream.message() => m,
            };
            let (event, last) = match next {
                Ok(Some(e)) => {
                    (Event::default().event("audit").id(e.sequence.to_string()).data(event_json(&e).to_string()), false)
                }
                Ok(None) => {
                    let e = super::source::VaultError {
                        code: tonic::Code::Unavailable,
                        message: "the vault ended the stream".into(),
                    };
                    (failed(e), true)
                }
                Err(s) => (failed(super::source::VaultError::from(s)), true),
            };
            if tx.send(Ok(event)).await.is_err() || last {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

async fn export(c: Shared, raw: Option<String>, csv: bool) -> Response {
    let q = query_map(raw.as_deref());
    let f = match Filter::from_query(&q) {
        Ok(f) => f,
        Err(e) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                Html(page("Export", "", c.source.endpoint(), &error_box(&e.to_string()))),
            )
                .into_response();
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        if csv && tx.send(Ok(format!("{CSV_HEADER}\n"))).await.is_err() {
            return;
        }
        let mut token = String::new();
        loop {
            let page = tokio::select! {
                p = c.source.page(&f, MAX_PAGE, token) => p,
                _ = c.stopped() => {
                    let _ = tx.send(Err(std::io::Error::other("the console stopped"))).await;
                    return;
                }
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    // Cut the download: a short file must not pass for a whole one.
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            for e in &page.events {
                if csv {
                    chunk.push_str(&event_csv(e));
                } else {
                    chunk.push_str(&event_json(e).to_string());
                }
                chunk.push('\n');
            }
            if tx.send(Ok(chunk)).await.is_err() || page.next_page_token.is_empty() {
                return;
            }
            token = page.next_page_token;
        }
    });
    let (kind, name) = if csv {
        ("text/csv; charset=utf-8", "pogo-vault-audit.csv")
    } else {
        ("application/x-ndjson", "pogo-vault-audit.jsonl")
    };
    (
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

pub async fn export_csv(State(c): State<Shared>, RawQuery(q): RawQuery) -> Response {
    export(c, q, true).await
}

pub async fn export_jsonl(State(c): State<Shared>, RawQuery(q): RawQuery) -> Response {
    export(c, q, false).await
}
