//! Typed configuration for `pogo-vault serve`: a TOML file, a few environment overrides
//! for the paths of secrets, validated before anything is served.
//!
//! Secrets are never in this file: it names the *files* that hold them (master key,
//! passphrase, TLS private key). Environment overrides (for container platforms that
//! mount secrets at paths of their choosing):
//! `POGO_VAULT_MASTER_KEY_FILE`, `POGO_VAULT_MASTER_PASSPHRASE_FILE`,
//! `POGO_VAULT_MASTER_PASSPHRASE_ENV`, `POGO_VAULT_TLS_KEY`, `POGO_VAULT_DB`,
//! `POGO_VAULT_AUDIT_DB`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::crypto::MasterKeySource;
use crate::tokens::BrokerConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub vault: VaultSection,
    pub server: ServerSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub tokens: BrokerConfig,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub audit: AuditSection,
    /// `[traces]`: OpenTelemetry spans over OTLP (`src/telemetry.rs`); off by default.
    #[serde(default)]
    pub traces: crate::telemetry::TracesConfig,
    /// `[gateway]`: the HTTPS gateway to Go's API (`server/gateway/`); off unless set.
    #[serde(default)]
    pub gateway: Option<gateway::GatewaySection>,
    /// `[storage]`: SQLite files (the default) or a PostgreSQL database (`config/storage.rs`).
    #[serde(default)]
    pub storage: storage::StorageSection,
}

/// `[audit]`: the audit log's settings beyond its file (which is `vault.audit_db`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// `[audit.witness]`: where signed checkpoints are also delivered (see
    /// `src/audit/witness/`); none by default.
    #[serde(default)]
    pub witness: crate::audit::WitnessConfig,
    /// `[[audit.sink]]`: where every event and checkpoint is also pushed (`src/audit/sinks/`).
    #[serde(default)]
    pub sink: Vec<crate::audit::SinkConfig>,
    /// Live `WatchAuditEvents` streams one caller may hold open at once.
    #[serde(default = "default_watch_per_caller")]
    pub max_watch_streams_per_caller: usize,
    /// Live `WatchAuditEvents` streams open at once in total.
    #[serde(default = "default_watch_total")]
    pub max_watch_streams: usize,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            witness: crate::audit::WitnessConfig::default(),
            sink: Vec::new(),
            max_watch_streams_per_caller: default_watch_per_caller(),
            max_watch_streams: default_watch_total(),
        }
    }
}

fn default_watch_per_caller() -> usize {
    crate::audit::AuditConfig::default().max_watch_streams_per_caller
}

fn default_watch_total() -> usize {
    crate::audit::AuditConfig::default().max_watch_streams
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSection {
    /// The vault database (keys, tenants); required with SQLite storage (the default), not
    /// set with `storage.backend = "postgres"`.
    #[serde(default)]
    pub db: PathBuf,
    /// The audit database; default: beside `db`, named `<db stem>-audit.db`.
    pub audit_db: Option<PathBuf>,
    /// Exactly one of the four master key sources.
    pub master_key_file: Option<PathBuf>,
    pub master_passphrase_file: Option<PathBuf>,
    pub master_passphrase_env: Option<String>,
    /// `master_key = { pkcs11 = { module, token_label, key_label, pin_file } }`: the key in an HSM.
    pub master_key: Option<MasterKeyTable>,
}

/// `vault.master_key`: where a master key that is not a file or a passphrase lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterKeyTable {
    pub pkcs11: Pkcs11Table,
}

