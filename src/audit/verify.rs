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

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use super::AuditError;
use super::chain::{Checkpoint, CheckpointProblem, EventFields, GENESIS_HASH, event_hash};
use super::db::{EVENT_COLUMNS, checkpoint_from_row, open_reader};
use super::handover::{self, Handover};
use super::record::Action;
use crate::crypto::secret::hex;
use crate::vault::audit_key_id;

/// The outcome of [`verify`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// True when the chain, every stored checkpoint, every hand-over and every external
    /// checkpoint (kept, witnessed) hold, **and** every event is covered by a verified
    /// signature (or, with [`VerifyOptions::allow_unsigned_tail`], the unsigned tail is only
    /// reported in [`VerifyReport::warning`]).
    pub ok: bool,
    /// Events whose hash and link were verified.
    pub events_checked: u64,
    /// Where trust ends: the first event that fails, the sequence of a checkpoint that fails
    /// its signature, the first event an altered-and-recomputed stretch may start at, the
    /// first missing sequence after a truncation, or the first unsigned event. `None` when
    /// `ok` (or when only an external checkpoint itself is bad).
    pub first_bad_sequence: Option<i64>,
    /// The last event verified good (0 for none) and its hash.
    pub head_sequence: i64,
    pub head_hash: [u8; 32],
    /// Stored checkpoints whose signature and head hash were verified.
    pub checkpoints_checked: u64,
    /// External checkpoints (kept and witnessed) that matched the log.
    pub external_checked: u64,
    /// The highest sequence covered by a verified signature (stored or external checkpoint).
    pub signed_through: Option<i64>,
    /// Events after the last signed checkpoint: nothing proves they were not cut or rewritten.
    pub unsigned_tail: Option<UnsignedTail>,
    /// Ids of the signing keys followed, oldest first (more than one after a rotation).
    pub key_ids: Vec<String>,
    /// Set when the log verifies only because an unsigned tail was allowed: what is not proven.
    pub warning: Option<String>,
    /// Why, in words: what is wrong, or what was verified.
    pub detail: String,
}

/// Events not covered by any verified signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsignedTail {
    /// The first unsigned sequence.
    pub first: i64,
    /// How many events, from `first` to the head.
    pub count: u64,
}

/// Where an external checkpoint came from, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalSource {
    /// Kept by the auditor (`--checkpoint`, or the gRPC request).
    Kept,
    /// Line `line` of a witness file.
    Witness { file: String, line: usize },
    /// The newest checkpoint a running server signed, from its memory (`VerifyAuditLog`).
    ServerMemory,
}

/// A checkpoint held outside the vault: the log must contain its head, and its signature must
/// verify under the key in force at its sequence.
#[derive(Debug, Clone)]
pub struct External {
    pub checkpoint: Checkpoint,
    pub source: ExternalSource,
}

/// What [`verify_with`] checks beyond the file itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Checkpoints kept or witnessed outside the vault.
    pub external: Vec<External>,
    /// Report an unsigned tail as a warning instead of a failure (a log copied from a
    /// crashed server).
    pub allow_unsigned_tail: bool,
    /// For a live log: a checkpoint at this sequence was just taken for this verification,
    /// so events after it were appended while verifying (they are reported, not failed,
    /// once everything up to it is signed).
    pub live_head: Option<i64>,
}

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

