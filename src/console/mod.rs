//! `pogo-vault audit console`: the security team's web page over the audit log, run on the
//! auditor's own machine.
//!
//! ```text
//! browser ─http, loopback─▶ guard (peer, Host, one-time login → session cookie, CSP)
//!         ─▶ pages / live / export (render what the vault answered, every value escaped)
//!         ─▶ source ─gRPC, mutual TLS, the auditor's certificate─▶ the vault's AuditService
//! ```
//!
//! Invariants:
//! - The console is a client of the vault like `audit list`: it holds the auditor's
//!   certificate and nothing of the vault. It shows only what `ListAuditEvents`,
//!   `WatchAuditEvents`, `GetStatus` and `VerifyAuditLog` answer the auditor's role (the
//!   log holds no secret: DESIGN.md §3.1), and each of those reads is audited by the vault.
//! - It keeps no copy of the log and writes no file. The one thing it remembers is the last
//!   verification it ran, for the panel.
//! - It answers only on loopback, only to requests naming its own address, and only after
//!   the one-time login link (`guard.rs`).
//! - Server-rendered HTML; the table, filters, paging, views and exports work with
//!   JavaScript off. The assets are compiled into the binary: no CDN, no build step.

mod charts;
pub mod export;
pub mod filter;
mod guard;
mod html;
mod live;
mod pages;
mod source;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use guard::Access;
use source::Source;
use state::{Console, Shared, refused};

/// The console could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// `--listen` is not a loopback address.
    #[error("--listen: {0} is not a loopback address; the audit console serves only this machine (use 127.0.0.1:PORT)")]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("--listen: cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// A console bound to its address, ready to serve.
pub struct Bound {
    listener: tokio::net::TcpListener,
    login_url: String,
    console: Shared,
    stop: tokio::sync::watch::Sender<bool>,
}

/// How long a stopping console waits for answers still being written.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds the console at `listen` (loopback only) for the vault behind `channel`;
/// verifications start from `root_key` (`ed25519:...`) when the auditor gave one.
pub async fn bind(
    listen: SocketAddr,
    channel: tonic::transport::Channel,
    endpoint: &str,
    root_key: Option<String>,
) -> Result<Bound, ConsoleError> {
    if !listen.ip().is_loopback() {
        return Err(ConsoleError::NotLoopback(listen));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ConsoleError::Bind { addr: listen, reason: e.to_string() })?;
    let addr = listener.local_addr().map_err(|e| ConsoleError::Bind { addr: listen, reason: e.to_string() })?;
    let (access, token) = Access::new(addr);
    let login_url = format!("http://{addr}/login?token={token}");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let console = Arc::new(Console { access, source: Source::new(channel, endpoint.to_owned(), root_key), stopping });
    Ok(Bound { listener, login_url, console, stop })
}

impl Bound {
    /// The one-time login link: print it on the auditor's terminal, nowhere else.
    pub fn login_url(&self) -> &str {
        &self.login_url
    }

    /// Serves until `shutdown` completes; then live streams and exports end, and answers
    /// still being written get [`DRAIN`] to finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let app = router(self.console);
        let mut stopped = self.stop.subscribe();
        let stop = self.stop;
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let serving = axum::serve(self.listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(signal);
        tokio::select! {
            r = serving => r,
            _ = async {
                let _ = stopped.wait_for(|s| *s).await;
                tokio::time::sleep(DRAIN).await;
            } => Ok(()),
        }
    }
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/login", get(pages::login))
        .route("/", get(pages::events))
        .route("/tenant", get(pages::tenant))
        .route("/caller", get(pages::caller))
        .route("/charts", get(pages::charts))
        .route("/verify", get(pages::verify_panel).post(pages::verify_now))
        .route("/live", get(live::live_page))
        .route("/live/events", get(live::events))
        .route("/export.csv", get(live::export_csv))
        .route("/export.jsonl", get(live::export_jsonl))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(console.clone(), gate))
        .with_state(console)
}

/// The guard in front of every route (see `guard.rs`), and the security headers on every
/// answer, refusals included.
async fn gate(
    State(c): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let (host, fetch_site) = {
        let h = req.headers();
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (header("host"), header("sec-fetch-site"))
    };
    let admitted = c.access.admit(peer, host.as_deref(), fetch_site.as_deref()).and_then(|()| {
        if req.uri().path() == "/login" {
            return Ok(());
        }
        let cookie = req.headers().get(header::COOKIE).and_then(|v| v.to_str().ok());
        let session = c.access.session(cookie)?;
        req.extensions_mut().insert(session);
        Ok(())
    });
    let mut resp = match admitted {
        Ok(()) => next.run(req).await,
        Err(r) => refused(r),
    };
    for (k, v) in guard::HEADERS {
        resp.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    resp
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("assets/console.css"))
}

async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("assets/console.js"))
}
