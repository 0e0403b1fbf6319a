//! The integrator's web app side of getting client keys into pogo-vault: the model to copy.
//!
//! Two ways in, both talking to the vault over mutual TLS as a `tenant-admin` caller:
//! - "Connect PowerOffice Go": begins Go's onboarding, sends the browser to Go, and on the
//!   way back completes it. The keys go from Go to the vault; this app never sees them.
//! - A settings form where a customer pastes a client key once. The app forwards it to
//!   `RegisterClientKey` (which proves it against Go first), never stores or logs it, and
//!   shows only the hint afterwards.
//!
//! And with the vault's API gateway (`[gateway]`), the app lists a connected customer's own
//! customers from Go (`/customers?tenant=ID`): it calls Go through the vault with its own
//! certificate (role `api`), holding neither an access token nor the subscription key.
//!
//! Every browser gets a session cookie (random, HttpOnly, SameSite=Lax). The forms carry a
//! CSRF token tied to that session, checked on every POST. An onboarding is bound to the
//! session twice: the vault binds it to the session's `subject` (a hash of the cookie), so
//! a redirect that lands in another browser cannot complete it; and the app remembers which
//! onboarding this session began (the OAuth "state" check) and refuses a callback for any
//! other.
//!
//! What a real app adds, and this example leaves out to stay small: its own user login; the
//! tenant id taken from the logged-in customer's account (never from the form, or one
//! customer could register a key under another's id); `Secure` cookies over https; session
//! expiry; and a connected-clients list filtered to the customer.
//!
//! Run against `pogo-vault dev` (its admin certificate):
//! ```sh
//! cargo run --example integrator_web -- https://127.0.0.1:50051 .pogo-vault-dev/certs 127.0.0.1:8080 https://127.0.0.1:50052
//! ```
//! (Go must whitelist the app's callback URL; the dev simulator accepts loopback ones.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, header};
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
    /// The vault's API gateway (`https://host:port`), if it has one.
    pub gateway: Option<String>,
}

#[derive(Clone)]
struct App {
    vault: Channel,
    /// The gateway's base URL and an HTTPS client presenting the app's certificate.
    gateway: Option<(String, reqwest::Client)>,
    /// The app's own base URL, for Go's redirect back to `/callback`.
    base: String,
    environment: String,
    tenant_prefix: String,
    /// Browser sessions by cookie value.
    sessions: Arc<Mutex<HashMap<String, BrowserSession>>>,
}

/// What the app keeps per browser.
#[derive(Default, Clone)]
struct BrowserSession {
    /// The token every form of this session carries.
    csrf: String,
    /// The onboarding this session began, the only one its callback may complete.
    onboarding_id: Option<String>,
}

const COOKIE: &str = "sid";

/// 16 random bytes in hex.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the system random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies.split(';').find_map(|c| c.trim().strip_prefix("sid=")).map(str::to_owned)
}

impl App {
    /// This browser's session, created (with a `Set-Cookie` to send) when it has none.
    fn session(&self, headers: &HeaderMap) -> (String, BrowserSession, Option<String>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = session_id(headers)
            && let Some(s) = sessions.get(&id)
        {
            return (id, s.clone(), None);
        }
        let id = random_hex();
        let s = BrowserSession { csrf: random_hex(), onboarding_id: None };
        sessions.insert(id.clone(), s.clone());
        let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
        (id, s, Some(cookie))
    }

    /// The existing session whose CSRF token the form carries, or `None`.
    fn checked_session(&self, headers: &HeaderMap, csrf: &str) -> Option<String> {
        let id = session_id(headers)?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get(&id)?;
        let ok = s.csrf.len() == csrf.len() && s.csrf.bytes().zip(csrf.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        ok.then_some(id)
    }

    fn remember_onboarding(&self, sid: &str, onboarding_id: &str) {
        if let Some(s) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get_mut(sid) {
            s.onboarding_id = Some(onboarding_id.to_owned());
        }
    }
}

/// The vault's subject for a browser session: a hash of the cookie, never the cookie.
fn subject(sid: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("integrator-web session {sid}").as_bytes());
    h.iter().map(|x| format!("{x:02x}")).collect()
}

