//! Offline verification: recompute the chain from genesis and check every signed
//! checkpoint, with nothing but the audit file and the public key.
//!
//! Invariants: the file is opened read-only and read in one snapshot (events and checkpoints
//! agree even while a server appends); signatures are checked only with the key the verifier
//! supplies; hashes are recomputed over the stored bytes exactly, so any edit, even one this
//! binary could not have written, reads as an edit. The first problem found stops the walk
//! and is named in [`VerifyReport::detail`].

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use super::AuditError;
use super::chain::{Checkpoint, CheckpointProblem, EventFields, GENESIS_HASH, event_hash};
use super::db::{EVENT_COLUMNS, checkpoint_from_row, open_reader};
use crate::crypto::secret::hex;

/// The outcome of [`verify`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// True when the chain, every stored checkpoint and the kept checkpoint (if any) hold.
    pub ok: bool,
    /// Events whose hash and link were verified.
    pub events_checked: u64,
    /// Where trust ends: the first event that fails, the sequence of a checkpoint that fails
    /// its signature, the first event an altered-and-recomputed stretch may start at, or the
    /// first missing sequence after a truncation. `None` when `ok` (or when only the kept
    /// checkpoint itself is bad).
    pub first_bad_sequence: Option<i64>,
    /// The last event verified good (0 for none) and its hash.
    pub head_sequence: i64,
    pub head_hash: [u8; 32],
    /// Stored checkpoints whose signature and head hash were verified.
    pub checkpoints_checked: u64,
    /// The highest sequence covered by a verified signature (stored or kept checkpoint).
    /// Events after it are chained but could still be cut off undetected.
    pub signed_through: Option<i64>,
    /// Why, in words: what is wrong, or what was verified.
    pub detail: String,
}

/// Verifies the audit database at `db_path` (opened read-only) with `public_key`, and
/// against `kept`, a checkpoint saved outside the vault, when given. `Err` only when the
/// file cannot be read at all; tampering is reported in the [`VerifyReport`].
pub fn verify(
    db_path: &Path,
    public_key: &VerifyingKey,
    kept: Option<&Checkpoint>,
) -> Result<VerifyReport, AuditError> {
    verify_conn(&open_reader(db_path)?, public_key, kept)
}

/// [`verify`] on an open (read-only) connection.
pub fn verify_conn(
    conn: &Connection,
    public_key: &VerifyingKey,
    kept: Option<&Checkpoint>,
) -> Result<VerifyReport, AuditError> {
    let mut walk = Walk::new(public_key, kept);
    if let Some(k) = kept
        && let Err(p) = k.verify(public_key)
    {
        return Ok(walk.fail(None, format!("the kept checkpoint at {} does not verify: {p}", k.sequence)));
    }
    // One read transaction: events and checkpoints from the same snapshot.
    let tx = conn.unchecked_transaction()?;
    let mut cp_stmt =
        tx.prepare("SELECT sequence, head_hash, time_ms, key_id, signature FROM checkpoints ORDER BY sequence")?;
    let mut cps = cp_stmt.query([])?;
    let mut ev_stmt = tx.prepare(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY sequence"))?;
    let mut events = ev_stmt.query([])?;

    let mut next_cp = read_checkpoint(cps.next()?)?;
    loop {
        // Checkpoints at or below the verified head (sequence 0 before any event).
        while let Some(cp) = next_cp.as_ref().filter(|c| c.as_ref().map_or(true, |c| c.sequence <= walk.seq)) {
            if let Err(report) = walk.checkpoint(cp) {
                return Ok(report);
            }
            next_cp = read_checkpoint(cps.next()?)?;
        }
        let Some(row) = events.next()? else { break };
        if let Err(report) = walk.event(row)? {
            return Ok(report);
        }
    }
    if let Some(cp) = next_cp {
        let at = cp.map_or_else(|_| walk.seq + 1, |c| c.sequence);
        let (seq, bad) = (walk.seq, walk.seq + 1);
        return Ok(
            walk.fail(Some(bad), format!("checkpoint at {at} but the log ends at {seq} (newest events deleted)"))
        );
    }
    Ok(walk.finish())
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

/// Errors that mean "this row holds values of the wrong type" (an edit), not "I/O failed".
fn is_type_error(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    )
}

struct Walk<'a> {
    key: &'a VerifyingKey,
    kept: Option<&'a Checkpoint>,
    /// The last verified event and its hash.
    seq: i64,
    hash: [u8; 32],
    events: u64,
    checkpoints: u64,
    /// The last sequence vouched for by a verified stored checkpoint (0: genesis).
    anchor: i64,
    /// The chain's hash at the kept checkpoint's sequence, once reached.
    hash_at_kept: Option<[u8; 32]>,
    /// The last anchor at or before the kept checkpoint.
    anchor_before_kept: i64,
}

