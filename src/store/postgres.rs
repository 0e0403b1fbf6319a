//! PostgreSQL: how the vault reaches its database ([`PostgresOptions`], checked before
//! anything connects), and what its errors mean ([`failed`]). The connection itself is
//! `pg_conn.rs`; TLS `pg_tls.rs`; values `pg_values.rs`.
//!
//! - **Where**: `url` names hosts, port(s) and database, never a password (refused: it
//!   would show in process listings and logs); the password comes from `password_file`.
//!   A multi-host URL with `target_session_attrs=read-write` finds a promoted standby.
//! - **TLS**: with `ca_file`, TLS is required and the server certificate must chain to
//!   that CA and name the host connected to (libpq's `verify-full`), through our rustls and
//!   ring provider. Without it, only loopback hosts (and `hostaddr`s) and Unix sockets are
//!   accepted, in plain text. `sslmode` in the URL is refused: TLS is decided by `ca_file`
//!   alone, so it cannot be weakened by accident.
//! - **Bounded time**: every connect and every call has a deadline on our side (a server
//!   that accepts and then says nothing cannot hold the vault); TCP keepalives and a TCP
//!   user timeout notice a dead peer; each session sets `statement_timeout` and
//!   `lock_timeout` on the server's side too.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

use super::error::StoreError;

/// The advisory lock every write transaction takes first (ASCII `pogo-vw`).
pub const WRITE_LOCK: i64 = 0x0070_6f67_6f2d_7677;
/// The advisory lock every audit-log append takes first (ASCII `pogo-va`): one global chain,
/// appended by one replica's writer at a time.
pub const AUDIT_LOCK: i64 = 0x0070_6f67_6f2d_7661;
/// The advisory lock migrations run under (ASCII `pogo-vm`).
pub const MIGRATE_LOCK: i64 = 0x0070_6f67_6f2d_766d;

/// Connections per pool unless `pool_size` says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// The largest `pool_size` accepted. A replica holds up to 4 + 2 × `pool_size` connections
/// (and one per audit sink): at 32, three replicas need 204, so the database's
/// `max_connections` must be sized for what is configured (`deploy/HA.md`).
pub const MAX_POOL_SIZE: usize = 32;

/// How the vault reaches its PostgreSQL database (`[storage.postgres]`).
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// `postgresql://user@host[:port][,host2[:port2]]/dbname[?target_session_attrs=read-write]`
    /// or the `key=value` form; no password.
    pub url: String,
    /// A file holding the password (a trailing newline is ignored); mode 0600 advised.
    pub password_file: Option<PathBuf>,
    /// PEM: the CA the server's certificate must chain to; TLS is required when set.
    pub ca_file: Option<PathBuf>,
    /// Per host tried (TCP connect); each host's whole connect, TLS and login included,
    /// has a deadline of this plus 5 s, and the hosts are tried one after another.
    pub connect_timeout: Duration,
    /// How long one statement may run: the server's `statement_timeout`, and (plus 5 s)
    /// how long the vault waits for any answer before it gives the connection up.
    pub statement_timeout: Duration,
    /// The most connections this process opens at once for audit reads (queries, watches,
    /// sinks), and again for the shared budget and token cache (`store::pg_pool`), beside
    /// its four long-lived ones.
    pub pool_size: usize,
}

