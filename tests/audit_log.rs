#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The audit log against real audit database files: tampering by SQL on the file is found
//! and named by `verify`, appends fail closed (and recover) while another connection holds
//! the write lock, concurrent appends get one gap-free chain, and `append` means durable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use pogo_vault::audit::{
    self, Action, AuditConfig, AuditError, AuditFilter, AuditLog, AuditRecord, Checkpoint, ExportFormat, Outcome,
    VerifyOptions,
};
use rusqlite::{Connection, OpenFlags};

/// Generous bound for anything that should happen "soon"; tests never assert tighter timing.
const SOON: Duration = Duration::from_secs(10);

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// Checkpoints only where a test asks (first batch, `checkpoint_now`, shutdown), so their
/// positions are deterministic.
fn manual_checkpoints() -> AuditConfig {
    AuditConfig {
        checkpoint_interval: Duration::from_secs(3600),
        tenant_index_interval: Duration::from_millis(20),
        ..AuditConfig::default()
    }
}

fn rec(i: usize) -> AuditRecord {
    let (action, outcome) = match i % 4 {
        0 => (Action::TokenMinted, Outcome::Ok),
        1 => (Action::TokenDenied, Outcome::Denied),
        2 => (Action::KeyRotated, Outcome::Ok),
        _ => (Action::TenantRead, Outcome::Error),
    };
    let mut r = AuditRecord::new(action, outcome)
        .caller(format!("spiffe://example.org/svc-{}", i % 3), "0a1b2c")
        .tenant(format!("tenant-{}", i % 5))
        .detail(format!("event number {i}"))
        .request(format!("req-{i}"), "127.0.0.1:40000");
    if action == Action::TokenMinted {
        r = r.key_version(1).upstream_status(200).token_fingerprint("a1b2c3d4e5f6:00112233445566778899aabbccddeeff");
    }
    r
}

struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    Scratch { _dir: dir, path }
}

/// A log with events 1..=n, a checkpoint at `checkpoint_at` (and at 1 and n), shut down.
async fn closed_log(path: &Path, n: usize, checkpoint_at: Option<usize>) -> Vec<Checkpoint> {
    let log = AuditLog::open(path, key(), manual_checkpoints()).unwrap();
    let mut cps = Vec::new();
    for i in 1..=n {
        log.append(rec(i)).await.unwrap();
        if checkpoint_at == Some(i) {
            cps.push(log.checkpoint_now().await.unwrap());
        }
    }
    log.shutdown().await;
    cps
}

fn sql(path: &Path, statements: &str) {
    Connection::open(path).unwrap().execute_batch(statements).unwrap();
}

fn verify(path: &Path, kept: Option<&Checkpoint>) -> audit::VerifyReport {
    audit::verify(path, &key().verifying_key(), kept).unwrap()
}

fn assert_bad(report: &audit::VerifyReport, first_bad: i64, detail: &str) {
    assert!(!report.ok, "tampering not detected: {report:?}");
    assert_eq!(report.first_bad_sequence, Some(first_bad), "{report:?}");
    assert!(report.detail.contains(detail), "detail {:?} lacks {detail:?}", report.detail);
}

#[tokio::test]
async fn untouched_log_verifies() {
    let s = scratch();
    closed_log(&s.path, 40, Some(20)).await;
    let r = verify(&s.path, None);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.events_checked, 40);
    assert_eq!(r.head_sequence, 40);
    assert_eq!(r.first_bad_sequence, None);
    assert_eq!(r.checkpoints_checked, 3, "first batch, checkpoint_now, shutdown: {r:?}");
    assert_eq!(r.signed_through, Some(40));
    let conn = audit::open_reader(&s.path).unwrap();
    assert_eq!(audit::head(&conn).unwrap(), (40, r.head_hash));
    assert_eq!(audit::latest_checkpoint(&conn).unwrap().unwrap().sequence, 40);
}

#[tokio::test]
async fn new_file_is_private_and_empty_log_verifies() {
    use std::os::unix::fs::PermissionsExt;
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), AuditConfig::default()).unwrap();
    assert_eq!(std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o777, 0o600);
    let cp = log.checkpoint_now().await.unwrap();
    assert_eq!((cp.sequence, cp.head_hash), (0, audit::GENESIS_HASH));
    log.shutdown().await;
    let r = verify(&s.path, Some(&cp));
    assert!(r.ok && r.events_checked == 0, "{r:?}");
}

