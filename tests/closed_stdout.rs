//! Issue 21: `pogo-vault tenant disable acme | enable acme` (pasted from an old README)
//! made a pipe whose reader exits at once, and pogo-vault panicked with a backtrace on the
//! broken pipe. No command may: each is run here, as it would succeed, with its standard
//! output a pipe whose reader is already gone. Each must stop quietly (exit code 141, as a
//! shell reports SIGPIPE: which also proves it got as far as writing), with no panic.
//!
//! The list of commands comes from the binary's own definition (`Cli::command()`): a new
//! subcommand fails this test until it is added to the table below.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clap::CommandFactory;
use common::fixture::{APP_KEY, sim_key};
use common::server::TestServer;
use common::{Scratch, assert_ok};

/// Every leaf command (`tenant list`), plus the top-level `--help` and `--version`.
fn commands() -> BTreeSet<String> {
    let mut out = BTreeSet::from(["--help".to_owned(), "--version".to_owned()]);
    let mut pending: Vec<(String, clap::Command)> =
        pogo_vault::cli::Cli::command().get_subcommands().map(|c| (c.get_name().to_owned(), c.clone())).collect();
    while let Some((path, c)) = pending.pop() {
        if c.has_subcommands() {
            pending.extend(c.get_subcommands().map(|s| (format!("{path} {}", s.get_name()), s.clone())));
        } else {
            out.insert(path);
        }
    }
    out
}

