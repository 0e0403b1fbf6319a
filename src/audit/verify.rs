//! Offline verification: recompute the chain from genesis and check every signed
//! checkpoint, with nothing but the audit file and the public key.
//!
//! Invariants: the file is opened read-only and read in one snapshot (events, checkpoints
//! and hand-overs agree even while a server appends); signatures are checked only with the
//! key the verifier supplies and with successors that key (or its successors) handed over
//! to, from the point of the hand-over on; hashes are recomputed over the stored bytes
//! exactly, so any edit, even one this binary could not have written, reads as an edit. The
//! first problem found stops the walk and is named in [`VerifyReport::detail`].
//!
//! **Strict by default.** A log verifies only when every event is covered by a verified
//! signature: a stored checkpoint, a kept one, or a witnessed one. Events after the last
//! signed checkpoint (an *unsigned tail*) fail the verification, naming how many and the
//! first sequence, because nothing proves they were not cut or rewritten (the chain alone
//! needs no key to recompute). A log with events but no checkpoint at all fails. The one
//! exception is asked for explicitly ([`VerifyOptions::allow_unsigned_tail`]: a log copied
//! from a crashed server) and is reported as a warning saying what is not proven.
//!
//! **Archives are proven like hand-overs.** A live log verified alone starts at its archive
//! anchor only when a checkpoint stored at exactly the anchor names the anchor's hash and
//! verifies under the key chain in use, and an `audit_archived` record later in the chain
//! names exactly the archived range; each archive file given must be named (range and
//! SHA-256) by such a record. An `archives` row is writable by anyone with the file, so
//! without these a moved anchor would hide deleted events.
//!
//! Here: the entry points and the one-snapshot read that feeds the walk. The walk itself
//! (hashes, checkpoints, hand-overs, the unsigned tail) is in `verify_walk`; the options and
//! the report in `verify_report`.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, Row};

use super::AuditError;
use super::anchor::anchor;
use super::archive_file::{self, ArchiveMeta};
use super::chain::{Checkpoint, GENESIS_HASH};
use super::db::{EVENT_COLUMNS, checkpoint_from_row, open_reader};
use super::handover;
use super::record::Action;
use super::verify_report::{External, ExternalSource, VerifyOptions, VerifyReport, source_name};
use super::verify_walk::{ArchivedRecord, Walk, is_type_error};
use crate::crypto::secret::hex;

/// Verifies the audit database at `db_path` (opened read-only) strictly, starting from
/// `public_key`, and against `kept`, a checkpoint saved outside the vault, when given.
/// `Err` only when the file cannot be read at all; tampering is reported in the
/// [`VerifyReport`].
pub fn verify(
    db_path: &Path,
    public_key: &VerifyingKey,
    kept: Option<&Checkpoint>,
) -> Result<VerifyReport, AuditError> {
    verify_with(db_path, public_key, &VerifyOptions { external: kept_external(kept), ..VerifyOptions::default() })
}

/// [`verify`] with options (witness checkpoints, an allowed unsigned tail).
pub fn verify_with(db_path: &Path, root: &VerifyingKey, opts: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    verify_conn_with(&open_reader(db_path)?, root, opts)
}

/// [`verify`] on an open (read-only) connection.
pub fn verify_conn(
    conn: &Connection,
    public_key: &VerifyingKey,
    kept: Option<&Checkpoint>,
) -> Result<VerifyReport, AuditError> {
    verify_conn_with(conn, public_key, &VerifyOptions { external: kept_external(kept), ..VerifyOptions::default() })
}

fn kept_external(kept: Option<&Checkpoint>) -> Vec<External> {
    kept.map(|k| External { checkpoint: k.clone(), source: ExternalSource::Kept }).into_iter().collect()
}

/// Reads a witness file: one checkpoint JSON per line (blank lines skipped). A malformed
/// line is an error naming the file and the line.
pub fn read_witness_file(path: &Path) -> Result<Vec<External>, AuditError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuditError::Malformed { what: "witness file", reason: format!("cannot read {file}: {e}") })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let checkpoint = Checkpoint::from_json(line).map_err(|e| AuditError::Malformed {
            what: "witness file",
            reason: format!("{file} line {}: {e}", i + 1),
        })?;
        out.push(External { checkpoint, source: ExternalSource::Witness { file: file.clone(), line: i + 1 } });
    }
    Ok(out)
}

/// [`verify_with`] on an open (read-only) connection. A log that was archived is verified
/// from its anchor on, and the report says that the events before it are archived
/// ([`VerifyReport::archived_through`]): [`verify_chain`] verifies them with the archives.
pub fn verify_conn_with(
    conn: &Connection,
    root: &VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    verify_segments(&[Segment { conn, archive: None }], root, opts)
}

