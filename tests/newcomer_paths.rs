//! Issue 21: the rough edges a newcomer hit following the README, each as a regression
//! test on the real binary: `config check` refusing what `serve` refuses and naming the
//! environment overrides in force; a stale master key file after `rotate-kek`; a passphrase
//! given where a variable's name belongs; tables and empty lists; backups without `-wal`
//! and `-shm`; restore into a new directory; `audit verify --audit-db`; logs at the right
//! level, without colours in a file and without `Some(...)` in JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture::APP_KEY;
use common::{Scratch, assert_fails_with, assert_ok, run_bin, stdout};

/// A vault with certificates, a policy and a configuration that `serve` accepts.
fn served_setup(s: &Scratch) -> std::path::PathBuf {
    s.init();
    assert_ok(&run_bin(&["certs", "dev", "--out", s.path("certs").to_str().unwrap()], ""));
    std::fs::write(
        s.path("policy.toml"),
        "[[grant]]\ncaller = \"spiffe://pogo-vault.dev/service/token-caller\"\nroles = [\"token\"]\ntenants = [\"*\"]\n",
    )
    .unwrap();
    let config = s.path("vault.toml");
    let metrics = "metrics_listen = \"127.0.0.1:0\"\n";
    std::fs::write(&config, common::fixture::serve_config("127.0.0.1:0") + metrics).unwrap();
    config
}

fn config_check(config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pogo-vault"));
    cmd.args(["config", "check", config.to_str().unwrap()]);
    common::without_vault_env(&mut cmd);
    cmd.envs(env.iter().copied()).output().unwrap()
}

/// Issue 21 item 3: `config check` said ok for configurations `serve` refuses.
#[test]
fn config_check_refuses_what_serve_refuses_and_names_env_overrides() {
    let s = Scratch::new();
    let config = served_setup(&s);
    let out = config_check(&config, &[]);
    assert_ok(&out);
    assert!(stdout(&out).contains(": ok") && stdout(&out).contains("environment overrides: none"), "{}", stdout(&out));

    // An exported POGO_VAULT_DB wins over the file: said, not silent.
    let other = s.path("other.db");
    let out = config_check(&config, &[("POGO_VAULT_DB", other.to_str().unwrap())]);
    assert_fails_with(&out, &["vault.db", "does not exist", "pogo-vault init"]);
    let out = config_check(&config, &[("POGO_VAULT_DB", s.db().to_str().unwrap())]);
    assert_ok(&out);
    assert!(stdout(&out).contains("environment override in force: POGO_VAULT_DB="), "{}", stdout(&out));

    // A server key others may read.
    let key = s.path("certs/server-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails_with(&config_check(&config, &[]), &["server.key", "chmod 600"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A missing policy; a missing database; another master key.
    std::fs::rename(s.path("policy.toml"), s.path("policy.moved")).unwrap();
    assert_fails_with(&config_check(&config, &[]), &["server.policy", "policy.toml"]);
    std::fs::rename(s.path("policy.moved"), s.path("policy.toml")).unwrap();
    let wrong = s.path("wrong.key");
    assert_ok(&run_bin(
        &["--db", s.path("w.db").to_str().unwrap(), "init", "--generate-master-key-file", wrong.to_str().unwrap()],
        "",
    ));
    let out = config_check(&config, &[("POGO_VAULT_MASTER_KEY_FILE", wrong.to_str().unwrap())]);
    assert_fails_with(&out, &["vault.master_key_file", "wrong master key"]);

    // Checked read-only: the database is as it was.
    let before = common::dump(&s.db());
    assert_ok(&config_check(&config, &[]));
    assert_eq!(common::dump(&s.db()), before);

    // `--no-files` checks the file alone (for a configuration meant for another machine).
    std::fs::remove_file(s.db()).unwrap();
    assert_fails_with(&config_check(&config, &[]), &["vault.db"]);
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["config", "check", config.to_str().unwrap(), "--no-files"])
        .env_remove("POGO_VAULT_DB")
        .output()
        .unwrap();
    assert_ok(&out);
}