#[tokio::test]
async fn edited_field_is_detected_at_its_sequence() {
    let s = scratch();
    closed_log(&s.path, 20, None).await;
    sql(&s.path, "UPDATE events SET detail = 'nothing to see' WHERE sequence = 7");
    assert_bad(&verify(&s.path, None), 7, "event 7: hash does not match its contents (edited)");
}

#[tokio::test]
async fn edited_action_name_is_an_edit_not_a_read_error() {
    let s = scratch();
    closed_log(&s.path, 10, None).await;
    sql(&s.path, "UPDATE events SET action = 'made_up' WHERE sequence = 4");
    assert_bad(&verify(&s.path, None), 4, "event 4: hash does not match its contents (edited)");
    let conn = audit::open_reader(&s.path).unwrap();
    assert!(matches!(audit::list(&conn, &AuditFilter::default(), None, 100), Err(AuditError::Corrupt(_))));
}

#[tokio::test]
async fn deleted_middle_row_is_detected() {
    let s = scratch();
    closed_log(&s.path, 20, None).await;
    sql(&s.path, "DELETE FROM events WHERE sequence = 9");
    assert_bad(&verify(&s.path, None), 9, "sequence 9 missing after 8 (deleted or reordered)");
}

#[tokio::test]
async fn deleted_row_with_later_rows_renumbered_is_detected() {
    let s = scratch();
    closed_log(&s.path, 20, None).await;
    sql(&s.path, "DELETE FROM events WHERE sequence = 9; UPDATE events SET sequence = sequence - 1 WHERE sequence > 9");
    assert_bad(&verify(&s.path, None), 9, "event 9: does not link to event 8");
}

#[tokio::test]
async fn rows_swapped_keeping_sequence_numbers_are_detected() {
    let s = scratch();
    closed_log(&s.path, 20, None).await;
    let cols = "time_ms, caller, caller_serial, action, tenant_id, key_version, outcome, upstream_status, \
                token_fingerprint, detail, request_id, peer, prev_hash, hash";
    let set: Vec<String> =
        cols.split(", ").map(|c| format!("{c} = (SELECT {c} FROM tmp WHERE o = e.sequence)")).collect();
    sql(
        &s.path,
        &format!(
            "CREATE TEMP TABLE tmp AS SELECT CASE sequence WHEN 5 THEN 6 ELSE 5 END AS o, {cols} \
             FROM events WHERE sequence IN (5, 6);
             UPDATE events AS e SET {} WHERE sequence IN (5, 6);",
            set.join(", ")
        ),
    );
    // The swap really happened: row 5 now carries event 6's request id.
    let conn = Connection::open(&s.path).unwrap();
    let rid: String = conn.query_row("SELECT request_id FROM events WHERE sequence = 5", [], |r| r.get(0)).unwrap();
    assert_eq!(rid, "req-6");
    assert_bad(&verify(&s.path, None), 5, "event 5: does not link to event 4");
}

#[tokio::test]
async fn rows_swapped_by_renumbering_are_detected() {
    let s = scratch();
    closed_log(&s.path, 20, None).await;
    sql(
        &s.path,
        "UPDATE events SET sequence = 1000 WHERE sequence = 5;
         UPDATE events SET sequence = 5 WHERE sequence = 6;
         UPDATE events SET sequence = 6 WHERE sequence = 1000;",
    );
    assert_bad(&verify(&s.path, None), 5, "event 5: does not link to event 4");
}

#[tokio::test]
async fn edit_with_recomputed_chain_is_caught_by_the_next_checkpoint() {
    let s = scratch();
    closed_log(&s.path, 20, Some(10)).await;
    // The attacker edits event 15 and recomputes every later hash (SHA-256 needs no key),
    // but cannot re-sign the checkpoint at 20.
    let conn = Connection::open(&s.path).unwrap();
    let events = audit::list(&conn, &AuditFilter::default(), None, 100).unwrap();
    let mut prev = events[13].hash;
    for mut e in events.into_iter().skip(14) {
        if e.sequence == 15 {
            e.record.detail = "rewritten".into();
        }
        let hash = audit::hash_record(&prev, e.sequence, e.time_ms, &e.record);
        conn.execute(
            "UPDATE events SET detail = ?1, prev_hash = ?2, hash = ?3 WHERE sequence = ?4",
            rusqlite::params![e.record.detail, &prev[..], &hash[..], e.sequence],
        )
        .unwrap();
        prev = hash;
    }
    drop(conn);
    assert_bad(&verify(&s.path, None), 11, "checkpoint at 20: the log's hash at 20 differs");
}

