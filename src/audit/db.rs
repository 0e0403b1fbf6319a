//! The audit database file: opening it (writer and readers), and the row mappings and
//! statements every other part of the module shares.
//!
//! Invariants: only the writer and the one-shot CLI path open it read-write; every reader
//! opens it `SQLITE_OPEN_READ_ONLY`, so a reader bug cannot alter the log. The writer's busy
//! timeout is short ([`super::AuditConfig::busy_timeout`]) so a held lock turns into a failed
//! batch, and failed appends, quickly.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, params};

use super::chain::{Checkpoint, GENESIS_HASH};
use super::record::{AuditEvent, AuditRecord};
use super::{AuditError, chain};
use crate::store::migrations::PostgresMigration;
use crate::store::sql::{Row as SqlRow, Sql, Value, args};
use crate::store::{self, Migration, StoreError};

/// The audit database's migrations, applied in order; `PRAGMA user_version` counts them.
pub const AUDIT_MIGRATIONS: &[Migration] = &[
    ("audit/0001_audit", include_str!("../../migrations/audit/0001_audit.sql")),
    ("audit/0002_tenant_index_file", include_str!("../../migrations/audit/0002_tenant_index_file.sql")),
    ("audit/0003_signing_handovers", include_str!("../../migrations/audit/0003_signing_handovers.sql")),
    ("audit/0004_archives", include_str!("../../migrations/audit/0004_archives.sql")),
    ("audit/0005_archive_statements", include_str!("../../migrations/audit/0005_archive_statements.sql")),
];

/// The audit tables' migrations on PostgreSQL: one baseline at the SQLite schema's version
/// (`pogo_schema` row `audit`).
pub(crate) const AUDIT_POSTGRES: &[PostgresMigration] = &[PostgresMigration {
    version: 5,
    name: "audit/0005_baseline",
    sql: include_str!("../../migrations/postgres/audit/0005_baseline.sql"),
}];

/// The columns of an event row, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "sequence, time_ms, caller, caller_serial, action, tenant_id, key_version, \
     outcome, upstream_status, token_fingerprint, detail, request_id, peer, prev_hash, hash";

const INSERT_EVENT: &str = "INSERT INTO events (sequence, time_ms, caller, caller_serial, action, tenant_id, \
     key_version, outcome, upstream_status, token_fingerprint, detail, request_id, peer, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// The writer's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// WAL pages (4 KiB each) after which a commit copies the WAL into the database file.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;

pub(crate) const CHECKPOINT_COLUMNS: &str = "sequence, head_hash, time_ms, key_id, signature";

/// Opens (creating it with mode 0600 if missing) the audit database for writing, migrates
/// it and records `public`, all with the store's normal busy timeout (a start-up may wait for
/// a CLI holding the lock); then sets `busy_timeout` for the commits that follow.
pub(crate) fn open_writer(
    path: &Path,
    public: &ed25519_dalek::VerifyingKey,
    busy_timeout: Option<Duration>,
) -> Result<Connection, AuditError> {
    let conn = open_file(path)?;
    register_key(&mut &conn, public)?;
    if let Some(t) = busy_timeout {
        conn.busy_timeout(t)?;
    }
    // The writer prepares a handful of statements; keep them all cached.
    conn.set_prepared_statement_cache_capacity(32);
    // A page cache large enough for the hot pages of every index (each caller's and tenant's
    // insertion point): with SQLite's 2 MiB default, large batches spill dirty pages to the
    // WAL mid-transaction and re-read index pages from the file (measured with
    // `benches/audit_writer.rs`: that was most of the writer's time).
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    // Fewer, larger WAL checkpoints: a hot index page rewritten by many commits is copied
    // into the database file once per checkpoint, not once per 4 MiB of WAL.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    Ok(conn)
}

/// Opens (creating it with mode 0600 if missing) the audit database at `path` read-write and
/// migrates it; registers no key.
pub(crate) fn open_file(path: &Path) -> Result<Connection, AuditError> {
    store::create_private_file(path)?;
    prepare_new_file(path)?;
    Ok(store::open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        AUDIT_MIGRATIONS,
    )?)
}

