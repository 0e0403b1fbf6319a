//! The archive file of `audit archive`: a self-contained SQLite file (rollback journal, no
//! WAL: one file to copy to WORM storage) with the audit database's own tables, holding the
//! events `A+1..=S`, the checkpoints `A..=S`, the hand-overs in `A+1..=S` and every public
//! key the log named, plus one `archive_meta` row: the range, the anchor it starts from (the
//! previous archive's end `A` and the hash of event `A`, or genesis) and the head it ends at.
//!
//! Invariants: `S` is a signed checkpoint, so an archive verifies strictly on its own chain;
//! the file is written from one read snapshot of the live log and checked complete (count,
//! links, end hash) before it is renamed into place; nothing here trusts `archive_meta`:
//! verification checks that archives meet end to start and that the live log's anchor
//! is the last archive's end.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::chain::Checkpoint;
use super::db::{AUDIT_MIGRATIONS, EVENT_COLUMNS};
use super::{AuditError, handover};
use crate::store::now_ms;

/// The archive format this binary writes and reads.
const FORMAT: i64 = 1;

const META_SCHEMA: &str = "CREATE TABLE archive_meta (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    format            INTEGER NOT NULL,
    anchor_sequence   INTEGER NOT NULL CHECK (anchor_sequence >= 0),
    anchor_hash       BLOB    NOT NULL CHECK (length(anchor_hash) = 32),
    through_sequence  INTEGER NOT NULL CHECK (through_sequence >= 1),
    head_hash         BLOB    NOT NULL CHECK (length(head_hash) = 32),
    created_ms        INTEGER NOT NULL,
    source            TEXT    NOT NULL
) STRICT";

/// What an archive says it holds (not trusted: see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveMeta {
    /// The sequence before its first event (0: it starts at genesis).
    pub anchor_sequence: i64,
    /// The hash of event `anchor_sequence` (genesis for 0).
    pub anchor_hash: [u8; 32],
    /// Its last event, covered by a signed checkpoint.
    pub through_sequence: i64,
    /// The hash of event `through_sequence`.
    pub head_hash: [u8; 32],
    pub created_ms: i64,
    /// The name of the audit database it was taken from.
    pub source: String,
}

/// Opens an archive file read-only and reads its meta row.
pub(crate) fn open(path: &Path) -> Result<(Connection, ArchiveMeta), AuditError> {
    let name = || path.display().to_string();
    if !path.exists() {
        return Err(AuditError::Missing { path: name() });
    }
    let not_archive = || AuditError::NotAuditLog { path: format!("{} (as an archive)", name()) };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    let row = conn
        .query_row(
            "SELECT format, anchor_sequence, anchor_hash, through_sequence, head_hash, created_ms, source \
             FROM archive_meta WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            },
        )
        .optional()
        .map_err(|_| not_archive())?;
    let Some((format, anchor_sequence, anchor_hash, through_sequence, head_hash, created_ms, source)) = row else {
        return Err(not_archive());
    };
    if format != FORMAT {
        return Err(AuditError::Corrupt(format!("{}: archive format {format} is not supported", name())));
    }
    let (Ok(anchor_hash), Ok(head_hash)) = (<[u8; 32]>::try_from(anchor_hash), <[u8; 32]>::try_from(head_hash)) else {
        return Err(AuditError::Corrupt(format!("{}: archive_meta holds a hash of the wrong length", name())));
    };
    Ok((conn, ArchiveMeta { anchor_sequence, anchor_hash, through_sequence, head_hash, created_ms, source }))
}

/// The SHA-256 of the file at `path` (what the `audit_archived` record names).
pub(crate) fn sha256(path: &Path) -> Result<[u8; 32], AuditError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok(h.finalize().into())
}

