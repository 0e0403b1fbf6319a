//! [`SinkStatus`]: one audit sink's figures (a leaf: the writer's stats and the sinks both
//! name it).

/// One sink's figures, for metrics and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// The configured name (the metric label).
    pub name: String,
    pub kind: &'static str,
    /// The newest event sequence the destination certainly has (the saved cursor).
    pub delivered_sequence: i64,
    /// The newest checkpoint sequence the destination certainly has.
    pub delivered_checkpoint: i64,
    /// Events committed by this process that the destination does not certainly have yet.
    pub lag: u64,
    /// Items (events and checkpoints) sent, repeats included.
    pub sent_items: u64,
    /// Failed attempts (each is retried).
    pub failures: u64,
    /// Events archived before this sink delivered them (they are in the archive file), and
    /// records a collector refused for good (they stay in the audit log).
    pub skipped: u64,
    /// The last attempt failed.
    pub failing: bool,
    /// Why the last attempt failed (an I/O or TLS reason; no secret).
    pub last_error: Option<String>,
    /// Another replica holds this sink's lease and delivers it (PostgreSQL); the cursor
    /// shown is the shared one.
    pub standby: bool,
}
