//! The audit log: events, the hash chain and signed checkpoints, the group-commit writer,
//! queries, live watching, offline verification and export (DESIGN.md invariant 5).
//!
//! The log lives in its own SQLite file (the *audit database*), apart from the vault
//! database, so audit group commits never contend with key writes. Its schema is
//! `migrations/audit/`; connections come from [`crate::store::open_connection`].
//!
//! # Architecture invariants
//!
//! - **Durable before acknowledged.** [`AuditLog::append`] returns `Ok` only after the
//!   transaction holding the record committed with `synchronous=FULL`. A caller that gets an
//!   error must fail its request (fail closed); the error arrives within
//!   [`AuditConfig::append_timeout`], never later. (An append that timed out may still have
//!   been recorded; the converse never happens.)
//! - **One chain, no forks, no gaps.** Every batch is one `BEGIN IMMEDIATE` transaction that
//!   reads the head (sequence and hash) *inside* the transaction, so a failed batch leaves no
//!   hole and a second process (the CLI logging a KEK rotation) appending to the same file
//!   serialises on SQLite's write lock and continues the same chain.
//! - **Verification needs only the public key** and opens the file read-only. The
//!   `signing_keys` and `signing_handovers` tables are never trusted by themselves: a
//!   hand-over counts only when the key in force signed it.
//! - **A writer never signs over rows altered under it**, and signs an unsigned tail it
//!   finds at open at once, on the record (see `writer`).
//! - **Witnesses never hold up the writer**: checkpoints are queued for them, bounded.
//! - **Nothing secret is recorded**: records carry identities, names, statuses and keyed
//!   fingerprints; [`AuditRecord::detail`] is written by our own code and never holds a secret.
//! - Readers ([`list`], [`verify`], [`export`], [`AuditWatch`]) use their own read-only
//!   connections, never the writer's.
//! - **No append waits longer than [`AuditConfig::append_timeout`]**: a watchdog thread fails
//!   any batch the writer has not committed by then (a writer stuck in `fsync`, or dead).
//! - The tenant index is a derived file beside the database, filled in the background and
//!   never trusted beyond a hash-checked watermark (see `tenant_index`).
//!
//! # Canonical encodings (version 1)
//!
//! Integers are 8-byte big-endian two's complement (`i64be`); text is its UTF-8 bytes
//! prefixed by their length as a 4-byte big-endian unsigned integer (`str`); an optional
//! value is the byte `0x00` when absent, else `0x01` followed by the value (`opt`).
//!
//! An event's hash is `SHA-256(prev_hash ‖ E)`, where `prev_hash` is the previous event's
//! hash (32 zero bytes for event 1) and
//!
//! ```text
//! E = "pogo-vault audit v1 event" 0x00
//!     i64be(sequence) i64be(time_ms)
//!     str(caller) str(caller_serial) str(action) opt(str(tenant_id)) opt(i64be(key_version))
//!     str(outcome) opt(i64be(upstream_status)) opt(str(token_fingerprint))
//!     str(detail) str(request_id) str(peer)
//! ```
//!
//! with `action` and `outcome` as their stable snake_case names (`token_minted`, `ok`).
//!
//! A checkpoint's Ed25519 signature (RFC 8032, verified strictly) is over
//!
//! ```text
//! C = "pogo-vault audit v1 checkpoint" 0x00
//!     i64be(sequence) head_hash(32 bytes) i64be(time_ms) str(key_id)
//! ```
//!
//! where `key_id` is [`crate::vault::audit_key_id`] of the public key. The domain prefixes
//! keep an event encoding from ever being taken for a checkpoint message and vice versa.
//!
//! # What verification proves
//!
//! Editing a row breaks its hash; deleting, inserting or reordering rows breaks the
//! sequence or the `prev_hash` links; recomputing the chain after an edit breaks the head
//! hash of every later signed checkpoint. Verification is strict ([`verify`]): events no
//! verified signature covers (an unsigned tail) fail it, so rewriting or cutting the tail
//! and deleting its checkpoints shows, unless the cut lands exactly on a checkpoint. That
//! case is visible only against a checkpoint kept outside the vault (`verify --checkpoint`)
//! or witnessed outside it (`witness`, `verify --witness`).
//!
//! Signing keys change only by a hand-over the old key signs over the head of the
//! `signing_key_rotated` event ([`Handover`], `handover`); verification follows them from
//! the key the auditor holds.

use std::time::Duration;

use crate::store::StoreError;

mod chain;
mod db;
mod export;
mod handover;
mod query;
mod record;
mod rotate;
mod signing;
mod tenant_index;
mod verify;
mod watch;
mod witness;
mod writer;

