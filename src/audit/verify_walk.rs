//! The strict walk of a verification: event by event from genesis, recomputing each hash
//! and link, checking stored checkpoints, key hand-overs and external (kept, witnessed)
//! checkpoints as the head reaches them, and at the end what is signed (the unsigned-tail
//! rule of `verify`). The first problem found stops it and becomes the report.
//!
//! Invariants: signatures are checked only with the key the verifier supplies and with
//! successors that key (or its successors) handed over to, from the point of the hand-over
//! on; hashes are recomputed over the stored bytes exactly (`raw_event`), so any edit, even
//! one this binary could not have written, reads as an edit.

use ed25519_dalek::VerifyingKey;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use super::AuditError;
use super::anchor::{Anchor, Statement};
use super::chain::{Checkpoint, CheckpointProblem, EventFields, GENESIS_HASH, event_hash, unhex};
use super::handover::Handover;
use super::record::Action;
use super::verify_report::{External, ExternalSource, UnsignedTail, VerifyOptions, VerifyReport, source_name};
use crate::crypto::audit_key_id;
use crate::crypto::secret::hex;

/// Errors that mean "this row holds values of the wrong type" (an edit), not "I/O failed".
pub(super) fn is_type_error(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    )
}

pub(super) struct Walk<'a> {
    /// The key in force, and the one before it when a hand-over happened at `handed_at`.
    key: VerifyingKey,
    /// Every key followed so far (the root first): each was the vault's in its time.
    keys: Vec<VerifyingKey>,
    previous: Option<(i64, VerifyingKey)>,
    key_ids: Vec<String>,
    opts: &'a VerifyOptions,
    /// The last verified event and its hash.
    pub(super) seq: i64,
    hash: [u8; 32],
    events: u64,
    checkpoints: u64,
    external: u64,
    /// The last sequence vouched for by a verified stored checkpoint (0: genesis).
    anchor: i64,
    /// The highest sequence vouched for by any verified signature, if any.
    pub(super) signed: Option<i64>,
    /// The file being walked, when it is one of several (named in every failure).
    pub(super) place: Option<String>,
    /// The live log alone, after an archive: events up to here were not verified.
    archived_through: Option<i64>,
    /// Archives walked, as `name (from..=through)`.
    pub(super) archives: Vec<String>,
    /// Kept or witnessed checkpoints below the live log's anchor (not checked here).
    pub(super) skipped_external: u64,
    /// The `audit_archived` records met in the verified chain.
    pub(super) recorded: Vec<ArchivedRecord>,
    /// The live log's `archives` rows, oldest first (read in its snapshot).
    pub(super) archive_rows: Vec<Anchor>,
}

/// What an `audit_archived` record names: `events from..=through`, the hash of event
/// `through`, the archive file's SHA-256 (hex), and the archive's signed statement
/// (`anchor`), when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ArchivedRecord {
    pub sequence: i64,
    pub from: i64,
    pub through: i64,
    pub head_hash: [u8; 32],
    pub sha256: String,
    pub signature: Option<[u8; 64]>,
}

impl ArchivedRecord {
    /// Parses the detail `archive` writes (`archive::record_detail`): `events F..=T (N
    /// events, ...; hash HEX; sha256 HEX; statement HEX) archived to NAME; ...`. Only the part
    /// before ` archived to ` is read, so the file name cannot pass for a value.
    pub(super) fn parse(sequence: i64, detail: &[u8]) -> Option<ArchivedRecord> {
        let detail = std::str::from_utf8(detail).ok()?;
        let (from, rest) = detail.strip_prefix("events ")?.split_once("..=")?;
        let (through, rest) = rest.split_once(" (")?;
        let (values, _) = rest.split_once(") archived to ")?;
        let value = |name: &str| values.split("; ").find_map(|p| p.strip_prefix(name));
        Some(ArchivedRecord {
            sequence,
            from: from.parse().ok()?,
            through: through.parse().ok()?,
            head_hash: unhex::<32>(value("hash ")?)?,
            sha256: hex(&unhex::<32>(value("sha256 ")?)?),
            signature: value("statement ").and_then(unhex::<64>),
        })
    }

    fn statement(&self) -> Statement {
        let sha256 = unhex::<32>(&self.sha256).unwrap_or_default();
        Statement { from: self.from, through: self.through, head_hash: self.head_hash, sha256 }
    }
}

impl<'a> Walk<'a> {
    pub(super) fn new(root: &VerifyingKey, opts: &'a VerifyOptions) -> Self {
        Walk {
            key: *root,
            keys: vec![*root],
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
            place: None,
            archived_through: None,
            archives: Vec::new(),
            skipped_external: 0,
            recorded: Vec::new(),
            archive_rows: Vec::new(),
        }
    }

    /// The hash of the last verified event.
    pub(super) fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Starts the walk of a live log alone at its archive anchor: events `1..=through` are
    /// archived and not verified here; the chain goes on from `hash`.
    pub(super) fn start_at_anchor(&mut self, through: i64, hash: [u8; 32]) {
        self.seq = through;
        self.hash = hash;
        self.anchor = through;
        self.archived_through = Some(through);
    }

    /// Follows a hand-over whose `signing_key_rotated` event is archived (a live log verified
    /// without its archives): only its signature by the key in force can be checked, and,
    /// at the anchor itself, the head it names.
    pub(super) fn handover_archived(&mut self, h: &Result<Handover, String>) -> Result<(), Box<VerifyReport>> {
        let h = match h {
            Ok(h) => h,
            Err(why) => return Err(self.bad(Some(self.seq), why.clone())),
        };
        let at = h.sequence;
        let new = h.verify(&self.key).map_err(|why| self.bad(Some(at), why))?;
        if at == self.seq && h.head_hash != self.hash {
            return Err(
                self.bad(Some(at), format!("hand-over at {at}: signed over a different head than the anchor's"))
            );
        }
        self.previous = Some((at, self.key));
        self.key = new;
        self.keys.push(new);
        self.key_ids.push(h.new_key_id.clone());
        Ok(())
    }