/// `vault.master_key.pkcs11` (src/crypto/hsm.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Table {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: String,
    /// A file (mode 0600) holding the user PIN.
    pub pin_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// gRPC listen address (mutual TLS).
    pub listen: SocketAddr,
    /// Where the server's certificate and the callers' CAs come from: `files` (the default:
    /// `cert`, `key`, `client_ca`, `crls`) or `spiffe` (the SPIFFE Workload API).
    #[serde(default)]
    pub tls_source: TlsSourceKind,
    /// The Workload API endpoint (`unix:/run/spire/agent.sock`); default: `SPIFFE_ENDPOINT_SOCKET`.
    pub spiffe_socket: Option<String>,
    /// Trust domains whose callers are accepted; default: the vault's own.
    #[serde(default)]
    pub spiffe_trust_domains: Vec<String>,
    /// Server certificate chain (PEM; with `tls_source = "files"`).
    #[serde(default)]
    pub cert: PathBuf,
    /// Server private key (PEM, mode 0600).
    #[serde(default)]
    pub key: PathBuf,
    /// CA bundle that signs caller certificates (PEM).
    #[serde(default)]
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER).
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// The authorization policy (TOML).
    pub policy: PathBuf,
    /// Largest request message accepted.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Deadline for one request, server side.
    #[serde(default = "default_request_timeout", rename = "request_timeout_secs")]
    pub request_timeout_secs: f64,
    /// Requests served at once per connection.
    #[serde(default = "default_concurrency")]
    pub concurrency_limit_per_connection: usize,
    /// A TLS handshake must finish within this.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: f64,
    /// TLS handshakes in progress at once from one source address (IPv6: one /64).
    #[serde(default = "default_handshakes_per_address")]
    pub max_pending_handshakes_per_address: usize,
    /// Prometheus metrics listener (plain HTTP): loopback by default; "" disables it.
    #[serde(default = "default_metrics_listen", deserialize_with = "optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext listener serving only grpc.health.v1, for probes without a client
    /// certificate (Kubernetes' native gRPC probe); off unless set.
    #[serde(default, deserialize_with = "optional_addr")]
    pub health_listen: Option<SocketAddr>,
    /// Whether GetAccessToken returns the integration's subscription key (callers need it
    /// on every Go API call; withhold it if callers get it another way). Default: true, or
    /// false with `[gateway]` on (callers go through the gateway and need no key).
    #[serde(default = "yes")]
    pub return_subscription_key: bool,
    /// GetAccessToken requests a second per caller identity (a token bucket; a policy
    /// grant's `requests_per_second` overrides it). Beyond it: `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_caller_rate")]
    pub caller_requests_per_second: f64,
    /// Reload the certificate, key, client CA bundle, CRLs and policy when they change on
    /// disk (cert-manager, csi-driver-spiffe, a Kubernetes secret), looked at twice a
    /// second, as SIGHUP does; false: only on SIGHUP.
    #[serde(default = "yes")]
    pub watch_files: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    pub connect_timeout_secs: f64,
    pub request_timeout_secs: f64,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self { connect_timeout_secs: 5.0, request_timeout_secs: 10.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsSourceKind {
    #[default]
    Files,
    Spiffe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `pogo_vault=debug,info`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into() }
    }
}

fn default_max_request_bytes() -> usize {
    64 * 1024
}
fn default_request_timeout() -> f64 {
    15.0
}
fn default_concurrency() -> usize {
    256
}
/// Short: a caller on the network completes its handshake in milliseconds, and every
/// second an idle peer holds a handshake slot is a second a real caller might lack it.
fn default_handshake_timeout() -> f64 {
    3.0
}
fn default_handshakes_per_address() -> usize {
    crate::server::conn::DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS
}
fn yes() -> bool {
    true
}
fn default_caller_rate() -> f64 {
    crate::server::DEFAULT_CALLER_REQUESTS_PER_SECOND
}
fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
}
fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim()
        .parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an address like 127.0.0.1:9464")))
}

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config {path}: {message}")]
    Syntax { path: String, message: String },
    #[error("config {path}: {key}: {reason}")]
    Invalid { path: String, key: &'static str, reason: String },
}