// The URL is shown as `describe()` shows it: a URL that wrongly holds a password must not
// print it before `check()` refuses it.
impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &self.describe())
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            password_file: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            pool_size: DEFAULT_POOL_SIZE,
        }
    }

    /// How long the vault waits for any one answer.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(5)
    }

    /// The URL parsed and checked, without reading any file: what `config check` and the
    /// config loader call, so a wrong URL is named before anything starts.
    pub fn check(&self) -> Result<tokio_postgres::Config, StoreError> {
        let bad = |reason: String| StoreError::Config { field: "storage.postgres.url", reason };
        // The parser's message may quote the URL; a URL may (wrongly) hold a password.
        let cfg = tokio_postgres::Config::from_str(&self.url)
            .map_err(|_| bad("not a PostgreSQL connection URL (postgresql://user@host:port/dbname)".into()))?;
        if cfg.get_password().is_some() {
            return Err(bad("holds a password: put it in storage.postgres.password_file instead".into()));
        }
        if has_key(&self.url, "sslmode") || has_key(&self.url, "sslnegotiation") {
            return Err(bad("sets sslmode: TLS is required exactly when storage.postgres.ca_file is set".into()));
        }
        if cfg.get_hosts().is_empty() && cfg.get_hostaddrs().is_empty() {
            return Err(bad("names no host".into()));
        }
        if cfg.get_dbname().is_none() {
            return Err(bad("names no database (postgresql://user@host/DBNAME)".into()));
        }
        if cfg.get_user().is_none() {
            return Err(bad("names no user (postgresql://USER@host/dbname)".into()));
        }
        if self.ca_file.is_none() {
            // The address connected to is the `hostaddr` when one is given, else the host.
            let remote = cfg.get_hostaddrs().iter().find(|a| !a.is_loopback()).map(ToString::to_string).or_else(|| {
                cfg.get_hosts().iter().enumerate().find_map(|(i, h)| match h {
                    Host::Tcp(name) if cfg.get_hostaddrs().get(i).is_none() && !is_loopback(name) => Some(name.clone()),
                    _ => None,
                })
            });
            if let Some(host) = remote {
                return Err(StoreError::Config {
                    field: "storage.postgres.ca_file",
                    reason: format!("required for {host}: without TLS only loopback hosts and Unix sockets are used"),
                });
            }
        } else if cfg.get_hosts().len() < cfg.get_hostaddrs().len() {
            return Err(
                bad("gives a hostaddr without a host: TLS checks the certificate against the host name".into()),
            );
        }
        let secs = |field: &'static str, d: Duration, max: u64| {
            if d < Duration::from_secs(1) || d > Duration::from_secs(max) {
                Err(StoreError::Config { field, reason: format!("must be between 1 s and {max} s") })
            } else {
                Ok(())
            }
        };
        secs("storage.postgres.connect_timeout_secs", self.connect_timeout, 300)?;
        secs("storage.postgres.statement_timeout_secs", self.statement_timeout, 3600)?;
        let most = MAX_POOL_SIZE;
        if !(1..=most).contains(&self.pool_size) {
            return Err(StoreError::Config {
                field: "storage.postgres.pool_size",
                reason: format!("must be 1 to {most}, not {}", self.pool_size),
            });
        }
        Ok(cfg)
    }

    /// Hosts, ports and database, for logs and errors (never a password).
    pub fn describe(&self) -> String {
        match tokio_postgres::Config::from_str(&self.url) {
            Ok(cfg) => {
                let ports = cfg.get_ports();
                let hosts: Vec<String> = cfg
                    .get_hosts()
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                        match h {
                            Host::Tcp(n) => format!("{n}:{port}"),
                            Host::Unix(p) => format!("{}:{port}", p.display()),
                        }
                    })
                    .collect();
                format!("postgres://{}/{}", hosts.join(","), cfg.get_dbname().unwrap_or(""))
            }
            Err(_) => "postgres (invalid URL)".to_owned(),
        }
    }
}