#[tokio::test]
async fn deleting_the_newest_rows_is_caught_by_a_kept_checkpoint() {
    let s = scratch();
    let cps = closed_log(&s.path, 40, Some(40)).await;
    // The security team kept this one outside the vault, as a file.
    let kept = Checkpoint::from_json(&cps[0].to_json()).unwrap();
    assert_eq!(kept.sequence, 40);

    sql(&s.path, "DELETE FROM events WHERE sequence >= 35; DELETE FROM checkpoints WHERE sequence >= 35;");
    // A bare chain cannot tell a truncated log from a shorter one: strict verification only
    // sees that events 2..=34 are no longer covered by a signature...
    assert_bad(&verify(&s.path, None), 2, "33 events after the last signed checkpoint (at 1)");
    let lenient = VerifyOptions { allow_unsigned_tail: true, ..VerifyOptions::default() };
    let bare = audit::verify_with(&s.path, &key().verifying_key(), &lenient).unwrap();
    assert!(bare.ok && bare.warning.is_some(), "{bare:?}");
    assert_eq!(bare.head_sequence, 34);
    // ...the kept checkpoint can.
    assert_bad(
        &verify(&s.path, Some(&kept)),
        35,
        "kept checkpoint at 40 but the log ends at 34 (newest events deleted)",
    );
}

#[tokio::test]
async fn deleting_the_newest_rows_is_caught_by_stored_checkpoints_left_behind() {
    let s = scratch();
    closed_log(&s.path, 40, None).await;
    sql(&s.path, "DELETE FROM events WHERE sequence >= 35");
    assert_bad(&verify(&s.path, None), 35, "checkpoint at 40 but the log ends at 34 (newest events deleted)");
}

#[tokio::test]
async fn kept_checkpoint_that_disagrees_with_the_log_is_reported() {
    let s = scratch();
    let cps = closed_log(&s.path, 30, Some(20)).await;
    // Rewrite the whole chain from event 12 on, checkpoints included except ours.
    let conn = Connection::open(&s.path).unwrap();
    let events = audit::list(&conn, &AuditFilter::default(), None, 100).unwrap();
    let mut prev = events[10].hash;
    for mut e in events.into_iter().skip(11) {
        e.record.caller = "spiffe://example.org/someone-else".into();
        let hash = audit::hash_record(&prev, e.sequence, e.time_ms, &e.record);
        conn.execute(
            "UPDATE events SET caller = ?1, prev_hash = ?2, hash = ?3 WHERE sequence = ?4",
            rusqlite::params![e.record.caller, &prev[..], &hash[..], e.sequence],
        )
        .unwrap();
        prev = hash;
    }
    conn.execute("DELETE FROM checkpoints WHERE sequence > 1", []).unwrap();
    drop(conn);
    // Without a kept checkpoint the rewrite itself is invisible; strict verification says
    // that nothing after the checkpoint at 1 is proven.
    assert_bad(&verify(&s.path, None), 2, "29 events after the last signed checkpoint (at 1)");
    let lenient = VerifyOptions { allow_unsigned_tail: true, ..VerifyOptions::default() };
    assert!(audit::verify_with(&s.path, &key().verifying_key(), &lenient).unwrap().ok);
    assert_bad(&verify(&s.path, Some(&cps[0])), 2, "kept checkpoint at 20: the log's hash at 20 differs");
}

#[tokio::test]
async fn wrong_public_key_fails_on_checkpoints() {
    let s = scratch();
    let cps = closed_log(&s.path, 10, Some(5)).await;
    let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let r = audit::verify(&s.path, &other, None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_sequence, Some(1), "the first checkpoint is at 1: {r:?}");
    assert!(r.detail.contains("checkpoint at 1 signed by unknown key"), "{}", r.detail);

    // The kept checkpoint names a key the verifier does not start from: the walk fails at
    // the first stored checkpoint, as without it.
    let r = audit::verify(&s.path, &other, Some(&cps[0])).unwrap();
    assert!(!r.ok && r.detail.contains("checkpoint at 1 signed by unknown key"), "{r:?}");
}

#[tokio::test]
async fn edited_checkpoint_fails_its_signature() {
    let s = scratch();
    closed_log(&s.path, 10, Some(5)).await;
    sql(&s.path, "UPDATE checkpoints SET time_ms = time_ms + 1 WHERE sequence = 5");
    assert_bad(&verify(&s.path, None), 5, "checkpoint at 5: signature does not verify");
}

