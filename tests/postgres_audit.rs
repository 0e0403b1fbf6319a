#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The audit log on PostgreSQL: one global chain that several writers ("replicas") append
//! to at once, each group commit under the chain's advisory lock and signed; verified by
//! the one verifier (library and `audit verify --postgres-url`), edits found; rows nobody
//! signed never chained onto; appends failing closed in bounded time while the server is
//! down and served again after; a copy SQLite → PostgreSQL → SQLite byte for byte; and no
//! acknowledged record lost when the primary dies and its synchronous standby is promoted.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::pg::PgCluster;
use ed25519_dalek::SigningKey;
use pogo_vault::audit::{
    Action, AuditConfig, AuditLocation, AuditLog, AuditRecord, Outcome, VerifyOptions, copy_audit, digest_audit,
    encode_public_key, verify_postgres, verify_with,
};
use pogo_vault::store::PostgresOptions;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn record(replica: usize, i: usize) -> AuditRecord {
    AuditRecord::new(Action::TokenMinted, Outcome::Ok)
        .caller(format!("svc-{replica}"), "01")
        .tenant(format!("t-{}", i % 17))
        .request(format!("r{replica}-{i:06}"), "127.0.0.1:1")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn open(o: &PostgresOptions) -> AuditLog {
    AuditLog::open_postgres(o, key(), AuditConfig::default()).unwrap()
}

fn pub_key_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("audit.pub");
    std::fs::write(&p, encode_public_key(&key().verifying_key())).unwrap();
    p
}

/// `pogo-vault audit verify --postgres-url ...`: (success, stdout + stderr).
fn cli_verify(cluster: &PgCluster, db: &str, public_key: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["audit", "verify", "--postgres-url", &cluster.url(db), "--postgres-password-file"])
        .arg(cluster.password_file())
        .arg("--public-key")
        .arg(public_key)
        .env_remove("POGO_VAULT_DB")
        .env_remove("POGO_VAULT_AUDIT_DB")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn three_writers_on_one_database_make_one_chain_that_verifies_and_an_edit_is_found() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let o = cluster.options("vault");
    let logs: Vec<AuditLog> = (0..3).map(|_| open(&o)).collect();
    let started = Instant::now();
    let threads: Vec<_> = (0..3)
        .flat_map(|r| (0..4).map(move |t| (r, t)))
        .map(|(r, t)| {
            let log = logs[r].clone();
            std::thread::spawn(move || {
                (0..100).map(|i| log.append_wait(record(r, t * 1000 + i)).unwrap().sequence).collect::<Vec<_>>()
            })
        })
        .collect();
    let sequences: Vec<i64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed();
    for log in &logs {
        block_on(log.shutdown());
    }
    let distinct: BTreeSet<i64> = sequences.iter().copied().collect();
    assert_eq!(distinct.len(), 1200, "every acknowledged record has a sequence of its own");
    assert_eq!(distinct.first().copied(), Some(1));
    assert_eq!(distinct.last().copied(), Some(1200), "one chain without gaps");
    let mut admin = cluster.admin("vault");
    let checkpoints: i64 = admin.query_one("SELECT count(*) FROM checkpoints", &[]).unwrap().get(0);
    let callers: i64 = admin.query_one("SELECT count(DISTINCT caller) FROM events", &[]).unwrap().get(0);
    println!(
        "3 writers x 4 threads x 100 awaited appends: 1200 records in {elapsed:?} ({:.0}/s), {checkpoints} group \
         commits (each signed)",
        1200.0 / elapsed.as_secs_f64()
    );
    assert_eq!(callers, 3);

    let report = verify_postgres(&o, &key().verifying_key(), &VerifyOptions::default()).unwrap();
    assert!(report.ok, "{}", report.detail);
    assert_eq!(report.events_checked, 1200);
    assert_eq!(report.head_sequence, 1200);
    assert_eq!(report.checkpoints_checked as i64, checkpoints);
    let dir = tempfile::tempdir().unwrap();
    let public_key = pub_key_file(dir.path());
    let (ok, text) = cli_verify(&cluster, "vault", &public_key);
    assert!(ok && text.contains("ok: 1200 events verified"), "{text}");

    // An edit of one row is found, by the library and the CLI.
    admin.batch_execute("UPDATE events SET detail = detail || ' ' WHERE sequence = 600").unwrap();
    let report = verify_postgres(&o, &key().verifying_key(), &VerifyOptions::default()).unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_sequence, Some(600), "{}", report.detail);
    let (ok, text) = cli_verify(&cluster, "vault", &public_key);
    assert!(!ok && text.contains("does NOT verify") && text.contains("600"), "{text}");
    // Another key: refused.
    std::fs::write(&public_key, encode_public_key(&SigningKey::from_bytes(&[8; 32]).verifying_key())).unwrap();
    admin.batch_execute("UPDATE events SET detail = trim(detail) WHERE sequence = 600").unwrap();
    let (ok, text) = cli_verify(&cluster, "vault", &public_key);
    assert!(!ok, "{text}");
    // A database without an audit log is named, and nothing is created in it.
    cluster.create_database("empty");
    let err = verify_postgres(&cluster.options("empty"), &key().verifying_key(), &VerifyOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("audit schema version 0"), "{err}");
    let tables: i64 = cluster
        .admin("empty")
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

