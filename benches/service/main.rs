//! The whole service under load, against a floor: the real vault (durable audit, the real
//! mTLS acceptor and TLS configuration from a generated dev PKI, the simulator as Go, all in
//! a temporary directory) and a bare tonic `TokenService` that answers every call with a
//! canned response of the same encoded size, served through the *same* acceptor
//! (`server::conn::accept_loop` + `TlsState` + `tls::load_server_tls`) and the same tonic
//! transport settings. The difference between the two is what the vault adds on top of
//! gRPC over mutual TLS: the gate layer, the handler, the broker's cache and the audit append.
//!
//! Scenarios (sizes from environment variables, defaults in brackets):
//! - hot: `GetAccessToken` for random tenants out of `SERVICE_BENCH_HOT_TENANTS` [10000], all
//!   cached first, at `SERVICE_BENCH_HOT_SHAPES` [1x1,1x64,4x16,16x4] (connections × requests
//!   in flight per connection), `SERVICE_BENCH_SECS` [10] seconds each, vault then floor.
//! - storm: `SERVICE_BENCH_STORM` [1000] concurrent requests for one cold tenant; asserts
//!   that the simulator saw exactly one upstream token request and one token was handed out.
//! - cold sweep: `SERVICE_BENCH_COLD` [5000] cold tenants once each under the default upstream
//!   limiter (2/s, burst 4): upstream rate, successes, rate-limited refusals.
//! - handshakes: a new TLS connection per request, sequential, for the same seconds: resumed
//!   handshake + 1 GetAccessToken (the caller keeps its TLS session cache, as rustls does by
//!   default), full handshake + 1 GetAccessToken, and the resumed handshake alone (no RPC).
//! - first disclosures: 4 slots × 16 in flight, every request a new (caller, serial, peer,
//!   token) pair (new client certificates, `SERVICE_BENCH_FIRST_CERTS` [8] per slot): every
//!   vault answer waits for its durable record. Vault, floor and durable floor.
//! - runaway: a well-behaved caller paced at `SERVICE_BENCH_POLITE_RATE` [20]/s alone for half
//!   of `SERVICE_BENCH_RUNAWAY_SECS` [60], then beside a runaway caller (4×16 at full speed)
//!   for all of it, once on the default budget (100/s) and once on a grant of 10/s; the
//!   well-behaved p99 against alone, and the audit records the runaway added.
//! - scale: `SERVICE_BENCH_SCALE_TENANTS` [1000000] tenants inserted with `Vault::add_tenants`
//!   before start: `server::start` to first token, resident memory, a ListTenants full walk.
//! - registration: `RegisterClientKey` (skip_validation) for `SERVICE_BENCH_KEYS` [10000] keys
//!   from `SERVICE_BENCH_REG_CLIENTS` [4] connections × `SERVICE_BENCH_REG_INFLIGHT` [4].
//! - gateway: `GET /v2/Customers` through the API gateway (HTTPS with mutual TLS, HTTP/1.1,
//!   both records durable, a limiter slot each) and straight to the simulator with the same
//!   token and subscription key, `SERVICE_BENCH_GATEWAY_REQUESTS` [120] of each, interleaved
//!   one after the other at 6 a second (below the gateway's default 8/s, so no request
//!   waits for the limiter): the gateway's added latency, same run, same moment.
//! - postgres: the hot path at 6x11 against the floor, with the vault on SQLite, on PostgreSQL
//!   (one replica) and on PostgreSQL with three replicas sharing one database, the load
//!   spread over them (`scenarios/postgres.rs`; min(`SERVICE_BENCH_HOT_TENANTS`, 2000)
//!   tenants moved into a throwaway cluster; skipped without PostgreSQL installed).
//!
//! The server is configured the way `serve --config` does it: a config file with only the
//! required keys (every other setting at its production default: durable audit, TLS 1.3,
//! limits, timeouts), parsed, validated, `ServeOptions::from_config`. One exception, for the
//! hot phase only: its warm-up mints 10,000 tokens through the real API, so that server's
//! upstream limiter is raised to `SERVICE_BENCH_WARM_RATE` [1000]/s (cache hits never touch the
//! limiter). Vault rows carry the audit writer's own figures (records per commit, commits/s,
//! commit latency), read from the server's metrics before and after the run.
//!
//! The durable floor is the floor answering only after a group-committed `pwrite` +
//! `fdatasync` of a record as large as the vault's audit records are on disk (measured from
//! its database after the warm-up): the physical limit of "durable before the answer".
//! Vault rows show vault/floor and vault/durable floor. The load generators' identity,
//! `token-caller`, has a grant of 1,000,000 requests a second (the bench's policy): the
//! per-caller budget (100/s by default) would otherwise refuse the hot rows.
//!
//! Knobs: `SERVICE_BENCH_SMOKE=1`: tiny sizes, a few seconds in all (CI checks the bench still
//! runs; it asserts correctness only). `SERVICE_BENCH_ONLY=scale,storm,cold,registration,hot,
//! handshakes,first,runaway,gateway,postgres`: a subset. `SERVICE_BENCH_SERVERS` [vault,floor,durable]: which servers
//! the hot, handshake and first-disclosure runs drive (profiling one at a time). `SERVICE_BENCH_KEEP=1`: keep the temporary
//! directory (databases) and print its path. `SERVICE_BENCH_COLD_WORKERS` [64],
//! `SERVICE_BENCH_WARM_CONCURRENCY` [64]. `SERVICE_BENCH_DIR`: where the temporary directory goes
//! (default: the system temp dir; a tmpfs makes fsync free and the audit figures meaningless).
//!
//! Everything (simulator, vault, floor, load generator) runs in this one process on one tokio
//! runtime, so "CPU per request" (process user + system time over the window, divided by the
//! requests) includes the load generator's own share. It is comparable between vault and floor,
//! not an absolute server cost. Only correctness is asserted; speed is printed, never checked.