    pub(super) fn key_id(&self) -> String {
        audit_key_id(self.key.as_bytes())
    }

    fn sign_through(&mut self, at: i64) {
        self.signed = Some(self.signed.map_or(at, |s| s.max(at)));
    }

    /// Verifies the next event row against the chain so far.
    pub(super) fn event(&mut self, row: &Row<'_>) -> Result<Result<(), VerifyReport>, AuditError> {
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
        // An archive counts only with its statement, signed by the key in force here: a
        // record anyone could write (and get signed as part of a tail) proves nothing, and
        // one whose statement does not verify is forged.
        if fields.action == Action::AuditArchived.as_str().as_bytes()
            && let Some(r) = ArchivedRecord::parse(seq, fields.detail)
            && let Some(signature) = &r.signature
        {
            if !r.statement().verifies(signature, &self.key) {
                let detail = format!(
                    "event {seq}: an audit_archived record whose statement does not verify under key {} (forged)",
                    self.key_id()
                );
                return Ok(Err(self.fail(Some(seq), detail)));
            }
            self.recorded.push(r);
        }
        self.seq = seq;
        self.hash = hash;
        self.events += 1;
        Ok(Ok(()))
    }

    /// Verifies a stored checkpoint at (or, if corrupt, near) the current head.
    pub(super) fn checkpoint(&mut self, cp: &Result<Checkpoint, String>) -> Result<(), Box<VerifyReport>> {
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
    pub(super) fn handover(
        &mut self,
        h: &Result<Handover, String>,
        conn: &Connection,
    ) -> Result<(), Box<VerifyReport>> {
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
        self.keys.push(new);
        self.key_ids.push(h.new_key_id.clone());
        Ok(())
    }

    /// Verifies a kept or witnessed checkpoint at the current head.
    pub(super) fn external(&mut self, e: &External) -> Result<(), Box<VerifyReport>> {
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

    /// Requires an `audit_archived` record with a verified statement after `through` in the
    /// verified chain naming exactly `from..=through` and the hash of event `through` (and,
    /// when given, the archive file's SHA-256): an archive (or a live log's anchor) that no
    /// record names is not part of the chain. `what` names it.
    pub(super) fn require_recorded(
        &self,
        what: &str,
        (from, through): (i64, i64),
        hash: [u8; 32],
        sha256: Option<&str>,
    ) -> Result<(), Box<VerifyReport>> {
        let names =
            |r: &&ArchivedRecord| r.sequence > through && (r.from, r.through, r.head_hash) == (from, through, hash);
        let ranged: Vec<&ArchivedRecord> = self.recorded.iter().filter(names).collect();
        if ranged.is_empty() {
            return Err(self.bad(
                Some(from),
                format!(
                    "{what} is not recorded in the log: no audit_archived record with a signed statement in the \
                     verified chain names events {from}..={through} (a forged or moved anchor, or a file that is not \
                     part of this chain)"
                ),
            ));
        }
        if let Some(sha) = sha256
            && !ranged.iter().any(|r| r.sha256 == sha)
        {
            return Err(self.bad(
                Some(from),
                format!(
                    "{what} is not recorded in the log: the audit_archived record of events {from}..={through} names \
                     another SHA-256 than the file's ({sha}; replaced or rewritten)"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the live log's `archives` rows (oldest first): one unbroken range from event 1,
    /// each with a statement signed by a key of the verified key chain. So an operator's
    /// archive made on top of a forged anchor does not pass the forged range off as archived.
    pub(super) fn archive_rows(&self) -> Result<(), Box<VerifyReport>> {
        let mut next = 1;
        for a in &self.archive_rows {
            let range = format!("{}..={}", a.from, a.through);
            if a.from != next || a.through < a.from {
                return Err(self.bad(
                    Some(next),
                    format!(
                        "the archives table names events {range}, but the archives before it end at event {} \
                         (an archive row forged, moved or deleted)",
                        next - 1
                    ),
                ));
            }
            let signed = a.signature.is_some_and(|s| self.keys.iter().any(|k| a.statement().verifies(&s, k)));
            if !signed {
                return Err(self.bad(
                    Some(a.from),
                    format!(
                        "the archives table names events {range} without a statement signed by the vault's key \
                         (a forged archive row: those events were deleted, not archived)"
                    ),
                ));
            }
            next = a.through + 1;
        }
        Ok(())
    }

    /// Everything held; now what is signed.
    pub(super) fn finish(self) -> VerifyReport {
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
        if !self.archives.is_empty() {
            detail.push_str(&format!(
                "; one unbroken chain from sequence 1 through the archives {}{}",
                self.archives.join(", "),
                if self.place.is_some() { " and the live log" } else { "" }
            ));
        }
        if let Some(a) = self.archived_through {
            detail.push_str(&format!(
                "; events 1..={a} are archived and NOT verified here (give their archive files with --archive to \
                 verify them as one chain); the live chain starts after event {a}"
            ));
            if self.skipped_external > 0 {
                detail.push_str(&format!(
                    "; {} kept or witnessed checkpoints at or below {a} are not checked here",
                    self.skipped_external
                ));
            }
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
            archived_through: self.archived_through,
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

    pub(super) fn fail(&self, first_bad: Option<i64>, detail: String) -> VerifyReport {
        let detail = match &self.place {
            Some(p) => format!("in {p}: {detail}"),
            None => detail,
        };
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
            archived_through: self.archived_through,
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