#[test]
fn a_writer_never_chains_onto_a_row_nobody_signed() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let o = cluster.options("vault");
    let log = open(&o);
    log.append_wait(record(0, 1)).unwrap();
    // A row inserted by hand after the head (linked correctly), with no checkpoint.
    let mut admin = cluster.admin("vault");
    admin
        .batch_execute(
            "INSERT INTO events (sequence, time_ms, caller, caller_serial, action, tenant_id, key_version, outcome, \
             upstream_status, token_fingerprint, detail, request_id, peer, prev_hash, hash) \
             SELECT 2, time_ms, caller, caller_serial, action, tenant_id, key_version, outcome, upstream_status, \
             token_fingerprint, 'forged', request_id, peer, hash, hash FROM events WHERE sequence = 1",
        )
        .unwrap();
    let err = log.append_wait(record(0, 2)).unwrap_err().to_string();
    assert!(err.contains("altered") || err.contains("no checkpoint"), "{err}");
    assert!(!log.is_healthy());
    // A second replica opening the log refuses to sign it (on PostgreSQL no writer leaves an
    // unsigned tail), and the verifier fails it.
    let err = AuditLog::open_postgres(&o, key(), AuditConfig::default()).unwrap_err().to_string();
    assert!(
        err.contains("end at no checkpoint signed with this writer's key") && err.contains("events 2..=2"),
        "{err}"
    );
    let head: i64 = admin.query_one("SELECT max(sequence) FROM events", &[]).unwrap().get(0);
    assert_eq!(head, 2, "nothing was chained onto the forged row");
    let report = verify_postgres(&o, &key().verifying_key(), &VerifyOptions::default()).unwrap();
    assert!(!report.ok && report.first_bad_sequence == Some(2), "{}", report.detail);
    // A checkpoint row at the forged head does not help (review): only one this key signed.
    admin
        .batch_execute(
            "INSERT INTO checkpoints (sequence, head_hash, time_ms, key_id, signature) \
             SELECT 2, hash, 0, 'forged', decode(repeat('00', 64), 'hex') FROM events WHERE sequence = 2",
        )
        .unwrap();
    let err = AuditLog::open_postgres(&o, key(), AuditConfig::default()).unwrap_err().to_string();
    assert!(err.contains("does not verify under this writer's key"), "{err}");
    let err = AuditLog::append_blocking_once_postgres(&o, &key(), record(9, 9)).unwrap_err().to_string();
    assert!(err.contains("does not verify under this writer's key"), "{err}");
    let head: i64 = admin.query_one("SELECT max(sequence) FROM events", &[]).unwrap().get(0);
    assert_eq!(head, 2, "still nothing chained onto the forged row");
    block_on(log.shutdown());
}