/// Writes the archive of events `anchor.0+1..=cut.sequence` from `live` (a connection inside
/// a read transaction, so one snapshot) into the new file `path` (created with mode 0600;
/// refused if it exists), fsynced. Returns the number of events. Fails, leaving the file
/// for the caller to remove, when the copy is not complete and linked from the anchor to
/// the cut checkpoint's head.
pub(crate) fn write(
    live: &Connection,
    path: &Path,
    anchor: (i64, [u8; 32]),
    cut: &Checkpoint,
    source: &str,
) -> Result<u64, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let mut conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    // One file, no WAL beside it: what is copied to WORM storage is the whole archive.
    conn.pragma_update(None, "journal_mode", "DELETE")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let tx = conn.transaction()?;
    for (_, sql) in AUDIT_MIGRATIONS {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", AUDIT_MIGRATIONS.len() as i64)?;
    tx.execute_batch(META_SCHEMA)?;
    let (from, through) = (anchor.0, cut.sequence);
    let events = copy_rows(
        live,
        &tx,
        &format!("SELECT {EVENT_COLUMNS} FROM main.events WHERE sequence > ?1 AND sequence <= ?2 ORDER BY sequence"),
        &format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES ({})", placeholders(15)),
        (from, through),
        Some(anchor),
    )?;
    if events != (through - from) as u64 {
        return Err(AuditError::Corrupt(format!(
            "the live log holds {events} events in {}..={through}, not {}: events are missing (run `audit verify`)",
            from + 1,
            through - from
        )));
    }
    let head: Vec<u8> = tx.query_row("SELECT hash FROM events WHERE sequence = ?1", [through], |r| r.get(0))?;
    if head != cut.head_hash {
        return Err(AuditError::Corrupt(format!(
            "event {through} does not have the hash its signed checkpoint names: the log was altered (run `audit verify`)"
        )));
    }
    let cp_cols = "sequence, head_hash, time_ms, key_id, signature";
    copy_rows(
        live,
        &tx,
        &format!("SELECT {cp_cols} FROM main.checkpoints WHERE sequence >= ?1 AND sequence <= ?2 ORDER BY sequence"),
        &format!("INSERT INTO checkpoints ({cp_cols}) VALUES ({})", placeholders(5)),
        (from, through),
        None,
    )?;
    if handover::has_table(&mut &*live)? {
        let cols = "sequence, head_hash, time_ms, old_key_id, new_key_id, new_public_key, signature";
        copy_rows(
            live,
            &tx,
            &format!("SELECT {cols} FROM main.signing_handovers WHERE sequence > ?1 AND sequence <= ?2"),
            &format!("INSERT INTO signing_handovers ({cols}) VALUES ({})", placeholders(7)),
            (from, through),
            None,
        )?;
    }
    let cols = "key_id, public_key, first_used_ms";
    copy_rows(
        live,
        &tx,
        &format!("SELECT {cols} FROM main.signing_keys WHERE ?1 <= ?2"),
        &format!("INSERT INTO signing_keys ({cols}) VALUES ({})", placeholders(3)),
        (0, 0),
        None,
    )?;
    tx.execute(
        "INSERT INTO archive_meta (id, format, anchor_sequence, anchor_hash, through_sequence, head_hash, \
         created_ms, source) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![FORMAT, from, &anchor.1[..], through, &cut.head_hash[..], now_ms(), source],
    )?;
    tx.commit()?;
    drop(conn);
    std::fs::File::open(path)?.sync_all()?;
    Ok(events)
}

fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

/// Copies the rows `select` returns for `range` with `insert`, values unchanged (so every
/// hash and signature is over the same bytes). With `links`, the rows are events: each must
/// link to the one before it, starting at the anchor's hash.
fn copy_rows(
    from: &Connection,
    to: &Connection,
    select: &str,
    insert: &str,
    range: (i64, i64),
    links: Option<(i64, [u8; 32])>,
) -> Result<u64, AuditError> {
    let mut read = from.prepare(select)?;
    let columns = read.column_count();
    let mut write = to.prepare(insert)?;
    let mut rows = read.query(params![range.0, range.1])?;
    let (mut n, mut expect) = (0u64, links);
    while let Some(row) = rows.next()? {
        let values = (0..columns).map(|i| row.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>()?;
        if let Some((seq, prev)) = expect.as_mut() {
            let linked = matches!((&values[0], &values[13]), (Value::Integer(s), Value::Blob(p)) if *s == *seq + 1 && p[..] == prev[..]);
            let Value::Blob(hash) = &values[14] else { return Err(unlinked(*seq + 1)) };
            let Ok(hash) = <[u8; 32]>::try_from(&hash[..]) else { return Err(unlinked(*seq + 1)) };
            if !linked {
                return Err(unlinked(*seq + 1));
            }
            (*seq, *prev) = (*seq + 1, hash);
        }
        write.execute(rusqlite::params_from_iter(values))?;
        n += 1;
    }
    Ok(n)
}

fn unlinked(seq: i64) -> AuditError {
    AuditError::Corrupt(format!(
        "event {seq} is missing or does not link to the event before it: the log was altered (run `audit verify`)"
    ))
}
