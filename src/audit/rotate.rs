//! Signing-key rotation, the audit side: one transaction that records the rotation
//! (`signing_key_rotated`, naming the new key id and public key), signs a checkpoint of it
//! with the old key, and stores the old key's [`Handover`] to the new key over that head.
//!
//! Order (`pogo-vault audit rotate-signing-key`): this transaction commits **before** the
//! vault database stores the new key, so the rotation is audited before it takes effect. If
//! the audit database cannot be written, nothing changes. If the vault database then fails
//! to store the new key, the CLI still holds the new key and hands back to the old one
//! ([`hand_over_blocking`] the other way round), so the log's key chain again ends at the
//! key the vault holds.
//!
//! Known window: a crash (power loss, `kill -9`) between the two commits leaves a log
//! handed over to a key the vault never stored. A server then refuses to open the log with
//! a message naming the situation; nothing already in the log loses its proof, but the
//! vault cannot sign again until the operator restores the vault database's key and audit
//! database from a backup taken together. This is documented in ARCHITECTURE.md.

use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::TransactionBehavior;

use super::handover::{self, Handover};
use super::record::{Action, AuditRecord, Outcome};
use super::{AuditError, db};
use crate::crypto::audit_key_id;
use crate::store::now_ms;

/// Records the hand-over from `old` to `new` in the audit database at `path` (one
/// transaction, waiting up to the store's busy timeout for a server's writer). `caller`
/// names who rotated. Fails, changing nothing, when the file cannot be written or when
/// `old` is not the key in force in this file.
pub fn hand_over_blocking(
    path: &Path,
    old: &SigningKey,
    new: &VerifyingKey,
    caller: &str,
    request_id: &str,
) -> Result<Handover, AuditError> {
    let unavailable = |e: AuditError| AuditError::Unavailable { reason: e.to_string() };
    let mut conn = db::open_writer(path, &old.verifying_key(), None).map_err(unavailable)?;
    let old_id = audit_key_id(old.verifying_key().as_bytes());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(e.into()))?;
    if handover::is_retired(&mut &*tx, &old_id)? {
        return Err(AuditError::Unavailable {
            reason: format!("the audit log no longer accepts key {old_id}: it was already handed over to a successor"),
        });
    }
    db::register_key(&mut &*tx, new).map_err(|e| unavailable(e.into()))?;
    let rec = AuditRecord::new(Action::SigningKeyRotated, Outcome::Ok)
        .caller(caller, "")
        .detail(Handover::event_detail(&old_id, new))
        .request(request_id, "local");
    let mut links = Vec::with_capacity(1);
    let (seq, hash) = db::append_in_tx(&mut &*tx, now_ms(), std::iter::once(&rec), &mut links).map_err(unavailable)?;
    db::put_checkpoint(&mut &*tx, old, seq, hash).map_err(unavailable)?;
    let h = Handover::sign(seq, hash, now_ms(), old, new);
    handover::put(&mut &*tx, &h).map_err(unavailable)?;
    tx.commit().map_err(|e| unavailable(e.into()))?;
    Ok(h)
}
