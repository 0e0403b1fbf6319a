//! `pogo-vault dev` as a newcomer runs it: the real binary, a fresh data directory, then the
//! printed `pogo-vault token` command run from "a second shell".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::dev::Dev;

#[test]
fn dev_mode_mints_a_token_and_its_printed_command_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let started = Instant::now();
    let mut dev = Dev::spawn(&data);
    let mut expiry_seen = None;
    dev.wait_ready(Duration::from_secs(60), |line| {
        if line.contains("expires ") && line.contains("token") {
            expiry_seen = Some(started.elapsed());
        }
    });
    let lines = &dev.lines;
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
    assert!(Command::new("kill").args(["-INT", &dev.child.id().to_string()]).status().unwrap().success());
    let status = dev.child.wait().unwrap();
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