impl Config {
    /// Reads, applies environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Parses only (no environment, no validation). Relative paths are resolved against
    /// the config file's directory, so a config works from any working directory.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.display().to_string(),
            message: crate::toml_error::with_line(&e, text),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if !cfg.vault.db.as_os_str().is_empty() {
            fix(&mut cfg.vault.db);
        }
        cfg.vault.audit_db.as_mut().map(fix);
        cfg.storage.files_mut().for_each(fix);
        cfg.vault.master_key_file.as_mut().map(fix);
        cfg.vault.master_passphrase_file.as_mut().map(fix);
        if let Some(t) = cfg.vault.master_key.as_mut() {
            fix(&mut t.pkcs11.module);
            fix(&mut t.pkcs11.pin_file);
        }
        // Empty: not set (with `tls_source = "spiffe"`), not the config file's directory.
        let server = &mut cfg.server;
        for p in [&mut server.cert, &mut server.key, &mut server.client_ca, &mut server.policy] {
            if !p.as_os_str().is_empty() {
                fix(p);
            }
        }
        cfg.server.crls.iter_mut().for_each(fix);
        if let Some(f) = cfg.audit.witness.file.as_mut() {
            fix(&mut f.path);
        }
        if let Some(ca) = cfg.audit.witness.syslog.as_mut().and_then(|s| s.ca.as_mut()) {
            fix(ca);
        }
        cfg.audit.sink.iter_mut().flat_map(crate::audit::SinkConfig::files_mut).for_each(fix);
        [&mut cfg.traces.ca, &mut cfg.traces.cert, &mut cfg.traces.key].into_iter().flatten().for_each(fix);
        // With the gateway on, the defaults it changes (`config/gateway.rs`), unless set.
        if cfg.gateway.as_ref().is_some_and(gateway::GatewaySection::is_on) {
            if !gateway::is_set(text, "tokens", "upstream_rate_per_second") {
                cfg.tokens.upstream_rate_per_second = gateway::GATEWAY_DEFAULT_RATE;
            }
            if !gateway::is_set(text, "tokens", "upstream_burst") {
                cfg.tokens.upstream_burst = gateway::GATEWAY_DEFAULT_BURST;
            }
            if !gateway::is_set(text, "server", "return_subscription_key") {
                cfg.server.return_subscription_key = false;
            }
        }
        Ok(cfg)
    }

    /// The environment overrides that [`Config::apply_env`] would apply, as lines an
    /// operator reads (`config check` prints them, `serve` logs them): an exported
    /// `POGO_VAULT_DB` silently replacing the file's `vault.db` costs an afternoon. The value
    /// of `POGO_VAULT_MASTER_PASSPHRASE_ENV` is not shown (it should be a name; if it is
    /// the passphrase itself, it must not be echoed).
    pub fn env_overrides(get: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let mut out = Vec::new();
        for (var, key) in ENV_OVERRIDES {
            if let Some(v) = get(var) {
                let shown = if var == "POGO_VAULT_MASTER_PASSPHRASE_ENV" { "(a variable name)".to_owned() } else { v };
                out.push(format!("{var}={shown} replaces {key}"));
            }
        }
        out
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("POGO_VAULT_DB") {
            self.vault.db = v.into();
        }
        if let Some(v) = get("POGO_VAULT_AUDIT_DB") {
            self.vault.audit_db = Some(v.into());
        }
        let key = get("POGO_VAULT_MASTER_KEY_FILE");
        let pf = get("POGO_VAULT_MASTER_PASSPHRASE_FILE");
        let pe = get("POGO_VAULT_MASTER_PASSPHRASE_ENV");
        if key.is_some() || pf.is_some() || pe.is_some() {
            // An override replaces the file's choice of source entirely.
            self.vault.master_key_file = key.map(Into::into);
            self.vault.master_passphrase_file = pf.map(Into::into);
            self.vault.master_passphrase_env = pe;
            self.vault.master_key = None;
        }
        if let Some(v) = get("POGO_VAULT_TLS_KEY") {
            self.server.key = v.into();
        }
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid { path: path.display().to_string(), key, reason };
        self.master_key_source().map_err(|r| invalid("vault.master_key_file", r))?;
        self.storage.validate().map_err(|(key, reason)| invalid(key, reason))?;
        if self.storage.backend == storage::StorageBackend::Postgres {
            let here = "not with storage.backend = \"postgres\": the vault and its audit log live in storage.postgres";
            if !self.vault.db.as_os_str().is_empty() {
                return Err(invalid("vault.db", here.into()));
            }
            if self.vault.audit_db.is_some() {
                return Err(invalid("vault.audit_db", here.into()));
            }
        } else if self.vault.db.as_os_str().is_empty() {
            return Err(invalid("vault.db", "required (the vault database file)".into()));
        }
        for (key, n) in [
            ("audit.max_watch_streams_per_caller", self.audit.max_watch_streams_per_caller),
            ("audit.max_watch_streams", self.audit.max_watch_streams),
        ] {
            if n == 0 || n > 10_000 {
                return Err(invalid(key, format!("must be 1 to 10000, not {n}")));
            }
        }
        for (key, secs) in [
            ("server.request_timeout_secs", self.server.request_timeout_secs),
            ("server.handshake_timeout_secs", self.server.handshake_timeout_secs),
            ("upstream.connect_timeout_secs", self.upstream.connect_timeout_secs),
            ("upstream.request_timeout_secs", self.upstream.request_timeout_secs),
        ] {
            if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
                return Err(invalid(key, format!("{secs} is not a number of seconds between 0 and 3600")));
            }
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.server.max_request_bytes) {
            return Err(invalid("server.max_request_bytes", "must be 1 KiB to 16 MiB".into()));
        }
        let rate = self.server.caller_requests_per_second;
        if !(rate > 0.0 && rate <= 1e6) {
            return Err(invalid(
                "server.caller_requests_per_second",
                format!("must be above 0 and at most 1000000, not {rate}"),
            ));
        }
        if self.server.concurrency_limit_per_connection == 0 {
            return Err(invalid("server.concurrency_limit_per_connection", "must be at least 1".into()));
        }
        let most = crate::server::conn::MAX_PENDING_HANDSHAKES;
        if !(1..=most).contains(&self.server.max_pending_handshakes_per_address) {
            return Err(invalid("server.max_pending_handshakes_per_address", format!("must be 1 to {most}")));
        }
        self.tokens.validate().map_err(|r| invalid("tokens", r))?;
        log_filter(&self.log.level).map_err(|e| invalid("log.level", e))?;
        self.audit.witness.validate().map_err(|(key, reason)| invalid(key, reason))?;
        self.traces.validate().map_err(|(key, reason)| invalid(key, reason))?;
        self.server.check_tls_source(|k| std::env::var(k).ok()).map_err(|(key, reason)| invalid(key, reason))?;
        if let Some(g) = &self.gateway {
            let others = [
                ("server.listen", Some(self.server.listen)),
                ("server.metrics_listen", self.server.metrics_listen),
                ("server.health_listen", self.server.health_listen),
            ];
            g.validate(&others).map_err(|(key, reason)| invalid(key, reason))?;
        }
        // On PostgreSQL no file of the vault's lies beside a sink's file to collide with.
        let dbs = match self.storage.backend {
            storage::StorageBackend::Postgres => Vec::new(),
            storage::StorageBackend::Sqlite => vec![self.vault.db.clone(), self.audit_db()],
        };
        crate::audit::validate_sinks(&self.audit.sink, &dbs).map_err(|(k, r)| invalid(k, r))
    }

    pub fn master_key_source(&self) -> Result<MasterKeySource, String> {
        let v = &self.vault;
        const ONE_OF: &str = "master_key_file, master_passphrase_file, master_passphrase_env, master_key.pkcs11";
        match (&v.master_key_file, &v.master_passphrase_file, &v.master_passphrase_env, &v.master_key) {
            (Some(p), None, None, None) => Ok(MasterKeySource::KeyFile(p.clone())),
            (None, Some(p), None, None) => Ok(MasterKeySource::PassphraseFile(p.clone())),
            (None, None, Some(e), None) => Ok(MasterKeySource::PassphraseEnv(e.clone())),
            (None, None, None, Some(t)) => {
                let t = &t.pkcs11;
                if t.token_label.trim().is_empty() || t.key_label.trim().is_empty() {
                    return Err("master_key.pkcs11: token_label and key_label must not be empty".into());
                }
                Ok(MasterKeySource::Pkcs11(crate::crypto::Pkcs11Settings {
                    module: t.module.clone(),
                    token_label: t.token_label.clone(),
                    key_label: t.key_label.clone(),
                    pin_file: t.pin_file.clone(),
                }))
            }
            (None, None, None, None) => Err(format!("no master key source: set one of {ONE_OF}")),
            _ => Err(format!("set only one of {ONE_OF}")),
        }
    }

    pub fn audit_db(&self) -> PathBuf {
        self.vault.audit_db.clone().unwrap_or_else(|| default_audit_db(&self.vault.db))
    }

    /// The audit writer's settings: the defaults, with the configured witnesses.
    pub fn audit_config(&self) -> crate::audit::AuditConfig {
        crate::audit::AuditConfig {
            witness: self.audit.witness.clone(),
            sinks: self.audit.sink.clone(),
            sink_cursors: Some(self.vault.db.clone()),
            max_watch_streams_per_caller: self.audit.max_watch_streams_per_caller,
            max_watch_streams: self.audit.max_watch_streams,
            ..crate::audit::AuditConfig::default()
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.request_timeout_secs)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.handshake_timeout_secs)
    }

    pub fn upstream(&self) -> crate::upstream::UpstreamConfig {
        crate::upstream::UpstreamConfig {
            connect_timeout: Duration::from_secs_f64(self.upstream.connect_timeout_secs),
            request_timeout: Duration::from_secs_f64(self.upstream.request_timeout_secs),
        }
    }
}

