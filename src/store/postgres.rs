//! PostgreSQL: the connection options, the connection the vault keeps (reconnecting after
//! a failover), its statements, transactions and migrations.
//!
//! - **Where**: `url` names hosts, port(s) and database, never a password (refused: it
//!   would show in process listings and logs); the password comes from `password_file`.
//!   A multi-host URL with `target_session_attrs=read-write` finds a promoted standby.
//! - **TLS**: with `ca_file`, TLS is required and the server certificate must chain to
//!   that CA and name the host connected to (libpq's `verify-full`), through our rustls and
//!   ring provider ([`crate::tls::trust_roots`]). Without it, only loopback hosts and Unix
//!   sockets are accepted, in plain text. `sslmode` in the URL is refused: TLS is decided
//!   by `ca_file`, so it cannot be weakened by accident.
//! - **Bounded time**: connecting gives up after `connect_timeout` per host; TCP keepalives
//!   and a TCP user timeout notice a dead server; each session sets `statement_timeout` and
//!   `lock_timeout`, so no call waits without end.
//! - **Writes**: every write transaction first takes one transaction-scoped advisory lock
//!   ([`WRITE_LOCK`]): writes are serial across every replica, as SQLite's one writer makes
//!   them on one machine, so each read-modify-write sees the rows as its own.
//! - **Migrations**: one transaction under [`MIGRATE_LOCK`]; `pogo_schema` holds the
//!   version, numbered as SQLite's `user_version` (the lists are in `store::migrations`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use postgres::config::{Host, SslMode};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Socket, Statement};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

use super::error::StoreError;
use super::migrations::PostgresMigration;
use super::sql::{Backend, Row, Sql, Value, to_postgres_params};

/// The advisory lock every write transaction takes first (ASCII `pogo-vw`).
pub const WRITE_LOCK: i64 = 0x0070_6f67_6f2d_7677;
/// The advisory lock migrations run under (ASCII `pogo-vm`).
pub const MIGRATE_LOCK: i64 = 0x0070_6f67_6f2d_766d;

