//! Against a server with the default broker configuration: scale (start, memory, a
//! ListTenants walk), the storm on one cold tenant, the cold sweep under the default
//! upstream limiter, and registration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::tenant_service_client::TenantServiceClient;
use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::server;
use tonic::transport::Channel;

use crate::fixture::{self, token_request};
use crate::harness::Bench;
use crate::load::{Run, drive_count};
use crate::measure::{cpu_secs, max_in_window, mib, micros, status_kib};
use crate::report::{Row, audit_note, audit_snap, pct, status_line};
use crate::settings::Settings;

/// Scale (start, memory, ListTenants walk), storm, cold sweep and registration against a
/// server with the default broker configuration.
pub async fn phase_default(s: &Settings, b: &Bench, rows: &mut Vec<Row>) {
    let rss_before = status_kib("VmRSS");
    let t0 = Instant::now();
    let server = server::start(b.options(None)).await.unwrap();
    let started = t0.elapsed();
    let endpoint = format!("https://{}", server.addr);
    let token_ch = b.channels(&endpoint, "token-caller", 1).await.remove(0);
    let connected = t0.elapsed();
    let mut token = TokenServiceClient::new(token_ch.clone());
    let up0 = b.sim.token_requests();
    token.get_access_token(token_request(&b.first)).await.unwrap();
    let first = t0.elapsed();
    assert_eq!(b.sim.token_requests() - up0, 1, "the first token is minted upstream");
    let rss_started = status_kib("VmRSS");

    if s.runs("scale") {
        let mut row = Row::new(format!("scale: open+serve ({})", b.registered), "vault");
        row.requests = 1;
        row.p50 = Some(first.as_secs_f64() * 1000.0);
        row.notes = format!(
            "start() {:.0} ms, +TLS connect {:.0} ms, +first token (minted) {:.0} ms; RSS {:.1} MiB \
             (+{:.1} MiB over pre-start {:.1} MiB); insert {} tenants with add_tenants: {:.1} s",
            started.as_secs_f64() * 1e3,
            (connected - started).as_secs_f64() * 1e3,
            (first - connected).as_secs_f64() * 1e3,
            mib(rss_started),
            mib(rss_started.saturating_sub(rss_before)),
            mib(rss_before),
            b.registered,
            b.insert_secs
        );
        rows.push(row);

        // ListTenants full walk as the admin, page_size 500.
        let mut admin = TenantServiceClient::new(b.channels(&endpoint, "admin", 1).await.remove(0));
        let (c0, t) = (cpu_secs(), Instant::now());
        let (mut pages, mut seen, mut lat) = (0u64, 0usize, Vec::new());
        let mut page_token = String::new();
        loop {
            let p = Instant::now();
            let r = admin
                .list_tenants(pb::ListTenantsRequest { page_size: 500, page_token, filter: String::new() })
                .await
                .unwrap()
                .into_inner();
            lat.push(micros(p.elapsed()));
            pages += 1;
            seen += r.tenants.len();
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        let walk = t.elapsed().as_secs_f64();
        let cpu = cpu_secs() - c0;
        assert_eq!(seen, b.registered, "the walk sees every registered tenant once");
        lat.sort_unstable();
        let rss_walk = status_kib("VmRSS");
        rows.push(Row {
            requests: pages,
            per_sec: Some(pages as f64 / walk),
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            p999: pct(&lat, 0.999),
            cpu_us: Some(cpu / pages as f64 * 1e6),
            notes: format!(
                "full walk {walk:.2} s ({pages} pages of 500, {:.0} tenants/s); RSS after walk {:.1} MiB (HWM {:.1} MiB)",
                seen as f64 / walk,
                mib(rss_walk),
                mib(status_kib("VmHWM"))
            ),
            ..Row::new(format!("scale: ListTenants walk ({seen})"), "vault")
        });
    }

    if s.runs("storm") {
        let conns = b.channels(&endpoint, "token-caller", 8.min(s.storm)).await;
        let up0 = b.sim.token_requests();
        let barrier = Arc::new(tokio::sync::Barrier::new(s.storm));
        let c0 = cpu_secs();
        let mut tasks = Vec::new();
        for i in 0..s.storm {
            let mut client = TokenServiceClient::new(conns[i % conns.len()].clone());
            let (barrier, tenant) = (barrier.clone(), b.storm.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                let r = client.get_access_token(token_request(&tenant)).await;
                (t, Instant::now(), r.map(|r| r.into_inner().access_token))
            }));
        }
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        let mut run = Run::default();
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            let (a, z, r) = t.await.unwrap();
            first = Some(first.map_or(a, |f| f.min(a)));
            last = Some(last.map_or(z, |l| l.max(z)));
            match r {
                Ok(tok) => {
                    run.lat.push(micros(z - a));
                    tokens.insert(tok);
                }
                Err(st) => {
                    run.errors += 1;
                    run.first_error.get_or_insert_with(|| status_line(&st));
                }
            }
        }
        run.cpu = cpu_secs() - c0;
        run.secs = (last.unwrap() - first.unwrap()).as_secs_f64();
        run.lat.sort_unstable();
        run.ok = run.lat.len() as u64;
        let upstream = b.sim.token_requests() - up0;
        let mut row = Row::from_run(format!("storm: {} on 1 cold tenant", s.storm), "vault", &run);
        row.notes = format!(
            "upstream token requests seen by the sim: {upstream} (must be 1); distinct tokens handed out: {}; {} s wall{}",
            tokens.len(),
            format_args!("{:.3}", run.secs),
            if row.notes.is_empty() { String::new() } else { format!("; {}", row.notes) }
        );
        rows.push(row);
        // Correctness (single flight), not speed. Errors (say, an audit timeout on an
        // overloaded CI machine) are printed in the row, not asserted.
        assert_eq!(upstream, 1, "storm: exactly one upstream request");
        assert!(tokens.len() <= 1, "storm: everyone who got a token got the same one");
    }

    if s.runs("cold") {
        // Let the default limiter's burst refill (4 at 2/s) after the first call and the storm.
        tokio::time::sleep(Duration::from_millis(if s.smoke { 0 } else { 2500 })).await;
        let clients: Arc<Vec<TokenServiceClient<Channel>>> =
            Arc::new(b.channels(&endpoint, "token-caller", 8).await.into_iter().map(TokenServiceClient::new).collect());
        let up0 = b.sim.token_requests();
        let since = Instant::now();
        let cold = b.cold.clone();
        let (run, errs) = drive_count(b.cold.len(), s.cold_workers, move |i, w| {
            let mut c = clients[w % clients.len()].clone();
            let tenant = cold[i].clone();
            async move { c.get_access_token(token_request(&tenant)).await.map(|_| ()) }
        })
        .await;
        let upstream = b.sim.token_requests() - up0;
        let times: Vec<Instant> = b.sim.token_request_times().into_iter().filter(|t| *t >= since).collect();
        let limited = errs
            .iter()
            .filter(|e| e.code() == tonic::Code::Unavailable && e.message().contains("rate limited"))
            .count();
        let other = errs.len() - limited;
        let span = match (times.first(), times.last()) {
            (Some(a), Some(z)) if times.len() > 1 => (*z - *a).as_secs_f64(),
            _ => 0.0,
        };
        let mut row = Row::from_run(format!("cold sweep: {} tenants", b.cold.len()), "vault", &run);
        row.errors = errs.len() as u64;
        // CPU per answered request (most answers are refusals), not per token.
        row.cpu_us = Some(run.cpu / b.cold.len().max(1) as f64 * 1e6);
        row.notes = format!(
            "default limiter 2/s burst 4 (CPU/op per answer): {} ok, {limited} rate-limited, {other} other errors; upstream {upstream} in \
             {:.2} s = {:.2}/s over the sweep ({:.2}/s first-to-last request), max {} in any 1 s{}",
            run.ok,
            run.secs,
            upstream as f64 / run.secs,
            if span > 0.0 { (upstream as f64 - 1.0) / span } else { 0.0 },
            max_in_window(&times, Duration::from_secs(1)),
            if other > 0 {
                format!(
                    "; first other: {}",
                    errs.iter().find(|e| !e.message().contains("rate limited")).map(status_line).unwrap_or_default()
                )
            } else {
                String::new()
            }
        );
        rows.push(row);
        assert_eq!(run.ok as usize + errs.len(), b.cold.len(), "cold sweep: every request answered");
    }

    if s.runs("registration") {
        let clients: Arc<Vec<TenantServiceClient<Channel>>> = Arc::new(
            b.channels(&endpoint, "admin", s.reg_clients.max(1))
                .await
                .into_iter()
                .map(TenantServiceClient::new)
                .collect(),
        );
        let before = audit_snap(&server).await;
        let (run, _) = drive_count(s.keys, s.reg_clients.max(1) * s.reg_inflight.max(1), move |i, w| {
            let mut c = clients[w % clients.len()].clone();
            async move {
                c.register_client_key(pb::RegisterClientKeyRequest {
                    tenant_id: format!("reg-{i:06}"),
                    environment: "demo".into(),
                    client_key: fixture::client_key(50_000_000 + i),
                    display_name: format!("Registered {i} AS"),
                    skip_validation: true,
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        })
        .await;
        let after = audit_snap(&server).await;
        let mut row = Row::from_run(format!("registration: {} keys", s.keys), "vault", &run);
        row.notes = format!(
            "RegisterClientKey skip_validation, {} conns x {} in flight, {:.2} s{}; {}",
            s.reg_clients,
            s.reg_inflight,
            run.secs,
            if row.notes.is_empty() { String::new() } else { format!("; {}", row.notes) },
            audit_note(&before, &after, run.secs)
        );
        rows.push(row);
    }

    drop(token);
    drop(token_ch);
    server.shutdown().await.unwrap();
}
