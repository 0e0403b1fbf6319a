//! Audit sinks and reader connections with the log on PostgreSQL and three replicas.
//!
//! - Every replica runs the same syslog sink, and one delivers it (it holds the sink's
//!   lease): the receiver gets each event and checkpoint once, not three times, the other two
//!   show "standby" and the shared cursor. When the holder's session ends (the server ends it,
//!   as when its replica dies or is cut off) another replica takes the sink over from the
//!   shared cursor, and when the holder stops another takes over at once; nothing is skipped.
//! - Audit queries take their connections from a pool of `pool_size`: a burst of concurrent
//!   `ListAuditEvents` never opens more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use common::syslog::{Got, Receiver};
use pogo_vault::audit::SinkConfig;
use pogo_vault::proto::v1::audit_service_client::AuditServiceClient;
use pogo_vault::proto::v1::status_service_client::StatusServiceClient;

use super::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn siem(port: u16) -> Vec<SinkConfig> {
    let text = format!(
        "[[sink]]\nname = \"siem\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nhostname = \"vault-test\"\n"
    );
    #[derive(serde::Deserialize)]
    struct Top {
        sink: Vec<SinkConfig>,
    }
    toml::from_str::<Top>(&text).unwrap().sink
}

fn with_siem(o: &mut pogo_vault::server::ServeOptions, port: u16) {
    o.audit.checkpoint_interval = Duration::from_millis(200);
    o.audit.sinks = siem(port);
    generous(o);
}

/// Every event and checkpoint in the log on PostgreSQL.
fn in_log(pg: &common::pg::PgCluster) -> HashSet<Got> {
    tokio::task::block_in_place(|| {
        let mut db = pg.admin("vault");
        let mut all = HashSet::new();
        for (kind, table) in [("event", "events"), ("checkpoint", "checkpoints")] {
            for r in db.query(&format!("SELECT sequence FROM {table}"), &[]).unwrap() {
                all.insert((kind, r.get::<_, i64>(0)));
            }
        }
        all
    })
}