fn with_cookie(resp: Response, cookie: Option<String>) -> Response {
    match cookie {
        Some(c) => ([(header::SET_COOKIE, c)], resp).into_response(),
        None => resp,
    }
}

fn refused(why: &str) -> Response {
    (axum::http::StatusCode::FORBIDDEN, page("Refused", &format!("<p>{}</p>", esc(why)))).into_response()
}

/// Starts the app; returns its address and the serving task.
pub async fn start(cfg: AppConfig) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let vault = pogo_vault::client::connect(&cfg.vault_endpoint, &cfg.tls, None)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let gateway = match cfg.gateway {
        None => None,
        Some(base) => {
            let tls = pogo_vault::tls::https_client_config(&cfg.tls, &[b"h2", b"http/1.1"])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let client = reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Some((base.trim_end_matches('/').to_owned(), client))
        }
    };
    let app = App {
        vault,
        gateway,
        base: format!("http://{addr}"),
        environment: cfg.environment,
        tenant_prefix: cfg.tenant_prefix,
        sessions: Arc::default(),
    };
    let router = Router::new()
        .route("/", get(home))
        .route("/connect", post(connect))
        .route("/callback", get(callback))
        .route("/settings/key", post(save_key))
        .route("/customers", get(customers))
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

fn tenant_rows(ts: &[pb::Tenant], gateway: bool) -> String {
    let rows: String = ts
        .iter()
        .map(|t| {
            // Tenant ids are a-z 0-9 - _ . only: safe in a query string as they are.
            let id = if gateway {
                format!("<a href=\"/customers?tenant={}\">{}</a>", esc(&t.tenant_id), esc(&t.tenant_id))
            } else {
                esc(&t.tenant_id)
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                id,
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

async fn home(State(app): State<App>, headers: HeaderMap) -> Response {
    let (_, session, cookie) = app.session(&headers);
    let csrf = esc(&session.csrf);
    let mut tenants = TenantServiceClient::new(app.vault.clone());
    let list = tenants.list_tenants(pb::ListTenantsRequest::default()).await.map(|r| r.into_inner().tenants);
    let connected = match list {
        Ok(ts) => tenant_rows(&ts, app.gateway.is_some()),
        Err(s) => format!("<p>{}</p>", esc(&explain(&s))),
    };
    let body = page(
        "PowerOffice Go",
        &format!(
            "<form method=\"post\" action=\"/connect\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Connect PowerOffice Go</button></form>\
             <h2>Or paste your client key</h2>\
             <form method=\"post\" action=\"/settings/key\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Company id <input name=\"tenant_id\" required></label>\
             <label>Client key <input name=\"client_key\" type=\"password\" autocomplete=\"off\" required></label>\
             <button type=\"submit\">Save</button></form>\
             <h2>Connected</h2>{connected}"
        ),
    )
    .into_response();
    with_cookie(body, cookie)
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn connect(State(app): State<App>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let Some(sid) = app.checked_session(&headers, &f.csrf) else {
        return refused("This form expired or did not come from this site. Open the page again.");
    };
    let mut onboarding = OnboardingServiceClient::new(app.vault.clone());
    let req = pb::BeginOnboardingRequest {
        environment: app.environment.clone(),
        redirect_url: format!("{}/callback", app.base),
        organization_number: String::new(),
        tenant_id_prefix: app.tenant_prefix.clone(),
        subject: subject(&sid),
    };
    match onboarding.begin_onboarding(req).await {
        Ok(r) => {
            let r = r.into_inner();
            app.remember_onboarding(&sid, &r.onboarding_id);
            Redirect::to(&r.authorization_url).into_response()
        }
        Err(s) => page("Could not start", &format!("<p>{}</p>", esc(&explain(&s)))).into_response(),
    }
}

#[derive(Deserialize)]
struct Callback {
    pogo_onboarding_id: Option<String>,
    status: Option<String>,
    token: Option<String>,
}

async fn callback(State(app): State<App>, headers: HeaderMap, Query(q): Query<Callback>) -> Response {
    // The state check: this browser began this onboarding.
    let id = q.pogo_onboarding_id.unwrap_or_default();
    let sid = session_id(&headers);
    let began = sid.as_ref().and_then(|s| {
        app.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(s).and_then(|b| b.onboarding_id.clone())
    });
    let (Some(sid), Some(began)) = (sid, began) else {
        return refused("This connection was not started in this browser. Start it again from the settings page.");
    };
    if began != id {
        return refused("This connection was not started in this browser. Start it again from the settings page.");
    }
    let mut onboarding = OnboardingServiceClient::new(app.vault.clone());
    let req = pb::CompleteOnboardingRequest {
        onboarding_id: id,
        onboarding_token: q.token.unwrap_or_default(),
        go_status: q.status.unwrap_or_default(),
        subject: subject(&sid),
    };
    match onboarding.complete_onboarding(req).await {
        Ok(r) => page("Connected", &tenant_rows(&r.into_inner().tenants, app.gateway.is_some())).into_response(),
        Err(s) => page("Not connected", &format!("<p>{}</p>", esc(&explain(&s)))).into_response(),
    }
}

#[derive(Deserialize)]
struct KeyForm {
    csrf: String,
    tenant_id: String,
    client_key: String,
}

async fn save_key(State(app): State<App>, headers: HeaderMap, Form(f): Form<KeyForm>) -> Response {
    if app.checked_session(&headers, &f.csrf).is_none() {
        return refused("This form expired or did not come from this site. Open the page again.");
    }
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

#[derive(Deserialize)]
struct CustomersQuery {
    tenant: String,
}

/// A connected customer's own customers in Go, through the vault's gateway: the app holds
/// no token and no subscription key. A real app takes the tenant from its logged-in user
/// (this example has no login, module docs) and calls the gateway with a certificate of
/// its own that holds only the `api` grant it needs, not its tenant-admin one.
async fn customers(State(app): State<App>, Query(q): Query<CustomersQuery>) -> Response {
    let Some((base, client)) = &app.gateway else {
        return refused("This app was started without the vault's API gateway.");
    };
    // Parsed before it becomes part of a URL path: no `/`, `..` or `%` can ride along.
    let Ok(tenant) = q.tenant.parse::<pogo_vault::domain::TenantId>() else {
        return refused("That is not a company id.");
    };
    let url = format!("{base}/{tenant}/v2/Customers?pageSize=20");
    let answer = match client.get(url).send().await {
        Ok(r) if r.status().is_success() => r.json::<Vec<serde_json::Value>>().await.ok(),
        Ok(r) => {
            let why = match r.status().as_u16() {
                403 => "This app may not read that company's customers.",
                404 => "No such company is connected.",
                429 | 503 => "PowerOffice Go is busy just now. Please try again in a minute.",
                _ => "PowerOffice Go did not answer as expected. Please try again later.",
            };
            return page("Customers", &format!("<p>{}</p>", esc(why))).into_response();
        }
        Err(_) => None,
    };
    let Some(list) = answer else {
        return page("Customers", "<p>PowerOffice Go could not be reached just now.</p>").into_response();
    };
    let text = |v: &serde_json::Value, k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: String = list
        .iter()
        .map(|c| format!("<tr><td>{}</td><td>{}</td></tr>", esc(&text(c, "CustomerNo")), esc(&text(c, "Name"))))
        .collect();
    let body = format!(
        "<p>{} in PowerOffice Go (the first 20)</p><table><tr><th>No.</th><th>Name</th></tr>{rows}</table>",
        esc(tenant.as_str())
    );
    page("Customers", &body).into_response()
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args.get(1).cloned().unwrap_or_else(|| "https://127.0.0.1:50051".into());
    let certs = PathBuf::from(args.get(2).cloned().unwrap_or_else(|| ".pogo-vault-dev/certs".into()));
    let listen = args.get(3).cloned().unwrap_or_else(|| "127.0.0.1:8080".into()).parse()?;
    let gateway = args.get(4).cloned();
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
        gateway,
    };
    let (addr, task) = start(cfg).await?;
    println!("integrator web app on http://{addr}");
    task.await?;
    Ok(())
}
