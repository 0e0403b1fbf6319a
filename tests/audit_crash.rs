//! `kill -9` of a real `pogo-vault serve` process under token load: every token a client
//! received has its audit record, the chain verifies, the server starts again. Then the
//! security team's offline `pogo-vault audit verify` on that file, untouched and tampered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fixture::{self, key, policy_text};
use common::serve_process;
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;
use pogo_vault::tls::ClientTlsFiles;
use pogo_vault::vault::{NewTenant, UnauditedFixture, Vault};
use tonic::transport::Channel;

const TENANTS: usize = 6;

fn start_server(config: &Path) -> Child {
    serve_process::start(config, "warn")
}

async fn wait_ready(endpoint: &str, files: &ClientTlsFiles, config: &Path) -> Channel {
    serve_process::wait_ready(endpoint, files, config, 300, Duration::from_millis(50)).await
}

fn public_key_file(dir: &Path, vault: &Vault) -> std::path::PathBuf {
    let path = dir.join("audit.pub");
    std::fs::write(&path, pogo_vault::audit::encode_public_key(&fixture::audit_verifying_key(vault))).unwrap();
    path
}

/// Copies a SQLite file with its WAL, as a consistent snapshot of a stopped database.
fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let wal = format!("{}-wal", from.display());
    if Path::new(&wal).exists() {
        std::fs::copy(&wal, format!("{}-wal", to.display())).unwrap();
    }
}

fn verify_cli(audit_db: &Path, public_key: &Path, checkpoint: Option<&Path>) -> std::process::Output {
    match checkpoint {
        Some(c) => verify_cli_with(audit_db, public_key, &["--checkpoint", c.to_str().unwrap()]),
        None => verify_cli_with(audit_db, public_key, &[]),
    }
}