pub use chain::{
    CHECKPOINT_DOMAIN, Checkpoint, CheckpointProblem, EVENT_DOMAIN, GENESIS_HASH, PUBLIC_KEY_PREFIX,
    canonical_encoding, encode_public_key, hash_record, parse_public_key,
};
pub use db::{AUDIT_MIGRATIONS, open_reader};
pub use export::{ExportFormat, export};
pub use handover::{HANDOVER_DOMAIN, Handover};
pub use query::{AuditFilter, events_from, head, latest_checkpoint, list};
pub use record::{Action, AuditEvent, AuditRecord, MAX_FIELD_BYTES, Outcome, TRUNCATION_MARK, UnknownName};
pub use rotate::hand_over_blocking;
pub use tenant_index::tenant_index_path;
pub use verify::{
    External, ExternalSource, UnsignedTail, VerifyOptions, VerifyReport, read_witness_file, verify, verify_conn,
    verify_conn_with, verify_with,
};
pub use watch::AuditWatch;
pub use witness::{FileWitnessConfig, SyslogWitnessConfig, WitnessConfig, WitnessStatus};
pub use writer::{AuditLog, AuditStats, AuditStatsSnapshot, Receipt};

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record could not be made durable in time (commit failed, database locked, disk
    /// full, queue full): the request that needed it must fail with `UNAVAILABLE`.
    #[error("the audit log is unavailable: {reason}; the request was not carried out, retry shortly")]
    Unavailable { reason: String },
    /// The writer was shut down (or its thread could not be started).
    #[error("the audit log is closed")]
    Closed,
    /// No audit database at the path.
    #[error("no audit database at {path}")]
    Missing { path: String },
    /// The file exists but is not a pogo-vault audit database.
    #[error("{path} is not a pogo-vault audit database")]
    NotAuditLog { path: String },
    /// A stored row cannot be read back as this binary wrote it (edited, corrupt, or written
    /// by a newer pogo-vault).
    #[error("audit database is corrupt: {0}")]
    Corrupt(String),
    /// A checkpoint file or public key given to us is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// Opening or migrating the audit database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SQLite failed while reading.
    #[error("audit database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Writing an export failed.
    #[error("writing the export failed: {0}")]
    Io(#[from] std::io::Error),
    /// Rows this process wrote are no longer as it wrote them: the file was edited under a
    /// running writer, which then refuses to append or sign (fail closed, alarmed).
    #[error("ALARM: {0}")]
    Altered(String),
}

/// Tuning of the writer. The defaults suit a server; tests and benches change them.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The most records committed in one transaction.
    pub max_batch: usize,
    /// Records waiting for the writer, beyond which an append fails at once (`Unavailable`).
    pub queue_capacity: usize,
    /// An append that is not durable within this time fails with [`AuditError::Unavailable`].
    pub append_timeout: Duration,
    /// While events flow, a signed checkpoint is written at least this often.
    pub checkpoint_interval: Duration,
    /// How long the writer waits for SQLite's write lock per attempt. Short, so a stuck lock
    /// fails the waiting appends well within `append_timeout`; the writer retries.
    pub busy_timeout: Duration,
    /// The longest pause between attempts while commits fail.
    pub max_backoff: Duration,
    /// Live events buffered per subscriber before a slow one lags (and re-reads the file).
    pub broadcast_capacity: usize,
    /// The longest the background tenant index waits before indexing new events (sooner
    /// once 65,536 are waiting). Tenant queries scan the events it has not reached.
    pub tenant_index_interval: Duration,
    /// Where every committed checkpoint is also delivered (`[audit.witness]`).
    pub witness: WitnessConfig,
    /// `WatchAuditEvents` streams open at once for one caller identity, beyond which a new
    /// one is refused (`RESOURCE_EXHAUSTED`).
    pub max_watch_streams_per_caller: usize,
    /// `WatchAuditEvents` streams open at once in total.
    pub max_watch_streams: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue_capacity: 16 * 1024,
            append_timeout: Duration::from_secs(2),
            checkpoint_interval: Duration::from_secs(1),
            busy_timeout: Duration::from_millis(250),
            max_backoff: Duration::from_millis(500),
            broadcast_capacity: 4096,
            tenant_index_interval: Duration::from_secs(2),
            witness: WitnessConfig::default(),
            max_watch_streams_per_caller: 4,
            max_watch_streams: 64,
        }
    }
}

/// Unix milliseconds as RFC 3339 in UTC (`2024-05-01T12:00:00.123Z`).
pub(crate) fn format_time_ms(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// RFC 3339 to Unix milliseconds (sub-millisecond digits dropped).
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_at_millisecond_precision() {
        for ms in [0, 1_700_000_000_123, 1_700_000_000_000, -1] {
            assert_eq!(parse_time(&format_time_ms(ms)), Some(ms), "{ms}");
        }
        assert_eq!(format_time_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time("2023-11-14T23:13:20.123+01:00"), Some(1_700_000_000_123));
        assert_eq!(parse_time("yesterday"), None);
    }
}
