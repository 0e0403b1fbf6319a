#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Audit retention with the real binary on real files: `audit archive` moves the events up
//! to a signed checkpoint into an archive file and shrinks the live database; `audit verify`
//! proves archives plus the live log one chain, and names the file and sequence where it
//! breaks (an edited archive, an archive left out, an archive of another log). Beside a
//! running server: tokens keep flowing, `VerifyAuditLog` verifies from the anchor, a watch
//! from sequence 1 starts after it, and the tenant index drops archived rows without a
//! rebuild.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fixture::audit_verifying_key;
use common::server::TestServer;
use common::{Scratch, assert_fails_with, assert_ok, dump, run_bin, stdout};
use pogo_vault::audit::{self, Action, AuditConfig, AuditFilter, AuditLog, AuditRecord, Outcome};
use pogo_vault::crypto::MasterKeySource;
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::Vault;

/// A vault made by `init`, its audit log, and the public key file an auditor holds.
struct Files {
    s: Scratch,
}

impl Files {
    fn new() -> Files {
        let s = Scratch::new();
        s.init();
        let f = Files { s };
        let key = audit_verifying_key(&f.vault());
        std::fs::write(f.public_key(), audit::encode_public_key(&key)).unwrap();
        f
    }
    fn vault(&self) -> Vault {
        Vault::unlock(&self.s.db(), &MasterKeySource::KeyFile(self.s.key())).unwrap()
    }
    fn audit_db(&self) -> PathBuf {
        pogo_vault::config::default_audit_db(&self.s.db())
    }
    fn public_key(&self) -> PathBuf {
        self.s.path("audit.pub")
    }
    /// `n` records of about 1.2 KB each, appended by a log of this process (group commits).
    async fn append(&self, n: usize, tenant: &str) {
        self.append_signed_then(n, 0, tenant).await;
    }
    /// `n` records, a checkpoint of them (returns its sequence), then `more` records.
    async fn append_signed_then(&self, n: usize, more: usize, tenant: &str) -> i64 {
        let log = AuditLog::open(&self.audit_db(), self.vault().audit_signing_key().unwrap(), AuditConfig::default())
            .unwrap();
        append_to(&log, n, tenant).await;
        let cp = log.checkpoint_now().await.unwrap();
        append_to(&log, more, tenant).await;
        log.shutdown().await;
        cp.sequence
    }
    fn archive(&self, cut: &[&str], out: &Path) -> std::process::Output {
        self.s.run_k(&[&["audit", "archive"], cut, &["--out", out.to_str().unwrap()]].concat(), "")
    }
    fn verify(&self, archives: &[&Path], live: bool) -> std::process::Output {
        let key = self.public_key();
        let mut args = vec!["audit", "verify", "--public-key", key.to_str().unwrap()];
        for a in archives {
            args.extend(["--archive", a.to_str().unwrap()]);
        }
        if !live {
            args.push("--archives-only");
        }
        run_bin(&[&["--audit-db", self.audit_db().to_str().unwrap()], &args[..]].concat(), "")
    }
    fn head(&self) -> i64 {
        audit::head(&audit::open_reader(&self.audit_db()).unwrap()).unwrap().0
    }
}

