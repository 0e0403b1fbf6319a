//! The audit log through the public surface: every RPC writes its record (denials too),
//! fail-closed when the audit database cannot be written, `kill -9` under load loses no
//! record of a token handed out, and `pogo-vault audit verify` catches tampering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::fixture::{key, sim_key};
use common::new_tenant;
use common::server::TestServer;
use pogo_vault::audit::{AuditFilter, Outcome};
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::UnauditedFixture;
use prost::Message;
use tonic::Code;

fn with_id<T>(msg: T, id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-request-id", id.parse().unwrap());
    r
}

fn events(ts: &TestServer) -> Vec<pogo_vault::audit::AuditEvent> {
    let conn = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    pogo_vault::audit::list(&conn, &AuditFilter::default(), None, 100_000).unwrap()
}

/// The events grouped by the id the test sent as `x-request-id`: the server keys its
/// records on an id of its own and names the caller's as `client_request_id` in the detail.
fn by_request(ts: &TestServer) -> HashMap<String, Vec<pogo_vault::audit::AuditEvent>> {
    let mut m: HashMap<String, Vec<_>> = HashMap::new();
    for e in events(ts) {
        let client = e.record.detail.rsplit_once("[client_request_id=").and_then(|(_, rest)| rest.strip_suffix(']'));
        if let Some(id) = client {
            m.entry(id.to_owned()).or_default().push(e);
        }
    }
    m
}

