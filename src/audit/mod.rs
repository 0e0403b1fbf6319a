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
//! - **A writer never signs over rows altered under it**, nor chains onto events appended
//!   after its own unless a checkpoint by its key covers them, and signs an unsigned tail it
//!   finds at open at once, on the record (see `writer` and `signing`). A command appending
//!   beside it signs the unsigned tail it finds the same way, on the record
//!   (`unsigned_tail_signed`): what happened to such a tail before is unproven, and says so.
//! - **An archive counts only with its statement** signed by the audit key (`anchor`): an
//!   `archives` row or an `audit_archived` record alone is writable by anyone with the file.
//! - **Witnesses never hold up the writer**: checkpoints are queued for them, bounded.
//!   **Sinks never hold it up either**: they read the committed log on their own threads.
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
//! where `key_id` is [`crate::crypto::audit_key_id`] of the public key. An archive's
//! statement (`audit archive`, see `anchor`) is signed over
//!
//! ```text
//! A = "pogo-vault audit v1 archive" 0x00
//!     i64be(from) i64be(through) head_hash(32 bytes) sha256(32 bytes)
//! ```
//!
//! The domain prefixes keep an event encoding from ever being taken for a checkpoint,
//! hand-over or archive message and vice versa.
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
//!
//! # Files, bottom up
//!
//! Each file uses only files named before it; this one only re-exports, and no file
//! imports it.
//!
//! - `error`, `timestamp`, `record`, `event_json` (an event's JSON form), `anchor` (where
//!   the live chain starts after an archive): leaves.
//! - `chain` (the hash chain, canonical encodings, checkpoints), `handover` (signed
//!   hand-overs between signing keys).
//! - `syslog` (the syslog connection and framing), `witness/` (delivering checkpoints to
//!   witnesses), `sinks/` (pushing every event and checkpoint from the durable log to the
//!   SIEM, each sink with a cursor in the vault database), `config` ([`AuditConfig`]).
//! - `tenant_index` (reading the index file, a leaf), `db` (the file: opening it, rows,
//!   statements, on either backend), `db_backend` (the writer's connection and group-commit
//!   transaction: a SQLite file, or PostgreSQL under the advisory lock of the global chain).
//! - `signing` (what the writer checks before it signs), `rotate` (signing-key rotation),
//!   `tenant_indexer` (the thread that fills the index).
//! - The writer: `stats`, `handoff` (batches, completion cells, the watchdog), `writer`
//!   (the thread), `log` ([`AuditLog`], the handle), `once` (one-shot appends of commands).
//! - Readers: `verify_report`, `verify_walk`, `verify` (also archives plus the live log as
//!   one chain); `query`; `watch`, `export`.
//! - Moving between backends: `transfer` (copy, digest, and verifying a PostgreSQL log
//!   through a snapshot copied into a SQLite file).
//! - Retention: `archive_file` (the archive's format), `archive` (`audit archive`: cut,
//!   write, record, prune, shrink).

mod anchor;
mod archive;
mod archive_file;
mod chain;
mod config;
mod db;
mod db_backend;
mod error;
mod event_json;
mod export;
mod handoff;
mod handover;
mod log;
mod once;
mod query;
mod record;
mod rotate;
mod signing;
mod sinks;
mod stats;
mod syslog;
mod tenant_index;
mod tenant_indexer;
mod timestamp;
mod transfer;
mod verify;
mod verify_report;
mod verify_walk;
mod watch;
mod witness;
mod writer;

pub use archive::{ArchiveReport, Cut, Shrink, archive_blocking, log_bytes};
pub use archive_file::ArchiveMeta;
pub use chain::{
    CHECKPOINT_DOMAIN, Checkpoint, CheckpointProblem, EVENT_DOMAIN, GENESIS_HASH, PUBLIC_KEY_PREFIX,
    canonical_encoding, encode_public_key, hash_record, parse_public_key,
};
pub use config::AuditConfig;
pub use db::{AUDIT_MIGRATIONS, open_reader};
pub use error::AuditError;
pub use export::{ExportFormat, export};
pub use handoff::Receipt;
pub use handover::{HANDOVER_DOMAIN, Handover};
pub use log::{AuditLocation, AuditLog};
pub use query::{AuditFilter, events_from, head, latest_checkpoint, list};
pub use record::{Action, AuditEvent, AuditRecord, MAX_FIELD_BYTES, Outcome, TRUNCATION_MARK, UnknownName};
pub use rotate::hand_over_blocking;
pub use sinks::{SinkConfig, SinkKind, SinkStart, SinkStatus, validate_sinks};
pub use stats::{AuditStats, AuditStatsSnapshot};
pub use tenant_index::tenant_index_path;
pub(crate) use timestamp::{format_time_ms, parse_time};
pub use transfer::{
    chain_root_at, copy_audit, copy_file_into, digest_audit, prepare_postgres, verify_at, verify_postgres,
};
pub use verify::{read_witness_file, verify, verify_chain, verify_conn, verify_conn_with, verify_with};
pub use verify_report::{External, ExternalSource, UnsignedTail, VerifyOptions, VerifyReport};
pub use watch::AuditWatch;
pub use witness::{FileWitnessConfig, SyslogWitnessConfig, WitnessConfig, WitnessStatus};
