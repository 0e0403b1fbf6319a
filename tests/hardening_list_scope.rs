//! Issue 13, fairness: `ListTenants` for an admin scoped to a prefix reads only that
//! prefix's id range (the primary-key index), not every tenant. Before the fix it scanned
//! all tenants from the first id on, 500 a batch, and kept the ones it could show: with
//! 5,000 other tenants every listing read them all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::server::TestServer;
use pogo_vault::audit::AuditFilter;
use pogo_vault::proto::v1 as pb;

/// 5,000 tenants `z-0000 ..` and 20 `a-00 ..` (the `a-only` caller holds tenant-admin on
/// `a-*`), plus the exact id `a` and `a.x`, which sort around the range and are not its.
fn fill(ts: &TestServer) -> Vec<String> {
    let mut ids: Vec<String> = (0..5000).map(|i| format!("z-{i:04}")).collect();
    let scoped: Vec<String> = (0..20).map(|i| format!("a-{i:02}")).collect();
    ids.extend(scoped.iter().cloned());
    ids.extend(["a".to_owned(), "a.x".to_owned(), "b".to_owned()]);
    common::fixture::add_bulk_tenants(&ts.vault(), &ids, 0, false);
    scoped
}

/// Lists every page as `who` with `page_size`; the ids seen and how many pages.
async fn list_all(ts: &TestServer, who: &str, page_size: u32) -> (Vec<String>, usize) {
    let mut client = ts.tenant_client(who).await;
    let (mut ids, mut pages, mut token) = (Vec::new(), 0, String::new());
    // Bounded: 5,100 tenants at the smallest page size used here is under 20 pages.
    for _ in 0..100 {
        let r = client
            .list_tenants(pb::ListTenantsRequest { page_size, page_token: token.clone(), filter: String::new() })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        ids.extend(r.tenants.into_iter().map(|t| t.tenant_id));
        if r.next_page_token.is_empty() {
            return (ids, pages);
        }
        token = r.next_page_token;
    }
    panic!("more than 100 pages");
}

/// The rows each `ListTenants` of `caller` read, from its audit record's detail.
fn rows_read(ts: &TestServer, caller: &str) -> Vec<usize> {
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    let events = pogo_vault::audit::list(&conn, &AuditFilter::default(), None, 100_000).unwrap();
    events
        .iter()
        .filter(|e| e.record.action.as_str() == "tenant_read" && e.record.caller == caller)
        .map(|e| {
            let d = &e.record.detail;
            let n =
                d.split(", ").find_map(|p| p.strip_suffix(" rows read")).unwrap_or_else(|| panic!("no row count: {d}"));
            n.parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn an_admin_scoped_to_a_prefix_lists_its_tenants_reading_only_their_range() {
    let ts = TestServer::start().await;
    let scoped = fill(&ts);

    let (ids, pages) = list_all(&ts, "a-only", 6).await;
    assert_eq!(ids, scoped, "exactly its 20, in id order, across pages");
    assert_eq!(pages, 4);
    let rows = rows_read(&ts, &format!("spiffe://{}/service/a-only", common::fixture::TRUST));
    let total: usize = rows.iter().sum();
    eprintln!("a-only: 4 pages read {rows:?} rows ({total} in all) of 5,023 tenants");
    assert_eq!(rows.len(), 4);
    // Each page reads at most the range's 20 rows (from where the last page stopped).
    assert!(rows.iter().all(|&n| n <= 20) && total <= 80, "rows read per page: {rows:?}");

    // An admin on "*" still sees every tenant across pages (one full range).
    let (all, _) = list_all(&ts, "admin", 500).await;
    assert_eq!(all.len(), 5023);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in id order, no repeats");
}

#[tokio::test]
async fn the_range_query_searches_the_primary_key_index() {
    let ts = TestServer::start().await;
    fill(&ts);
    let conn = rusqlite::Connection::open(ts.dir.path().join("vault.db")).unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", pogo_vault::store::tenants::LIST_RANGE_SQL))
        .unwrap()
        .query_map(rusqlite::params!["a-", "a-\u{10FFFF}", 500], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("; ");
    eprintln!("plan: {plan}");
    assert!(plan.contains("SEARCH tenants USING INDEX") && plan.contains("tenant_id>? AND tenant_id<?"), "{plan}");
    assert!(!plan.contains("SCAN"), "{plan}");
}
