//! Issue 13, "process hardening": the serving process has core dumps off (a core would
//! hold the master key in the clear) and `serve` refuses to run as root without
//! `--allow-root`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The soft and hard core size limits of a running process, from `/proc/PID/limits`.
fn core_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max core file size")).expect("core limit line");
    let mut cols = line["Max core file size".len()..].split_whitespace();
    (cols.next().unwrap().to_owned(), cols.next().unwrap().to_owned())
}

#[test]
fn a_serving_process_cannot_dump_core() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["dev", "--data-dir", dir.path().join("d").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env_remove("POGO_VAULT_DB")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("dev: ready") {
            ready = true;
            break;
        }
    }
    assert!(ready, "dev mode came up");
    // Our own limit is whatever the test runner has; the server's is zero, soft and hard.
    assert_eq!(core_limits(child.id()), ("0".into(), "0".into()));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn serve_refuses_root_without_allow_root() {
    let out = common::run_bin(&["serve", "--config", "/nonexistent/config.toml"], "");
    let err = String::from_utf8_lossy(&out.stderr);
    if pogo_vault::hardening::is_root() {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("refusing to serve as root") && err.contains("--allow-root"), "{err}");
        // With the flag, it gets as far as the configuration.
        let out = common::run_bin(&["serve", "--allow-root", "--config", "/nonexistent/config.toml"], "");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("refusing to serve as root") && err.contains("config"), "{err}");
    } else {
        // Not root: no refusal; it fails on the missing configuration instead.
        assert!(!err.contains("refusing to serve as root") && err.contains("config"), "{err}");
    }
}
