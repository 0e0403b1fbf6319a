//! How a command reaches a running vault over mutual TLS: [`ConnectArgs`] for the client
//! commands (`token`, `status`, `audit`, `onboard`), [`ThroughServer`] for an operator change
//! made with `--endpoint` instead of on the database files, and [`code_name`], the gRPC
//! status code as a failed command prints it.

use std::path::PathBuf;

use clap::Args;

use super::args::ChangeDbArgs;
use super::error::CliError;
use super::runtime::runtime;
use crate::client::connect;
use crate::tls::ClientTlsFiles;

/// How a caller reaches the vault (shared by `token` and other client commands).
#[derive(Debug, Args, Clone)]
pub struct ConnectArgs {
    /// The vault's address.
    #[arg(long, env = "POGO_VAULT_ENDPOINT", default_value = "https://127.0.0.1:50051")]
    pub endpoint: String,
    /// CA certificate(s) that issued the vault's server certificate (PEM).
    #[arg(long, env = "POGO_VAULT_CA")]
    pub ca: PathBuf,
    /// This caller's client certificate (PEM).
    #[arg(long, env = "POGO_VAULT_CERT")]
    pub cert: PathBuf,
    /// This caller's private key (PEM, mode 0600).
    #[arg(long, env = "POGO_VAULT_KEY")]
    pub key: PathBuf,
    /// Name to expect in the server certificate (default: the endpoint's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

impl ConnectArgs {
    pub async fn channel(&self) -> Result<tonic::transport::Channel, CliError> {
        let files = ClientTlsFiles { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() };
        connect(&self.endpoint, &files, self.server_name.as_deref()).await.map_err(|e| CliError::new(e.to_string()))
    }
}

pub fn code_name(c: tonic::Code) -> String {
    format!("{c:?}").chars().fold(String::new(), |mut s, ch| {
        if ch.is_uppercase() && !s.is_empty() {
            s.push('_');
        }
        s.push(ch.to_ascii_uppercase());
        s
    })
}

/// Make the change through a running vault (role `operator`) instead of on the database
/// files, which a running server holds.
#[derive(Debug, Args)]
pub struct ThroughServer {
    /// The running vault's address (e.g. https://127.0.0.1:8443).
    #[arg(long, env = "POGO_VAULT_ENDPOINT")]
    pub endpoint: Option<String>,
    /// CA certificate(s) that issued the vault's server certificate (PEM).
    #[arg(long, env = "POGO_VAULT_CA", requires = "endpoint")]
    pub ca: Option<PathBuf>,
    /// This operator's client certificate (PEM).
    #[arg(long, env = "POGO_VAULT_CERT", requires = "endpoint")]
    pub cert: Option<PathBuf>,
    /// This operator's private key (PEM, mode 0600).
    #[arg(long, env = "POGO_VAULT_KEY", requires = "endpoint")]
    pub key: Option<PathBuf>,
    /// Name to expect in the server certificate (default: the endpoint's host).
    #[arg(long, requires = "endpoint")]
    pub server_name: Option<String>,
    /// Without --endpoint: the database files to change.
    #[command(flatten)]
    pub files: ChangeDbArgs,
}

impl ThroughServer {
    /// The connection, when `--endpoint` was given.
    pub(super) fn connect_args(&self) -> Result<Option<ConnectArgs>, CliError> {
        let Some(endpoint) = self.endpoint.clone() else { return Ok(None) };
        let need = |v: &Option<PathBuf>, flag: &str| {
            v.clone().ok_or_else(|| CliError::usage(format!("--endpoint needs {flag} as well")))
        };
        Ok(Some(ConnectArgs {
            endpoint,
            ca: need(&self.ca, "--ca")?,
            cert: need(&self.cert, "--cert")?,
            key: need(&self.key, "--key")?,
            server_name: self.server_name.clone(),
        }))
    }
}

/// Runs one operator RPC against a running vault.
pub(super) fn through_server<T>(
    conn: ConnectArgs,
    call: impl AsyncFnOnce(
        crate::proto::v1::operator_service_client::OperatorServiceClient<tonic::transport::Channel>,
    ) -> Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, CliError> {
    runtime()?.block_on(async move {
        let client = crate::proto::v1::operator_service_client::OperatorServiceClient::new(conn.channel().await?);
        call(client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| CliError::new(format!("{}: {}", code_name(s.code()), s.message())))
    })
}
