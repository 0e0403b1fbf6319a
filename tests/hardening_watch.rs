//! Issue 13, "WatchAuditEvents": a live stream is bounded per caller and in total
//! (`RESOURCE_EXHAUSTED`), and a reload that revokes the caller's certificate or withdraws
//! its grant ends the stream (`UNAUTHENTICATED` / `PERMISSION_DENIED`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::fixture::{grant, policy_text};
use common::server::TestServer;
use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::audit_service_client::AuditServiceClient;
use tonic::Code;

async fn watch(
    c: &mut AuditServiceClient<tonic::transport::Channel>,
) -> Result<tonic::Streaming<pb::AuditEvent>, tonic::Status> {
    c.watch_audit_events(pb::WatchAuditEventsRequest { from_sequence: 1 }).await.map(tonic::Response::into_inner)
}

/// Reads a stream until it ends with an error or `limit` passes; returns the error.
async fn end_of(s: &mut tonic::Streaming<pb::AuditEvent>, limit: Duration) -> Option<tonic::Status> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.message()).await {
            Err(_) => return None,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => return Some(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_per_caller_and_in_total() {
    let mut ts = TestServer::start_with(|o| {
        o.audit.max_watch_streams_per_caller = 2;
        o.audit.max_watch_streams = 3;
    })
    .await;
    let grant = grant("service/stranger", &["audit"], &[]);
    std::fs::write(&ts.policy, policy_text(&grant)).unwrap();
    ts.server().reload().await;
    let mut auditor = ts.audit_client("auditor").await;
    let mut other = ts.audit_client("stranger").await;
    let a1 = watch(&mut auditor).await.unwrap();
    let _a2 = watch(&mut auditor).await.unwrap();
    let s = watch(&mut auditor).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
    assert!(s.message().contains("max_watch_streams_per_caller"), "{}", s.message());
    let _o1 = watch(&mut other).await.unwrap();
    let s = watch(&mut other).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "the total bound: {}", s.message());
    // A closed stream frees its slot at once.
    drop(a1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match watch(&mut auditor).await {
            Ok(_) => break,
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted),
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_withdraws_the_grant_or_revokes_the_certificate_ends_the_stream() {
    let mut ts = TestServer::start_with_crl().await;
    let grant = grant("service/stranger", &["audit"], &[]);
    std::fs::write(&ts.policy, policy_text(&grant)).unwrap();
    ts.server().reload().await;

    // The grant is withdrawn: the stranger's stream ends PERMISSION_DENIED; the auditor's goes on.
    let mut stranger_stream = watch(&mut ts.audit_client("stranger").await).await.unwrap();
    let mut auditor_stream = watch(&mut ts.audit_client("auditor").await).await.unwrap();
    std::fs::write(&ts.policy, policy_text("")).unwrap();
    ts.server().reload().await;
    let e = end_of(&mut stranger_stream, Duration::from_secs(5)).await.expect("the stream ended");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(end_of(&mut auditor_stream, Duration::from_millis(300)).await.is_none(), "others go on");

    // The auditor's certificate is revoked: its stream ends UNAUTHENTICATED.
    ts.revoke("auditor");
    ts.server().reload().await;
    let e = end_of(&mut auditor_stream, Duration::from_secs(5)).await.expect("the stream ended");
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());

    // Both endings are in the audit log.
    let conn = common::rusqlite_open(&ts.audit_db());
    let n: i64 = conn
        .query_row("SELECT count(*) FROM events WHERE action = 'audit_read' AND outcome = 'denied' AND detail LIKE 'watch ended after a reload%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    ts.stop().await;
}
