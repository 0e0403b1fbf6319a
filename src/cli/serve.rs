//! `serve`, `dev`, `token`, `certs dev`, `config check`, `policy check`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::connect::{ConnectArgs, code_name};
use super::error::CliError;
use super::logging::init_logging;
use super::runtime::{StopSignals, runtime};
use crate::client::{connect, error_chain};
use crate::config::{Config, LogFormat};
use crate::proto::v1::tenant_service_client::TenantServiceClient;
use crate::proto::v1::token_service_client::TokenServiceClient;
use crate::proto::v1::{GetAccessTokenRequest, RegisterClientKeyRequest};
use crate::tls::ClientTlsFiles;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The TOML configuration (see the README and deploy/config.toml).
    #[arg(long, env = "POGO_VAULT_CONFIG")]
    pub config: PathBuf,
    /// Serve even when running as root (refused otherwise: run as a dedicated user). For a
    /// throwaway container where everything runs as root.
    #[arg(long, env = "POGO_VAULT_ALLOW_ROOT", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_root: bool,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where dev mode keeps its database, master key, certificates and policy.
    #[arg(long, default_value = ".pogo-vault-dev")]
    pub data_dir: PathBuf,
    /// gRPC listen address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The API gateway's listen address; default: the gRPC port + 1 on the same address
    /// (any free port when `--listen` picks one).
    #[arg(long)]
    pub gateway_listen: Option<SocketAddr>,
    /// Mint the demo token, print the commands, then stop instead of serving.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tenant whose token to get.
    #[arg(long)]
    pub tenant: String,
    /// The token must stay valid at least this many seconds (at most the server's
    /// tokens.max_min_validity_secs, 900 by default: more is refused).
    #[arg(long, default_value_t = 0)]
    pub min_validity: u32,
    /// Print only the raw access token (for scripts).
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Generate a development CA, a server certificate for localhost/127.0.0.1 and client
    /// certificates (token-caller, admin, auditor, operator) with SPIFFE ids
    /// `spiffe://<trust domain>/...`. Keys are mode 0600.
    Dev {
        /// Output directory (created 0700; git-ignored under certs/).
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// SPIFFE trust domain of the client identities.
        #[arg(long, default_value = "pogo-vault.dev")]
        trust_domain: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Validate a file without starting anything.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration as `serve` would before it binds: its keys and values with
    /// the environment overrides applied (and listed), then the files it names: the vault
    /// database and its master key (read-only: nothing is changed), the server certificate
    /// and key (mode 0600), the client CA, the CRLs and the policy. Does not bind addresses.
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
        /// Check only the file's keys and values, not the files it names (for a
        /// configuration meant for another machine, such as the examples in deploy/).
        #[arg(long)]
        no_files: bool,
    },
}

pub fn serve(a: ServeArgs) -> Result<(), CliError> {
    // Before any key is read: no core dump may ever hold one.
    crate::hardening::disable_core_dumps().map_err(CliError::new)?;
    if crate::hardening::is_root() && !a.allow_root {
        return Err(CliError::usage(
            "refusing to serve as root: run pogo-vault as a dedicated user (see deploy/systemd), or pass --allow-root",
        ));
    }
    let cfg = Config::load(&a.config).map_err(|e| CliError::new(e.to_string()))?;
    let traces = super::logging::init_logging_and_traces(cfg.log.format, &cfg.log.level, &cfg.traces)
        .map_err(|e| CliError::new(format!("traces: {e}")))?;
    if cfg.traces.enabled() {
        tracing::info!(sample_ratio = cfg.traces.sample_ratio, "exporting traces over OTLP");
    }
    for o in Config::env_overrides(|k| std::env::var(k).ok()) {
        tracing::info!(config = %a.config.display(), "environment override in force: {o}");
    }
    let opts = crate::server::ServeOptions::from_config(&cfg).map_err(|e| CliError::new(e.to_string()))?;
    runtime()?.block_on(async move {
        let stop = StopSignals::listen();
        let server = crate::server::start(opts).await.map_err(|e| CliError::new(e.to_string()))?;
        eprintln!(
            "pogo-vault serving on {} (SIGHUP reloads certificates and policy; SIGTERM or Ctrl-C stops)",
            server.addr
        );
        stop.wait().await;
        tracing::info!("stopping: finishing in-flight requests");
        server.shutdown().await.map_err(|e| CliError::new(e.to_string()))
    })?;
    // The last spans go to the collector (bounded by the export timeout).
    if let Some(t) = traces {
        t.shutdown();
    }
    Ok(())
}