//!
//! Layout: `harness.rs` sets the vault up from the tests' fixture (`tests/common/fixture.rs`:
//! the trust domain, the bulk client keys, the demo policy, the served files and their
//! configuration), `floor.rs` is the floor, `load.rs` the load generators, `scenarios/` the
//! two phases, `report.rs` the table, `measure.rs` the process figures.

// A benchmark binary: a failed setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../../tests/common/fixture.rs"]
mod fixture;
mod floor;
mod harness;
mod load;
mod measure;
// The tests' throwaway clusters; the bench uses only a few of their helpers.
#[allow(dead_code)]
#[path = "../../tests/common/pg.rs"]
mod pg;
mod report;
mod scenarios;
mod settings;

use std::time::Instant;

use harness::INSERT_BATCH;
use report::{loadavg, machine, now_rfc3339, print_table};
use scenarios::{phase_default, phase_gateway, phase_hot, phase_postgres};
use settings::Settings;

fn main() {
    let s = Settings::from_env();
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("SERVICE_BENCH_") || k == "CARGO_TARGET_DIR")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.sort();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("$ {}{}cargo bench --bench service", vars.join(" "), if vars.is_empty() { "" } else { " " });
    println!("date: {}", now_rfc3339());
    println!("load average at start (other work on this machine skews every figure): {}", loadavg());
    println!("machine: {}", machine());
    println!(
        "build: {}; tokio multi-thread runtime, {} workers; temp dir {} (audit synchronous=FULL, group commit)",
        if cfg!(debug_assertions) { "DEBUG (figures meaningless)" } else { "release" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.dir.display()
    );
    println!(
        "sizes: {} s per timed run (+{:.1} s warm-up), hot tenants {}, shapes {:?}, storm {}, cold {}, scale {}, keys {}{}",
        s.secs,
        s.warm().as_secs_f64(),
        s.hot_tenants,
        s.hot_shapes,
        s.storm,
        s.cold,
        s.scale,
        s.keys,
        if s.smoke { " (SMOKE: sizes too small to mean anything)" } else { "" }
    );

    let t = Instant::now();
    let b = rt.block_on(harness::set_up(&s));
    println!(
        "set-up: {} tenants inserted with Vault::add_tenants in batches of {INSERT_BATCH} in {:.1} s; total set-up {:.1} s",
        b.registered,
        b.insert_secs,
        t.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    if ["scale", "storm", "cold", "registration"].iter().any(|x| s.runs(x)) {
        rt.block_on(phase_default(&s, &b, &mut rows));
    }
    if ["hot", "handshakes", "first", "runaway"].iter().any(|x| s.runs(x)) {
        rt.block_on(phase_hot(&s, &b, &mut rows));
    }
    if s.runs("gateway") {
        rt.block_on(phase_gateway(&s, &b, &mut rows));
    }
    if s.runs("postgres") {
        rt.block_on(phase_postgres(&s, &mut rows));
    }
    // Hot and handshake rows first: they are the ones compared with the floor.
    rows.sort_by_key(|r| match r.scenario.split([' ', ':']).next().unwrap_or("") {
        "hot" => 0,
        "handshakes" => 1,
        "postgres" => 2,
        "first" => 3,
        "well-behaved" => 4,
        "storm" => 5,
        "gateway" => 6,
        "cold" => 7,
        "scale" => 8,
        _ => 9,
    });
    println!();
    println!(
        "CPU µs/op = process user+sys CPU over the window / successful requests; the load generator, the simulator \
         and (for the vault) the audit writer thread run in this same process, so it is a comparison, not a server cost."
    );
    println!();
    print_table(&rows);
    rt.block_on(b.sim.shutdown());
    if s.keep {
        let kept = b.dir.keep();
        println!("kept {}", kept.display());
    }
    println!("\ntotal {:.1} s; load average at end: {}", t.elapsed().as_secs_f64(), loadavg());
}
