//! Durable audit records per second through `AuditLog::append`, with many concurrent
//! appenders, at several group-commit ceilings (`max_batch`), on a temporary file on disk
//! (`synchronous=FULL`: every acknowledged record was fsynced).
//!
//! Run: `cargo bench --bench audit_writer` (5 s per row). Smoke mode: `AUDIT_BENCH_SECS=1`.
//! The file goes in the system temporary directory, or in `AUDIT_BENCH_DIR` (put it on the
//! disk you care about: a tmpfs makes fsync free and the figures meaningless).

// A benchmark binary: a failed setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pogo_vault::audit::{self, Action, AuditConfig, AuditLog, AuditRecord, Outcome};

/// (max_batch, concurrent appenders): enough appenders to fill each ceiling twice over.
const ROWS: &[(usize, usize)] = &[(1, 64), (64, 256), (1024, 2048), (4096, 8192)];

struct Row {
    max_batch: usize,
    appenders: usize,
    records: u64,
    failed: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn record(task: usize, i: u64) -> AuditRecord {
    // The shape of a real token-minted record.
    AuditRecord::new(Action::TokenMinted, Outcome::Ok)
        .caller(format!("spiffe://example.org/ns/billing/sa/worker-{}", task % 16), "4f2a9c01d3e5b7")
        .tenant(format!("tenant-{:04}", task % 1000))
        .key_version(3)
        .upstream_status(200)
        .token_fingerprint("a1b2c3d4e5f6:00112233445566778899aabbccddeeff")
        .detail("cache hit")
        .request(format!("req-{task}-{i}"), "10.1.2.3:51234")
}

async fn run(path: &Path, max_batch: usize, appenders: usize, secs: f64) -> Row {
    let cfg = AuditConfig {
        max_batch,
        queue_capacity: appenders.max(max_batch) * 2,
        // Batch ceiling 1 with 64 appenders queues for a while: measure, do not fail.
        append_timeout: Duration::from_secs(120),
        ..AuditConfig::default()
    };
    let log = AuditLog::open(path, SigningKey::from_bytes(&[1; 32]), cfg).unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let log = log.clone();
            tokio::spawn(async move {
                let (mut latencies, mut failed, mut i) = (Vec::new(), 0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match log.append(record(task, i)).await {
                        Ok(_) => latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                        Err(_) => failed += 1,
                    }
                    i += 1;
                }
                (latencies, failed)
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    let seconds = start.elapsed().as_secs_f64();
    log.shutdown().await;
    all.sort_unstable();
    let pct = |p: usize| all.get(all.len().saturating_sub(1) * p / 100).map_or(0.0, |us| f64::from(*us) / 1000.0);
    Row { max_batch, appenders, records: all.len() as u64, failed, seconds, p50_ms: pct(50), p99_ms: pct(99) }
}

fn main() {
    let secs: f64 = std::env::var("AUDIT_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let base: PathBuf = std::env::var_os("AUDIT_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(&base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    println!("$ AUDIT_BENCH_SECS={secs} cargo bench --bench audit_writer");
    println!(
        "audit file in {} ({} CPUs), synchronous=FULL, {secs} s per row\n",
        base.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>9} {:>9} {:>10} {:>8} {:>11} {:>9} {:>9} {:>7}",
        "max_batch", "appenders", "records", "seconds", "records/s", "p50 ms", "p99 ms", "failed"
    );
    let mut largest = None;
    for &(max_batch, appenders) in ROWS {
        let path = dir.path().join(format!("audit-{max_batch}.db"));
        let r = rt.block_on(run(&path, max_batch, appenders, secs));
        println!(
            "{:>9} {:>9} {:>10} {:>8.2} {:>11.0} {:>9.2} {:>9.2} {:>7}",
            r.max_batch,
            r.appenders,
            r.records,
            r.seconds,
            r.records as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.failed
        );
        largest = Some(path);
    }
    if let Some(path) = largest {
        let t = Instant::now();
        let report = audit::verify(&path, &SigningKey::from_bytes(&[1; 32]).verifying_key(), None).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "\nverify (last file): ok={} {} events, {} checkpoints in {s:.2} s ({:.0} events/s)",
            report.ok,
            report.events_checked,
            report.checkpoints_checked,
            report.events_checked as f64 / s
        );
    }
}
