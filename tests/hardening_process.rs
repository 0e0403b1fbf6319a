//! Issue 13, "process hardening": the serving process has core dumps off (a core would
//! hold the master key in the clear) and `serve` refuses to run as root without
//! `--allow-root`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::dev::Dev;

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
    let mut dev = Dev::spawn(&dir.path().join("d"));
    // Panics if dev mode does not come up.
    dev.wait_ready(Duration::from_secs(120), |_| {});
    // Our own limit is whatever the test runner has; the server's is zero, soft and hard.
    assert_eq!(core_limits(dev.child.id()), ("0".into(), "0".into()));
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
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
