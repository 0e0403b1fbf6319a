//! The vault under test, set up from the tests' fixture: the simulator as Go, the files of
//! a served vault (dev PKI, vault database, the demo policy) in a temporary directory, the
//! tenants of every scenario, and the server's options built from a configuration file the
//! way `serve --config` builds them.

use std::sync::Arc;
use std::time::Instant;

use pogo_vault::config::Config;
use pogo_vault::server::ServeOptions;
use pogo_vault::sim::Sim;
use pogo_vault::tls::{ClientTlsFiles, DevPki};
use pogo_vault::tokens::BrokerConfig;
use tonic::transport::Channel;

use crate::fixture;
use crate::settings::Settings;

/// `add_tenants` batch size for the scale set-up.
pub const INSERT_BATCH: usize = 5_000;

pub struct Bench {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
    pub sim: Sim,
    pub first: String,
    pub storm: String,
    pub hot: Arc<Vec<String>>,
    pub cold: Arc<Vec<String>>,
    pub registered: usize,
    pub insert_secs: f64,
}

pub async fn set_up(s: &Settings) -> Bench {
    let dir = tempfile::tempdir_in(&s.dir).unwrap();
    // The simulator must not be the limit while the hot phase warms its cache; the vault's
    // own limiter is what the cold sweep measures.
    let sim = fixture::start_sim(1_000_000).await;
    let (pki, vault) = fixture::serve_files(dir.path(), &sim, &bench_policy());

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
        // Go's ClientId known, as for tenants registered with validation: the cold mints
        // measured here are token requests only (no ClientId fill-in behind them).
        fixture::add_bulk_tenants(&vault, chunk, b * INSERT_BATCH, true);
    }
    let insert_secs = t.elapsed().as_secs_f64();
    drop(vault);
    fixture::add_bulk_clients(&sim, 0..known);
    let hot = Arc::new(ids[2..2 + s.hot_tenants].to_vec());
    let cold = Arc::new(ids[2 + s.hot_tenants..known].to_vec());
    Bench { pki, sim, first: ids[0].clone(), storm: ids[1].clone(), hot, cold, registered: total, insert_secs, dir }
}

/// The demo policy with two changes for the bench: `token-caller` (every load generator's
/// identity) may ask 1,000,000 times a second (the hot rows ask ~20k/s from one identity;
/// a caller without such a grant is held at 100/s), and `runaway`, a caller on the default
/// budget, for the runaway row.
pub fn bench_policy() -> String {
    let trust = fixture::TRUST;
    fixture::demo_policy()
        + &format!(
            "\n[[grant]]\ncaller = \"spiffe://{trust}/service/token-caller\"\nroles = [\"token\"]\ntenants = [\"*\"]\n\
             requests_per_second = 1000000\n"
        )
        + &fixture::grant("service/runaway", &["token"], &["*"])
        + &fixture::grant("service/runaway-10", &["token"], &["*"])
        + "requests_per_second = 10\n"
        + &fixture::grant("service/api-caller", &["api"], &["*"])
}

/// Bytes the audit database at `path` uses per event (pages in use over events), after a
/// passive checkpoint of its WAL: the record size the durable floor writes.
pub fn audit_bytes_per_record(path: &std::path::Path) -> usize {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let used = (q("PRAGMA page_count") - q("PRAGMA freelist_count")) * q("PRAGMA page_size");
    let events = q("SELECT count(*) FROM events").max(1);
    usize::try_from(used / events).unwrap_or(512).max(64)
}

/// A new client certificate for `spiffe://TRUST/service/{service}` (a new serial each time).
pub fn issue_cert(b: &Bench, service: &str, file: &str) -> ClientTlsFiles {
    let (cert, key) = (b.dir.path().join(format!("{file}.pem")), b.dir.path().join(format!("{file}-key.pem")));
    let spiffe = format!("spiffe://{}/service/{service}", fixture::TRUST);
    pogo_vault::tls::issue_client_cert(&b.pki.ca_cert, &b.pki.ca_key, &cert, &key, Some(&spiffe), None, file).unwrap();
    ClientTlsFiles { ca: b.pki.ca_cert.clone(), cert, key }
}

impl Bench {
    /// The server's options the way `serve --config` builds them: a config file with only
    /// the required keys (every other setting at its production default), parsed and
    /// validated, then `ServeOptions::from_config`. `tokens` replaces the broker settings
    /// after validation (bench only, for the hot phase's warm-up).
    pub fn options(&self, tokens: Option<BrokerConfig>) -> ServeOptions {
        self.options_with(tokens, "")
    }

    /// [`Bench::options`] with `tables` (TOML tables such as `[gateway]`) after `[server]`.
    pub fn options_with(&self, tokens: Option<BrokerConfig>, tables: &str) -> ServeOptions {
        let path = self.dir.path().join("config.toml");
        let text = fixture::serve_config("127.0.0.1:0")
            + "# Metrics on, as by default, on any free port.\nmetrics_listen = '127.0.0.1:0'\n"
            + tables;
        std::fs::write(&path, &text).unwrap();
        let cfg = Config::parse(&text, &path).unwrap();
        cfg.validate(&path).unwrap();
        let mut opts = ServeOptions::from_config(&cfg).unwrap();
        if let Some(t) = tokens {
            opts.tokens = t;
        }
        opts
    }

    pub fn files(&self, name: &str) -> ClientTlsFiles {
        self.pki.client_files(name).unwrap()
    }

    pub async fn channels(&self, endpoint: &str, name: &str, n: usize) -> Vec<Channel> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(pogo_vault::client::connect(endpoint, &self.files(name), Some("localhost")).await.unwrap());
        }
        out
    }
}
