//! Audit retention: `pogo-vault audit archive` moves the events up to a signed checkpoint
//! into a self-contained archive file (`archive_file`) and shrinks the live database.
//!
//! Order, and why each step is where it is:
//!
//! 1. Pick the cut: the newest signed checkpoint at or below `--through N`, or signed
//!    before `--before TIME` (so every event it covers is older). Refused, naming the option,
//!    when there is none or it is already archived. Then verify the live log in the same
//!    snapshot (strictly, from its anchor): the statement step 3 signs vouches for what the
//!    archive holds, so an edit is refused here rather than moved out of sight.
//! 2. Write the archive from one read snapshot to a temporary file beside `--out`, check it
//!    complete (count, links, end hash), fsync it, hard-link it to `--out` (which never
//!    replaces an existing file) and fsync the directory. Any failure removes it.
//! 3. One transaction on the live log: the `archives` row (the new anchor), the
//!    `audit_archived` record naming the range, the file name and its SHA-256, both with
//!    the archive's statement signed by the audit signing key (`anchor`: without it an
//!    archive does not count), and a checkpoint signed with the vault's key. This is the commit point: if it fails, the
//!    archive file is removed and nothing changed. (As with every CLI append, events no
//!    checkpoint covered yet are signed late, with an `unsigned_tail_signed` record.)
//! 4. Delete the archived rows in short transactions of [`CHUNK`] rows, so a running
//!    server's writer (busy timeout 250 ms) never waits long; then return the freed pages
//!    with `PRAGMA incremental_vacuum` in short steps and a passive WAL checkpoint (one
//!    that never waits for readers, so a running server's writer is never held up).
//!
//! Interrupted runs: a `kill -9` while writing leaves `.NAME.partial-PID` (and its
//! `-journal`) beside `--out`; the next run for the same name removes those of dead
//! processes. Killed between the hard link and step 3, it leaves a complete `--out` that no
//! `audit_archived` record names: that file is **not part of the chain** (verification
//! requires the record, and names such a file "not recorded in the log"); delete it and
//! archive again.
//!
//! Deviation from "delete and record in one transaction": deleting a long retention period
//! in one transaction would hold SQLite's write lock for seconds and fail a running server's
//! appends (fail closed: its requests would fail). So the record and the anchor commit first
//! and the rows below the anchor are garbage from then on: every reader starts at the anchor
//! (verification reads only events after it), and a deletion cut short (a crash, a lock)
//! is finished by the next `audit archive`. Nothing is lost either way: the archive is
//! durable before the anchor commits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::anchor::{Statement, anchor};
use super::chain::{Checkpoint, GENESIS_HASH};
use super::db::{CHECKPOINT_COLUMNS, checkpoint_from_row, open_reader, open_writer};
use super::record::{Action, AuditRecord, Outcome};
use super::verify_report::VerifyOptions;
use super::{AuditConfig, AuditError, archive_file, db, format_time_ms, signing};
use crate::crypto::secret::hex;
use crate::store::now_ms;

/// Rows deleted per transaction: a few milliseconds of the write lock.
const CHUNK: i64 = 1000;
/// Pages returned to the file system per `incremental_vacuum` step.
const VACUUM_STEP: i64 = 512;

/// Where to cut: `--through N` or `--before TIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The newest checkpoint at or below this sequence.
    Through(i64),
    /// The newest checkpoint signed before this time (Unix ms).
    Before(i64),
}

/// How the freed space of the live database was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shrink {
    /// Returned to the file system in steps (`auto_vacuum = INCREMENTAL`).
    Incremental,
    /// The whole file was rewritten (`--vacuum`), and now uses incremental auto-vacuum.
    Vacuumed,
    /// A file created before incremental auto-vacuum: freed pages are reused by new events,
    /// the file does not shrink until `--vacuum`.
    Reused,
}

/// What `audit archive` did.
#[derive(Debug, Clone)]
pub struct ArchiveReport {
    pub from_sequence: i64,
    pub through_sequence: i64,
    pub events: u64,
    pub sha256: [u8; 32],
    pub out: PathBuf,
    /// The sequence of the `audit_archived` record.
    pub record_sequence: i64,
    /// Database plus WAL, before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub shrink: Shrink,
}

