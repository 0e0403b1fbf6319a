#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The tamper suite: an attacker with write access to the audit database file (but not the
//! signing key) edits it; the security team runs the real `pogo-vault audit verify` with the
//! public key, a witness file, or neither. Every case exits non-zero with a message that
//! names what is wrong; `--allow-unsigned-tail` turns only the unsigned-tail case into a
//! warning. The attacker's hashes come from the encoding in the `audit` module docs,
//! implemented here independently (SHA-256 needs no key).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{assert_fails_with, run_bin, stdout};
use ed25519_dalek::SigningKey;
use pogo_vault::audit::{Action, AuditConfig, AuditLog, AuditRecord, Checkpoint, Outcome};
use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

struct Log {
    _dir: tempfile::TempDir,
    db: PathBuf,
    public_key: PathBuf,
    witness: PathBuf,
}

impl Log {
    fn path(&self, name: &str) -> PathBuf {
        self._dir.path().join(name)
    }

    fn sql(&self, statements: &str) {
        Connection::open(&self.db).unwrap().execute_batch(statements).unwrap();
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "--db",
            self.db.to_str().unwrap(),
            "audit",
            "verify",
            "--public-key",
            self.public_key.to_str().unwrap(),
        ];
        args.extend(extra);
        run_bin(&args, "")
    }

    fn with_witness(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--witness", self.witness.to_str().unwrap()];
        args.extend(extra);
        self.verify(&args)
    }
}

fn rec(i: usize) -> AuditRecord {
    AuditRecord::new(Action::TokenMinted, Outcome::Ok)
        .caller(format!("spiffe://example.org/svc-{}", i % 3), "0a1b")
        .tenant(format!("tenant-{}", i % 4))
        .key_version(1)
        .upstream_status(200)
        .detail(format!("event {i}"))
        .request(format!("req-{i}"), "127.0.0.1:4000")
}

/// A genuine log of `n` events, signed checkpoints at 1 (first batch), at each of
/// `checkpoints` and at `n` (shutdown). The witness file holds every checkpoint after the
/// first, one JSON per line, as `[audit.witness.file]` writes them.
async fn genuine(n: usize, checkpoints: &[usize]) -> Log {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let cfg = AuditConfig { checkpoint_interval: Duration::from_secs(3600), ..AuditConfig::default() };
    let log = AuditLog::open(&db, key(), cfg).unwrap();
    let mut witnessed = Vec::new();
    for i in 1..=n {
        log.append(rec(i)).await.unwrap();
        if checkpoints.contains(&i) {
            witnessed.push(log.checkpoint_now().await.unwrap());
        }
    }
    log.shutdown().await;
    let conn = pogo_vault::audit::open_reader(&db).unwrap();
    let last = pogo_vault::audit::latest_checkpoint(&conn).unwrap().unwrap();
    drop(conn);
    assert_eq!(last.sequence, n as i64, "shutdown signed the head");
    if witnessed.last() != Some(&last) {
        witnessed.push(last);
    }
    let witness = dir.path().join("witness.jsonl");
    let lines: String = witnessed.iter().map(|c| format!("{}\n", c.to_json())).collect();
    std::fs::write(&witness, lines).unwrap();
    let public_key = dir.path().join("audit.pub");
    std::fs::write(&public_key, pogo_vault::audit::encode_public_key(&key().verifying_key())).unwrap();
    Log { _dir: dir, db, public_key, witness }
}

/// An event row as the attacker reads it from the file.
#[derive(Debug, Clone)]
struct Row {
    sequence: i64,
    time_ms: i64,
    caller: String,
    caller_serial: String,
    action: String,
    tenant_id: Option<String>,
    key_version: Option<i64>,
    outcome: String,
    upstream_status: Option<i64>,
    token_fingerprint: Option<String>,
    detail: String,
    request_id: String,
    peer: String,
    hash: Vec<u8>,
}

