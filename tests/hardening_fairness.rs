//! Issue 13, fairness: one caller sweeping cold tenants must not use up the integration's
//! upstream budget. Two callers sweep cold tenants through the real broker (real SQLite
//! vault, the simulator over HTTP as Go) with a manual clock driving the limiter: B gets at
//! least 40 % of the upstream requests while both wait, and A alone gets the whole budget.
//! Before the fix the limiter reserved slots first come first served, so A's queue filled
//! `limiter_max_wait` and B was refused or got a few slots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::broker::{audit_of, go, start_sim, vault_of};
use pogo_vault::domain::TenantId;
use pogo_vault::sim::Sim;
use pogo_vault::tokens::{Broker, BrokerConfig, BrokerError, Clock, ManualClock, Requester, TokenSource};
use pogo_vault::vault::Vault;

const RATE: f64 = 10.0;

/// `a-0 .. a-{na-1}` and `b-0 .. b-{nb-1}`, all known to the simulator.
async fn setup(na: usize, nb: usize) -> (Sim, Arc<Vault>, tempfile::TempDir) {
    let sim = start_sim().await;
    let ids: Vec<String> = (0..na).map(|i| format!("a-{i}")).chain((0..nb).map(|i| format!("b-{i}"))).collect();
    let (vault, dir) = vault_of(&sim, &ids, false);
    (sim, vault, dir)
}

#[derive(Default)]
struct Counts {
    cold: AtomicU64,
    refused: AtomicU64,
}

/// `workers` tasks minting `tenants` (each once, cold) as `caller`, as fast as the broker
/// lets them; a refusal waits its `retry_after` on the manual clock and tries again.
fn sweep(
    broker: &Broker,
    clock: &Arc<ManualClock>,
    caller: &'static str,
    tenants: Vec<TenantId>,
    workers: usize,
    counts: &Arc<Counts>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = Arc::new(std::sync::Mutex::new(tenants));
    (0..workers)
        .map(|_| {
            let (broker, clock, queue, counts, stop) =
                (broker.clone(), clock.clone(), queue.clone(), counts.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let Some(t) = queue.lock().unwrap().pop() else { return };
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match broker.get_token_for(&t, Requester::new(caller, None), None).await {
                            Ok(lease) => {
                                assert!(matches!(lease.source, TokenSource::Upstream { .. }), "cold tenant {t}");
                                counts.cold.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(BrokerError::RateLimited { retry_after, .. }) => {
                                counts.refused.fetch_add(1, Ordering::Relaxed);
                                clock.sleep(retry_after.min(Duration::from_millis(500))).await;
                            }
                            Err(e) => panic!("{caller}: {e}"),
                        }
                    }
                }
            })
        })
        .collect()
}

/// Advances the manual clock in 5 ms steps (at least 1 ms of real time each, so the
/// workers and the simulator keep up: a slot is 20 steps) until `until()` holds or `max`
/// of manual time has passed.
async fn run_clock(clock: &ManualClock, max: Duration, until: impl Fn() -> bool) -> Duration {
    let step = Duration::from_millis(5);
    let mut passed = Duration::ZERO;
    while passed < max && !until() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        clock.advance(step);
        passed += step;
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_sweeping_cold_tenants_leaves_another_its_fair_share() {
    let (sim, vault, _dir) = setup(400, 40).await;
    let cfg = BrokerConfig {
        upstream_rate_per_second: RATE,
        upstream_burst: 1,
        limiter_max_wait: Duration::from_secs(2),
        ..BrokerConfig::default()
    };
    let clock = ManualClock::new();
    let broker = Broker::new(vault.clone(), go(Duration::from_secs(5)), cfg, clock.clone(), audit_of(&vault));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = (Arc::new(Counts::default()), Arc::new(Counts::default()));

    // A alone: 24 workers over 400 cold tenants for 5 s of limiter time. It gets the whole
    // budget: one request per 100 ms (the first at once).
    let a_tenants: Vec<TenantId> = (0..400).rev().map(|i| format!("a-{i}").parse().unwrap()).collect();
    let mut tasks = sweep(&broker, &clock, "spiffe://t/a", a_tenants, 24, &a, &stop);
    let alone = run_clock(&clock, Duration::from_secs(5), || false).await;
    let a_alone = a.cold.load(Ordering::Relaxed);
    let budget = RATE * alone.as_secs_f64();
    eprintln!(
        "A alone: {a_alone} cold mints in {alone:?} (budget {budget}), {} refusals",
        a.refused.load(Ordering::Relaxed)
    );
    assert!(a_alone as f64 >= budget * 0.9, "A alone got {a_alone} of a budget of {budget}");
    assert!(a.refused.load(Ordering::Relaxed) > 0, "A asked for more than the budget");

    // Both: B sweeps 40 cold tenants with 4 workers while A keeps sweeping.
    let (a0, up0) = (a.cold.load(Ordering::Relaxed), sim.token_requests());
    let b_tenants: Vec<TenantId> = (0..40).rev().map(|i| format!("b-{i}").parse().unwrap()).collect();
    let b_tasks = sweep(&broker, &clock, "spiffe://t/b", b_tenants, 4, &b, &stop);
    let both = run_clock(&clock, Duration::from_secs(30), || b.cold.load(Ordering::Relaxed) == 40).await;
    let (a_both, b_both) = (a.cold.load(Ordering::Relaxed) - a0, b.cold.load(Ordering::Relaxed));
    let upstream = sim.token_requests() - up0;
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "both: in {both:?} {upstream} upstream requests, B {b_both} cold mints ({} refusals), A {a_both}",
        b.refused.load(Ordering::Relaxed)
    );
    assert_eq!(b_both, 40, "B finished its sweep within 30 s of limiter time");
    assert!(b_both as f64 >= 0.4 * upstream as f64, "B got {b_both} of {upstream} upstream requests");
    assert!(a_both as f64 >= 0.4 * upstream as f64, "A got {a_both} of {upstream}: not starved either");
    // The shared budget still holds: at most one request per 100 ms (+1 at either end).
    assert!(upstream as f64 <= RATE * both.as_secs_f64() + 2.0, "{upstream} requests in {both:?}");
    tasks.extend(b_tasks);
    // Keep the clock moving so every worker wakes, sees `stop` and ends (bounded).
    run_clock(&clock, Duration::from_secs(60), || tasks.iter().all(|t| t.is_finished())).await;
    for t in tasks {
        assert!(t.is_finished(), "a worker did not stop");
        t.await.unwrap();
    }
}