/// Runs the binary with standard output a pipe nobody reads any more.
fn run_closed(args: &[String], stdin: &str, env: &[(&str, &str)]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pogo-vault"));
    cmd.args(args).stdin(Stdio::piped()).stdout(writer).stderr(Stdio::piped());
    common::without_vault_env(&mut cmd);
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn assert_quiet_stop(what: &str, out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "`{what}` panicked on a closed stdout:\n{err}");
    assert_eq!(out.status.code(), Some(141), "`{what}`: expected the quiet stop of a closed stdout; stderr:\n{err}");
    assert!(!err.contains("error"), "`{what}` said more than nothing:\n{err}");
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_panics_when_its_standard_output_is_closed() {
    let ts = TestServer::start().await;
    ts.register("acme", 0).await;
    ts.sim.allow_redirect(pogo_vault::domain::Environment::Demo, "http://127.0.0.1:9/callback");
    let conn_of = |name: &str| {
        let f = ts.files(name);
        s(&["--endpoint", &ts.endpoint, "--ca", f.ca.to_str().unwrap(), "--cert", f.cert.to_str().unwrap()])
            .into_iter()
            .chain(s(&["--key", f.key.to_str().unwrap()]))
            .collect::<Vec<_>>()
    };
    let (auditor, admin, caller) = (conn_of("auditor"), conn_of("admin"), conn_of("token-caller"));

    // A vault of its own on disk for the database commands (the test server holds its own).
    let scratch = Scratch::new();
    let p = |name: &str| scratch.path(name).to_str().unwrap().to_owned();
    let db = s(&["--db", &p("vault.db"), "--master-key-file", &p("master.key")]);
    let with_db = |args: &[&str]| [db.clone(), s(args)].concat();
    let root = if pogo_vault::hardening::is_root() { vec![("POGO_VAULT_ALLOW_ROOT", "1")] } else { Vec::new() };

    let mut covered = BTreeSet::new();
    let mut check = |name: &str, args: Vec<String>, stdin: &str| {
        let out = run_closed(&args, stdin, &root);
        assert_quiet_stop(name, &out);
        covered.insert(name.to_owned());
    };
    check("--help", s(&["--help"]), "");
    check("--version", s(&["--version"]), "");
    check("init", s(&["--db", &p("vault.db"), "init", "--generate-master-key-file", &p("master.key")]), "");
    check(
        "integration set",
        with_db(&["integration", "set", "--environment", "demo", "--application-key", APP_KEY]),
        "0123456789abcdef0123456789abcdef\n",
    );
    check("integration use", with_db(&["integration", "use", "primary", "--environment", "demo"]), "");
    check("integration list", with_db(&["integration", "list"]), "");
    let add = ["tenant", "add", "--tenant-id", "acme", "--environment", "demo"];
    check("tenant add", with_db(&add), &format!("{}\n", sim_key(1)));
    check("tenant list", with_db(&["tenant", "list"]), "");
    check("tenant show", with_db(&["tenant", "show", "acme"]), "");
    check("tenant rotate-key", with_db(&["tenant", "rotate-key", "acme"]), &format!("{}\n", sim_key(2)));
    check("tenant disable", with_db(&["tenant", "disable", "acme"]), "");
    check("tenant enable", with_db(&["tenant", "enable", "acme"]), "");
    check("tenant delete", with_db(&["tenant", "delete", "acme", "--yes"]), "");
    check("backup", with_db(&["backup", "--out", &p("b/vault.bak")]), "");
    check("restore", with_db(&["restore", "--from", &p("b/vault.bak"), "--db", &p("r/vault.db")]), "");
    check("audit archive", with_db(&["audit", "archive", "--before", "0m", "--out", &p("b/audit-archive.db")]), "");
    // The moves between backends, through a throwaway PostgreSQL cluster.
    let cluster = tokio::task::spawn_blocking(|| {
        let c = common::pg::PgCluster::start(&[]);
        c.create_database("vault");
        c
    })
    .await
    .unwrap();
    let (url, pw) = (cluster.url("vault"), cluster.password_file());
    let pw = pw.to_str().unwrap();
    check(
        "storage migrate",
        with_db(&["storage", "migrate", "--to-postgres", &url, "--postgres-password-file", pw]),
        "",
    );
    let export = [
        "storage",
        "export",
        "--postgres-url",
        &url,
        "--postgres-password-file",
        pw,
        "--db",
        &p("x/vault.db"),
        "--audit-db",
        &p("x/vault-audit.db"),
    ];
    std::fs::create_dir_all(scratch.path("x")).unwrap();
    check("storage export", with_db(&export), "");
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
    check("audit rotate-signing-key", with_db(&["audit", "rotate-signing-key"]), "");
    check("rotate-kek", with_db(&["rotate-kek", "--generate-new-master-key-file", &p("master2.key")]), "");

    // The security team's commands, against the test server.
    let public_key = p("audit.pub");
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args([s(&["audit", "public-key"]), auditor.clone()].concat())
        .output()
        .unwrap();
    assert_ok(&out);
    std::fs::write(&public_key, &out.stdout).unwrap();
    // The test server's live log: its newest events may wait for the next checkpoint.
    let live = ts.audit_db().to_str().unwrap().to_owned();
    let verify = ["audit", "verify", "--audit-db", &live, "--public-key", &public_key, "--allow-unsigned-tail"];
    check("audit verify", s(&verify), "");
    check("audit list", [s(&["audit", "list"]), auditor.clone()].concat(), "");
    check("audit export", [s(&["audit", "export"]), auditor.clone()].concat(), "");
    check("audit checkpoint", [s(&["audit", "checkpoint"]), auditor.clone()].concat(), "");
    check("audit public-key", [s(&["audit", "public-key"]), auditor.clone()].concat(), "");
    check("audit tail", [s(&["audit", "tail", "--from-sequence", "1"]), auditor.clone()].concat(), "");
    // The console cannot show its login link, so it stops before it serves.
    check("audit console", [s(&["audit", "console"]), auditor.clone()].concat(), "");
    check("status", [s(&["status"]), auditor.clone()].concat(), "");
    check("token", [s(&["token", "--tenant", "acme"]), caller].concat(), "");

    // Onboarding: begun normally, then both halves with a closed stdout.
    let begin = s(&["onboard", "begin", "--environment", "demo", "--redirect-url", "http://127.0.0.1:9/callback"]);
    check("onboard begin", [begin.clone(), admin.clone()].concat(), "");
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault")).args([begin, admin.clone()].concat()).output().unwrap();
    assert_ok(&out);
    let approve = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let back = http.get(&approve).send().await.unwrap();
    let back = back.headers()["location"].to_str().unwrap().to_owned();
    check("onboard complete", [s(&["onboard", "complete"]), admin].concat(), &format!("{back}\n"));

    // Files and the development tools.
    check("certs dev", s(&["certs", "dev", "--out", &p("certs")]), "");
    let policy = ts.policy.to_str().unwrap().to_owned();
    check("policy check", s(&["policy", "check", &policy]), "");
    let config = scratch.path("vault.toml");
    let f = ts.pki.server_files();
    std::fs::write(
        &config,
        format!(
            "[vault]\ndb = {:?}\nmaster_key_file = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\n\
             cert = {:?}\nkey = {:?}\nclient_ca = {:?}\npolicy = {policy:?}\n",
            p("vault.db"),
            p("master2.key"),
            f.cert,
            f.key,
            f.client_ca
        ),
    )
    .unwrap();
    check("config check", s(&["config", "check", config.to_str().unwrap()]), "");
    check("sim", s(&["sim", "--listen", "127.0.0.1:0"]), "");
    check("dev", s(&["dev", "--data-dir", &p("dev"), "--listen", "127.0.0.1:0"]), "");

    // `serve` writes nothing to standard output (its lines go to stderr): it serves with
    // stdout closed, and stops cleanly on SIGTERM.
    serve_with_closed_stdout(&config, &root);
    covered.insert("serve".to_owned());

    assert_eq!(covered, commands(), "every command is run here with a closed stdout");
}

fn serve_with_closed_stdout(config: &Path, env: &[(&str, &str)]) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .envs(env.iter().copied())
        .env_remove("POGO_VAULT_DB")
        .env_remove("POGO_VAULT_MASTER_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("serving on") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 || std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve stopped or stalled before serving:\n{seen}");
        }
        seen.push_str(&line);
    }
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    seen.push_str(&rest);
    let status = child.wait().unwrap();
    assert!(!seen.contains("panicked"), "serve panicked:\n{seen}");
    assert!(status.success(), "serve with a closed stdout: {status}\n{seen}");
}
