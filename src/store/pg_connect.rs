//! Connecting to PostgreSQL: the options turned into a client configuration (password from
//! its file, TLS through our rustls connector, socket settings), each host of a multi-host
//! URL tried in turn with a deadline of its own, and the session settings every vault
//! connection starts with.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use zeroize::Zeroizing;

use super::error::StoreError;
use super::pg_tls::RustlsConnect;
use super::postgres::{PostgresOptions, failed};

/// The parsed configuration with the password, socket settings and TLS connector of `o`,
/// and the deadline of one connect (every host tried, TLS and login included). Without a
/// CA the connector is never used (`sslmode=disable`), but gives one connection type.
pub(crate) fn configure(o: &PostgresOptions) -> Result<(tokio_postgres::Config, RustlsConnect, Duration), StoreError> {
    let mut cfg = o.check()?;
    if let Some(p) = &o.password_file {
        let field = "storage.postgres.password_file";
        let raw = Zeroizing::new(
            std::fs::read(p)
                .map_err(|e| StoreError::Config { field, reason: format!("cannot read {}: {e}", p.display()) })?,
        );
        let end = raw.iter().rposition(|b| *b != b'\n' && *b != b'\r').map_or(0, |i| i + 1);
        if end == 0 {
            return Err(StoreError::Config { field, reason: format!("{} is empty", p.display()) });
        }
        cfg.password(&raw[..end]);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(o.connect_timeout);
    }
    cfg.keepalives(true).keepalives_idle(Duration::from_secs(10)).keepalives_interval(Duration::from_secs(2));
    cfg.keepalives_retries(3).tcp_user_timeout(Duration::from_secs(15));
    if cfg.get_application_name().is_none() {
        cfg.application_name("pogo-vault");
    }
    // Per host: its TCP connect, TLS and login (hosts are tried one by one, see `connect`).
    let deadline = o.connect_timeout + Duration::from_secs(5);
    let roots = match &o.ca_file {
        Some(ca) => {
            cfg.ssl_mode(SslMode::Require);
            crate::tls::trust_roots(ca)
                .map_err(|e| StoreError::Config { field: "storage.postgres.ca_file", reason: e.to_string() })?
        }
        None => {
            cfg.ssl_mode(SslMode::Disable);
            rustls::RootCertStore::empty()
        }
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Postgres(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((cfg, RustlsConnect(Arc::new(tls)), deadline))
}

/// One configuration per host of `cfg` (that host, its port and `hostaddr`; everything
/// else the same), so each host gets its own deadline: `tokio-postgres` tries a multi-host
/// list itself, but its connect timeout covers only the TCP connect, and a host that
/// accepts and then stays silent would use up the deadline before the next is tried.
fn per_host(cfg: &tokio_postgres::Config) -> Vec<tokio_postgres::Config> {
    let n = cfg.get_hosts().len().max(cfg.get_hostaddrs().len()).max(1);
    (0..n)
        .map(|i| {
            let mut c = tokio_postgres::Config::new();
            match cfg.get_hosts().get(i) {
                Some(tokio_postgres::config::Host::Tcp(h)) => {
                    c.host(h);
                }
                Some(tokio_postgres::config::Host::Unix(p)) => {
                    c.host_path(p);
                }
                None => {}
            }
            if let Some(a) = cfg.get_hostaddrs().get(i) {
                c.hostaddr(*a);
            }
            let ports = cfg.get_ports();
            if let Some(p) = ports.get(i).or(if ports.len() == 1 { ports.first() } else { None }) {
                c.port(*p);
            }
            if let Some(u) = cfg.get_user() {
                c.user(u);
            }
            if let Some(p) = cfg.get_password() {
                c.password(p);
            }
            if let Some(d) = cfg.get_dbname() {
                c.dbname(d);
            }
            if let Some(opts) = cfg.get_options() {
                c.options(opts);
            }
            if let Some(a) = cfg.get_application_name() {
                c.application_name(a);
            }
            if let Some(t) = cfg.get_connect_timeout() {
                c.connect_timeout(*t);
            }
            if let Some(t) = cfg.get_tcp_user_timeout() {
                c.tcp_user_timeout(*t);
            }
            c.keepalives(cfg.get_keepalives()).keepalives_idle(cfg.get_keepalives_idle());
            if let Some(t) = cfg.get_keepalives_interval() {
                c.keepalives_interval(t);
            }
            if let Some(r) = cfg.get_keepalives_retries() {
                c.keepalives_retries(r);
            }
            c.ssl_mode(cfg.get_ssl_mode())
                .target_session_attrs(cfg.get_target_session_attrs())
                .channel_binding(cfg.get_channel_binding());
            c
        })
        .collect()
}

/// Connects to the first host of `cfg` that answers (and, with
/// `target_session_attrs=read-write`, takes writes), each within `deadline`.
pub(crate) async fn connect(
    cfg: &tokio_postgres::Config,
    tls: &RustlsConnect,
    deadline: Duration,
) -> Result<(Client, tokio_postgres::Connection<tokio_postgres::Socket, super::pg_tls::RustlsStream>), StoreError> {
    let mut last = StoreError::Unavailable("PostgreSQL: no host to connect to".into());
    for c in per_host(cfg) {
        match tokio::time::timeout(deadline, c.connect(tls.clone())).await {
            Ok(Ok(pair)) => return Ok(pair),
            Ok(Err(e)) => last = failed(&e),
            Err(_) => {
                last = StoreError::Unavailable(format!("PostgreSQL: no connection within {} s", deadline.as_secs()))
            }
        }
    }
    Err(last)
}

/// What every session of the vault sets first.
pub(crate) fn session_settings(o: &PostgresOptions) -> String {
    let ms = o.statement_timeout.as_millis();
    format!(
        "SET statement_timeout = {ms}; SET lock_timeout = {}; SET idle_in_transaction_session_timeout = {}; \
         SET default_transaction_isolation = 'read committed'; SET synchronous_commit = on",
        ms.min(5_000),
        o.call_timeout().as_millis() + 5_000
    )
}
