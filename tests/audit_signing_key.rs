#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `pogo-vault audit rotate-signing-key` with the real binary on a real vault: the old key
//! signs the hand-over, the vault keeps serving and appending under the new key, and the
//! security team verifies from the first public key they hold. A hand-over not signed by
//! the predecessor is refused; with the audit database locked the rotation changes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fixture::audit_verifying_key;
use common::server::TestServer;
use common::{assert_fails_with, assert_ok, dump, run_bin, stdout};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use pogo_vault::audit::{Action, AuditFilter, Handover};
use pogo_vault::proto::v1 as pb;
use pogo_vault::server::ServeOptions;

fn vault_db(ts: &TestServer) -> PathBuf {
    ts.dir.path().join("vault.db")
}

fn current_key(ts: &TestServer) -> VerifyingKey {
    audit_verifying_key(&ts.vault())
}

fn write_key(path: &Path, key: &VerifyingKey) -> PathBuf {
    std::fs::write(path, pogo_vault::audit::encode_public_key(key)).unwrap();
    path.to_owned()
}

fn rotate(ts: &TestServer) -> std::process::Output {
    let key = ts.dir.path().join("master.key");
    run_bin(
        &[
            "--db",
            vault_db(ts).to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
            "audit",
            "rotate-signing-key",
        ],
        "",
    )
}

fn verify(audit_db: &Path, public_key: &Path) -> std::process::Output {
    run_bin(&["--db", audit_db.to_str().unwrap(), "audit", "verify", "--public-key", public_key.to_str().unwrap()], "")
}

/// Starts a server again on the test server's files (after `stop`).
async fn restart(ts: &mut TestServer) {
    let opts = ServeOptions { metrics_listen: None, health_listen: None, ..ts.options() };
    let server = pogo_vault::server::start(opts).await.unwrap();
    ts.endpoint = format!("https://{}", server.addr);
    ts.server = Some(server);
}

async fn tokens(ts: &TestServer, n: usize) {
    let mut c = ts.token_client("token-caller").await;
    for _ in 0..n {
        c.get_access_token(pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 })
            .await
            .unwrap();
    }
}

