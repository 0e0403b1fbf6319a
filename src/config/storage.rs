//! `[storage]`: where the vault and its audit log live. SQLite (the default: `vault.db` and
//! `vault.audit_db`, files on one machine) or PostgreSQL (`[storage.postgres]`: one database
//! every replica shares, for high availability).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::store::{PostgresOptions, StoreError};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    #[serde(default)]
    pub backend: StorageBackend,
    pub postgres: Option<PostgresSection>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Sqlite,
    Postgres,
}

/// `[storage.postgres]`: the fields of [`PostgresOptions`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// `postgresql://user@host[:port][,host2[:port2]]/dbname[?target_session_attrs=read-write]`;
    /// no password in it.
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: f64,
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout_secs: f64,
    /// The most connections a replica opens at once for audit reads, and again for the shared
    /// budget and token cache (see `store::pg_pool`).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

fn default_connect_timeout() -> f64 {
    5.0
}
fn default_statement_timeout() -> f64 {
    10.0
}
fn default_pool_size() -> usize {
    crate::store::postgres::DEFAULT_POOL_SIZE
}

impl StorageSection {
    /// The PostgreSQL options with `backend = "postgres"`, `None` with SQLite.
    pub fn postgres_options(&self) -> Option<PostgresOptions> {
        let p = self.postgres.as_ref().filter(|_| self.backend == StorageBackend::Postgres)?;
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO);
        Some(PostgresOptions {
            url: p.url.clone(),
            password_file: p.password_file.clone(),
            ca_file: p.ca_file.clone(),
            connect_timeout: secs(p.connect_timeout_secs),
            statement_timeout: secs(p.statement_timeout_secs),
            pool_size: p.pool_size,
        })
    }

    /// The section is whole and its options pass [`PostgresOptions::check`]. `Err((key,
    /// reason))` names the key.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        match (self.backend, &self.postgres) {
            (StorageBackend::Sqlite, None) => Ok(()),
            (StorageBackend::Sqlite, Some(_)) => {
                Err(("storage.backend", "is \"sqlite\" (the default) but [storage.postgres] is set: say which".into()))
            }
            (StorageBackend::Postgres, None) => {
                Err(("storage.postgres", "required with backend = \"postgres\" (url, password_file, ...)".into()))
            }
            (StorageBackend::Postgres, Some(_)) => {
                let options = self.postgres_options().ok_or(("storage.postgres", "missing".to_owned()))?;
                match options.check() {
                    Ok(_) => Ok(()),
                    Err(StoreError::Config { field, reason }) => Err((field, reason)),
                    Err(e) => Err(("storage.postgres", e.to_string())),
                }
            }
        }
    }

    /// The files the section names, to resolve against the config file's directory.
    pub(super) fn files_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        self.postgres.iter_mut().flat_map(|p| p.password_file.iter_mut().chain(p.ca_file.iter_mut()))
    }
}
