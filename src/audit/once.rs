//! One-shot appends: one record, with a checkpoint, in one transaction of its own, for
//! commands that run beside (or instead of) a server: the CLI's KEK rotation, a backup, a
//! move between backends. The same chain rules as the writer (`writer`, `signing`).

use ed25519_dalek::SigningKey;

use super::db_backend::AuditDb;
use super::record::{AuditEvent, AuditRecord};
use super::{AuditConfig, AuditError, AuditLog, db};
use crate::store::sql::Backend;
use crate::store::{PostgresOptions, now_ms};

impl AuditLog {
    /// Appends one record synchronously, with a checkpoint, in one transaction: for one-shot
    /// commands (the CLI's KEK rotation) that run beside, or instead of, a server. Same chain
    /// rules as [`AuditLog::append`]; waits for a running server's writer at most the default
    /// append timeout, so a locked audit database fails a command in bounded time.
    pub fn append_blocking_once(
        path: &std::path::Path,
        signing_key: &SigningKey,
        rec: AuditRecord,
    ) -> Result<AuditEvent, AuditError> {
        let bound = Some(AuditConfig::default().append_timeout);
        let conn = db::open_writer(path, &signing_key.verifying_key(), bound).map_err(|e| match e {
            AuditError::Store(_) | AuditError::Sqlite(_) => AuditError::Unavailable { reason: e.to_string() },
            e => e,
        })?;
        append_once(&mut AuditDb::Sqlite(conn), signing_key, rec)
    }

    /// [`AuditLog::append_blocking_once`] on the audit log in a PostgreSQL database (under
    /// the chain's advisory lock, like every replica's writer).
    pub fn append_blocking_once_postgres(
        options: &PostgresOptions,
        signing_key: &SigningKey,
        rec: AuditRecord,
    ) -> Result<AuditEvent, AuditError> {
        let unavailable = |e: AuditError| AuditError::Unavailable { reason: e.to_string() };
        let mut conn = AuditDb::connect_postgres(options).map_err(unavailable)?;
        db::register_key(conn.sql()?, &signing_key.verifying_key()).map_err(|e| unavailable(e.into()))?;
        append_once(&mut conn, signing_key, rec)
    }
}

fn append_once(conn: &mut AuditDb, signing_key: &SigningKey, mut rec: AuditRecord) -> Result<AuditEvent, AuditError> {
    rec.bound_lengths();
    let unavailable = |e: AuditError| AuditError::Unavailable { reason: e.to_string() };
    let backend = conn.backend();
    let mut tx = conn.begin().map_err(unavailable)?;
    let time_ms = now_ms();
    // The checkpoint below signs everything up to the new head. Events no checkpoint
    // covered yet (a running server's last second, or a tail a crash left) are signed
    // late, so say so in the log, as a server does at open: a record naming the range.
    let (head, _) = db::head(tx.sql()).map_err(unavailable)?;
    let covered = db::latest_checkpoint(tx.sql()).map_err(unavailable)?.map_or(0, |c| c.sequence);
    let mut records = Vec::with_capacity(2);
    if backend == Backend::Postgres {
        // Every commit there is signed: the head must carry this key's checkpoint.
        let head = db::head(tx.sql()).map_err(unavailable)?;
        super::signing::head_is_signed(tx.sql(), head, &signing_key.verifying_key(), covered)?;
    }
    if head > covered {
        records.push(
            AuditRecord::new(super::Action::UnsignedTailSigned, super::Outcome::Ok)
                .caller(rec.caller.clone(), rec.caller_serial.clone())
                .detail(format!(
                    "events {}..={head} were covered by no signed checkpoint when a command appended to the log (a \
                     running server's newest events, or a tail a crash left); signed now with the command's record. \
                     Nothing proves what happened to them before this point",
                    covered + 1
                ))
                .request(rec.request_id.clone(), rec.peer.clone()),
        );
    }
    records.push(rec.clone());
    let mut links = Vec::with_capacity(records.len());
    let (seq, hash) = db::append_in_tx(tx.sql(), time_ms, records.iter(), &mut links).map_err(unavailable)?;
    // Never with a key the log has handed over (read inside this transaction).
    let key_id = crate::crypto::audit_key_id(&signing_key.verifying_key().to_bytes());
    super::signing::sign_checkpoint(tx.sql(), signing_key, &key_id, seq, hash).map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    let prev_hash = links.last().map_or(super::GENESIS_HASH, |l| l.1);
    Ok(AuditEvent { sequence: seq, time_ms, prev_hash, hash, record: rec })
}
