//! Vault operations block on SQLite: use cases run them on the blocking pool.

use std::sync::Arc;

use crate::vault::{Vault, VaultError};

/// Why a vault operation run on the blocking pool did not return.
#[derive(Debug)]
pub(crate) enum Blocking {
    Vault(VaultError),
    /// The blocking task panicked or was cancelled.
    Lost,
}

/// Runs a blocking vault operation on the blocking pool.
pub(crate) async fn on_vault<T: Send + 'static>(
    vault: &Arc<Vault>,
    f: impl FnOnce(&Vault) -> Result<T, VaultError> + Send + 'static,
) -> Result<T, Blocking> {
    let vault = vault.clone();
    tokio::task::spawn_blocking(move || f(&vault)).await.map_err(|_| Blocking::Lost)?.map_err(Blocking::Vault)
}

impl Blocking {
    /// Into a use case's error: a vault error through `vault`, a lost task as `lost`.
    pub(crate) fn into_error<E>(self, vault: impl FnOnce(VaultError) -> E, lost: E) -> E {
        match self {
            Blocking::Vault(v) => vault(v),
            Blocking::Lost => lost,
        }
    }
}