/// Issue 21 items 7 and 8: the message after `rotate-kek` for a stale key file, and a
/// passphrase typed where a variable's name belongs.
#[test]
fn master_key_mistakes_get_messages_that_help_and_echo_nothing() {
    let s = Scratch::new();
    s.init();
    let new_key = s.path("master2.key");
    let out = s.run_k(&["rotate-kek", "--generate-new-master-key-file", new_key.to_str().unwrap()], "");
    assert_ok(&out);
    let text = stdout(&out);
    let (old_id, new_id) =
        text.split_once("master key rotated: ").unwrap().1.split_once(';').unwrap().0.split_once(" -> ").unwrap();
    let out = s.run_k(&["tenant", "list"], "");
    assert_fails_with(
        &out,
        &["wrong master key", old_id, new_id, "rotated with rotate-kek", "POGO_VAULT_MASTER_KEY_FILE"],
    );

    // A passphrase vault, opened with the passphrase itself given to --master-passphrase-env.
    let p = Scratch::new();
    let pass = p.path("pass.txt");
    std::fs::write(&pass, "a long enough passphrase\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let argon = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1"];
    assert_ok(&p.run(&[&["--master-passphrase-file", pass.to_str().unwrap(), "init"][..], &argon].concat(), ""));
    let secret = "a passphrase given by mistake";
    for args in [
        vec!["--master-passphrase-env", secret, "tenant", "list"],
        vec!["tenant", "list", "--master-passphrase-env", secret],
        vec!["--master-passphrase-env", "HUNTER2_HUNTER2_HUNTER2", "tenant", "list"],
    ] {
        let out = p.run(&args, "");
        let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("--master-passphrase-env"), "the option is named: {all}");
        assert!(!all.contains(secret) && !all.contains("HUNTER2"), "the value is echoed: {all}");
    }
    // Nor does --help show the value of the variable that names it.
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["tenant", "list", "--help"])
        .env("POGO_VAULT_MASTER_PASSPHRASE_ENV", secret)
        .output()
        .unwrap();
    assert!(!stdout(&out).contains(secret), "{}", stdout(&out));
}

/// Issue 21 item 10: aligned tables, empty lists said so, self-contained backups, restore
/// into a new directory; item 5: `audit verify --audit-db`.
#[test]
fn lists_backups_restores_and_verify_work_as_the_readme_says() {
    let s = Scratch::new();
    s.init();
    let out = s.run_k(&["integration", "list"], "");
    assert_ok(&out);
    assert!(stdout(&out).contains("no integration set yet"), "{}", stdout(&out));
    let out = s.run_k(&["tenant", "list"], "");
    assert!(stdout(&out).contains("no tenants yet"), "{}", stdout(&out));
    assert_ok(&s.run_k(
        &["integration", "set", "--environment", "demo", "--application-key", APP_KEY],
        "0123456789abcdef0123456789abcdef\n",
    ));
    for (id, key) in [
        ("a", "11111111-1111-4111-8111-111111111111"),
        ("a-much-longer-tenant-id-than-the-header", "22222222-2222-4222-8222-222222222222"),
    ] {
        assert_ok(
            &s.run_k(&["tenant", "add", "--tenant-id", id, "--environment", "demo", "--display-name", "Name AS"], key),
        );
    }
    s.run_k(&["tenant", "disable", "a"], "");
    let table = stdout(&s.run_k(&["tenant", "list"], ""));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    // Every column starts where its header starts, whatever the width of the values.
    for col in ["ENV", "STATUS", "KEY", "VER", "NAME"] {
        let at = lines[0].find(col).unwrap();
        for row in &lines[1..] {
            let before: String = row.chars().take(at.min(row.chars().count())).collect();
            assert!(before.ends_with("  "), "column {col} is not aligned:\n{table}");
            assert_ne!(row.chars().nth(at), Some(' '), "column {col} is not aligned:\n{table}");
        }
    }
    assert!(lines.iter().all(|l| l == &l.trim_end()), "no trailing blanks:\n{table}");

    // Backup into a new directory: two self-contained files and nothing beside them.
    let out = s.run_k(&["backup", "--out", s.path("backups/b.bak").to_str().unwrap()], "");
    assert_ok(&out);
    let mut names: Vec<String> = std::fs::read_dir(s.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    names.sort();
    assert_eq!(names, ["b.bak", "b.bak.audit"]);
    assert_eq!(std::fs::metadata(s.path("backups")).unwrap().permissions().mode() & 0o777, 0o700);

    // Restore into a directory that does not exist yet: created private.
    let restored = s.path("new/place/vault.db");
    let out = s.run_k(
        &["restore", "--from", s.path("backups/b.bak").to_str().unwrap(), "--db", restored.to_str().unwrap()],
        "",
    );
    assert_ok(&out);
    assert_eq!(std::fs::metadata(s.path("new/place")).unwrap().permissions().mode() & 0o777, 0o700);

    // `audit verify --audit-db` reads that file; with only --db, the one beside it.
    let public_key = s.path("audit.pub");
    // The vault's public key, as `audit public-key` would give it (read here from the log).
    let conn = common::rusqlite_open(&s.path("vault-audit.db"));
    let first: Vec<u8> =
        conn.query_row("SELECT public_key FROM signing_keys ORDER BY first_used_ms LIMIT 1", [], |r| r.get(0)).unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&first.try_into().unwrap()).unwrap();
    std::fs::write(&public_key, pogo_vault::audit::encode_public_key(&key)).unwrap();
    let audit_db = s.path("new/place/vault-audit.db");
    let verify = |extra: &[&str]| {
        run_bin(&[&["audit", "verify", "--public-key", public_key.to_str().unwrap()][..], extra].concat(), "")
    };
    let out = verify(&["--audit-db", audit_db.to_str().unwrap()]);
    assert_ok(&out);
    let out = verify(&["--db", s.db().to_str().unwrap()]);
    assert_ok(&out);
    let out = verify(&["--db", s.path("vault-audit.db").to_str().unwrap()]);
    assert_ok(&out);
    let out = verify(&["--audit-db", s.path("nowhere.db").to_str().unwrap()]);
    assert!(!out.status.success());
}