fn rows(conn: &Connection) -> Vec<Row> {
    let mut s = conn
        .prepare(
            "SELECT sequence, time_ms, caller, caller_serial, action, tenant_id, key_version, outcome, \
             upstream_status, token_fingerprint, detail, request_id, peer, hash FROM events ORDER BY sequence",
        )
        .unwrap();
    s.query_map([], |r| {
        Ok(Row {
            sequence: r.get(0)?,
            time_ms: r.get(1)?,
            caller: r.get(2)?,
            caller_serial: r.get(3)?,
            action: r.get(4)?,
            tenant_id: r.get(5)?,
            key_version: r.get(6)?,
            outcome: r.get(7)?,
            upstream_status: r.get(8)?,
            token_fingerprint: r.get(9)?,
            detail: r.get(10)?,
            request_id: r.get(11)?,
            peer: r.get(12)?,
            hash: r.get(13)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// `SHA-256(prev ‖ E)` with `E` as the `audit` module docs spell it out.
fn attacker_hash(prev: &[u8], r: &Row) -> [u8; 32] {
    fn text(h: &mut Sha256, s: &str) {
        h.update((s.len() as u32).to_be_bytes());
        h.update(s.as_bytes());
    }
    fn opt_text(h: &mut Sha256, s: &Option<String>) {
        match s {
            None => h.update([0]),
            Some(s) => {
                h.update([1]);
                text(h, s);
            }
        }
    }
    fn opt_int(h: &mut Sha256, v: Option<i64>) {
        match v {
            None => h.update([0]),
            Some(v) => {
                h.update([1]);
                h.update(v.to_be_bytes());
            }
        }
    }
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b"pogo-vault audit v1 event\0");
    h.update(r.sequence.to_be_bytes());
    h.update(r.time_ms.to_be_bytes());
    text(&mut h, &r.caller);
    text(&mut h, &r.caller_serial);
    text(&mut h, &r.action);
    opt_text(&mut h, &r.tenant_id);
    opt_int(&mut h, r.key_version);
    text(&mut h, &r.outcome);
    opt_int(&mut h, r.upstream_status);
    opt_text(&mut h, &r.token_fingerprint);
    text(&mut h, &r.detail);
    text(&mut h, &r.request_id);
    text(&mut h, &r.peer);
    h.finalize().into()
}

/// Rewrites the detail of every event from `from` on and recomputes the chain, as an
/// attacker who knows the encoding but not the key would.
fn rewrite_from(db: &Path, from: i64) {
    let conn = Connection::open(db).unwrap();
    let all = rows(&conn);
    let mut prev = all.iter().find(|r| r.sequence == from - 1).map_or(vec![0; 32], |r| r.hash.clone());
    for mut r in all.into_iter().filter(|r| r.sequence >= from) {
        r.detail = format!("rewritten {}", r.sequence);
        let hash = attacker_hash(&prev, &r);
        conn.execute(
            "UPDATE events SET detail = ?1, prev_hash = ?2, hash = ?3 WHERE sequence = ?4",
            params![r.detail, &prev[..], &hash[..], r.sequence],
        )
        .unwrap();
        prev = hash.to_vec();
    }
}

fn assert_warns(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "expected success with a warning: {err}");
    assert!(err.starts_with("warning: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "warning {err:?} does not mention {n:?}");
    }
}

#[tokio::test]
async fn untouched_log_verifies_strictly_with_and_without_its_witness() {
    let log = genuine(40, &[20]).await;
    let out = log.verify(&[]);
    common::assert_ok(&out);
    assert!(stdout(&out).contains("the head is signed"), "{}", stdout(&out));
    let out = log.with_witness(&[]);
    common::assert_ok(&out);
    assert!(stdout(&out).contains("2 witnessed checkpoints checked"), "{}", stdout(&out));
}

#[tokio::test]
async fn the_attackers_encoding_matches_the_stored_hashes() {
    // The attacker model of this suite is real: the documented encoding reproduces the log.
    let log = genuine(5, &[]).await;
    let all = rows(&Connection::open(&log.db).unwrap());
    let mut prev = vec![0u8; 32];
    for r in &all {
        assert_eq!(attacker_hash(&prev, r).to_vec(), r.hash, "event {}", r.sequence);
        prev = r.hash.clone();
    }
}

#[tokio::test]
async fn deleting_all_checkpoints_fails_even_with_allow_unsigned_tail() {
    let log = genuine(40, &[20]).await;
    log.sql("DELETE FROM checkpoints");
    let needles = ["does NOT verify", "40 events but no signed checkpoint", "checkpoints deleted"];
    assert_fails_with(&log.verify(&[]), &needles);
    assert_fails_with(&log.verify(&["--allow-unsigned-tail"]), &needles);
}

#[tokio::test]
async fn a_log_with_no_checkpoint_fails() {
    // A log forged from scratch: a valid chain nobody signed.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    AuditLog::open(&db, key(), AuditConfig::default()).unwrap().shutdown().await;
    let conn = Connection::open(&db).unwrap();
    let mut prev = vec![0u8; 32];
    for seq in 1..=5i64 {
        let r = Row {
            sequence: seq,
            time_ms: 1_700_000_000_000 + seq,
            caller: "spiffe://example.org/svc".into(),
            caller_serial: String::new(),
            action: "token_minted".into(),
            tenant_id: Some("acme".into()),
            key_version: Some(1),
            outcome: "ok".into(),
            upstream_status: Some(200),
            token_fingerprint: None,
            detail: "forged".into(),
            request_id: format!("r{seq}"),
            peer: "127.0.0.1:1".into(),
            hash: Vec::new(),
        };
        let hash = attacker_hash(&prev, &r);
        conn.execute(
            "INSERT INTO events (sequence, time_ms, caller, caller_serial, action, tenant_id, key_version, outcome, \
             upstream_status, token_fingerprint, detail, request_id, peer, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                r.sequence,
                r.time_ms,
                r.caller,
                r.caller_serial,
                r.action,
                r.tenant_id,
                r.key_version,
                r.outcome,
                r.upstream_status,
                r.token_fingerprint,
                r.detail,
                r.request_id,
                r.peer,
                &prev[..],
                &hash[..]
            ],
        )
        .unwrap();
        prev = hash.to_vec();
    }
    drop(conn);
    let public_key = dir.path().join("audit.pub");
    std::fs::write(&public_key, pogo_vault::audit::encode_public_key(&key().verifying_key())).unwrap();
    for extra in [&[][..], &["--allow-unsigned-tail"][..]] {
        let mut args =
            vec!["--db", db.to_str().unwrap(), "audit", "verify", "--public-key", public_key.to_str().unwrap()];
        args.extend(extra);
        assert_fails_with(&run_bin(&args, ""), &["does NOT verify", "5 events but no signed checkpoint"]);
    }
}

#[tokio::test]
async fn deleting_the_tail_and_its_checkpoints_is_caught_with_the_witness() {
    let log = genuine(40, &[20]).await;
    // Cut back to a checkpoint: the rest looks complete and signed...
    let cut = log.path("cut.db");
    std::fs::copy(&log.db, &cut).unwrap();
    let wal = PathBuf::from(format!("{}-wal", log.db.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", cut.display())).unwrap();
    }
    Connection::open(&cut)
        .unwrap()
        .execute_batch("DELETE FROM events WHERE sequence > 20; DELETE FROM checkpoints WHERE sequence > 20;")
        .unwrap();
    let run = |db: &Path, extra: &[&str]| {
        let mut args =
            vec!["--db", db.to_str().unwrap(), "audit", "verify", "--public-key", log.public_key.to_str().unwrap()];
        args.extend(extra);
        run_bin(&args, "")
    };
    common::assert_ok(&run(&cut, &[]));
    // ...except against the witness, which saw the checkpoint at 40.
    let witness = log.witness.to_str().unwrap();
    assert_fails_with(
        &run(&cut, &["--witness", witness]),
        &["does NOT verify", "line 2) at 40 but the log ends at 20 (newest events deleted)"],
    );

    // Cut in the middle: strict verify sees the unsigned tail; the witness names the cut.
    log.sql("DELETE FROM events WHERE sequence >= 35; DELETE FROM checkpoints WHERE sequence >= 35;");
    assert_fails_with(
        &log.verify(&[]),
        &["first bad sequence 21", "14 events after the last signed checkpoint (at 20)", "from sequence 21 to 34"],
    );
    assert_warns(&log.verify(&["--allow-unsigned-tail"]), &["could have been cut or rewritten undetected"]);
    assert_fails_with(
        &log.with_witness(&["--allow-unsigned-tail"]),
        &["at 40 but the log ends at 34 (newest events deleted)"],
    );
}

#[tokio::test]
async fn rewriting_the_tail_after_the_last_checkpoint_is_caught() {
    let log = genuine(30, &[20]).await;
    // With the signed head left in place, the recomputed chain disagrees with it.
    rewrite_from(&log.db, 25);
    assert_fails_with(
        &log.verify(&[]),
        &["first bad sequence 21", "checkpoint at 30: the log's hash at 30 differs from the signed one"],
    );
    // The attacker removes that checkpoint too: what is left is an unsigned tail.
    log.sql("DELETE FROM checkpoints WHERE sequence > 20");
    assert_fails_with(
        &log.verify(&[]),
        &["10 events after the last signed checkpoint (at 20)", "from sequence 21 to 30", "cut or rewritten"],
    );
    // Allowing an unsigned tail says exactly that nothing proves those events.
    assert_warns(
        &log.verify(&["--allow-unsigned-tail"]),
        &["10 events after the last signed checkpoint (at 20)", "could have been cut or rewritten undetected"],
    );
    // The witness saw the genuine head at 30.
    assert_fails_with(
        &log.with_witness(&["--allow-unsigned-tail"]),
        &["at 30: the log's hash at 30 differs from the witnessed one"],
    );
}

#[tokio::test]
async fn a_checkpoint_with_a_bad_signature_fails() {
    let log = genuine(30, &[20]).await;
    log.sql("UPDATE checkpoints SET signature = zeroblob(64) WHERE sequence = 20");
    let needles = ["first bad sequence 20", "checkpoint at 20: signature does not verify"];
    assert_fails_with(&log.verify(&[]), &needles);
    assert_fails_with(&log.verify(&["--allow-unsigned-tail"]), &needles);
}

#[tokio::test]
async fn a_forged_or_malformed_witness_line_is_named() {
    let log = genuine(10, &[5]).await;
    let forged = Checkpoint::sign(5, [7; 32], 1_700_000_000_000, &SigningKey::from_bytes(&[1; 32]));
    std::fs::write(&log.witness, format!("{}\n", forged.to_json())).unwrap();
    assert_fails_with(&log.with_witness(&[]), &["witnessed checkpoint", "line 1) at 5 does not verify"]);
    std::fs::write(&log.witness, "{\"sequence\": 1}\n").unwrap();
    assert_fails_with(&log.with_witness(&[]), &["witness file", "line 1"]);
    std::fs::remove_file(&log.witness).unwrap();
    assert_fails_with(&log.with_witness(&[]), &["witness file", "cannot read", "witness.jsonl"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_verify_is_strict_and_a_running_writer_never_signs_over_an_edit() {
    use common::server::TestServer;
    use pogo_vault::proto::v1 as pb;

    let mut ts = TestServer::start().await;
    ts.register("acme", 0).await;
    let mut tokens = ts.token_client("token-caller").await;
    let get = || pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 };
    for _ in 0..5 {
        tokens.get_access_token(get()).await.unwrap();
    }
    let mut auditor = ts.audit_client("auditor").await;
    // A live log: the server signs its head first, so nothing it holds is unsigned.
    let r = auditor.verify_audit_log(pb::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(r.ok && r.unsigned_events == 0 && r.warning.is_empty(), "{r:?}");

    // A genuinely signed checkpoint beyond the end of the log (newest events cut): not ok.
    let key = ts.vault().audit_signing_key().unwrap();
    let far = Checkpoint::sign(1000, [9; 32], 1_700_000_000_000, &key);
    let far = pb::Checkpoint {
        sequence: far.sequence,
        head_hash: far.head_hash.iter().map(|b| format!("{b:02x}")).collect(),
        time: Some(prost_types::Timestamp { seconds: far.time_ms / 1000, nanos: 0 }),
        key_id: far.key_id.clone(),
        signature: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, far.signature),
    };
    let r = auditor
        .verify_audit_log(pb::VerifyAuditLogRequest {
            checkpoint: Some(far),
            allow_unsigned_tail: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.ok && r.detail.contains("kept checkpoint at 1000 but the log ends at"), "{r:?}");

    // A stored checkpoint's signature edited: not ok, named.
    Connection::open(ts.audit_db())
        .unwrap()
        .execute_batch("UPDATE checkpoints SET signature = zeroblob(64) WHERE sequence = 1")
        .unwrap();
    let r = auditor.verify_audit_log(pb::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(!r.ok && r.first_bad_sequence == 1, "{r:?}");
    assert!(r.detail.contains("checkpoint at 1: signature does not verify"), "{}", r.detail);

    // Events rewritten under the running server with a recomputed chain and every checkpoint
    // deleted: the writer notices before it would sign over them and fails closed.
    rewrite_from(&ts.audit_db(), 2);
    Connection::open(ts.audit_db()).unwrap().execute_batch("DELETE FROM checkpoints").unwrap();
    let e = auditor.verify_audit_log(pb::VerifyAuditLogRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(tokens.get_access_token(get()).await.unwrap_err().code(), tonic::Code::Unavailable);
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    let signed = conn.query_row("SELECT count(*) FROM checkpoints", [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(signed, 0, "nothing was signed over the edit");
    drop(conn);
    ts.stop().await;
}