#[test]
fn appends_fail_closed_in_bounded_time_while_the_server_is_down_and_are_served_again_after() {
    let mut cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let mut o = cluster.options("vault");
    o.connect_timeout = Duration::from_secs(1);
    o.statement_timeout = Duration::from_secs(1);
    let log = open(&o);
    log.append_wait(record(0, 0)).unwrap();
    cluster.stop_immediate();
    let bound = AuditConfig::default().append_timeout + Duration::from_millis(500);
    let mut worst = Duration::ZERO;
    for i in 1..=3 {
        let t = Instant::now();
        let r = log.append_wait(record(0, i));
        worst = worst.max(t.elapsed());
        assert!(r.is_err(), "no server, no acknowledgement");
    }
    assert!(!log.is_healthy());
    println!("server down: appends refused after at most {worst:?} (bound {bound:?})");
    assert!(worst <= bound, "{worst:?}");
    cluster.restart_immediate(&[]);
    let t = Instant::now();
    let seq = loop {
        if let Ok(r) = log.append_wait(record(0, 9)) {
            break r.sequence;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "not served again");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("server back: appends acknowledged again {:?} after the restart", t.elapsed());
    assert!(log.is_healthy());
    block_on(log.shutdown());
    let report = verify_postgres(&o, &key().verifying_key(), &VerifyOptions::default()).unwrap();
    assert!(report.ok, "{}", report.detail);
    assert!(report.head_sequence >= seq);
}

#[test]
fn an_audit_log_copied_to_postgres_and_back_keeps_every_byte_and_its_chain() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let o = cluster.options("vault");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.db");
    let log = AuditLog::open(&file, key(), AuditConfig::default()).unwrap();
    for i in 0..500 {
        log.append_wait(record(1, i)).unwrap();
    }
    block_on(log.shutdown());
    let sqlite = AuditLocation::File(file.clone());
    let pg = AuditLocation::Postgres(o.clone());
    let t = Instant::now();
    let copied = copy_audit(&sqlite, &pg).unwrap();
    println!("copied 500 events SQLite -> PostgreSQL in {:?}", t.elapsed());
    assert_eq!(copied.rows("events"), 500);
    assert_eq!(digest_audit(&sqlite).unwrap(), digest_audit(&pg).unwrap());
    assert!(verify_postgres(&o, &key().verifying_key(), &VerifyOptions::default()).unwrap().ok);
    // A second copy is refused: the target is not empty.
    let err = copy_audit(&sqlite, &pg).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");

    // The chain continues on PostgreSQL, and comes back to a file whole.
    let log = open(&o);
    let next = log.append_wait(record(2, 0)).unwrap();
    assert_eq!(next.sequence, 501);
    block_on(log.shutdown());
    let back = dir.path().join("back.db");
    copy_audit(&pg, &AuditLocation::File(back.clone())).unwrap();
    let report = verify_with(&back, &key().verifying_key(), &VerifyOptions::default()).unwrap();
    assert!(report.ok, "{}", report.detail);
    assert_eq!(report.events_checked, 501);
    assert_eq!(digest_audit(&pg).unwrap(), digest_audit(&AuditLocation::File(back.clone())).unwrap());
    let err = copy_audit(&pg, &AuditLocation::File(back)).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn records_acknowledged_before_the_primary_dies_are_all_on_the_promoted_synchronous_standby() {
    let primary = PgCluster::start(&[]);
    primary.create_database("vault");
    let (standby, o) = primary.start_sync_standby("vault");
    let log = open(&o);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut acked, mut refused, mut back) = (Vec::new(), 0, None);
                let mut failing_since: Option<Instant> = None;
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match log.append_wait(record(w, i)) {
                        Ok(r) => {
                            if let Some(at) = failing_since.take() {
                                back.get_or_insert(at);
                            }
                            acked.push((r.sequence, format!("r{w}-{i:06}")));
                        }
                        Err(_) => {
                            refused += 1;
                            failing_since.get_or_insert(Instant::now());
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    primary.kill9();
    std::thread::sleep(Duration::from_millis(500));
    standby.promote();
    let served_again = loop {
        if log.is_healthy() && log.append_wait(record(9, 0)).is_ok() {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "not served again within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut refused) = (Vec::new(), 0);
    for w in writers {
        let (a, r) = w.join().unwrap();
        acked.extend(a);
        refused += r;
    }
    block_on(log.shutdown());
    let on_standby: std::collections::HashMap<i64, String> = standby
        .admin("vault")
        .query("SELECT sequence, request_id FROM events", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let lost: Vec<_> = acked.iter().filter(|(s, id)| on_standby.get(s) != Some(id)).collect();
    println!(
        "audit failover: {} records acknowledged, {} lost, {refused} refused while failing over; appends \
         acknowledged again {served_again:?} after the kill (promotion 0.5 s after it)",
        acked.len(),
        lost.len()
    );
    assert!(acked.len() > 50, "the writers ran");
    assert!(lost.is_empty(), "acknowledged audit records lost: {lost:?}");
    let report = verify_postgres(&standby.options("vault"), &key().verifying_key(), &VerifyOptions::default()).unwrap();
    assert!(report.ok, "{}", report.detail);
}
