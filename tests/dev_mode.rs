//! `pogo-vault dev` as a newcomer runs it: the real binary, a fresh data directory, then the
//! printed `pogo-vault token` command run from "a second shell".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn dev_mode_mints_a_token_and_its_printed_command_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["dev", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("POGO_VAULT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    let mut lines = Vec::new();
    let mut expiry_seen = None;
    loop {
        let line =
            rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("dev mode stalled; got {lines:#?}"));
        if line.contains("expires ") && line.contains("token") {
            expiry_seen = Some(started.elapsed());
        }
        let ready = line.contains("dev: ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let elapsed = expiry_seen.expect("a minted token's expiry is printed");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert!(lines.iter().any(|l| l.contains("registered tenant demo-acme") && l.contains("over gRPC")), "{lines:#?}");

    // The printed command, run as a second shell would.
    let cmd = lines.iter().find(|l| l.trim_start().contains(" token --endpoint ")).expect("token command printed");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(words[0]).args(&words[1..]).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed} {}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("tenant demo-fjord") && printed.contains("expires"), "{printed}");
    assert!(!printed.contains("eyJhbGciOi") || printed.contains("eyJhbG…"), "masked by default: {printed}");

    // Ctrl-C stops it cleanly.
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");

    // A second start reuses the data directory (tenants already registered).
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["dev", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0", "--once"])
        .env("POGO_VAULT_LOG", "warn")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("tenant demo-acme already registered"), "{printed}");
    assert!(printed.contains("expires"), "{printed}");
}
