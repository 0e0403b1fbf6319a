//! The live log's archive anchor: after `audit archive`, the audit database no longer holds
//! events `1..=S`; it holds the anchor `(S, hash of event S)` (the newest row of the
//! `archives` table) and the signed checkpoint at `S`, and its chain continues from there.
//! A leaf: readers (`verify`, the tenant indexer, the writer's `still_holds`) ask it where
//! the live chain starts.
//!
//! Invariant: the anchor is never trusted by itself. Anyone with write access to the file
//! can insert an `archives` row, so every reader that acts on it (skips events below it,
//! accepts that an event it knew is gone, prunes index rows) first [`prove`]s it: the
//! checkpoint stored at exactly `S` names the anchor's hash and its signature verifies under
//! a key the reader holds. Verification additionally requires the `audit_archived` record
//! naming the range (`verify_walk`).

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, OptionalExtension};

use super::AuditError;
use super::chain::Checkpoint;
use crate::crypto::audit_key_id;

/// Where the live chain starts: events `1..=through` are archived; event `through` had `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    /// The first event of the newest archive (its `audit_archived` record names `from..=through`).
    pub from: i64,
    pub through: i64,
    pub hash: [u8; 32],
}

/// True when `schema` of `conn` has the `archives` table (audit schema 4 and later).
fn has_table(conn: &Connection, schema: &str) -> rusqlite::Result<bool> {
    let sql = format!("SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'archives'");
    conn.query_row(&sql, [], |r| r.get::<_, i64>(0)).map(|n| n == 1)
}

/// The anchor of the audit database `main` of `conn`, if anything was ever archived.
pub(crate) fn anchor(conn: &Connection) -> Result<Option<Anchor>, AuditError> {
    if !has_table(conn, "main")? {
        return Ok(None);
    }
    let row: Option<(i64, i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT from_sequence, through_sequence, head_hash FROM main.archives ORDER BY through_sequence DESC LIMIT 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((from, through, hash)) = row else { return Ok(None) };
    let hash = <[u8; 32]>::try_from(hash)
        .map_err(|_| AuditError::Corrupt(format!("archive anchor at {through}: the hash is not 32 bytes")))?;
    Ok(Some(Anchor { from, through, hash }))
}

/// A checkpoint row as stored: head hash, time, key id, signature.
type CheckpointRow = (Vec<u8>, i64, String, Vec<u8>);

/// Proves `a` with the checkpoint stored at exactly `a.through`: it must name `a.hash` and
/// verify under one of `keys`. `Ok(Err(why))` names what is missing; a forged anchor (any
/// sequence, any hash) has no such checkpoint, since only the signing key can make one.
pub(crate) fn prove(conn: &Connection, a: &Anchor, keys: &[VerifyingKey]) -> Result<Result<(), String>, AuditError> {
    // Read here rather than through `db` (this module is a leaf; `db` reaches it through the
    // tenant index). Values of the wrong type are an edit, reported as such.
    let row: rusqlite::Result<Option<CheckpointRow>> = conn
        .prepare_cached("SELECT head_hash, time_ms, key_id, signature FROM main.checkpoints WHERE sequence = ?1")?
        .query_row([a.through], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional();
    let at = a.through;
    let unreadable = || format!("the checkpoint at the archive anchor {at} is unreadable (edited)");
    let (head_hash, time_ms, key_id, signature) = match row {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(Err(format!("no signed checkpoint is stored at the archive anchor {at}"))),
        Err(
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..),
        ) => return Ok(Err(unreadable())),
        Err(e) => return Err(e.into()),
    };
    let (Ok(head_hash), Ok(signature)) = (<[u8; 32]>::try_from(head_hash), <[u8; 64]>::try_from(signature)) else {
        return Ok(Err(unreadable()));
    };
    let cp = Checkpoint { sequence: at, head_hash, time_ms, key_id, signature };
    if cp.head_hash != a.hash {
        return Ok(Err(format!("the checkpoint at the archive anchor {at} names another hash than the anchor")));
    }
    if keys.iter().any(|k| cp.verify(k).is_ok()) {
        return Ok(Ok(()));
    }
    let ids: Vec<String> = keys.iter().map(|k| audit_key_id(k.as_bytes())).collect();
    Ok(Err(format!(
        "the checkpoint at the archive anchor {at} (key {}) does not verify under {}",
        cp.key_id,
        ids.join(" or ")
    )))
}
/// `own` and the keys before it that were in force at `seq`: walking back through hand-overs
/// at or after `seq` whose signature verifies under the older key (never a key the file
/// names without a verified hand-over to `own`).
pub(crate) fn keys_in_force_at(
    conn: &Connection,
    own: &VerifyingKey,
    seq: i64,
) -> Result<Vec<VerifyingKey>, AuditError> {
    let handovers = super::handover::all(conn)?;
    let mut keys = vec![*own];
    for _ in 0..handovers.len() {
        let id = audit_key_id(keys[keys.len() - 1].as_bytes());
        let Some(h) =
            handovers.iter().filter_map(|h| h.as_ref().ok()).find(|h| h.new_key_id == id && h.sequence >= seq)
        else {
            break;
        };
        let public: Option<Vec<u8>> = conn
            .query_row("SELECT public_key FROM signing_keys WHERE key_id = ?1", [&h.old_key_id], |r| r.get(0))
            .optional()?;
        let Some(older) =
            public.and_then(|p| <[u8; 32]>::try_from(p).ok()).and_then(|p| VerifyingKey::from_bytes(&p).ok())
        else {
            break;
        };
        if h.verify(&older).ok().map(|k| k.to_bytes()) != Some(keys[keys.len() - 1].to_bytes()) {
            break;
        }
        keys.push(older);
    }
    Ok(keys)
}
