//! The live log's archive anchor: after `audit archive`, the audit database no longer holds
//! events `1..=S`; it holds the anchor `(S, hash of event S)` (the newest row of the
//! `archives` table) and the signed checkpoint at `S`, and its chain continues from there.
//! A leaf: readers (`verify`, the writer's `still_holds`) ask it where the live chain starts.
//!
//! Invariant: the anchor is never trusted by itself. Anyone with write access to the file
//! can insert an `archives` row, and can even get a forged `audit_archived` record signed
//! into the chain (a server signs the unsigned tail it finds at start). So an archive
//! counts only with its **statement**: `audit archive`, which holds the audit signing key,
//! signs what it archived, and stores the signature in the `archives` row and in the
//! `audit_archived` record:
//!
//! ```text
//! A = "pogo-vault audit v1 archive" 0x00
//!     i64be(from) i64be(through) head_hash(32 bytes) sha256(32 bytes)
//! ```
//!
//! `head_hash` is the hash of event `through` (where the live chain continues) and `sha256`
//! the archive file's. Every reader that acts on an anchor (accepts that an event it knew
//! is gone) first [`prove`]s it: the checkpoint stored at exactly `through` names the
//! anchor's hash, and it and the statement verify under a key the reader holds.
//! Verification additionally requires the `audit_archived` record with a statement that
//! verifies under the key in force at that point of the chain (`verify_walk`).

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::AuditError;
use super::chain::Checkpoint;
use crate::crypto::audit_key_id;
use crate::store::StoreError;
use crate::store::sql::{Backend, Sql, args};

/// Domain prefix of an archive statement's signed message.
pub const ARCHIVE_DOMAIN: &[u8] = b"pogo-vault audit v1 archive\0";

/// What `audit archive` signs: events `from..=through` went to a file with SHA-256
/// `sha256`, and event `through` had hash `head_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Statement {
    pub from: i64,
    pub through: i64,
    pub head_hash: [u8; 32],
    pub sha256: [u8; 32],
}

impl Statement {
    /// See the module docs.
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(ARCHIVE_DOMAIN.len() + 80);
        m.extend_from_slice(ARCHIVE_DOMAIN);
        m.extend_from_slice(&self.from.to_be_bytes());
        m.extend_from_slice(&self.through.to_be_bytes());
        m.extend_from_slice(&self.head_hash);
        m.extend_from_slice(&self.sha256);
        m
    }

    pub fn sign(&self, key: &SigningKey) -> [u8; 64] {
        key.sign(&self.message()).to_bytes()
    }

    /// True when `signature` is `key`'s over this statement (RFC 8032, strict).
    pub fn verifies(&self, signature: &[u8; 64], key: &VerifyingKey) -> bool {
        key.verify_strict(&self.message(), &Signature::from_bytes(signature)).is_ok()
    }
}

/// Where the live chain starts: events `1..=through` are archived; event `through` had `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    /// The first event of the newest archive (its `audit_archived` record names `from..=through`).
    pub from: i64,
    pub through: i64,
    pub hash: [u8; 32],
    /// The archive file's SHA-256.
    pub sha256: [u8; 32],
    /// The statement's signature; `None` in a row that has none (never written so by
    /// `audit archive`: it does not prove).
    pub signature: Option<[u8; 64]>,
}

impl Anchor {
    pub fn statement(&self) -> Statement {
        Statement { from: self.from, through: self.through, head_hash: self.hash, sha256: self.sha256 }
    }
}

/// How the audit database keeps archives: `None` without the `archives` table (before
/// audit schema 4), else whether it has `archive_statements` (audit schema 5; a file not
/// migrated yet, opened read-only, reads as having no statements). PostgreSQL has both.
fn archives_table(db: &mut dyn Sql) -> Result<Option<bool>, AuditError> {
    if db.backend() == Backend::Postgres {
        return Ok(Some(true));
    }
    let rows = db.query(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name IN ('archives', 'archive_statements')",
        &[],
    )?;
    let tables = rows.iter().map(|r| r.get::<String>(0)).collect::<Result<Vec<_>, _>>()?;
    let has = |t: &str| tables.iter().any(|n| n == t);
    Ok(has("archives").then(|| has("archive_statements")))
}