fn has_key(url: &str, key: &str) -> bool {
    url.split(['?', '&', ' ', '\t']).any(|part| part.trim().split('=').next().map(str::trim) == Some(key))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A PostgreSQL error as ours: a broken constraint (class 23) is [`StoreError::Constraint`];
/// what may pass on its own (the connection, the server shutting down or starting, a
/// standby not yet promoted, a timeout, a lock or serialization conflict, resources) is
/// [`StoreError::Unavailable`]; anything else (a refused login, a permission, a bad
/// statement) is [`StoreError::Postgres`]. A server error shows its code and message only
/// (its detail may quote row values); a client error its causes.
pub(crate) fn failed(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let text = format!("{} ({code})", db.message());
            if code.starts_with("23") {
                StoreError::Constraint(db.message().to_owned())
            } else if code != "57P04"
                && ["08", "53", "57P", "40001", "40P01", "55P03", "57014", "25006", "25P03"]
                    .iter()
                    .any(|c| code.starts_with(c))
            {
                StoreError::Unavailable(text)
            } else {
                StoreError::Postgres(text)
            }
        }
        None => {
            // The client's own text is general ("error performing TLS handshake"): add the
            // causes (a certificate not valid for the name, a refused connection).
            // A transport failure (an I/O error, a closed connection) may pass; a refused
            // certificate (a rustls error, even inside an I/O error) will not.
            let mut text = e.to_string();
            let (mut io, mut tls) = (e.is_closed(), false);
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                io |= c.downcast_ref::<std::io::Error>().is_some();
                tls |= c.downcast_ref::<rustls::Error>().is_some();
                if let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(|i| i.get_ref()) {
                    tls |= inner.downcast_ref::<rustls::Error>().is_some();
                }
                cause = c.source();
            }
            if io && !tls { StoreError::Unavailable(text) } else { StoreError::Postgres(text) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, ca: bool) -> Result<(), String> {
        let mut o = PostgresOptions::new(url);
        if ca {
            o.ca_file = Some("/ca.pem".into());
        }
        o.check().map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_url_is_checked_before_anything_connects() {
        check("postgresql://vault@127.0.0.1:5432/vault", false).unwrap();
        check("postgresql://vault@localhost/vault?target_session_attrs=read-write", false).unwrap();
        check("postgresql://vault@[::1]/vault", false).unwrap();
        check("host=/run/postgresql user=vault dbname=vault", false).unwrap();
        check("postgresql://vault@db1:5432,db2:5432/vault?target_session_attrs=read-write", true).unwrap();
        let e = check("postgresql://vault:hunter2@127.0.0.1/vault", false).unwrap_err();
        assert!(e.contains("storage.postgres.url") && e.contains("password_file") && !e.contains("hunter2"), "{e}");
        for url in [
            "postgresql://vault@127.0.0.1/vault?sslmode=disable",
            "host=127.0.0.1 user=vault dbname=vault sslmode = disable",
            "host=127.0.0.1 user=vault dbname=vault\tsslmode=disable",
        ] {
            let e = check(url, true).unwrap_err();
            assert!(e.contains("sslmode"), "{url}: {e}");
        }
        let e = check("postgresql://vault@db.example.com/vault", false).unwrap_err();
        assert!(e.contains("storage.postgres.ca_file") && e.contains("db.example.com"), "{e}");
        // The address connected to is the hostaddr: a loopback name does not make it local.
        for url in [
            "host=localhost hostaddr=203.0.113.9 user=vault dbname=vault",
            "postgresql://vault@/vault?hostaddr=203.0.113.9",
        ] {
            let e = check(url, false).unwrap_err();
            assert!(e.contains("storage.postgres.ca_file") && e.contains("203.0.113.9"), "{url}: {e}");
        }
        check("host=localhost hostaddr=127.0.0.1 user=vault dbname=vault", false).unwrap();
        let e = check("postgresql://vault@/vault?hostaddr=203.0.113.9", true).unwrap_err();
        assert!(e.contains("hostaddr without a host"), "{e}");
        let e = check("postgresql://vault@127.0.0.1/", false).unwrap_err();
        assert!(e.contains("no database"), "{e}");
        let e = check("postgresql://127.0.0.1/vault", false).unwrap_err();
        assert!(e.contains("no user"), "{e}");
        let e = check("mysql://x", false).unwrap_err();
        assert!(e.contains("storage.postgres.url"), "{e}");
        let mut o = PostgresOptions::new("postgresql://vault@127.0.0.1/vault");
        o.statement_timeout = Duration::ZERO;
        assert!(o.check().unwrap_err().to_string().contains("storage.postgres.statement_timeout_secs"));
        o.statement_timeout = Duration::from_secs(10);
        for bad in [0, MAX_POOL_SIZE + 1] {
            o.pool_size = bad;
            assert!(o.check().unwrap_err().to_string().contains("storage.postgres.pool_size"), "{bad}");
        }
    }

    #[test]
    fn describe_and_debug_name_hosts_and_database_only() {
        let o = PostgresOptions::new("postgresql://vault@db1:5433,db2:5433/vault?target_session_attrs=read-write");
        assert_eq!(o.describe(), "postgres://db1:5433,db2:5433/vault");
        let o = PostgresOptions::new("postgresql://vault:hunter2@db1/vault");
        assert!(!format!("{o:?}").contains("hunter2"), "{o:?}");
    }
}