#[tokio::test]
async fn verify_refuses_missing_and_foreign_files() {
    let s = scratch();
    assert!(matches!(audit::verify(&s.path, &key().verifying_key(), None), Err(AuditError::Missing { .. })));
    assert!(!s.path.exists(), "verify must not create the file");
    sql(&s.path, "CREATE TABLE other (x INTEGER)");
    assert!(matches!(audit::verify(&s.path, &key().verifying_key(), None), Err(AuditError::NotAuditLog { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_closed_while_the_file_is_locked_and_recover() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), AuditConfig::default()).unwrap();
    let before = log.append(rec(1)).await.unwrap();
    assert!(log.is_healthy());

    // Another connection takes the write lock and keeps it.
    let holder = Connection::open(&s.path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let started = std::time::Instant::now();
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn({
                let log = log.clone();
                async move { log.append(rec(i + 2)).await }
            })
        })
        .collect();
    for a in attempts {
        let r = a.await.unwrap();
        assert!(matches!(r, Err(AuditError::Unavailable { .. })), "{r:?}");
    }
    assert!(started.elapsed() < SOON, "fail closed within a bound, took {:?}", started.elapsed());
    let mut health = log.health();
    tokio::time::timeout(SOON, health.wait_for(|h| !h)).await.unwrap().unwrap();
    assert!(!log.is_healthy());

    // The lock goes away: the writer notices by itself, without any append.
    holder.execute_batch("ROLLBACK").unwrap();
    tokio::time::timeout(SOON, health.wait_for(|h| *h)).await.unwrap().unwrap();
    let after = log.append(rec(99)).await.unwrap();
    assert_eq!(after.sequence, before.sequence + 1, "a failed batch leaves no gap");
    assert_eq!(after.prev_hash, before.hash, "and no fork");
    log.shutdown().await;
    let r = verify(&s.path, None);
    assert!(r.ok && r.events_checked == 2, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_gap_free_sequences() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), AuditConfig { max_batch: 64, ..AuditConfig::default() }).unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..40 {
                    seqs.push(log.append(rec(t * 100 + i)).await.unwrap().sequence);
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1280).collect::<Vec<i64>>());
    log.shutdown().await;
    let r = verify(&s.path, None);
    assert!(r.ok && r.events_checked == 1280 && r.signed_through == Some(1280), "{r:?}");
}

#[tokio::test]
async fn an_acknowledged_append_is_in_the_file() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), AuditConfig::default()).unwrap();
    for i in 0..5 {
        let ev = log.append(rec(i)).await.unwrap();
        // A fresh read-only connection, as another process would open it.
        let conn = Connection::open_with_flags(&s.path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let (hash, detail): (Vec<u8>, String) = conn
            .query_row("SELECT hash, detail FROM events WHERE sequence = ?1", [ev.sequence], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(hash, ev.hash);
        assert_eq!(detail, format!("event number {i}"));
    }
    log.shutdown().await;
    assert!(matches!(log.append(rec(9)).await, Err(AuditError::Closed)));
    assert!(!log.is_healthy(), "a stopped log is not healthy");
}

#[tokio::test]
async fn a_second_writer_process_continues_the_same_chain() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    log.append(rec(1)).await.unwrap();
    // The CLI (rotate-kek) appends through its own connection while the server runs.
    let cli = AuditLog::append_blocking_once(
        &s.path,
        &key(),
        AuditRecord::new(Action::KekRotated, Outcome::Ok).caller("cli:root", "").detail("rewrapped 3 keys"),
    )
    .unwrap();
    assert_eq!(cli.sequence, 2);
    let next = log.append(rec(3)).await.unwrap();
    assert_eq!((next.sequence, next.prev_hash), (3, cli.hash));
    log.shutdown().await;
    // Reopening continues the chain too.
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    assert_eq!(log.append(rec(4)).await.unwrap().sequence, 4);
    log.shutdown().await;
    let r = verify(&s.path, None);
    assert!(r.ok && r.events_checked == 4, "{r:?}");
}

#[tokio::test]
async fn checkpoints_follow_events_but_not_idleness() {
    let s = scratch();
    let cfg = AuditConfig { checkpoint_interval: Duration::from_millis(50), ..AuditConfig::default() };
    let log = AuditLog::open(&s.path, key(), cfg).unwrap();
    log.append(rec(1)).await.unwrap(); // first batch: checkpointed with it
    let ev = log.append(rec(2)).await.unwrap(); // not due yet: the timer covers it
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let cp = log.latest_checkpoint().await.unwrap().unwrap();
        if cp.sequence == ev.sequence {
            cp.verify(&key().verifying_key()).unwrap();
            assert_eq!(cp.head_hash, ev.hash);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint covered event 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let count = |p: &Path| -> i64 {
        Connection::open(p).unwrap().query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0)).unwrap()
    };
    let n = count(&s.path);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&s.path), n, "an idle writer writes nothing");
    log.shutdown().await;
    assert_eq!(count(&s.path), n, "shutdown adds no checkpoint when the head is covered");
}

