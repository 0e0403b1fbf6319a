//! The use cases without any transport: the tenant registry and onboarding driven directly,
//! with a real vault file, a real audit log, the broker and the simulator as Go over HTTP.
//! The actor is the one seam: here a named caller recording into the audit log (what the
//! gRPC server's and the CLI's actors do), or one whose log refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{broker, fixture};
use pogo_vault::audit::{Action, AuditFilter, AuditLog, AuditRecord, Outcome};
use pogo_vault::authz::{Authorizer, Policy};
use pogo_vault::crypto::ClientKey;
use pogo_vault::domain::{
    Environment, GoStatus, OnboardingId, RedirectUrl, Subject, TenantId, TenantIdPrefix, TenantStatus,
};
use pogo_vault::sim::{self, Sim, SimClient, SimConfig};
use pogo_vault::store::onboarding::SessionStatus;
use pogo_vault::tokens::{Broker, BrokerConfig, BrokerError, SystemClock};
use pogo_vault::upstream::OnboardingToken;
use pogo_vault::usecase::onboarding::{BeginRequest, CompleteRequest};
use pogo_vault::usecase::{Actor, Entry, Onboarding, OnboardingError, Registry, RegistryError};
use pogo_vault::vault::{NewTenant, NotRecorded, Vault, VaultError};

/// A caller recording into a real audit log, or refusing every record (`audit: None`).
struct LogActor {
    id: String,
    audit: Option<AuditLog>,
}

impl Actor for LogActor {
    fn identity(&self) -> &str {
        &self.id
    }

    fn record_durably(&self, entries: Vec<Entry>) -> Result<(), NotRecorded> {
        let Some(audit) = &self.audit else { return Err(NotRecorded("the test's log refuses".into())) };
        for e in entries {
            let rec = AuditRecord {
                caller: self.id.clone(),
                caller_serial: "01".into(),
                action: e.action,
                tenant_id: e.tenant.map(|t| t.to_string()),
                key_version: e.key_version,
                outcome: e.outcome,
                upstream_status: None,
                token_fingerprint: None,
                detail: e.detail,
                request_id: "usecase-test".into(),
                peer: "in-process".into(),
            };
            audit.append_wait(rec).map_err(|e| NotRecorded(e.to_string()))?;
        }
        Ok(())
    }
}

struct Fixture {
    sim: Sim,
    vault: Arc<Vault>,
    broker: Broker,
    audit: AuditLog,
    _dir: tempfile::TempDir,
}

const KEY_A: &str = "0000000a-0000-4000-8000-00000000000a";
const CALLBACK: &str = "https://app.example/onboarding/callback";
const KEY_B: &str = "0000000b-0000-4000-8000-00000000000b";

