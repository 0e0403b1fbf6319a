//! What every handler of the console shares: the doors (`guard`), the way to the log
//! (`source`), and the page a refused request gets. A leaf below the pages, so no page
//! imports the router above it.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::guard::{Access, Refusal};
use super::html;
use super::source::Source;

/// The console's state.
pub struct Console {
    pub access: Access,
    pub source: Source,
    /// Turns true when the console stops: the live streams and exports end, so the
    /// graceful shutdown does not wait on a browser tab.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Console {
    /// Completes when the console stops.
    pub async fn stopped(&self) {
        let mut s = self.stopping.clone();
        let _ = s.wait_for(|s| *s).await;
    }
}

pub type Shared = Arc<Console>;

/// The page a refused request gets.
pub fn refused(r: Refusal) -> Response {
    let status = if r == Refusal::NoSession { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Refused · pogo-vault audit</title></head>\
         <body><h1>Refused</h1><p id=\"refused\">{}</p></body></html>\n",
        html::esc(r.message())
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}
