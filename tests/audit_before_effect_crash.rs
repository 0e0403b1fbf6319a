//! Audit before effect under `kill -9` (issue 12, must-show 2): a real `pogo-vault serve`
//! process is killed at random points while callers register tenants and rotate keys, 50
//! times over. After every kill: every change present in the vault database has its audit
//! record (registration: `key_registered` at version 1; a rotated key: `key_rotated` at its
//! version), and every change a caller saw acknowledged is present. At the end the log
//! verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture::{self, policy_text, sim_key};
use common::serve_process;
use pogo_vault::crypto::MasterKeySource;
use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::tenant_service_client::TenantServiceClient;
use pogo_vault::tls::ClientTlsFiles;
use pogo_vault::vault::Vault;
use tonic::transport::Channel;

const CYCLES: usize = 50;
const ROTATED: usize = 4;
const KEYS: usize = 8;

/// Starts `serve`; its standard error goes to `serve.log` beside the config.
fn start_server(config: &Path) -> Child {
    serve_process::start(config, "error")
}

async fn wait_ready(endpoint: &str, files: &ClientTlsFiles, config: &Path) -> Channel {
    serve_process::wait_ready(endpoint, files, config, 400, Duration::from_millis(10)).await
}

/// xorshift64*: a repeatable source of kill points (the seed is printed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// `(action, tenant, key_version)` of every record in the audit database.
fn records(audit_db: &Path) -> HashSet<(String, String, i64)> {
    let conn = common::rusqlite_open(audit_db);
    let mut s = conn
        .prepare(
            "SELECT action, tenant_id, key_version FROM events WHERE tenant_id IS NOT NULL AND key_version IS NOT NULL",
        )
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_registrations_and_rotations_never_leaves_a_change_without_its_record() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = fixture::start_sim(100_000).await;
    fixture::add_sim_clients(&sim, KEYS);
    let (pki, vault) = fixture::serve_files(d, &sim, &policy_text(""));
    let db = d.join(fixture::VAULT_DB);
    let key = d.join(fixture::MASTER_KEY);
    let audit_db = pogo_vault::config::default_audit_db(&db);
    let public = fixture::audit_verifying_key(&vault);
    drop(vault);
    let rest = "metrics_listen = \"\"\n\n[tokens]\nupstream_rate_per_second = 10\nupstream_burst = 10\n";
    let (config, endpoint) = serve_process::write_config(d, rest);
    let files = pki.client_files("admin").unwrap();

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("kill points from seed {seed}");
    let mut rng = Rng(seed);
    // Acknowledged: registrations (tenant) and rotations (tenant -> highest version seen).
    let registered = Arc::new(Mutex::new(HashSet::<String>::new()));
    let rotated = Arc::new(Mutex::new(HashMap::<String, i64>::new()));
    let mut kills_with_work_in_flight = 0;

    for cycle in 0..CYCLES {
        let mut child = start_server(&config);
        let ch = wait_ready(&endpoint, &files, &config).await;
        if cycle == 0 {
            let mut admin = TenantServiceClient::new(ch.clone());
            for r in 0..ROTATED {
                let req = pb::RegisterClientKeyRequest {
                    tenant_id: format!("r{r}"),
                    environment: "demo".into(),
                    client_key: sim_key(r),
                    skip_validation: true,
                    ..Default::default()
                };
                admin.register_client_key(req).await.unwrap();
                registered.lock().unwrap().insert(format!("r{r}"));
            }
        }
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let ch = ch.clone();
            let (registered, rotated) = (registered.clone(), rotated.clone());
            let key_pick = rng.below(KEYS as u64) as usize;
            tasks.push(tokio::spawn(async move {
                let mut admin = TenantServiceClient::new(ch);
                for n in 0.. {
                    let result = if w % 2 == 0 {
                        let tenant = format!("c{cycle}-w{w}-{n}");
                        let req = pb::RegisterClientKeyRequest {
                            tenant_id: tenant.clone(),
                            environment: "demo".into(),
                            client_key: sim_key((key_pick + n) % KEYS),
                            skip_validation: true,
                            ..Default::default()
                        };
                        admin.register_client_key(req).await.map(|_| registered.lock().unwrap().insert(tenant))
                    } else {
                        let tenant = format!("r{}", (w as usize + n) % ROTATED);
                        let req = pb::RotateClientKeyRequest {
                            tenant_id: tenant.clone(),
                            client_key: sim_key((key_pick + n) % KEYS),
                        };
                        admin.rotate_client_key(req).await.map(|r| {
                            let v = r.into_inner().key_version;
                            let mut m = rotated.lock().unwrap();
                            let e = m.entry(tenant).or_insert(0);
                            *e = (*e).max(v);
                            true
                        })
                    };
                    if result.is_err() {
                        break; // killed
                    }
                }
            }));
        }
        // A random kill point within the first 150 ms of load.
        tokio::time::sleep(Duration::from_millis(5 + rng.below(150))).await;
        let in_flight = !tasks.iter().all(|t| t.is_finished());
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        kills_with_work_in_flight += usize::from(in_flight);

        // Every change present has its record; every acknowledged change is present.
        let vault = Vault::unlock(&db, &MasterKeySource::KeyFile(key.clone())).unwrap();
        let recs = records(&audit_db);
        let mut present = HashMap::new();
        let mut after = None;
        loop {
            let page = vault.list_tenants(after.as_deref(), 500).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.tenant_id.to_string());
            for t in page {
                present.insert(t.tenant_id.to_string(), t.key_version);
            }
        }
        for (tenant, &version) in &present {
            assert!(
                recs.contains(&("key_registered".into(), tenant.clone(), 1)),
                "cycle {cycle}: tenant {tenant} is present but its registration has no record"
            );
            if version > 1 {
                assert!(
                    recs.contains(&("key_rotated".into(), tenant.clone(), version)),
                    "cycle {cycle}: {tenant} holds key version {version} with no key_rotated record of it"
                );
            }
        }
        for tenant in registered.lock().unwrap().iter() {
            assert!(present.contains_key(tenant), "cycle {cycle}: acknowledged registration of {tenant} lost");
        }
        for (tenant, v) in rotated.lock().unwrap().iter() {
            assert!(present[tenant] >= *v, "cycle {cycle}: acknowledged rotation of {tenant} to {v} lost");
        }
    }
    assert!(kills_with_work_in_flight >= CYCLES / 2, "the kills mostly landed mid-load ({kills_with_work_in_flight})");
    assert!(registered.lock().unwrap().len() > CYCLES, "registrations were acknowledged along the way");
    assert!(!rotated.lock().unwrap().is_empty(), "rotations were acknowledged along the way");

    // A clean start signs whatever the kills left unsigned, and the whole log verifies.
    let mut child = start_server(&config);
    wait_ready(&endpoint, &files, &config).await;
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    child.wait().unwrap();
    let report = pogo_vault::audit::verify(&audit_db, &public, None).unwrap();
    assert!(report.ok, "{}", report.detail);
    println!(
        "{CYCLES} kill -9 cycles in {:.1} s: {} registrations and {} rotated tenants acknowledged",
        started.elapsed().as_secs_f64(),
        registered.lock().unwrap().len(),
        rotated.lock().unwrap().len()
    );
}
