//! Issue 18, must show 1: certificates and the client CA bundle replaced on disk the way a
//! Kubernetes secret or CSI volume does it (a new directory, then an atomic swap of the
//! `..data` symlink) while callers are connected. New connections get the new certificate
//! within 2 s, no caller sees an error, each swap is one audit record; a broken replacement
//! is refused (recorded, counted) and the old one keeps serving; a policy file replaced by
//! rename is reloaded too, alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::fixture::{TRUST, token_request};
use common::server::TestServer;
use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::tls::ClientTlsFiles;

/// Writes version `name` of the volume: `tls.crt`, `tls.key` (0600) and `ca.crt`.
fn version(vol: &Path, name: &str, cert: &[u8], key: &Path, cas: &[&Path]) {
    let dir = vol.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::copy(key, dir.join("tls.key")).unwrap();
    let bundle: Vec<u8> = cas.iter().flat_map(|p| std::fs::read(p).unwrap()).collect();
    std::fs::write(dir.join("ca.crt"), bundle).unwrap();
}

/// Points the volume's `..data` at version `name` in one rename, as the atomic writer does.
fn swap_to(vol: &Path, name: &str) {
    let tmp = vol.join("..data_tmp");
    std::os::unix::fs::symlink(name, &tmp).unwrap();
    std::fs::rename(&tmp, vol.join("..data")).unwrap();
}

/// The volume's stable paths: `tls.crt` → `..data/tls.crt` and so on.
fn link_files(vol: &Path) -> (PathBuf, PathBuf, PathBuf) {
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), vol.join(f)).unwrap();
    }
    (vol.join("tls.crt"), vol.join("tls.key"), vol.join("ca.crt"))
}

