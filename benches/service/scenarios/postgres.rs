//! The vault on PostgreSQL (issue 16): the hot path against the floor in the same run, with
//! the vault on SQLite, on PostgreSQL with one replica, and on PostgreSQL with three
//! replicas sharing one database (the load spread over them). A throwaway cluster
//! (`tests/common/pg.rs`: initdb and pg_ctl on loopback, no synchronous standby) gets the
//! vault by `storage migrate`'s use case. All replicas run in this one process, on the same
//! cores as the load generator and PostgreSQL itself: three replicas show what sharing one
//! database costs, not what three machines would add. Skipped when PostgreSQL is not
//! installed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pogo_vault::config::Config;
use pogo_vault::crypto::MasterKeySource;
use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::server::{self, RunningServer, ServeOptions};
use pogo_vault::tokens::BrokerConfig;
use tonic::transport::Channel;

use crate::fixture::{self, token_request};
use crate::floor::start_floor;
use crate::harness::bench_policy;
use crate::load::{drive_count, hot_run};
use crate::pg::PgCluster;
use crate::report::{Row, add_note, compare};
use crate::settings::Settings;

/// Connections × requests in flight per connection, for every row (six connections spread
/// evenly over three replicas).
const SHAPE: (usize, usize) = (6, 11);

fn options(dir: &std::path::Path, storage: &str, warm_rate: f64) -> ServeOptions {
    use fixture::{CERTS, MASTER_KEY, POLICY, VAULT_DB};
    let d = dir.display();
    let vault = if storage.is_empty() { format!("db = \"{d}/{VAULT_DB}\"\n") } else { String::new() };
    let text = format!(
        "[vault]\n{vault}master_key_file = \"{d}/{MASTER_KEY}\"\n\n{storage}\
         [server]\nlisten = \"127.0.0.1:0\"\ncert = \"{d}/{CERTS}/server.pem\"\nkey = \"{d}/{CERTS}/server-key.pem\"\n\
         client_ca = \"{d}/{CERTS}/ca.pem\"\npolicy = \"{d}/{POLICY}\"\nmetrics_listen = ''\n"
    );
    let path = dir.join(if storage.is_empty() { "sqlite.toml" } else { "postgres.toml" });
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::parse(&text, &path).unwrap();
    cfg.validate(&path).unwrap();
    let mut opts = ServeOptions::from_config(&cfg).unwrap();
    // As in the hot phase: the warm-up mints every tenant through the real API.
    opts.tokens = BrokerConfig {
        upstream_rate_per_second: warm_rate,
        upstream_burst: 100,
        limiter_max_wait: Duration::from_secs(60),
        ..BrokerConfig::default()
    };
    opts
}

async fn channels(endpoint: &str, files: &pogo_vault::tls::ClientTlsFiles, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(pogo_vault::client::connect(endpoint, files, Some("localhost")).await.unwrap());
    }
    out
}

/// Asks for every tenant once through `endpoint` (filling that replica's cache).
async fn warm(endpoint: &str, files: &pogo_vault::tls::ClientTlsFiles, tenants: &Arc<Vec<String>>, n: usize) {
    let clients: Arc<Vec<TokenServiceClient<Channel>>> =
        Arc::new(channels(endpoint, files, 4).await.into_iter().map(TokenServiceClient::new).collect());
    let tenants = tenants.clone();
    let (run, _) = drive_count(tenants.len(), n, move |i, w| {
        let mut c = clients[w % clients.len()].clone();
        let t = tenants[i].clone();
        async move { c.get_access_token(token_request(&t)).await.map(|_| ()) }
    })
    .await;
    assert_eq!(run.errors, 0, "warm-up: {:?}", run.first_error);
}