/// The size of an audit database on disk: the file plus its WAL.
pub fn log_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    size(path) + size(&wal_path(path))
}

fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// Removes a file on drop unless disarmed (a half-written or unrecorded archive).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
            sync_dir(&p);
        }
    }
}

fn sync_dir(file: &Path) {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes what an `audit archive` for the same `--out` name killed mid-write left beside it:
/// `.NAME.partial-PID` and its `-journal`, when process PID is gone (or is this process: a
/// reused id). A live process's partial is left alone (another run is writing it). Best
/// effort: a partial never counts for anything, it only takes space and would block the
/// `create_new` of a later run with the same process id.
fn remove_stale_partials(out: &Path, file_name: &str) {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!(".{file_name}.partial-");
    let own = std::process::id().to_string();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let pid = rest.strip_suffix("-journal").unwrap_or(rest);
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Linux: a running process has /proc/PID.
        if pid == own || !Path::new("/proc").join(pid).exists() {
            let path = entry.path();
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!(file = %path.display(), "removed a partial archive left by an interrupted run");
            }
        }
    }
    sync_dir(out);
}

/// Archives the events of the audit database `live` up to the cut into the new file `out`
/// and shrinks `live` (see the module docs). `vacuum` rewrites a file made without
/// incremental auto-vacuum (only when no server holds it: the caller checks). `caller`
/// names the operator in the record.
pub fn archive_blocking(
    live: &Path,
    key: &SigningKey,
    cut: Cut,
    out: &Path,
    vacuum: bool,
    caller: &str,
    request_id: &str,
) -> Result<ArchiveReport, AuditError> {
    let refused = |field, reason: String| AuditError::Refused { field, reason };
    if out.exists() {
        return Err(refused("--out", format!("{} exists; an archive never replaces a file", out.display())));
    }
    let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if file_name.is_empty() {
        return Err(refused("--out", "give a file name".into()));
    }
    remove_stale_partials(out, &file_name);
    let bytes_before = log_bytes(live);

    // 1 and 2: the cut and the archive, from one read snapshot.
    let reader = open_reader(live)?;
    let snapshot = reader.unchecked_transaction()?;
    let start = anchor(&mut &*snapshot)?.map_or((0, GENESIS_HASH), |a| (a.through, a.hash));
    let cp = pick(&snapshot, cut).map_err(|e| match e {
        AuditError::Refused { field, reason } if start.0 > 0 => AuditError::Refused {
            field,
            reason: format!("{reason} that is not already archived (events 1..={} are)", start.0),
        },
        e => e,
    })?;
    if cp.sequence <= start.0 {
        let field = if matches!(cut, Cut::Through(_)) { "--through" } else { "--before" };
        return Err(refused(
            field,
            format!(
                "the newest checkpoint it selects is at sequence {}, and events 1..={} are already archived",
                cp.sequence, start.0
            ),
        ));
    }
    // The statement vouches for what it archives, so what it archives is verified first, in
    // this snapshot: the live log strictly from its anchor (hashes recomputed, every
    // checkpoint, hand-over and earlier archive checked), up to at least the cut.
    verify_before_archiving(&snapshot, &key.verifying_key(), cp.sequence)?;
    let tmp = out.with_file_name(format!(".{file_name}.partial-{}", std::process::id()));
    let mut tmp_guard = RemoveOnDrop(Some(tmp.clone()));
    let source = live.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let events = archive_file::write(&snapshot, &tmp, start, &cp, &source)?;
    snapshot.finish()?;
    drop(reader);
    let sha256 = archive_file::sha256(&tmp)?;
    std::fs::hard_link(&tmp, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            refused("--out", format!("{} exists; an archive never replaces a file", out.display()))
        }
        _ => AuditError::Io(e),
    })?;
    let mut out_guard = RemoveOnDrop(Some(out.to_owned()));
    drop(tmp_guard.0.take().map(std::fs::remove_file));
    sync_dir(out);

    // 3: the commit point, with the statement only the signing key can make.
    let (from, through) = (start.0 + 1, cp.sequence);
    let statement = Statement { from, through, head_hash: cp.head_hash, sha256 };
    let signature = statement.sign(key);
    let detail = record_detail(&statement, &signature, events, cp.time_ms, &file_name);
    let rec = AuditRecord::new(Action::AuditArchived, Outcome::Ok)
        .caller(caller, "")
        .detail(detail)
        .request(request_id, "local");
    let mut conn = open_writer(live, &key.verifying_key(), Some(AuditConfig::default().append_timeout))
        .map_err(|e| AuditError::Unavailable { reason: e.to_string() })?;
    let record_sequence = record(&mut conn, key, start, &cp, (&sha256, &signature), &file_name, rec)?;
    out_guard.0 = None;

    // 4: shrink. Failures here leave garbage below the anchor, finished by the next run.
    prune(&conn, through)?;
    let shrink = shrink(&conn, vacuum)?;
    // Measured after closing: this being the last connection, SQLite checkpoints and removes
    // the WAL; beside a running server the WAL stays (reused) and is counted.
    drop(conn);
    Ok(ArchiveReport {
        from_sequence: from,
        through_sequence: through,
        events,
        sha256,
        out: out.to_owned(),
        record_sequence,
        bytes_before,
        bytes_after: log_bytes(live),
        shrink,
    })
}