impl<'a> Walk<'a> {
    fn new(key: &'a VerifyingKey, kept: Option<&'a Checkpoint>) -> Self {
        let hash_at_kept = kept.filter(|k| k.sequence == 0).map(|_| GENESIS_HASH);
        Walk {
            key,
            kept,
            seq: 0,
            hash: GENESIS_HASH,
            events: 0,
            checkpoints: 0,
            anchor: 0,
            hash_at_kept,
            anchor_before_kept: 0,
        }
    }

    /// Verifies the next event row against the chain so far.
    fn event(&mut self, row: &Row<'_>) -> Result<Result<(), VerifyReport>, AuditError> {
        let seq: i64 = row.get(0)?;
        let expected = self.seq + 1;
        if seq != expected {
            let detail = if self.seq == 0 {
                format!("sequence 1 missing: the log starts at {seq} (oldest events deleted or renumbered)")
            } else {
                format!("sequence {expected} missing after {} (deleted or reordered)", self.seq)
            };
            return Ok(Err(self.fail(Some(expected), detail)));
        }
        let (stored, fields) = match raw_event(row) {
            Ok(v) => v,
            Err(e) if is_type_error(&e) => {
                return Ok(Err(self.fail(Some(seq), format!("event {seq}: unreadable row ({e}) (edited)"))));
            }
            Err(e) => return Err(e.into()),
        };
        if stored.prev != self.hash {
            return Ok(Err(self.fail(
                Some(seq),
                format!(
                    "event {seq}: does not link to event {} (reordered, or an event before it was removed or replaced)",
                    self.seq
                ),
            )));
        }
        let hash = event_hash(&self.hash, seq, stored.time_ms, &fields);
        if stored.hash != hash {
            return Ok(Err(self.fail(Some(seq), format!("event {seq}: hash does not match its contents (edited)"))));
        }
        self.seq = seq;
        self.hash = hash;
        self.events += 1;
        if self.kept.is_some_and(|k| k.sequence == seq) {
            self.hash_at_kept = Some(hash);
        }
        Ok(Ok(()))
    }

    /// Verifies a stored checkpoint at (or, if corrupt, near) the current head.
    fn checkpoint(&mut self, cp: &Result<Checkpoint, String>) -> Result<(), VerifyReport> {
        let cp = match cp {
            Ok(cp) => cp,
            Err(why) => return Err(self.fail(Some(self.seq), why.clone())),
        };
        let at = cp.sequence;
        if at < 0 {
            return Err(self.fail(Some(0), format!("checkpoint at {at}: impossible sequence (edited)")));
        }
        match cp.verify(self.key) {
            Ok(()) => {}
            Err(CheckpointProblem::UnknownKey { found, expected }) => {
                return Err(self.fail(
                    Some(at),
                    format!("checkpoint at {at} signed by unknown key {found} (the public key given is {expected})"),
                ));
            }
            Err(p) => return Err(self.fail(Some(at), format!("checkpoint at {at}: {p}"))),
        }
        if cp.head_hash != self.hash {
            let from = self.anchor + 1;
            return Err(self.fail(
                Some(from),
                format!(
                    "checkpoint at {at}: the log's hash at {at} differs from the signed one \
                     (an event between {from} and {at} was altered and the chain recomputed)"
                ),
            ));
        }
        self.anchor = at;
        self.checkpoints += 1;
        if self.kept.is_some_and(|k| k.sequence >= at) {
            self.anchor_before_kept = at;
        }
        Ok(())
    }

