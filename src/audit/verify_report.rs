//! What a verification is given and what it reports: [`VerifyOptions`] with the
//! [`External`] checkpoints (kept, witnessed, or held in a server's memory), and
//! [`VerifyReport`] with its [`UnsignedTail`]. Plain data; `verify` is the entry point.

use super::chain::Checkpoint;

/// The outcome of [`verify`](super::verify()).
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
    /// A live log verified without its archives: events `1..=this` are archived and were not
    /// verified (the chain was checked from the anchor on).
    pub archived_through: Option<i64>,
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

/// What [`verify_with`](super::verify_with) checks beyond the file itself.
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

pub(super) fn source_name(s: &ExternalSource) -> String {
    match s {
        ExternalSource::Kept => "kept checkpoint".to_owned(),
        ExternalSource::Witness { file, line } => format!("witnessed checkpoint ({file} line {line})"),
        ExternalSource::ServerMemory => "checkpoint this server signed earlier (held in memory)".to_owned(),
    }
}
