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
//! - scale: `SERVICE_BENCH_SCALE_TENANTS` [100000] tenants inserted with `Vault::add_tenants`
//!   before start: `server::start` to first token, resident memory, a ListTenants full walk.
//! - registration: `RegisterClientKey` (skip_validation) for `SERVICE_BENCH_KEYS` [10000] keys
//!   from `SERVICE_BENCH_REG_CLIENTS` [4] connections × `SERVICE_BENCH_REG_INFLIGHT` [4].
//!
//! The server is configured the way `serve --config` does it: a config file with only the
//! required keys (every other setting at its production default: durable audit, TLS 1.3,
//! limits, timeouts), parsed, validated, `ServeOptions::from_config`. One exception, for the
//! hot phase only: its warm-up mints 10,000 tokens through the real API, so that server's
//! upstream limiter is raised to `SERVICE_BENCH_WARM_RATE` [1000]/s (cache hits never touch the
//! limiter). Vault rows carry the audit writer's own figures (records per commit, commits/s,
//! commit latency), read from the server's metrics before and after the run.
//!
//! Knobs: `SERVICE_BENCH_SMOKE=1`: tiny sizes, a few seconds in all (CI checks the bench still
//! runs; it asserts correctness only). `SERVICE_BENCH_ONLY=scale,storm,cold,registration,hot,
//! handshakes`: a subset. `SERVICE_BENCH_SERVERS=vault|floor|vault,floor`: which servers the hot
//! and handshake runs drive (profiling one at a time). `SERVICE_BENCH_KEEP=1`: keep the temporary
//! directory (databases) and print its path. `SERVICE_BENCH_COLD_WORKERS` [64],
//! `SERVICE_BENCH_WARM_CONCURRENCY` [64]. `SERVICE_BENCH_DIR`: where the temporary directory goes
//! (default: the system temp dir; a tmpfs makes fsync free and the audit figures meaningless).
//!
//! Everything (simulator, vault, floor, load generator) runs in this one process on one tokio
//! runtime, so "CPU per request" (process user + system time over the window, divided by the
//! requests) includes the load generator's own share. It is comparable between vault and floor,
//! not an absolute server cost. Only correctness is asserted; speed is printed, never checked.

// A benchmark binary: a failed setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pogo_vault::config::Config;
use pogo_vault::crypto::ClientKey;
use pogo_vault::domain::{Environment, TenantId};
use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::tenant_service_client::TenantServiceClient;
use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::proto::v1::token_service_server::{TokenService, TokenServiceServer};
use pogo_vault::server::{self, ServeOptions, conn};
use pogo_vault::sim::{self, Sim, SimClient, SimConfig};
use pogo_vault::tls::{ClientTlsFiles, DevPki};
use pogo_vault::tokens::BrokerConfig;
use pogo_vault::vault::{Argon2Costs, InitKey, NewTenant, UnauditedFixture, Vault};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

const TRUST: &str = "bench.pogo";
/// The keep-alive interval `server::start` sets (not configurable), used for the floor too.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// `add_tenants` batch size for the scale set-up.
const INSERT_BATCH: usize = 5_000;

// ---------------------------------------------------------------- settings

struct Settings {
    smoke: bool,
    secs: f64,
    hot_tenants: usize,
    hot_shapes: Vec<(usize, usize)>,
    storm: usize,
    cold: usize,
    scale: usize,
    keys: usize,
    reg_clients: usize,
    reg_inflight: usize,
    cold_workers: usize,
    warm_concurrency: usize,
    /// Upstream rate of the hot-phase server while it warms its cache (bench only; see below).
    warm_rate: f64,
    only: Option<Vec<String>>,
    /// `vault`, `floor` or both: which servers the hot and handshake runs drive (profiling).
    servers: Vec<String>,
    /// Keep the temporary directory (databases) for inspection.
    keep: bool,
    dir: PathBuf,
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        _ => default,
    }
}