#[tokio::test]
async fn list_filters_and_pages() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), AuditConfig::default()).unwrap();
    for i in 1..=40 {
        log.append(rec(i)).await.unwrap();
    }
    let by = |f: AuditFilter| {
        let log = log.clone();
        async move { log.list(f, None, 1000).await.unwrap() }
    };
    let tenant = by(AuditFilter { tenant_id: Some("tenant-2".into()), ..Default::default() }).await;
    assert_eq!(tenant.len(), 8);
    assert!(tenant.iter().all(|e| e.record.tenant_id.as_deref() == Some("tenant-2")));
    let denied = by(AuditFilter { outcome: Some(Outcome::Denied), ..Default::default() }).await;
    assert_eq!(denied.len(), 10);
    assert!(denied.iter().all(|e| e.record.action == Action::TokenDenied));
    let both = by(AuditFilter {
        caller: Some("spiffe://example.org/svc-1".into()),
        action: Some(Action::TokenMinted),
        ..Default::default()
    })
    .await;
    assert!(both.iter().all(|e| e.record.caller.ends_with("svc-1") && e.record.action == Action::TokenMinted));
    assert_eq!(both.len(), 4);
    let all = by(AuditFilter::default()).await;
    let (t0, t_last) = (all[0].time_ms, all[39].time_ms);
    assert_eq!(
        by(AuditFilter { since_ms: Some(t0), until_ms: Some(t_last + 1), ..Default::default() }).await.len(),
        40
    );
    assert!(by(AuditFilter { until_ms: Some(t0), ..Default::default() }).await.is_empty());

    // Paging with after_sequence visits every event once, in order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = log.list(AuditFilter::default(), after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.sequence);
        seen.extend(page.iter().map(|e| e.sequence));
    }
    assert_eq!(seen, (1..=40).collect::<Vec<i64>>());
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_then_follows_without_gaps_or_duplicates() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), AuditConfig::default()).unwrap();
    for i in 1..=10 {
        log.append(rec(i)).await.unwrap();
    }
    let mut watch = log.watch(4);
    let writer = {
        let log = log.clone();
        let path = s.path.clone();
        tokio::spawn(async move {
            for i in 11..=30 {
                log.append(rec(i)).await.unwrap();
                if i == 20 {
                    // An event from another process: not broadcast, found in the file.
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || {
                        AuditLog::append_blocking_once(&path, &key(), AuditRecord::new(Action::KekRotated, Outcome::Ok))
                    })
                    .await
                    .unwrap()
                    .unwrap();
                }
            }
        })
    };
    let mut got = Vec::new();
    while got.len() < 28 {
        let e = tokio::time::timeout(SOON, watch.next()).await.unwrap().unwrap().unwrap();
        got.push(e.sequence);
    }
    writer.await.unwrap();
    log.shutdown().await;
    // The other process's append signs the server's not-yet-checkpointed events and says so
    // with one `unsigned_tail_signed` record of its own when there were any: 31 or 32 in all.
    while let Some(e) = tokio::time::timeout(SOON, watch.next()).await.unwrap().unwrap() {
        got.push(e.sequence);
    }
    let last = *got.last().unwrap();
    assert!(last == 31 || last == 32, "{got:?}");
    assert_eq!(got, (4..=last).collect::<Vec<i64>>(), "no gap, no duplicate");
}