fn described_methods() -> BTreeSet<String> {
    let fds = prost_types::FileDescriptorSet::decode(pogo_vault::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = BTreeSet::new();
    for f in fds.file.iter().filter(|f| f.package() == "pogo_vault.v1") {
        for s in &f.service {
            for m in &s.method {
                out.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_method_writes_its_record_including_denials() {
    let mut ts = TestServer::start().await;
    // The audit action of every method, written out here rather than read from the server's
    // table: the test states what the records must say.
    use pogo_vault::audit::Action as A;
    const EXPECTED_ACTION: &[(&str, A)] = &[
        ("GetAccessToken", A::TokenDenied),
        ("RegisterClientKey", A::KeyRegistered),
        ("RotateClientKey", A::KeyRotated),
        ("GetTenant", A::TenantRead),
        ("ListTenants", A::TenantRead),
        ("DeleteTenant", A::TenantDeleted),
        ("DisableTenant", A::TenantDisabled),
        ("EnableTenant", A::TenantEnabled),
        ("BeginOnboarding", A::OnboardingBegun),
        ("CompleteOnboarding", A::OnboardingFailed),
        ("ListAuditEvents", A::AuditRead),
        ("WatchAuditEvents", A::AuditRead),
        ("GetCheckpoint", A::AuditRead),
        ("VerifyAuditLog", A::AuditVerified),
        ("GetPublicKey", A::AuditRead),
        ("GetStatus", A::AuditRead),
        ("RotateKek", A::KekRotated),
        ("SetIntegration", A::IntegrationSet),
        ("ListIntegrations", A::IntegrationRead),
        ("UseSubscriptionKey", A::SubscriptionKeySwitched),
    ];
    let mut expected: Vec<(String, &str, Outcome)> = Vec::new(); // (request id, method, outcome)

    // 1. Every described method, called by a caller without the role: a denied record.
    let ch = ts.channel("stranger").await;
    for (i, path) in described_methods().iter().enumerate() {
        let id = format!("deny-{i}");
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let r: Result<tonic::Response<()>, tonic::Status> =
            grpc.unary(with_id((), &id), path.parse().unwrap(), tonic_prost::ProstCodec::<(), ()>::default()).await;
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
        let method: &'static str = Box::leak(path.clone().into_boxed_str());
        expected.push((id, method, Outcome::Denied));
    }

    // 2. Every method succeeding, for the callers holding its role.
    let mut admin = ts.tenant_client("admin").await;
    let mut tokens = ts.token_client("token-caller").await;
    let mut auditor = ts.audit_client("auditor").await;
    let reg = |t: &str, i: usize| pb::RegisterClientKeyRequest {
        tenant_id: t.into(),
        environment: "demo".into(),
        client_key: sim_key(i),
        ..Default::default()
    };
    admin.register_client_key(with_id(reg("acme", 0), "ok-register")).await.unwrap();
    admin.register_client_key(with_id(reg("doomed", 1), "ok-register-2")).await.unwrap();
    let rot = pb::RotateClientKeyRequest { tenant_id: "acme".into(), client_key: sim_key(2) };
    admin.rotate_client_key(with_id(rot, "ok-rotate")).await.unwrap();
    admin.get_tenant(with_id(pb::GetTenantRequest { tenant_id: "acme".into() }, "ok-get")).await.unwrap();
    admin.list_tenants(with_id(pb::ListTenantsRequest::default(), "ok-list")).await.unwrap();
    admin.disable_tenant(with_id(pb::DisableTenantRequest { tenant_id: "doomed".into() }, "ok-disable")).await.unwrap();
    admin.enable_tenant(with_id(pb::EnableTenantRequest { tenant_id: "doomed".into() }, "ok-enable")).await.unwrap();
    admin.delete_tenant(with_id(pb::DeleteTenantRequest { tenant_id: "doomed".into() }, "ok-delete")).await.unwrap();
    let tok = tokens
        .get_access_token(with_id(
            pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 },
            "ok-token",
        ))
        .await
        .unwrap()
        .into_inner();
    tokens
        .get_access_token(with_id(
            pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: 0 },
            "ok-token-cached",
        ))
        .await
        .unwrap();
    let s = tokens
        .get_access_token(with_id(
            pb::GetAccessTokenRequest { tenant_id: "doomed".into(), min_validity_seconds: 0 },
            "fail-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    auditor.list_audit_events(with_id(pb::ListAuditEventsRequest::default(), "ok-audit-list")).await.unwrap();
    let mut stream = auditor
        .watch_audit_events(with_id(pb::WatchAuditEventsRequest { from_sequence: 1 }, "ok-audit-watch"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.sequence, 1);
    assert_eq!(first.action, "server_started");
    let cp =
        auditor.get_checkpoint(with_id(pb::GetCheckpointRequest {}, "ok-audit-checkpoint")).await.unwrap().into_inner();
    let v = auditor
        .verify_audit_log(with_id(
            pb::VerifyAuditLogRequest { checkpoint: Some(cp), ..Default::default() },
            "ok-audit-verify",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{}", v.detail);
    auditor.get_public_key(with_id(pb::GetPublicKeyRequest {}, "ok-audit-key")).await.unwrap();
    for (id, m) in [
        ("ok-register", "RegisterClientKey"),
        ("ok-rotate", "RotateClientKey"),
        ("ok-get", "GetTenant"),
        ("ok-list", "ListTenants"),
        ("ok-disable", "DisableTenant"),
        ("ok-enable", "EnableTenant"),
        ("ok-delete", "DeleteTenant"),
        ("ok-audit-list", "ListAuditEvents"),
        ("ok-audit-watch", "WatchAuditEvents"),
        ("ok-audit-checkpoint", "GetCheckpoint"),
        ("ok-audit-verify", "VerifyAuditLog"),
        ("ok-audit-key", "GetPublicKey"),
    ] {
        expected.push((id.into(), m, Outcome::Ok));
    }

    let got = by_request(&ts);
    let mut covered = BTreeSet::new();
    for (id, method, outcome) in &expected {
        let recs = got.get(id).unwrap_or_else(|| panic!("no audit record for {method} (request {id})"));
        assert_eq!(recs.len(), 1, "{method}: {recs:?}");
        let r = &recs[0].record;
        let name = method.rsplit('/').next().unwrap();
        let action = EXPECTED_ACTION
            .iter()
            .find(|(m, _)| *m == name)
            .unwrap_or_else(|| panic!("{name}: add its audit action to EXPECTED_ACTION"))
            .1;
        assert_eq!((r.action, r.outcome), (action, *outcome), "{method}");
        assert!(!r.caller.is_empty() && !r.caller_serial.is_empty() && r.peer.starts_with("127.0.0.1:"), "{r:?}");
        covered.insert(method.rsplit('/').next().unwrap().to_owned());
    }
    // The method list itself: every described method was exercised with a record.
    let all: BTreeSet<String> = described_methods().iter().map(|p| p.rsplit('/').next().unwrap().to_owned()).collect();
    assert!(all.iter().all(|m| covered.contains(m) || m == "GetAccessToken"), "{all:?} vs {covered:?}");

    // Token records: fingerprint of the token handed out, key version, upstream status.
    let minted = &got["ok-token"][0].record;
    assert_eq!(minted.action, pogo_vault::audit::Action::TokenMinted);
    assert_eq!(minted.upstream_status, Some(200));
    assert_eq!(minted.key_version, Some(2));
    let vault = ts.vault();
    let fp = vault.fingerprint_key().fingerprint(pogo_vault::tokens::FP_ACCESS_TOKEN, tok.access_token.as_bytes());
    assert_eq!(minted.token_fingerprint.as_deref(), Some(fp.to_string().as_str()));
    let cached = &got["ok-token-cached"][0].record;
    assert_eq!(
        (cached.upstream_status, cached.detail.as_str()),
        (None, "from cache; Go ClientId 7002; repeat [client_request_id=ok-token-cached]")
    );
    // The caller's id is kept for correlation only: every record is keyed on an id of the
    // server's own, 32 hex digits, never on what the caller sent.
    for recs in got.values() {
        for e in recs {
            let id = &e.record.request_id;
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
    }
    let failed = &got["fail-token"][0].record;
    assert_eq!((failed.action, failed.outcome), (pogo_vault::audit::Action::TokenDenied, Outcome::Denied));

    // No secret in any audit record.
    let all_text = format!("{:?}", events(&ts));
    for i in 0..3 {
        common::assert_no_leak("audit records", all_text.as_bytes(), &sim_key(i));
    }
    common::assert_no_leak("audit records", all_text.as_bytes(), &tok.access_token);
    ts.stop().await;
    let last = events(&ts).pop().unwrap();
    assert_eq!(last.record.action, pogo_vault::audit::Action::ServerStopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_fail_closed_while_the_audit_log_cannot_be_written() {
    let mut ts = TestServer::start().await;
    ts.vault().add_tenant(&new_tenant("a-acme"), &key(0), &UnauditedFixture).unwrap();
    let mut tokens = ts.token_client("token-caller").await;
    let ask = || pb::GetAccessTokenRequest { tenant_id: "a-acme".into(), min_validity_seconds: 0 };
    tokens.get_access_token(ask()).await.unwrap();

    // Another process-like holder of the write lock: the audit database cannot be written.
    let blocker = rusqlite::Connection::open(ts.audit_db()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // The same token to another caller is a first disclosure: it waits for its record,
    // which cannot be written.
    let mut other = ts.token_client("a-only").await;
    let started = Instant::now();
    let s = other.get_access_token(ask()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    assert!(s.message().contains("audit"), "{}", s.message());
    assert!(started.elapsed() < Duration::from_secs(10), "bounded, not a hang: {:?}", started.elapsed());
    // A repeat (token-caller holds that token already) is not awaited, but fails closed too
    // while the log cannot be written: at once.
    let started = Instant::now();
    let s = tokens.get_access_token(ask()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    assert!(s.message().contains("audit"), "{}", s.message());
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once: {:?}", started.elapsed());

    let mut health = tonic_health::pb::health_client::HealthClient::new(ts.channel("token-caller").await);
    let mut not_serving = false;
    for _ in 0..100 {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        if r.status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(not_serving, "health turns NOT_SERVING while the audit log cannot be written");

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let mut ok = false;
    for _ in 0..100 {
        if tokens.get_access_token(ask()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "serving resumes by itself");
    ts.stop().await;
    let key = ts.vault().vault_key(pogo_vault::crypto::Purpose::AuditSigningKey).unwrap().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.public_key.unwrap().try_into().unwrap()).unwrap();
    let report = pogo_vault::audit::verify(&ts.audit_db(), &vk, None).unwrap();
    assert!(report.ok, "{}", report.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_over_grpc_from_a_public_key_the_auditor_holds() {
    let mut ts = TestServer::start().await;
    let mut auditor = ts.audit_client("auditor").await;
    let own = auditor.get_public_key(pb::GetPublicKeyRequest {}).await.unwrap().into_inner().public_key;
    let verify = |root: String| pb::VerifyAuditLogRequest { root_public_key: root, ..Default::default() };
    // From the server's own key (which the auditor holds): verifies.
    let r = auditor.verify_audit_log(verify(own)).await.unwrap().into_inner();
    assert!(r.ok, "{}", r.detail);
    assert!(!r.detail.contains("key chain this file names"), "{}", r.detail);
    // From another key: the log's chain does not start there.
    let other = pogo_vault::audit::encode_public_key(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key());
    let r = auditor.verify_audit_log(verify(other)).await.unwrap().into_inner();
    assert!(!r.ok, "a log is not accepted from a key that never signed it: {}", r.detail);
    // Without one, it says what the root was taken from.
    let r = auditor.verify_audit_log(verify(String::new())).await.unwrap().into_inner();
    assert!(r.ok && r.detail.contains("key chain this file names"), "{}", r.detail);
    // Malformed: the field is named.
    let s = auditor.verify_audit_log(verify("ed25519:nope".into())).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("root_public_key"), "{}", s.message());
    ts.stop().await;
}
