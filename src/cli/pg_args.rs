//! The PostgreSQL options of CLI commands that read or write a database directly (`audit
//! verify --postgres-url`): the same fields as `[storage.postgres]`, checked the same way
//! (no password in the URL, the password from a file, TLS with a CA file or loopback only).

use std::path::PathBuf;
use std::time::Duration;

use super::CliError;
use crate::store::PostgresOptions;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PostgresArgs {
    /// A PostgreSQL database instead of a file: `postgresql://user@host[:port]/dbname`
    /// (several hosts allowed, `target_session_attrs=read-write`); no password in it.
    #[arg(long, value_name = "URL")]
    pub postgres_url: Option<String>,
    /// With --postgres-url: a file holding the password.
    #[arg(long, value_name = "FILE", requires = "postgres_url")]
    pub postgres_password_file: Option<PathBuf>,
    /// With --postgres-url: the CA (PEM) the server's certificate must chain to; TLS
    /// (verify-full) is used exactly when this is given, plaintext only to loopback.
    #[arg(long, value_name = "FILE", requires = "postgres_url")]
    pub postgres_ca_file: Option<PathBuf>,
}

impl PostgresArgs {
    /// The checked options, or `None` without --postgres-url. Errors name the option.
    pub fn options(&self) -> Result<Option<PostgresOptions>, CliError> {
        let Some(url) = &self.postgres_url else { return Ok(None) };
        let options = PostgresOptions {
            password_file: self.postgres_password_file.clone(),
            ca_file: self.postgres_ca_file.clone(),
            ..PostgresOptions::new(url.clone())
        };
        options.check().map_err(|e| CliError::new(cli_names(&e.to_string())))?;
        // The CLI waits for one answer at most this long (a command, not a server).
        Ok(Some(PostgresOptions { statement_timeout: Duration::from_secs(60), ..options }))
    }
}

/// The option names of this command for the `[storage.postgres]` field names in a message.
fn cli_names(message: &str) -> String {
    message
        .replace("storage.postgres.password_file", "--postgres-password-file")
        .replace("storage.postgres.ca_file", "--postgres-ca-file")
        .replace("storage.postgres.url", "--postgres-url")
}