/// The environment variables that override the file, and what each replaces.
pub const ENV_OVERRIDES: [(&str, &str); 6] = [
    ("POGO_VAULT_DB", "vault.db"),
    ("POGO_VAULT_AUDIT_DB", "vault.audit_db"),
    ("POGO_VAULT_MASTER_KEY_FILE", "the master key source (vault.master_*)"),
    ("POGO_VAULT_MASTER_PASSPHRASE_FILE", "the master key source (vault.master_*)"),
    ("POGO_VAULT_MASTER_PASSPHRASE_ENV", "the master key source (vault.master_*)"),
    ("POGO_VAULT_TLS_KEY", "server.key"),
];

/// `<dir>/<stem>-audit.db` beside the vault database.
pub fn default_audit_db(db: &Path) -> PathBuf {
    let stem = db.file_stem().and_then(|s| s.to_str()).unwrap_or("pogo-vault");
    db.with_file_name(format!("{stem}-audit.db"))
}

/// Parses log directives (`EnvFilter` syntax: `info`, `pogo_vault=debug,tower=warn`).
/// Anything but printable ASCII is refused first: tracing-subscriber's directive parser
/// panics on some multi-byte input (a config or `POGO_VAULT_LOG` value found by
/// `tests/hardening_fuzz.rs`), and no directive needs it.
pub fn log_filter(directives: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    if let Some(c) = directives.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(format!(
            "must be printable ASCII in EnvFilter syntax (such as info or pogo_vault=debug); found {c:?}"
        ));
    }
    tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| e.to_string())
}

/// The log filter: `POGO_VAULT_LOG` when it is set and valid, else `default` (else `info`).
pub fn env_log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    std::env::var("POGO_VAULT_LOG")
        .ok()
        .and_then(|v| log_filter(&v).ok())
        .or_else(|| log_filter(default).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"))
}

pub mod gateway;
mod serve_options;
pub mod storage;

#[cfg(test)]
mod tests;