async fn serving_vault() -> TestServer {
    let ts = TestServer::start().await;
    ts.register("acme", 0).await;
    tokens(&ts, 5).await;
    ts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_serving_and_verifies_from_the_first_public_key() {
    let mut ts = serving_vault().await;
    ts.stop().await;
    let first = current_key(&ts);
    let first_file = write_key(&ts.dir.path().join("first.pub"), &first);

    let out = rotate(&ts);
    assert_ok(&out);
    let second = current_key(&ts);
    assert_ne!(first, second, "the vault holds a new key");
    let (first_id, second_id) =
        (pogo_vault::vault::audit_key_id(first.as_bytes()), pogo_vault::vault::audit_key_id(second.as_bytes()));
    assert!(stdout(&out).contains(&format!("{first_id} -> {second_id}")), "{}", stdout(&out));
    assert!(!stdout(&out).contains("seed"), "{}", stdout(&out));

    // The rotation is in the chain, naming the new key.
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    let filter = AuditFilter { action: Some(Action::SigningKeyRotated), ..Default::default() };
    let rotated = pogo_vault::audit::list(&conn, &filter, None, 10).unwrap();
    drop(conn);
    assert_eq!(rotated.len(), 1);
    assert!(rotated[0].record.detail.contains(&second_id), "{:?}", rotated[0].record.detail);

    // The vault keeps serving and appending, signing with the new key.
    restart(&mut ts).await;
    tokens(&ts, 5).await;
    let mut auditor = ts.audit_client("auditor").await;
    let live = auditor.verify_audit_log(pb::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(live.ok && live.unsigned_events == 0, "{live:?}");
    ts.stop().await;

    // From the first key the auditor holds, through the hand-over, to the head.
    let out = verify(&ts.audit_db(), &first_file);
    assert_ok(&out);
    assert!(stdout(&out).contains(&format!("signing keys followed: {first_id} -> {second_id}")), "{}", stdout(&out));
    assert!(stdout(&out).contains("the head is signed"), "{}", stdout(&out));
    // The new key alone does not vouch for the checkpoints before the hand-over.
    let second_file = write_key(&ts.dir.path().join("second.pub"), &second);
    assert_fails_with(&verify(&ts.audit_db(), &second_file), &["checkpoint at 1 signed by unknown key"]);
    // Pinning the end of the chain: the vault's current key passes, the retired one fails
    // (a leaked old key could otherwise sign a forged hand-over that the chain accepts).
    let pinned = |expect: &Path| {
        run_bin(
            &[
                "--db",
                ts.audit_db().to_str().unwrap(),
                "audit",
                "verify",
                "--public-key",
                first_file.to_str().unwrap(),
                "--expect-key",
                expect.to_str().unwrap(),
            ],
            "",
        )
    };
    assert_ok(&pinned(&second_file));
    assert_fails_with(&pinned(&first_file), &["key chain ends at key", &second_id, &first_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_not_signed_by_the_predecessor_is_refused() {
    let mut ts = serving_vault().await;
    ts.stop().await;
    let first_file = write_key(&ts.dir.path().join("first.pub"), &current_key(&ts));
    assert_ok(&rotate(&ts));
    assert_ok(&verify(&ts.audit_db(), &first_file));

    // The attacker re-signs the hand-over with a key of their own, naming their successor,
    // and claims it comes from the first key.
    let attacker = SigningKey::from_bytes(&[0x66; 32]);
    let theirs = SigningKey::from_bytes(&[0x77; 32]).verifying_key();
    let conn = rusqlite::Connection::open(ts.audit_db()).unwrap();
    let (seq, head, time_ms, old_id): (i64, Vec<u8>, i64, String) = conn
        .query_row("SELECT sequence, head_hash, time_ms, old_key_id FROM signing_handovers", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    let mut forged = Handover::sign(seq, head.try_into().unwrap(), time_ms, &attacker, &theirs);
    forged.old_key_id = old_id;
    forged.signature = attacker.sign(&forged.signed_message()).to_bytes();
    conn.execute(
        "UPDATE signing_handovers SET new_key_id = ?1, new_public_key = ?2, signature = ?3",
        rusqlite::params![forged.new_key_id, &forged.new_public_key[..], &forged.signature[..]],
    )
    .unwrap();
    drop(conn);
    assert_fails_with(
        &verify(&ts.audit_db(), &first_file),
        &[&format!("hand-over at {seq}"), "not signed by the predecessor"],
    );

    // A hand-over deleted: the new key's checkpoints are signed by a key nobody handed over to.
    let conn = rusqlite::Connection::open(ts.audit_db()).unwrap();
    conn.execute("DELETE FROM signing_handovers", []).unwrap();
    drop(conn);
    restart(&mut ts).await;
    tokens(&ts, 2).await;
    ts.stop().await;
    assert_fails_with(&verify(&ts.audit_db(), &first_file), &["signed by unknown key", "only after a valid hand-over"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_audit_database_locked_the_rotation_changes_nothing() {
    let mut ts = serving_vault().await;
    ts.stop().await;
    let vault_before = dump(&vault_db(&ts));
    let audit_before = dump(&ts.audit_db());
    let holder = rusqlite::Connection::open(ts.audit_db()).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let out = rotate(&ts);
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_fails_with(&out, &["cannot record the rotation", "nothing was changed"]);
    assert_eq!(dump(&vault_db(&ts)), vault_before, "the vault database is unchanged");
    assert_eq!(dump(&ts.audit_db()), audit_before, "the audit database is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_running_during_the_rotation_fails_closed_until_restarted() {
    let mut ts = serving_vault().await;
    let first_file = write_key(&ts.dir.path().join("first.pub"), &current_key(&ts));
    // The command is refused while the server holds the database.
    let refused = rotate(&ts);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("a server is running on this database"));
    // Defence in depth: a hand-over made behind the lock's back (the library, a copied
    // binary) still cannot make the running server sign with the retired key.
    let old = ts.vault().audit_signing_key().unwrap();
    let new = SigningKey::from_bytes(&[0x24; 32]);
    pogo_vault::audit::hand_over_blocking(&ts.audit_db(), &old, &new.verifying_key(), "cli:test", "r1").unwrap();
    ts.vault().replace_audit_signing_key(&new).unwrap();
    // The running server still holds the old key: its next checkpoint is refused, and with
    // it the requests whose records it would have covered.
    let mut c = ts.token_client("token-caller").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(std::time::Instant::now() < deadline, "the retired key kept signing");
        let r =
            c.get_access_token(pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 }).await;
        match r {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                break;
            }
        }
    }
    // No checkpoint after the hand-over is signed by the old key.
    let conn = rusqlite::Connection::open(ts.audit_db()).unwrap();
    let handed_at: i64 = conn.query_row("SELECT sequence FROM signing_handovers", [], |r| r.get(0)).unwrap();
    let old_id = pogo_vault::vault::audit_key_id(
        pogo_vault::audit::parse_public_key(&std::fs::read_to_string(&first_file).unwrap()).unwrap().as_bytes(),
    );
    let late: i64 = conn
        .query_row(
            "SELECT count(*) FROM checkpoints WHERE sequence > ?1 AND key_id = ?2",
            rusqlite::params![handed_at, old_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(late, 0);
    drop(conn);
    // The server stops without its final checkpoint; restarted, it signs with the new key.
    if let Some(s) = ts.server.take() {
        let _ = s.shutdown().await;
    }
    restart(&mut ts).await;
    tokens(&ts, 2).await;
    ts.stop().await;
    let out = verify(&ts.audit_db(), &first_file);
    assert_ok(&out);
    assert!(stdout(&out).contains("signing keys followed"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_short_before_the_vault_stored_the_key_is_named_at_start() {
    let mut ts = serving_vault().await;
    ts.stop().await;
    // Step 1 of the rotation happened (the audit hand-over), step 2 did not (a crash).
    let old = ts.vault().audit_signing_key().unwrap();
    let lost = SigningKey::from_bytes(&[0x42; 32]).verifying_key();
    pogo_vault::audit::hand_over_blocking(&ts.audit_db(), &old, &lost, "cli:test", "r1").unwrap();
    let opts_err = {
        let opts = ServeOptions { metrics_listen: None, health_listen: None, ..ts.options() };
        pogo_vault::server::start(opts).await.err().expect("the server must not sign with a retired key")
    };
    let msg = opts_err.to_string();
    assert!(msg.contains("rotation did not complete"), "{msg}");
}