/// The `audit_archived` record's detail. Every value a verifier reads comes before the
/// file name (`verify_walk::ArchivedRecord::parse`), so no name can pass for one:
/// `events F..=T (N events, up to the checkpoint signed TIME; hash HEX; sha256 HEX;
/// statement HEX) archived to NAME; the live log continues from event T`.
fn record_detail(s: &Statement, signature: &[u8; 64], events: u64, signed_ms: i64, file_name: &str) -> String {
    format!(
        "events {}..={} ({events} events, up to the checkpoint signed {}; hash {}; sha256 {}; statement {}) archived \
         to {file_name}; the live log continues from event {}",
        s.from,
        s.through,
        format_time_ms(signed_ms),
        hex(&s.head_hash),
        hex(&s.sha256),
        hex(signature),
        s.through
    )
}

/// Verifies the live log in `snapshot` (see [`archive_blocking`]): from the first key of the
/// key chain the file names (as the server's `VerifyAuditLog` does without a pinned root),
/// ending at `own`, with everything up to `through` covered by a verified signature. An
/// unsigned tail after the newest checkpoint (a running server's last second) is allowed:
/// nothing in it is archived.
fn verify_before_archiving(snapshot: &Connection, own: &VerifyingKey, through: i64) -> Result<(), AuditError> {
    let root = super::handover::chain_root(&mut &*snapshot, own)?;
    let opts = VerifyOptions { allow_unsigned_tail: true, ..VerifyOptions::default() };
    let report = super::verify::verify_conn_with(snapshot, &root, &opts)?;
    let own_id = crate::crypto::audit_key_id(own.as_bytes());
    let why = if !report.ok {
        Some(report.detail.clone())
    } else if report.key_ids.last() != Some(&own_id) {
        Some(format!("its key chain ends at another key than this vault's ({own_id})"))
    } else if report.signed_through.is_none_or(|s| s < through) {
        Some(format!("event {through} is covered by no verified checkpoint"))
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(AuditError::Altered(format!(
            "the live audit log does not verify, so nothing was archived (an archive's statement vouches for what it \
             holds): {why}; investigate with `audit verify`"
        ))),
    }
}

/// The checkpoint the cut selects.
fn pick(conn: &Connection, cut: Cut) -> Result<Checkpoint, AuditError> {
    let (sql, value, field, none) = match cut {
        Cut::Through(n) => (
            "sequence <= ?1 AND sequence >= 1",
            n,
            "--through",
            format!("no signed checkpoint at or below sequence {n}"),
        ),
        Cut::Before(t) => (
            "time_ms < ?1 AND sequence >= 1",
            t,
            "--before",
            format!("no checkpoint was signed before {}", format_time_ms(t)),
        ),
    };
    let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE {sql} ORDER BY sequence DESC LIMIT 1");
    let found = conn.query_row(&sql, [value], checkpoint_from_row).optional()?.transpose()?;
    found.ok_or(AuditError::Refused { field, reason: none })
}