/// The audit records of `action` so far: (outcome, detail).
fn records(ts: &TestServer, action: &str) -> Vec<(String, String)> {
    let db = common::rusqlite_open(&ts.audit_db());
    let mut st = db.prepare("SELECT outcome, detail FROM events WHERE action = ?1 ORDER BY sequence").unwrap();
    st.query_map([action], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

async fn wait_records(ts: &TestServer, action: &str, n: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = records(ts, action);
        if r.len() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{n} {action} records expected, found {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A token through a new connection as `files`.
async fn new_connection_token(endpoint: &str, files: &ClientTlsFiles) -> Result<(), String> {
    let ch = pogo_vault::client::connect(endpoint, files, Some("localhost")).await.map_err(|e| e.to_string())?;
    TokenServiceClient::new(ch).get_access_token(token_request("acme")).await.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_swapped_on_disk_serve_new_connections_within_2s_with_no_caller_error() {
    // A second CA, as a rotation brings: its server certificate, and a caller it issued.
    let second = tempfile::tempdir().unwrap();
    let pki2 = pogo_vault::tls::generate_dev_pki(&second.path().join("pki"), TRUST).unwrap();
    let vol_dir = tempfile::tempdir().unwrap();
    let vol = vol_dir.path().to_owned();
    let v = vol.clone();
    let mut ts = TestServer::start_with(move |o| {
        version(&v, "..v1", &std::fs::read(&o.tls.cert).unwrap(), &o.tls.key, &[&o.tls.client_ca]);
        swap_to(&v, "..v1");
        let (cert, key, ca) = link_files(&v);
        (o.tls.cert, o.tls.key, o.tls.client_ca) = (cert, key, ca);
        o.watch_files = Some(pogo_vault::server::WATCH_EVERY);
    })
    .await;
    ts.register("acme", 0).await;

    // Callers trust both CAs (a CA rotation is announced before it happens); one new
    // caller trusts and holds only the second CA's, so it gets in only after the swap.
    let both = second.path().join("both-cas.pem");
    std::fs::write(&both, [std::fs::read(&ts.pki.ca_cert).unwrap(), std::fs::read(&pki2.ca_cert).unwrap()].concat())
        .unwrap();
    let old_caller = ClientTlsFiles { ca: both.clone(), ..ts.files("token-caller") };
    let new_only = pki2.client_files("token-caller").unwrap();
    assert!(new_connection_token(&ts.endpoint, &new_only).await.is_err(), "not before the swap");

    // Load: one long-lived connection and a new connection every few requests.
    let (stop, served, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let (endpoint, files) = (ts.endpoint.clone(), old_caller.clone());
        tokio::spawn(async move {
            let ch = pogo_vault::client::connect(&endpoint, &files, Some("localhost")).await.unwrap();
            let mut kept = TokenServiceClient::new(ch);
            let mut errors = Vec::new();
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = if i % 4 == 0 {
                    new_connection_token(&endpoint, &files).await
                } else {
                    kept.get_access_token(token_request("acme")).await.map(|_| ()).map_err(|e| e.to_string())
                };
                match r {
                    Ok(()) => served.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            errors
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. The swap: the second CA's server certificate and key, and a client CA bundle
    //    holding both CAs, in one symlink rename.
    version(
        &vol,
        "..v2",
        &std::fs::read(&pki2.server_cert).unwrap(),
        &pki2.server_key,
        &[&ts.pki.ca_cert, &pki2.ca_cert],
    );
    swap_to(&vol, "..v2");
    let swapped = Instant::now();
    while let Err(e) = new_connection_token(&ts.endpoint, &new_only).await {
        assert!(swapped.elapsed() < Duration::from_secs(2), "the new certificate is not served within 2 s: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = swapped.elapsed();
    println!("new connections got the new certificate {took:?} after the swap");
    let reloaded = wait_records(&ts, "certificates_reloaded", 1).await;
    assert_eq!(reloaded.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(), ["ok"], "{reloaded:?}");

    // 2. A broken replacement: refused, recorded, counted; the second CA's certificate
    //    still serves.
    version(
        &vol,
        "..v3",
        b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n",
        &pki2.server_key,
        &[&ts.pki.ca_cert, &pki2.ca_cert],
    );
    swap_to(&vol, "..v3");
    let refused = wait_records(&ts, "certificates_reloaded", 2).await;
    assert_eq!(refused[1].0, "error", "{refused:?}");
    assert!(refused[1].1.contains("refused, the old certificates and CRLs kept"), "{refused:?}");
    assert_eq!(ts.server().state.metrics.reloads.get("certificates_refused"), 1);
    assert_eq!(ts.server().state.metrics.reloads.get("certificates_reloaded"), 1);
    new_connection_token(&ts.endpoint, &new_only).await.expect("the last good certificate keeps serving");

    // 3. The policy file replaced by rename: reloaded alone (no certificate record).
    let text = std::fs::read_to_string(&ts.policy).unwrap();
    let tmp = ts.policy.with_extension("new");
    std::fs::write(&tmp, format!("{text}{}", common::fixture::grant("service/reporting", &["audit"], &[]))).unwrap();
    std::fs::rename(&tmp, &ts.policy).unwrap();
    let policy = wait_records(&ts, "policy_reloaded", 1).await;
    assert_eq!(policy.len(), 1);
    assert_eq!(policy[0].0, "ok", "{policy:?}");

    // 4. A swap reloaded at once by SIGHUP (`RunningServer::reload`, what SIGHUP does) is
    //    not reloaded again by the watcher: one record each for what SIGHUP re-read.
    version(
        &vol,
        "..v4",
        &std::fs::read(&pki2.server_cert).unwrap(),
        &pki2.server_key,
        &[&pki2.ca_cert, &ts.pki.ca_cert],
    );
    swap_to(&vol, "..v4");
    ts.server().reload().await;
    tokio::time::sleep(pogo_vault::server::WATCH_EVERY * 4).await;
    assert_eq!(records(&ts, "certificates_reloaded").len(), 3, "{:?}", records(&ts, "certificates_reloaded"));
    assert_eq!(records(&ts, "policy_reloaded").len(), 2);

    // 5. The certificate and then its key replaced by two renames, 100 ms apart (back to
    //    the first CA's): reloaded together once, never refused as a mismatched pair.
    let (crt, key) = (vol.join("tls.crt.new"), vol.join("tls.key.new"));
    std::fs::copy(&ts.pki.server_cert, &crt).unwrap();
    std::fs::copy(&ts.pki.server_key, &key).unwrap();
    std::fs::rename(&crt, vol.join("tls.crt")).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::rename(&key, vol.join("tls.key")).unwrap();
    let pair = wait_records(&ts, "certificates_reloaded", 4).await;
    assert_eq!(pair[3].0, "ok", "{pair:?}");
    new_connection_token(&ts.endpoint, &ts.files("token-caller")).await.expect("the first CA's certificate again");

    // Nothing else was reloaded, nothing twice, and no caller saw an error.
    tokio::time::sleep(pogo_vault::server::WATCH_EVERY * 3).await;
    let certs = records(&ts, "certificates_reloaded");
    assert_eq!(certs.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(), ["ok", "error", "ok", "ok"], "{certs:?}");
    assert_eq!(records(&ts, "policy_reloaded").len(), 2);
    stop.store(true, Ordering::Relaxed);
    let errors = load.await.unwrap();
    assert!(errors.is_empty(), "callers saw errors: {errors:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 20, "the load ran");
    ts.stop().await;
}
