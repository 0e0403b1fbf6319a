//! The bench's sizes and knobs, read from `SERVICE_BENCH_*` variables (listed in main.rs).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub struct Settings {
    pub smoke: bool,
    pub secs: f64,
    pub hot_tenants: usize,
    pub hot_shapes: Vec<(usize, usize)>,
    pub storm: usize,
    pub cold: usize,
    pub scale: usize,
    pub keys: usize,
    pub reg_clients: usize,
    pub reg_inflight: usize,
    pub cold_workers: usize,
    pub warm_concurrency: usize,
    /// Upstream rate of the hot-phase server while it warms its cache (bench only; see below).
    pub warm_rate: f64,
    /// Client certificates per slot of the first-disclosure row (each gives `hot_tenants` pairs).
    pub first_certs: usize,
    /// How long the runaway runs beside the well-behaved caller (its baseline runs half as long).
    pub runaway_secs: f64,
    /// The well-behaved caller's pace, requests a second.
    pub polite_rate: f64,
    /// Requests through the gateway (and as many straight to the simulator) for its row.
    pub gateway_requests: usize,
    pub only: Option<Vec<String>>,
    /// `vault`, `floor`, `durable` (any of them): which servers the hot and handshake runs drive (profiling).
    pub servers: Vec<String>,
    /// Keep the temporary directory (databases) for inspection.
    pub keep: bool,
    pub dir: PathBuf,
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
    pub fn from_env() -> Settings {
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
            scale: env_or("SERVICE_BENCH_SCALE_TENANTS", d(1_000_000, 500)),
            keys: env_or("SERVICE_BENCH_KEYS", d(10_000, 40)),
            reg_clients: env_or("SERVICE_BENCH_REG_CLIENTS", 4),
            reg_inflight: env_or("SERVICE_BENCH_REG_INFLIGHT", 4),
            cold_workers: env_or("SERVICE_BENCH_COLD_WORKERS", 64),
            warm_concurrency: env_or("SERVICE_BENCH_WARM_CONCURRENCY", 64),
            warm_rate: env_or("SERVICE_BENCH_WARM_RATE", 1000.0),
            first_certs: env_or("SERVICE_BENCH_FIRST_CERTS", d(8, 2)),
            runaway_secs: env_or("SERVICE_BENCH_RUNAWAY_SECS", pick(smoke, 60.0, 1.0)),
            polite_rate: env_or("SERVICE_BENCH_POLITE_RATE", 20.0),
            gateway_requests: env_or("SERVICE_BENCH_GATEWAY_REQUESTS", d(120, 4)),
            only: std::env::var("SERVICE_BENCH_ONLY")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect()),
            servers: env_or("SERVICE_BENCH_SERVERS", "vault,floor,durable".to_owned())
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            keep: env_or("SERVICE_BENCH_KEEP", 0u8) != 0,
            dir: std::env::var_os("SERVICE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        }
    }

    pub fn drives(&self, server: &str) -> bool {
        self.servers.iter().any(|s| s == server)
    }

    pub fn runs(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s == scenario))
    }

    /// Untimed warm-up at the start of each timed run.
    pub fn warm(&self) -> Duration {
        Duration::from_secs_f64((self.secs / 5.0).min(1.0))
    }
}
