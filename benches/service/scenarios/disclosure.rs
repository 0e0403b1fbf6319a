//! The rows of the disclosure rule and the per-caller budget (issue 17):
//! - first disclosures: every request a new (caller, serial, peer, token) pair, so every
//!   vault answer waits for its durable record: 4 connection slots × 16 in flight, each slot
//!   walking the warm tenants once per client certificate (a new certificate is a new
//!   serial, hence new pairs) and moving to its next certificate's connection when done;
//! - runaway: a caller asking at full speed (4×16, closed loop) beside a well-behaved one
//!   (paced), on a budget; the well-behaved caller's latency alone and beside it, and what
//!   the runaway added to the audit log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::server::RunningServer;
use tonic::transport::Channel;

use crate::fixture::token_request;
use crate::harness::{Bench, audit_bytes_per_record, issue_cert};
use crate::load::{Run, cpu_sampler, gather};
use crate::measure::{cpu_secs, micros};
use crate::report::{Row, add_note, audit_note, audit_snap, push_pair, status_line};
use crate::settings::Settings;

pub struct Endpoints<'a> {
    pub vault: &'a str,
    pub floor: &'a str,
    pub durable: &'a str,
}

const SLOTS: usize = 4;
const PER_SLOT: usize = 16;

/// A counter from the vault's metrics text.
async fn metric(server: &RunningServer, name: &str) -> f64 {
    let text = server.state.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

pub async fn first_disclosures(
    s: &Settings,
    b: &Bench,
    server: &RunningServer,
    e: &Endpoints<'_>,
    rows: &mut Vec<Row>,
) {
    let label = format!("first disclosures {SLOTS}x{PER_SLOT}");
    let mut group = Vec::new();
    for (ep, who) in [(e.vault, "vault"), (e.floor, "floor"), (e.durable, "durable")] {
        if !s.drives(who) {
            continue;
        }
        // Certificates and connections first, outside the timed window.
        let mut slots = Vec::new();
        for slot in 0..SLOTS {
            let mut chans = Vec::new();
            for k in 0..s.first_certs {
                let files = issue_cert(b, "token-caller", &format!("first-{who}-{slot}-{k}"));
                chans.push(pogo_vault::client::connect(ep, &files, Some("localhost")).await.unwrap());
            }
            slots.push(Arc::new(chans));
        }
        let firsts0 = metric(server, "pogo_vault_token_disclosures_total{kind=\"first\"}").await;
        let (before, t) = (audit_snap(server).await, Instant::now());
        let run = walk_pairs(&slots, &b.hot, s.warm(), s.secs).await;
        let firsts = metric(server, "pogo_vault_token_disclosures_total{kind=\"first\"}").await - firsts0;
        let mut row = Row::from_run(label.clone(), who, &run);
        if who == "vault" {
            add_note(&mut row, &audit_note(&before, &audit_snap(server).await, t.elapsed().as_secs_f64()));
            // Warm-up answers count too: every answer of the run, timed or not, was a first.
            add_note(&mut row, &format!("first disclosures recorded durably: {firsts:.0} (every answer)"));
        }
        group.push(row);
    }
    push_pair(rows, group);
}

/// `slots` × `PER_SLOT` tasks; slot `i`'s n-th request asks for tenant `n % T` on the
/// connection of its `n / T`-th certificate: no pair twice while certificates last.
async fn walk_pairs(slots: &[Arc<Vec<Channel>>], tenants: &Arc<Vec<String>>, warm: Duration, secs: f64) -> Run {
    let start = Instant::now() + warm;
    let end = start + Duration::from_secs_f64(secs);
    let cpu = cpu_sampler(start, end);
    let mut tasks = Vec::new();
    for chans in slots {
        let cursor = Arc::new(AtomicUsize::new(0));
        for _ in 0..PER_SLOT {
            let (chans, cursor, tenants) = (chans.clone(), cursor.clone(), tenants.clone());
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors, mut first) = (Vec::new(), 0u64, None::<String>);
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    let n = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(ch) = chans.get(n / tenants.len()) else {
                        errors += 1;
                        first.get_or_insert_with(|| "pairs exhausted: raise SERVICE_BENCH_FIRST_CERTS".into());
                        break;
                    };
                    let mut client = TokenServiceClient::new(ch.clone());
                    let r = client.get_access_token(token_request(&tenants[n % tenants.len()])).await;
                    if t < start {
                        continue;
                    }
                    match r {
                        Ok(_) => lat.push(micros(t.elapsed())),
                        Err(s) => {
                            errors += 1;
                            first.get_or_insert_with(|| status_line(&s));
                        }
                    }
                }
                (lat, errors, first)
            }));
        }
    }
    let mut run = gather(tasks).await;
    run.secs = secs;
    run.cpu = cpu.await.unwrap();
    run
}

/// What the runaway's requests came to.
#[derive(Default)]
struct Runaway {
    ok: u64,
    refused: u64,
    other: u64,
}