async fn fixture() -> Fixture {
    let cfg = SimConfig { redirect_uris: vec![(Environment::Demo, CALLBACK.into())], ..SimConfig::default() };
    let sim = sim::start(fixture::loopback(), cfg).await.unwrap();
    for (key, id) in [(KEY_A, "7001"), (KEY_B, "7002")] {
        let client =
            SimClient { client_id: id.into(), name: format!("Client {id}"), organization_number: "912345678".into() };
        sim.add_client(Environment::Demo, key, client);
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(fixture::init_vault(&dir.path().join("v.db"), &dir.path().join("k"), &sim));
    let audit = broker::audit_of(&vault);
    let broker = Broker::new(
        vault.clone(),
        broker::go(Duration::from_secs(5)),
        BrokerConfig::default(),
        Arc::new(SystemClock),
        audit.clone(),
    );
    Fixture { sim, vault, broker, audit, _dir: dir }
}

fn actor(f: &Fixture, id: &str) -> Arc<dyn Actor> {
    Arc::new(LogActor { id: id.into(), audit: Some(f.audit.clone()) })
}

async fn records(f: &Fixture) -> Vec<AuditRecord> {
    f.audit.list(AuditFilter::default(), None, 1000).await.unwrap().into_iter().map(|e| e.record).collect()
}

fn tid(s: &str) -> TenantId {
    s.parse().unwrap()
}

/// Register (checked with Go), rotate, disable, enable, delete: each change recorded for the
/// actor before it commits, and each dropping the broker's cached token.
#[tokio::test]
async fn the_registry_changes_tenants_and_keeps_the_broker_true_without_a_transport() {
    let f = fixture().await;
    let registry = Registry::new(f.vault.clone(), f.broker.clone());
    let admin = actor(&f, "spiffe://test/admin");
    let t = tid("acme");

    let rec = registry
        .register(&admin, NewTenant::new(t.clone(), Environment::Demo), ClientKey::parse(KEY_A).unwrap(), true)
        .await
        .unwrap();
    assert_eq!((rec.key_version, rec.go_client_id.as_deref()), (1, Some("7001")), "Go's ClientId learnt at validation");
    assert_eq!(rec.display_name.as_str(), "Client 7001", "an empty display name takes Go's client name");
    let again = registry.register(
        &admin,
        NewTenant::new(t.clone(), Environment::Demo),
        ClientKey::parse(KEY_A).unwrap(),
        false,
    );
    assert!(matches!(again.await, Err(RegistryError::AlreadyExists(_))));

    let first = f.broker.get_token(&t, None).await.unwrap();
    assert_eq!(first.token.key_version, 1);
    let rec = registry.rotate(&admin, &t, ClientKey::parse(KEY_B).unwrap()).await.unwrap();
    assert_eq!((rec.key_version, rec.go_client_id.as_deref()), (2, Some("7002")));
    assert_eq!(
        f.broker.get_token(&t, None).await.unwrap().token.key_version,
        2,
        "the rotation dropped the cached token"
    );

    registry.set_status(&admin, &t, TenantStatus::Disabled).await.unwrap();
    assert!(matches!(f.broker.get_token(&t, None).await, Err(BrokerError::Disabled(_))), "disabled at once");
    registry.set_status(&admin, &t, TenantStatus::Active).await.unwrap();
    registry.delete(&admin, &t).await.unwrap();
    assert!(matches!(registry.get(&t).await, Err(RegistryError::NotFound(_))));
    assert!(matches!(f.broker.get_token(&t, None).await, Err(BrokerError::NotFound(_))));

    let got: Vec<(Action, Option<i64>, String)> = records(&f)
        .await
        .into_iter()
        .filter(|r| r.caller == "spiffe://test/admin")
        .map(|r| (r.action, r.key_version, r.detail))
        .collect();
    assert_eq!(
        got,
        vec![
            (Action::KeyRegistered, Some(1), "registered; key validated against PowerOffice Go".into()),
            (Action::KeyRotated, Some(2), "key version 2 replaces 1 (destroyed); Go ClientId 7001 -> 7002".into()),
            (Action::TenantDisabled, Some(2), "DISABLED".into()),
            (Action::TenantEnabled, Some(2), "ACTIVE".into()),
            (Action::TenantDeleted, Some(2), "deleted; client key destroyed".into()),
        ]
    );
}

/// A change whose record the actor cannot make durable does not happen.
#[tokio::test]
async fn a_registry_change_the_actor_cannot_record_leaves_the_store_unchanged() {
    let f = fixture().await;
    let registry = Registry::new(f.vault.clone(), f.broker.clone());
    let refusing: Arc<dyn Actor> = Arc::new(LogActor { id: "spiffe://test/admin".into(), audit: None });
    let t = tid("acme");
    let e = registry
        .register(&refusing, NewTenant::new(t.clone(), Environment::Demo), ClientKey::parse(KEY_A).unwrap(), false)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Vault(VaultError::NotRecorded { .. })), "{e}");
    assert!(f.vault.tenant(&t).unwrap().is_none(), "nothing stored");

    let admin = actor(&f, "spiffe://test/admin");
    registry
        .register(&admin, NewTenant::new(t.clone(), Environment::Demo), ClientKey::parse(KEY_A).unwrap(), false)
        .await
        .unwrap();
    let e = registry.rotate(&refusing, &t, ClientKey::parse(KEY_B).unwrap()).await.unwrap_err();
    assert!(matches!(e, RegistryError::Vault(VaultError::NotRecorded { .. })), "{e}");
    assert_eq!(f.vault.tenant(&t).unwrap().unwrap().key_version, 1, "the old key stays in force");
}

