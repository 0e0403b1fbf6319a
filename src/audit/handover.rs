//! Signing-key hand-overs: the statement, signed by the retiring audit key, that from a
//! given point of the chain on checkpoints are signed by a named successor.
//!
//! A hand-over is bound to the chain twice, so it cannot be moved or replayed elsewhere:
//! it is signed over `(sequence, head_hash)` of the `signing_key_rotated` event that records
//! the rotation, and that event (hashed into the chain) names the new key id and public key.
//! The old key also signs an ordinary checkpoint at the same sequence.
//!
//! The signed message (same primitives as the [module docs](super)):
//!
//! ```text
//! H = "pogo-vault audit v1 key handover" 0x00
//!     i64be(sequence) head_hash(32 bytes) i64be(time_ms)
//!     str(old_key_id) str(new_key_id) new_public_key(32 bytes)
//! ```
//!
//! Invariant: verification accepts a hand-over only when it verifies under the key that is
//! current at that point of the walk (starting from the key the auditor holds); the
//! `signing_keys` table and the hand-over's own fields never vouch for a key.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use super::AuditError;
use crate::crypto::audit_key_id;
use crate::store::sql::{Backend, Row, Sql, args};

/// Domain prefix of a hand-over's signed message.
pub const HANDOVER_DOMAIN: &[u8] = b"pogo-vault audit v1 key handover\0";

/// The retiring key's signed statement naming its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The `signing_key_rotated` event it is signed over.
    pub sequence: i64,
    /// The chain's hash at `sequence`.
    pub head_hash: [u8; 32],
    pub time_ms: i64,
    pub old_key_id: String,
    pub new_key_id: String,
    pub new_public_key: [u8; 32],
    /// Ed25519 by the old key over [`Handover::signed_message`].
    pub signature: [u8; 64],
}

impl Handover {
    /// The retiring key `old` hands over to `new` at `(sequence, head_hash)`.
    pub fn sign(sequence: i64, head_hash: [u8; 32], time_ms: i64, old: &SigningKey, new: &VerifyingKey) -> Handover {
        let mut h = Handover {
            sequence,
            head_hash,
            time_ms,
            old_key_id: audit_key_id(old.verifying_key().as_bytes()),
            new_key_id: audit_key_id(new.as_bytes()),
            new_public_key: new.to_bytes(),
            signature: [0; 64],
        };
        h.signature = old.sign(&h.signed_message()).to_bytes();
        h
    }

    /// See the module docs.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(HANDOVER_DOMAIN.len() + 120);
        m.extend_from_slice(HANDOVER_DOMAIN);
        m.extend_from_slice(&self.sequence.to_be_bytes());
        m.extend_from_slice(&self.head_hash);
        m.extend_from_slice(&self.time_ms.to_be_bytes());
        for s in [&self.old_key_id, &self.new_key_id] {
            m.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
            m.extend_from_slice(s.as_bytes());
        }
        m.extend_from_slice(&self.new_public_key);
        m
    }

    /// Checks that `current` (the key in force at this point of the walk) signed it, and
    /// that it names a valid successor whose id matches its public key. Returns the successor.
    pub fn verify(&self, current: &VerifyingKey) -> Result<VerifyingKey, String> {
        let current_id = audit_key_id(current.as_bytes());
        if self.old_key_id != current_id {
            return Err(format!(
                "hand-over at {} is from key {}, but the key in force there is {current_id} (forged, or a key \
                 that was never handed over)",
                self.sequence, self.old_key_id
            ));
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        current.verify_strict(&self.signed_message(), &sig).map_err(|_| {
            format!(
                "hand-over at {}: signature does not verify under key {current_id} (forged: not signed by the \
                 predecessor)",
                self.sequence
            )
        })?;
        let new = VerifyingKey::from_bytes(&self.new_public_key)
            .map_err(|_| format!("hand-over at {}: the new public key is not a valid Ed25519 key", self.sequence))?;
        if audit_key_id(new.as_bytes()) != self.new_key_id {
            return Err(format!("hand-over at {}: the new key id does not match its public key", self.sequence));
        }
        Ok(new)
    }

    /// The text the `signing_key_rotated` event's detail carries (hashed into the chain).
    pub fn event_detail(old_key_id: &str, new: &VerifyingKey) -> String {
        format!(
            "audit signing key {old_key_id} hands over to {} ({})",
            audit_key_id(new.as_bytes()),
            super::encode_public_key(new)
        )
    }
}

/// True when the database has the hand-over table (audit schema 3 and later on SQLite;
/// every PostgreSQL audit schema).
pub(crate) fn has_table(db: &mut dyn Sql) -> Result<bool, AuditError> {
    if db.backend() == Backend::Postgres {
        return Ok(true);
    }
    let n: i64 = db
        .query_opt("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'signing_handovers'", &[])?
        .map_or(Ok(0), |r| r.get(0))?;
    Ok(n == 1)
}