    /// All events and stored checkpoints hold; now the kept checkpoint.
    fn finish(self) -> VerifyReport {
        let mut detail = format!(
            "{} events and {} checkpoints verified; head {} has hash {}",
            self.events,
            self.checkpoints,
            self.seq,
            hex(&self.hash)
        );
        let mut signed = (self.checkpoints > 0).then_some(self.anchor);
        if let Some(k) = self.kept {
            if k.sequence > self.seq {
                let (end, bad) = (self.seq, self.seq + 1);
                let msg =
                    format!("kept checkpoint at {} but the log ends at {end} (newest events deleted)", k.sequence);
                return self.fail(Some(bad), msg);
            }
            if self.hash_at_kept != Some(k.head_hash) {
                let from = self.anchor_before_kept + 1;
                let msg = format!(
                    "kept checkpoint at {at}: the log's hash at {at} differs from the kept one \
                     (events between {from} and {at} were altered or replaced)",
                    at = k.sequence
                );
                return self.fail(Some(from), msg);
            }
            detail.push_str(&format!("; the kept checkpoint at {} matches", k.sequence));
            signed = Some(signed.unwrap_or(0).max(k.sequence));
        }
        match signed {
            Some(s) if s >= self.seq => detail.push_str("; the head is signed"),
            Some(s) => detail.push_str(&format!("; events after {s} are not yet covered by a signed checkpoint")),
            None if self.seq > 0 => detail.push_str("; no checkpoint covers any event yet"),
            None => {}
        }
        VerifyReport {
            ok: true,
            events_checked: self.events,
            first_bad_sequence: None,
            head_sequence: self.seq,
            head_hash: self.hash,
            checkpoints_checked: self.checkpoints,
            signed_through: signed,
            detail,
        }
    }

    fn fail(&self, first_bad: Option<i64>, detail: String) -> VerifyReport {
        VerifyReport {
            ok: false,
            events_checked: self.events,
            first_bad_sequence: first_bad,
            head_sequence: self.seq,
            head_hash: self.hash,
            checkpoints_checked: self.checkpoints,
            signed_through: (self.checkpoints > 0).then_some(self.anchor),
            detail,
        }
    }
}

struct StoredLinks {
    time_ms: i64,
    prev: Vec<u8>,
    hash: Vec<u8>,
}

/// The stored bytes of an event row, exactly as they are (see the module invariants).
fn raw_event<'r>(row: &'r Row<'_>) -> rusqlite::Result<(StoredLinks, EventFields<'r>)> {
    let text = |i: usize| -> rusqlite::Result<&'r [u8]> {
        match row.get_ref(i)? {
            ValueRef::Text(b) => Ok(b),
            other => Err(rusqlite::Error::InvalidColumnType(i, format!("column {i}"), other.data_type())),
        }
    };
    let opt_text = |i: usize| -> rusqlite::Result<Option<&'r [u8]>> {
        match row.get_ref(i)? {
            ValueRef::Null => Ok(None),
            _ => text(i).map(Some),
        }
    };
    let blob = |i: usize| -> rusqlite::Result<Vec<u8>> {
        match row.get_ref(i)? {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            other => Err(rusqlite::Error::InvalidColumnType(i, format!("column {i}"), other.data_type())),
        }
    };
    let fields = EventFields {
        caller: text(2)?,
        caller_serial: text(3)?,
        action: text(4)?,
        tenant_id: opt_text(5)?,
        key_version: row.get(6)?,
        outcome: text(7)?,
        upstream_status: row.get(8)?,
        token_fingerprint: opt_text(9)?,
        detail: text(10)?,
        request_id: text(11)?,
        peer: text(12)?,
    };
    Ok((StoredLinks { time_ms: row.get(1)?, prev: blob(13)?, hash: blob(14)? }, fields))
}