pub async fn runaway(s: &Settings, b: &Bench, server: &RunningServer, endpoint: &str, rows: &mut Vec<Row>) {
    let polite = pogo_vault::client::connect(endpoint, &b.files("token-caller"), Some("localhost")).await.unwrap();
    let alone = paced(polite.clone(), &b.hot, s.polite_rate, s.runaway_secs / 2.0).await;
    let mut row = Row::from_run(format!("well-behaved {}/s alone", s.polite_rate), "vault", &alone);
    add_note(&mut row, "the baseline of the runaway rows");
    rows.push(row);
    for (identity, budget, label) in [
        ("runaway", "the default budget, 100/s", "beside runaway at 100/s"),
        ("runaway-10", "a grant of 10/s", "beside runaway at 10/s"),
    ] {
        let files = issue_cert(b, identity, &format!("{identity}-cert"));
        let mut chans = Vec::new();
        for _ in 0..4 {
            chans.push(pogo_vault::client::connect(endpoint, &files, Some("localhost")).await.unwrap());
        }
        let path = server.state.audit.path().expect("the benchmark's audit log is a file").to_owned();
        let (records0, used0) = (metric(server, "pogo_vault_audit_records_total").await, used_bytes(&path));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for ch in &chans {
            for k in 0..16 {
                let (mut client, stop, tenants) = (TokenServiceClient::new(ch.clone()), stop.clone(), b.hot.clone());
                tasks.push(tokio::spawn(async move {
                    let mut r = Runaway::default();
                    let mut i = k;
                    while !stop.load(Ordering::Relaxed) {
                        i = (i + 7919) % tenants.len();
                        match client.get_access_token(token_request(&tenants[i])).await {
                            Ok(_) => r.ok += 1,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => r.refused += 1,
                            Err(_) => r.other += 1,
                        }
                    }
                    r
                }));
            }
        }
        let beside = paced(polite.clone(), &b.hot, s.polite_rate, s.runaway_secs).await;
        stop.store(true, Ordering::Relaxed);
        let mut total = Runaway::default();
        for t in tasks {
            let r = t.await.unwrap();
            total.ok += r.ok;
            total.refused += r.refused;
            total.other += r.other;
        }
        // Let the last window of refusals be recorded.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let records = metric(server, "pogo_vault_audit_records_total").await - records0;
        let used = used_bytes(&path) - used0;
        let per_record = audit_bytes_per_record(&path);
        let throttled = throttled_records(&path, identity);
        let theirs = total.ok + throttled;
        let mut row = Row::from_run(format!("well-behaved {label}"), "vault", &beside);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("-".to_owned(), |(a, b)| format!("{:.2}", a / b));
        row.ratio = format!("p99 {} of alone", ratio(beside.p99(), alone.p99()));
        add_note(
            &mut row,
            &format!(
                "runaway ({identity}) on {budget}, 4x16 at full speed for {:.0} s: {} answered, {} refused (RESOURCE_EXHAUSTED), {} other \
                 errors; audit growth from the runaway: {theirs} records ({} token records + {throttled} token_throttled) = \
                 {:.2} MB at {per_record} B/record; the whole log meanwhile: {records:.0} records, {:.2} MB of pages in use",
                s.runaway_secs,
                total.ok,
                total.refused,
                total.other,
                total.ok,
                (theirs as f64 * per_record as f64) / 1e6,
                used as f64 / 1e6
            ),
        );
        rows.push(row);
    }
}

/// `rate` requests a second on one connection for `secs` (random hot tenants).
async fn paced(ch: Channel, tenants: &Arc<Vec<String>>, rate: f64, secs: f64) -> Run {
    let mut client = TokenServiceClient::new(ch);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (c0, mut run, mut i) = (cpu_secs(), Run::default(), 0usize);
    while Instant::now() < end {
        tick.tick().await;
        i = (i + 104_729) % tenants.len();
        let t = Instant::now();
        match client.get_access_token(token_request(&tenants[i])).await {
            Ok(_) => run.lat.push(micros(t.elapsed())),
            Err(s) => {
                run.errors += 1;
                run.first_error.get_or_insert_with(|| status_line(&s));
            }
        }
    }
    run.ok = run.lat.len() as u64;
    run.lat.sort_unstable();
    run.secs = secs;
    run.cpu = cpu_secs() - c0;
    run
}

/// Pages in use in the audit database after a passive checkpoint, in bytes.
fn used_bytes(path: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (q("PRAGMA page_count") - q("PRAGMA freelist_count")) * q("PRAGMA page_size")
}

fn throttled_records(path: &std::path::Path, identity: &str) -> u64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let caller = format!("spiffe://{}/service/{identity}", crate::fixture::TRUST);
    c.query_row("SELECT count(*) FROM events WHERE action = 'token_throttled' AND caller = ?1", [caller], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(0, |n| n as u64)
}