/// [`verify_with`] on an open (read-only) connection.
pub fn verify_conn_with(
    conn: &Connection,
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
    // One read transaction: events, checkpoints and hand-overs from the same snapshot.
    let tx = conn.unchecked_transaction()?;
    let mut handovers = handover::all(&tx)?.into_iter().peekable();
    let mut cp_stmt =
        tx.prepare("SELECT sequence, head_hash, time_ms, key_id, signature FROM checkpoints ORDER BY sequence")?;
    let mut cps = cp_stmt.query([])?;
    let mut ev_stmt = tx.prepare(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY sequence"))?;
    let mut events = ev_stmt.query([])?;

    let mut next_cp = read_checkpoint(cps.next()?)?;
    loop {
        // Everything at or below the verified head (sequence 0 before any event): stored
        // checkpoints (signed by the key in force), then hand-overs, then external ones
        // (which may be signed by the key before or after a hand-over at the same point).
        while let Some(cp) = next_cp.as_ref().filter(|c| c.as_ref().map_or(true, |c| c.sequence <= walk.seq)) {
            if let Err(report) = walk.checkpoint(cp) {
                return Ok(*report);
            }
            next_cp = read_checkpoint(cps.next()?)?;
        }
        while let Some(h) = handovers.next_if(|h| h.as_ref().map_or(true, |h| h.sequence <= walk.seq)) {
            if let Err(report) = walk.handover(&h, &tx) {
                return Ok(*report);
            }
        }
        while let Some(e) = external.next_if(|e| e.checkpoint.sequence <= walk.seq) {
            if let Err(report) = walk.external(e) {
                return Ok(*report);
            }
        }
        let Some(row) = events.next()? else { break };
        if let Err(report) = walk.event(row)? {
            return Ok(report);
        }
    }
    let (seq, bad) = (walk.seq, walk.seq + 1);
    if let Some(cp) = next_cp {
        let at = cp.map_or_else(|_| walk.seq + 1, |c| c.sequence);
        return Ok(
            walk.fail(Some(bad), format!("checkpoint at {at} but the log ends at {seq} (newest events deleted)"))
        );
    }
    if let Some(h) = handovers.next() {
        let at = h.map_or(bad, |h| h.sequence);
        return Ok(walk.fail(Some(bad), format!("hand-over at {at} but the log ends at {seq} (newest events deleted)")));
    }
    // The newest external checkpoint beyond the end names the truncation (once its own
    // signature holds: a forged witness line must not pass for a proof of deletion).
    if let Some(e) = external.last() {
        if let Err(report) = walk.external(e) {
            return Ok(*report);
        }
        let msg = format!(
            "{} at {} but the log ends at {seq} (newest events deleted)",
            source_name(&e.source),
            e.checkpoint.sequence
        );
        return Ok(walk.fail(Some(bad), msg));
    }
    Ok(walk.finish())
}

fn source_name(s: &ExternalSource) -> String {
    match s {
        ExternalSource::Kept => "kept checkpoint".to_owned(),
        ExternalSource::Witness { file, line } => format!("witnessed checkpoint ({file} line {line})"),
        ExternalSource::ServerMemory => "checkpoint this server signed earlier (held in memory)".to_owned(),
    }
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
    /// The key in force, and the one before it when a hand-over happened at `handed_at`.
    key: VerifyingKey,
    previous: Option<(i64, VerifyingKey)>,
    key_ids: Vec<String>,
    opts: &'a VerifyOptions,
    /// The last verified event and its hash.
    seq: i64,
    hash: [u8; 32],
    events: u64,
    checkpoints: u64,
    external: u64,
    /// The last sequence vouched for by a verified stored checkpoint (0: genesis).
    anchor: i64,
    /// The highest sequence vouched for by any verified signature, if any.
    signed: Option<i64>,
}

impl<'a> Walk<'a> {
    fn new(root: &VerifyingKey, opts: &'a VerifyOptions) -> Self {
        Walk {
            key: *root,
            previous: None,
            key_ids: vec![audit_key_id(root.as_bytes())],
            opts,
            seq: 0,
            hash: GENESIS_HASH,
            events: 0,
            checkpoints: 0,
            external: 0,
            anchor: 0,
            signed: None,
        }
    }

    fn key_id(&self) -> String {
        audit_key_id(self.key.as_bytes())
    }

    fn sign_through(&mut self, at: i64) {
        self.signed = Some(self.signed.map_or(at, |s| s.max(at)));
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
        Ok(Ok(()))
    }

    /// Verifies a stored checkpoint at (or, if corrupt, near) the current head.
    fn checkpoint(&mut self, cp: &Result<Checkpoint, String>) -> Result<(), Box<VerifyReport>> {
        let cp = match cp {
            Ok(cp) => cp,
            Err(why) => return Err(self.bad(Some(self.seq), why.clone())),
        };
        let at = cp.sequence;
        if at < 0 {
            return Err(self.bad(Some(0), format!("checkpoint at {at}: impossible sequence (edited)")));
        }
        match cp.verify(&self.key) {
            Ok(()) => {}
            Err(CheckpointProblem::UnknownKey { found, expected }) => {
                return Err(self.bad(
                    Some(at),
                    format!(
                        "checkpoint at {at} signed by unknown key {found} (the key in force there is {expected}; \
                         a later key counts only after a valid hand-over from its predecessor)"
                    ),
                ));
            }
            Err(p) => return Err(self.bad(Some(at), format!("checkpoint at {at}: {p}"))),
        }
        if cp.head_hash != self.hash {
            let from = self.anchor + 1;
            return Err(self.bad(
                Some(from),
                format!(
                    "checkpoint at {at}: the log's hash at {at} differs from the signed one \
                     (an event between {from} and {at} was altered and the chain recomputed)"
                ),
            ));
        }
        self.anchor = at;
        self.checkpoints += 1;
        self.sign_through(at);
        Ok(())
    }

    /// Verifies a hand-over at the current head and moves to the new key.
    fn handover(&mut self, h: &Result<Handover, String>, conn: &Connection) -> Result<(), Box<VerifyReport>> {
        let h = match h {
            Ok(h) => h,
            Err(why) => return Err(self.bad(Some(self.seq), why.clone())),
        };
        let at = h.sequence;
        let new = h.verify(&self.key).map_err(|why| self.bad(Some(at), why))?;
        if h.head_hash != self.hash {
            return Err(self.bad(
                Some(at),
                format!(
                    "hand-over at {at}: signed over a different head than the log's (moved, or the log was altered)"
                ),
            ));
        }
        // The event it is signed over must be the recorded rotation naming this successor.
        let recorded: Option<(String, String)> = conn
            .query_row("SELECT action, detail FROM events WHERE sequence = ?1", [at], |r| Ok((r.get(0)?, r.get(1)?)))
            .ok();
        let names_it = recorded.as_ref().is_some_and(|(action, detail)| {
            action == Action::SigningKeyRotated.as_str() && detail.contains(&h.new_key_id)
        });
        if !names_it {
            return Err(self.bad(
                Some(at),
                format!(
                    "hand-over at {at}: event {at} is not the signing_key_rotated record naming key {}",
                    h.new_key_id
                ),
            ));
        }
        self.previous = Some((at, self.key));
        self.key = new;
        self.key_ids.push(h.new_key_id.clone());
        Ok(())
    }

    /// Verifies a kept or witnessed checkpoint at the current head.
    fn external(&mut self, e: &External) -> Result<(), Box<VerifyReport>> {
        let cp = &e.checkpoint;
        let at = cp.sequence;
        let name = source_name(&e.source);
        let before = self.previous.filter(|(s, _)| *s == at).map(|(_, k)| k);
        let verified = cp.verify(&self.key).or_else(|p| before.map_or(Err(p.clone()), |k| cp.verify(&k)));
        if let Err(p) = verified {
            let bad = if e.source == ExternalSource::Kept { None } else { Some(at) };
            return Err(self.bad(bad, format!("the {name} at {at} does not verify: {p}")));
        }
        if at > self.seq {
            // Only reached when the log ended first: reported by the caller.
            return Ok(());
        }
        if cp.head_hash != self.hash {
            let from = self.anchor.min(at - 1).max(0) + 1;
            let what = if e.source == ExternalSource::Kept { "kept" } else { "witnessed" };
            return Err(self.bad(
                Some(from),
                format!(
                    "{name} at {at}: the log's hash at {at} differs from the {what} one \
                     (events between {from} and {at} were altered or replaced)"
                ),
            ));
        }
        self.external += 1;
        self.sign_through(at);
        Ok(())
    }

    /// Everything held; now what is signed.
    fn finish(self) -> VerifyReport {
        let mut detail = format!(
            "{} events and {} checkpoints verified; head {} has hash {}",
            self.events,
            self.checkpoints,
            self.seq,
            hex(&self.hash)
        );
        if self.external > 0 {
            detail.push_str(&format!("; {} kept or witnessed checkpoints match", self.external));
        }
        if self.key_ids.len() > 1 {
            detail.push_str(&format!("; signing keys followed: {}", self.key_ids.join(" -> ")));
        }
        let mut report = VerifyReport {
            ok: true,
            events_checked: self.events,
            first_bad_sequence: None,
            head_sequence: self.seq,
            head_hash: self.hash,
            checkpoints_checked: self.checkpoints,
            external_checked: self.external,
            signed_through: self.signed,
            unsigned_tail: None,
            key_ids: self.key_ids.clone(),
            warning: None,
            detail: String::new(),
        };
        let Some(signed) = self.signed else {
            if self.seq > 0 {
                report.ok = false;
                report.first_bad_sequence = Some(1);
                report.detail = format!(
                    "the log has {} events but no signed checkpoint: nothing in it is proven (checkpoints deleted, \
                     or never written); {detail}",
                    self.seq
                );
            } else {
                report.detail = detail;
            }
            return report;
        };
        if signed >= self.seq {
            detail.push_str("; the head is signed");
            report.detail = detail;
            return report;
        }
        let tail = UnsignedTail { first: signed + 1, count: (self.seq - signed) as u64 };
        report.unsigned_tail = Some(tail);
        if self.opts.live_head.is_some_and(|h| signed >= h) {
            detail.push_str(&format!(
                "; events {}..={} were appended while verifying and are covered by the next checkpoint",
                tail.first, self.seq
            ));
            report.detail = detail;
            return report;
        }
        let what = format!(
            "{} events after the last signed checkpoint (at {signed}) are not covered by any signature, from \
             sequence {} to {}: they could have been cut or rewritten undetected",
            tail.count, tail.first, self.seq
        );
        if self.opts.allow_unsigned_tail {
            report.warning = Some(what.clone());
            report.detail = format!("{detail}; WARNING (allowed): {what}");
        } else {
            report.ok = false;
            report.first_bad_sequence = Some(tail.first);
            report.detail =
                format!("{what} (pass --allow-unsigned-tail for a log copied from a crashed server); {detail}");
        }
        report
    }

    fn bad(&self, first_bad: Option<i64>, detail: String) -> Box<VerifyReport> {
        Box::new(self.fail(first_bad, detail))
    }

    fn fail(&self, first_bad: Option<i64>, detail: String) -> VerifyReport {
        VerifyReport {
            ok: false,
            events_checked: self.events,
            first_bad_sequence: first_bad,
            head_sequence: self.seq,
            head_hash: self.hash,
            checkpoints_checked: self.checkpoints,
            external_checked: self.external,
            signed_through: self.signed,
            unsigned_tail: None,
            key_ids: self.key_ids.clone(),
            warning: None,
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