fn parse_shapes(s: &str) -> Vec<(usize, usize)> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (c, s) = p.trim().split_once('x').unwrap_or_else(|| panic!("shape {p:?} is not CxS"));
            (c.parse().expect("connections"), s.parse().expect("in flight per connection"))
        })
        .collect()
}

impl Settings {
    fn from_env() -> Settings {
        let smoke = env_or("SERVICE_BENCH_SMOKE", 0u8) != 0;
        fn pick<T>(smoke: bool, full: T, tiny: T) -> T {
            if smoke { tiny } else { full }
        }
        let d = |full: usize, tiny: usize| pick(smoke, full, tiny);
        Settings {
            smoke,
            secs: env_or("SERVICE_BENCH_SECS", pick(smoke, 10.0, 0.3)),
            hot_tenants: env_or("SERVICE_BENCH_HOT_TENANTS", d(10_000, 100)),
            hot_shapes: parse_shapes(&env_or("SERVICE_BENCH_HOT_SHAPES", "1x1,1x64,4x16,16x4".to_owned())),
            storm: env_or("SERVICE_BENCH_STORM", d(1_000, 100)),
            cold: env_or("SERVICE_BENCH_COLD", d(5_000, 50)),
            scale: env_or("SERVICE_BENCH_SCALE_TENANTS", d(100_000, 500)),
            keys: env_or("SERVICE_BENCH_KEYS", d(10_000, 40)),
            reg_clients: env_or("SERVICE_BENCH_REG_CLIENTS", 4),
            reg_inflight: env_or("SERVICE_BENCH_REG_INFLIGHT", 4),
            cold_workers: env_or("SERVICE_BENCH_COLD_WORKERS", 64),
            warm_concurrency: env_or("SERVICE_BENCH_WARM_CONCURRENCY", 64),
            warm_rate: env_or("SERVICE_BENCH_WARM_RATE", 1000.0),
            only: std::env::var("SERVICE_BENCH_ONLY")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect()),
            servers: env_or("SERVICE_BENCH_SERVERS", "vault,floor".to_owned())
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            keep: env_or("SERVICE_BENCH_KEEP", 0u8) != 0,
            dir: std::env::var_os("SERVICE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        }
    }

    fn drives(&self, server: &str) -> bool {
        self.servers.iter().any(|s| s == server)
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s == scenario))
    }

    /// Untimed warm-up at the start of each timed run.
    fn warm(&self) -> Duration {
        Duration::from_secs_f64((self.secs / 5.0).min(1.0))
    }
}

// ---------------------------------------------------------------- process figures

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of the whole process so far.
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: field 3 (state) is f[0], so utime (14) is f[11], stime (15) f[12].
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / clk_tck()
}

/// A `/proc/self/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "nproc={} | {model} | MemTotal {mem} | Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown time".to_owned())
}

// ---------------------------------------------------------------- small helpers

/// xorshift64*: cheap, deterministic per task; tenant choice needs no more.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn pct(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

/// Distinct, valid client keys (GUIDs) by index.
fn client_key(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i + 1, i + 1)
}

fn token_req(tenant: &str) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest { tenant_id: tenant.to_owned(), min_validity_seconds: 0 }
}

fn status_line(s: &tonic::Status) -> String {
    let mut m = s.message().to_owned();
    m.truncate(120);
    format!("{:?}: {m}", s.code())
}