pub async fn phase_postgres(s: &Settings, rows: &mut Vec<Row>) {
    if !std::path::Path::new("/usr/lib/postgresql").exists() {
        println!("postgres: skipped (Debian's postgresql package is not installed)");
        return;
    }
    let t = Instant::now();
    let dir = tempfile::tempdir_in(&s.dir).unwrap();
    let d = dir.path().to_owned();
    let sim = fixture::start_sim(1_000_000).await;
    let (pki, vault) = fixture::serve_files(&d, &sim, &bench_policy());
    let n = s.hot_tenants.min(2_000);
    let ids: Vec<String> = (0..n).map(|i| format!("pg-{i:05}")).collect();
    fixture::add_bulk_tenants(&vault, &ids, 0, true);
    fixture::add_bulk_clients(&sim, 0..n);
    drop(vault);
    let tenants = Arc::new(ids);
    let cluster = tokio::task::spawn_blocking({
        let d = d.clone();
        move || {
            let cluster = PgCluster::start(&[]);
            cluster.create_database("vault");
            let db = d.join(fixture::VAULT_DB);
            let rec = pogo_vault::audit::AuditRecord::new(
                pogo_vault::audit::Action::StorageMoved,
                pogo_vault::audit::Outcome::Ok,
            )
            .caller("service-bench", "")
            .request("", "local");
            pogo_vault::usecase::storage_move::migrate_to_postgres(
                &db,
                &pogo_vault::config::default_audit_db(&db),
                &MasterKeySource::KeyFile(d.join(fixture::MASTER_KEY)),
                &cluster.options("vault"),
                rec,
            )
            .unwrap();
            cluster
        }
    })
    .await
    .unwrap();
    let storage = format!(
        "[storage]\nbackend = \"postgres\"\n\n[storage.postgres]\nurl = \"{}\"\npassword_file = \"{}\"\n\n",
        cluster.url("vault"),
        cluster.password_file().display()
    );
    let files = pki.client_files("token-caller").unwrap();

    // The SQLite vault (the files the move copied) and three replicas on the database.
    let sqlite = server::start(options(&d, "", s.warm_rate)).await.unwrap();
    let mut replicas: Vec<RunningServer> = Vec::new();
    for _ in 0..3 {
        replicas.push(server::start(options(&d, &storage, s.warm_rate)).await.unwrap());
    }
    let endpoint = |r: &RunningServer| format!("https://{}", r.addr);
    let up0 = sim.token_requests();
    warm(&endpoint(&sqlite), &files, &tenants, s.warm_concurrency).await;
    let sqlite_mints = sim.token_requests() - up0;
    let up1 = sim.token_requests();
    for r in &replicas {
        warm(&endpoint(r), &files, &tenants, s.warm_concurrency).await;
    }
    let pg_mints = sim.token_requests() - up1;
    println!(
        "postgres: {n} tenants moved into a throwaway cluster and warmed on SQLite ({sqlite_mints} mints) and on three \
         replicas ({pg_mints} mints for the three: one per tenant, the others took the shared token) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut probe = TokenServiceClient::new(channels(&endpoint(&sqlite), &files, 1).await.remove(0));
    let real = probe.get_access_token(token_request(&tenants[0])).await.unwrap().into_inner();
    let floor = start_floor(&options(&d, "", s.warm_rate), real, None).await;
    let floor_endpoint = format!("https://{}", floor.addr);

    let (c, per) = SHAPE;
    let scenario = format!("postgres hot {c}x{per}");
    let run_on = |eps: Vec<String>| {
        let files = files.clone();
        let tenants = tenants.clone();
        async move {
            let mut chans = Vec::new();
            for i in 0..c {
                chans.extend(channels(&eps[i % eps.len()], &files, 1).await);
            }
            hot_run(&chans, per, &tenants, s.warm(), s.secs).await
        }
    };
    let floor_row = Row::from_run(scenario.clone(), "floor", &run_on(vec![floor_endpoint.clone()]).await);
    let mut sqlite_row = Row::from_run(scenario.clone(), "vault", &run_on(vec![endpoint(&sqlite)]).await);
    let mut one = Row::from_run(scenario.clone(), "pg x1", &run_on(vec![endpoint(&replicas[0])]).await);
    let mut three = Row::from_run(scenario.clone(), "pg x3", &run_on(replicas.iter().map(endpoint).collect()).await);
    for r in [&mut sqlite_row, &mut one, &mut three] {
        compare(r, std::slice::from_ref(&floor_row));
    }
    add_note(&mut sqlite_row, "the vault on SQLite, same run");
    add_note(&mut one, "one replica on PostgreSQL (loopback, no standby)");
    add_note(&mut three, "three replicas on one PostgreSQL, connections spread over them, all in this process");
    rows.extend([sqlite_row, one, three, floor_row]);

    drop(probe);
    let _ = floor.stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), floor.task).await;
    for r in replicas {
        r.shutdown().await.unwrap();
    }
    sqlite.shutdown().await.unwrap();
    sim.shutdown().await;
    drop(cluster);
}