/// How the vault reaches its PostgreSQL database (`[storage.postgres]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// `postgresql://user@host[:port][,host2[:port2]]/dbname[?target_session_attrs=read-write]`
    /// or the `key=value` form; no password.
    pub url: String,
    /// A file holding the password (a trailing newline is ignored); mode 0600 advised.
    pub password_file: Option<PathBuf>,
    /// PEM: the CA the server's certificate must chain to; TLS is required when set.
    pub ca_file: Option<PathBuf>,
    /// Per host tried.
    pub connect_timeout: Duration,
    /// How long one statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            password_file: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        }
    }

    /// The URL parsed and checked, without reading any file: what `config check` and the
    /// config loader call, so a wrong URL is named before anything starts.
    pub fn check(&self) -> Result<postgres::Config, StoreError> {
        let bad = |reason: String| StoreError::Config { field: "storage.postgres.url", reason };
        // The parser's message may quote the URL; a URL may (wrongly) hold a password.
        let cfg = postgres::Config::from_str(&self.url)
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
            let remote = cfg.get_hosts().iter().find_map(|h| match h {
                Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
                _ => None,
            });
            if let Some(host) = remote {
                return Err(StoreError::Config {
                    field: "storage.postgres.ca_file",
                    reason: format!("required for {host}: without TLS only loopback hosts and Unix sockets are used"),
                });
            }
        }
        Ok(cfg)
    }

    /// Hosts, ports and database, for logs and errors (never a password).
    pub fn describe(&self) -> String {
        match postgres::Config::from_str(&self.url) {
            Ok(cfg) => {
                let hosts: Vec<String> = cfg
                    .get_hosts()
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let port = cfg.get_ports().get(i).or(cfg.get_ports().first()).copied().unwrap_or(5432);
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

    fn connect(&self) -> Result<Client, StoreError> {
        let mut cfg = self.check()?;
        if let Some(p) = &self.password_file {
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
            cfg.connect_timeout(self.connect_timeout);
        }
        cfg.keepalives(true).keepalives_idle(Duration::from_secs(10)).keepalives_interval(Duration::from_secs(2));
        cfg.keepalives_retries(3).tcp_user_timeout(Duration::from_secs(15));
        if cfg.get_application_name().is_none() {
            cfg.application_name("pogo-vault");
        }
        let client = match &self.ca_file {
            Some(ca) => {
                let roots = crate::tls::trust_roots(ca)
                    .map_err(|e| StoreError::Config { field: "storage.postgres.ca_file", reason: e.to_string() })?;
                let tls =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| StoreError::Postgres(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                cfg.ssl_mode(SslMode::Require);
                cfg.connect(RustlsConnect(Arc::new(tls)))
            }
            None => {
                cfg.ssl_mode(SslMode::Disable);
                cfg.connect(NoTls)
            }
        };
        let mut client = client.map_err(|e| failed(&e))?;
        let ms = self.statement_timeout.as_millis();
        client
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET lock_timeout = {}; SET idle_in_transaction_session_timeout = {}",
                ms.min(5_000),
                ms.max(30_000)
            ))
            .map_err(|e| failed(&e))?;
        Ok(client)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn has_key(url: &str, key: &str) -> bool {
    url.split(['?', '&', ' ']).any(|part| part.trim_start().split('=').next() == Some(key))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A PostgreSQL error as ours: a broken constraint (class 23) is [`StoreError::Constraint`];
/// a server error shows its code and message only (its detail may quote row values); a
/// connection error its own text.
pub(crate) fn failed(e: &postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if db.code().code().starts_with("23") => StoreError::Constraint(db.message().to_owned()),
        Some(db) => StoreError::Postgres(format!("{} ({})", db.message(), db.code().code())),
        None => {
            // The client's own text is general ("error performing TLS handshake"): add the
            // causes (a certificate not valid for the name, a refused connection).
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            StoreError::Postgres(text)
        }
    }
}

/// The vault's connection, its prepared statements, and how to connect again.
pub(crate) struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
    options: PostgresOptions,
}

impl PgConn {
    /// Connects and applies pending migrations.
    pub(crate) fn connect(options: &PostgresOptions, migrations: &[PostgresMigration]) -> Result<PgConn, StoreError> {
        let client = options.connect()?;
        let mut conn = PgConn { client, statements: HashMap::new(), options: options.clone() };
        conn.migrate(migrations)?;
        Ok(conn)
    }

    pub(crate) fn describe(&self) -> String {
        self.options.describe()
    }

    /// Connects again when the server closed the connection (a restart, a failover): the
    /// next call after a failure finds the new primary.
    pub(crate) fn ready(&mut self) -> Result<&mut PgConn, StoreError> {
        if self.client.is_closed() {
            tracing::warn!(db = %self.options.describe(), "PostgreSQL connection lost: connecting again");
            self.statements.clear();
            self.client = self.options.connect()?;
        }
        Ok(self)
    }

    /// A write transaction holding [`WRITE_LOCK`].
    pub(crate) fn write_tx(&mut self) -> Result<PgTx<'_>, StoreError> {
        let PgConn { client, statements, .. } = self.ready()?;
        let mut tx = client.transaction().map_err(|e| failed(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]).map_err(|e| failed(&e))?;
        Ok(PgTx { tx, statements })
    }

    /// The schema version `pogo_schema` records (0 for an empty database).
    pub(crate) fn schema_version(&mut self) -> Result<i64, StoreError> {
        let rows = self.client.query("SELECT version FROM pogo_schema WHERE id = 1", &[]).map_err(|e| failed(&e))?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0))
    }

    fn migrate(&mut self, migrations: &[PostgresMigration]) -> Result<(), StoreError> {
        let supported = migrations.last().map_or(0, |m| m.version);
        let mut tx = self.client.transaction().map_err(|e| failed(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK]).map_err(|e| failed(&e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS pogo_schema (
                 id BIGINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
        )
        .map_err(|e| failed(&e))?;
        let rows = tx.query("SELECT version FROM pogo_schema WHERE id = 1", &[]).map_err(|e| failed(&e))?;
        let found: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        let mut at = found;
        for m in migrations.iter().filter(|m| m.version > found) {
            tx.batch_execute(m.sql).map_err(|e| failed(&e))?;
            tracing::info!(migration = m.name, "applied schema migration (PostgreSQL)");
            at = m.version;
        }
        if at != found || rows.is_empty() {
            tx.execute(
                "INSERT INTO pogo_schema (id, version, updated_at) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                &[&at, &now_ms()],
            )
            .map_err(|e| failed(&e))?;
        }
        tx.commit().map_err(|e| failed(&e))
    }
}

/// The prepared statement for `sql` (written with `?N`), prepared once per connection.
fn statement<C: postgres::GenericClient>(
    client: &mut C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, StoreError> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(&to_postgres_params(sql)).map_err(|e| failed(&e))?;
    statements.insert(sql.to_owned(), s.clone());
    Ok(s)
}

fn execute<C: postgres::GenericClient>(
    client: &mut C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    args: &[Value],
) -> Result<usize, StoreError> {
    let s = statement(client, statements, sql)?;
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    let n = client.execute(&s, &params).map_err(|e| failed(&e))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn query<C: postgres::GenericClient>(
    client: &mut C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    args: &[Value],
) -> Result<Vec<Row>, StoreError> {
    let s = statement(client, statements, sql)?;
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&s, &params).map_err(|e| failed(&e))?;
    rows.iter().map(read_row).collect()
}

fn read_row(r: &postgres::Row) -> Result<Row, StoreError> {
    let bad = |i: usize, e: postgres::Error| StoreError::Corrupt(format!("column {i}: {e}"));
    let mut values = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map_err(|e| bad(i, e))?.map(Value::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i).map_err(|e| bad(i, e))?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i).map_err(|e| bad(i, e))?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i).map_err(|e| bad(i, e))?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i).map_err(|e| bad(i, e))?.map(Value::Bytes)
        } else if <&str as postgres::types::FromSql>::accepts(ty) {
            r.try_get::<_, Option<String>>(i).map_err(|e| bad(i, e))?.map(Value::Text)
        } else {
            return Err(StoreError::Corrupt(format!("column {i} has type {ty}, which the store does not read")));
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl Sql for PgConn {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        let PgConn { client, statements, .. } = self.ready()?;
        execute(client, statements, sql, args)
    }
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let PgConn { client, statements, .. } = self.ready()?;
        query(client, statements, sql, args)
    }
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
}