/// Gives a new (empty) audit database incremental auto-vacuum, so `audit archive` can return
/// the pages of archived events to the file system in short steps (`PRAGMA
/// incremental_vacuum`) beside a running server. SQLite fixes the mode when the first table
/// is created, and setting WAL mode writes the header: so this comes first, on a connection
/// of its own. An existing file keeps its mode (`audit archive --vacuum` converts it).
fn prepare_new_file(path: &Path) -> Result<(), AuditError> {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(1) != 0 {
        return Ok(());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(())
}

/// Opens the audit database read-only (never creates or migrates it): for queries,
/// verification and export. Needs no key.
pub fn open_reader(path: &Path) -> Result<Connection, AuditError> {
    let name = || path.display().to_string();
    if !path.exists() {
        return Err(AuditError::Missing { path: name() });
    }
    let not_audit = |e: StoreError| match e {
        // Not a WAL file, and a read-only connection cannot make it one: not ours.
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::ReadOnly => {
            AuditError::NotAuditLog { path: name() }
        }
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::NotADatabase => {
            AuditError::NotAuditLog { path: name() }
        }
        e => e.into(),
    };
    let conn = store::open_unmigrated(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(not_audit)?;
    // Every released schema is readable (they differ in indexes only); a newer one may not be.
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| not_audit(e.into()))?;
    let supported = AUDIT_MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew { found: version, supported }.into());
    }
    if version < 1 {
        return Err(AuditError::NotAuditLog { path: name() });
    }
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('events', 'checkpoints')",
        [],
        |r| r.get(0),
    )?;
    if tables != 2 {
        return Err(AuditError::NotAuditLog { path: name() });
    }
    conn.set_prepared_statement_cache_capacity(64);
    // Best effort: without it tenant queries scan (see `tenant_index`).
    super::tenant_index::attach(&conn, path);
    Ok(conn)
}

/// The head of the chain: the last sequence and its hash ((0, genesis) when empty).
pub(crate) fn head(db: &mut dyn Sql) -> Result<(i64, [u8; 32]), AuditError> {
    let Some(row) = db.query_opt("SELECT sequence, hash FROM events ORDER BY sequence DESC LIMIT 1", &[])? else {
        return Ok((0, GENESIS_HASH));
    };
    let seq: i64 = row.get(0)?;
    let hash = <[u8; 32]>::try_from(row.get::<Vec<u8>>(1)?)
        .map_err(|_| AuditError::Corrupt(format!("event {seq}: the stored hash is not 32 bytes")))?;
    Ok((seq, hash))
}