fn verify_cli_with(audit_db: &Path, public_key: &Path, extra: &[&str]) -> std::process::Output {
    let mut args =
        vec!["--db", audit_db.to_str().unwrap(), "audit", "verify", "--public-key", public_key.to_str().unwrap()];
    args.extend(extra);
    Command::new(env!("CARGO_BIN_EXE_pogo-vault")).args(&args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_record_of_a_token_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = fixture::start_sim(1000).await;
    fixture::add_sim_clients(&sim, TENANTS);
    let (pki, vault) = fixture::serve_files(d, &sim, &policy_text(""));
    for i in 0..TENANTS {
        let new = NewTenant::new(format!("t{i}").parse().unwrap(), Environment::Demo);
        vault.add_tenant(&new, &key(i), &UnauditedFixture).unwrap();
    }
    let fp_key_vault = vault; // kept open to fingerprint what clients received
    let db = d.join(fixture::VAULT_DB);
    let (config, endpoint) =
        // No metrics listener: its default port (9464) would collide with other serve processes.
        serve_process::write_config(d, "metrics_listen = \"\"\n\n[tokens]\nupstream_rate_per_second = 10\nupstream_burst = 10\n");
    let files = pki.client_files("token-caller").unwrap();

    let mut child = start_server(&config);
    let ch = wait_ready(&endpoint, &files, &config).await;

    // Load: several callers; every token received is remembered.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let ch = ch.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::token_service_client::TokenServiceClient::new(ch);
            for n in 0.. {
                let req =
                    pb::GetAccessTokenRequest { tenant_id: format!("t{}", (w + n) % TENANTS), min_validity_seconds: 0 };
                match client.get_access_token(req).await {
                    Ok(r) => received.lock().unwrap().push(r.into_inner().access_token),
                    Err(_) => break, // the server died
                }
            }
        }));
    }
    // Let the load run until a good number of tokens went out, then kill -9 mid-flight.
    for _ in 0..400 {
        if received.lock().unwrap().len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 50, "load ran: {} tokens", received.len());

    // Every token handed out has a durable token_minted record with its fingerprint.
    let audit_db = pogo_vault::config::default_audit_db(&db);
    let conn = pogo_vault::audit::open_reader(&audit_db).unwrap();
    let filter =
        pogo_vault::audit::AuditFilter { action: Some(pogo_vault::audit::Action::TokenMinted), ..Default::default() };
    let minted = pogo_vault::audit::list(&conn, &filter, None, 1_000_000).unwrap();
    drop(conn);
    let logged: HashSet<String> = minted.iter().filter_map(|e| e.record.token_fingerprint.clone()).collect();
    for t in &received {
        let fp =
            fp_key_vault.fingerprint_key().fingerprint(pogo_vault::tokens::FP_ACCESS_TOKEN, t.as_bytes()).to_string();
        assert!(logged.contains(&fp), "a token was handed out without its audit record");
    }
    assert!(minted.len() >= received.len(), "{} records for {} tokens received", minted.len(), received.len());

    // The chain verifies offline with only the public key. The newest events were not yet
    // covered by a checkpoint when the process died: strict verification says how many and
    // from where, and --allow-unsigned-tail verifies the rest with a warning saying what is
    // not proven.
    let pk = public_key_file(d, &fp_key_vault);
    let conn = pogo_vault::audit::open_reader(&audit_db).unwrap();
    let head = pogo_vault::audit::head(&conn).unwrap().0;
    let signed = pogo_vault::audit::latest_checkpoint(&conn).unwrap().unwrap().sequence;
    drop(conn);
    let out = verify_cli(&audit_db, &pk, None);
    let err = String::from_utf8_lossy(&out.stderr);
    if signed < head {
        let want = format!("{} events after the last signed checkpoint (at {signed})", head - signed);
        assert!(!out.status.success() && err.contains(&want), "strict verify names the unsigned tail: {err}");
        let out = verify_cli_with(&audit_db, &pk, &["--allow-unsigned-tail"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("warning:") && err.contains("could have been cut or rewritten undetected"), "{err}");
    } else {
        assert!(out.status.success(), "{err}");
    }

    // The server starts again on the same files, signs the tail it finds and records that it
    // did, and serves; then stops gracefully, and strict verification passes again.
    let mut child = start_server(&config);
    let ch = wait_ready(&endpoint, &files, &config).await;
    let mut client = pb::token_service_client::TokenServiceClient::new(ch);
    client
        .get_access_token(pb::GetAccessTokenRequest { tenant_id: "t0".into(), min_validity_seconds: 0 })
        .await
        .unwrap();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let out = verify_cli(&audit_db, &pk, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conn = pogo_vault::audit::open_reader(&audit_db).unwrap();
    let filter = pogo_vault::audit::AuditFilter {
        action: Some(pogo_vault::audit::Action::UnsignedTailSigned),
        ..Default::default()
    };
    let late = pogo_vault::audit::list(&conn, &filter, None, 10).unwrap();
    drop(conn);
    if signed < head {
        assert_eq!(late.len(), 1, "the restart recorded signing the tail: {late:?}");
        assert_eq!(late[0].sequence, head + 1, "recorded right after the tail, before anything else");
        assert!(
            late[0].record.detail.contains(&format!("events {}..={head}", signed + 1)),
            "{:?}",
            late[0].record.detail
        );
    } else {
        assert!(late.is_empty(), "nothing to sign, nothing recorded: {late:?}");
    }

    // Tampering, found by the offline verifier, which names the first bad sequence.
    let conn = pogo_vault::audit::open_reader(&audit_db).unwrap();
    let kept = pogo_vault::audit::latest_checkpoint(&conn).unwrap().unwrap();
    drop(conn);
    let kept_file = d.join("kept-checkpoint.json");
    std::fs::write(&kept_file, kept.to_json()).unwrap();
    assert!(verify_cli(&audit_db, &pk, Some(&kept_file)).status.success());

    let edited = d.join("edited.db");
    copy_db(&audit_db, &edited);
    let c = rusqlite::Connection::open(&edited).unwrap();
    c.execute("UPDATE events SET caller = 'someone-else' WHERE sequence = 5", []).unwrap();
    drop(c);
    let out = verify_cli(&edited, &pk, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("first bad sequence 5"), "{err}");

    let truncated = d.join("truncated.db");
    copy_db(&audit_db, &truncated);
    let c = rusqlite::Connection::open(&truncated).unwrap();
    let last: i64 = c.query_row("SELECT MAX(sequence) FROM events", [], |r| r.get(0)).unwrap();
    c.execute("DELETE FROM events WHERE sequence > ?1", [last - 3]).unwrap();
    c.execute("DELETE FROM checkpoints WHERE sequence > ?1", [last - 3]).unwrap();
    drop(c);
    let out = verify_cli(&truncated, &pk, Some(&kept_file));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does NOT verify"), "deletion of the newest rows is caught: {err}");
}