/// The most of `times` (sorted) inside any half-open window of `window`.
fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let (mut best, mut start) = (0, 0);
    for (end, t) in times.iter().enumerate() {
        while t.saturating_duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

// ---------------------------------------------------------------- the table

struct Row {
    scenario: String,
    server: &'static str,
    requests: u64,
    per_sec: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    cpu_us: Option<f64>,
    errors: u64,
    ratio: String,
    notes: String,
}

impl Row {
    fn new(scenario: impl Into<String>, server: &'static str) -> Row {
        Row {
            scenario: scenario.into(),
            server,
            requests: 0,
            per_sec: None,
            p50: None,
            p99: None,
            p999: None,
            cpu_us: None,
            errors: 0,
            ratio: String::new(),
            notes: String::new(),
        }
    }

    fn from_run(scenario: impl Into<String>, server: &'static str, r: &Run) -> Row {
        Row {
            requests: r.ok,
            per_sec: Some(r.ok as f64 / r.secs),
            p50: pct(&r.lat, 0.50),
            p99: pct(&r.lat, 0.99),
            p999: pct(&r.lat, 0.999),
            cpu_us: (r.ok > 0).then(|| r.cpu / r.ok as f64 * 1e6),
            errors: r.errors,
            notes: r.first_error.clone().map(|e| format!("first error: {e}")).unwrap_or_default(),
            ..Row::new(scenario, server)
        }
    }
}

fn print_table(rows: &[Row]) {
    let f = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.prec$}"));
    println!(
        "| {:<30} | {:<6} | {:>8} | {:>9} | {:>8} | {:>8} | {:>8} | {:>9} | {:>6} | {:<24} | notes",
        "scenario", "server", "ok", "per s", "p50 ms", "p99 ms", "p99.9 ms", "CPU µs/op", "errors", "vault/floor",
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|---",
        "-".repeat(32),
        "-".repeat(8),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(8),
        "-".repeat(26),
    );
    for r in rows {
        println!(
            "| {:<30} | {:<6} | {:>8} | {:>9} | {:>8} | {:>8} | {:>8} | {:>9} | {:>6} | {:<24} | {}",
            r.scenario,
            r.server,
            r.requests,
            f(r.per_sec, 0),
            f(r.p50, 2),
            f(r.p99, 2),
            f(r.p999, 2),
            f(r.cpu_us, 0),
            r.errors,
            if r.ratio.is_empty() { "-" } else { &r.ratio },
            r.notes
        );
    }
}

/// Fills the vault row's ratio column against the floor row.
fn compare(vault: &mut Row, floor: &Row) {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    vault.ratio = format!("rate {} p99 {}", div(vault.per_sec, floor.per_sec), div(vault.p99, floor.p99));
}

/// The audit writer's counters, read from the server's own Prometheus text.
#[derive(Default)]
struct AuditSnap {
    records: f64,
    commits: f64,
    commit_secs: f64,
    /// Cumulative commit-latency buckets: (upper bound in seconds, count).
    buckets: Vec<(f64, f64)>,
}