/// Every stored hand-over in sequence order (none for files older than schema 3). A row of
/// the wrong shape is returned as an error string for the verifier to report.
pub(crate) fn all(db: &mut dyn Sql) -> Result<Vec<Result<Handover, String>>, AuditError> {
    if !has_table(db)? {
        return Ok(Vec::new());
    }
    let rows = db.query(
        "SELECT sequence, head_hash, time_ms, old_key_id, new_key_id, new_public_key, signature \
         FROM signing_handovers ORDER BY sequence",
        &[],
    )?;
    Ok(rows.iter().map(from_row).collect())
}

fn from_row(r: &Row) -> Result<Handover, String> {
    let sequence: i64 = r.get(0).map_err(|e| format!("a hand-over row is unreadable (edited): {e}"))?;
    let edited = |_| format!("hand-over at {sequence}: a field has the wrong type or length (edited)");
    let hash: Vec<u8> = r.get(1).map_err(edited)?;
    let public: Vec<u8> = r.get(5).map_err(edited)?;
    let sig: Vec<u8> = r.get(6).map_err(edited)?;
    let (Ok(head_hash), Ok(new_public_key), Ok(signature)) =
        (<[u8; 32]>::try_from(hash), <[u8; 32]>::try_from(public), <[u8; 64]>::try_from(sig))
    else {
        return Err(format!("hand-over at {sequence}: a field has the wrong length (edited)"));
    };
    Ok(Handover {
        sequence,
        head_hash,
        time_ms: r.get(2).map_err(edited)?,
        old_key_id: r.get(3).map_err(edited)?,
        new_key_id: r.get(4).map_err(edited)?,
        new_public_key,
        signature,
    })
}

/// Stores a hand-over (inside the caller's transaction).
pub(crate) fn put(db: &mut dyn Sql, h: &Handover) -> Result<(), AuditError> {
    db.execute(
        "INSERT INTO signing_handovers (sequence, head_hash, time_ms, old_key_id, new_key_id, new_public_key, \
         signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![
            h.sequence,
            &h.head_hash[..],
            h.time_ms,
            &h.old_key_id,
            &h.new_key_id,
            &h.new_public_key[..],
            &h.signature[..]
        ],
    )?;
    Ok(())
}

/// True when the newest hand-over in this file names a key other than `key_id` as the one
/// in force: a writer holding `key_id` must not sign (its checkpoints would not verify).
pub(crate) fn is_retired(db: &mut dyn Sql, key_id: &str) -> Result<bool, AuditError> {
    if !has_table(db)? {
        return Ok(false);
    }
    let newest: Option<String> = db
        .query_opt("SELECT new_key_id FROM signing_handovers ORDER BY sequence DESC LIMIT 1", &[])?
        .map(|r| r.get(0))
        .transpose()?;
    Ok(newest.is_some_and(|k| k != key_id))
}

/// The key the hand-over chain in this file starts from, found by walking back from `own`
/// through the stored hand-overs and the `signing_keys` table. **Not trusted**: it is where
/// the server's own `VerifyAuditLog` starts; an auditor starts from the key they hold.
pub(crate) fn chain_root(db: &mut dyn Sql, own: &VerifyingKey) -> Result<VerifyingKey, AuditError> {
    let mut key = *own;
    let handovers = all(db)?;
    // Each step moves to an older key; a loop in edited rows is cut by the step bound.
    for _ in 0..=handovers.len() {
        let id = audit_key_id(key.as_bytes());
        let Some(h) = handovers.iter().rev().filter_map(|h| h.as_ref().ok()).find(|h| h.new_key_id == id) else {
            break;
        };
        let public: Option<Vec<u8>> = db
            .query_opt("SELECT public_key FROM signing_keys WHERE key_id = ?1", args![&h.old_key_id])?
            .and_then(|r| r.get(0).ok());
        let Some(older) =
            public.and_then(|p| <[u8; 32]>::try_from(p).ok()).and_then(|p| VerifyingKey::from_bytes(&p).ok())
        else {
            break;
        };
        key = older;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_verifies_only_under_its_predecessor() {
        let old = SigningKey::from_bytes(&[1; 32]);
        let new = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let h = Handover::sign(7, [3; 32], 1000, &old, &new);
        assert_eq!(h.verify(&old.verifying_key()), Ok(new));
        let stranger = SigningKey::from_bytes(&[9; 32]);
        assert!(h.verify(&stranger.verifying_key()).unwrap_err().contains("key in force"));
        let mut moved = h.clone();
        moved.sequence = 8;
        assert!(moved.verify(&old.verifying_key()).unwrap_err().contains("signature does not verify"));
        let forged = Handover::sign(7, [3; 32], 1000, &stranger, &new);
        let mut forged = Handover { old_key_id: h.old_key_id.clone(), ..forged };
        forged.signature = stranger.sign(&forged.signed_message()).to_bytes();
        assert!(forged.verify(&old.verifying_key()).unwrap_err().contains("not signed by the predecessor"));
    }
}