/// An open write transaction (holding [`WRITE_LOCK`]); rolled back when dropped uncommitted.
pub struct PgTx<'a> {
    tx: postgres::Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
}

impl PgTx<'_> {
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(|e| failed(&e))
    }
}

impl Sql for PgTx<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        execute(&mut self.tx, self.statements, sql, args)
    }
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        query(&mut self.tx, self.statements, sql, args)
    }
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Value::Text(t) if <&str as ToSql>::accepts(ty) => t.as_str().to_sql(ty, out),
            Value::Bytes(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            v => Err(format!("{v:?} for a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// TLS to PostgreSQL through rustls: the server certificate must chain to the configured
/// CA and be valid for the host name connected to.
#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

struct RustlsConnectTo {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnectTo;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectTo, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned())?;
        Ok(RustlsConnectTo { config: self.0.clone(), name })
    }
}

impl TlsConnect<Socket> for RustlsConnectTo {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding; the server is authenticated by its certificate.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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
        check("postgresql://vault@db1:5432,db2:5432/vault?target_session_attrs=read-write", true).unwrap();
        let e = check("postgresql://vault:hunter2@127.0.0.1/vault", false).unwrap_err();
        assert!(e.contains("storage.postgres.url") && e.contains("password_file") && !e.contains("hunter2"), "{e}");
        let e = check("postgresql://vault@127.0.0.1/vault?sslmode=disable", true).unwrap_err();
        assert!(e.contains("sslmode"), "{e}");
        let e = check("postgresql://vault@db.example.com/vault", false).unwrap_err();
        assert!(e.contains("storage.postgres.ca_file") && e.contains("db.example.com"), "{e}");
        let e = check("postgresql://vault@127.0.0.1/", false).unwrap_err();
        assert!(e.contains("no database"), "{e}");
        let e = check("postgresql://127.0.0.1/vault", false).unwrap_err();
        assert!(e.contains("no user"), "{e}");
        let e = check("mysql://x", false).unwrap_err();
        assert!(e.contains("storage.postgres.url"), "{e}");
    }

    #[test]
    fn describe_names_hosts_and_database_only() {
        let o = PostgresOptions::new("postgresql://vault@db1:5433,db2/vault?target_session_attrs=read-write");
        assert_eq!(o.describe(), "postgres://db1:5433,db2:5432/vault");
    }
}
