//! Several vault replicas on one PostgreSQL database (the harness puts every test server on
//! PostgreSQL in a `_on_postgres` binary): a change made through one replica takes effect
//! on another within a second, and both append to one audit chain that verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
