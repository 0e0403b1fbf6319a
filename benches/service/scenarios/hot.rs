//! Against a server whose cache is warm: the hot runs at each shape and the handshake
//! runs, each against the vault and then the floor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::server;
use pogo_vault::tokens::BrokerConfig;
use prost::Message;
use tonic::transport::Channel;

use crate::fixture::token_request;
use crate::floor::{Journal, start_floor};
use crate::harness::Bench;
use crate::load::{Handshake, drive_count, handshake_run, hot_run};
use crate::report::{Row, add_note, audit_note, audit_snap, push_pair};
use crate::settings::Settings;

pub async fn phase_hot(s: &Settings, b: &Bench, rows: &mut Vec<Row>) {
    // Bench-only: the cache is warmed through the real API, one upstream mint per tenant. At
    // the validated maximum (10/s) warming 10,000 tenants would take 17 minutes, so this
    // server's limiter is raised past what `config check` accepts (ServeOptions is not
    // validated). Cache hits never touch the limiter, so the timed runs are unaffected.
    let tokens = BrokerConfig {
        upstream_rate_per_second: s.warm_rate,
        upstream_burst: 100,
        limiter_max_wait: Duration::from_secs(60),
        ..BrokerConfig::default()
    };
    let opts = b.options(Some(tokens));
    let floor_opts = b.options(None);
    let server = server::start(opts).await.unwrap();
    let endpoint = format!("https://{}", server.addr);

    let warm_clients: Arc<Vec<TokenServiceClient<Channel>>> =
        Arc::new(b.channels(&endpoint, "token-caller", 4).await.into_iter().map(TokenServiceClient::new).collect());
    let up0 = b.sim.token_requests();
    let hot = b.hot.clone();
    let (warm, _) = drive_count(hot.len(), s.warm_concurrency, move |i, w| {
        let mut c = warm_clients[w % warm_clients.len()].clone();
        let tenant = hot[i].clone();
        async move { c.get_access_token(token_request(&tenant)).await.map(|_| ()) }
    })
    .await;
    let minted = b.sim.token_requests() - up0;
    println!(
        "warm-up: {} hot tenants cached in {:.1} s ({:.0} mints/s), {} upstream requests, {} errors{}",
        b.hot.len(),
        warm.secs,
        warm.ok as f64 / warm.secs,
        minted,
        warm.errors,
        warm.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    if warm.errors == 0 {
        assert_eq!(minted as usize, b.hot.len(), "warm-up: one mint per hot tenant (the cache and single flight)");
    } else {
        println!("WARNING: warm-up had errors; hot rows may include cache misses");
    }

    // The floor answers with a real response of a real size.
    let mut probe = TokenServiceClient::new(b.channels(&endpoint, "token-caller", 1).await.remove(0));
    let real = probe.get_access_token(token_request(&b.hot[0])).await.unwrap().into_inner();
    let floor = start_floor(&floor_opts, real.clone(), None).await;
    let floor_endpoint = format!("https://{}", floor.addr);
    // The durable floor writes records of the size the vault's audit records take on disk.
    let record_bytes = crate::harness::audit_bytes_per_record(server.state.audit.path().expect("a file"));
    let durable = start_floor(&floor_opts, real.clone(), Some(Journal::start(b.dir.path(), record_bytes))).await;
    let durable_endpoint = format!("https://{}", durable.addr);
    println!(
        "durable floor: the floor, answering after a group-committed pwrite + fdatasync of {record_bytes} bytes per \
         request (the vault's audit database after warm-up: bytes in use / events)"
    );
    let mut floor_probe = TokenServiceClient::new(b.channels(&floor_endpoint, "token-caller", 1).await.remove(0));
    let canned = floor_probe.get_access_token(token_request(&b.hot[0])).await.unwrap().into_inner();
    println!(
        "response size: vault {} bytes, floor {} bytes (encoded protobuf)",
        real.encoded_len(),
        canned.encoded_len()
    );
    assert_eq!(real.encoded_len(), canned.encoded_len());

    let up_hot = b.sim.token_requests();
    if s.runs("hot") {
        for &(c, per) in &s.hot_shapes {
            let mut pair = Vec::new();
            for (ep, who) in [(&endpoint, "vault"), (&floor_endpoint, "floor"), (&durable_endpoint, "durable")] {
                if !s.drives(who) {
                    continue;
                }
                let chans = b.channels(ep, "token-caller", c).await;
                let (before, t) = (audit_snap(&server).await, Instant::now());
                let run = hot_run(&chans, per, &b.hot, s.warm(), s.secs).await;
                let mut row = Row::from_run(format!("hot {c}x{per}"), who, &run);
                if who == "vault" {
                    add_note(&mut row, &audit_note(&before, &audit_snap(&server).await, t.elapsed().as_secs_f64()));
                }
                pair.push(row);
            }
            push_pair(rows, pair);
        }
        if let Some(r) = rows.iter_mut().rev().find(|r| r.server == "vault" && r.scenario.starts_with("hot")) {
            add_note(
                r,
                &format!("upstream requests during hot runs: {} (0 = all cache hits)", b.sim.token_requests() - up_hot),
            );
        }
    }

    if s.runs("handshakes") {
        let tls = pogo_vault::tls::tonic_client_tls(&b.files("token-caller"), "localhost").unwrap();
        for kind in [Handshake::ResumedWithRpc, Handshake::FullWithRpc, Handshake::ResumedConnectOnly] {
            let mut pair = Vec::new();
            for (ep, who) in [(&endpoint, "vault"), (&floor_endpoint, "floor"), (&durable_endpoint, "durable")] {
                if !s.drives(who) {
                    continue;
                }
                let (before, t) = (audit_snap(&server).await, Instant::now());
                let run = handshake_run(ep.clone(), tls.clone(), kind, &b.hot, s.warm(), s.secs).await;
                let mut row = Row::from_run(kind.label(), who, &run);
                if who == "vault" && kind != Handshake::ResumedConnectOnly {
                    add_note(&mut row, &audit_note(&before, &audit_snap(&server).await, t.elapsed().as_secs_f64()));
                }
                pair.push(row);
            }
            push_pair(rows, pair);
        }
        if let Some(r) = rows.iter_mut().find(|r| r.scenario == Handshake::ResumedWithRpc.label()) {
            r.notes = format!(
                "new TLS 1.3 mTLS connection per request, sequential{}",
                if r.notes.is_empty() { String::new() } else { format!("; {}", r.notes) }
            );
        }
    }

    if s.runs("first") {
        let endpoints = crate::scenarios::disclosure::Endpoints {
            vault: &endpoint,
            floor: &floor_endpoint,
            durable: &durable_endpoint,
        };
        crate::scenarios::disclosure::first_disclosures(s, b, &server, &endpoints, rows).await;
    }
    if s.runs("runaway") {
        crate::scenarios::disclosure::runaway(s, b, &server, &endpoint, rows).await;
    }

    drop(probe);
    drop(floor_probe);
    for f in [floor, durable] {
        let _ = f.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), f.task).await;
    }
    server.shutdown().await.unwrap();
}
