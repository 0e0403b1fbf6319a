//! The writer's signing rules: what it checks before it appends or signs, and what it
//! records when it signs late.
//!
//! - Never with a retired key: a key the newest hand-over in the file names as replaced
//!   does not sign (`audit rotate-signing-key` ran; the server must restart).
//! - Never over rows altered under it: every writer transaction first checks that the
//!   newest event this writer committed still has the hash it wrote, and that events after
//!   it (another process's appends: a CLI command beside the server) end at a checkpoint
//!   signed with this writer's key, as every command signs what it appends. So events
//!   inserted by anyone without the key are never chained onto and signed.
//! - An unsigned tail found at open (the last writer died before its next checkpoint) is
//!   signed at once, in one transaction with an `unsigned_tail_signed` record naming the
//!   range: the signature freezes the tail from then on and the record says it was late.

use super::chain::{Checkpoint, GENESIS_HASH};
use super::db_backend::AuditDb;
use super::record::{Action, AuditRecord, Outcome};
use super::{AuditError, db, handover};
use crate::store::now_ms;
use crate::store::sql::{Sql, args};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// The error of a writer whose signing key has a successor.
pub(super) fn retired(key_id: &str) -> AuditError {
    AuditError::Unavailable {
        reason: format!(
            "the audit signing key {key_id} has been handed over to a successor (audit rotate-signing-key); \
             restart the server so it signs with the new key"
        ),
    }
}

/// Checks, inside the writer's transaction, that the event this writer last wrote is still
/// in the file with the hash it wrote. Anything else means the rows were edited, deleted
/// or replaced (a recomputed chain changes that hash too): the writer then neither appends
/// nor signs, so an altered log is never signed over.
///
/// The one exception is `audit archive`, which moves events out: a missing event is
/// accepted only when the anchor covers it *and is proven* (`anchor::prove`: the archive's
/// statement, and the checkpoint at exactly the anchor naming its hash, verify under `own`,
/// this writer's key; any other key fails closed), the anchor at this writer's own event
/// has the hash it wrote, and the head is at or past the anchor. An `archives` row alone is
/// writable by anyone with the file: trusting it let a forged row hide deleted newest events
/// and have the writer chain (and sign) from an older head.
///
/// Events after this writer's own must end at a checkpoint of the current head signed with
/// `own` (see the module docs); otherwise a forged record (say, an `audit_archived` one
/// dressing a deletion up as an archive) would be chained onto and signed.
pub(super) fn still_holds(
    tx: &mut dyn Sql,
    (seq, hash): (i64, [u8; 32]),
    own: &VerifyingKey,
) -> Result<(), AuditError> {
    let head = db::head(tx)?;
    if head == (seq, hash) {
        return Ok(());
    }
    let found: Option<Vec<u8>> = if seq == 0 {
        Some(GENESIS_HASH.to_vec())
    } else {
        tx.query_opt("SELECT hash FROM events WHERE sequence = ?1", args![seq])?.map(|r| r.get(0)).transpose()?
    };
    let what = match (&found, super::anchor::anchor(tx)?) {
        (Some(f), _) if f[..] == hash[..] => match signed_after(tx, head, own)? {
            Ok(()) => return Ok(()),
            Err(why) => format!("events {}..={} after event {seq} (this writer's newest) {why}", seq + 1, head.0),
        },
        (Some(_), _) => format!("event {seq} no longer has the hash this writer committed"),
        (None, None) => format!("event {seq} is gone"),
        (None, Some(a)) => match archived_away(tx, seq, hash, &a, own)? {
            Ok(()) => match signed_after(tx, head, own)? {
                Ok(()) => return Ok(()),
                Err(why) => format!("events {}..={} after the archive anchor {why}", a.through + 1, head.0),
            },
            Err(why) => {
                format!("event {seq} is gone, and the archive anchor at {} does not account for it: {why}", a.through)
            }
        },
    };
    let reason = format!("{what}: the audit database was altered under the running server");
    tracing::error!(sequence = seq, "ALARM: {reason}; refusing to append or sign until an operator investigates");
    Err(AuditError::Altered(reason))
}