/// The commit point: anchor, record, checkpoint, in one transaction. Returns the record's
/// sequence.
fn record(
    conn: &mut Connection,
    key: &SigningKey,
    start: (i64, [u8; 32]),
    cp: &Checkpoint,
    (sha256, signature): (&[u8; 32], &[u8; 64]),
    file_name: &str,
    rec: AuditRecord,
) -> Result<i64, AuditError> {
    let unavailable = |e: AuditError| AuditError::Unavailable { reason: e.to_string() };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(e.into()))?;
    // Another `audit archive` may have run since the snapshot.
    let now = anchor(&mut &*tx)?.map_or((0, GENESIS_HASH), |a| (a.through, a.hash));
    if now != start {
        return Err(AuditError::Refused {
            field: "--out",
            reason: format!("another archive (through {}) was recorded meanwhile; nothing was changed", now.0),
        });
    }
    let still: Option<Vec<u8>> =
        tx.query_row("SELECT hash FROM events WHERE sequence = ?1", [cp.sequence], |r| r.get(0)).optional()?;
    if still.as_deref() != Some(&cp.head_hash[..]) {
        return Err(AuditError::Altered(format!(
            "event {} changed while it was being archived; nothing was changed",
            cp.sequence
        )));
    }
    tx.execute(
        "INSERT INTO archives (through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![cp.sequence, start.0 + 1, &cp.head_hash[..], &sha256[..], file_name, now_ms()],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO archive_statements (through_sequence, signature) VALUES (?1, ?2)",
        params![cp.sequence, &signature[..]],
    )?;
    let (head, _) = db::head(&mut &*tx)?;
    let covered = db::latest_checkpoint(&mut &*tx)?.map_or(0, |c| c.sequence);
    let mut records = Vec::with_capacity(2);
    if head > covered {
        records.push(
            AuditRecord::new(Action::UnsignedTailSigned, Outcome::Ok)
                .caller(rec.caller.clone(), "")
                .detail(format!(
                    "events {}..={head} were covered by no signed checkpoint when `audit archive` appended to the \
                     log (a running server's newest events, or a tail a crash left); signed now with its record. \
                     Nothing proves what happened to them before this point",
                    covered + 1
                ))
                .request(rec.request_id.clone(), rec.peer.clone()),
        );
    }
    records.push(rec);
    let mut links = Vec::with_capacity(records.len());
    let (seq, hash) = db::append_in_tx(&mut &*tx, now_ms(), records.iter(), &mut links).map_err(unavailable)?;
    let key_id = crate::crypto::audit_key_id(key.verifying_key().as_bytes());
    signing::sign_checkpoint(&mut &*tx, key, &key_id, seq, hash).map_err(unavailable)?;
    tx.commit().map_err(|e| unavailable(e.into()))?;
    Ok(seq)
}

/// Deletes events below the anchor and checkpoints before it, [`CHUNK`] rows per
/// transaction. Hand-overs stay (a few rows): the live log's key chain starts from them.
fn prune(conn: &Connection, through: i64) -> Result<(), AuditError> {
    for sql in [
        "DELETE FROM events WHERE sequence IN (SELECT sequence FROM events WHERE sequence <= ?1 ORDER BY sequence LIMIT ?2)",
        "DELETE FROM checkpoints WHERE sequence IN \
         (SELECT sequence FROM checkpoints WHERE sequence < ?1 ORDER BY sequence LIMIT ?2)",
    ] {
        loop {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let n = tx.execute(sql, params![through, CHUNK])?;
            tx.commit()?;
            if n == 0 {
                break;
            }
            // Let a waiting server writer in between chunks.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// Returns the freed pages to the file system (see [`Shrink`]) and checkpoints the WAL passively.
fn shrink(conn: &Connection, vacuum: bool) -> Result<Shrink, AuditError> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    let shrink = if mode == 2 {
        loop {
            let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            if free == 0 {
                break;
            }
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            tx.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_STEP})"))?;
            tx.commit()?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Shrink::Incremental
    } else if vacuum {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
        Shrink::Vacuumed
    } else {
        Shrink::Reused
    };
    // PASSIVE, never TRUNCATE or RESTART: those wait (busy handler, seconds) for a running
    // server's readers while holding the write lock, and the server's writer (250 ms busy
    // timeout) would fail its commits meanwhile: every request UNAVAILABLE. A passive
    // checkpoint copies what no reader pins back into the file (which then shrinks) and
    // never blocks; the WAL file keeps its size and is reused (SQLite removes it when the
    // last connection closes).
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    Ok(shrink)
}
