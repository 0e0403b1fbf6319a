//! The writer's counters ([`AuditStats`]) and their scrape for metrics
//! ([`AuditStatsSnapshot`]): queue depth, records, commit failures and latency, health,
//! checkpoint age, the tenant index's lag and the witnesses' figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use super::sinks::status::SinkStatus;
use super::witness::WitnessStatus;

/// Counters the writer thread keeps for metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub(super) records: AtomicU64,
    pub(super) commit_failures: AtomicU64,
    /// Unawaited records (repeat disclosures) dropped because no commit took them within
    /// the append bound: their first disclosures are on record, their own records are not.
    pub(super) unawaited_lost: AtomicU64,
    pub(super) queued: AtomicU64,
    /// The head this process last committed.
    pub(super) head: AtomicI64,
    pub(super) last_checkpoint_ms: AtomicI64,
    pub(super) latency: crate::metrics::Histogram,
}

/// A scrape of [`AuditStats`] plus the queue and health.
#[derive(Debug, Clone)]
pub struct AuditStatsSnapshot {
    pub queue_depth: u64,
    pub records: u64,
    pub commit_failures: u64,
    /// Unawaited records (repeats) dropped after the append bound (see `AuditStats`).
    pub unawaited_lost: u64,
    pub commit_latency: Arc<AuditStats>,
    pub healthy: bool,
    pub last_checkpoint_age_secs: f64,
    /// Events after the tenant index's watermark (tenant queries scan these).
    pub tenant_index_lag: u64,
    /// Each configured witness's delivery figures.
    pub witnesses: Vec<WitnessStatus>,
    /// Each configured audit sink's figures.
    pub sinks: Vec<SinkStatus>,
    /// The audit database's size on disk: the file plus its WAL (what retention bounds).
    pub log_bytes: u64,
    /// The oldest event the audit database holds (events before it are archived; 0: none).
    pub oldest_sequence: i64,
}

impl AuditStats {
    pub fn latency(&self) -> &crate::metrics::Histogram {
        &self.latency
    }
}