pub fn token(a: TokenArgs) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        let mut client = TokenServiceClient::new(a.conn.channel().await?);
        let resp = client
            .get_access_token(GetAccessTokenRequest {
                tenant_id: a.tenant.clone(),
                min_validity_seconds: a.min_validity,
            })
            .await
            .map_err(|s| CliError::new(format!("{}: {}", code_name(s.code()), s.message())))?
            .into_inner();
        if a.raw {
            outln!("{}", resp.access_token)?;
        } else {
            outln!("{}", describe_token(&a.tenant, &resp))?;
        }
        Ok(())
    })
}

/// `pogo-vault status`: a running vault's health, version, schema, tenants, master key id
/// and last checkpoint.
pub fn status(conn: ConnectArgs) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        let mut client = crate::proto::v1::status_service_client::StatusServiceClient::new(conn.channel().await?);
        let s = client
            .get_status(crate::proto::v1::GetStatusRequest {})
            .await
            .map_err(|s| CliError::new(format!("{}: {}", code_name(s.code()), s.message())))?
            .into_inner();
        let ms = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        };
        outln!("health:          {}", s.health)?;
        outln!("version:         {}", s.version)?;
        outln!("schema version:  {}", s.schema_version)?;
        outln!("master key id:   {}", s.master_key_id)?;
        outln!("started:         {}", super::output::format_time(ms(&s.started_at)))?;
        let mut tenants: Vec<_> = s.tenants.iter().map(|(k, v)| format!("{k} {v}")).collect();
        tenants.sort();
        outln!("tenants:         {}", if tenants.is_empty() { "none".to_owned() } else { tenants.join(", ") })?;
        match &s.last_checkpoint {
            Some(c) => outln!(
                "last checkpoint: sequence {} at {} (head {}, key {})",
                c.sequence,
                super::output::format_time(ms(&c.time)),
                c.head_hash,
                c.key_id
            ),
            None => outln!("last checkpoint: none yet"),
        }?;
        for i in &s.integrations {
            let secondary = if i.secondary_key_hint.is_empty() { "none" } else { &i.secondary_key_hint };
            let paused = match i.upstream_paused_seconds {
                0 => String::new(),
                n => format!(", upstream calls paused for {n} s"),
            };
            outln!(
                "integration:     {} sends the {} subscription key (primary {}, secondary {secondary}){paused}",
                i.environment,
                i.active_slot,
                i.primary_key_hint
            )?;
        }
        for w in &s.audit_witnesses {
            let state = if w.failing { format!("FAILING ({})", w.last_error) } else { "ok".to_owned() };
            outln!(
                "audit witness:   {} {state}, backlog {}, delivered {}, dropped {}, newest sequence {}",
                w.name,
                w.backlog,
                w.delivered,
                w.dropped,
                w.last_delivered_sequence
            )?;
        }
        for k in &s.audit_sinks {
            let standby = if k.standby { "standing by (another replica delivers it)" } else { "ok" };
            let state = if k.failing { format!("FAILING ({})", k.last_error) } else { standby.to_owned() };
            let skipped =
                if k.skipped > 0 { format!(", {} archived before delivery", k.skipped) } else { String::new() };
            outln!(
                "audit sink:      {} ({}) {state}, delivered through event {}, {} behind, {} sent{skipped}",
                k.name,
                k.kind,
                k.delivered_sequence,
                k.lag,
                k.sent
            )?;
        }
        Ok(())
    })
}

/// One line about a token, masked: what an operator may see on a shared screen.
pub fn describe_token(tenant: &str, r: &crate::proto::v1::GetAccessTokenResponse) -> String {
    let expires = r.expires_at.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let head: String = r.access_token.chars().take(6).collect();
    format!(
        "tenant {tenant}: {} token {head}… ({} characters; --raw prints it), expires {} (in {} s), environment {}, API {}",
        r.token_type,
        r.access_token.chars().count(),
        super::output::format_time(expires),
        (expires - now) / 1000,
        r.environment,
        r.api_base_url
    )
}