async fn audit_snap(server: &server::RunningServer) -> AuditSnap {
    let text = server.state.metrics_text().await;
    let mut a = AuditSnap::default();
    for line in text.lines() {
        let Some((k, v)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = v.parse::<f64>() else { continue };
        match k {
            "pogo_vault_audit_records_total" => a.records = v,
            "pogo_vault_audit_commit_seconds_count" => a.commits = v,
            "pogo_vault_audit_commit_seconds_sum" => a.commit_secs = v,
            _ => {
                if let Some(le) =
                    k.strip_prefix("pogo_vault_audit_commit_seconds_bucket{le=\"").and_then(|r| r.strip_suffix("\"}"))
                {
                    a.buckets.push((le.parse().unwrap_or(f64::INFINITY), v));
                }
            }
        }
    }
    a
}

/// Group-commit figures between two snapshots taken `secs` apart.
fn audit_note(a: &AuditSnap, b: &AuditSnap, secs: f64) -> String {
    let commits = b.commits - a.commits;
    if commits <= 0.0 || a.buckets.len() != b.buckets.len() {
        return "audit metrics n/a".to_owned();
    }
    let bound = |p: f64| {
        let le = b
            .buckets
            .iter()
            .zip(&a.buckets)
            .find(|((_, cb), (_, ca))| cb - ca >= p * commits)
            .map_or(f64::INFINITY, |((le, _), _)| *le);
        if le.is_finite() { format!("{}", le * 1000.0) } else { "inf".to_owned() }
    };
    format!(
        "audit: {:.1} records/commit, {:.0} commits/s, commit mean {:.2} ms, p99 <= {} ms, max <= {} ms",
        (b.records - a.records) / commits,
        commits / secs,
        (b.commit_secs - a.commit_secs) / commits * 1000.0,
        bound(0.99),
        bound(1.0)
    )
}

fn add_note(row: &mut Row, note: &str) {
    row.notes = if row.notes.is_empty() { note.to_owned() } else { format!("{}; {note}", row.notes) };
}

/// Appends a vault row and a floor row (either may be missing), the vault row compared.
fn push_pair(rows: &mut Vec<Row>, mut pair: Vec<Row>) {
    if let [vault, floor] = &mut pair[..] {
        compare(vault, floor);
    }
    rows.extend(pair);
}

// ---------------------------------------------------------------- set-up

struct Bench {
    dir: tempfile::TempDir,
    pki: DevPki,
    sim: Sim,
    db: PathBuf,
    master: PathBuf,
    policy: PathBuf,
    first: String,
    storm: String,
    hot: Arc<Vec<String>>,
    cold: Arc<Vec<String>>,
    registered: usize,
    insert_secs: f64,
}

fn policy_text() -> String {
    format!(
        r#"
[[grant]]
caller = "spiffe://{TRUST}/service/token-caller"
roles = ["token"]
tenants = ["*"]

[[grant]]
caller = "spiffe://{TRUST}/service/admin"
roles = ["tenant-admin"]
tenants = ["*"]

[[grant]]
caller = "spiffe://{TRUST}/team/security/auditor"
roles = ["audit"]
"#
    )
}

async fn set_up(s: &Settings) -> Bench {
    let dir = tempfile::tempdir_in(&s.dir).unwrap();
    let pki = pogo_vault::tls::generate_dev_pki(&dir.path().join("certs"), TRUST).unwrap();
    // The simulator must not be the limit while the hot phase warms its cache; the vault's
    // own limiter is what the cold sweep measures.
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig { rate_limit_per_second: 1_000_000, ..SimConfig::default() },
    )
    .await
    .unwrap();
    let db = dir.path().join("vault.db");
    let master = dir.path().join("master.key");
    let vault = Vault::init(&db, &InitKey::GenerateKeyFile(master.clone()), Argon2Costs::default()).unwrap();
    vault.set_integration(&sim.demo_integration().unwrap(), &UnauditedFixture).unwrap();

    // Tenants the simulator knows: one for the first call, one for the storm, the hot set and
    // the cold set. The rest of the scale set ("fill") only needs to exist in the store.
    let mut ids: Vec<String> = vec!["first-0".into(), "storm-0".into()];
    ids.extend((0..s.hot_tenants).map(|i| format!("hot-{i:06}")));
    ids.extend((0..s.cold).map(|i| format!("cold-{i:06}")));
    let known = ids.len();
    let total = s.scale.max(known);
    ids.extend((0..total - known).map(|i| format!("fill-{i:07}")));

    let t = Instant::now();
    for (b, chunk) in ids.chunks(INSERT_BATCH).enumerate() {
        let base = b * INSERT_BATCH;
        let keys: Vec<ClientKey> = (0..chunk.len()).map(|i| ClientKey::parse(&client_key(base + i)).unwrap()).collect();
        let batch: Vec<(NewTenant, &ClientKey)> = chunk
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (id, k))| {
                // Go's ClientId known, as for tenants registered with validation: the cold
                // mints measured here are token requests only (no ClientId fill-in behind them).
                let mut new = NewTenant::new(TenantId::parse_field("tenant_id", id).unwrap(), Environment::Demo);
                new.go_client_id = Some(format!("{}", base + i));
                (new, k)
            })
            .collect();
        vault.add_tenants(&batch, &UnauditedFixture).unwrap();
    }
    let insert_secs = t.elapsed().as_secs_f64();
    drop(vault);
    for (i, _) in ids.iter().enumerate().take(known) {
        sim.add_client(
            Environment::Demo,
            &client_key(i),
            SimClient {
                client_id: format!("{}", 100_000 + i),
                name: format!("Kunde {i} AS"),
                organization_number: format!("{:09}", 900_000_000 + i),
            },
        );
    }
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text()).unwrap();
    let hot = Arc::new(ids[2..2 + s.hot_tenants].to_vec());
    let cold = Arc::new(ids[2 + s.hot_tenants..known].to_vec());
    Bench {
        pki,
        sim,
        db,
        master,
        policy,
        first: ids[0].clone(),
        storm: ids[1].clone(),
        hot,
        cold,
        registered: total,
        insert_secs,
        dir,
    }
}