/// Records a signing key's public half, so offline readers can name it.
pub(crate) fn register_key(db: &mut dyn Sql, public: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError> {
    let key_id = crate::crypto::audit_key_id(public.as_bytes());
    // Read first: a known key needs no write lock, so a command beside a busy (or locked)
    // log waits only in its own bounded append, not here.
    if db.query_opt("SELECT 1 FROM signing_keys WHERE key_id = ?1", args![&key_id])?.is_some() {
        return Ok(());
    }
    db.execute(
        "INSERT INTO signing_keys (key_id, public_key, first_used_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (key_id) DO NOTHING",
        args![&key_id, &public.as_bytes()[..], store::now_ms()],
    )?;
    Ok(())
}

/// Signs the head `(sequence, hash)` and stores the checkpoint, or returns the one already
/// stored for that sequence (one checkpoint per sequence is enough to anchor it).
pub(crate) fn put_checkpoint(
    db: &mut dyn Sql,
    key: &ed25519_dalek::SigningKey,
    sequence: i64,
    hash: [u8; 32],
) -> Result<Checkpoint, AuditError> {
    let cp = Checkpoint::sign(sequence, hash, store::now_ms(), key);
    let inserted = db.execute(
        "INSERT INTO checkpoints (sequence, head_hash, time_ms, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (sequence) DO NOTHING",
        args![cp.sequence, &cp.head_hash[..], cp.time_ms, &cp.key_id, &cp.signature[..]],
    )?;
    if inserted == 1 {
        return Ok(cp);
    }
    let stored = checkpoint_at(db, sequence)?
        .ok_or_else(|| AuditError::Corrupt(format!("checkpoint at {sequence}: vanished")))??;
    // One stored for this sequence already: it must name the same head (a row left over from
    // events since deleted, or put there by hand, is not passed on as this one).
    if stored.head_hash != hash {
        return Err(AuditError::Altered(format!(
            "a checkpoint stored at {sequence} names another hash than event {sequence} has: the audit database was \
             altered"
        )));
    }
    Ok(stored)
}

/// The checkpoint stored at `sequence`, if any.
pub(crate) fn checkpoint_at(
    db: &mut dyn Sql,
    sequence: i64,
) -> Result<Option<Result<Checkpoint, AuditError>>, AuditError> {
    let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE sequence = ?1");
    Ok(db.query_opt(&sql, args![sequence])?.map(|r| checkpoint_from(&r)))
}

/// The checkpoint with the highest sequence.
pub(crate) fn latest_checkpoint(db: &mut dyn Sql) -> Result<Option<Checkpoint>, AuditError> {
    let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY sequence DESC LIMIT 1");
    db.query_opt(&sql, &[])?.map(|r| checkpoint_from(&r)).transpose()
}

/// Reads a checkpoint row (columns [`CHECKPOINT_COLUMNS`]) of either backend.
pub(crate) fn checkpoint_from(r: &SqlRow) -> Result<Checkpoint, AuditError> {
    let sequence: i64 = r.get(0)?;
    let corrupt = |_| AuditError::Corrupt(format!("checkpoint at {sequence}: a field has the wrong type"));
    Checkpoint::from_parts(
        sequence,
        r.get(1).map_err(corrupt)?,
        r.get(2).map_err(corrupt)?,
        r.get(3).map_err(corrupt)?,
        r.get(4).map_err(corrupt)?,
    )
}

/// Reads a checkpoint row (columns [`CHECKPOINT_COLUMNS`]) from a SQLite reader.
pub(crate) fn checkpoint_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Checkpoint, AuditError>> {
    Ok(Checkpoint::from_parts(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

/// Reads an event row (columns [`EVENT_COLUMNS`]) into its typed form.
pub(crate) fn event_from_row(r: &Row<'_>) -> rusqlite::Result<Result<AuditEvent, AuditError>> {
    let stored = StoredEvent {
        sequence: r.get(0)?,
        time_ms: r.get(1)?,
        caller: r.get(2)?,
        caller_serial: r.get(3)?,
        action: r.get(4)?,
        tenant_id: r.get(5)?,
        key_version: r.get(6)?,
        outcome: r.get(7)?,
        upstream_status: r.get(8)?,
        token_fingerprint: r.get(9)?,
        detail: r.get(10)?,
        request_id: r.get(11)?,
        peer: r.get(12)?,
        prev_hash: r.get(13)?,
        hash: r.get(14)?,
    };
    Ok(stored.event())
}

/// Reads an event row (columns [`EVENT_COLUMNS`]) of either backend into its typed form.
pub(crate) fn event_from(r: &SqlRow) -> Result<AuditEvent, AuditError> {
    StoredEvent {
        sequence: r.get(0)?,
        time_ms: r.get(1)?,
        caller: r.get(2)?,
        caller_serial: r.get(3)?,
        action: r.get(4)?,
        tenant_id: r.get(5)?,
        key_version: r.get(6)?,
        outcome: r.get(7)?,
        upstream_status: r.get(8)?,
        token_fingerprint: r.get(9)?,
        detail: r.get(10)?,
        request_id: r.get(11)?,
        peer: r.get(12)?,
        prev_hash: r.get(13)?,
        hash: r.get(14)?,
    }
    .event()
}

/// An event row's columns as stored.
struct StoredEvent {
    sequence: i64,
    time_ms: i64,
    caller: String,
    caller_serial: String,
    action: String,
    tenant_id: Option<String>,
    key_version: Option<i64>,
    outcome: String,
    upstream_status: Option<i64>,
    token_fingerprint: Option<String>,
    detail: String,
    request_id: String,
    peer: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl StoredEvent {
    fn event(self) -> Result<AuditEvent, AuditError> {
        let sequence = self.sequence;
        let corrupt = |what: String| AuditError::Corrupt(format!("event {sequence}: {what}"));
        let newer = |e: super::record::UnknownName| corrupt(format!("{e} (written by a newer pogo-vault?)"));
        let action = self.action.parse().map_err(newer)?;
        let outcome = self.outcome.parse().map_err(newer)?;
        let upstream_status = self
            .upstream_status
            .map(u16::try_from)
            .transpose()
            .map_err(|_| corrupt("upstream_status is out of range".into()))?;
        let (Ok(prev_hash), Ok(hash)) = (<[u8; 32]>::try_from(self.prev_hash), <[u8; 32]>::try_from(self.hash)) else {
            return Err(corrupt("a hash is not 32 bytes".into()));
        };
        Ok(AuditEvent {
            sequence,
            time_ms: self.time_ms,
            record: AuditRecord {
                caller: self.caller,
                caller_serial: self.caller_serial,
                action,
                tenant_id: self.tenant_id,
                key_version: self.key_version,
                outcome,
                upstream_status,
                token_fingerprint: self.token_fingerprint,
                detail: self.detail,
                request_id: self.request_id,
                peer: self.peer,
            },
            prev_hash,
            hash,
        })
    }
}

/// Appends `records` as one batch in an open transaction, continuing the chain from the head
/// read inside it. Returns each record's (sequence, prev_hash, hash) and the new head.
pub(crate) fn append_in_tx<'r>(
    db: &mut dyn Sql,
    time_ms: i64,
    records: impl Iterator<Item = &'r AuditRecord>,
    links: &mut Vec<(i64, [u8; 32], [u8; 32])>,
) -> Result<(i64, [u8; 32]), AuditError> {
    let (mut seq, mut prev) = head(db)?;
    let first = links.len();
    let mut batch: Vec<&AuditRecord> = Vec::new();
    for r in records {
        seq += 1;
        let hash = chain::hash_record(&prev, seq, time_ms, r);
        links.push((seq, prev, hash));
        batch.push(r);
        prev = hash;
    }
    let links = &links[first..];
    match db.sqlite() {
        Some(conn) => insert_sqlite(conn, time_ms, &batch, links)?,
        None => insert_rows(db, time_ms, &batch, links)?,
    }
    Ok((seq, prev))
}

/// SQLite: one prepared statement for the whole batch, so the cache lookup happens once,
/// not per record (measured with `benches/audit_writer.rs`).
fn insert_sqlite(
    conn: &Connection,
    time_ms: i64,
    batch: &[&AuditRecord],
    links: &[(i64, [u8; 32], [u8; 32])],
) -> Result<(), AuditError> {
    let mut insert = conn.prepare_cached(INSERT_EVENT)?;
    for (r, (seq, prev, hash)) in batch.iter().zip(links) {
        insert.execute(params![
            seq,
            time_ms,
            r.caller,
            r.caller_serial,
            r.action.as_str(),
            r.tenant_id,
            r.key_version,
            r.outcome.as_str(),
            r.upstream_status,
            r.token_fingerprint,
            r.detail,
            r.request_id,
            r.peer,
            &prev[..],
            &hash[..],
        ])?;
    }
    Ok(())
}

/// Rows per multi-row `INSERT` on PostgreSQL: 15 parameters each, far below its 65,535.
const ROWS_PER_INSERT: usize = 500;

/// PostgreSQL: multi-row `INSERT`s, one round trip per [`ROWS_PER_INSERT`] records.
fn insert_rows(
    db: &mut dyn Sql,
    time_ms: i64,
    batch: &[&AuditRecord],
    links: &[(i64, [u8; 32], [u8; 32])],
) -> Result<(), AuditError> {
    let head = INSERT_EVENT.split(" VALUES").next().unwrap_or(INSERT_EVENT);
    for (records, links) in batch.chunks(ROWS_PER_INSERT).zip(links.chunks(ROWS_PER_INSERT)) {
        let mut sql = String::with_capacity(head.len() + records.len() * 80);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut values = Vec::with_capacity(records.len() * 15);
        for (i, (r, (seq, prev, hash))) in records.iter().zip(links).enumerate() {
            let p = i * 15;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&(1..=15).map(|k| format!("?{}", p + k)).collect::<Vec<_>>().join(", "));
            sql.push(')');
            values.extend([
                Value::Int(*seq),
                Value::Int(time_ms),
                Value::from(&r.caller),
                Value::from(&r.caller_serial),
                Value::from(r.action.as_str()),
                Value::from(&r.tenant_id),
                Value::from(r.key_version),
                Value::from(r.outcome.as_str()),
                Value::from(r.upstream_status.map(i64::from)),
                Value::from(&r.token_fingerprint),
                Value::from(&r.detail),
                Value::from(&r.request_id),
                Value::from(&r.peer),
                Value::from(&prev[..]),
                Value::from(&hash[..]),
            ]);
        }
        db.execute(&sql, &values)?;
    }
    Ok(())
}