/// Verifies archive files (`audit archive`) and, when given, the live log after them, as
/// one chain from sequence 1: each archive strictly (chain, checkpoints, hand-overs), each
/// starting exactly where the one before it ended (sequence and hash), and the live log
/// starting at the last archive's end. The archives are ordered by their range; a missing,
/// overlapping, foreign or altered file is named in the report.
pub fn verify_chain(
    archives: &[PathBuf],
    live: Option<&Path>,
    root: &VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let mut opened = Vec::with_capacity(archives.len());
    for p in archives {
        let (conn, meta) = archive_file::open(p)?;
        let sha256 = hex(&archive_file::sha256(p)?);
        opened.push((format!("archive {}", p.display()), conn, meta, sha256));
    }
    opened.sort_by_key(|(_, _, m, _)| (m.anchor_sequence, m.through_sequence));
    let live = live.map(open_reader).transpose()?;
    let mut segments: Vec<Segment<'_>> = opened
        .iter()
        .map(|(name, conn, meta, sha)| Segment { conn, archive: Some((name.clone(), meta.clone(), sha.clone())) })
        .collect();
    if let Some(conn) = &live {
        segments.push(Segment { conn, archive: None });
    }
    verify_segments(&segments, root, opts)
}

/// One file of a chain: an archive (its name, what it says it holds, and its SHA-256 in
/// hex), or the live log.
struct Segment<'c> {
    conn: &'c Connection,
    archive: Option<(String, ArchiveMeta, String)>,
}

/// An archive (or a live log's anchor) that an `audit_archived` record later in the chain
/// must name: what to call it, the range, and the file's SHA-256 when there is a file.
struct Required {
    what: String,
    range: (i64, i64),
    /// The hash of event `range.1`.
    hash: [u8; 32],
    sha256: Option<String>,
}

type Externals<'e> = std::iter::Peekable<std::vec::IntoIter<&'e External>>;

fn verify_segments(
    segments: &[Segment<'_>],
    root: &VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let mut walk = Walk::new(root, opts);
    // A kept checkpoint naming the root key is checked before anything else, so a bad one is
    // named as such (one naming a later key is checked where that key is in force).
    for e in &opts.external {
        if e.source == ExternalSource::Kept
            && e.checkpoint.key_id == walk.key_id()
            && let Err(p) = e.checkpoint.verify(root)
        {
            return Ok(
                walk.fail(None, format!("the kept checkpoint at {} does not verify: {p}", e.checkpoint.sequence))
            );
        }
    }
    let mut external: Vec<&External> = opts.external.iter().collect();
    external.sort_by_key(|e| e.checkpoint.sequence);
    let mut external = external.into_iter().peekable();
    if let Some(name) = unrecorded_overlap(segments)? {
        return Ok(walk.fail(
            None,
            format!(
                "archive {name} is not recorded in the log: it overlaps another archive given, and no audit_archived \
                 record in the files given names its range and SHA-256 (left by an interrupted `audit archive`? it is \
                 not part of the chain)"
            ),
        ));
    }
    let mut required = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        if let Some(report) = walk_segment(&mut walk, seg, i, i + 1 == segments.len(), &mut external, &mut required)? {
            return Ok(report);
        }
    }
    // Like a hand-over, an archive counts only when the chain itself says so: its
    // `audit_archived` record, after it, names its range (and the file's SHA-256).
    walk.place = None;
    for r in &required {
        if let Err(report) = walk.require_recorded(&r.what, r.range, r.hash, r.sha256.as_deref()) {
            return Ok(*report);
        }
    }
    // Every archive the live log says it made, signed by a key of the verified chain.
    if let Err(report) = walk.archive_rows() {
        return Ok(*report);
    }
    let unrecorded = segments.last().and_then(|s| s.archive.as_ref()).map(|(name, _, _)| name.clone());
    let mut report = walk.finish();
    if let Some(name) = unrecorded {
        report.detail.push_str(&format!(
            "; the audit_archived record of {name} is in the live log, which was not verified here"
        ));
    }
    Ok(report)
}

