//! Audit before effect (issue 12, must-show 1): with the audit database locked by another
//! connection (`BEGIN EXCLUSIVE`), every change path fails within the audit timeout and
//! leaves the vault database exactly as it was (every row of every table compared), over
//! gRPC and through the CLI. One table per surface; each row is one path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fixture::{APP_KEY, grant, policy_text, register_unvalidated as register, sim_key};
use common::server::TestServer;
use common::{Scratch, dump, rusqlite_open};
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::onboarding_service_client::OnboardingServiceClient;
use pogo_vault::proto::v1::operator_service_client::OperatorServiceClient;
use pogo_vault::sim::SimClient;

/// The longest a refused change may take: the audit append timeout (2 s) plus slack for a
/// loaded 2-core machine.
const BOUND: Duration = Duration::from_millis(3500);

/// Holds SQLite's write lock on the audit database until dropped.
struct AuditLock(rusqlite::Connection);

impl AuditLock {
    fn take(audit_db: &Path) -> AuditLock {
        let conn = rusqlite_open(audit_db);
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        AuditLock(conn)
    }
}

impl Drop for AuditLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// Waits until the server's audit log is healthy again, so the next change reaches its
/// commit gate (a failing log is refused earlier, by the fast pre-check).
async fn wait_healthy(ts: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ts.server().state.audit.is_healthy() {
        assert!(Instant::now() < deadline, "audit log did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    r.map_or_else(|s| s.code(), |_| tonic::Code::Ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_change_fails_closed_and_leaves_the_vault_unchanged_while_the_audit_log_is_locked() {
    let mut ts = TestServer::start().await;
    let db = ts.dir.path().join("vault.db");
    let audit_db = ts.audit_db();
    let mut admin = ts.tenant_client("admin").await;
    let mut onboarding = OnboardingServiceClient::new(ts.channel("admin").await);
    // `stranger` is the operator (master key, integrations).
    let ops_grant = grant("service/stranger", &["operator"], &[]);
    std::fs::write(&ts.policy, policy_text(&ops_grant)).unwrap();
    ts.server().reload().await;
    let ops = OperatorServiceClient::new(ts.channel("stranger").await);

    // Set-up with a healthy log: tenants for each path, a session ready to complete, a
    // tenant whose key Go does not know (GetAccessToken would mark it KEY_REJECTED).
    for (t, k) in [("rot", 0), ("del", 1), ("dis", 2), ("en", 3)] {
        admin.register_client_key(register(t, k)).await.unwrap();
    }
    admin.disable_tenant(pb::DisableTenantRequest { tenant_id: "en".into() }).await.unwrap();
    let mut unknown = register("gone", 0);
    unknown.client_key = "0badc0de-0000-4000-8000-000000000000".into();
    admin.register_client_key(unknown).await.unwrap();
    let callback = "http://127.0.0.1:9/onboarding/callback";
    ts.sim.allow_redirect(Environment::Demo, callback);
    ts.sim.add_client(
        Environment::Demo,
        &sim_key(6),
        SimClient { client_id: "7777".into(), name: "Ny Kunde AS".into(), organization_number: "987654321".into() },
    );
    let begun = onboarding
        .begin_onboarding(pb::BeginOnboardingRequest {
            environment: "demo".into(),
            redirect_url: callback.into(),
            organization_number: "987654321".into(),
            tenant_id_prefix: "ob-".into(),
            subject: "user-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let onboarding_token = common::approve_at_sim(&begun.authorization_url).await;

    type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = tonic::Code> + Send + 'a>>;
    let mut token = ts.token_client("token-caller").await;
    let (mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) =
        (admin.clone(), admin.clone(), admin.clone(), admin.clone(), admin.clone(), admin.clone());
    let (mut o1, mut o2) = (onboarding.clone(), onboarding.clone());
    let (mut ops1, mut ops2) = (ops.clone(), ops.clone());
    // Over the API the new key is provisioned on the host first.
    let new_key = ts.dir.path().join("master-2.key");
    pogo_vault::crypto::master::generate_key_file(&new_key).unwrap();
    let new_key_text = new_key.display().to_string();
    let sim_base = ts.sim.base_url(Environment::Demo);
    let ob_id = begun.onboarding_id.clone();
    let cases: Vec<(&str, Call<'_>)> = vec![
        ("register", Box::pin(async move { code(a2.register_client_key(register("new", 4)).await) })),
        (
            "rotate",
            Box::pin(async move {
                let r = pb::RotateClientKeyRequest { tenant_id: "rot".into(), client_key: sim_key(5) };
                code(a3.rotate_client_key(r).await)
            }),
        ),
        (
            "delete",
            Box::pin(async move { code(a4.delete_tenant(pb::DeleteTenantRequest { tenant_id: "del".into() }).await) }),
        ),
        (
            "disable",
            Box::pin(
                async move { code(a5.disable_tenant(pb::DisableTenantRequest { tenant_id: "dis".into() }).await) },
            ),
        ),
        (
            "enable",
            Box::pin(async move { code(a6.enable_tenant(pb::EnableTenantRequest { tenant_id: "en".into() }).await) }),
        ),
        (
            "key rejected by Go",
            Box::pin(async move {
                let r = pb::GetAccessTokenRequest { tenant_id: "gone".into(), min_validity_seconds: 0 };
                code(token.get_access_token(r).await)
            }),
        ),
        (
            "begin onboarding",
            Box::pin(async move {
                let r = pb::BeginOnboardingRequest {
                    environment: "demo".into(),
                    redirect_url: "http://127.0.0.1:9/onboarding/callback".into(),
                    organization_number: String::new(),
                    tenant_id_prefix: "x-".into(),
                    subject: "user-1".into(),
                };
                code(o1.begin_onboarding(r).await)
            }),
        ),
        (
            "complete onboarding",
            Box::pin(async move {
                let r = pb::CompleteOnboardingRequest {
                    onboarding_id: ob_id,
                    onboarding_token,
                    go_status: "Success".into(),
                    subject: "user-1".into(),
                };
                code(o2.complete_onboarding(r).await)
            }),
        ),
        (
            "rotate-kek through the API",
            Box::pin(async move {
                let r = pb::RotateKekRequest { new_master_key_file: new_key_text, generate: false };
                code(ops1.rotate_kek(r).await)
            }),
        ),
        (
            "integration set through the API",
            Box::pin(async move {
                let r = pb::SetIntegrationRequest {
                    environment: "demo".into(),
                    application_key: APP_KEY.into(),
                    base_url: sim_base,
                    subscription_key: "0123456789abcdef0123456789abcdef".into(),
                    allow_custom_base_url: true,
                    slot: String::new(),
                };
                code(ops2.set_integration(r).await)
            }),
        ),
        (
            "get tenant (a read: refused too, its record cannot be written)",
            Box::pin(async move {
                // A read with a locked log is refused too (its record cannot be written), and
                // changes nothing: the table's invariant holds for it as well.
                code(a7.get_tenant(pb::GetTenantRequest { tenant_id: "rot".into() }).await)
            }),
        ),
    ];

    for (name, call) in cases {
        wait_healthy(&ts).await;
        let before = dump(&db);
        let lock = AuditLock::take(&audit_db);
        let started = Instant::now();
        let got = call.await;
        let took = started.elapsed();
        drop(lock);
        assert_eq!(got, tonic::Code::Unavailable, "{name}: a change whose record cannot be written is refused");
        assert!(took < BOUND, "{name}: answered in {took:?}, beyond the audit timeout");
        assert_eq!(dump(&db), before, "{name}: the vault database changed although its record was not written");
    }

    // The policy reload: the new file is checked, not put in force, while its record
    // cannot be written. `stranger` gains a grant in the new file.
    wait_healthy(&ts).await;
    let mut stranger = ts.tenant_client("stranger").await;
    let get = pb::GetTenantRequest { tenant_id: "rot".into() };
    assert_eq!(stranger.get_tenant(get.clone()).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    let granted = policy_text(&grant("service/stranger", &["tenant-admin"], &["*"]));
    std::fs::write(&ts.policy, &granted).unwrap();
    let lock = AuditLock::take(&audit_db);
    let started = Instant::now();
    ts.server().reload().await;
    let took = started.elapsed();
    drop(lock);
    assert!(took < 2 * BOUND, "reload answered in {took:?}");
    wait_healthy(&ts).await;
    assert_eq!(
        stranger.get_tenant(get.clone()).await.unwrap_err().code(),
        tonic::Code::PermissionDenied,
        "an unrecorded policy reload must not take effect"
    );
    // With the log writable the same reload takes effect, and is recorded.
    ts.server().reload().await;
    stranger.get_tenant(get).await.expect("recorded reload takes effect");
    let actions = actions(&audit_db);
    assert!(actions.iter().any(|a| a == "policy_reloaded:ok"), "{actions:?}");

    // Afterwards every path works and each change has exactly its record.
    admin.register_client_key(register("new", 4)).await.unwrap();
    admin.disable_tenant(pb::DisableTenantRequest { tenant_id: "dis".into() }).await.unwrap();
    ts.stop().await;
}

/// `action:outcome` of every audit event, oldest first.
fn actions(audit_db: &Path) -> Vec<String> {
    let conn = rusqlite_open(audit_db);
    let mut s = conn.prepare("SELECT action || ':' || outcome FROM events ORDER BY sequence").unwrap();
    s.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn every_cli_change_fails_closed_and_leaves_the_vault_unchanged_while_the_audit_log_is_locked() {
    let s = Scratch::new();
    s.init();
    let audit_db = pogo_vault::config::default_audit_db(&s.db());
    let sim_url = "http://127.0.0.1:9/Demo";
    let sub = "0123456789abcdef0123456789abcdef\n";
    common::assert_ok(&s.run_k(
        &[
            "integration",
            "set",
            "--environment",
            "demo",
            "--application-key",
            APP_KEY,
            "--base-url",
            sim_url,
            "--allow-custom-base-url",
        ],
        sub,
    ));
    let secondary_args = ["integration", "set", "--environment", "demo", "--slot", "secondary"];
    common::assert_ok(&s.run_k(&secondary_args, "fedcba9876543210fedcba9876543210\n"));
    for t in ["rot", "del", "dis", "en"] {
        common::assert_ok(
            &s.run_k(&["tenant", "add", "--tenant-id", t, "--environment", "demo"], &format!("{}\n", sim_key(0))),
        );
    }
    common::assert_ok(&s.run_k(&["tenant", "disable", "en"], ""));
    let backup = s.path("b.bak");
    common::assert_ok(&s.run_k(&["backup", "--out", backup.to_str().unwrap()], ""));

    let new_key = s.path("new.key");
    let restored = s.path("restored.db");
    let key5 = format!("{}\n", sim_key(5));
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        ("tenant add", args(&["tenant", "add", "--tenant-id", "new", "--environment", "demo"]), key5.clone()),
        ("tenant rotate-key", args(&["tenant", "rotate-key", "rot"]), key5.clone()),
        ("tenant delete", args(&["tenant", "delete", "del", "--yes"]), String::new()),
        ("tenant disable", args(&["tenant", "disable", "dis"]), String::new()),
        ("tenant enable", args(&["tenant", "enable", "en"]), String::new()),
        (
            "integration set",
            args(&["integration", "set", "--environment", "production", "--application-key", APP_KEY]),
            sub.to_owned(),
        ),
        ("integration set --slot secondary", args(&secondary_args), "abcdefabcdefabcdefabcdefabcdef12\n".to_owned()),
        ("integration use", args(&["integration", "use", "secondary", "--environment", "demo"]), String::new()),
        (
            "rotate-kek",
            args(&["rotate-kek", "--generate-new-master-key-file", new_key.to_str().unwrap()]),
            String::new(),
        ),
        ("backup", args(&["backup", "--out", s.path("locked.bak").to_str().unwrap()]), String::new()),
    ];
    for (name, argv, stdin) in cases {
        let before = dump(&s.db());
        let lock = AuditLock::take(&audit_db);
        let started = Instant::now();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = s.run_k(&argv, &stdin);
        let took = started.elapsed();
        drop(lock);
        common::assert_fails_with(&out, &["audit", "nothing was"]);
        assert!(took < BOUND, "{name}: answered in {took:?}, beyond the audit timeout");
        assert_eq!(dump(&s.db()), before, "{name}: the vault database changed although its record was not written");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line, got {err}");
    }
    assert!(!new_key.exists(), "a refused rotate-kek leaves no new key file");
    assert!(!s.path("locked.bak").exists() && !s.path("locked.bak.audit").exists(), "a refused backup writes nothing");

    // restore writes new files, which no one else holds: its record fails when it cannot
    // be signed (a master key that does not open the backup), and then nothing appears.
    let other = Scratch::new();
    other.init();
    let restored_audit = pogo_vault::config::default_audit_db(&restored);
    let restore = |key: &Path| {
        common::run_bin(
            &[
                "--db",
                restored.to_str().unwrap(),
                "--master-key-file",
                key.to_str().unwrap(),
                "restore",
                "--from",
                backup.to_str().unwrap(),
            ],
            "",
        )
    };
    let out = restore(&other.key());
    common::assert_fails_with(&out, &["audit record of this restore could not be written", "nothing was written"]);
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("restored"))
        .collect();
    // The database lock file (`<db>.lock`, empty of data) is the only trace.
    assert_eq!(leftovers, ["restored.db.lock"], "a refused restore leaves no database");
    // With the right key it lands, and the restored log says so as its newest event.
    common::assert_ok(&restore(&s.key()));
    assert_eq!(actions(&restored_audit).last().map(String::as_str), Some("restored:ok"));
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// `(action, outcome, caller, detail)` of the newest audit event.
fn newest(audit_db: &Path) -> (String, String, String, String) {
    let conn = rusqlite_open(audit_db);
    conn.query_row("SELECT action, outcome, caller, detail FROM events ORDER BY sequence DESC LIMIT 1", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
}

#[test]
fn integration_set_refuses_a_host_that_is_not_go_unless_allowed_and_records_the_host() {
    let s = Scratch::new();
    s.init();
    let audit_db = pogo_vault::config::default_audit_db(&s.db());
    let sub = "0123456789abcdef0123456789abcdef\n";
    let set = |extra: &[&str]| {
        let mut a = vec!["integration", "set", "--environment", "demo", "--application-key", APP_KEY];
        a.extend_from_slice(extra);
        s.run_k(&a, sub)
    };
    // Refused without the flag: nothing stored, the field named.
    let before = dump(&s.db());
    let out = set(&["--base-url", "https://go.attacker.example"]);
    common::assert_fails_with(&out, &["base_url", "go.attacker.example", "--allow-custom-base-url"]);
    assert_eq!(dump(&s.db()), before);

    // Go's own host needs no flag, and its record names the host.
    common::assert_ok(&set(&[]));
    let (action, outcome, caller, detail) = newest(&audit_db);
    assert_eq!((action.as_str(), outcome.as_str()), ("integration_set", "ok"));
    assert!(detail.contains("https://goapi.poweroffice.net"), "{detail}");
    assert!(!detail.contains("CUSTOM"), "{detail}");
    assert!(caller.starts_with("cli:uid="), "attributed from the operating system: {caller}");
    assert!(detail.contains(APP_KEY) && detail.contains("(version 1)"), "{detail}");
    assert!(!detail.contains("0123456789abcdef0123456789abcdef"), "the subscription key never appears");

    // With the flag it is stored and the record says so, naming old and new host.
    common::assert_ok(&set(&["--base-url", "https://go.attacker.example", "--allow-custom-base-url"]));
    let (action, _, _, detail) = newest(&audit_db);
    assert_eq!(action, "integration_set");
    assert!(
        detail.contains("https://goapi.poweroffice.net -> https://go.attacker.example") && detail.contains("CUSTOM"),
        "{detail}"
    );
}

#[test]
fn cli_attribution_comes_from_the_os_and_marks_sudo_user_as_a_claim() {
    let s = Scratch::new();
    s.init();
    let audit_db = pogo_vault::config::default_audit_db(&s.db());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["--db", s.db().to_str().unwrap(), "--master-key-file", s.key().to_str().unwrap()])
        .args(["tenant", "add", "--tenant-id", "acme", "--environment", "demo"])
        .env("USER", "somebody-else")
        .env("SUDO_USER", "alice")
        .env_remove("POGO_VAULT_DB")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(format!("{}\n", sim_key(0)).as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    common::assert_ok(&out);
    let (_, _, caller, _) = newest(&audit_db);
    assert!(caller.starts_with("cli:uid="), "{caller}");
    assert!(!caller.contains("somebody-else"), "$USER is not trusted: {caller}");
    assert!(caller.ends_with(" sudo_user=alice"), "{caller}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reload_whose_record_cannot_be_written_keeps_the_old_certificates() {
    let mut ts = TestServer::start_with_crl().await;
    let mut admin = ts.tenant_client("admin").await;
    admin.register_client_key(register("a-1", 0)).await.unwrap();
    let get = || pb::GetAccessTokenRequest { tenant_id: "a-1".into(), min_validity_seconds: 0 };
    let fresh_call = || async {
        match pogo_vault::client::connect(&ts.endpoint, &ts.files("a-only"), Some("localhost")).await {
            Err(_) => false,
            Ok(ch) => pb::token_service_client::TokenServiceClient::new(ch).get_access_token(get()).await.is_ok(),
        }
    };
    assert!(fresh_call().await);

    // Revoke a-only in the CRL; reload while the log is locked: the new CRL is not put in
    // force, so the caller still gets in.
    ts.revoke("a-only");
    wait_healthy(&ts).await;
    let generation = ts.server().state.tls.generation();
    let lock = AuditLock::take(&ts.audit_db());
    ts.server().reload().await;
    // Not in force while its record cannot be written, and no record claims it.
    assert_eq!(ts.server().state.tls.generation(), generation, "an unrecorded certificate reload must not take effect");
    assert!(
        !actions(&ts.audit_db()).iter().any(|a| a == "certificates_reloaded:ok"),
        "no record claims a reload that did not happen"
    );
    // Retried by itself (a revocation is not lost to a failing log): once the log is
    // writable again the new CRL goes into force with its record, without another SIGHUP.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ts.server().state.tls.generation(), generation, "still not in force while the log is locked");
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ts.server().state.tls.generation() == generation {
        assert!(Instant::now() < deadline, "the unrecorded reload was never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!fresh_call().await, "the recorded reload puts the new CRL in force");
    assert!(actions(&ts.audit_db()).iter().any(|a| a == "certificates_reloaded:ok"));
    ts.stop().await;
}

/// Issue 18, reload on change: a CRL replaced on disk while the audit log is locked is
/// not put in force until its record is written; then it goes into force on its own (the
/// watcher's reload retried), with one record, and the retry reloads only what failed:
/// no policy reload is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_changed_on_disk_while_the_log_is_locked_goes_into_force_once_recorded_and_alone() {
    let mut ts = TestServer::start_with_crl_and(|o| o.watch_files = Some(pogo_vault::server::WATCH_EVERY)).await;
    let mut admin = ts.tenant_client("admin").await;
    admin.register_client_key(register("a-1", 0)).await.unwrap();
    let fresh_call = || async {
        let get = pb::GetAccessTokenRequest { tenant_id: "a-1".into(), min_validity_seconds: 0 };
        match pogo_vault::client::connect(&ts.endpoint, &ts.files("a-only"), Some("localhost")).await {
            Err(_) => false,
            Ok(ch) => pb::token_service_client::TokenServiceClient::new(ch).get_access_token(get).await.is_ok(),
        }
    };
    assert!(fresh_call().await);
    let generation = ts.server().state.tls.generation();
    let lock = AuditLock::take(&ts.audit_db());
    ts.revoke("a-only");
    tokio::time::sleep(pogo_vault::server::WATCH_EVERY * 6).await;
    assert_eq!(ts.server().state.tls.generation(), generation, "not in force while its record cannot be written");
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ts.server().state.tls.generation() == generation {
        assert!(Instant::now() < deadline, "the unrecorded reload was never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_healthy(&ts).await;
    assert!(!fresh_call().await, "the revocation is in force");
    let actions = actions(&ts.audit_db());
    assert_eq!(actions.iter().filter(|a| *a == "certificates_reloaded:ok").count(), 1, "{actions:?}");
    assert!(
        !actions.iter().any(|a| a.starts_with("policy_reloaded")),
        "the retry reloaded the policy too: {actions:?}"
    );
    ts.stop().await;
}