async fn append_to(log: &AuditLog, n: usize, tenant: &str) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let log = log.clone();
        let rec = AuditRecord::new(Action::TokenMinted, Outcome::Ok)
            .caller("spiffe://example.org/billing", "01ab")
            .tenant(tenant)
            .detail(format!("{i:06} {}", "x".repeat(1200)))
            .request(format!("req-{i}"), "127.0.0.1:5000");
        tasks.push(tokio::spawn(async move { log.append(rec).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The sequence after `events ` in `audit archive`'s line: `archived events A..=S`.
fn archived_range(out: &std::process::Output) -> (i64, i64) {
    let text = stdout(out);
    let range = text.split("archived events ").nth(1).and_then(|r| r.split(' ').next()).unwrap();
    let (a, b) = range.split_once("..=").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Files in the directory whose name holds `partial` (a half-written archive).
fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_round_trip_shrinks_the_live_log_and_verifies_as_one_chain() {
    let f = Files::new();
    let signed = f.append_signed_then(2500, 500, "acme").await;
    let head = f.head();
    let before = audit::log_bytes(&f.audit_db());
    assert!(before > 3_000_000, "the log holds the events ({before} bytes)");

    // Archive up to the newest checkpoint at or below `signed + 99`: the one at `signed`
    // (the log signs at most once a second, and the next one is at the head).
    let a1 = f.s.path("archive-1.db");
    let out = f.archive(&["--through", &(signed + 99).to_string()], &a1);
    assert_ok(&out);
    let (from1, through1) = archived_range(&out);
    assert_eq!(from1, 1);
    assert!(
        signed <= through1 && through1 < signed + 100 && through1 < head,
        "{through1}, signed {signed}, head {head}"
    );
    assert_eq!(std::fs::metadata(&a1).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(partial_files(f.s.dir.path()).is_empty());

    // Shrunk: file plus WAL, on disk.
    let after = audit::log_bytes(&f.audit_db());
    assert!(after * 2 < before, "the live log shrank: {before} -> {after} bytes");
    let conn = audit::open_reader(&f.audit_db()).unwrap();
    let oldest: i64 = conn.query_row("SELECT min(sequence) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(oldest, through1 + 1, "events up to the cut left the live log");
    let archived =
        audit::list(&conn, &AuditFilter { action: Some(Action::AuditArchived), ..Default::default() }, None, 9)
            .unwrap();
    drop(conn);
    assert_eq!(archived.len(), 1);
    let sha: String = sha256_of(&a1).iter().map(|b| format!("{b:02x}")).collect();
    assert!(archived[0].record.detail.contains(&sha), "the record names the archive's SHA-256");
    assert!(archived[0].record.detail.contains("archive-1.db"));
    assert!(archived[0].record.detail.contains(&format!("events 1..={through1}")));
    assert!(archived[0].record.detail.contains("; statement "), "the record carries the signed statement");

    // The live log alone verifies from its anchor and says what it did not verify.
    let out = f.verify(&[], true);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("events 1..={through1} are archived and NOT verified here")),
        "{}",
        stdout(&out)
    );
    // Archive plus live: one chain from 1; the archive alone verifies too.
    let out = f.verify(&[&a1], true);
    assert_ok(&out);
    assert!(stdout(&out).contains("one unbroken chain from sequence 1"), "{}", stdout(&out));
    assert_ok(&f.verify(&[&a1], false));

    // A second period: more events, archived by age; then archives in any order + live.
    f.append(500, "beta").await;
    let a2 = f.s.path("archive-2.db");
    let out = f.archive(&["--before", "0m"], &a2);
    assert_ok(&out);
    let (from2, through2) = archived_range(&out);
    assert_eq!(from2, through1 + 1, "the second archive starts where the first ended");
    let out = f.verify(&[&a2, &a1], true);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("(1..={through1})"))
            && stdout(&out).contains(&format!("({from2}..={through2})"))
    );

    // An archive left out: named, with the missing range.
    assert_fails_with(
        &f.verify(&[&a2], true),
        &["does NOT verify", "archive-2.db", &format!("events 1..={through1} are missing")],
    );
    assert_fails_with(&f.verify(&[&a1], true), &["the live log", &format!("events {from2}..={through2} are missing")]);

    // An event row edited in an archive: the file and the sequence are named.
    let tampered = f.s.path("archive-1-edited.db");
    std::fs::copy(&a1, &tampered).unwrap();
    let c = rusqlite::Connection::open(&tampered).unwrap();
    c.execute("UPDATE events SET tenant_id = 'other' WHERE sequence = 1234", []).unwrap();
    assert!(through1 > 1234);
    drop(c);
    assert_fails_with(
        &f.verify(&[&tampered, &a2], true),
        &["archive-1-edited.db", "first bad sequence 1234", "event 1234: hash does not match"],
    );
    // Its meta edited to claim a shorter range (newest events and checkpoint cut): caught.
    let cut = f.s.path("archive-1-cut.db");
    std::fs::copy(&a1, &cut).unwrap();
    let c = rusqlite::Connection::open(&cut).unwrap();
    c.execute("DELETE FROM events WHERE sequence > 1000", []).unwrap();
    c.execute("DELETE FROM checkpoints WHERE sequence > 1000", []).unwrap();
    drop(c);
    assert_fails_with(&f.verify(&[&cut, &a2], true), &["archive-1-cut.db", "events end at 1000"]);

    // An archive of another log (its own key and chain) does not continue this one.
    let other = Files::new();
    other.append(50, "acme").await;
    let foreign = other.s.path("foreign.db");
    assert_ok(&other.archive(&["--before", "0m"], &foreign));
    let out = f.verify(&[&foreign, &a2], true);
    assert_fails_with(&out, &["does NOT verify", "foreign.db"]);

    // Refusals name the option and change nothing.
    let snapshot = dump(&f.audit_db());
    assert_fails_with(&f.archive(&["--through", "5"], &f.s.path("again.db")), &["--through", "already archived"]);
    assert_fails_with(
        &f.archive(&["--before", "1970-01-02T00:00:00Z"], &f.s.path("x.db")),
        &["--before", "no checkpoint"],
    );
    assert_fails_with(&f.archive(&["--before", "soon"], &f.s.path("x.db")), &["--before", "soon"]);
    assert_fails_with(&f.archive(&["--through", "0"], &f.s.path("x.db")), &["--through"]);
    assert_fails_with(&f.archive(&["--before", "0m"], &a1), &["--out", "exists"]);
    let both = f.archive(&["--through", "9", "--before", "0m"], &f.s.path("x.db"));
    assert!(!both.status.success() && String::from_utf8_lossy(&both.stderr).contains("--before"));
    let neither = f.archive(&[], &f.s.path("x.db"));
    assert!(!neither.status.success() && String::from_utf8_lossy(&neither.stderr).contains("--through"));
    assert_eq!(dump(&f.audit_db()), snapshot, "a refused archive changes nothing");
    assert!(!f.s.path("again.db").exists() && !f.s.path("x.db").exists());
    assert!(partial_files(f.s.dir.path()).is_empty());
}

fn sha256_of(p: &Path) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(p).unwrap()).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_beside_a_running_server_keeps_it_serving_and_verifying() {
    let mut ts = TestServer::start().await;
    ts.register("acme", 0).await;
    let mut tokens = ts.token_client("token-caller").await;
    let get = || pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 };
    for _ in 0..20 {
        tokens.get_access_token(get()).await.unwrap();
    }
    let db = ts.dir.path().join("vault.db");
    let key = ts.dir.path().join("master.key");
    let out = ts.dir.path().join("a1.db");
    let archive = |extra: &[&str]| {
        run_bin(
            &[
                &["--db", db.to_str().unwrap(), "--master-key-file", key.to_str().unwrap(), "audit", "archive"][..],
                extra,
            ]
            .concat(),
            "",
        )
    };
    // --vacuum rewrites the whole file: refused while the server holds the vault.
    let refused = archive(&["--before", "0m", "--out", out.to_str().unwrap(), "--vacuum"]);
    assert!(!refused.status.success());
    assert!(!out.exists());

    // A fresh checkpoint of the server's own newest event: the cut takes exactly the event the
    // server's writer last wrote (and checks before its next append).
    let mut auditor = ts.audit_client("auditor").await;
    let cp = auditor.get_checkpoint(pb::GetCheckpointRequest {}).await.unwrap().into_inner();
    // Token load during the archive, with a reader holding an old snapshot meanwhile (a page
    // being read, the tenant indexer): the archive must never hold the write lock waiting
    // for readers (regression: its WAL checkpoint(TRUNCATE) did, and every request got
    // UNAVAILABLE for up to two seconds).
    let reader = audit::open_reader(&ts.audit_db()).unwrap();
    let pinned = reader.unchecked_transaction().unwrap();
    pinned.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, mut tokens) = (stop.clone(), ts.token_client("token-caller").await);
        tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tokens.get_access_token(get()).await {
                    Ok(_) => ok += 1,
                    Err(e) if e.code() == tonic::Code::Unavailable => unavailable += 1,
                    Err(e) => panic!("{e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (ok, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let args = ["--through".to_owned(), cp.sequence.to_string(), "--out".to_owned(), out.display().to_string()];
    let done = {
        let (db, key) = (db.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_bin(
                &[
                    &["--db", db.to_str().unwrap(), "--master-key-file", key.to_str().unwrap(), "audit", "archive"][..],
                    &args[..],
                ]
                .concat(),
                "",
            )
        })
        .await
        .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, unavailable) = load.await.unwrap();
    drop(pinned);
    drop(reader);
    assert_ok(&done);
    assert!(ok > 5, "tokens flowed during the archive ({ok})");
    assert_eq!(unavailable, 0, "requests failed UNAVAILABLE during the archive ({ok} succeeded)");
    let (_, through) = archived_range(&done);
    assert_eq!(through, cp.sequence);

    // The server keeps appending (its writer accepts that its older rows were archived).
    for _ in 0..5 {
        tokens.get_access_token(get()).await.unwrap();
    }
    let v = auditor.verify_audit_log(pb::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(v.ok, "{v:?}");
    assert!(v.detail.contains(&format!("events 1..={through} are archived")), "{}", v.detail);

    // A watch from sequence 1 starts after the anchor.
    let mut stream =
        auditor.watch_audit_events(pb::WatchAuditEventsRequest { from_sequence: 1 }).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.sequence, through + 1);
    drop(stream);

    // Tenant-filtered pages answer from the live events only.
    let page = auditor
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant_id: "acme".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.events.is_empty() && page.events.iter().all(|e| e.sequence > through));

    // The log size metric, and the oldest sequence it holds.
    let metrics = format!("http://{}/metrics", ts.server().metrics_addr.unwrap());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        let value = |name: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap().parse().unwrap()
        };
        let bytes = value("pogo_vault_audit_log_bytes");
        assert!(bytes >= audit::log_bytes(&ts.audit_db()) as f64 / 4.0 && bytes > 0.0);
        if value("pogo_vault_audit_oldest_sequence") == (through + 1) as f64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "oldest sequence not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ts.stop().await;

    // Offline: archive plus live log, one chain, after the server stopped.
    let public = ts.dir.path().join("audit.pub");
    std::fs::write(&public, audit::encode_public_key(&audit_verifying_key(&ts.vault()))).unwrap();
    let v = run_bin(
        &[
            "--audit-db",
            ts.audit_db().to_str().unwrap(),
            "audit",
            "verify",
            "--public-key",
            public.to_str().unwrap(),
            "--archive",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert_ok(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_index_drops_archived_rows_without_a_rebuild() {
    let f = Files::new();
    let log = AuditLog::open(&f.audit_db(), f.vault().audit_signing_key().unwrap(), AuditConfig::default()).unwrap();
    append_to(&log, 200, "acme").await;
    let wait_indexed = |head: i64| {
        let log = log.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while log.tenant_index_through() < head {
                assert!(std::time::Instant::now() < deadline, "index stuck at {}", log.tenant_index_through());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_indexed(f.head()).await;
    log.checkpoint_now().await.unwrap();
    let out = f.archive(&["--before", "0m"], &f.s.path("a.db"));
    assert_ok(&out);
    let (_, through) = archived_range(&out);
    append_to(&log, 20, "acme").await;
    wait_indexed(f.head()).await;
    assert_eq!(log.tenant_index_rebuilds(), 0, "archived rows are not damage");
    let index = rusqlite::Connection::open(audit::tenant_index_path(&f.audit_db())).unwrap();
    let left: i64 =
        index.query_row("SELECT count(*) FROM tenant_events WHERE sequence <= ?1", [through], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "index rows of archived events are dropped");
    let page =
        log.list(AuditFilter { tenant_id: Some("acme".into()), ..Default::default() }, None, 1000).await.unwrap();
    assert_eq!(page.len(), 20);
    assert!(page.iter().all(|e| e.sequence > through));
    log.shutdown().await;
}

/// `audit verify --public-key` (offline) of a test server's audit log, with `archives`.
fn offline_verify(ts: &TestServer, archives: &[&Path]) -> std::process::Output {
    let public = ts.dir.path().join("audit.pub");
    std::fs::write(&public, audit::encode_public_key(&audit_verifying_key(&ts.vault()))).unwrap();
    let db = ts.audit_db();
    let mut args =
        vec!["--audit-db", db.to_str().unwrap(), "audit", "verify", "--public-key", public.to_str().unwrap()];
    for a in archives {
        args.extend(["--archive", a.to_str().unwrap()]);
    }
    run_bin(&args, "")
}

/// Regression: a forged `archives` row (any sequence, any hash) made a running writer accept
/// that its newest events were deleted, chain new events from the older head and sign them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_anchor_does_not_let_a_running_writer_sign_over_deleted_newest_events() {
    let mut ts = TestServer::start().await;
    ts.register("acme", 0).await;
    let mut tokens = ts.token_client("token-caller").await;
    let get = || pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 };
    for _ in 0..10 {
        tokens.get_access_token(get()).await.unwrap();
    }
    let mut auditor = ts.audit_client("auditor").await;
    auditor.get_checkpoint(pb::GetCheckpointRequest {}).await.unwrap();

    // With write access to the file: a forged anchor, and the newest three events deleted
    // (in one transaction, so they include the newest the server's writer committed).
    let mut c = rusqlite::Connection::open(ts.audit_db()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let head: i64 = tx.query_row("SELECT max(sequence) FROM events", [], |r| r.get(0)).unwrap();
    tx.execute(
        "INSERT INTO archives (through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms) \
         VALUES (?1, 1, zeroblob(32), zeroblob(32), 'forged.db', 0)",
        [1_i64 << 40],
    )
    .unwrap();
    tx.execute("DELETE FROM events WHERE sequence > ?1", [head - 3]).unwrap();
    tx.commit().unwrap();
    drop(c);

    // The next commit fails closed, and so does everything after it.
    let e = auditor.get_checkpoint(pb::GetCheckpointRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let e = tokens.get_access_token(get()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let c = audit::open_reader(&ts.audit_db()).unwrap();
    let now: i64 = c.query_row("SELECT max(sequence) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(now, head - 3, "nothing was chained from the older head");
    drop(c);
    ts.stop().await;
    let v = offline_verify(&ts, &[]);
    assert!(!v.status.success(), "offline verify must not pass: {}", stdout(&v));
    assert!(String::from_utf8_lossy(&v.stderr).contains(&format!("archive anchor at {}", 1_i64 << 40)));
}

/// A copy of `f`'s audit log with `tamper` applied, and `audit verify` of it (live log alone).
fn verify_tampered_copy(f: &Files, name: &str, tamper: &str) -> std::process::Output {
    let copy = f.s.path(name);
    let c = audit::open_reader(&f.audit_db()).unwrap();
    c.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    drop(c);
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(tamper).unwrap();
    drop(c);
    let key = f.public_key();
    run_bin(&["--audit-db", copy.to_str().unwrap(), "audit", "verify", "--public-key", key.to_str().unwrap()], "")
}

/// Regression: the live log verified alone trusted its archive anchor, so moving the anchor to
/// any event S (its hash is event S+1's prev_hash) and deleting events 1..=S verified OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_or_forged_anchor_fails_verification_of_the_live_log() {
    let f = Files::new();
    let signed = f.append_signed_then(60, 20, "acme").await;
    assert_ok(&f.verify(&[], true));
    let forge = |s: i64, delete: bool| {
        format!(
            "INSERT INTO archives (through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms) \
             SELECT {s}, 1, prev_hash, zeroblob(32), 'forged.db', 0 FROM events WHERE sequence = {s} + 1; {}",
            if delete {
                format!("DELETE FROM events WHERE sequence <= {s}; DELETE FROM checkpoints WHERE sequence < {s};")
            } else {
                String::new()
            }
        )
    };
    // At an event no checkpoint signs: the anchor is named.
    assert!(signed > 30);
    let out = verify_tampered_copy(&f, "moved.db", &forge(30, true));
    assert_fails_with(&out, &["does NOT verify", "archive anchor at 30", "no signed checkpoint at 30"]);
    // At a signed checkpoint, oldest events deleted: no audit_archived record names the range.
    let out = verify_tampered_copy(&f, "cut.db", &forge(signed, true));
    assert_fails_with(&out, &["does NOT verify", &format!("archive anchor at {signed} is not recorded in the log")]);
    // Forged, with the events left in place.
    let out = verify_tampered_copy(&f, "kept.db", &forge(signed, false));
    assert_fails_with(&out, &["does NOT verify", &format!("archive anchor at {signed} is not recorded in the log")]);
}

/// Regression: the tenant indexer dropped index rows up to any `archives` row, so a forged
/// anchor (no event deleted) hid every live event from tenant-filtered queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_anchor_does_not_hide_events_from_tenant_queries() {
    let f = Files::new();
    let log = AuditLog::open(&f.audit_db(), f.vault().audit_signing_key().unwrap(), AuditConfig::default()).unwrap();
    append_to(&log, 100, "acme").await;
    let wait_indexed = |head: i64| {
        let log = log.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while log.tenant_index_through() < head {
                assert!(std::time::Instant::now() < deadline, "index stuck at {}", log.tenant_index_through());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_indexed(f.head()).await;
    let c = rusqlite::Connection::open(f.audit_db()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute(
        "INSERT INTO archives (through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms) \
         VALUES (?1, 1, zeroblob(32), zeroblob(32), 'forged.db', 0)",
        [1_i64 << 40],
    )
    .unwrap();
    drop(c);
    append_to(&log, 20, "acme").await;
    // Indexed past the new events: a step ran after the forged row was written.
    wait_indexed(f.head()).await;
    let page =
        log.list(AuditFilter { tenant_id: Some("acme".into()), ..Default::default() }, None, 1000).await.unwrap();
    assert_eq!(page.len(), 120, "every live event is listed");
    let index = rusqlite::Connection::open(audit::tenant_index_path(&f.audit_db())).unwrap();
    let rows: i64 = index.query_row("SELECT count(*) FROM tenant_events", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 120);
    assert_eq!(log.tenant_index_rebuilds(), 0, "the index prunes by the events the log holds, not by anchors");
    log.shutdown().await;
}

/// Regression: a `kill -9` during `audit archive` left `.NAME.partial-PID` (and its journal)
/// for good; the next run for the same `--out` removes those of dead processes. A complete
/// `--out` that no record names (killed before the commit point) is named "not recorded"
/// by verification, not reported as a confusing overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_archive_leaves_nothing_that_counts() {
    let f = Files::new();
    f.append(100, "acme").await;
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let live = std::process::id();
    for name in
        [format!(".a.db.partial-{dead}"), format!(".a.db.partial-{dead}-journal"), format!(".a.db.partial-{live}")]
    {
        std::fs::write(f.s.path(&name), b"half an archive").unwrap();
    }

    // What a run killed between writing `--out` and recording it leaves: a complete file
    // (here: made from a copy of the log, so the real log never records it).
    let copy = f.s.path("copy-audit.db");
    let c = audit::open_reader(&f.audit_db()).unwrap();
    c.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    drop(c);
    rusqlite::Connection::open(&copy).unwrap().pragma_update(None, "journal_mode", "WAL").unwrap();
    let stray = f.s.path("stray.db");
    assert_ok(&f.s.run_k(
        &["--audit-db", copy.to_str().unwrap(), "audit", "archive", "--before", "0m", "--out", stray.to_str().unwrap()],
        "",
    ));

    let a = f.s.path("a.db");
    assert_ok(&f.archive(&["--before", "0m"], &a));
    let mut left = partial_files(f.s.dir.path());
    left.sort();
    assert_eq!(left, vec![format!(".a.db.partial-{live}")], "only the partial of a running process stays");

    assert_ok(&f.verify(&[&a], true));
    assert_fails_with(&f.verify(&[&stray, &a], true), &["does NOT verify", "stray.db is not recorded in the log"]);
}

/// Appends `rec` to the audit database as someone without the signing key can: a row chained
/// onto the head (the chain's encoding is public), no checkpoint. Returns its sequence.
fn forge_event(c: &rusqlite::Connection, rec: &AuditRecord) -> i64 {
    let (head, prev): (i64, Vec<u8>) = c
        .query_row("SELECT sequence, hash FROM events ORDER BY sequence DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let prev: [u8; 32] = prev.try_into().unwrap();
    let (seq, time_ms) = (head + 1, 1_700_000_000_000_i64);
    let hash = audit::hash_record(&prev, seq, time_ms, rec);
    c.execute(
        "INSERT INTO events (sequence, time_ms, caller, caller_serial, action, tenant_id, key_version, outcome, \
         upstream_status, token_fingerprint, detail, request_id, peer, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6, NULL, NULL, ?7, ?8, ?9, ?10, ?11)",
        rusqlite::params![
            seq,
            time_ms,
            rec.caller,
            rec.caller_serial,
            rec.action.as_str(),
            rec.outcome.as_str(),
            rec.detail,
            rec.request_id,
            rec.peer,
            &prev[..],
            &hash[..]
        ],
    )
    .unwrap();
    seq
}

/// What an attacker with the file writes to pass a deletion of events `1..=s` off as an
/// archive: an `archives` row at the real checkpoint `s`, and an `audit_archived` record in
/// the format `audit archive` writes, with `statement` (hex) when given; `"old"` for the
/// format of the build that had no statements (what the reported attack used).
fn forge_archive(c: &rusqlite::Connection, s: i64, statement: Option<&str>) {
    let hash: Vec<u8> = c.query_row("SELECT hash FROM events WHERE sequence = ?1", [s], |r| r.get(0)).unwrap();
    let hash_hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    c.execute(
        "INSERT INTO archives (through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms) \
         VALUES (?1, 1, ?2, zeroblob(32), 'forged.db', 0)",
        rusqlite::params![s, hash],
    )
    .unwrap();
    let zeros = "00".repeat(32);
    let detail = if statement == Some("old") {
        format!(
            "events 1..={s} ({s} events, up to the checkpoint signed 2026-12-01T00:00:00Z) archived to forged.db \
             (sha256 {zeros}); the live log continues from event {s} (hash {hash_hex})"
        )
    } else {
        let statement = statement.map(|st| format!("; statement {st}")).unwrap_or_default();
        format!(
            "events 1..={s} ({s} events, up to the checkpoint signed 2026-12-01T00:00:00Z; hash {hash_hex}; sha256 {}{statement}) \
         archived to forged.db; the live log continues from event {s}",
            zeros
        )
    };
    forge_event(
        c,
        &AuditRecord::new(Action::AuditArchived, Outcome::Ok)
            .caller("operator", "")
            .detail(detail)
            .request("r", "local"),
    );
}

/// Regression: an attacker with write access to the audit database deleted events up to a
/// real checkpoint, added an `archives` row there and an `audit_archived` record naming the
/// range, and had a server sign the record (it signs the unsigned tail it finds at start):
/// `audit verify` of the live log then said OK, "events 1..=S are archived". An archive now
/// counts only with its statement signed by the audit key, which the attacker cannot make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_dressed_up_as_an_archive_fails_verification_even_when_signed_over() {
    for (name, statement) in [("old", Some("old".to_owned())), ("none", None), ("garbage", Some("ab".repeat(64)))] {
        let f = Files::new();
        let signed = f.append_signed_then(60, 20, "acme").await;
        let mut c = rusqlite::Connection::open(f.audit_db()).unwrap();
        let tx = c.transaction().unwrap();
        forge_archive(&tx, signed, statement.as_deref());
        tx.execute("DELETE FROM events WHERE sequence <= ?1", [signed]).unwrap();
        tx.execute("DELETE FROM checkpoints WHERE sequence < ?1", [signed]).unwrap();
        tx.commit().unwrap();
        drop(c);
        // A server starts on it and signs the tail (the forged record) on the record.
        let log =
            AuditLog::open(&f.audit_db(), f.vault().audit_signing_key().unwrap(), AuditConfig::default()).unwrap();
        append_to(&log, 5, "acme").await;
        log.checkpoint_now().await.unwrap();
        log.shutdown().await;
        let out = f.verify(&[], true);
        let expected: &[&str] = match name {
            "garbage" => &["does NOT verify", "audit_archived record whose statement does not verify", "(forged)"],
            _ => &["does NOT verify", &format!("archive anchor at {signed} is not recorded in the log")],
        };
        assert_fails_with(&out, expected);
        eprintln!("{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Regression: a running server chained its next records onto events inserted by hand after
/// its newest (say, a forged `audit_archived` record) and signed them. Now events after its
/// own count only under a checkpoint signed with its key (what every command writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_does_not_sign_over_events_inserted_by_hand() {
    let mut ts = TestServer::start().await;
    ts.register("acme", 0).await;
    let mut tokens = ts.token_client("token-caller").await;
    let get = || pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 };
    tokens.get_access_token(get()).await.unwrap();
    let mut auditor = ts.audit_client("auditor").await;
    auditor.get_checkpoint(pb::GetCheckpointRequest {}).await.unwrap();

    let c = rusqlite::Connection::open(ts.audit_db()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let forged = forge_event(
        &c,
        &AuditRecord::new(Action::TenantDeleted, Outcome::Ok).caller("someone", "").detail("x").request("r", "local"),
    );
    drop(c);
    // The next awaited record fails closed, and then repeats too (the log is unhealthy).
    let e = auditor.get_checkpoint(pb::GetCheckpointRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let e = tokens.get_access_token(get()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    ts.stop().await;
    let c = audit::open_reader(&ts.audit_db()).unwrap();
    let (head, signed): (i64, i64) = c
        .query_row("SELECT (SELECT max(sequence) FROM events), (SELECT max(sequence) FROM checkpoints)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(head, forged, "nothing was chained onto the inserted event");
    assert!(signed < forged, "no checkpoint covers it");
}

/// Regression: an operator's `audit archive` on top of a forged anchor recorded a real
/// statement from there on (laundering the forged range), and one over edited rows signed
/// the edit away. `audit archive` now verifies the live log first and refuses; and every
/// `archives` row must carry a valid statement, the rows unbroken from event 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_refuses_a_log_that_does_not_verify_and_every_archive_row_must_be_signed() {
    let f = Files::new();
    let signed = f.append_signed_then(60, 20, "acme").await;
    // On top of a forged anchor: refused, nothing changed.
    let c = rusqlite::Connection::open(f.audit_db()).unwrap();
    let hash: Vec<u8> = c.query_row("SELECT hash FROM events WHERE sequence = ?1", [signed], |r| r.get(0)).unwrap();
    c.execute(
        "INSERT INTO archives (through_sequence, from_sequence, head_hash, sha256, file_name, archived_ms) \
         VALUES (?1, 1, ?2, zeroblob(32), 'forged.db', 0)",
        rusqlite::params![signed, hash],
    )
    .unwrap();
    c.execute("DELETE FROM events WHERE sequence <= ?1", [signed]).unwrap();
    drop(c);
    f.append(30, "acme").await;
    let before = dump(&f.audit_db());
    let a = f.s.path("a.db");
    assert_fails_with(
        &f.archive(&["--before", "0m"], &a),
        &["was not archived", "does not verify", &format!("archive anchor at {signed} is not recorded")],
    );
    assert!(!a.exists());
    assert_eq!(dump(&f.audit_db()), before, "nothing changed");

    // Over an edited row (the stored hash left as it was): refused too.
    let f = Files::new();
    f.append_signed_then(60, 20, "acme").await;
    let c = rusqlite::Connection::open(f.audit_db()).unwrap();
    c.execute("UPDATE events SET tenant_id = 'other' WHERE sequence = 10", []).unwrap();
    drop(c);
    assert_fails_with(&f.archive(&["--before", "0m"], &a), &["was not archived", "event 10: hash does not match"]);
    assert!(!a.exists());

    // A real archive whose row's statement is then replaced: the live log alone fails.
    let f = Files::new();
    f.append_signed_then(60, 20, "acme").await;
    assert_ok(&f.archive(&["--before", "0m"], &a));
    assert_ok(&f.verify(&[], true));
    let c = rusqlite::Connection::open(f.audit_db()).unwrap();
    c.execute("UPDATE archive_statements SET signature = zeroblob(64)", []).unwrap();
    drop(c);
    assert_fails_with(&f.verify(&[], true), &["does NOT verify", "without a statement signed by the vault's key"]);
}

/// Regression (review): the indexer dropped the rows of events deleted by hand; put back
/// unchanged (the chain verifies again), they stayed missing from tenant pages, since the
/// watermark still matched. The index remembers the oldest event it has seen (its floor):
/// older events back in the log make queries scan and the index start over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_put_back_after_a_deletion_are_listed_again_for_their_tenant() {
    let f = Files::new();
    let log = AuditLog::open(&f.audit_db(), f.vault().audit_signing_key().unwrap(), AuditConfig::default()).unwrap();
    append_to(&log, 100, "acme").await;
    log.checkpoint_now().await.unwrap();
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let head = f.head();
    wait("the index", &|| log.tenant_index_through() >= head);
    let index_floor = || {
        rusqlite::Connection::open(audit::tenant_index_path(&f.audit_db()))
            .and_then(|c| c.query_row("SELECT floor FROM indexed", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    let c = rusqlite::Connection::open(f.audit_db()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch(
        "CREATE TEMP TABLE saved AS SELECT * FROM events WHERE sequence <= 50; \
         DELETE FROM events WHERE sequence <= 50;",
    )
    .unwrap();
    wait("the rows of the deleted events to be dropped", &|| index_floor() == 51);
    c.execute_batch("INSERT INTO events SELECT * FROM temp.saved;").unwrap();
    drop(c);
    let filter = AuditFilter { tenant_id: Some("acme".into()), ..Default::default() };
    let page = log.list(filter.clone(), None, 1000).await.unwrap();
    assert_eq!(page.len(), 100, "every event is listed at once (the query scans)");
    wait("the index to start over", &|| index_floor() <= 1);
    wait("the index", &|| log.tenant_index_through() >= head);
    assert_eq!(log.list(filter, None, 1000).await.unwrap().len(), 100);
    log.shutdown().await;
}