/// The schema prefix of the audit tables: SQLite readers attach the tenant index beside the
/// file, so its tables are named `main.` explicitly; PostgreSQL has one schema.
pub(crate) fn main_prefix(db: &dyn Sql) -> &'static str {
    match db.backend() {
        Backend::Sqlite => "main.",
        Backend::Postgres => "",
    }
}

/// The anchor of the audit database, if anything was ever archived.
pub(crate) fn anchor(db: &mut dyn Sql) -> Result<Option<Anchor>, AuditError> {
    Ok(rows(db, "DESC LIMIT 1")?.pop())
}

/// Every `archives` row of the audit database, oldest first (one per `audit archive`).
pub(crate) fn all(db: &mut dyn Sql) -> Result<Vec<Anchor>, AuditError> {
    rows(db, "")
}

fn rows(db: &mut dyn Sql, order: &str) -> Result<Vec<Anchor>, AuditError> {
    let Some(signed) = archives_table(db)? else { return Ok(Vec::new()) };
    let main = main_prefix(db);
    let (signature, join) = if signed {
        ("s.signature", format!("LEFT JOIN {main}archive_statements s USING (through_sequence)"))
    } else {
        ("NULL", String::new())
    };
    let rows = db.query(
        &format!(
            "SELECT a.from_sequence, a.through_sequence, a.head_hash, a.sha256, {signature} FROM {main}archives a \
             {join} ORDER BY a.through_sequence {order}"
        ),
        &[],
    )?;
    rows.iter().map(|r| from_row((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).collect()
}

/// An `archives` row as stored: from, through, head hash, SHA-256, signature.
type AnchorRow = (i64, i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

fn from_row((from, through, hash, sha256, signature): AnchorRow) -> Result<Anchor, AuditError> {
    let corrupt = |what: &str| AuditError::Corrupt(format!("archive anchor at {through}: {what}"));
    let hash = <[u8; 32]>::try_from(hash).map_err(|_| corrupt("the hash is not 32 bytes"))?;
    let sha256 = <[u8; 32]>::try_from(sha256).map_err(|_| corrupt("the SHA-256 is not 32 bytes"))?;
    // A signature of the wrong length is no signature: the anchor then does not prove.
    let signature = signature.and_then(|s| <[u8; 64]>::try_from(s).ok());
    Ok(Anchor { from, through, hash, sha256, signature })
}

/// A checkpoint row as stored: head hash, time, key id, signature.
type CheckpointRow = (Vec<u8>, i64, String, Vec<u8>);

/// Proves `a`: its statement verifies under one of `keys`, and the checkpoint stored at
/// exactly `a.through` names `a.hash` and verifies under one of `keys`. `Ok(Err(why))`
/// names what is missing; a forged anchor has neither, since only the signing key can make
/// them.
pub(crate) fn prove(db: &mut dyn Sql, a: &Anchor, keys: &[VerifyingKey]) -> Result<Result<(), String>, AuditError> {
    let at = a.through;
    let ids = || keys.iter().map(|k| audit_key_id(k.as_bytes())).collect::<Vec<_>>().join(" or ");
    match &a.signature {
        None => return Ok(Err(format!("the archive anchor at {at} carries no signed statement of `audit archive`"))),
        Some(sig) if !keys.iter().any(|k| a.statement().verifies(sig, k)) => {
            return Ok(Err(format!("the statement of the archive anchor at {at} does not verify under {}", ids())));
        }
        Some(_) => {}
    }
    // Read here rather than through `db` (this module is a leaf). Values of the wrong type
    // are an edit, reported as such.
    let main = main_prefix(db);
    let row = db.query_opt(
        &format!("SELECT head_hash, time_ms, key_id, signature FROM {main}checkpoints WHERE sequence = ?1"),
        args![a.through],
    )?;
    let unreadable = || format!("the checkpoint at the archive anchor {at} is unreadable (edited)");
    let Some(row) = row else {
        return Ok(Err(format!("no signed checkpoint is stored at the archive anchor {at}")));
    };
    let read = || -> Result<CheckpointRow, StoreError> { Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)) };
    let Ok((head_hash, time_ms, key_id, signature)) = read() else { return Ok(Err(unreadable())) };
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
    Ok(Err(format!("the checkpoint at the archive anchor {at} (key {}) does not verify under {}", cp.key_id, ids())))
}