fn policy(text: &str) -> Arc<Policy> {
    Arc::new(Policy::parse(text, "test policy").unwrap())
}

/// Onboarding's state machine: begun with Go (recorded), refused to another caller or
/// subject, closed by a refusal Go reported, and never completed twice.
#[tokio::test]
async fn onboarding_sessions_move_only_as_the_state_machine_allows() {
    let f = fixture().await;
    let onboarding = Onboarding::new(f.vault.clone(), f.broker.clone());
    let admin = actor(&f, "spiffe://test/admin");
    let granted =
        policy("[[grant]]\ncaller = \"spiffe://test/admin\"\nroles = [\"tenant-admin\"]\ntenants = [\"acme-*\"]\n");
    let begin = |prefix: &str| BeginRequest {
        environment: Environment::Demo,
        redirect: RedirectUrl::parse_field("redirect_url", CALLBACK).unwrap(),
        organization_number: None,
        prefix: TenantIdPrefix::parse_field("tenant_id_prefix", prefix).unwrap(),
        subject: Subject::parse_field("subject", "user-1").unwrap(),
    };
    let authz = Authorizer::from_policy((*granted).clone());
    let e = onboarding.begin(&admin, &granted, begin("other-")).await.unwrap_err();
    assert!(matches!(e, OnboardingError::PrefixNotGranted { .. }) && e.recorded(), "{e}");
    assert_eq!(e.outcome(), Outcome::Denied);

    let begun = onboarding.begin(&admin, &granted, begin("acme-")).await.unwrap();
    assert!(begun.authorization_url.starts_with("http://"), "Go's temporary URL");
    let session = f.vault.onboarding(begun.onboarding_id.as_str()).unwrap().unwrap();
    assert_eq!(session.status, SessionStatus::Pending);
    assert!(session.redirect_url.contains(&format!("pogo_onboarding_id={}", begun.onboarding_id)));
    assert!(records(&f).await.iter().any(|r| r.action == Action::OnboardingBegun && r.caller == "spiffe://test/admin"));

    let complete = |id: &OnboardingId, status: GoStatus, subject: &str| CompleteRequest {
        onboarding_id: id.clone(),
        go_status: status,
        token: OnboardingToken::parse(""),
        subject: subject.into(),
    };
    let id = &begun.onboarding_id;
    let other = actor(&f, "spiffe://test/other");
    assert!(matches!(
        onboarding.complete(&other, &authz, complete(id, GoStatus::Success, "user-1")).await,
        Err(OnboardingError::NotYours)
    ));
    assert!(matches!(
        onboarding.complete(&admin, &authz, complete(id, GoStatus::Success, "user-2")).await,
        Err(OnboardingError::OtherSubject)
    ));
    let e = onboarding.complete(&admin, &authz, complete(id, GoStatus::Success, "user-1")).await.unwrap_err();
    assert!(matches!(e, OnboardingError::BadToken(_)), "a malformed token is refused after the session's checks: {e}");
    assert_eq!(f.vault.onboarding(id.as_str()).unwrap().unwrap().status, SessionStatus::Pending, "still completable");

    let e = onboarding.complete(&admin, &authz, complete(id, GoStatus::Canceled, "user-1")).await.unwrap_err();
    assert_eq!(e.to_string(), format!("onboarding {id} ended with Canceled: the user cancelled in PowerOffice Go"));
    let s = f.vault.onboarding(id.as_str()).unwrap().unwrap();
    assert_eq!((s.status, s.go_status.as_deref()), (SessionStatus::Failed, Some("Canceled")));
    let e = onboarding.complete(&admin, &authz, complete(id, GoStatus::Success, "user-1")).await.unwrap_err();
    assert!(matches!(e, OnboardingError::AlreadyEnded { .. }), "{e}");

    let unknown = OnboardingId::parse_field("onboarding_id", "abc").unwrap();
    assert!(matches!(
        onboarding.complete(&admin, &authz, complete(&unknown, GoStatus::Success, "user-1")).await,
        Err(OnboardingError::NotFound(_))
    ));
    assert_eq!(f.sim.token_requests(), 0, "no client key was ever sent to Go");
}