/// Waits until the receiver holds every item of the log, twice in a row with the log
/// unchanged (nothing still on its way); returns the log's items.
async fn settle(pg: &common::pg::PgCluster, got: &Arc<Mutex<Vec<Got>>>) -> HashSet<Got> {
    let deadline = Instant::now() + DEADLINE;
    let mut last: Option<HashSet<Got>> = None;
    loop {
        let want = in_log(pg);
        let received: HashSet<Got> = got.lock().unwrap().iter().copied().collect();
        if want.is_subset(&received) {
            if last.as_ref() == Some(&want) {
                return want;
            }
            last = Some(want);
        } else {
            last = None;
            assert!(
                Instant::now() < deadline,
                "the sink did not catch up: {} of {} items received",
                want.intersection(&received).count(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Items the receiver got more than once.
fn repeats(got: &Arc<Mutex<Vec<Got>>>) -> usize {
    let mut n: HashMap<Got, usize> = HashMap::new();
    for g in got.lock().unwrap().iter() {
        *n.entry(*g).or_default() += 1;
    }
    n.values().filter(|c| **c > 1).count()
}

async fn sink_on(a: &TestServer, endpoint: &str) -> pb::AuditSink {
    let s = StatusServiceClient::new(channel_to(a, endpoint, "auditor").await)
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    s.audit_sinks.into_iter().find(|k| k.name == "siem").unwrap()
}

/// Which of `endpoints` delivers the sink, waiting until exactly one does (around a
/// takeover the old holder shows itself leading until its next lease check, a second).
async fn holder(a: &TestServer, endpoints: &[String]) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut leading = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            if !sink_on(a, e).await.standby {
                leading.push(i);
            }
        }
        if let [i] = leading[..] {
            return i;
        }
        assert!(Instant::now() < deadline, "not exactly one replica delivers the sink: {leading:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` token requests spread over `endpoints` (each request and its record an event).
async fn load(a: &TestServer, endpoints: &[String], n: usize) {
    for i in 0..n {
        let mut c = TokenServiceClient::new(channel_to(a, &endpoints[i % endpoints.len()], "token-caller").await);
        c.get_access_token(get("sinks")).await.unwrap();
    }
}

/// Ends the server session holding the sink's lease (what a replica's death or a cut
/// network does to it), from the database side.
fn end_lease_session(pg: &common::pg::PgCluster) -> u32 {
    tokio::task::block_in_place(|| {
        let mut db = pg.admin("vault");
        let rows = db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND objsubid = 1
                   AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('pogo-vault audit sink siem', 0)",
                &[],
            )
            .unwrap();
        rows.len() as u32
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_on_three_replicas_is_delivered_by_one_and_taken_over_when_its_holder_goes() {
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let rx = Receiver::start(0, got.clone()).await;
    let port = rx.port;
    let mut a = TestServer::start_with(|o| with_siem(o, port)).await;
    let pg = a.pg.as_ref().unwrap();
    let mut others = Vec::new();
    let mut endpoints = vec![a.endpoint.clone()];
    for _ in 0..2 {
        let mut o = a.options();
        with_siem(&mut o, port);
        let s = pogo_vault::server::start(o).await.unwrap();
        endpoints.push(format!("https://{}", s.addr));
        others.push(Some(s));
    }
    a.register("sinks", 3).await;

    // One replica delivers; the receiver gets each item once.
    load(&a, &endpoints, 30).await;
    let first = holder(&a, &endpoints).await;
    let items = settle(pg, &got).await;
    assert_eq!(repeats(&got), 0, "each item delivered once, by one replica");
    for (i, e) in endpoints.iter().enumerate() {
        let s = sink_on(&a, e).await;
        assert_eq!(s.standby, i != first, "replica {i}: {s:?}");
        assert!(!s.failing, "replica {i}: {s:?}");
    }
    println!("sink on 3 replicas: {} items, each received once, replica {first} delivering", items.len());

    // The holder's session ends with a backlog still to deliver: another replica takes the
    // sink over from the shared cursor (the old holder, finding its lease gone, leaves it to
    // the others for two checks), and nothing is skipped.
    load(&a, &endpoints, 30).await;
    assert_eq!(end_lease_session(pg), 1, "one session holds the sink's lease");
    let ended = Instant::now();
    let second = loop {
        let h = holder(&a, &endpoints).await;
        if h != first {
            break h;
        }
        assert!(ended.elapsed() < DEADLINE, "no other replica took the sink over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took_over = ended.elapsed();
    load(&a, &endpoints, 30).await;
    let items = settle(pg, &got).await;
    let twice = repeats(&got);
    println!(
        "the holder's lease session ended: replica {second} delivers {took_over:?} later; {} items all received, {twice} of them twice",
        items.len()
    );
    assert!(took_over < Duration::from_secs(3), "taken over within the lease checks: {took_over:?}");

    // The holder stops: it lets the lease go, and another takes over at once.
    let rest: Vec<String> =
        endpoints.iter().enumerate().filter(|(i, _)| *i != second).map(|(_, e)| e.clone()).collect();
    match second {
        0 => a.stop().await,
        i => others[i - 1].take().unwrap().shutdown().await.unwrap(),
    }
    let stopped = Instant::now();
    let third = holder(&a, &rest).await;
    let took_over = stopped.elapsed();
    load(&a, &rest, 10).await;
    let items = settle(a.pg.as_ref().unwrap(), &got).await;
    println!(
        "the holder stopped: {} delivers {took_over:?} after its shutdown returned; {} items all received",
        rest[third],
        items.len()
    );
    // The others try every second; the lease was let go at the stop.
    assert!(took_over < Duration::from_secs(4), "taken over at their next check: {took_over:?}");

    // In order: each event arrived first after every event before it.
    let mut firsts = Vec::new();
    let mut seen = HashSet::new();
    for g in got.lock().unwrap().iter().filter(|g| g.0 == "event") {
        if seen.insert(*g) {
            firsts.push(g.1);
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "events first arrived out of order");
    for s in others.into_iter().flatten() {
        s.shutdown().await.unwrap();
    }
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_audit_queries_opens_no_more_connections_than_pool_size() {
    const POOL: usize = 2;
    let a = TestServer::start_with(|o| {
        generous(o);
        if let Some(p) = o.postgres.as_mut() {
            p.pool_size = POOL;
        }
    })
    .await;
    a.register("pool", 4).await;
    let pg = a.pg.as_ref().unwrap();
    let count = || {
        tokio::task::block_in_place(|| {
            pg.admin("vault")
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = 'vault' AND application_name = 'pogo-vault'",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
        })
    };
    let before = count();
    // Watch the server's connections while 40 queries run at once.
    let most = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (most, stop, url) = (most.clone(), stop.clone(), pg.url("vault"));
        let password = pg.password().to_owned();
        std::thread::spawn(move || {
            let cfg: postgres::Config = url.parse().unwrap();
            let mut db = cfg.clone().password(password).connect(postgres::NoTls).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let n: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'vault' AND application_name = 'pogo-vault'",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                most.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let auditor = AuditServiceClient::new(a.channel("auditor").await);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mut c = auditor.clone();
        tasks.push(tokio::spawn(async move {
            c.list_audit_events(pb::ListAuditEventsRequest { page_size: 100, ..Default::default() }).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().unwrap_or_else(|s| panic!("{}: {}", s.code(), s.message()));
        assert!(!r.into_inner().events.is_empty());
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    watcher.join().unwrap();
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "40 concurrent ListAuditEvents with pool_size {POOL}: all answered in {took:?}; the server held {before} connections before, at most {most} during"
    );
    // Before: four long-lived connections (vault, audit writer, leases, change feed) and what
    // the registration's validation opened of the shared-state pool; no audit reader yet.
    // The burst opens at most the audit readers' pool on top.
    assert!(most <= before + POOL as i64, "at most {POOL} audit reader connections more than {before}, saw {most}");
    assert!(most <= 4 + 2 * POOL as i64, "within 4 long-lived + 2 pools of {POOL}, saw {most}");
    assert!(most > before, "the queries used the pool");
}