impl Bench {
    /// The server's options the way `serve --config` builds them: a config file with only
    /// the required keys (every other setting at its production default), parsed and
    /// validated, then `ServeOptions::from_config`. `tokens` replaces the broker settings
    /// after validation (bench only, for the hot phase's warm-up).
    fn options(&self, tokens: Option<BrokerConfig>) -> ServeOptions {
        let path = self.dir.path().join("config.toml");
        let text = format!(
            "[vault]\ndb = '{}'\nmaster_key_file = '{}'\n\n[server]\nlisten = '127.0.0.1:0'\ncert = '{}'\n\
             key = '{}'\nclient_ca = '{}'\npolicy = '{}'\n# Metrics on, as by default, on any free port.\n\
             metrics_listen = '127.0.0.1:0'\n",
            self.db.display(),
            self.master.display(),
            self.pki.server_cert.display(),
            self.pki.server_key.display(),
            self.pki.ca_cert.display(),
            self.policy.display()
        );
        std::fs::write(&path, &text).unwrap();
        let cfg = Config::parse(&text, &path).unwrap();
        cfg.validate(&path).unwrap();
        let mut opts = ServeOptions::from_config(&cfg).unwrap();
        if let Some(t) = tokens {
            opts.tokens = t;
        }
        opts
    }

    fn files(&self, name: &str) -> ClientTlsFiles {
        self.pki.client_files(name).unwrap()
    }

    async fn channels(&self, endpoint: &str, name: &str, n: usize) -> Vec<Channel> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(pogo_vault::client::connect(endpoint, &self.files(name), Some("localhost")).await.unwrap());
        }
        out
    }
}

// ---------------------------------------------------------------- the floor

/// The floor: tonic's generated `TokenService` server with no gate, no broker, no audit,
/// answering a canned response of a real response's size.
struct Floor {
    canned: pb::GetAccessTokenResponse,
}

#[tonic::async_trait]
impl TokenService for Floor {
    async fn get_access_token(
        &self,
        _req: tonic::Request<pb::GetAccessTokenRequest>,
    ) -> Result<tonic::Response<pb::GetAccessTokenResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.canned.clone()))
    }
}

struct FloorServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The floor with the vault's own transport settings (`opts`): TLS files, handshake
/// timeout, request timeout, per-connection concurrency, message size.
async fn start_floor(opts: &ServeOptions, canned: pb::GetAccessTokenResponse) -> FloorServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The same TLS configuration and the same acceptor as the vault (`server::start` does
    // exactly this with the configured files).
    let tls = Arc::new(conn::TlsState::new(pogo_vault::tls::load_server_tls(&opts.tls).unwrap()));
    let (stop, stop_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::channel(256);
    tokio::spawn(conn::accept_loop(listener, tls, opts.handshake_limits(), conn_tx, stop_rx.clone()));
    let router = tonic::transport::Server::builder()
        .timeout(opts.request_timeout)
        .concurrency_limit_per_connection(opts.concurrency_limit_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .add_service(TokenServiceServer::new(Floor { canned }).max_decoding_message_size(opts.max_request_bytes));
    let mut wait = stop_rx;
    let task = tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::ReceiverStream::new(conn_rx),
        async move {
            let _ = wait.wait_for(|s| *s).await;
        },
    ));
    FloorServer { addr, stop, task }
}

// ---------------------------------------------------------------- load generators

/// One timed run: successful requests, their latencies, errors, CPU over the window.
#[derive(Default)]
struct Run {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// Sorted microseconds of the successful requests.
    lat: Vec<u32>,
    secs: f64,
    cpu: f64,
}

type TaskResult = (Vec<u32>, u64, Option<String>);

