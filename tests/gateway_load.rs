#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The gateway under load (issue 19, must-show 3): three callers hammer it for 20 s through
//! the one limiter of the integration (8 a second, no burst, Go's own limit 10), one of
//! them with four times the requests in flight of the others: the
//! simulator never sees more than the configured rate in any second (one more at most, from
//! network jitter between the limiter and the simulator at a window's edges), each caller
//! gets its fair share (within 20 % of the mean), Go's 429 pauses all of them, and every
//! answered request has its audit record.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture::grant;
use common::server::TestServer;
use pogo_vault::audit::{Action, AuditFilter};

const RATE: f64 = 8.0;
const CALLERS: [&str; 3] = ["svc-a", "svc-b", "svc-c"];
/// Requests each caller keeps in flight: one busy caller and two modest ones. First come,
/// first served would give the busy one two thirds of Go; fair queuing gives each a third.
const IN_FLIGHT: [usize; 3] = [8, 2, 2];
const RUN: Duration = Duration::from_secs(20);
const FAULT_AT: Duration = Duration::from_secs(8);
const GO_RETRY_AFTER: u64 = 3;

/// One answer a caller got: who, when, the status, the gateway's request id.
struct Got {
    caller: &'static str,
    at: Instant,
    status: u16,
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_callers_share_the_budget_fairly_and_gos_429_pauses_them_all() {
    let policy: String = CALLERS
        .iter()
        .map(|c| format!("{}api = [\"GET /v2/Customers\"]\n", grant(&format!("service/{c}"), &["api"], &["*"])))
        .collect();
    let ts = TestServer::start_gateway(&policy, |o| {
        o.tokens.upstream_rate_per_second = RATE;
        o.tokens.upstream_burst = 1;
    })
    .await;
    ts.sim.set_rate_limit(10, Duration::from_secs(1));
    for c in CALLERS {
        ts.issue(c);
    }
    ts.register("acme", 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (caller, in_flight) in CALLERS.into_iter().zip(IN_FLIGHT) {
        let client = ts.https(caller, caller != "svc-b");
        for _ in 0..in_flight {
            let (client, got) = (client.clone(), got.clone());
            let url = format!("{}/acme/v2/Customers?pageSize=1", ts.gateway_url());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < RUN {
                    let r = client.get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
                    let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let _ = r.bytes().await;
                    got.lock().unwrap().push(Got { caller, at: Instant::now(), status, id });
                    if status == 429 {
                        // A well-behaved client honours Retry-After.
                        tokio::time::sleep(Duration::from_secs(wait.unwrap_or(1))).await;
                    }
                }
            }));
        }
    }
    tokio::time::sleep(FAULT_AT).await;
    let fault_set = Instant::now();
    ts.sim.fail_next_429(1, GO_RETRY_AFTER);
    for t in tasks {
        t.await.unwrap();
    }
    let got = std::mem::take(&mut *got.lock().unwrap());

    // The budget: never more than the configured rate in any second at Go.
    let most = ts.sim.max_requests_in_any_second();
    println!("requests at the simulator: {} in all; the most in any second: {most}", ts.sim.request_times().len());
    assert!(most as f64 <= RATE + 1.0, "{most} requests reached Go within one second (rate {RATE})");

    // Go's 429 paused everyone: nothing reached Go for Retry-After after it.
    let arrivals = ts.sim.request_times();
    let refused_at = *arrivals.iter().find(|t| **t > fault_set).expect("a request after the fault was set");
    let next = arrivals.iter().find(|t| **t > refused_at).copied();
    let gap = next.map_or(Duration::MAX, |n| n - refused_at);
    println!("after Go's 429 the next request reached Go {gap:?} later");
    assert!(gap >= Duration::from_millis(GO_RETRY_AFTER * 1000 - 100), "Go was asked again {gap:?} after its 429");
    let during = got
        .iter()
        .filter(|g| {
            g.status == 200
                && g.at > refused_at + Duration::from_millis(200)
                && g.at < refused_at + Duration::from_secs(2)
        })
        .count();
    assert_eq!(during, 0, "callers were answered by Go while it had asked for a pause");
    assert_eq!(
        got.iter().filter(|g| g.status == 429).map(|g| g.caller).collect::<HashSet<_>>().len(),
        3,
        "the pause reached every caller"
    );

    // A fair share: each caller's answers within 20 % of the mean.
    let mut ok: HashMap<&str, usize> = HashMap::new();
    for g in got.iter().filter(|g| g.status == 200) {
        *ok.entry(g.caller).or_default() += 1;
    }
    let mean = ok.values().sum::<usize>() as f64 / CALLERS.len() as f64;
    println!("answered per caller: {ok:?} (mean {mean:.1}); statuses: {:?}", status_counts(&got));
    for c in CALLERS {
        let n = ok.get(c).copied().unwrap_or(0) as f64;
        assert!((n - mean).abs() <= 0.2 * mean, "{c} got {n} answers, the mean is {mean:.1}");
    }
    assert!(mean >= 0.6 * RATE * (RUN.as_secs_f64() - GO_RETRY_AFTER as f64) / 3.0, "too few answers: {mean:.1} each");

    // Every answer has its record: Go's answer as `api_answered`, a refusal as `api_denied`.
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    let events = pogo_vault::audit::list(&conn, &AuditFilter::default(), None, 1_000_000).unwrap();
    let mut recorded: HashMap<&str, Vec<Action>> = HashMap::new();
    for e in &events {
        recorded.entry(e.record.request_id.as_str()).or_default().push(e.record.action);
    }
    for g in &got {
        let actions = recorded.get(g.id.as_str()).cloned().unwrap_or_default();
        let ok = match g.status {
            200 => actions.starts_with(&[Action::ApiRequested, Action::ApiAnswered]),
            _ => actions.contains(&Action::ApiAnswered) || actions.contains(&Action::ApiDenied),
        };
        assert!(ok, "request {} ({}) has records {actions:?}", g.id, g.status);
    }
    let go_429 = events
        .iter()
        .filter(|e| e.record.action == Action::ApiAnswered && e.record.upstream_status == Some(429))
        .count();
    assert_eq!(go_429, 1, "Go's one 429 is on record as its answer");
}

fn status_counts(got: &[Got]) -> HashMap<u16, usize> {
    let mut m = HashMap::new();
    for g in got {
        *m.entry(g.status).or_default() += 1;
    }
    m
}