pub fn certs(c: CertsCommand) -> Result<(), CliError> {
    match c {
        CertsCommand::Dev { out, trust_domain } => {
            let pki = crate::tls::generate_dev_pki(&out, &trust_domain).map_err(|e| CliError::new(e.to_string()))?;
            outln!("development PKI written to {} (private keys mode 0600; never commit them)", out.display())?;
            outln!("  CA:      {}", pki.ca_cert.display())?;
            outln!("  server:  {} (localhost, 127.0.0.1, ::1)", pki.server_cert.display())?;
            for c in &pki.clients {
                outln!("  {:<13} {} ({})", c.name, c.cert.display(), c.spiffe_id)?;
            }
            Ok(())
        }
    }
}

pub fn config_check(c: ConfigCommand) -> Result<(), CliError> {
    let ConfigCommand::Check { file, no_files } = c;
    let cfg = Config::load(&file).map_err(|e| CliError::new(e.to_string()))?;
    let checked = if no_files { "files not checked (--no-files)".to_owned() } else { check_files(&file, &cfg)? };
    let storage = match cfg.storage.postgres_options() {
        Some(o) => format!("vault and audit log in PostgreSQL {}", o.describe()),
        None => format!("database {}, audit {}", cfg.vault.db.display(), cfg.audit_db().display()),
    };
    outln!("{}: ok (listen {}, {storage}; {checked})", file.display(), cfg.server.listen)?;
    let overrides = Config::env_overrides(|k| std::env::var(k).ok());
    if overrides.is_empty() {
        outln!("environment overrides: none")?;
    }
    for o in overrides {
        outln!("environment override in force: {o}")?;
    }
    Ok(())
}

/// What `serve` reads before it binds, read by the same code, so a configuration this
/// passes is one `serve` starts with (addresses aside). Each failure names its key.
fn check_files(path: &Path, cfg: &Config) -> Result<String, CliError> {
    use crate::crypto::MasterKeySource;
    let invalid = |key: &'static str, reason: String| {
        CliError::new(crate::config::ConfigError::Invalid { path: path.display().to_string(), key, reason }.to_string())
    };
    let source = cfg.master_key_source().map_err(|r| invalid("vault.master_key_file", r))?;
    let source_key = match source {
        MasterKeySource::KeyFile(_) => "vault.master_key_file",
        MasterKeySource::PassphraseFile(_) => "vault.master_passphrase_file",
        MasterKeySource::PassphraseEnv(_) => "vault.master_passphrase_env",
        MasterKeySource::Pkcs11(_) => "vault.master_key.pkcs11",
    };
    let kek = match cfg.storage.postgres_options() {
        // What `serve` does first: connect, check the schema, open the vault with the key.
        Some(o) => {
            crate::vault::Vault::unlock_postgres(&o, &source).map_err(|e| match e {
                crate::vault::VaultError::Store(e) => invalid("storage.postgres", e.to_string()),
                e => invalid(source_key, e.to_string()),
            })?;
            format!("(the vault in {})", o.describe())
        }
        None => {
            let db = &cfg.vault.db;
            if !db.exists() {
                return Err(invalid(
                    "vault.db",
                    format!("{} does not exist: run `pogo-vault init` first", db.display()),
                ));
            }
            crate::vault::check_master_key(db, &source)
                .map_err(|e| match e {
                    crate::vault::VaultError::Store(e) => invalid("vault.db", e.to_string()),
                    e => invalid(source_key, e.to_string()),
                })?
                .to_string()
        }
    };
    let policy = crate::authz::Policy::load(&cfg.server.policy).map_err(|e| invalid("server.policy", e.to_string()))?;
    if let Some(s) = cfg.server.spiffe(|k| std::env::var(k).ok()) {
        // The SVID and bundles exist only at the agent: `serve` fetches them (30 s at most).
        return Ok(format!(
            "master key {kek} opens it; TLS from the SPIFFE Workload API at {} (fetched at start); policy {} grants",
            s.socket,
            policy.grant_count()
        ));
    }
    let tls = crate::tls::ServerTlsFiles {
        cert: cfg.server.cert.clone(),
        key: cfg.server.key.clone(),
        client_ca: cfg.server.client_ca.clone(),
        crls: cfg.server.crls.clone(),
    };
    crate::tls::load_server_tls(&tls).map_err(|e| {
        // The error names its file; the key is the one that names that file.
        let text = e.to_string();
        let named = |p: &Path| text.contains(&p.display().to_string());
        let key = if named(&tls.key) {
            "server.key"
        } else if named(&tls.cert) {
            "server.cert"
        } else if tls.crls.iter().any(|c| named(c)) {
            "server.crls"
        } else {
            "server.client_ca"
        };
        invalid(key, text)
    })?;
    Ok(format!("master key {kek} opens it; TLS files and CRLs load; policy {} grants", policy.grant_count()))
}

