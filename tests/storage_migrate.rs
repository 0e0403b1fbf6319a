#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `pogo-vault storage migrate` and `storage export`, as an operator runs them: a SQLite vault
//! with 10,000 tenants and 100,000 audit events moved into an empty PostgreSQL database by
//! the real binary, every key opening there, every tenant minting through a server on it, the chain
//! verified there by `audit verify --postgres-url`, a second move refused without a record,
//! and the way back to new SQLite files.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::fixture::{self, MASTER_KEY, VAULT_DB};
use common::pg::PgCluster;
use common::{assert_ok, run_bin, stdout};
use pogo_vault::audit::{Action, AuditConfig, AuditLog, AuditRecord, Outcome};
use pogo_vault::crypto::{ClientKey, MasterKeySource};
use pogo_vault::domain::Environment;
use pogo_vault::vault::{NewTenant, UnauditedFixture, Vault};

const TENANTS: usize = 10_000;
const EVENTS: usize = 100_000;

fn count_events(path: &std::path::Path, action: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM events WHERE action = ?1", [action], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tenants_and_a_hundred_thousand_events_move_to_postgres_and_back() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let sim = fixture::start_sim(100_000).await;
    // Go knows every tenant's client: each mints after the move.
    fixture::add_bulk_clients(&sim, 0..TENANTS);
    let (pki, vault) = fixture::serve_files(dir.path(), &sim, &fixture::policy_text(""));
    let db = dir.path().join(VAULT_DB);
    let audit_db = pogo_vault::config::default_audit_db(&db);
    let key_file = dir.path().join(MASTER_KEY);

    // The vault: TENANTS tenants.
    let keys: Vec<_> = (0..TENANTS).map(|i| ClientKey::parse(&fixture::client_key(i)).unwrap()).collect();
    for chunk in (0..TENANTS).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<(NewTenant, &ClientKey)> = chunk
            .iter()
            .map(|&i| (NewTenant::new(format!("t{i:05}").parse().unwrap(), Environment::Demo), &keys[i]))
            .collect();
        vault.add_tenants(&batch, &UnauditedFixture).unwrap();
    }
    // The audit log: EVENTS records through the real writer.
    let akey = vault.audit_signing_key().unwrap();
    let public_key = akey.verifying_key();
    drop(vault);
    let log = AuditLog::open(&audit_db, akey, AuditConfig::default()).unwrap();
    // 64 appenders at once: group commits of about 64 records.
    tokio::task::spawn_blocking({
        let log = log.clone();
        move || {
            std::thread::scope(|s| {
                for w in 0..64 {
                    let log = &log;
                    s.spawn(move || {
                        for i in (w..EVENTS).step_by(64) {
                            let rec = AuditRecord::new(Action::TokenMinted, Outcome::Ok)
                                .caller("svc-billing", "01")
                                .tenant(format!("t{:05}", i % TENANTS))
                                .request(format!("r{i}"), "127.0.0.1:1");
                            log.append_wait(rec).unwrap();
                        }
                    });
                }
            })
        }
    })
    .await
    .unwrap();
    log.shutdown().await;
    drop(log);
    println!("set-up: {TENANTS} tenants, {EVENTS} audit events in {:?}", t0.elapsed());

    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(&[]);
        c.create_database("vault");
        c
    })
    .await
    .unwrap();
    let cluster = Arc::new(cluster);
    let url = cluster.url("vault");
    let pw = cluster.password_file();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "storage".into(),
            "migrate".into(),
            "--to-postgres".into(),
            url.clone(),
            "--postgres-password-file".into(),
            pw.display().to_string(),
            "--db".into(),
            db.display().to_string(),
            "--master-key-file".into(),
            key_file.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let migrate = args(&[]);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || run_bin(&migrate.iter().map(String::as_str).collect::<Vec<_>>(), ""))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_ok(&out);
    let said = stdout(&out);
    println!("storage migrate: {took:?}: {said}");
    assert!(said.contains(&format!("{TENANTS} tenants")) && said.contains("audit log there verifies"), "{said}");
    // Recorded in the source log first, so the copy holds it.
    assert_eq!(count_events(&audit_db, "storage_moved"), 1);

    // A second move into the same database: refused, naming the table, and not recorded.
    let again = args(&[]);
    let out = tokio::task::spawn_blocking(move || run_bin(&again.iter().map(String::as_str).collect::<Vec<_>>(), ""))
        .await
        .unwrap();
    common::assert_fails_with(&out, &["not empty", "vault_meta"]);
    assert_eq!(count_events(&audit_db, "storage_moved"), 1, "a refused move leaves no record");

    // `audit verify --postgres-url` from the public key the auditor holds.
    let pub_file = dir.path().join("audit.pub");
    std::fs::write(&pub_file, pogo_vault::audit::encode_public_key(&public_key)).unwrap();
    let verify: Vec<String> = vec![
        "audit".into(),
        "verify".into(),
        "--postgres-url".into(),
        url.clone(),
        "--postgres-password-file".into(),
        pw.display().to_string(),
        "--public-key".into(),
        pub_file.display().to_string(),
    ];
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || run_bin(&verify.iter().map(String::as_str).collect::<Vec<_>>(), ""))
        .await
        .unwrap();
    assert_ok(&out);
    println!("audit verify --postgres-url: {:?}: {}", started.elapsed(), stdout(&out));
    assert!(stdout(&out).contains(&format!("ok: {} events verified", EVENTS + 1)), "{}", stdout(&out));

    // Every key opens on PostgreSQL.
    let o = cluster.options("vault");
    let opened = tokio::task::spawn_blocking({
        let (o, key_file) = (o.clone(), key_file.clone());
        move || {
            let v = Vault::unlock_postgres(&o, &MasterKeySource::KeyFile(key_file)).unwrap();
            let (mut after, mut n) = (None::<String>, 0);
            loop {
                let page = v.list_tenants(after.as_deref(), 1000).unwrap();
                if page.is_empty() {
                    break n;
                }
                for t in &page {
                    v.open_client_key(t).unwrap();
                    n += 1;
                }
                after = page.last().map(|t| t.tenant_id.to_string());
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(opened, TENANTS);

    // A server on PostgreSQL mints a token for every tenant (one upstream request each).
    let mut opts = common::server::options_on(dir.path(), &pki, &dir.path().join(fixture::POLICY));
    opts.postgres = Some(o.clone());
    opts.tokens.upstream_rate_per_second = 2000.0;
    opts.tokens.upstream_burst = 100;
    opts.caller_requests_per_second = 100_000.0;
    let server = pogo_vault::server::start(opts).await.unwrap();
    let endpoint = format!("https://{}", server.addr);
    let files = pogo_vault::tls::ClientTlsFiles {
        ca: pki.ca_cert.clone(),
        cert: pki.dir.join("token-caller.pem"),
        key: pki.dir.join("token-caller-key.pem"),
    };
    let channel = pogo_vault::client::connect(&endpoint, &files, Some("localhost")).await.unwrap();
    let started = Instant::now();
    let before = sim.token_requests();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..TENANTS {
        let mut c = pogo_vault::proto::v1::token_service_client::TokenServiceClient::new(channel.clone());
        let gate = gate.clone();
        calls.spawn(async move {
            let _turn = gate.acquire().await.unwrap();
            c.get_access_token(fixture::token_request(&format!("t{i:05}"))).await.map_err(|s| s.to_string())
        });
    }
    let results = calls.join_all().await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).take(3).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let minted = results.len();
    println!(
        "every tenant minted on PostgreSQL after the move: {minted} tokens, {} upstream requests, in {:?}",
        sim.token_requests() - before,
        started.elapsed()
    );
    assert_eq!(minted, TENANTS);
    assert_eq!(sim.token_requests() - before, TENANTS as u64, "one upstream request per tenant");
    server.shutdown().await.unwrap();

    // And back to new SQLite files, verified there.
    let (out_db, out_audit) = (dir.path().join("back.db"), dir.path().join("back-audit.db"));
    let export: Vec<String> = vec![
        "storage".into(),
        "export".into(),
        "--postgres-url".into(),
        url.clone(),
        "--postgres-password-file".into(),
        pw.display().to_string(),
        "--db".into(),
        out_db.display().to_string(),
        "--audit-db".into(),
        out_audit.display().to_string(),
        "--master-key-file".into(),
        key_file.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || run_bin(&export.iter().map(String::as_str).collect::<Vec<_>>(), ""))
        .await
        .unwrap();
    assert_ok(&out);
    println!("storage export: {}", stdout(&out));
    let back = Vault::unlock(&out_db, &MasterKeySource::KeyFile(key_file.clone())).unwrap();
    assert_eq!(back.list_tenants(None, TENANTS + 1).unwrap().len(), TENANTS);
    assert_eq!(count_events(&out_audit, "storage_moved"), 2, "both moves on record");
    let report =
        pogo_vault::audit::verify_with(&out_audit, &public_key, &pogo_vault::audit::VerifyOptions::default()).unwrap();
    assert!(report.ok, "{}", report.detail);
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
    println!("whole test: {:?}", t0.elapsed());
}
