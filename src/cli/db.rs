//! How a command opens the vault database files itself (not through a server): [`unlock`]
//! to read; [`unlock_for_change`] to change, holding the database lock (a running server or
//! another command holding it refuses the change, naming its pid), with the audit signing
//! key and the operator the change's record needs; [`change_error`], a refused change as
//! the one line the operator sees.

use super::args::GlobalArgs;
use super::error::CliError;
use super::operator::Operator;
use crate::store::lock::{DbLock, Holder};
use crate::vault::{Vault, VaultError};

pub(super) fn unlock(g: &GlobalArgs) -> Result<Vault, CliError> {
    let source = g.master.source()?;
    Ok(Vault::unlock(&g.db, &source)?)
}

/// What a changing command holds: the database lock (no server, no other command on these
/// files until it is dropped), the vault, the audit signing key (the change's record is
/// appended to the audit database before the change commits) and who is asking.
pub(super) struct ForChange {
    pub(super) _lock: DbLock,
    pub(super) vault: Vault,
    pub(super) key: ed25519_dalek::SigningKey,
    pub(super) op: Operator,
}

/// Takes the database lock, then unlocks the vault for a change. A running server holds the
/// lock: the command is refused and names it (use the gRPC API, or stop the server).
pub(super) fn unlock_for_change(g: &GlobalArgs) -> Result<ForChange, CliError> {
    let lock = lock_for_change(&g.db)?;
    let vault = unlock(g)?;
    let key = vault.audit_signing_key()?;
    Ok(ForChange { _lock: lock, vault, key, op: Operator::current() })
}

/// The database lock for a command that writes `db`.
pub fn lock_for_change(db: &std::path::Path) -> Result<DbLock, CliError> {
    DbLock::acquire(db, Holder::Command).map_err(|e| CliError::new(e.to_string()))
}

/// A refused change, as the one line the operator sees.
pub(super) fn change_error(g: &GlobalArgs, e: VaultError) -> CliError {
    match e {
        VaultError::NotRecorded { reason } => CliError::new(format!(
            "the audit database {} cannot be written ({reason}); nothing was changed",
            g.audit_db().display()
        )),
        e => e.into(),
    }
}