pub fn policy_check(c: CheckCommand) -> Result<(), CliError> {
    let CheckCommand::Check { file } = c;
    let p = crate::authz::Policy::load(&file).map_err(|e| CliError::new(e.to_string()))?;
    outln!("{}: ok ({} grants)", file.display(), p.grant_count())?;
    Ok(())
}

// ---- dev mode ----

/// The tenants dev mode registers over gRPC: (tenant id, the simulator's demo client).
const DEMO_TENANTS: [(&str, crate::sim::DemoClient); 2] =
    [("demo-acme", crate::sim::DEMO_CLIENTS[0]), ("demo-fjord", crate::sim::DEMO_CLIENTS[1])];

fn dev_policy(trust_domain: &str) -> String {
    format!(
        "# Dev-mode policy written by `pogo-vault dev`. Edit and send SIGHUP to reload.\n\n\
         [[grant]]\ncaller = \"spiffe://{trust_domain}/service/token-caller\"\nroles = [\"token\"]\ntenants = [\"*\"]\n\n\
         [[grant]]\ncaller = \"spiffe://{trust_domain}/service/admin\"\nroles = [\"tenant-admin\"]\ntenants = [\"*\"]\n\n\
         [[grant]]\ncaller = \"spiffe://{trust_domain}/team/security/auditor\"\nroles = [\"audit\"]\n\n\
         [[grant]]\ncaller = \"spiffe://{trust_domain}/service/operator\"\nroles = [\"operator\"]\n\n\
         # Go's API through the vault's gateway: the token caller, and the admin (the example web\n\
         # app lists a tenant's customers).\n\
         [[grant]]\ncaller = \"spiffe://{trust_domain}/service/token-caller\"\nroles = [\"api\"]\ntenants = [\"*\"]\n\
         api = [\"GET /v2/Customers\", \"GET /v2/Customers/**\", \"POST /v2/OutgoingInvoices\"]\n\n\
         [[grant]]\ncaller = \"spiffe://{trust_domain}/service/admin\"\nroles = [\"api\"]\ntenants = [\"*\"]\n\
         api = [\"GET /v2/Customers\"]\n"
    )
}

pub fn dev(a: DevArgs) -> Result<(), CliError> {
    init_logging(LogFormat::Human, "warn,pogo_vault=info");
    crate::hardening::disable_core_dumps().map_err(CliError::new)?;
    if crate::hardening::is_root() {
        // Dev mode is a toy on a developer's machine: a warning, not a refusal (`serve`
        // refuses root).
        tracing::warn!("dev mode is running as root; `serve` refuses that without --allow-root");
    }
    runtime()?.block_on(dev_async(a))
}

