//! The disclosure rule and the per-caller budget, through gRPC over mutual TLS (DESIGN.md
//! invariant 6; issue 17): a token's first disclosure to a caller (identity, certificate
//! serial, peer IP) is recorded before it leaves, a repeat is recorded as one without being
//! awaited, and a caller over its budget is refused with RetryInfo and recorded once a
//! second, not once a request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::fixture::key;
use common::new_tenant;
use common::server::TestServer;
use pogo_vault::audit::{Action, AuditEvent, AuditFilter};
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::UnauditedFixture;
use tonic::Code;
use tonic_types::StatusExt;

fn events(ts: &TestServer, action: Action) -> Vec<AuditEvent> {
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    let filter = AuditFilter { action: Some(action), ..Default::default() };
    pogo_vault::audit::list(&conn, &filter, None, 100_000).unwrap()
}

fn ask(tenant: &str, id: &str) -> tonic::Request<pb::GetAccessTokenRequest> {
    let mut r = tonic::Request::new(pb::GetAccessTokenRequest { tenant_id: tenant.into(), min_validity_seconds: 0 });
    r.metadata_mut().insert("x-request-id", id.parse().unwrap());
    r
}

fn record_for<'a>(events: &'a [AuditEvent], client_id: &str) -> &'a AuditEvent {
    let tag = format!("[client_request_id={client_id}]");
    let found: Vec<_> = events.iter().filter(|e| e.record.detail.ends_with(&tag)).collect();
    assert_eq!(found.len(), 1, "one record for {client_id}: {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_disclosed_once_per_caller_serial_and_peer_and_repeats_are_recorded_as_repeats() {
    let mut ts = TestServer::start().await;
    ts.vault().add_tenant(&new_tenant("a-acme"), &key(0), &UnauditedFixture).unwrap();
    let mut tokens = ts.token_client("token-caller").await;
    let first = tokens.get_access_token(ask("a-acme", "first")).await.unwrap().into_inner();
    let again = tokens.get_access_token(ask("a-acme", "again")).await.unwrap().into_inner();
    // A new connection of the same caller: same identity, serial and peer IP.
    let mut reconnected = ts.token_client("token-caller").await;
    let third = reconnected.get_access_token(ask("a-acme", "reconnected")).await.unwrap().into_inner();
    // Another caller holds nothing yet: its first is a disclosure.
    let mut other = ts.token_client("a-only").await;
    let others = other.get_access_token(ask("a-acme", "other-first")).await.unwrap().into_inner();
    let others_again = other.get_access_token(ask("a-acme", "other-again")).await.unwrap().into_inner();
    for t in [&again, &third, &others, &others_again] {
        assert_eq!(t.access_token, first.access_token, "one token, cached");
    }
    let metrics = ts.server().state.metrics_text().await;
    assert!(metrics.contains("pogo_vault_token_disclosures_total{kind=\"first\"} 2"), "{metrics}");
    assert!(metrics.contains("pogo_vault_token_disclosures_total{kind=\"repeat\"} 3"), "{metrics}");
    assert!(metrics.contains("pogo_vault_disclosed_pairs 2"), "{metrics}");
    // Repeats are durable within the next commit; a graceful stop commits everything.
    ts.stop().await;
    let minted = events(&ts, Action::TokenMinted);
    assert_eq!(minted.len(), 5, "{minted:?}");
    let fp = minted[0].record.token_fingerprint.clone();
    for (id, repeat, who) in [
        ("first", false, "token-caller"),
        ("again", true, "token-caller"),
        ("reconnected", true, "token-caller"),
        ("other-first", false, "a-only"),
        ("other-again", true, "a-only"),
    ] {
        let r = &record_for(&minted, id).record;
        assert_eq!(r.detail.contains("; repeat"), repeat, "{id}: {:?}", r.detail);
        assert!(r.caller.ends_with(who) && r.peer.starts_with("127.0.0.1:"), "{id}: {r:?}");
        assert_eq!(r.token_fingerprint, fp, "{id}: every record names the token handed out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_answered_as_the_log_locks_is_committed_once_it_is_free_and_later_repeats_fail_closed() {
    let mut ts = TestServer::start().await;
    ts.vault().add_tenant(&new_tenant("a-acme"), &key(0), &UnauditedFixture).unwrap();
    let mut tokens = ts.token_client("token-caller").await;
    tokens.get_access_token(ask("a-acme", "first")).await.unwrap();

    let blocker = rusqlite::Connection::open(ts.audit_db()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // Nothing is waiting at the writer yet, so the log looks healthy: this repeat is answered
    // and its record waits in the queue.
    tokens.get_access_token(ask("a-acme", "in-the-gap")).await.unwrap();
    // Once the writer has held a batch longer than its lock wait (250 ms), or has failed it,
    // repeats are refused: the gap is bounded.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let s = tokens.get_access_token(ask("a-acme", "during")).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    assert!(s.message().contains("audit"), "{}", s.message());
    assert!(started.elapsed() < Duration::from_millis(200), "refused at once: {:?}", started.elapsed());

    // The lock goes within the append bound (2 s): the repeat answered in the gap is
    // carried from the failed batch to the next one and committed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let mut back = false;
    for _ in 0..100 {
        if tokens.get_access_token(ask("a-acme", "after")).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "serving resumes by itself");
    ts.stop().await;
    let minted = events(&ts, Action::TokenMinted);
    let gap = record_for(&minted, "in-the-gap");
    assert!(gap.record.detail.contains("; repeat"), "{:?}", gap.record);
    assert!(!minted.iter().any(|e| e.record.detail.contains("client_request_id=during")), "refused: no token_minted");
}

/// The count in a `token_throttled` record's detail.
fn refused_in(e: &AuditEvent) -> u64 {
    e.record.detail.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_budget_is_refused_with_retry_info_and_recorded_once_a_second() {
    let mut ts = TestServer::start_with(|o| {
        o.caller_requests_per_second = 5.0;
        // a-only's grant (the last in the file) raises its own budget.
        let policy = common::fixture::policy_text("requests_per_second = 1000\n");
        std::fs::write(&o.policy, policy).unwrap();
    })
    .await;
    ts.vault().add_tenant(&new_tenant("a-acme"), &key(0), &UnauditedFixture).unwrap();
    let mut tokens = ts.token_client("token-caller").await;
    let mut generous = ts.token_client("a-only").await;
    let (mut ok, mut refused) = (0u64, 0u64);
    let started = Instant::now();
    for i in 0..60 {
        match tokens.get_access_token(ask("a-acme", &format!("r{i}"))).await {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                assert!(s.message().contains("budget"), "{}", s.message());
                let delay = s.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
                assert!(delay > Duration::ZERO && delay <= Duration::from_millis(200), "{delay:?}");
                refused += 1;
            }
        }
        // The other caller's own budget is untouched.
        generous.get_access_token(ask("a-acme", &format!("g{i}"))).await.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    let most = 5 + (5.0 * took).ceil() as u64;
    assert!((5..=most).contains(&ok), "a burst of 5 plus what 5/s refills in {took:.2} s: {ok}");
    assert_eq!(ok + refused, 60);

    // Refusals are recorded by window, not by request: within about a second, one record.
    let mut throttled = Vec::new();
    for _ in 0..60 {
        throttled = events(&ts, Action::TokenThrottled);
        if throttled.iter().map(refused_in).sum::<u64>() == refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(throttled.iter().map(refused_in).sum::<u64>(), refused, "{throttled:?}");
    let windows = took.ceil() as usize + 1;
    assert!(throttled.len() <= windows, "one record per caller per second, not per request: {}", throttled.len());
    let r = &throttled[0].record;
    assert!(r.caller.ends_with("service/token-caller") && !r.caller_serial.is_empty(), "{r:?}");
    assert!(r.detail.contains("budget of 5 a second") && r.detail.contains("from request"), "{:?}", r.detail);
    let minted = events(&ts, Action::TokenMinted);
    let mine = minted.iter().filter(|e| e.record.caller.ends_with("service/token-caller")).count() as u64;
    assert_eq!(mine, ok, "a record for every token handed out, none for refusals");

    // A caller refused at the gate (no token grant at all) spends the same budget: beyond
    // it, its refusals are counted, not recorded one by one.
    let mut stranger = ts.token_client("stranger").await;
    let (mut denied, mut over) = (0u64, 0u64);
    for i in 0..40 {
        match stranger.get_access_token(ask("a-acme", &format!("s{i}"))).await.unwrap_err().code() {
            Code::PermissionDenied => denied += 1,
            Code::ResourceExhausted => over += 1,
            c => panic!("{c:?}"),
        }
    }
    assert!(denied >= 5 && over > 0 && denied + over == 40, "{denied} denied, {over} over budget");
    let gate_rows =
        events(&ts, Action::TokenDenied).iter().filter(|e| e.record.caller.ends_with("service/stranger")).count()
            as u64;
    assert_eq!(gate_rows, denied, "one record per denial within the budget, none beyond it");

    // Refusals still open at a stop are recorded before the server's last record.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut late = 0;
    for i in 0..20 {
        if tokens.get_access_token(ask("a-acme", &format!("late{i}"))).await.is_err() {
            late += 1;
        }
    }
    assert!(late > 0);
    ts.stop().await;
    let all = events(&ts, Action::TokenThrottled);
    let of = |who: &str| all.iter().filter(|e| e.record.caller.ends_with(who)).map(refused_in).sum::<u64>();
    assert_eq!(of("service/token-caller"), refused + late, "{all:?}");
    assert_eq!(of("service/stranger"), over, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_whose_record_cannot_be_written_within_the_bound_is_counted_as_lost() {
    let mut ts = TestServer::start().await;
    ts.vault().add_tenant(&new_tenant("a-acme"), &key(0), &UnauditedFixture).unwrap();
    let mut tokens = ts.token_client("token-caller").await;
    tokens.get_access_token(ask("a-acme", "first")).await.unwrap();

    let blocker = rusqlite::Connection::open(ts.audit_db()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    tokens.get_access_token(ask("a-acme", "in-the-gap")).await.unwrap();
    // Locked past the append bound (2 s): the answered repeat's record is dropped, and
    // counted, rather than kept forever.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let mut lost = String::new();
    for _ in 0..100 {
        let m = ts.server().state.metrics_text().await;
        lost = m.lines().find(|l| l.starts_with("pogo_vault_audit_unawaited_lost_total ")).unwrap().to_owned();
        if lost.ends_with(" 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lost, "pogo_vault_audit_unawaited_lost_total 1");
    ts.stop().await;
    let minted = events(&ts, Action::TokenMinted);
    assert!(
        minted.iter().any(|e| e.record.detail.ends_with("[client_request_id=first]")),
        "the disclosure is on record"
    );
    assert!(!minted.iter().any(|e| e.record.detail.contains("client_request_id=in-the-gap")));
}
