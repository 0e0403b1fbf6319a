//! [`AuditConfig`]: the tuning of the writer, the tenant index, the witnesses and the watch
//! streams. Plain data; the defaults suit a server.

use std::time::Duration;

use super::sinks::SinkConfig;
use super::witness::WitnessConfig;

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
    /// Where every event and checkpoint is also pushed (`[[audit.sink]]`).
    pub sinks: Vec<SinkConfig>,
    /// The vault database, where each sink keeps its cursor (required with `sinks`).
    pub sink_cursors: Option<std::path::PathBuf>,
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
            sinks: Vec::new(),
            sink_cursors: None,
            max_watch_streams_per_caller: 4,
            max_watch_streams: 64,
        }
    }
}
