#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Checkpoint witnesses against a real server in-process: a JSON-lines file and a syslog
//! receiver the test runs on a real TCP port (plain, and inside TLS). Both receive every
//! checkpoint; killing the receiver fails no GetAccessToken, the backlog metric rises, the
//! status reports it, and the backlog drains in order when a receiver listens again on the
//! same port. Afterwards the log verifies strictly against the witness file.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture::{audit_verifying_key, token_request};
use common::server::TestServer;
use pogo_vault::audit::{Checkpoint, FileWitnessConfig, SyslogWitnessConfig, WitnessConfig};
use pogo_vault::proto::v1 as pb;
use tokio::io::AsyncRead;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

/// A syslog receiver (RFC 6587 octet counting) that keeps every checkpoint it reads.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Checkpoint>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Receiver {
    async fn start(port: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Checkpoint>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (g, t) = (got.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let g = g.clone();
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                read_frames(s, g).await;
                            }
                        }
                        None => read_frames(stream, g).await,
                    }
                });
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Receiver { port, got, tasks }
    }

    /// Gone: the listener and every connection closed.
    async fn kill(self) -> Vec<Checkpoint> {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        self.got.lock().unwrap().clone()
    }

    fn got(&self) -> Vec<Checkpoint> {
        self.got.lock().unwrap().clone()
    }
}

async fn read_frames(mut s: impl AsyncRead + Unpin, got: Arc<Mutex<Vec<Checkpoint>>>) {
    while let Some(msg) = common::syslog::next_message(&mut s).await {
        // RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
        assert!(msg.starts_with("<110>1 "), "{msg}");
        let fields: Vec<&str> = msg.splitn(8, ' ').collect();
        assert_eq!(
            (fields[2], fields[3], fields[5], fields[6]),
            ("vault-test", "pogo-vault", "checkpoint", "-"),
            "{msg}"
        );
        got.lock().unwrap().push(Checkpoint::from_json(fields[7]).unwrap());
    }
}

fn ids(cps: &[Checkpoint]) -> BTreeSet<(i64, [u8; 32])> {
    cps.iter().map(|c| (c.sequence, c.head_hash)).collect()
}

fn file_checkpoints(path: &Path) -> Vec<Checkpoint> {
    if !path.exists() {
        return Vec::new();
    }
    pogo_vault::audit::read_witness_file(path).unwrap().into_iter().map(|e| e.checkpoint).collect()
}

fn witness_config(file: &Path, port: u16, tls_ca: Option<PathBuf>) -> WitnessConfig {
    WitnessConfig {
        file: Some(FileWitnessConfig { path: file.to_owned() }),
        syslog: Some(SyslogWitnessConfig {
            address: format!("127.0.0.1:{port}"),
            tls: tls_ca.is_some(),
            server_name: tls_ca.as_ref().map(|_| "localhost".to_owned()),
            ca: tls_ca,
            hostname: Some("vault-test".into()),
            facility: 13,
        }),
        backlog: 10_000,
        retry_max_secs: 0.2,
    }
}

struct Scraper {
    url: String,
    http: reqwest::Client,
}

impl Scraper {
    fn new(ts: &TestServer) -> Scraper {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Scraper { url: format!("http://{}/metrics", ts.server().metrics_addr.unwrap()), http: reqwest::Client::new() }
    }