#[tokio::test]
async fn export_streams_jsonl_and_quoted_csv() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), AuditConfig::default()).unwrap();
    for i in 1..=6 {
        log.append(rec(i)).await.unwrap();
    }
    log.append(rec(7).detail("comma, \"quote\"\nand newline").request("=cmd|' /C calc'!A0", "peer")).await.unwrap();
    log.shutdown().await;

    let mut jsonl = Vec::new();
    let n = audit::export(&s.path, &AuditFilter::default(), ExportFormat::Jsonl, &mut jsonl).unwrap();
    assert_eq!(n, 7);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[6]["detail"], "comma, \"quote\"\nand newline");
    assert_eq!(lines[0]["sequence"], 1);
    assert_eq!(lines[0]["hash"].as_str().unwrap().len(), 64);

    let mut csv = Vec::new();
    let filter = AuditFilter { action: Some(Action::KeyRotated), ..Default::default() };
    let n = audit::export(&s.path, &filter, ExportFormat::Csv, &mut csv).unwrap();
    assert_eq!(n, 2, "events 2 and 6");
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("sequence,time,time_ms,caller,"), "{csv}");
    assert_eq!(csv.matches("\r\n").count(), 3);

    let mut csv = Vec::new();
    let filter = AuditFilter { tenant_id: Some("tenant-2".into()), ..Default::default() };
    audit::export(&s.path, &filter, ExportFormat::Csv, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.contains("\"comma, \"\"quote\"\"\nand newline\""), "{csv}");
    assert!(csv.contains("\"'=cmd|' /C calc'!A0\""), "formula defused: {csv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stuck_in_sqlite_still_answers_within_the_append_timeout() {
    let s = scratch();
    // The writer waits up to 30 s for the lock, so only the watchdog can answer in time.
    let cfg = AuditConfig {
        busy_timeout: Duration::from_secs(30),
        append_timeout: Duration::from_millis(400),
        ..manual_checkpoints()
    };
    let log = AuditLog::open(&s.path, key(), cfg).unwrap();
    log.append(rec(1)).await.unwrap();
    let holder = Connection::open(&s.path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let started = std::time::Instant::now();
    let attempts: Vec<_> = (0..4)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(rec(i + 2)).await })
        })
        .collect();
    for a in attempts {
        let r = a.await.unwrap();
        assert!(matches!(r, Err(AuditError::Unavailable { .. })), "{r:?}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered by the watchdog, not after the 30 s busy wait: {took:?}");
    let mut health = log.health();
    tokio::time::timeout(SOON, health.wait_for(|h| !h)).await.unwrap().unwrap();
    holder.execute_batch("ROLLBACK").unwrap();
    tokio::time::timeout(SOON, health.wait_for(|h| *h)).await.unwrap().unwrap();
    // The batch the watchdog failed may or may not have been committed once the lock went;
    // either way the chain is one and it verifies.
    log.append(rec(50)).await.unwrap();
    log.shutdown().await;
    let r = verify(&s.path, None);
    assert!(r.ok, "{r:?}");
}

