//! The restore drill: back up while tokens and registrations flow, restore into a fresh
//! directory, start from it: every key opens, every acknowledged registration is there,
//! the audit chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fixture::sim_key;
use common::server::TestServer;
use pogo_vault::crypto::{MasterKeySource, Purpose};
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::Vault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_to_a_working_vault() {
    let mut ts = TestServer::start_with(|o| {
        o.tokens.upstream_rate_per_second = 10.0;
        o.tokens.upstream_burst = 10;
    })
    .await;
    let db = ts.dir.path().join("vault.db");
    let audit_db = ts.audit_db();

    // Load: registrations (skip_validation, so Go's budget is not the limit) and tokens.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut admin = ts.tenant_client("admin").await;
    let reg_task = {
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let id = format!("r-{i}");
                let req = pb::RegisterClientKeyRequest {
                    tenant_id: id.clone(),
                    environment: "demo".into(),
                    client_key: sim_key(i % 8),
                    skip_validation: true,
                    ..Default::default()
                };
                if admin.register_client_key(req).await.is_ok() {
                    acked.lock().unwrap().push(id);
                }
            }
        })
    };
    let mut tokens = ts.token_client("token-caller").await;
    let tok_task = {
        let stop = stop.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = acked.lock().unwrap().first().cloned();
                if let Some(t) = t {
                    let _ = tokens
                        .get_access_token(pb::GetAccessTokenRequest { tenant_id: t, min_validity_seconds: 0 })
                        .await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    while acked.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The backup, with the real CLI, while the load runs.
    let acked_before: Vec<String> = acked.lock().unwrap().clone();
    let out = ts.dir.path().join("backup").join("vault.bak");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let key = ts.dir.path().join("master.key");
    let o = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args([
            "--db",
            db.to_str().unwrap(),
            "--audit-db",
            audit_db.to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
            "backup",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("master key is not inside"));
    let during = acked.lock().unwrap().len();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    reg_task.await.unwrap();
    tok_task.await.unwrap();
    assert!(during > acked_before.len(), "registrations continued during the backup");
    ts.stop().await;

    // The backup holds no plaintext secret.
    let bytes = [std::fs::read(&out).unwrap(), std::fs::read(format!("{}.audit", out.display())).unwrap()].concat();
    for i in 0..8 {
        common::assert_no_leak("the backup", &bytes, &sim_key(i));
    }

    // Restore into a fresh directory.
    let fresh = tempfile::tempdir().unwrap();
    let (rdb, raudit) = (fresh.path().join("vault.db"), fresh.path().join("vault-audit.db"));
    let o = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args([
            "--db",
            rdb.to_str().unwrap(),
            "--audit-db",
            raudit.to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
            "restore",
            "--from",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Both were recorded before they took effect: the backup's record is in the copy, and
    // the restore's record is the restored log's newest event.
    let actions: Vec<String> = {
        let conn = common::rusqlite_open(&raudit);
        let mut st = conn.prepare("SELECT action FROM events ORDER BY sequence").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert!(actions.iter().any(|a| a == "backup_taken"), "the backup's own record is in the backup");
    assert_eq!(actions.last().map(String::as_str), Some("restored"));

    // Every tenant's key opens with the master key; every registration acknowledged before
    // the backup started is there.
    let vault = Vault::unlock(&rdb, &MasterKeySource::KeyFile(key.clone())).unwrap();
    let all = vault.list_tenants(None, 100_000).unwrap();
    for t in &all {
        vault.open_client_key(t).unwrap();
    }
    for id in &acked_before {
        assert!(all.iter().any(|t| t.tenant_id.as_str() == id), "acknowledged registration {id} missing");
    }
    // The audit chain verifies with only the public key.
    let pk = vault.vault_key(Purpose::AuditSigningKey).unwrap().unwrap().public_key.unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk.try_into().unwrap()).unwrap();
    // A backup taken under load may end in events the next checkpoint would have covered
    // (at most about a second's worth): allowed here, and signed when a server opens it.
    let lenient = pogo_vault::audit::VerifyOptions { allow_unsigned_tail: true, ..Default::default() };
    let report = pogo_vault::audit::verify_with(&raudit, &vk, &lenient).unwrap();
    assert!(report.ok, "{}", report.detail);
    drop(vault);

    // And a server starts from the restored files and serves a token.
    let mut opts_pki = ts.pki.server_files();
    opts_pki.crls.clear();
    let server = pogo_vault::server::start(pogo_vault::server::ServeOptions {
        db: rdb.clone(),
        audit_db: raudit.clone(),
        master_key: MasterKeySource::KeyFile(key),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: opts_pki,
        policy: ts.policy.clone(),
        upstream: pogo_vault::upstream::UpstreamConfig::default(),
        tokens: pogo_vault::tokens::BrokerConfig::default(),
        audit: pogo_vault::audit::AuditConfig::default(),
        max_request_bytes: 65536,
        request_timeout: Duration::from_secs(10),
        concurrency_limit_per_connection: 16,
        handshake_timeout: Duration::from_secs(5),
        max_pending_handshakes_per_address: pogo_vault::server::conn::DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
        return_subscription_key: false,
        caller_requests_per_second: pogo_vault::server::DEFAULT_CALLER_REQUESTS_PER_SECOND,
        metrics_listen: None,
        health_listen: None,
        watch_files: None,
        spiffe: None,
        gateway: None,
        postgres: None,
    })
    .await
    .unwrap();
    let ch =
        pogo_vault::client::connect(&format!("https://{}", server.addr), &ts.files("token-caller"), Some("localhost"))
            .await
            .unwrap();
    pb::token_service_client::TokenServiceClient::new(ch)
        .get_access_token(pb::GetAccessTokenRequest { tenant_id: acked_before[0].clone(), min_validity_seconds: 0 })
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}
