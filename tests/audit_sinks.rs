#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Audit sinks against a real server in-process: a syslog receiver and an OTLP collector (a
//! tonic server of OTLP's LogsService) the test runs on real TCP ports, and a JSON-lines
//! file. Under a steady load of token requests the receiver and the collector are stopped for
//! 5 s and started again on the same ports: no token request fails, the file sink keeps up
//! meanwhile, the lag shows in metrics and `status`, and when they are back each gets every
//! event and every checkpoint of the log, in order (first of each sequence kept: syslog has
//! no receipts, so some arrive twice around the outage). The file holds each exactly once.
//! After a restart of the vault all three resume from their cursors: the file still holds
//! each item exactly once.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture::token_request;
use common::server::TestServer;
use common::syslog::{Got, Receiver};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use pogo_vault::audit::SinkConfig;
use pogo_vault::proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(30);

/// An OTLP collector (LogsService over gRPC, plain, on loopback) keeping the kind and
/// sequence of every log record, in arrival order; its body must be the item's JSON.
struct Collector {
    got: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        // A record that is not what the sink promises is kept as ("malformed", -1), which the
        // test's checks refuse (a panic here would only show as a sink that never caught up).
        for rl in request.into_inner().resource_logs {
            let service = rl.resource.iter().flat_map(|r| &r.attributes).find(|a| a.key == "service.name");
            let service_ok =
                service.and_then(|s| s.value.clone()?.value) == Some(Value::StringValue("pogo-vault".into()));
            for r in rl.scope_logs.into_iter().flat_map(|s| s.log_records) {
                let attr = |k: &str| r.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.clone()?.value);
                let body = match r.body.clone().and_then(|b| b.value) {
                    Some(Value::StringValue(b)) => serde_json::from_str::<serde_json::Value>(&b).ok(),
                    _ => None,
                };
                let got = match (attr("pogo_vault.audit.kind"), attr("pogo_vault.audit.sequence"), body) {
                    (Some(Value::StringValue(kind)), Some(Value::IntValue(seq)), Some(json))
                        if service_ok
                            && json["sequence"].as_i64() == Some(seq)
                            && r.time_unix_nano > 0
                            && r.event_name == format!("pogo_vault.audit.{kind}")
                            && (kind == "event" || kind == "checkpoint") =>
                    {
                        (if kind == "event" { "event" } else { "checkpoint" }, seq)
                    }
                    _ => {
                        eprintln!("malformed OTLP record: {r:?}");
                        ("malformed", -1)
                    }
                };
                self.got.lock().unwrap().push(got);
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Serves the collector on a port of its own; returns the port.
async fn start_collector(got: Arc<Mutex<Vec<Got>>>) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serve = tonic::transport::Server::builder()
        .add_service(LogsServiceServer::new(Collector { got }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(async move { serve.await.unwrap() });
    port
}

/// The collector's front door: forwards connections on `port` (0: any) to `target`. Stopping
/// it closes the listener and every connection at once, as a collector that goes away does
/// (tonic's own connections outlive an aborted server task).
struct Door {
    port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Door {
    async fn open(port: u16, target: u16) -> Door {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                let conn = tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Door { port, tasks }
    }

    async fn close(self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The event and checkpoint sequences the audit database holds.
fn in_log(audit_db: &Path) -> (Vec<i64>, Vec<i64>) {
    let conn = common::rusqlite_open(audit_db);
    let all = |sql: &str| -> Vec<i64> {
        let mut st = conn.prepare(sql).unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    (all("SELECT sequence FROM events ORDER BY sequence"), all("SELECT sequence FROM checkpoints ORDER BY sequence"))
}

/// The file sink's files, oldest first: `path.N` .. `path.1`, `path`.
fn files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let n = p.file_name()?.to_str()?.strip_prefix("audit.jsonl.")?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    rotated.sort();
    rotated.into_iter().rev().map(|(_, p)| p).chain([path.to_owned()]).collect()
}

/// Every line of the file sink (rotated files first), as `(kind, sequence)`.
fn in_file(path: &Path) -> Vec<Got> {
    let mut out = Vec::new();
    for p in files(path) {
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let kind = if v.get("signature").is_some() { "checkpoint" } else { "event" };
            assert!(kind == "checkpoint" || v.get("action").is_some(), "{line}");
            out.push((kind, v["sequence"].as_i64().unwrap()));
        }
    }
    out
}

/// The first arrival of each item, in arrival order.
fn first_of_each(got: &[Got]) -> Vec<Got> {
    let mut seen = HashSet::new();
    got.iter().filter(|g| seen.insert(**g)).copied().collect()
}

/// `items` hold exactly the log's events and checkpoints, events in sequence order and each
/// checkpoint after the event it covers.
fn assert_complete_and_ordered(what: &str, items: &[Got], events: &[i64], checkpoints: &[i64]) {
    let ev: Vec<i64> = items.iter().filter(|g| g.0 == "event").map(|g| g.1).collect();
    assert_eq!(ev, events, "{what}: the events, in order");
    let cps: BTreeSet<i64> = items.iter().filter(|g| g.0 == "checkpoint").map(|g| g.1).collect();
    assert_eq!(cps, checkpoints.iter().copied().collect(), "{what}: the checkpoints");
    // Each checkpoint comes after the event it covers and before the next event.
    let pos = |g: Got| items.iter().position(|x| *x == g).unwrap();
    for &c in checkpoints {
        let at = pos(("checkpoint", c));
        let before = items[..at].iter().rev().find(|g| g.0 == "event").map(|g| g.1);
        assert!(before.is_none_or(|e| e <= c), "{what}: checkpoint {c} came after event {before:?}");
        if events.contains(&c) {
            assert!(pos(("event", c)) < at, "{what}: checkpoint {c} came before its event");
        }
    }
}

/// `items` (with no repeats) put each checkpoint right after the event it covers, or right
/// after the checkpoints that follow it, when the checkpoint was signed later.
fn assert_checkpoints_right_after_their_events(what: &str, items: &[Got]) {
    for (i, g) in items.iter().enumerate().filter(|(_, g)| g.0 == "checkpoint") {
        let before = items[..i].iter().rev().find(|p| p.0 == "event").map(|p| p.1);
        assert!(before.is_none_or(|e| e == g.1), "{what}: checkpoint {} follows event {before:?}", g.1);
    }
}

fn sinks(file: &Path, port: u16, otlp_port: u16) -> Vec<SinkConfig> {
    let text = format!(
        "[[sink]]\nname = \"siem\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nhostname = \"vault-test\"\n\
         [[sink]]\nname = \"collector\"\nkind = \"otlp\"\nendpoint = \"http://127.0.0.1:{otlp_port}\"\n\
         [[sink]]\nname = \"shipper\"\nkind = \"file\"\npath = {file:?}\nmax_bytes = 1048576\nkeep = 1000\n"
    );
    #[derive(serde::Deserialize)]
    struct Top {
        sink: Vec<SinkConfig>,
    }
    let sinks = toml::from_str::<Top>(&text).unwrap().sink;
    pogo_vault::audit::validate_sinks(&sinks, &[]).unwrap();
    sinks
}

fn with_sinks(o: &mut pogo_vault::server::ServeOptions, sinks: Vec<SinkConfig>) {
    o.audit.checkpoint_interval = Duration::from_millis(200);
    o.audit.sink_cursors = Some(o.db.clone());
    o.audit.sinks = sinks;
    o.caller_requests_per_second = 100_000.0;
}

async fn status(ts: &TestServer, name: &str) -> pb::AuditSink {
    let s = pb::status_service_client::StatusServiceClient::new(ts.channel("auditor").await)
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    s.audit_sinks.into_iter().find(|k| k.name == name).unwrap()
}

async fn metric(ts: &TestServer, series: &str) -> u64 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("http://{}/metrics", ts.server().metrics_addr.unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Waits until every sink holds every event and checkpoint of the log, twice in a row with
/// the log unchanged (so nothing is still on its way); returns the log's sequences.
async fn settle(
    audit_db: &Path,
    file: &Path,
    got: &Arc<Mutex<Vec<Got>>>,
    otlp: &Arc<Mutex<Vec<Got>>>,
) -> (Vec<i64>, Vec<i64>) {
    let deadline = Instant::now() + DEADLINE;
    let mut last = None;
    loop {
        let (events, cps) = in_log(audit_db);
        let want: HashSet<Got> =
            events.iter().map(|s| ("event", *s)).chain(cps.iter().map(|s| ("checkpoint", *s))).collect();
        let received: HashSet<Got> = got.lock().unwrap().iter().copied().collect();
        let filed: HashSet<Got> = in_file(file).into_iter().collect();
        let collected: HashSet<Got> = otlp.lock().unwrap().iter().copied().collect();
        if want.is_subset(&received) && want.is_subset(&filed) && want.is_subset(&collected) {
            if last.as_ref() == Some(&(events.clone(), cps.clone())) {
                return (events, cps);
            }
            last = Some((events, cps));
        } else {
            last = None;
        }
        assert!(
            Instant::now() < deadline,
            "sinks did not catch up: log {} items, receiver {}, file {}, collector {}",
            want.len(),
            received.len(),
            filed.len(),
            collected.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_syslog_receiver_gets_every_event_in_order_and_no_token_request_fails() {
    let sdir = tempfile::tempdir().unwrap();
    let file: PathBuf = sdir.path().join("audit.jsonl");
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let receiver = Receiver::start(0, got.clone()).await;
    let port = receiver.port;
    let otlp: Arc<Mutex<Vec<Got>>> = Arc::default();
    let collector = start_collector(otlp.clone()).await;
    let door = Door::open(0, collector).await;
    let otlp_port = door.port;
    let cfg = sinks(&file, port, otlp_port);
    let mut ts = TestServer::start_with(|o| with_sinks(o, cfg.clone())).await;
    for t in ["acme", "globex", "initech"] {
        ts.register(t, ["acme", "globex", "initech"].iter().position(|x| *x == t).unwrap()).await;
    }

    // A steady load of token requests from two tasks for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for tenant in ["acme", "globex"] {
        let mut tokens = ts.token_client("token-caller").await;
        let t0 = Instant::now();
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokens.get_access_token(token_request(tenant)).await {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(format!("{tenant} at {:?}: {e}", t0.elapsed()));
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The receiver and the collector stop for 5 s under load.
    receiver.stop().await;
    door.close().await;
    let outage = Instant::now();
    let mut saw_failing = false;
    let mut lag_seen = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let siem = status(&ts, "siem").await;
        let coll = status(&ts, "collector").await;
        saw_failing |= siem.failing && !siem.last_error.is_empty() && coll.failing;
        lag_seen = lag_seen.max(metric(&ts, "pogo_vault_audit_sink_lag_events{sink=\"siem\"}").await);
    }
    let shipper = status(&ts, "shipper").await;
    assert!(saw_failing, "the status showed the syslog and OTLP sinks failing");
    assert!(lag_seen > 0, "the lag metric rose during the outage");
    assert!(!shipper.failing && shipper.lag < lag_seen, "the file sink kept up: {shipper:?}, syslog lag {lag_seen}");

    // Back on the same port; the load goes on for 3 s more.
    let _receiver = Receiver::start(port, got.clone()).await;
    let _door = Door::open(otlp_port, collector).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failed = failures.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} token requests failed, the first: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let served = served.load(Ordering::Relaxed);
    assert!(served > 100, "the load ran: {served} tokens");

    let (events, cps) = settle(&ts.audit_db(), &file, &got, &otlp).await;
    let collected = otlp.lock().unwrap().clone();
    assert!(!collected.iter().any(|g| g.0 == "malformed"), "the collector got malformed records");
    assert_complete_and_ordered("otlp (first of each)", &first_of_each(&collected), &events, &cps);
    let received = got.lock().unwrap().clone();
    assert_complete_and_ordered("syslog (first of each)", &first_of_each(&received), &events, &cps);
    let repeats = received.len() - first_of_each(&received).len();
    let filed = in_file(&file);
    assert_complete_and_ordered("file", &filed, &events, &cps);
    assert_checkpoints_right_after_their_events("file", &filed);
    assert_eq!(filed.len(), events.len() + cps.len(), "the file holds each item exactly once");
    let siem = status(&ts, "siem").await;
    assert!(!siem.failing && siem.failures > 0, "{siem:?}");
    eprintln!(
        "{served} tokens; {} events and {} checkpoints; the receiver got {} messages ({repeats} repeated around the outage); \
         the collector got {} records ({} repeated)",
        events.len(),
        cps.len(),
        received.len(),
        collected.len(),
        collected.len() - first_of_each(&collected).len()
    );

    // A restart: the sinks resume from their cursors. The file sink's cursor is set back first,
    // as if a crash had lost its last saves: the file's own tail says where it stopped.
    ts.stop().await;
    common::rusqlite_open(&ts.dir.path().join(common::fixture::VAULT_DB))
        .execute("UPDATE audit_sink_cursors SET event_sequence = 1, checkpoint_sequence = 0 WHERE name = 'shipper'", [])
        .unwrap();
    let mut opts = ts.options();
    with_sinks(&mut opts, cfg);
    let again = pogo_vault::server::start(opts).await.unwrap();
    ts.endpoint = format!("https://{}", again.addr);
    ts.server = Some(again);
    let mut tokens = ts.token_client("token-caller").await;
    for _ in 0..20 {
        tokens.get_access_token(token_request("initech")).await.unwrap();
    }
    ts.stop().await;
    let (events, cps) = settle(&ts.audit_db(), &file, &got, &otlp).await;
    assert_complete_and_ordered("otlp after a restart", &first_of_each(&otlp.lock().unwrap()), &events, &cps);
    assert_complete_and_ordered("syslog after a restart", &first_of_each(&got.lock().unwrap()), &events, &cps);
    let filed = in_file(&file);
    assert_complete_and_ordered("file after a restart", &filed, &events, &cps);
    assert_eq!(filed.len(), events.len() + cps.len(), "the file still holds each item exactly once");
    assert_checkpoints_right_after_their_events("file after a restart", &filed);
    assert!(files(&file).len() > 1, "the file sink rotated at 1 MiB");
}
