//! The live log's archive anchor: after `audit archive`, the audit database no longer holds
//! events `1..=S`; it holds the anchor `(S, hash of event S)` (the newest row of the
//! `archives` table) and the signed checkpoint at `S`, and its chain continues from there.
//! A leaf: readers (`verify`, `tenant_index`, the writer's `still_holds`) ask it where the
//! live chain starts.
//!
//! Invariant: the anchor is never trusted by itself. Verification of the live log starts
//! from it only as "what the archives must end at" (with archives) or says that events up
//! to it are archived and not verified (without); the checkpoint at `S` and the chain after
//! it are checked as usual.

use rusqlite::{Connection, OptionalExtension};

use super::AuditError;

/// Where the live chain starts: events `1..=through` are archived; event `through` had `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
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
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT through_sequence, head_hash FROM main.archives ORDER BY through_sequence DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((through, hash)) = row else { return Ok(None) };
    let hash = <[u8; 32]>::try_from(hash)
        .map_err(|_| AuditError::Corrupt(format!("archive anchor at {through}: the hash is not 32 bytes")))?;
    Ok(Some(Anchor { through, hash }))
}

/// The last archived sequence (0 when nothing was archived, or the table cannot be read).
pub(crate) fn archived_through(conn: &Connection) -> i64 {
    anchor(conn).ok().flatten().map_or(0, |a| a.through)
}