async fn gather(tasks: Vec<tokio::task::JoinHandle<TaskResult>>) -> Run {
    let mut run = Run::default();
    for t in tasks {
        let (lat, errors, first) = t.await.unwrap();
        run.ok += lat.len() as u64;
        run.lat.extend(lat);
        run.errors += errors;
        if run.first_error.is_none() {
            run.first_error = first;
        }
    }
    run.lat.sort_unstable();
    run
}

/// Samples process CPU between `start` and `end`.
fn cpu_sampler(start: Instant, end: Instant) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let c0 = cpu_secs();
        tokio::time::sleep_until(end.into()).await;
        cpu_secs() - c0
    })
}

/// `channels.len()` connections × `per_conn` tasks, each with one request in flight, for
/// `warm` (not counted) then `secs`; random tenants out of `tenants`.
async fn hot_run(channels: &[Channel], per_conn: usize, tenants: &Arc<Vec<String>>, warm: Duration, secs: f64) -> Run {
    let start = Instant::now() + warm;
    let end = start + Duration::from_secs_f64(secs);
    let cpu = cpu_sampler(start, end);
    let mut tasks = Vec::new();
    for (ci, ch) in channels.iter().enumerate() {
        for si in 0..per_conn {
            let mut client = TokenServiceClient::new(ch.clone());
            let tenants = tenants.clone();
            let mut rng = Rng::new((ci * 1000 + si + 1) as u64);
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors, mut first) = (Vec::with_capacity(1 << 14), 0u64, None);
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    let tenant = &tenants[rng.below(tenants.len())];
                    let r = client.get_access_token(token_req(tenant)).await;
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

/// Sequential requests, each on a new TLS connection (handshake + one GetAccessToken).
/// How each handshake iteration connects and what it sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// One shared client TLS configuration: rustls resumes the session (TLS 1.3 PSK with
    /// x25519), as a long-lived caller reconnecting would. Then one GetAccessToken.
    ResumedWithRpc,
    /// A fresh client TLS configuration per connection (no session to resume): the full
    /// handshake with certificate verification on both sides. Then one GetAccessToken.
    FullWithRpc,
    /// Resumed handshake and HTTP/2 preface only, no request: the acceptor alone.
    ResumedConnectOnly,
}

impl Handshake {
    fn label(self) -> &'static str {
        match self {
            Handshake::ResumedWithRpc => "handshakes: resumed + 1 RPC",
            Handshake::FullWithRpc => "handshakes: full + 1 RPC",
            Handshake::ResumedConnectOnly => "handshakes: resumed, no RPC",
        }
    }
}

fn endpoint(uri: &str, tls: &tonic::transport::ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(uri.to_owned())
        .unwrap()
        .tls_config(tls.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
}

/// Sequential iterations, each on a new TLS connection.
async fn handshake_run(
    uri: String,
    tls: tonic::transport::ClientTlsConfig,
    kind: Handshake,
    tenants: &Arc<Vec<String>>,
    warm: Duration,
    secs: f64,
) -> Run {
    let start = Instant::now() + warm;
    let end = start + Duration::from_secs_f64(secs);
    let cpu = cpu_sampler(start, end);
    let tenants = tenants.clone();
    let task = tokio::spawn(async move {
        let (mut lat, mut errors, mut first) = (Vec::new(), 0u64, None);
        let mut rng = Rng::new(7);
        let shared = endpoint(&uri, &tls);
        loop {
            let t = Instant::now();
            if t >= end {
                break;
            }
            let tenant = tenants[rng.below(tenants.len())].clone();
            let ep = if kind == Handshake::FullWithRpc { endpoint(&uri, &tls) } else { shared.clone() };
            let r = match ep.connect().await {
                Ok(ch) if kind == Handshake::ResumedConnectOnly => {
                    drop(ch);
                    Ok(())
                }
                Ok(ch) => TokenServiceClient::new(ch)
                    .get_access_token(token_req(&tenant))
                    .await
                    .map(|_| ())
                    .map_err(|s| status_line(&s)),
                Err(e) => Err(pogo_vault::client::error_chain(&e)),
            };
            if t < start {
                continue;
            }
            match r {
                Ok(()) => lat.push(micros(t.elapsed())),
                Err(e) => {
                    errors += 1;
                    first.get_or_insert(e);
                }
            }
        }
        (lat, errors, first)
    });
    let mut run = gather(vec![task]).await;
    run.secs = secs;
    run.cpu = cpu.await.unwrap();
    run
}

/// Items `0..n` handed to `workers` tasks, one request in flight each, until all are done.
/// Returns the run (timed from the first to the last request) and every error status.
async fn drive_count<F, Fut>(n: usize, workers: usize, f: F) -> (Run, Vec<tonic::Status>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let c0 = cpu_secs();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers.max(1) {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errs) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                match f(i, w).await {
                    Ok(()) => lat.push(micros(t.elapsed())),
                    Err(s) => errs.push(s),
                }
            }
            (lat, errs)
        }));
    }
    let mut run = Run::default();
    let mut errors = Vec::new();
    for t in tasks {
        let (lat, errs) = t.await.unwrap();
        run.lat.extend(lat);
        errors.extend(errs);
    }
    run.secs = t0.elapsed().as_secs_f64();
    run.cpu = cpu_secs() - c0;
    run.lat.sort_unstable();
    run.ok = run.lat.len() as u64;
    run.errors = errors.len() as u64;
    run.first_error = errors.first().map(status_line);
    (run, errors)
}