#[tokio::test]
async fn a_full_queue_fails_at_once_and_a_second_shutdown_returns() {
    let s = scratch();
    let cfg = AuditConfig { queue_capacity: 1, busy_timeout: Duration::from_secs(30), ..manual_checkpoints() };
    let log = AuditLog::open(&s.path, key(), cfg).unwrap();
    log.append(rec(1)).await.unwrap();
    let holder = Connection::open(&s.path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // The first record is taken by the writer (stuck on the lock), the second fills the queue.
    let first = tokio::spawn({
        let log = log.clone();
        async move { log.append(rec(2)).await }
    });
    let deadline = std::time::Instant::now() + SOON;
    let mut refused = None;
    while std::time::Instant::now() < deadline {
        let second = tokio::spawn({
            let log = log.clone();
            async move { log.append(rec(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        match tokio::time::timeout(Duration::from_millis(20), log.append(rec(4))).await {
            Ok(Err(AuditError::Unavailable { reason })) => {
                refused = Some(reason);
                drop(second);
                break;
            }
            _ => drop(second),
        }
    }
    let reason = refused.expect("a full queue refuses at once");
    assert!(reason.contains("already waiting"), "{reason}");
    holder.execute_batch("ROLLBACK").unwrap();
    let _ = first.await.unwrap();
    log.shutdown().await;
    let again = std::time::Instant::now();
    log.shutdown().await;
    assert!(again.elapsed() < Duration::from_secs(1), "a second shutdown does not wait");
    assert!(matches!(log.append(rec(9)).await, Err(AuditError::Closed)));
}

/// Every page of `filter` (pages of `page`), as sequences, read through a fresh read-only
/// connection the way `ListAuditEvents` and the CLI read.
fn paged(path: &Path, filter: &AuditFilter, page: usize) -> Vec<i64> {
    let conn = audit::open_reader(path).unwrap();
    let (mut out, mut after) = (Vec::new(), None);
    loop {
        let events = audit::list(&conn, filter, after, page).unwrap();
        let Some(last) = events.last() else { return out };
        after = Some(last.sequence);
        out.extend(events.iter().map(|e| e.sequence));
    }
}

/// What `filter` must return, computed from an unfiltered read of the whole log.
fn expected(path: &Path, filter: &AuditFilter) -> Vec<i64> {
    let conn = audit::open_reader(path).unwrap();
    let all = audit::list(&conn, &AuditFilter::default(), None, usize::MAX >> 1).unwrap();
    all.iter()
        .filter(|e| filter.tenant_id.as_ref().is_none_or(|t| e.record.tenant_id.as_ref() == Some(t)))
        .filter(|e| filter.action.is_none_or(|a| e.record.action == a))
        .filter(|e| filter.caller.as_ref().is_none_or(|c| &e.record.caller == c))
        .map(|e| e.sequence)
        .collect()
}

async fn wait_indexed(log: &AuditLog, through: i64) {
    let deadline = std::time::Instant::now() + SOON;
    while log.tenant_index_through() < through {
        assert!(std::time::Instant::now() < deadline, "tenant index stuck at {}", log.tenant_index_through());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tenant_filters() -> Vec<AuditFilter> {
    let t = |n: usize| Some(format!("tenant-{n}"));
    vec![
        AuditFilter { tenant_id: t(2), ..Default::default() },
        AuditFilter { tenant_id: t(0), action: Some(Action::TokenMinted), ..Default::default() },
        AuditFilter { tenant_id: t(3), caller: Some("spiffe://example.org/svc-1".into()), ..Default::default() },
        AuditFilter { tenant_id: Some("no-such-tenant".into()), ..Default::default() },
    ]
}

#[tokio::test]
async fn tenant_queries_are_complete_before_during_and_after_background_indexing() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    for i in 0..300 {
        log.append(rec(i)).await.unwrap();
    }
    // Whatever the indexer has done so far, the answers are complete and in order.
    for f in tenant_filters() {
        assert_eq!(paged(&s.path, &f, 7), expected(&s.path, &f), "{f:?}");
    }
    wait_indexed(&log, 300).await;
    assert!(audit::tenant_index_path(&s.path).exists());
    // Part indexed, part beyond the watermark: pages cross the boundary.
    log.shutdown().await;
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    for i in 300..340 {
        log.append(rec(i)).await.unwrap();
    }
    for f in tenant_filters() {
        let want = expected(&s.path, &f);
        assert_eq!(paged(&s.path, &f, 7), want, "{f:?}");
        assert_eq!(paged(&s.path, &f, 1000), want, "{f:?}");
        let mut out = Vec::new();
        let n = audit::export(&s.path, &f, ExportFormat::Jsonl, &mut out).unwrap();
        assert_eq!(n as usize, want.len(), "export of {f:?}");
    }
    assert_eq!(expected(&s.path, &tenant_filters()[0]).len(), 68, "tenant-2 is every fifth event");
    log.shutdown().await;
}

#[tokio::test]
async fn a_foreign_stale_or_missing_tenant_index_is_never_trusted_and_is_rebuilt() {
    let (a, b) = (scratch(), scratch());
    // Log A: its index covers 200 events whose tenants differ from B's at the same sequences.
    let log = AuditLog::open(&a.path, key(), manual_checkpoints()).unwrap();
    for i in 0..200 {
        log.append(rec(i + 1)).await.unwrap();
    }
    wait_indexed(&log, 200).await;
    log.shutdown().await;
    drop(log);
    let log = AuditLog::open(&b.path, key(), manual_checkpoints()).unwrap();
    for i in 0..120 {
        log.append(rec(i)).await.unwrap();
    }
    wait_indexed(&log, 120).await;
    log.shutdown().await;
    drop(log);

    // A's index put beside B (a restore gone wrong): ignored, B's answers stay B's.
    let (ia, ib) = (audit::tenant_index_path(&a.path), audit::tenant_index_path(&b.path));
    for suffix in ["", "-wal", "-shm"] {
        let (from, to) = (format!("{}{suffix}", ia.display()), format!("{}{suffix}", ib.display()));
        std::fs::remove_file(&to).ok();
        if Path::new(&from).exists() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    for f in tenant_filters() {
        assert_eq!(paged(&b.path, &f, 9), expected(&b.path, &f), "{f:?}");
    }
    // The server rebuilds it for B.
    let log = AuditLog::open(&b.path, key(), manual_checkpoints()).unwrap();
    wait_indexed(&log, 120).await;
    for f in tenant_filters() {
        assert_eq!(paged(&b.path, &f, 9), expected(&b.path, &f), "{f:?}");
    }
    log.shutdown().await;
    // Deleted: the log is still fully queryable.
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", ib.display())).ok();
    }
    for f in tenant_filters() {
        assert_eq!(paged(&b.path, &f, 9), expected(&b.path, &f), "{f:?}");
    }
}

#[tokio::test]
async fn a_log_written_before_the_tenant_index_moved_is_read_and_upgraded() {
    let s = scratch();
    closed_log(&s.path, 20, None).await;
    // Back to schema 1: the index inside the audit database, as version 1 wrote it.
    sql(
        &s.path,
        "CREATE INDEX events_by_tenant ON events (tenant_id); DROP TABLE signing_handovers; PRAGMA user_version = 1;",
    );
    std::fs::remove_file(audit::tenant_index_path(&s.path)).ok();
    let r = verify(&s.path, None);
    assert!(r.ok && r.events_checked == 20, "an old file is readable: {r:?}");
    let f = &tenant_filters()[0];
    assert_eq!(paged(&s.path, f, 3), expected(&s.path, f));
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    log.append(rec(21)).await.unwrap();
    log.shutdown().await;
    let conn = Connection::open(&s.path).unwrap();
    let (version, old_index): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), \
             (SELECT count(*) FROM sqlite_master WHERE name = 'events_by_tenant')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, old_index), (audit::AUDIT_MIGRATIONS.len() as i64, 0), "migrated to the newest schema");
    assert!(verify(&s.path, None).ok, "hashes and checkpoints survive the migration");
}

#[tokio::test]
async fn a_damaged_or_deleted_tenant_index_falls_back_to_the_log_and_is_rebuilt() {
    let s = scratch();
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    for i in 0..150 {
        log.append(rec(i)).await.unwrap();
    }
    wait_indexed(&log, 150).await;
    let index = audit::tenant_index_path(&s.path);

    // Deleted while the server runs: pages stay complete, and the indexer starts a new file.
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", index.display())).ok();
    }
    for f in tenant_filters() {
        assert_eq!(paged(&s.path, &f, 11), expected(&s.path, &f), "{f:?}");
    }
    log.append(rec(150)).await.unwrap();
    let deadline = std::time::Instant::now() + SOON;
    while !(log.tenant_index_rebuilds() >= 1 && log.tenant_index_through() == 151 && index.exists()) {
        assert!(std::time::Instant::now() < deadline, "the deleted index was not rebuilt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Damaged: readers fall back to the log; the server notices and rebuilds it.
    log.shutdown().await;
    drop(log);
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", index.display())).ok();
    }
    std::fs::write(&index, &garbage).unwrap();
    for f in tenant_filters() {
        assert_eq!(paged(&s.path, &f, 11), expected(&s.path, &f), "{f:?}");
    }
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    log.append(rec(151)).await.unwrap();
    wait_indexed(&log, 152).await;
    assert_eq!(log.tenant_index_rebuilds(), 1, "the damaged file was found and started over");
    assert_ne!(std::fs::read(&index).unwrap()[..16], garbage[..16], "rebuilt as a database");
    for f in tenant_filters() {
        assert_eq!(paged(&s.path, &f, 11), expected(&s.path, &f), "{f:?}");
    }
    log.shutdown().await;
}

#[tokio::test]
async fn opening_a_log_with_an_unsigned_tail_signs_it_and_records_the_range() {
    let s = scratch();
    closed_log(&s.path, 12, None).await;
    // The state a crash leaves: the newest events covered by no checkpoint.
    sql(&s.path, "DELETE FROM checkpoints WHERE sequence > 1");
    assert_bad(&verify(&s.path, None), 2, "11 events after the last signed checkpoint (at 1)");

    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    // Signed at open, before any append, and on the record.
    let r = verify(&s.path, None);
    assert!(r.ok && r.head_sequence == 13 && r.signed_through == Some(13), "{r:?}");
    let conn = audit::open_reader(&s.path).unwrap();
    let filter = AuditFilter { action: Some(Action::UnsignedTailSigned), ..AuditFilter::default() };
    let late = audit::list(&conn, &filter, None, 10).unwrap();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].sequence, 13);
    assert!(late[0].record.detail.contains("events 2..=12"), "{}", late[0].record.detail);
    assert_eq!(log.last_signed().map(|c| c.sequence), Some(13));
    log.shutdown().await;

    // A log whose head is signed is opened without a new record.
    let log = AuditLog::open(&s.path, key(), manual_checkpoints()).unwrap();
    log.shutdown().await;
    assert_eq!(audit::list(&conn, &filter, None, 10).unwrap().len(), 1);
}