/// When archives given overlap (what an archive left by an interrupted run and its rerun
/// do), the first of them that no `audit_archived` record in any file given names (range and
/// SHA-256): so the report names the stray file rather than an overlap. Only for the message:
/// the records are read unverified (the walk fails on the overlap either way).
fn unrecorded_overlap(segments: &[Segment<'_>]) -> Result<Option<String>, AuditError> {
    let archives: Vec<_> = segments.iter().filter_map(|s| s.archive.as_ref()).collect();
    let overlapping: Vec<usize> = (1..archives.len())
        .filter(|&i| archives[i].1.anchor_sequence < archives[i - 1].1.through_sequence)
        .flat_map(|i| [i - 1, i])
        .collect();
    if overlapping.is_empty() {
        return Ok(None);
    }
    let mut recorded = Vec::new();
    for seg in segments {
        let mut stmt = seg.conn.prepare("SELECT sequence, detail FROM events WHERE action = ?1")?;
        let mut rows = stmt.query([Action::AuditArchived.as_str()])?;
        while let Some(r) = rows.next()? {
            let (Ok(sequence), Ok(detail)) = (r.get::<_, i64>(0), r.get::<_, String>(1)) else { continue };
            recorded.extend(ArchivedRecord::parse(sequence, detail.as_bytes()));
        }
    }
    let named = |(_, m, sha): &&(String, ArchiveMeta, String)| {
        recorded.iter().any(|r| (r.from, r.through) == (m.anchor_sequence + 1, m.through_sequence) && r.sha256 == *sha)
    };
    let stray = overlapping.into_iter().map(|i| &archives[i]).find(|a| !named(a));
    Ok(stray.map(|(name, _, _)| name.trim_start_matches("archive ").to_owned()))
}

/// Walks one file from where it says it starts; `Some(report)` when something fails.
fn walk_segment(
    walk: &mut Walk<'_>,
    seg: &Segment<'_>,
    index: usize,
    last: bool,
    external: &mut Externals<'_>,
    required: &mut Vec<Required>,
) -> Result<Option<VerifyReport>, AuditError> {
    // One read transaction: events, checkpoints and hand-overs from the same snapshot (the
    // caller's, when it holds one: `audit archive` verifies what it is about to archive).
    let owned;
    let tx: &Connection = if seg.conn.is_autocommit() {
        owned = seg.conn.unchecked_transaction()?;
        &owned
    } else {
        seg.conn
    };
    let live_anchor = if seg.archive.is_none() { anchor(&mut &*tx)? } else { None };
    if seg.archive.is_none() {
        walk.archive_rows = super::anchor::all(&mut &*tx)?;
    }
    let start = match &seg.archive {
        Some((_, m, _)) => (m.anchor_sequence, m.anchor_hash),
        None => live_anchor.map_or((0, GENESIS_HASH), |a| (a.through, a.hash)),
    };
    walk.place = match &seg.archive {
        Some((name, _, _)) => Some(name.clone()),
        None if index > 0 => Some("the live log".to_owned()),
        None => None,
    };
    // A live log alone, archived up to its anchor: verified from there, saying so.
    let alone = index == 0 && seg.archive.is_none() && start.0 > 0;
    let mut handovers = handover::all(&mut &*tx)?
        .into_iter()
        .filter(|h| alone || h.as_ref().map_or(true, |h| h.sequence > start.0))
        .collect::<Vec<_>>()
        .into_iter()
        .peekable();
    if alone {
        walk.start_at_anchor(start.0, start.1);
        while let Some(h) = handovers.next_if(|h| h.as_ref().is_ok_and(|h| h.sequence < start.0)) {
            if let Err(report) = walk.handover_archived(&h) {
                return Ok(Some(*report));
            }
        }
        while external.next_if(|e| e.checkpoint.sequence < start.0).is_some() {
            walk.skipped_external += 1;
        }
    } else if (walk.seq, walk.hash()) != start {
        return Ok(Some(discontinuity(walk, seg, start)));
    }
    // The first file's checkpoint at its start is checked (the empty log's, or the anchor's);
    // a later file's was checked at the end of the file before it, under the key in force there.
    let cp_from = if index == 0 { start.0 } else { start.0 + 1 };
    let mut cp_stmt = tx.prepare(&format!(
        "SELECT sequence, head_hash, time_ms, key_id, signature FROM checkpoints WHERE sequence >= {cp_from} \
         ORDER BY sequence"
    ))?;
    let mut cps = cp_stmt.query([])?;
    let mut ev_stmt =
        tx.prepare(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE sequence > {} ORDER BY sequence", start.0))?;
    let mut events = ev_stmt.query([])?;

    let mut next_cp = read_checkpoint(cps.next()?)?;
    if alone && let Some(a) = live_anchor {
        // The anchor is trusted only as far as its checkpoint's signature (checked below,
        // under the key in force there) and its record (checked at the end) go.
        if !matches!(&next_cp, Some(Ok(c)) if c.sequence == a.through) {
            return Ok(Some(walk.fail(
                Some(a.from.min(a.through)),
                format!(
                    "the archive anchor at {} has no signed checkpoint at {} (a forged or moved anchor: events \
                     before it were deleted, not archived)",
                    a.through, a.through
                ),
            )));
        }
        required.push(Required {
            what: format!("the archive anchor at {}", a.through),
            range: (a.from, a.through),
            hash: a.hash,
            sha256: None,
        });
    }
    loop {
        // Everything at or below the verified head (sequence 0 before any event): stored
        // checkpoints (signed by the key in force), then hand-overs, then external ones
        // (which may be signed by the key before or after a hand-over at the same point).
        while let Some(cp) = next_cp.as_ref().filter(|c| c.as_ref().map_or(true, |c| c.sequence <= walk.seq)) {
            if let Err(report) = walk.checkpoint(cp) {
                return Ok(Some(*report));
            }
            next_cp = read_checkpoint(cps.next()?)?;
        }
        while let Some(h) = handovers.next_if(|h| h.as_ref().map_or(true, |h| h.sequence <= walk.seq)) {
            let followed = match &h {
                Ok(x) if x.sequence <= start.0 => walk.handover_archived(&h),
                _ => walk.handover(&h, tx),
            };
            if let Err(report) = followed {
                return Ok(Some(*report));
            }
        }
        while let Some(e) = external.next_if(|e| e.checkpoint.sequence <= walk.seq) {
            if let Err(report) = walk.external(e) {
                return Ok(Some(*report));
            }
        }
        let Some(row) = events.next()? else { break };
        if let Err(report) = walk.event(row)? {
            return Ok(Some(report));
        }
    }
    let (seq, bad) = (walk.seq, walk.seq + 1);
    if let Some(cp) = next_cp {
        let at = cp.map_or_else(|_| walk.seq + 1, |c| c.sequence);
        return Ok(Some(
            walk.fail(Some(bad), format!("checkpoint at {at} but the log ends at {seq} (newest events deleted)")),
        ));
    }
    if let Some(h) = handovers.next() {
        let at = h.map_or(bad, |h| h.sequence);
        return Ok(Some(
            walk.fail(Some(bad), format!("hand-over at {at} but the log ends at {seq} (newest events deleted)")),
        ));
    }
    if let Some((name, meta, sha256)) = &seg.archive {
        if !last {
            required.push(Required {
                what: name.clone(),
                range: (meta.anchor_sequence + 1, meta.through_sequence),
                hash: meta.head_hash,
                sha256: Some(sha256.clone()),
            });
        }
        if (seq, walk.hash()) != (meta.through_sequence, meta.head_hash) {
            return Ok(Some(walk.fail(
                Some(bad.min(meta.through_sequence)),
                format!(
                    "the archive says it ends at event {} but its events end at {seq} with another hash (events \
                     deleted or altered)",
                    meta.through_sequence
                ),
            )));
        }
        if walk.signed.is_none_or(|s| s < seq) {
            return Ok(Some(walk.fail(Some(bad), format!("its last event {seq} is covered by no signed checkpoint"))));
        }
        walk.archives.push(format!("{} ({}..={seq})", name.trim_start_matches("archive "), start.0 + 1));
    }
    if !last {
        return Ok(None);
    }
    // The newest external checkpoint beyond the end names the truncation (once its own
    // signature holds: a forged witness line must not pass for a proof of deletion).
    if let Some(e) = external.last() {
        if let Err(report) = walk.external(e) {
            return Ok(Some(*report));
        }
        let msg = format!(
            "{} at {} but the log ends at {seq} (newest events deleted)",
            source_name(&e.source),
            e.checkpoint.sequence
        );
        return Ok(Some(walk.fail(Some(bad), msg)));
    }
    Ok(None)
}

/// A file that does not start where the chain so far ends.
fn discontinuity(walk: &Walk<'_>, seg: &Segment<'_>, (at, hash): (i64, [u8; 32])) -> VerifyReport {
    let what = if seg.archive.is_some() { "it" } else { "the live log" };
    let seq = walk.seq;
    let detail = if at > seq {
        format!(
            "{what} starts after event {at}, but the chain before it ends at event {seq}: events {}..={at} are \
             missing (an archive left out)",
            seq + 1
        )
    } else if at < seq {
        format!(
            "{what} starts after event {at}, but the chain before it already reached event {seq} (overlapping archives)"
        )
    } else {
        format!(
            "{what} starts after event {at} with hash {}, but the chain's event {at} has hash {} (an archive of \
             another log, or altered)",
            hex(&hash),
            hex(&walk.hash())
        )
    };
    walk.fail(Some(at.min(seq) + 1), detail)
}

/// A checkpoint row, or why it cannot be read.
type CpRow = Option<Result<Checkpoint, String>>;

fn read_checkpoint(row: Option<&Row<'_>>) -> Result<CpRow, AuditError> {
    let Some(row) = row else { return Ok(None) };
    match checkpoint_from_row(row) {
        Ok(Ok(cp)) => Ok(Some(Ok(cp))),
        Ok(Err(e)) => Ok(Some(Err(e.to_string()))),
        Err(e) if is_type_error(&e) => Ok(Some(Err(format!("a checkpoint row is unreadable ({e})")))),
        Err(e) => Err(e.into()),
    }
}