// ---------------------------------------------------------------- phase 1: default limiter

/// Scale (start, memory, ListTenants walk), storm, cold sweep and registration against a
/// server with the default broker configuration.
async fn phase_default(s: &Settings, b: &Bench, rows: &mut Vec<Row>) {
    let rss_before = status_kib("VmRSS");
    let t0 = Instant::now();
    let server = server::start(b.options(None)).await.unwrap();
    let started = t0.elapsed();
    let endpoint = format!("https://{}", server.addr);
    let token_ch = b.channels(&endpoint, "token-caller", 1).await.remove(0);
    let connected = t0.elapsed();
    let mut token = TokenServiceClient::new(token_ch.clone());
    let up0 = b.sim.token_requests();
    token.get_access_token(token_req(&b.first)).await.unwrap();
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
                let r = client.get_access_token(token_req(&tenant)).await;
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
            async move { c.get_access_token(token_req(&tenant)).await.map(|_| ()) }
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
                    client_key: client_key(50_000_000 + i),
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

// ---------------------------------------------------------------- phase 2: hot + handshakes

async fn phase_hot(s: &Settings, b: &Bench, rows: &mut Vec<Row>) {
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
        async move { c.get_access_token(token_req(&tenant)).await.map(|_| ()) }
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
    let real = probe.get_access_token(token_req(&b.hot[0])).await.unwrap().into_inner();
    let floor = start_floor(&floor_opts, real.clone()).await;
    let floor_endpoint = format!("https://{}", floor.addr);
    let mut floor_probe = TokenServiceClient::new(b.channels(&floor_endpoint, "token-caller", 1).await.remove(0));
    let canned = floor_probe.get_access_token(token_req(&b.hot[0])).await.unwrap().into_inner();
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
            for (ep, who) in [(&endpoint, "vault"), (&floor_endpoint, "floor")] {
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
            for (ep, who) in [(&endpoint, "vault"), (&floor_endpoint, "floor")] {
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

    drop(probe);
    drop(floor_probe);
    let _ = floor.stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), floor.task).await;
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- main

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
    let b = rt.block_on(set_up(&s));
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
    if ["hot", "handshakes"].iter().any(|x| s.runs(x)) {
        rt.block_on(phase_hot(&s, &b, &mut rows));
    }
    // Hot and handshake rows first: they are the ones compared with the floor.
    rows.sort_by_key(|r| match r.scenario.split([' ', ':']).next().unwrap_or("") {
        "hot" => 0,
        "handshakes" => 1,
        "storm" => 2,
        "cold" => 3,
        "scale" => 4,
        _ => 5,
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