/// Issue 21 item 9: a refused policy reload is a warning; JSON logs print addresses, not
/// `Some(...)`; human logs into a file carry no colour codes.
#[test]
fn serve_logs_a_refused_reload_as_a_warning_in_plain_json() {
    let s = Scratch::new();
    let config = served_setup(&s);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[log]\nformat = \"json\"\n")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pogo-vault"));
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    common::without_vault_env(&mut cmd);
    if pogo_vault::hardening::is_root() {
        cmd.env("POGO_VAULT_ALLOW_ROOT", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let wait_for = |needle: &str, lines: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !lines.iter().any(|l: &String| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("no {needle:?} in the log:\n{}", lines.join("\n")),
            }
        }
    };
    wait_for("serving on", &mut lines);
    std::fs::write(s.path("policy.toml"), "[[grant]\nbroken").unwrap();
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    wait_for("policy reload refused", &mut lines);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = lines.join("\n");
    let refused = lines.iter().find(|l| l.contains("policy reload refused")).unwrap();
    let v: serde_json::Value = serde_json::from_str(refused).unwrap_or_else(|e| panic!("not JSON ({e}): {refused}"));
    assert_eq!(v["level"], "WARN", "{refused}");
    let serving = lines.iter().find(|l| l.contains("serving gRPC")).unwrap();
    let v: serde_json::Value = serde_json::from_str(serving).unwrap();
    assert!(v["metrics"].as_str().unwrap().starts_with("127.0.0.1:"), "{serving}");
    assert!(!log.contains("Some("), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

/// Issue 21 item 12: a `min_validity_seconds` above the cap is refused (naming the field),
/// not answered OK; `GetStatus` refused to a caller without the `audit` role does not
/// speak of "this tenant" (the role has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refusals_say_what_is_wrong() {
    use pogo_vault::proto::v1 as pb;
    let mut ts = common::server::TestServer::start().await;
    ts.register("acme", 0).await;
    let mut tokens = ts.token_client("token-caller").await;
    let ask = |s: u32| pb::GetAccessTokenRequest { tenant_id: "acme".into(), min_validity_seconds: s };
    let e = tokens.get_access_token(ask(5000)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("min_validity_seconds") && e.message().contains("900"), "{}", e.message());
    let ok = tokens.get_access_token(ask(900)).await.unwrap().into_inner();
    assert!(!ok.access_token.is_empty());

    let channel = ts.channel("token-caller").await;
    let mut status = pogo_vault::proto::v1::status_service_client::StatusServiceClient::new(channel);
    let e = status.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("audit role") && !e.message().contains("tenant"), "{}", e.message());
    ts.stop().await;
}

/// Issue 21 item 2: with Go unreachable, the reason was given twice ("PowerOffice Go is
/// unavailable (PowerOffice Go is unavailable: host name did not resolve)").
#[test]
fn an_unreachable_go_is_said_once() {
    let e = pogo_vault::tokens::BrokerError::Unavailable {
        reason: "PowerOffice Go is unavailable: host name did not resolve".into(),
        retry_after: Duration::from_secs(1),
    };
    assert_eq!(e.to_string(), "PowerOffice Go is unavailable (host name did not resolve); retry after 1 s");
}
