//! Issue 21: Go's onboarding can be tried against `pogo-vault dev`, as the README says.
//! The real binary runs `dev` (its simulator accepts loopback redirect URIs); the example
//! integrator web app (examples/integrator_web.rs, compiled in here) talks to it with the
//! admin certificate dev mode wrote; an HTTP client plays the browser: "Connect PowerOffice
//! Go", the simulator's approval page, back to the app's callback. The new tenant then gets
//! a token through the printed `pogo-vault token` command, and the demo tenants still do.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;

#[path = "../examples/integrator_web.rs"]
mod integrator_web;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::browser::Browser;
use common::dev::Dev;
use pogo_vault::tls::ClientTlsFiles;
use rustix::process::{Pid, Signal, kill_process};

/// Whether `text` holds something shaped like a client key (a GUID).
fn holds_a_guid(text: &str) -> bool {
    let b = text.as_bytes();
    let shape = |w: &[u8]| {
        w.iter().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
    };
    b.windows(36).any(shape)
}

fn token(endpoint: &str, certs: &Path, tenant: &str) -> std::process::Output {
    let f = |n: &str| certs.join(n).to_str().unwrap().to_owned();
    Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["token", "--endpoint", endpoint, "--tenant", tenant])
        .args(["--ca", &f("ca.pem"), "--cert", &f("token-caller.pem"), "--key", &f("token-caller-key.pem")])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_through_the_web_app_works_against_pogo_vault_dev() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let dev = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            let mut dev = Dev::spawn(&data);
            dev.wait_ready(Duration::from_secs(120), |_| {});
            dev
        }
    })
    .await
    .unwrap();
    let endpoint = dev.endpoint();
    let printed = dev.lines.join("\n");
    // Issue 21 item 2: the dev simulator's client keys are printed (public demo values).
    for key in pogo_vault::sim::DEMO_CLIENTS.map(|c| c.client_key) {
        assert!(printed.contains(key), "dev prints its demo client key {key}:\n{printed}");
    }
    assert!(printed.contains("integrator_web"), "dev says how to try onboarding:\n{printed}");

    let certs = data.join("certs");
    let cfg = integrator_web::AppConfig {
        vault_endpoint: endpoint.clone(),
        tls: ClientTlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("admin.pem"),
            key: certs.join("admin-key.pem"),
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        environment: "demo".into(),
        tenant_prefix: "web-".into(),
        gateway: Some(dev.gateway()),
    };
    let (addr, _task) = integrator_web::start(cfg).await.unwrap();
    let app = format!("http://{addr}");

    let mut browser = Browser::new();
    let (_, _, home) = browser.get(&format!("{app}/")).await;
    assert!(home.contains("Connect PowerOffice Go") && home.contains("demo-acme"), "{home}");
    // Connect: the app begins the onboarding, the browser goes to the simulated Go, which
    // approves and sends it back to the app's loopback callback, which completes it.
    let (_, page) = browser.connect(&app).await;
    assert!(page.contains("Connected"), "{page}");
    assert!(page.contains("web-999999993") && page.contains("Nordlys Handel AS"), "{page}");
    assert!(!holds_a_guid(&String::from_utf8_lossy(&browser.pages)), "a page carried a client key");

    // A connected customer's own customers in Go, listed through the vault's gateway.
    let (_, _, listed) = browser.get(&format!("{app}/customers?tenant=demo-acme")).await;
    assert!(listed.contains("Customer 1 of Acme Regnskap AS"), "{listed}");
    let (_, _, refused) = browser.get(&format!("{app}/customers?tenant=..%2Fdemo-acme")).await;
    assert!(refused.contains("not a company id"), "{refused}");

    // The new tenant gets a token with the command dev printed, and the demo tenants still
    // do: the simulated approver activates only its own client, so no demo key was replaced.
    for tenant in ["web-999999993", "demo-acme", "demo-fjord"] {
        let out = token(&endpoint, &certs, tenant);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{tenant}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("tenant {tenant}: Bearer token")), "{text}");
    }

    // Ctrl-C stops dev mode cleanly.
    let mut dev = dev;
    kill_process(Pid::from_child(&dev.child), Signal::INT).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let s = dev.child.wait();
        (s, dev)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "{status}");
}
