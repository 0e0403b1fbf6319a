//! Several vault replicas on one PostgreSQL database (the harness puts every test server on
//! PostgreSQL in a `_on_postgres` binary): a change made through one replica takes effect
//! on another within a second, and both append to one audit chain that verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "replicas_on_postgres/sinks.rs"]
mod sinks;

use std::time::{Duration, Instant};

use common::fixture::token_request as get;
use common::server::TestServer;
use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::tenant_service_client::TenantServiceClient;
use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_through_one_replica_refuses_tokens_on_another_within_a_second() {
    let mut a = TestServer::start().await;
    assert!(a.pg.is_some(), "this binary runs its servers on PostgreSQL");
    let b = pogo_vault::server::start(a.options()).await.unwrap();
    let b_endpoint = format!("https://{}", b.addr);
    let channel_b = |name: &str| {
        let files = a.files(name);
        let endpoint = b_endpoint.clone();
        async move { pogo_vault::client::connect(&endpoint, &files, Some("localhost")).await.unwrap() }
    };
    let mut tokens_b = TokenServiceClient::new(channel_b("token-caller").await);
    let mut admin_b = TenantServiceClient::new(channel_b("admin").await);
    let mut admin_a = a.tenant_client("admin").await;

    let mut worst = Duration::ZERO;
    for round in 0..5 {
        let id = format!("acme-{round}");
        // Registered through A, minted (and cached) on B.
        a.register(&id, round).await;
        // A's registration reaches B's cache as an eviction a few ms later; one that lands
        // after B's first mint only costs B a second mint, so let it land first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let first = tokens_b.get_access_token(get(&id)).await.unwrap().into_inner();
        let again = tokens_b.get_access_token(get(&id)).await.unwrap().into_inner();
        assert_eq!(first.access_token, again.access_token, "B serves its cached token");

        // Disabled through A: B refuses within a second.
        let disabled_at = Instant::now();
        admin_a.disable_tenant(pb::DisableTenantRequest { tenant_id: id.clone() }).await.unwrap();
        let refused = loop {
            match tokens_b.get_access_token(get(&id)).await {
                Err(s) => break (s, disabled_at.elapsed()),
                Ok(_) => assert!(disabled_at.elapsed() < Duration::from_secs(5), "B still serves {id}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(refused.0.code(), Code::FailedPrecondition, "{}", refused.0.message());
        worst = worst.max(refused.1);

        // Enabled through B: A serves again.
        admin_b.enable_tenant(pb::EnableTenantRequest { tenant_id: id.clone() }).await.unwrap();
        let enabled_at = Instant::now();
        let mut tokens_a = a.token_client("token-caller").await;
        loop {
            if tokens_a.get_access_token(get(&id)).await.is_ok() {
                break;
            }
            assert!(enabled_at.elapsed() < Duration::from_secs(5), "A does not serve {id} again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    println!("a disable through replica A refused on replica B after at most {worst:?} (5 rounds)");
    assert!(worst < Duration::from_secs(1), "{worst:?}");

    // Both replicas appended to one chain, which verifies from the key the vault holds.
    b.shutdown().await.unwrap();
    a.stop().await;
    let pg = a.pg.as_ref().unwrap();
    let vault = a.vault();
    let key = common::fixture::audit_verifying_key(&vault);
    let report = tokio::task::spawn_blocking({
        let o = pg.options("vault");
        move || pogo_vault::audit::verify_postgres(&o, &key, &pogo_vault::audit::VerifyOptions::default()).unwrap()
    })
    .await
    .unwrap();
    assert!(report.ok, "{}", report.detail);
    let starts = tokio::task::block_in_place(|| {
        pg.admin("vault")
            .query_one("SELECT count(*) FROM events WHERE action = 'server_started'", &[])
            .unwrap()
            .get::<_, i64>(0)
    });
    assert_eq!(starts, 2, "both replicas on the one chain");
}

/// Three replicas on one database (A the test server, B and C started on its options), a
/// client of `name` on each.
async fn three_replicas(
    tweak: impl Fn(&mut pogo_vault::server::ServeOptions) + Copy,
) -> (TestServer, Vec<pogo_vault::server::RunningServer>, Vec<String>) {
    let a = TestServer::start_with(tweak).await;
    assert!(a.pg.is_some(), "this binary runs its servers on PostgreSQL");
    let mut others = Vec::new();
    let mut endpoints = vec![a.endpoint.clone()];
    for _ in 0..2 {
        let mut o = a.options();
        tweak(&mut o);
        let s = pogo_vault::server::start(o).await.unwrap();
        endpoints.push(format!("https://{}", s.addr));
        others.push(s);
    }
    (a, others, endpoints)
}

/// A client of `name` on the replica at `endpoint` (one of the test server's callers).
async fn channel_to(a: &TestServer, endpoint: &str, name: &str) -> tonic::transport::Channel {
    pogo_vault::client::connect(endpoint, &a.files(name), Some("localhost")).await.unwrap()
}

/// Stops the replicas `three_replicas` started beside the test server.
async fn shut_down(others: Vec<pogo_vault::server::RunningServer>) {
    for s in others {
        s.shutdown().await.unwrap();
    }
}

fn generous(o: &mut pogo_vault::server::ServeOptions) {
    o.caller_requests_per_second = 100_000.0;
    o.concurrency_limit_per_connection = 1024;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_for_one_cold_tenant_over_three_replicas_costs_one_upstream_request() {
    let (a, others, endpoints) = three_replicas(generous).await;
    a.register("storm", 7).await;
    // The registration's notification reaches B and C (it only drops what they cached).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = common::fixture::sim_key(7);
    let before = a.sim.token_requests_for(&key);

    let mut clients = Vec::new();
    for e in &endpoints {
        for _ in 0..4 {
            clients.push(TokenServiceClient::new(channel_to(&a, e, "token-caller").await));
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move { c.get_access_token(get("storm")).await.map(|r| r.into_inner()) }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap_or_else(|s| panic!("{}: {}", s.code(), s.message()));
        tokens.insert(r.access_token);
    }
    let took = started.elapsed();
    let upstream = a.sim.token_requests_for(&key) - before;
    println!(
        "a storm of 1,000 concurrent requests for one cold tenant over 3 replicas: {upstream} upstream token request(s), {} distinct token(s), all answered in {took:?}",
        tokens.len()
    );
    assert_eq!(upstream, 1, "one upstream request across the replicas");
    assert_eq!(tokens.len(), 1, "every replica hands out the one token");
    shut_down(others).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_cold_tenants_over_three_replicas_stays_within_the_one_budget() {
    let (a, others, endpoints) = three_replicas(generous).await;
    const TENANTS: usize = 24;
    let cfg = pogo_vault::tokens::BrokerConfig::default();
    let allowed = cfg.upstream_rate_per_second.ceil() as usize + cfg.upstream_burst as usize;
    common::fixture::add_bulk_clients(&a.sim, 0..TENANTS);
    let mut admin = a.tenant_client("admin").await;
    for i in 0..TENANTS {
        let mut r = common::fixture::register_unvalidated(&format!("sweep-{i}"), 0);
        r.client_key = common::fixture::client_key(i);
        admin.register_client_key(r).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let from = Instant::now();

    // Each tenant asked on every replica at once; a refused caller retries after the time
    // it was told, as a client would.
    let mut tasks = Vec::new();
    for i in 0..TENANTS {
        for e in &endpoints {
            let files = a.files("token-caller");
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                let mut c =
                    TokenServiceClient::new(pogo_vault::client::connect(&e, &files, Some("localhost")).await.unwrap());
                let mut refusals = 0u32;
                loop {
                    match c.get_access_token(get(&format!("sweep-{i}"))).await {
                        Ok(_) => return refusals,
                        Err(s) if s.code() == Code::Unavailable || s.code() == Code::ResourceExhausted => {
                            refusals += 1;
                            assert!(refusals < 200, "sweep-{i}: {}", s.message());
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(s) => panic!("sweep-{i}: {}: {}", s.code(), s.message()),
                    }
                }
            }));
        }
    }
    let mut refusals = 0;
    for t in tasks {
        refusals += t.await.unwrap();
    }
    let took = from.elapsed();
    let times: Vec<Instant> = a.sim.token_request_times().into_iter().filter(|t| *t >= from).collect();
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        worst = worst.max(times[i..].iter().take_while(|u| **u < *t + Duration::from_secs(1)).count());
    }
    println!(
        "a sweep of {TENANTS} cold tenants, each asked on 3 replicas at once: {} upstream token requests in {took:?}, at most {worst} in any second (allowed: rate {} + burst {} = {allowed}); {refusals} refusals retried",
        times.len(),
        cfg.upstream_rate_per_second,
        cfg.upstream_burst
    );
    assert_eq!(times.len(), TENANTS, "one upstream request per tenant across the replicas");
    assert!(worst <= allowed, "{worst} token requests within one second; allowed {allowed}");
    shut_down(others).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_replica_pauses_the_others() {
    let (a, others, endpoints) = three_replicas(generous).await;
    a.register("paused-0", 4).await;
    a.register("paused-1", 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut on_a = TokenServiceClient::new(channel_to(&a, &endpoints[0], "token-caller").await);
    let mut on_b = TokenServiceClient::new(channel_to(&a, &endpoints[1], "token-caller").await);

    a.sim.fail_next_429(1, 4);
    let refused = on_a.get_access_token(get("paused-0")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    let paused_at = Instant::now();
    let seen = a.sim.token_requests();
    // The pause is written to the shared bucket as A reports it; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let on_b_refused = on_b.get_access_token(get("paused-1")).await.unwrap_err();
    assert_eq!(on_b_refused.code(), Code::Unavailable, "{}", on_b_refused.message());
    assert_eq!(a.sim.token_requests(), seen, "B sent nothing to Go while A's 429 pause lasts");
    // When the pause is over, B mints.
    loop {
        match on_b.get_access_token(get("paused-1")).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
                assert!(paused_at.elapsed() < Duration::from_secs(10), "B never served again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let resumed = paused_at.elapsed();
    println!("a 429 (Retry-After 4 s) seen by replica A paused replica B too: B minted again {resumed:?} after it");
    assert!(resumed >= Duration::from_millis(3500), "{resumed:?}");
    shut_down(others).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_used_on_three_replicas_is_refreshed_ahead_by_one() {
    fn short(o: &mut pogo_vault::server::ServeOptions) {
        generous(o);
        o.tokens.refresh_ahead_share = 0.5;
        o.tokens.refresh_jitter_share = 0.1;
        o.tokens.refresh_interval = Duration::from_millis(100);
        o.tokens.max_min_validity = Duration::from_secs(1);
        o.tokens.default_min_validity = Duration::from_millis(500);
    }
    let (a, others, endpoints) = three_replicas(short).await;
    let lifetime = Duration::from_secs(4);
    a.sim.set_token_lifetime(lifetime);
    a.register("hot", 6).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = common::fixture::sim_key(6);
    let before = a.sim.token_requests_for(&key);
    let mut clients = Vec::new();
    for e in &endpoints {
        clients.push(TokenServiceClient::new(channel_to(&a, e, "token-caller").await));
    }
    // Asked on every replica every 100 ms for 6 s: each keeps the tenant hot.
    let window = Duration::from_secs(6);
    let started = Instant::now();
    let mut tokens = std::collections::HashSet::new();
    let mut served = [0usize; 3];
    while started.elapsed() < window {
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c.get_access_token(get("hot")).await.unwrap().into_inner();
            tokens.insert(r.access_token);
            served[i] += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upstream = a.sim.token_requests_for(&key) - before;
    let elapsed = started.elapsed();
    // The first mint, then one refresh each time the token reaches its refresh point:
    // 50-60 % of the 4-s lifetime after the last, so at most four in 6 s (counted over the
    // time the loop really took). Each replica refreshing on its own would cost three per
    // refresh point, and three first mints.
    let most = 1 + (elapsed.as_secs_f64() / (lifetime.as_secs_f64() * 0.4)).floor() as u64;
    println!(
        "a tenant kept hot on 3 replicas for {elapsed:?} (tokens living {lifetime:?}): {upstream} upstream token requests (at most {most} if one replica refreshes; each replica on its own: 3 per refresh), {} distinct tokens served, {served:?} answers per replica",
        tokens.len()
    );
    assert!(upstream >= 2, "the token was refreshed ahead ({upstream})");
    assert!(upstream <= most, "{upstream} upstream requests; one replica refreshing makes at most {most}");
    // Every minted token was served (but perhaps the last, minted as the window closed).
    assert!(tokens.len() as u64 + 1 >= upstream, "{} tokens served of {upstream} minted", tokens.len());
    shut_down(others).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_token_is_sealed_and_destroyed_when_its_tenant_changes() {
    let (a, others, endpoints) = three_replicas(generous).await;
    a.register("shared-1", 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut on_a = TokenServiceClient::new(channel_to(&a, &endpoints[0], "token-caller").await);
    let mut on_b = TokenServiceClient::new(channel_to(&a, &endpoints[1], "token-caller").await);
    let pg = a.pg.as_ref().unwrap();
    let row = |tenant: &str| {
        tokio::task::block_in_place(|| {
            pg.admin("vault")
                .query_opt("SELECT ciphertext, wrapped_dek FROM shared_tokens WHERE tenant_id = $1", &[&tenant])
                .unwrap()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
        })
    };

    let first = on_a.get_access_token(get("shared-1")).await.unwrap().into_inner().access_token;
    let (ciphertext, wrapped) = row("shared-1").expect("A shared the token it minted");
    for blob in [&ciphertext, &wrapped] {
        assert!(!blob.windows(first.len()).any(|w| w == first.as_bytes()), "the shared token is sealed");
    }
    let on_b_token = on_b.get_access_token(get("shared-1")).await.unwrap().into_inner().access_token;
    assert_eq!(on_b_token, first, "B serves the token A minted");
    // Kept, to put back after the tenant is deleted and registered again with another key.
    let stale: Vec<u8> = tokio::task::block_in_place(|| {
        pg.admin("vault")
            .query_one(
                "SELECT convert_to(row_to_json(t)::text, 'UTF8') FROM shared_tokens t WHERE tenant_id = 'shared-1'",
                &[],
            )
            .unwrap()
            .get(0)
    });

    // Disabled through B: the shared token is destroyed; enabled again, a new one is minted.
    let mut admin_b = TenantServiceClient::new(channel_to(&a, &endpoints[1], "admin").await);
    admin_b.disable_tenant(pb::DisableTenantRequest { tenant_id: "shared-1".into() }).await.unwrap();
    assert!(row("shared-1").is_none(), "destroyed on disable");
    admin_b.enable_tenant(pb::EnableTenantRequest { tenant_id: "shared-1".into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = on_a.get_access_token(get("shared-1")).await.unwrap().into_inner().access_token;
    assert_ne!(second, first, "the old token is not served again");
    assert!(row("shared-1").is_some());

    // Rotated through A: destroyed; B mints with the new key.
    let mut admin_a = a.tenant_client("admin").await;
    admin_a
        .rotate_client_key(pb::RotateClientKeyRequest {
            tenant_id: "shared-1".into(),
            client_key: common::fixture::sim_key(3),
        })
        .await
        .unwrap();
    assert!(row("shared-1").is_none(), "destroyed on rotation");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = a.sim.token_requests_for(&common::fixture::sim_key(3));
    let third = on_b.get_access_token(get("shared-1")).await.unwrap().into_inner().access_token;
    assert!(third != first && third != second, "a token of the old key is not served");
    assert_eq!(a.sim.token_requests_for(&common::fixture::sim_key(3)), before + 1, "minted with the new key");

    // Deleted through A: destroyed.
    admin_a.delete_tenant(pb::DeleteTenantRequest { tenant_id: "shared-1".into() }).await.unwrap();
    assert!(row("shared-1").is_none(), "destroyed on delete");
    let gone = on_b.get_access_token(get("shared-1")).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{}", gone.message());

    // Registered again under the same id with another customer's key (key version 1 again),
    // and the first token's row put back as it was (a replica that published late, or one
    // that did not destroy it): it is bound to the old key, so nobody serves it.
    admin_b.register_client_key(common::fixture::register_request("shared-1", 4)).await.unwrap();
    tokio::task::block_in_place(|| {
        let mut admin = pg.admin("vault");
        admin
            .execute(
                "INSERT INTO shared_tokens SELECT * FROM json_populate_record(NULL::shared_tokens, convert_from($1, 'UTF8')::json)
                 ON CONFLICT (tenant_id) DO NOTHING",
                &[&stale],
            )
            .unwrap();
        admin
            .execute(
                "UPDATE shared_tokens SET expires_at = expires_at + 3600000, refresh_at = refresh_at + 3600000",
                &[],
            )
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = a.sim.token_requests_for(&common::fixture::sim_key(4));
    let fourth = on_b.get_access_token(get("shared-1")).await.unwrap().into_inner().access_token;
    assert_ne!(fourth, first, "the deleted tenant's token is not served to the new one");
    assert_eq!(
        a.sim.token_requests_for(&common::fixture::sim_key(4)),
        before + 1,
        "minted with the new customer's key"
    );
    shut_down(others).await;
}

/// `serve --config` for replica `i` of a vault on PostgreSQL: the files of
/// `fixture::serve_files` under `dir`, the database of `pg`, its own port and log.
fn replica_config(dir: &std::path::Path, pg: &common::pg::PgCluster, i: usize) -> (std::path::PathBuf, String) {
    use common::fixture::{CERTS, MASTER_KEY, POLICY};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sub = dir.join(format!("replica-{i}"));
    std::fs::create_dir_all(&sub).unwrap();
    let d = dir.display();
    let config = sub.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\nmaster_key_file = \"{d}/{MASTER_KEY}\"\n\n\
             [storage]\nbackend = \"postgres\"\n\n\
             [storage.postgres]\nurl = \"{}\"\npassword_file = \"{}\"\n\n\
             [server]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{d}/{CERTS}/server.pem\"\n\
             key = \"{d}/{CERTS}/server-key.pem\"\nclient_ca = \"{d}/{CERTS}/ca.pem\"\npolicy = \"{d}/{POLICY}\"\n\
             caller_requests_per_second = 100000\nmetrics_listen = \"\"\n\n\
             [tokens]\nupstream_rate_per_second = 10\nupstream_burst = 10\n\
             default_min_validity_secs = 1\nmax_min_validity_secs = 1\n",
            pg.url("vault"),
            pg.password_file().display()
        ),
    )
    .unwrap();
    (config, format!("https://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replica_processes_keep_serving_when_one_is_killed_under_load() {
    use common::fixture;
    use common::serve_process;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const TENANTS: usize = 15;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = fixture::start_sim(1000).await;
    // Tokens live 3 s and callers want 1 s of them: misses, leases, shared tokens and
    // bookings go on across the kill, not only cache hits.
    sim.set_token_lifetime(Duration::from_secs(3));
    fixture::add_bulk_clients(&sim, 0..TENANTS);
    let (pki, vault) = fixture::serve_files(d, &sim, &fixture::policy_text(""));
    for i in 0..TENANTS {
        let new =
            pogo_vault::vault::NewTenant::new(format!("t-{i}").parse().unwrap(), pogo_vault::domain::Environment::Demo);
        let key = pogo_vault::crypto::ClientKey::parse(&fixture::client_key(i)).unwrap();
        vault.add_tenant(&new, &key, &pogo_vault::vault::UnauditedFixture).unwrap();
    }
    let key = fixture::audit_verifying_key(&vault);
    let pg = tokio::task::spawn_blocking({
        let d = d.to_owned();
        move || common::server::move_to_postgres(&d)
    })
    .await
    .unwrap();

    let replicas: Vec<_> = (0..3).map(|i| replica_config(d, &pg, i)).collect();
    // Killed (and waited for) when the test ends, however it ends.
    struct Replicas(Vec<std::process::Child>);
    impl Drop for Replicas {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut children = Replicas(replicas.iter().map(|(c, _)| serve_process::start(c, "warn")).collect());
    let files = pki.client_files("token-caller").unwrap();
    let mut channels = Vec::new();
    for (config, endpoint) in &replicas {
        channels.push(serve_process::wait_ready(endpoint, &files, config, 300, Duration::from_millis(50)).await);
    }

    // The load generator: 12 workers, each sending to the replicas in turn and, when one
    // fails, retrying the same request on the next (as a caller with three addresses does).
    // (asked, answered or failed, which replica, the token or the failure)
    type Log = Arc<Mutex<Vec<(Instant, Instant, usize, String)>>>;
    let answered: Log = Arc::default();
    let failures: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..12usize {
        let (channels, answered, failures, stop) = (channels.clone(), answered.clone(), failures.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut clients: Vec<_> = channels.into_iter().map(TokenServiceClient::new).collect();
            let mut n = w;
            let mut at = w % 3;
            while !stop.load(Ordering::Relaxed) {
                let tenant = format!("t-{}", (n * 7 + w) % TENANTS);
                n += 1;
                loop {
                    let asked = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(2), clients[at].get_access_token(get(&tenant))).await
                    {
                        Ok(Ok(r)) => {
                            answered.lock().unwrap().push((asked, Instant::now(), at, r.into_inner().access_token));
                            break;
                        }
                        Ok(Err(s)) => {
                            failures.lock().unwrap().push((asked, Instant::now(), at, format!("{:?}", s.code())))
                        }
                        Err(_) => failures.lock().unwrap().push((asked, Instant::now(), at, "timeout".into())),
                    }
                    at = (at + 1) % 3;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                at = (at + 1) % 3;
            }
        }));
    }
    let count = |a: &Log| a.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&answered) < 600 {
        assert!(Instant::now() < deadline, "load did not run: {} answers", count(&answered));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // kill -9 of replica 1 under load.
    let killed_at = Instant::now();
    children.0[1].kill().unwrap();
    children.0[1].wait().unwrap();
    let at_kill = count(&answered);
    let upstream_at_kill = sim.token_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    let mut after: Vec<_> = answered.iter().filter(|(_, t, _, _)| *t > killed_at).collect();
    after.sort_by_key(|(_, t, _, _)| *t);
    assert!(after.len() >= 100, "the other two kept serving: {} answers", after.len());
    let first_after = after[0].1 - killed_at;
    let mut worst_gap = Duration::ZERO;
    let mut last = killed_at;
    for (_, t, _, _) in &after {
        worst_gap = worst_gap.max(t.saturating_duration_since(last));
        last = last.max(*t);
    }
    let failed_after = failures.iter().filter(|(_, t, _, _)| *t > killed_at).count();
    let minted = sim.token_requests();
    let minted_after = minted - upstream_at_kill;
    // Tokens expired and were minted again (misses, leases, bookings) after the kill, on
    // the two replicas left: not only cache hits.
    assert!(minted_after >= TENANTS as u64, "{minted_after} tokens minted after the kill");
    let failed_before = failures.len() - failed_after;
    println!(
        "3 replica processes on one PostgreSQL, 12 workers: {at_kill} answers before replica 1 was killed (SIGKILL; {failed_before} calls failed before it), {} in the 3 s after it from the other two (first {first_after:?} after the kill, longest pause between answers {worst_gap:?}); {failed_after} calls failed after the kill (the dead address refuses at once) and were retried on the next address",
        after.len()
    );
    assert!(
        after.iter().filter(|(asked, _, _, _)| *asked > killed_at).all(|(_, _, at, _)| *at != 1),
        "nothing asked after the kill was answered by the killed replica"
    );
    assert!(worst_gap < Duration::from_secs(2), "{worst_gap:?}");

    for i in [0, 2] {
        let c = &mut children.0[i];
        assert!(std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "replica {i} did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "replica {i}: {status}");
    }
    // Every answered token has its disclosure record for the caller; the log verifies.
    let caller = format!("spiffe://{}/service/token-caller", fixture::TRUST);
    let on_record: std::collections::HashSet<String> = tokio::task::block_in_place(|| {
        pg.admin("vault")
            .query(
                "SELECT token_fingerprint FROM events WHERE action = 'token_minted' AND caller = $1
                 AND token_fingerprint IS NOT NULL AND detail NOT LIKE '%; repeat%'",
                &[&caller],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    });
    let tokens: std::collections::HashSet<&String> = answered.iter().map(|(_, _, _, t)| t).collect();
    for t in &tokens {
        let fp = vault.fingerprint_key().fingerprint(pogo_vault::tokens::FP_ACCESS_TOKEN, t.as_bytes()).to_string();
        assert!(on_record.contains(&fp), "a token handed out has no disclosure record");
    }
    let report = tokio::task::spawn_blocking({
        let o = pg.options("vault");
        move || pogo_vault::audit::verify_postgres(&o, &key, &pogo_vault::audit::VerifyOptions::default()).unwrap()
    })
    .await
    .unwrap();
    assert!(report.ok, "{}", report.detail);
    println!(
        "{} answers, {} distinct tokens ({minted} upstream token requests in all, {minted_after} after the kill), each with its disclosure record; the log verifies ({})",
        answered.len(),
        tokens.len(),
        report.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_vault_loses_nothing_acknowledged_when_its_primary_dies_under_token_and_registration_load() {
    use common::fixture;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const TENANTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let sim = fixture::start_sim(100_000).await;
    // Tokens live 2 s and callers want 1 s of them: new tokens, hence first disclosures
    // (each answered only after its record is durable), keep coming under the load.
    sim.set_token_lifetime(Duration::from_secs(2));
    fixture::add_bulk_clients(&sim, 0..TENANTS);
    let (pki, vault) = fixture::serve_files(&d, &sim, &fixture::policy_text(""));
    for i in 0..TENANTS {
        let new =
            pogo_vault::vault::NewTenant::new(format!("t-{i}").parse().unwrap(), pogo_vault::domain::Environment::Demo);
        let key = pogo_vault::crypto::ClientKey::parse(&fixture::client_key(i)).unwrap();
        vault.add_tenant(&new, &key, &pogo_vault::vault::UnauditedFixture).unwrap();
    }
    let audit_key = fixture::audit_verifying_key(&vault);
    let (primary, standby, pg_options) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || {
            let primary = common::server::move_to_postgres(&d);
            let (standby, o) = primary.start_sync_standby("vault");
            (primary, standby, o)
        }
    })
    .await
    .unwrap();
    let mut opts = common::server::options_on(&d, &pki, &d.join(fixture::POLICY));
    opts.postgres = Some(pg_options.clone());
    opts.caller_requests_per_second = 100_000.0;
    opts.tokens.upstream_rate_per_second = 200.0;
    opts.tokens.upstream_burst = 100;
    opts.tokens.default_min_validity = Duration::from_secs(1);
    opts.tokens.max_min_validity = Duration::from_secs(1);
    let server = pogo_vault::server::start(opts).await.unwrap();
    let endpoint = format!("https://{}", server.addr);

    // (asked, answered, what) of every acknowledged answer: a token handed out, a tenant
    // registered.
    type Acks = Arc<Mutex<Vec<(Instant, Instant, String)>>>;
    let tokens: Acks = Arc::default();
    let registered: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6usize {
        let ch = pogo_vault::client::connect(&endpoint, &pki.client_files("token-caller").unwrap(), Some("localhost"))
            .await
            .unwrap();
        let (tokens, stop) = (tokens.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut c = TokenServiceClient::new(ch);
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let asked = Instant::now();
                match c.get_access_token(get(&format!("t-{}", n % TENANTS))).await {
                    Ok(r) => tokens.lock().unwrap().push((asked, Instant::now(), r.into_inner().access_token)),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    for w in 0..2usize {
        let ch = pogo_vault::client::connect(&endpoint, &pki.client_files("admin").unwrap(), Some("localhost"))
            .await
            .unwrap();
        let (registered, stop) = (registered.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut c = TenantServiceClient::new(ch);
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("r-{w}-{n}");
                let mut req = fixture::register_unvalidated(&id, 0);
                req.client_key = fixture::client_key(1_000 + w * 100_000 + n);
                let asked = Instant::now();
                match c.register_client_key(req).await {
                    Ok(_) => {
                        registered.lock().unwrap().push((asked, Instant::now(), id));
                        n += 1;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    // The primary's directory holds the password file: it stays (dead) until the end.
    let promoted_at = tokio::task::block_in_place(|| {
        primary.kill9();
        std::thread::sleep(Duration::from_millis(500));
        standby.promote();
        Instant::now()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    server.shutdown().await.unwrap();

    let mut tokens = tokens.lock().unwrap().clone();
    let registered = registered.lock().unwrap().clone();
    // Served again: the first answer to a request asked after the kill that needed the
    // database (a registration; a token's first disclosure, whose record is awaited).
    tokens.sort_by_key(|(_, answered, _)| *answered);
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<(Instant, Instant, String)> =
        tokens.iter().filter(|(_, _, t)| seen.insert(t.clone())).cloned().collect();
    let back_after = |acks: &[(Instant, Instant, String)]| {
        acks.iter().filter(|(asked, _, _)| *asked > killed_at).map(|(_, answered, _)| *answered - killed_at).min()
    };
    let (token_back, reg_back) = (back_after(&firsts), back_after(&registered));
    let caller = format!("spiffe://{}/service/token-caller", fixture::TRUST);
    let (on_standby, tenants_there) = tokio::task::block_in_place(|| {
        let mut c = standby.admin("vault");
        let fps: std::collections::HashSet<String> = c
            .query(
                "SELECT token_fingerprint FROM events WHERE action = 'token_minted' AND caller = $1
                 AND token_fingerprint IS NOT NULL AND detail NOT LIKE '%; repeat%'",
                &[&caller],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let ids: std::collections::HashSet<String> =
            c.query("SELECT tenant_id FROM tenants", &[]).unwrap().into_iter().map(|r| r.get(0)).collect();
        (fps, ids)
    });
    let distinct: std::collections::HashSet<&String> = tokens.iter().map(|(_, _, t)| t).collect();
    let lost_tokens = distinct
        .iter()
        .filter(|t| {
            !on_standby.contains(
                &vault.fingerprint_key().fingerprint(pogo_vault::tokens::FP_ACCESS_TOKEN, t.as_bytes()).to_string(),
            )
        })
        .count();
    let lost_registrations = registered.iter().filter(|(_, _, id)| !tenants_there.contains(id)).count();
    println!(
        "failover of the served vault: {} tokens handed out ({} distinct, each a first disclosure with its record), {} registrations acknowledged; \
         primary killed (SIGKILL), standby promoted {:?} later; lost: {lost_tokens} disclosure records, {lost_registrations} registrations; \
         first disclosures served again {:?} and registrations {:?} after the kill (asked after it)",
        tokens.len(),
        distinct.len(),
        registered.len(),
        promoted_at - killed_at,
        token_back,
        reg_back,
    );
    assert!(distinct.len() >= 40 && registered.len() >= 20, "load ran");
    assert_eq!(lost_tokens, 0, "every token handed out has its disclosure record on the promoted standby");
    assert_eq!(lost_registrations, 0, "every acknowledged registration is on the promoted standby");
    assert!(token_back.is_some() && reg_back.is_some(), "the vault served again after the failover");
    assert!(firsts.iter().any(|(_, t, _)| *t > promoted_at) && registered.iter().any(|(_, t, _)| *t > promoted_at));
    let report = tokio::task::spawn_blocking({
        let mut o = pg_options.clone();
        o.statement_timeout = Duration::from_secs(30);
        move || {
            pogo_vault::audit::verify_postgres(&o, &audit_key, &pogo_vault::audit::VerifyOptions::default()).unwrap()
        }
    })
    .await
    .unwrap();
    assert!(report.ok, "{}", report.detail);
}
