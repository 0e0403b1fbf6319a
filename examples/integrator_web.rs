//! The integrator's web app side of getting client keys into pogo-vault: the model to copy.
//!
//! Two ways in, both talking to the vault over mutual TLS as a `tenant-admin` caller:
//! - "Connect PowerOffice Go": begins Go's onboarding, sends the browser to Go, and on the
//!   way back completes it. The keys go from Go to the vault; this app never sees them.
//! - A settings form where a customer pastes a client key once. The app forwards it to
//!   `RegisterClientKey` (which proves it against Go first), never stores or logs it, and
//!   shows only the hint afterwards.
//!
//! What a real app adds, and this example leaves out to stay small: its own user login; the
//! tenant id taken from the logged-in customer's account (never from the form, or one
//! customer could register a key under another's id); the onboarding id bound to the
//! browser session that started it (a cookie) and checked at the callback; CSRF tokens on
//! the forms; and a connected-clients list filtered to the customer.
//!
//! Run against `pogo-vault dev` (its admin certificate):
//! ```sh
//! cargo run --example integrator_web -- https://127.0.0.1:50051 .pogo-vault-dev/certs 127.0.0.1:8080
//! ```
//! (Go must whitelist the app's callback URL; the dev simulator accepts loopback ones.)

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::onboarding_service_client::OnboardingServiceClient;
use pogo_vault::proto::v1::tenant_service_client::TenantServiceClient;
use pogo_vault::tls::ClientTlsFiles;
use serde::Deserialize;
use tonic::transport::Channel;

/// What the app needs: where the vault is, its admin identity, where to listen.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub vault_endpoint: String,
    pub tls: ClientTlsFiles,
    pub listen: SocketAddr,
    pub environment: String,
    pub tenant_prefix: String,
}

#[derive(Clone)]
struct App {
    vault: Channel,
    /// The app's own base URL, for Go's redirect back to `/callback`.
    base: String,
    environment: String,
    tenant_prefix: String,
}

/// Starts the app; returns its address and the serving task.
pub async fn start(cfg: AppConfig) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let vault = pogo_vault::client::connect(&cfg.vault_endpoint, &cfg.tls, None)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let app =
        App { vault, base: format!("http://{addr}"), environment: cfg.environment, tenant_prefix: cfg.tenant_prefix };
    let router = Router::new()
        .route("/", get(home))
        .route("/connect", post(connect))
        .route("/callback", get(callback))
        .route("/settings/key", post(save_key))
        .with_state(app);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, task))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    ))
}

fn tenant_rows(ts: &[pb::Tenant]) -> String {
    let rows: String = ts
        .iter()
        .map(|t| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.tenant_id),
                esc(&t.display_name),
                esc(&t.organization_number),
                esc(&t.client_key_hint)
            )
        })
        .collect();
    format!("<table><tr><th>Tenant</th><th>Client</th><th>Org. no.</th><th>Client key</th></tr>{rows}</table>")
}

/// A vault refusal in words a customer understands; the vault's messages never contain keys.
fn explain(s: &tonic::Status) -> String {
    match s.code() {
        tonic::Code::InvalidArgument => format!("That does not look right: {}", s.message()),
        tonic::Code::FailedPrecondition => s.message().to_owned(),
        tonic::Code::AlreadyExists => "This company is already connected.".to_owned(),
        tonic::Code::Unavailable => {
            "PowerOffice Go could not be reached just now. Please try again in a minute.".to_owned()
        }
        _ => "Something went wrong on our side. Please try again later.".to_owned(),
    }
}

async fn home(State(app): State<App>) -> Response {
    let mut tenants = TenantServiceClient::new(app.vault.clone());
    let list = tenants.list_tenants(pb::ListTenantsRequest::default()).await.map(|r| r.into_inner().tenants);
    let connected = match list {
        Ok(ts) => tenant_rows(&ts),
        Err(s) => format!("<p>{}</p>", esc(&explain(&s))),
    };
    page(
        "PowerOffice Go",
        &format!(
            "<form method=\"post\" action=\"/connect\"><button type=\"submit\">Connect PowerOffice Go</button></form>\
             <h2>Or paste your client key</h2>\
             <form method=\"post\" action=\"/settings/key\">\
             <label>Company id <input name=\"tenant_id\" required></label>\
             <label>Client key <input name=\"client_key\" type=\"password\" autocomplete=\"off\" required></label>\
             <button type=\"submit\">Save</button></form>\
             <h2>Connected</h2>{connected}"
        ),
    )
    .into_response()
}

async fn connect(State(app): State<App>) -> Response {
    let mut onboarding = OnboardingServiceClient::new(app.vault.clone());
    let req = pb::BeginOnboardingRequest {
        environment: app.environment.clone(),
        redirect_url: format!("{}/callback", app.base),
        organization_number: String::new(),
        tenant_id_prefix: app.tenant_prefix.clone(),
    };
    match onboarding.begin_onboarding(req).await {
        Ok(r) => Redirect::to(&r.into_inner().authorization_url).into_response(),
        Err(s) => page("Could not start", &format!("<p>{}</p>", esc(&explain(&s)))).into_response(),
    }
}

#[derive(Deserialize)]
struct Callback {
    pogo_onboarding_id: Option<String>,
    status: Option<String>,
    token: Option<String>,
}

async fn callback(State(app): State<App>, Query(q): Query<Callback>) -> Response {
    let mut onboarding = OnboardingServiceClient::new(app.vault.clone());
    let req = pb::CompleteOnboardingRequest {
        onboarding_id: q.pogo_onboarding_id.unwrap_or_default(),
        onboarding_token: q.token.unwrap_or_default(),
        go_status: q.status.unwrap_or_default(),
    };
    match onboarding.complete_onboarding(req).await {
        Ok(r) => page("Connected", &tenant_rows(&r.into_inner().tenants)).into_response(),
        Err(s) => page("Not connected", &format!("<p>{}</p>", esc(&explain(&s)))).into_response(),
    }
}

#[derive(Deserialize)]
struct KeyForm {
    tenant_id: String,
    client_key: String,
}

async fn save_key(State(app): State<App>, Form(f): Form<KeyForm>) -> Response {
    let mut tenants = TenantServiceClient::new(app.vault.clone());
    let req = pb::RegisterClientKeyRequest {
        tenant_id: f.tenant_id,
        environment: app.environment.clone(),
        client_key: f.client_key, // forwarded once, dropped with the request; never stored or logged
        ..Default::default()
    };
    match tenants.register_client_key(req).await {
        Ok(r) => {
            let t = r.into_inner();
            page(
                "Saved",
                &format!("<p>Saved for {}. Client key {}.</p>", esc(&t.display_name), esc(&t.client_key_hint)),
            )
            .into_response()
        }
        Err(s) => page("Not saved", &format!("<p>{}</p>", esc(&explain(&s)))).into_response(),
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args.get(1).cloned().unwrap_or_else(|| "https://127.0.0.1:50051".into());
    let certs = PathBuf::from(args.get(2).cloned().unwrap_or_else(|| ".pogo-vault-dev/certs".into()));
    let listen = args.get(3).cloned().unwrap_or_else(|| "127.0.0.1:8080".into()).parse()?;
    let cfg = AppConfig {
        vault_endpoint: endpoint,
        tls: ClientTlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("admin.pem"),
            key: certs.join("admin-key.pem"),
        },
        listen,
        environment: "demo".into(),
        tenant_prefix: "web-".into(),
    };
    let (addr, task) = start(cfg).await?;
    println!("integrator web app on http://{addr}");
    task.await?;
    Ok(())
}