/// Whether the head `(seq, hash)`, reached by another process's appends, is covered by a
/// checkpoint signed with `own` (every command that appends signs its head in the same
/// transaction); `Err(why)` when not.
pub(super) fn signed_after(
    tx: &mut dyn Sql,
    (seq, hash): (i64, [u8; 32]),
    own: &VerifyingKey,
) -> Result<Result<(), String>, AuditError> {
    let cp = db::checkpoint_at(tx, seq)?.transpose();
    Ok(match cp {
        Ok(Some(cp)) if cp.head_hash == hash && cp.verify(own).is_ok() => Ok(()),
        Ok(Some(cp)) if cp.head_hash == hash && handed_back(tx, &cp, own)? => Ok(()),
        Ok(Some(_)) | Err(_) => Err("end at a checkpoint that does not verify under this writer's key".into()),
        Ok(None) => Err("end at no checkpoint signed with this writer's key (inserted by hand?)".into()),
    })
}

/// On PostgreSQL, where every commit is signed as it commits: the head `(seq, hash)` must be
/// covered by a checkpoint at exactly it, by this key (a checkpoint row alone is writable
/// by anyone with the database; its signature is not). `covered` is the highest stored
/// checkpoint, for the message. Refused as [`AuditError::Altered`] otherwise: nothing
/// pogo-vault writes there leaves an unsigned tail to sign late.
pub(super) fn head_is_signed(
    db: &mut dyn Sql,
    head: (i64, [u8; 32]),
    own: &VerifyingKey,
    covered: i64,
) -> Result<(), AuditError> {
    if head.0 == 0 {
        return Ok(());
    }
    match signed_after(db, head, own)? {
        Ok(()) => Ok(()),
        Err(why) => Err(AuditError::Altered(format!(
            "events {}..={} of the audit log on PostgreSQL {why}, and every commit there is signed: they were \
             written by something other than pogo-vault; refusing to sign them",
            covered.min(head.0 - 1) + 1,
            head.0
        ))),
    }
}

/// A rotation that failed after its hand-over and was handed back (`audit rotate-signing-key`,
/// see `rotate`): `own` handed over to a successor, the successor signed the checkpoint
/// `cp` at the head and, at that head, handed back to `own`. Both hand-overs verify (the
/// first under `own`, the second under the successor), so the successor's checkpoint is as
/// good as this writer's own.
fn handed_back(tx: &mut dyn Sql, cp: &Checkpoint, own: &VerifyingKey) -> Result<bool, AuditError> {
    let own_id = crate::crypto::audit_key_id(own.as_bytes());
    let handovers: Vec<_> = handover::all(tx)?.into_iter().filter_map(Result::ok).collect();
    let Some(back) = handovers.iter().find(|h| h.sequence == cp.sequence && h.new_key_id == own_id) else {
        return Ok(false);
    };
    let successor = handovers
        .iter()
        .filter(|h| h.old_key_id == own_id && h.new_key_id == back.old_key_id && h.sequence < back.sequence)
        .find_map(|h| h.verify(own).ok());
    Ok(successor
        .is_some_and(|k| back.verify(&k).is_ok_and(|to| to.as_bytes() == own.as_bytes()) && cp.verify(&k).is_ok()))
}

/// Whether the missing event `seq` (hash `hash`, written by this writer) was moved out by
/// `audit archive` under the anchor `a` (see [`still_holds`]); `Err(why)` when not.
fn archived_away(
    tx: &mut dyn Sql,
    seq: i64,
    hash: [u8; 32],
    a: &super::anchor::Anchor,
    own: &VerifyingKey,
) -> Result<Result<(), String>, AuditError> {
    if a.through < seq {
        return Ok(Err(format!("it ends below event {seq}")));
    }
    if a.through == seq && a.hash != hash {
        return Ok(Err("it names another hash for this writer's newest event".into()));
    }
    if let Err(why) = super::anchor::prove(tx, a, std::slice::from_ref(own))? {
        return Ok(Err(why));
    }
    // Never chain from a head below what this writer wrote (or below the anchor).
    let (head, _) = db::head(tx)?;
    if head < a.through {
        return Ok(Err(format!("the newest event left is {head}, below the anchor")));
    }
    Ok(Ok(()))
}

/// Signs and stores a checkpoint of `(seq, hash)` in `tx`, unless the key `key_id` has been
/// handed over (read inside the transaction: a rotation by the CLI is seen at once).
pub(super) fn sign_checkpoint(
    tx: &mut dyn Sql,
    key: &SigningKey,
    key_id: &str,
    seq: i64,
    hash: [u8; 32],
) -> Result<Checkpoint, AuditError> {
    if handover::is_retired(tx, key_id)? {
        return Err(retired(key_id));
    }
    db::put_checkpoint(tx, key, seq, hash)
}

