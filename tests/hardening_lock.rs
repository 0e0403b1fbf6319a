//! Issue 13, "rotate-kek beside a running server": a server holds the database lock, so
//! writing CLI commands are refused (naming the server's pid) instead of leaving it serving
//! stale or unopenable state; read-only commands still work; a second server on the same
//! files is refused; `kill -9` of a holder frees the lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::sim_key;
use common::server::TestServer;
use common::{assert_fails_with, assert_ok, dump, run_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_commands_are_refused_while_a_server_runs_and_reads_still_work() {
    let mut ts = TestServer::start().await;
    let db = ts.dir.path().join("vault.db");
    let key = ts.dir.path().join("master.key");
    let base = ["--db", db.to_str().unwrap(), "--master-key-file", key.to_str().unwrap()];
    let run = |args: &[&str], stdin: &str| run_bin(&[&base[..], args].concat(), stdin);
    let before = dump(&db);
    let pid = format!("pid {}", std::process::id());
    let new_key = ts.dir.path().join("new.key");
    for (args, stdin) in [
        (vec!["rotate-kek", "--generate-new-master-key-file", new_key.to_str().unwrap()], String::new()),
        (vec!["tenant", "add", "--tenant-id", "acme", "--environment", "demo"], format!("{}\n", sim_key(0))),
        (vec!["tenant", "disable", "acme"], String::new()),
        (
            vec!["integration", "set", "--environment", "production", "--application-key", common::fixture::APP_KEY],
            "0123456789abcdef0123456789abcdef\n".to_owned(),
        ),
    ] {
        let out = run(&args, &stdin);
        assert_fails_with(&out, &["a server is running on this database", &pid, "use the gRPC API, or stop it first"]);
    }
    assert!(!new_key.exists(), "a refused rotate-kek creates no key file");
    assert_eq!(dump(&db), before, "nothing changed");
    // Reads and backups are fine beside the server.
    assert_ok(&run(&["tenant", "list"], ""));
    assert_ok(&run(&["integration", "list"], ""));
    assert_ok(&run(&["backup", "--out", ts.dir.path().join("b.bak").to_str().unwrap()], ""));

    // A second server on the same files is refused too.
    let second = pogo_vault::server::start(ts.options()).await;
    let err = second.err().expect("a second server on the same database is refused").to_string();
    assert!(err.contains("a server is running on this database"), "{err}");

    // Stopped, the same command works.
    ts.stop().await;
    assert_ok(&run(&["tenant", "add", "--tenant-id", "acme", "--environment", "demo"], &format!("{}\n", sim_key(0))));
}

#[test]
fn a_killed_holder_frees_the_lock() {
    let s = common::Scratch::new();
    s.init();
    // A command that holds the lock while it waits for its key on standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["--db", s.db().to_str().unwrap(), "--master-key-file", s.key().to_str().unwrap()])
        .args(["tenant", "add", "--tenant-id", "acme", "--environment", "demo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it holds the lock (its note names it), without competing for the lock.
    let lock_file = format!("{}.lock", s.db().display());
    let note = format!("pid={} command", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&lock_file).map_or(true, |t| !t.contains(&note)) {
        assert!(std::time::Instant::now() < deadline, "the waiting command never held the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = s.run_k(&["tenant", "disable", "acme"], "");
    assert_fails_with(&out, &["another pogo-vault command", &format!("pid {}", child.id())]);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = s.run_k(&["tenant", "add", "--tenant-id", "acme", "--environment", "demo"], &format!("{}\n", sim_key(0)));
    assert_ok(&out);
}
