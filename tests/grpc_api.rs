//! The public surface as callers see it: gRPC over real mutual TLS on 127.0.0.1, the real
//! server, a real SQLite vault, and the simulator as PowerOffice Go.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::fixture::{grant, key, policy_text, register_request as register, sim_key, token_request as get};
use common::new_tenant;
use common::server::TestServer;
use pogo_vault::authz::{Requirement, methods};
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::UnauditedFixture;
use prost::Message;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_mint_over_mtls_and_nothing_secret_in_any_response() {
    let mut ts = TestServer::start().await;
    let mut admin = ts.tenant_client("admin").await;
    let mut caller = ts.token_client("token-caller").await;

    // Good key: validated against Go, client name filled in, token mintable at once.
    let t = ts.seen(admin.register_client_key(register("acme", 0)).await).unwrap();
    assert_eq!(t.tenant_id, "acme");
    assert_eq!(t.display_name, "Kunde 0 AS", "client name from ClientIntegrationInformation");
    assert_eq!(t.go_client_id, "7000");
    assert_eq!(t.status, pb::TenantStatus::Active as i32);
    assert_eq!(t.client_key_hint, format!("…{}", &sim_key(0)[32..]));
    let tok = ts.seen(caller.get_access_token(get("acme")).await).unwrap();
    assert_eq!(tok.token_type, "Bearer");
    assert_eq!(tok.environment, "demo");
    assert!(tok.api_base_url.ends_with("/Demo/v2"), "{}", tok.api_base_url);
    assert!(tok.subscription_key.is_empty(), "withheld by configuration");
    let left = tok.expires_at.unwrap().seconds
        - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((1100..=1200).contains(&left), "expires in {left} s");

    // Malformed key: INVALID_ARGUMENT naming the field; nothing stored.
    let mut bad = register("beta", 1);
    bad.client_key = "not-a-key".into();
    let s = ts.seen(admin.register_client_key(bad).await).unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("client_key"), "{}", s.message());

    // A key Go does not know: FAILED_PRECONDITION with advice, nothing stored.
    let mut unknown = register("beta", 1);
    unknown.client_key = "0badc0de-0000-4000-8000-000000000000".into();
    let s = ts.seen(admin.register_client_key(unknown).await).unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(s.message().contains("does not accept this client key"), "{}", s.message());
    let s = ts.seen(admin.get_tenant(pb::GetTenantRequest { tenant_id: "beta".into() }).await).unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    assert!(ts.vault().tenant(&"beta".parse().unwrap()).unwrap().is_none());

    // Duplicate: ALREADY_EXISTS.
    let s = ts.seen(admin.register_client_key(register("acme", 0)).await).unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists);

    // skip_validation stores without asking Go.
    let before = ts.sim.token_requests();
    let mut skip = register("gamma", 2);
    skip.skip_validation = true;
    skip.labels.insert("team".into(), "ap".into());
    let g = ts.seen(admin.register_client_key(skip).await).unwrap();
    assert_eq!(ts.sim.token_requests(), before);
    assert_eq!(g.labels.get("team").map(String::as_str), Some("ap"));

    // Rotate, list with filter and pages, disable, enable, delete.
    let r = ts
        .seen(
            admin
                .rotate_client_key(pb::RotateClientKeyRequest { tenant_id: "gamma".into(), client_key: sim_key(3) })
                .await,
        )
        .unwrap();
    assert_eq!(r.key_version, 2);
    for i in 0..5 {
        let mut req = register(&format!("page-{i}"), 4);
        req.skip_validation = true;
        ts.seen(admin.register_client_key(req).await).unwrap();
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = ts
            .seen(
                admin
                    .list_tenants(pb::ListTenantsRequest {
                        page_size: 2,
                        page_token: token.clone(),
                        filter: "prefix=page-".into(),
                    })
                    .await,
            )
            .unwrap();
        assert!(page.tenants.len() <= 2);
        ids.extend(page.tenants.iter().map(|t| t.tenant_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
    let s = ts
        .seen(admin.list_tenants(pb::ListTenantsRequest { filter: "colour=red".into(), ..Default::default() }).await)
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("filter"));
    let labelled = ts
        .seen(admin.list_tenants(pb::ListTenantsRequest { filter: "label.team=ap".into(), ..Default::default() }).await)
        .unwrap();
    assert_eq!(labelled.tenants.len(), 1);

    let d = ts.seen(admin.disable_tenant(pb::DisableTenantRequest { tenant_id: "acme".into() }).await).unwrap();
    assert_eq!(d.status, pb::TenantStatus::Disabled as i32);
    let s = ts.seen(caller.get_access_token(get("acme")).await).unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "a disabled tenant gets no token, even from the cache");
    ts.seen(admin.enable_tenant(pb::EnableTenantRequest { tenant_id: "acme".into() }).await).unwrap();
    ts.seen(caller.get_access_token(get("acme")).await).unwrap();
    ts.seen(admin.delete_tenant(pb::DeleteTenantRequest { tenant_id: "gamma".into() }).await).unwrap();
    let s = ts.seen(caller.get_access_token(get("gamma")).await).unwrap_err();
    assert_eq!(s.code(), Code::NotFound);

    // The scan: no client key, no subscription key in any response or status.
    let seen = ts.seen.lock().unwrap().clone();
    assert!(seen.len() > 500, "responses were collected");
    let mut secrets: Vec<String> = (0..8).map(sim_key).collect();
    secrets.push("0badc0de-0000-4000-8000-000000000000".into());
    secrets.push(pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY.into());
    for s in &secrets {
        common::assert_no_leak("gRPC responses", &seen, s);
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_key_is_returned_only_in_its_field_when_configured() {
    let mut ts = TestServer::start_with(|o| o.return_subscription_key = true).await;
    ts.vault().add_tenant(&new_tenant("acme"), &key(0), &UnauditedFixture).unwrap();
    let mut resp = ts.token_client("token-caller").await.get_access_token(get("acme")).await.unwrap().into_inner();
    assert_eq!(resp.subscription_key, pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY);
    resp.subscription_key.clear();
    common::assert_no_leak(
        "the rest of the response",
        &resp.encode_to_vec(),
        pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY,
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_authorization_refusals() {
    let mut ts = TestServer::start().await;
    let vault = ts.vault();
    vault.add_tenant(&new_tenant("a-1"), &key(0), &UnauditedFixture).unwrap();
    vault.add_tenant(&new_tenant("b-1"), &key(1), &UnauditedFixture).unwrap();
    drop(vault);

    // No client certificate: the handshake fails, no RPC happens.
    let ca = std::fs::read_to_string(&ts.pki.ca_cert).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let ep = tonic::transport::Endpoint::from_shared(ts.endpoint.clone()).unwrap().tls_config(tls).unwrap();
    let outcome = match ep.connect().await {
        Err(_) => None,
        Ok(ch) => Some(pb::token_service_client::TokenServiceClient::new(ch).get_access_token(get("a-1")).await),
    };
    assert!(matches!(outcome, None | Some(Err(_))), "no client certificate must not get an answer");
    if let Some(Err(s)) = outcome {
        assert_ne!(s.code(), Code::Ok);
        assert_ne!(s.code(), Code::PermissionDenied, "refused at the handshake, not by the policy");
    }

    // A certificate from another CA: refused at the handshake.
    let foreign = pogo_vault::client::connect(&ts.endpoint, &ts.files("foreign"), Some("localhost")).await;
    let refused = match foreign {
        Err(_) => true,
        Ok(ch) => pb::tenant_service_client::TenantServiceClient::new(ch)
            .get_tenant(pb::GetTenantRequest { tenant_id: "a-1".into() })
            .await
            .is_err_and(|s| s.code() != Code::PermissionDenied),
    };
    assert!(refused, "a certificate from another CA must fail the handshake");

    // An identity the policy does not know: PERMISSION_DENIED.
    let s = ts.token_client("stranger").await.get_access_token(get("a-1")).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);

    // Allowed on a-* only: b-1 (exists) and b-2 (does not) are refused identically.
    let mut a_only = ts.token_client("a-only").await;
    a_only.get_access_token(get("a-1")).await.unwrap();
    let exists = a_only.get_access_token(get("b-1")).await.unwrap_err();
    let missing = a_only.get_access_token(get("b-2")).await.unwrap_err();
    assert_eq!(exists.code(), Code::PermissionDenied);
    assert_eq!((exists.code(), exists.message()), (missing.code(), missing.message()));
    let mut a_admin = ts.tenant_client("a-only").await;
    let exists = a_admin.get_tenant(pb::GetTenantRequest { tenant_id: "b-1".into() }).await.unwrap_err();
    let missing = a_admin.get_tenant(pb::GetTenantRequest { tenant_id: "b-2".into() }).await.unwrap_err();
    assert_eq!((exists.code(), exists.message()), (missing.code(), missing.message()));
    assert_eq!(
        a_admin.get_tenant(pb::GetTenantRequest { tenant_id: "a-2".into() }).await.unwrap_err().code(),
        Code::NotFound
    );
    let listed = a_admin.list_tenants(pb::ListTenantsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.tenants.iter().map(|t| t.tenant_id.as_str()).collect::<Vec<_>>(), ["a-1"], "b-1 is hidden");

    // A bad tenant id: INVALID_ARGUMENT naming the field (for a caller holding the role).
    let s = ts.token_client("token-caller").await.get_access_token(get("Not Valid")).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("tenant_id"), "{}", s.message());

    // A DNS-SAN identity works as an identity too (here: not granted).
    let s = ts.token_client("dns-caller").await.get_access_token(get("a-1")).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    ts.stop().await;
}

/// Every method of every service in the descriptors is in the method→role map, and a
/// caller without the role gets PERMISSION_DENIED from each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_has_a_role_and_is_refused_without_it() {
    let fds = prost_types::FileDescriptorSet::decode(pogo_vault::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut described = BTreeSet::new();
    for file in &fds.file {
        if file.package() != "pogo_vault.v1" {
            continue;
        }
        for svc in &file.service {
            for m in &svc.method {
                described.insert(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
            }
        }
    }
    assert!(described.len() >= 12, "{described:?}");
    let mapped: BTreeSet<String> =
        methods::METHODS.iter().filter(|m| m.path.starts_with("/pogo_vault.")).map(|m| m.path.to_string()).collect();
    assert_eq!(described, mapped, "every described method is mapped, and nothing stale is");

    let mut ts = TestServer::start().await;
    for (who, holds) in [
        ("stranger", vec![]),
        ("token-caller", vec!["token"]),
        ("admin", vec!["tenant-admin"]),
        ("auditor", vec!["audit"]),
    ] {
        let ch = ts.channel(who).await;
        for path in &described {
            let Some(Requirement::Role(role)) = methods::requirement(path) else { panic!("{path} has no role") };
            if holds.contains(&role.as_str()) {
                continue;
            }
            let mut grpc = tonic::client::Grpc::new(ch.clone());
            grpc.ready().await.unwrap();
            let r: Result<tonic::Response<()>, tonic::Status> = grpc
                .unary(tonic::Request::new(()), path.parse().unwrap(), tonic_prost::ProstCodec::<(), ()>::default())
                .await;
            let s = r.unwrap_err();
            assert_eq!(s.code(), Code::PermissionDenied, "{who} calling {path}: {s:?}");
        }
    }
    // A path outside the map is refused too.
    let mut grpc = tonic::client::Grpc::new(ts.channel("admin").await);
    grpc.ready().await.unwrap();
    let r: Result<tonic::Response<()>, tonic::Status> = grpc
        .unary(
            tonic::Request::new(()),
            "/pogo_vault.v1.TenantService/Backdoor".parse().unwrap(),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_and_a_broken_policy_is_refused() {
    let mut ts = TestServer::start().await;
    ts.vault().add_tenant(&new_tenant("c-1"), &key(0), &UnauditedFixture).unwrap();
    let mut stranger = ts.token_client("stranger").await;
    assert_eq!(stranger.get_access_token(get("c-1")).await.unwrap_err().code(), Code::PermissionDenied);

    // Grant, then a real SIGHUP to this process; wait for the grant to take effect.
    let grant = grant("service/stranger", &["token"], &["c-*"]);
    std::fs::write(&ts.policy, policy_text(&grant)).unwrap();
    let pid = std::process::id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let mut granted = false;
    for _ in 0..250 {
        if stranger.get_access_token(get("c-1")).await.is_ok() {
            granted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(granted, "the caller gained access without a restart");

    // A broken policy is refused and the old one stays.
    std::fs::write(&ts.policy, "[[grant]]\ncaller = 7\n").unwrap();
    ts.server().reload().await;
    stranger.get_access_token(get("c-1")).await.expect("old policy still in force");

    // Revoke: the caller loses access.
    std::fs::write(&ts.policy, policy_text("")).unwrap();
    ts.server().reload().await;
    assert_eq!(stranger.get_access_token(get("c-1")).await.unwrap_err().code(), Code::PermissionDenied);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_with_a_client_certificate() {
    let mut ts = TestServer::start().await;
    let ch = ts.channel("token-caller").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "pogo_vault.v1.TokenService".into() })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // The plaintext health-only listener (for probes without a certificate) serves health
    // and nothing else.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", ts.server().health_addr.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = tonic_health::pb::health_client::HealthClient::new(plain.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let s = pb::token_service_client::TokenServiceClient::new(plain).get_access_token(get("acme")).await.unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented, "only health on the plaintext port");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_caller_is_refused_after_a_certificate_reload() {
    // Start with a CRL that revokes nothing.
    let mut ts = TestServer::start_with_crl().await;
    ts.vault().add_tenant(&new_tenant("a-1"), &key(0), &UnauditedFixture).unwrap();
    let mut open_channel = ts.token_client("a-only").await;
    open_channel.get_access_token(get("a-1")).await.unwrap();

    // Revoke the a-only caller's certificate by serial, reload (what SIGHUP does).
    ts.revoke("a-only");
    ts.server().reload().await;

    let refused = match pogo_vault::client::connect(&ts.endpoint, &ts.files("a-only"), Some("localhost")).await {
        Err(_) => true,
        Ok(ch) => pb::token_service_client::TokenServiceClient::new(ch).get_access_token(get("a-1")).await.is_err(),
    };
    assert!(refused, "a revoked certificate must not get a new connection");
    // Nor keep using the connection it opened before the revocation.
    let s = open_channel.get_access_token(get("a-1")).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
    assert!(s.message().contains("no longer accepted"), "{}", s.message());
    // Others are unaffected.
    ts.token_client("token-caller").await.get_access_token(get("a-1")).await.unwrap();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_and_stores_nothing() {
    let mut ts = TestServer::start().await;
    let mut admin = ts.tenant_client("admin").await;
    let mut big = register("huge", 0);
    big.display_name = "x".repeat(100 * 1024);
    let s = admin.register_client_key(big).await.unwrap_err();
    assert_ne!(s.code(), Code::Ok);
    assert!(ts.vault().tenant(&"huge".parse().unwrap()).unwrap().is_none());
    ts.stop().await;
}
