//! `kill -9` of a real `pogo-vault serve` process under mixed load, first disclosures and
//! repeats (DESIGN.md invariant 6): every (caller, token) pair a client received has its
//! durable disclosure record after the crash, although repeats were not awaited; the
//! restarted server signs the tail and the log verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fixture::{self, key, policy_text};
use common::serve_process;
use pogo_vault::audit::{Action, AuditFilter};
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::{NewTenant, UnauditedFixture};

const TENANTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_first_disclosures_and_repeats_leaves_every_pair_handed_out_on_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = fixture::start_sim(1000).await;
    fixture::add_sim_clients(&sim, TENANTS);
    let (pki, vault) = fixture::serve_files(d, &sim, &policy_text(""));
    for i in 0..TENANTS {
        let new = NewTenant::new(format!("a-{i}").parse().unwrap(), Environment::Demo);
        vault.add_tenant(&new, &key(i), &UnauditedFixture).unwrap();
    }
    let db = d.join(fixture::VAULT_DB);
    // Budgets out of the way (this is about the audit, not the budget); Go fast enough that
    // new tokens, hence first disclosures, keep coming while repeats pile up.
    let (config, endpoint) = serve_process::write_config(
        d,
        "caller_requests_per_second = 100000\nmetrics_listen = \"\"\n\n[tokens]\nupstream_rate_per_second = 10\nupstream_burst = 10\n",
    );
    // A second token caller (policy_text grants it a-*).
    pogo_vault::tls::issue_client_cert(
        &pki.ca_cert,
        &pki.ca_key,
        &pki.dir.join("a-only.pem"),
        &pki.dir.join("a-only-key.pem"),
        Some(&format!("spiffe://{}/service/a-only", fixture::TRUST)),
        None,
        "a-only",
    )
    .unwrap();
    let a_only = pogo_vault::tls::ClientTlsFiles {
        ca: pki.ca_cert.clone(),
        cert: pki.dir.join("a-only.pem"),
        key: pki.dir.join("a-only-key.pem"),
    };
    let files_of = |c: &str| if c == "a-only" { a_only.clone() } else { pki.client_files(c).unwrap() };
    let mut child = serve_process::start(&config, "warn");
    let callers = ["token-caller", "a-only"];
    let mut channels = Vec::new();
    for c in callers {
        let files = files_of(c);
        channels.push(serve_process::wait_ready(&endpoint, &files, &config, 300, Duration::from_millis(50)).await);
    }

    // Two callers, four workers each, walking the tenants in different orders: each
    // tenant's first token is a first disclosure to each caller, every later ask a repeat.
    let received = Arc::new(Mutex::new(Vec::<(&'static str, String)>::new()));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (c, ch) in callers.into_iter().zip(&channels) {
        for w in 0..16usize {
            let (ch, received, killed) = (ch.clone(), received.clone(), killed.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = pb::token_service_client::TokenServiceClient::new(ch);
                let mut n = 0usize;
                while !killed.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = (n * (w + 1) + w * 7 + n / 3) % TENANTS;
                    n += 1;
                    let req = pb::GetAccessTokenRequest { tenant_id: format!("a-{t}"), min_validity_seconds: 0 };
                    match client.get_access_token(req).await {
                        Ok(r) => received.lock().unwrap().push((c, r.into_inner().access_token)),
                        // Go's budget (10 a second) makes some wait too long; the server's
                        // death ends the loop through `killed`.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
    }
    for _ in 0..600 {
        if received.lock().unwrap().len() >= 600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The disk stalls (another holder of the audit database's lock: nothing more commits),
    // then the machine dies. What was answered in the stall is what a crash can lose:
    // repeats may go, first disclosures were never answered without their record.
    let audit_db = pogo_vault::config::default_audit_db(&db);
    let stall = rusqlite::Connection::open(&audit_db).unwrap();
    stall.busy_timeout(Duration::from_secs(5)).unwrap();
    stall.execute_batch("BEGIN EXCLUSIVE").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stall.execute_batch("ROLLBACK").unwrap();
    drop(stall);
    killed.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    let pairs: HashSet<(&str, String)> = received.iter().cloned().collect();
    assert!(received.len() >= 200, "load ran: {} tokens", received.len());
    assert!(
        pairs.len() >= 20 && received.len() >= 2 * pairs.len(),
        "mixed: {} pairs in {} answers",
        pairs.len(),
        received.len()
    );

    // Every pair handed out has its disclosure record: a token_minted record for that caller
    // with that token's fingerprint, from the client's address.
    let conn = pogo_vault::audit::open_reader(&audit_db).unwrap();
    let filter = AuditFilter { action: Some(Action::TokenMinted), ..Default::default() };
    let minted = pogo_vault::audit::list(&conn, &filter, None, 1_000_000).unwrap();
    drop(conn);
    let on_record: HashSet<(String, String)> = minted
        .iter()
        .filter(|e| e.record.peer.starts_with("127.0.0.1:"))
        .filter_map(|e| Some((e.record.caller.clone(), e.record.token_fingerprint.clone()?)))
        .collect();
    for (c, token) in &pairs {
        let fp = vault.fingerprint_key().fingerprint(pogo_vault::tokens::FP_ACCESS_TOKEN, token.as_bytes()).to_string();
        let caller = format!("spiffe://{}/service/{c}", fixture::TRUST);
        assert!(on_record.contains(&(caller, fp)), "{c} received a token with no durable disclosure record");
    }
    let firsts = minted.iter().filter(|e| !e.record.detail.contains("; repeat")).count();
    assert!(firsts >= pairs.len(), "{firsts} first disclosures on record for {} pairs", pairs.len());

    // Restarted: the server signs the tail the crash left, serves, stops; the log verifies.
    let mut child = serve_process::start(&config, "warn");
    let files = pki.client_files("token-caller").unwrap();
    let ch = serve_process::wait_ready(&endpoint, &files, &config, 300, Duration::from_millis(50)).await;
    let mut client = pb::token_service_client::TokenServiceClient::new(ch);
    client
        .get_access_token(pb::GetAccessTokenRequest { tenant_id: "a-0".into(), min_validity_seconds: 0 })
        .await
        .unwrap();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let pk = d.join("audit.pub");
    std::fs::write(&pk, pogo_vault::audit::encode_public_key(&fixture::audit_verifying_key(&vault))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["--db", audit_db.to_str().unwrap(), "audit", "verify", "--public-key", pk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