/// An actor whose log refuses the first `refusals` attempts, then records.
struct FlakyActor {
    inner: LogActor,
    refusals: std::sync::atomic::AtomicUsize,
}

impl Actor for FlakyActor {
    fn identity(&self) -> &str {
        self.inner.identity()
    }

    fn record_durably(&self, entries: Vec<Entry>) -> Result<(), NotRecorded> {
        let left = self.refusals.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.refusals.store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(NotRecorded("the test's log refuses for now".into()));
        }
        self.inner.record_durably(entries)
    }
}

/// After Go's Finalize the keys live only in the request: a log that refuses once is
/// retried and the keys are stored; one that keeps refusing leaves nothing stored and the
/// session back at PENDING, recorded as an error (not the caller's fault).
#[tokio::test]
async fn keys_from_finalize_survive_one_refused_record_and_nothing_half_stored_when_refused_again() {
    let f = fixture().await;
    let onboarding = Onboarding::new(f.vault.clone(), f.broker.clone());
    let authz = Authorizer::from_policy(
        (*policy("[[grant]]\ncaller = \"spiffe://test/admin\"\nroles = [\"tenant-admin\"]\ntenants = [\"acme-*\"]\n"))
            .clone(),
    );
    let flaky = |refusals: usize| -> Arc<dyn Actor> {
        Arc::new(FlakyActor {
            inner: LogActor { id: "spiffe://test/admin".into(), audit: Some(f.audit.clone()) },
            refusals: refusals.into(),
        })
    };
    let begin = || BeginRequest {
        environment: Environment::Demo,
        redirect: RedirectUrl::parse_field("redirect_url", CALLBACK).unwrap(),
        organization_number: None,
        prefix: TenantIdPrefix::parse_field("tenant_id_prefix", "acme-").unwrap(),
        subject: Subject::parse_field("subject", "user-1").unwrap(),
    };
    let admin = actor(&f, "spiffe://test/admin");
    for (refusals, stored) in [(2usize, false), (1, true)] {
        let begun = onboarding.begin(&admin, &authz.policy(), begin()).await.unwrap();
        let token = common::approve_at_sim(&begun.authorization_url).await;
        let req = CompleteRequest {
            onboarding_id: begun.onboarding_id.clone(),
            go_status: GoStatus::Success,
            token: OnboardingToken::parse(&token),
            subject: "user-1".into(),
        };
        let result = onboarding.complete(&flaky(refusals), &authz, req).await;
        let session = f.vault.onboarding(begun.onboarding_id.as_str()).unwrap().unwrap();
        if stored {
            let outcomes = result.unwrap();
            assert!(!outcomes.is_empty(), "the approved clients were stored");
            assert_eq!(session.status, SessionStatus::Completed);
        } else {
            let e = result.unwrap_err();
            assert!(matches!(&e, OnboardingError::NotStored(v) if v.is_transient()), "{e}");
            assert_eq!((e.recorded(), e.outcome()), (true, Outcome::Error));
            assert_eq!(session.status, SessionStatus::Pending, "back where it was, nothing half-stored");
            assert!(f.vault.list_tenants(None, 10).unwrap().is_empty(), "no tenant stored");
        }
    }
}