async fn dev_async(a: DevArgs) -> Result<(), CliError> {
    let stop = StopSignals::listen();
    use crate::vault::{Argon2Costs, InitKey, Vault};
    let fail = |what: &str, e: &dyn std::fmt::Display| CliError::new(format!("dev mode: {what}: {e}"));
    std::fs::create_dir_all(&a.data_dir).map_err(|e| fail("cannot create the data directory", &e))?;
    // Absolute, so the printed commands work from any directory.
    let dir = &std::fs::canonicalize(&a.data_dir).map_err(|e| fail("data directory", &e))?;
    let trust_domain = "pogo-vault.dev";
    let db = dir.join("vault.db");
    let master = dir.join("master.key");
    let certs_dir = dir.join("certs");
    let pki = if certs_dir.join("ca.pem").exists() {
        crate::tls::DevPki::layout(&certs_dir, trust_domain)
    } else {
        crate::tls::generate_dev_pki(&certs_dir, trust_domain).map_err(|e| fail("certificates", &e))?
    };
    // Held through the set-up, released before the server takes it for serving.
    let setup_lock = super::db::lock_for_change(&db)?;
    if !db.exists() {
        let init = if master.exists() {
            InitKey::Existing(crate::crypto::MasterKeySource::KeyFile(master.clone()))
        } else {
            InitKey::GenerateKeyFile(master.clone())
        };
        Vault::init(&db, &init, Argon2Costs::default()).map_err(|e| fail("init", &e))?;
        outln!("dev: initialised {} with a new master key {}", db.display(), master.display())?;
    }
    let policy = dir.join("policy.toml");
    if !policy.exists() {
        std::fs::write(&policy, dev_policy(trust_domain)).map_err(|e| fail("policy", &e))?;
    }

    // The simulated Go, with the demo clients it knows; it accepts loopback redirect URIs
    // (as Go accepts localhost for testing), so an onboarding can be tried against it.
    let sim_config = crate::sim::SimConfig { loopback_redirects: true, ..crate::sim::SimConfig::default() };
    let sim = crate::sim::start("127.0.0.1:0".parse().map_err(|e| fail("sim address", &e))?, sim_config)
        .await
        .map_err(|e| fail("simulator", &e))?;
    sim.add_demo_clients();
    {
        let vault = Vault::unlock(&db, &crate::crypto::MasterKeySource::KeyFile(master.clone()))
            .map_err(|e| fail("unlock", &e))?;
        let integration = sim.demo_integration().map_err(|e| fail("subscription key", &e))?;
        let akey = vault.audit_signing_key().map_err(|e| fail("audit signing key", &e))?;
        let op = super::operator::Operator::current();
        let gate = op.gate(crate::config::default_audit_db(&db), &akey, |op, c: &crate::vault::IntegrationChange| {
            let detail = c.describe("by dev mode");
            vec![op.record(crate::audit::Action::IntegrationSet, crate::audit::Outcome::Ok, detail)]
        });
        vault.set_integration(&integration, &gate).map_err(|e| fail("integration", &e))?;
    }
    drop(setup_lock);
    outln!(
        "dev: simulated PowerOffice Go at {} (loopback redirect URIs accepted); its demo clients (fixed, public demo keys):",
        sim.base_url(crate::domain::Environment::Demo)
    )?;
    for c in crate::sim::DEMO_CLIENTS {
        let how = if c.onboarding { "activated by an onboarding" } else { "registered below" };
        outln!("dev:   {}  {}  {} ({how})", c.client_key, c.organization_number, c.name)?;
    }

    let opts = crate::server::ServeOptions {
        db: db.clone(),
        audit_db: crate::config::default_audit_db(&db),
        master_key: crate::crypto::MasterKeySource::KeyFile(master.clone()),
        listen: a.listen,
        tls: pki.server_files(),
        policy: policy.clone(),
        upstream: crate::upstream::UpstreamConfig::default(),
        // The gateway is on: the one limiter carries API calls too (`config/gateway.rs`).
        tokens: crate::tokens::BrokerConfig {
            upstream_rate_per_second: crate::config::gateway::GATEWAY_DEFAULT_RATE,
            upstream_burst: crate::config::gateway::GATEWAY_DEFAULT_BURST,
            ..crate::tokens::BrokerConfig::default()
        },
        audit: crate::audit::AuditConfig::default(),
        max_request_bytes: 64 * 1024,
        request_timeout: std::time::Duration::from_secs(15),
        concurrency_limit_per_connection: 256,
        handshake_timeout: std::time::Duration::from_secs(3),
        max_pending_handshakes_per_address: crate::server::conn::DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
        return_subscription_key: true,
        caller_requests_per_second: crate::server::DEFAULT_CALLER_REQUESTS_PER_SECOND,
        metrics_listen: None,
        health_listen: None,
        // Dev certificates do not rotate: SIGHUP still reloads.
        watch_files: None,
        spiffe: None,
        gateway: dev_gateway(&a),
        postgres: None,
    };
    let server = crate::server::start(opts).await.map_err(|e| {
        let hint = if e.to_string().contains("in use") {
            " (pass --listen 127.0.0.1:0, or other ports with --listen and --gateway-listen)"
        } else {
            ""
        };
        fail("server", &format!("{e}{hint}"))
    })?;
    let endpoint = format!("https://{}", server.addr);
    outln!("dev: vault serving gRPC over mutual TLS at {endpoint}")?;
    if let Some(g) = server.gateway_addr {
        outln!("dev: Go API gateway (HTTPS, mutual TLS) at https://{g}")?;
    }

    let client_files =
        |name: &str| pki.client_files(name).ok_or_else(|| fail("certificates", &format!("no {name} certificate")));
    let admin = client_files("admin")?;
    let caller = client_files("token-caller")?;
    let channel = connect(&endpoint, &admin, None).await.map_err(|e| fail("connect as admin", &e))?;
    let mut tenants = TenantServiceClient::new(channel);
    for (id, client) in DEMO_TENANTS {
        let req = RegisterClientKeyRequest {
            tenant_id: id.into(),
            environment: "demo".into(),
            client_key: client.client_key.into(),
            organization_number: client.organization_number.into(),
            ..Default::default()
        };
        match tenants.register_client_key(req).await {
            Ok(t) => {
                let t = t.into_inner();
                outln!(
                    "dev: registered tenant {} ({}) with client key {} over gRPC",
                    t.tenant_id,
                    t.display_name,
                    t.client_key_hint
                )?;
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => outln!("dev: tenant {id} already registered")?,
            Err(s) => return Err(fail("register demo tenant", &s.message())),
        }
    }
    let channel = connect(&endpoint, &caller, None).await.map_err(|e| fail("connect as token caller", &e))?;
    let mut tokens = TokenServiceClient::new(channel);
    let resp = tokens
        .get_access_token(GetAccessTokenRequest { tenant_id: DEMO_TENANTS[0].0.into(), min_validity_seconds: 0 })
        .await
        .map_err(|s| fail("mint demo token", &s.message()))?
        .into_inner();
    outln!("dev: minted over mTLS as spiffe://{trust_domain}/service/token-caller")?;
    outln!("dev: {}", describe_token(DEMO_TENANTS[0].0, &resp))?;
    print_commands(&endpoint, &server.addr, server.gateway_addr, &caller, dir)?;
    if a.once {
        return server.shutdown().await.map_err(|e| fail("shutdown", &e));
    }
    outln!("dev: ready; serving until Ctrl-C")?;
    stop.wait().await;
    outln!("dev: stopping")?;
    let r = server.shutdown().await.map_err(|e| fail("shutdown", &error_chain(&e)));
    sim.shutdown().await;
    r
}

/// Dev mode's gateway: the gRPC port + 1 (a free port with `--listen ...:0`), the
/// gateway's production defaults otherwise.
fn dev_gateway(a: &DevArgs) -> Option<crate::server::GatewayOptions> {
    let listen = a.gateway_listen.unwrap_or_else(|| {
        // Port 0 (any), and the top port (no port after it): any free port.
        let port = a.listen.port().checked_add(1).filter(|_| a.listen.port() != 0).unwrap_or(0);
        SocketAddr::new(a.listen.ip(), port)
    });
    crate::config::gateway::GatewaySection::with_listen(listen).options()
}

fn print_commands(
    endpoint: &str,
    addr: &SocketAddr,
    gateway: Option<SocketAddr>,
    f: &ClientTlsFiles,
    dir: &Path,
) -> Result<(), CliError> {
    let exe = std::env::current_exe().ok().map(|p| p.display().to_string()).unwrap_or_else(|| "pogo-vault".into());
    outln!()?;
    outln!("Try it from another shell:")?;
    outln!(
        "  {exe} token --endpoint {endpoint} --ca {} --cert {} --key {} --tenant {}",
        f.ca.display(),
        f.cert.display(),
        f.key.display(),
        DEMO_TENANTS[1].0
    )?;
    outln!(
        "  grpcurl -cacert {} -cert {} -key {} -d '{{\"tenant_id\":\"{}\"}}' {addr} pogo_vault.v1.TokenService/GetAccessToken",
        f.ca.display(),
        f.cert.display(),
        f.key.display(),
        DEMO_TENANTS[0].0
    )?;
    outln!("  (admin and auditor certificates are in {}/certs)", dir.display())?;
    let gateway = gateway.map_or_else(String::new, |g| format!("https://{g}"));
    if !gateway.is_empty() {
        outln!("Go's API through the gateway (no token or subscription key in the caller's hands):")?;
        outln!(
            "  curl --cacert {} --cert {} --key {} {gateway}/{}/v2/Customers?pageSize=3",
            f.ca.display(),
            f.cert.display(),
            f.key.display(),
            DEMO_TENANTS[0].0
        )?;
    }
    outln!("Onboarding (the simulated approver activates Nordlys Handel AS), through the example web app:")?;
    outln!("  cargo run --example integrator_web -- {endpoint} {}/certs 127.0.0.1:8080 {gateway}", dir.display())?;
    outln!("  then open http://127.0.0.1:8080/ and press \"Connect PowerOffice Go\"")?;
    outln!()
}