    async fn backlog(&self, witness: &str) -> u64 {
        let text = self.http.get(&self.url).send().await.unwrap().text().await.unwrap();
        let series = format!("pogo_vault_audit_witness_backlog{{witness=\"{witness}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }
}

async fn start(file: &Path, port: u16, tls_ca: Option<PathBuf>) -> TestServer {
    let cfg = witness_config(file, port, tls_ca);
    let ts = TestServer::start_with(move |o| {
        o.audit.checkpoint_interval = Duration::from_millis(50);
        o.audit.witness = cfg;
    })
    .await;
    ts.register("acme", 0).await;
    ts
}

/// Waits until every event is covered by a checkpoint that both witnesses hold and nothing
/// is queued, twice in a row (so no checkpoint is still on its way).
async fn settle(ts: &TestServer, file: &Path, scraper: &Scraper, receiver: &Receiver, earlier: &[Checkpoint]) {
    let deadline = Instant::now() + DEADLINE;
    let mut stable = 0;
    while stable < 2 {
        assert!(
            Instant::now() < deadline,
            "witnesses did not settle: file {:?}, receiver {:?}",
            file_checkpoints(file).len(),
            receiver.got().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let head = {
            let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
            pogo_vault::audit::head(&conn).unwrap().0
        };
        let in_file = file_checkpoints(file);
        let mut received = earlier.to_vec();
        received.extend(receiver.got());
        let settled = in_file.last().is_some_and(|c| c.sequence == head)
            && ids(&in_file) == ids(&received)
            && scraper.backlog("file").await == 0
            && scraper.backlog("syslog").await == 0;
        stable = if settled { stable + 1 } else { 0 };
    }
}

async fn outage_and_recovery(tls: bool) {
    let wdir = tempfile::tempdir().unwrap();
    let file = wdir.path().join("witness.jsonl");
    // The TLS receiver uses the dev PKI's `localhost` server certificate.
    let pki = pogo_vault::tls::generate_dev_pki(&wdir.path().join("pki"), "witness.test").unwrap();
    let acceptor = tls.then(|| acceptor(&pki));
    let receiver = Receiver::start(0, acceptor.clone()).await;
    let port = receiver.port;
    let mut ts = start(&file, port, tls.then(|| pki.ca_cert.clone())).await;
    let scraper = Scraper::new(&ts);
    let mut tokens = ts.token_client("token-caller").await;

    // 1. Both witnesses receive every checkpoint.
    for _ in 0..20 {
        tokens.get_access_token(token_request("acme")).await.unwrap();
    }
    settle(&ts, &file, &scraper, &receiver, &[]).await;
    assert!(file_checkpoints(&file).len() >= 2, "checkpoints were written and witnessed");

    // 2. The receiver dies: not one token request fails, and the backlog grows.
    let before = receiver.kill().await;
    let deadline = Instant::now() + DEADLINE;
    let mut served = 0;
    while scraper.backlog("syslog").await < 3 {
        assert!(Instant::now() < deadline, "the syslog backlog did not rise");
        tokens.get_access_token(token_request("acme")).await.expect("a dead witness must not fail a token request");
        served += 1;
        // Paced below the caller's request budget (100 a second by default): unpaced, a
        // loaded machine's slow backlog let this loop run into RESOURCE_EXHAUSTED, which
        // is the budget working, not the witness failing a request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 0);
    // The file witness is unaffected: it keeps delivering (a checkpoint may be on its way
    // at any instant, checkpoints come every 50 ms here, so wait for its backlog to empty
    // rather than sampling it once).
    let deadline = Instant::now() + DEADLINE;
    while scraper.backlog("file").await > 0 {
        assert!(Instant::now() < deadline, "the file witness is held up by the dead syslog receiver");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = pb::status_service_client::StatusServiceClient::new(ts.channel("auditor").await)
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let syslog = status.audit_witnesses.iter().find(|w| w.name == "syslog").unwrap();
    assert!(syslog.failing && syslog.backlog > 0 && !syslog.last_error.is_empty(), "{syslog:?}");
    let file_status = status.audit_witnesses.iter().find(|w| w.name == "file").unwrap();
    assert!(!file_status.failing && file_status.delivered > 0, "{file_status:?}");

    // 3. A receiver listens on the same port again: the backlog drains, in order.
    let again = Receiver::start(port, acceptor).await;
    tokens.get_access_token(token_request("acme")).await.unwrap();
    settle(&ts, &file, &scraper, &again, &before).await;
    let drained = again.got();
    assert!(drained.windows(2).all(|w| w[0].sequence < w[1].sequence), "delivered in order");
    assert!(drained.len() >= 3, "the backlog arrived: {}", drained.len());

    // The log verifies strictly against everything the file witnessed.
    ts.stop().await;
    let vk = audit_verifying_key(&ts.vault());
    let opts = pogo_vault::audit::VerifyOptions {
        external: pogo_vault::audit::read_witness_file(&file).unwrap(),
        ..Default::default()
    };
    let n = opts.external.len() as u64;
    let report = pogo_vault::audit::verify_with(&ts.audit_db(), &vk, &opts).unwrap();
    assert!(report.ok && report.external_checked == n, "{report:?}");
    assert_eq!(report.signed_through, Some(report.head_sequence), "{report:?}");
}

fn acceptor(pki: &pogo_vault::tls::DevPki) -> tokio_rustls::TlsAcceptor {
    let files = pki.server_files();
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut &std::fs::read(&files.cert).unwrap()[..]).map(Result::unwrap).collect();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(&files.key).unwrap()[..]).unwrap().unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_and_file_witnesses_survive_a_dead_receiver_and_drain_in_order() {
    outage_and_recovery(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_witness_over_tls_survives_a_dead_receiver_and_drains_in_order() {
    outage_and_recovery(true).await;
}