/// Signs the events no checkpoint covers, in one transaction with the record that says so.
pub(super) fn sign_unsigned_tail(conn: &mut AuditDb, key: &SigningKey) -> Result<Checkpoint, AuditError> {
    let mut tx = conn.begin()?;
    let (head, _) = db::head(tx.sql())?;
    let covered = db::latest_checkpoint(tx.sql())?.map_or(0, |c| c.sequence);
    let rec = AuditRecord::new(Action::UnsignedTailSigned, Outcome::Ok)
        .caller("pogo-vault-server", "")
        .detail(format!(
            "events {}..={head} were covered by no signed checkpoint when the audit log was opened (the last \
             writer stopped without its final checkpoint: a crash or kill); signed now, with this record, so they \
             are frozen from here on. Nothing proves what happened to them before this point",
            covered + 1
        ))
        .request(String::new(), "local");
    let mut links = Vec::with_capacity(1);
    let (seq, hash) = db::append_in_tx(tx.sql(), now_ms(), std::iter::once(&rec), &mut links)?;
    let cp = db::put_checkpoint(tx.sql(), key, seq, hash)?;
    tx.commit()?;
    tracing::warn!(from = covered + 1, to = head, "signed an unsigned audit tail left by the last writer");
    Ok(cp)
}

/// The error of opening a log that has handed this vault's key over: the vault database
/// still holds a key the log retired (a rotation that did not complete, see `rotate`), or
/// the log is another vault's.
pub(super) fn retired_at_open(key_id: &str) -> AuditError {
    AuditError::Unavailable {
        reason: format!(
            "the audit log has handed signing key {key_id} over to a successor, but this vault still holds \
             {key_id}: a signing-key rotation did not complete in the vault database (or this is another vault's \
             audit log); restore the vault and audit databases from one backup"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::anchor::Statement;
    use crate::audit::record::{Action, AuditRecord, Outcome};

    /// A log of 10 events, archived by hand through 5 with the checkpoint at 5 and the
    /// archive's statement signed by `cp_key` (no statement when `None`), plus 5 more events
    /// after the anchor and a checkpoint of them by `own`; returns the file and this
    /// writer's `written` (event 5).
    fn archived_at_5(
        dir: &tempfile::TempDir,
        own: &SigningKey,
        cp_key: &SigningKey,
        statement_key: Option<&SigningKey>,
    ) -> (rusqlite::Connection, (i64, [u8; 32])) {
        let mut conn = db::open_writer(&dir.path().join("audit.db"), &own.verifying_key(), None).unwrap();
        let rec = AuditRecord::new(Action::TokenMinted, Outcome::Ok).caller("c", "").request("r", "local");
        let tx = conn.transaction().unwrap();
        let mut links = Vec::new();
        let written = db::append_in_tx(&mut &*tx, 1, std::iter::repeat_n(&rec, 5), &mut links).unwrap();
        db::put_checkpoint(&mut &*tx, cp_key, written.0, written.1).unwrap();
        let head = db::append_in_tx(&mut &*tx, 2, std::iter::repeat_n(&rec, 5), &mut links).unwrap();
        db::put_checkpoint(&mut &*tx, own, head.0, head.1).unwrap();
        let statement = Statement { from: 1, through: 5, head_hash: written.1, sha256: [0; 32] };
        (*tx)
            .execute(
                "INSERT INTO archives (through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms) \
             VALUES (5, 1, ?1, zeroblob(32), 'a.db', 0)",
                [&written.1[..]],
            )
            .unwrap();
        if let Some(k) = statement_key {
            (*tx).execute("INSERT INTO archive_statements VALUES (5, ?1)", [&statement.sign(k)[..]]).unwrap();
        }
        (*tx).execute("DELETE FROM events WHERE sequence <= 5", []).unwrap();
        tx.commit().unwrap();
        (conn, written)
    }

    #[test]
    fn an_archived_written_event_is_accepted_only_under_an_anchor_signed_by_the_writers_key() {
        let own = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, written) = archived_at_5(&dir, &own, &own, Some(&own));
        let tx = conn.transaction().unwrap();
        assert!(still_holds(&mut &*tx, written, &own.verifying_key()).is_ok());
        // The anchor at this writer's own event, with another hash: altered.
        assert!(still_holds(&mut &*tx, (5, [9; 32]), &own.verifying_key()).is_err());
        // Events after the anchor deleted: the head fell below it.
        (*tx).execute("DELETE FROM events", []).unwrap();
        assert!(still_holds(&mut &*tx, written, &own.verifying_key()).is_err());
        drop(tx);

        let dir = tempfile::tempdir().unwrap();
        let (mut conn, written) = archived_at_5(&dir, &own, &other, Some(&own));
        let tx = conn.transaction().unwrap();
        let e = still_holds(&mut &*tx, written, &own.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        drop(tx);

        // Regression: a real checkpoint at the anchor, but no statement of `audit archive`
        // (forged row), or one by another key.
        for statement_key in [None, Some(&other)] {
            let dir = tempfile::tempdir().unwrap();
            let (mut conn, written) = archived_at_5(&dir, &own, &own, statement_key);
            let tx = conn.transaction().unwrap();
            let e = still_holds(&mut &*tx, written, &own.verifying_key()).unwrap_err();
            assert!(e.to_string().contains("statement"), "{e}");
        }
    }

    /// Regression (review): a rotation handed back (the vault database failed to store the new
    /// key) left the running writer's next commit refusing the successor's checkpoint at the
    /// head as tampering; it is accepted, and only with both hand-overs in place.
    #[test]
    fn a_rotation_handed_back_is_not_tampering() {
        let own = SigningKey::from_bytes(&[1; 32]);
        let new = SigningKey::from_bytes(&[3; 32]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let mut conn = db::open_writer(&path, &own.verifying_key(), None).unwrap();
        let rec = AuditRecord::new(Action::TokenMinted, Outcome::Ok).caller("c", "").request("r", "local");
        let tx = conn.transaction().unwrap();
        let written = db::append_in_tx(&mut &*tx, 1, std::iter::repeat_n(&rec, 3), &mut Vec::new()).unwrap();
        db::put_checkpoint(&mut &*tx, &own, written.0, written.1).unwrap();
        tx.commit().unwrap();
        crate::audit::hand_over_blocking(&path, &own, &new.verifying_key(), "op", "r1").unwrap();
        crate::audit::hand_over_blocking(&path, &new, &own.verifying_key(), "op", "r2").unwrap();
        let tx = conn.transaction().unwrap();
        assert!(still_holds(&mut &*tx, written, &own.verifying_key()).is_ok());
        // Without the first hand-over, the successor's checkpoint proves nothing.
        (*tx).execute("DELETE FROM signing_handovers WHERE sequence = ?1", [written.0 + 1]).unwrap();
        assert!(still_holds(&mut &*tx, written, &own.verifying_key()).is_err());
    }

    /// Regression: events appended by hand after the writer's newest were chained onto and
    /// signed by the next commit (a forged `audit_archived` record among them, say).
    #[test]
    fn events_after_the_writers_own_count_only_under_a_checkpoint_by_its_key() {
        let own = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let dir = tempfile::tempdir().unwrap();
        let mut conn = db::open_writer(&dir.path().join("audit.db"), &own.verifying_key(), None).unwrap();
        let rec = AuditRecord::new(Action::TokenMinted, Outcome::Ok).caller("c", "").request("r", "local");
        let mut links = Vec::new();
        let tx = conn.transaction().unwrap();
        let written = db::append_in_tx(&mut &*tx, 1, std::iter::repeat_n(&rec, 3), &mut links).unwrap();
        assert!(still_holds(&mut &*tx, written, &own.verifying_key()).is_ok());
        // Appended by someone else, unsigned: refused.
        let head = db::append_in_tx(&mut &*tx, 2, std::iter::repeat_n(&rec, 2), &mut links).unwrap();
        let e = still_holds(&mut &*tx, written, &own.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("events 4..=5 after event 3") && e.to_string().contains("no checkpoint"), "{e}");
        // Signed by another key: refused.
        db::put_checkpoint(&mut &*tx, &other, head.0, head.1).unwrap();
        let e = still_holds(&mut &*tx, written, &own.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        (*tx).execute("DELETE FROM checkpoints", []).unwrap();
        // Signed with the writer's key (a CLI command beside the server): accepted.
        db::put_checkpoint(&mut &*tx, &own, head.0, head.1).unwrap();
        assert!(still_holds(&mut &*tx, written, &own.verifying_key()).is_ok());
        // Into an empty log too.
        let dir = tempfile::tempdir().unwrap();
        let mut conn = db::open_writer(&dir.path().join("audit.db"), &own.verifying_key(), None).unwrap();
        let tx = conn.transaction().unwrap();
        db::append_in_tx(&mut &*tx, 1, std::iter::once(&rec), &mut links).unwrap();
        assert!(still_holds(&mut &*tx, (0, GENESIS_HASH), &own.verifying_key()).is_err());
    }
}
