//! [`AuditError`]: what can go wrong in the audit log, for every file of the module. A leaf:
//! it imports nothing of its siblings.

use crate::store::StoreError;

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record could not be made durable in time (commit failed, database locked, disk
    /// full, queue full): the request that needed it must fail with `UNAVAILABLE`.
    #[error("the audit log is unavailable: {reason}; the request was not carried out, retry shortly")]
    Unavailable { reason: String },
    /// The writer was shut down (or its thread could not be started).
    #[error("the audit log is closed")]
    Closed,
    /// No audit database at the path.
    #[error("no audit database at {path}")]
    Missing { path: String },
    /// The file exists but is not a pogo-vault audit database.
    #[error("{path} is not a pogo-vault audit database")]
    NotAuditLog { path: String },
    /// A stored row cannot be read back as this binary wrote it (edited, corrupt, or written
    /// by a newer pogo-vault).
    #[error("audit database is corrupt: {0}")]
    Corrupt(String),
    /// A checkpoint file or public key given to us is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// Opening or migrating the audit database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SQLite failed while reading.
    #[error("audit database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Writing an export failed.
    #[error("writing the export failed: {0}")]
    Io(#[from] std::io::Error),
    /// An operator command's input cannot be carried out as given (`field` names the
    /// option); nothing was changed.
    #[error("{field}: {reason}")]
    Refused { field: &'static str, reason: String },
    /// Rows this process wrote are no longer as it wrote them: the file was edited under a
    /// running writer, which then refuses to append or sign (fail closed, alarmed).
    #[error("ALARM: {0}")]
    Altered(String),
}
