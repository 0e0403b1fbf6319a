#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bodies stream through the gateway (issue 19, must-show 4): a 10 MiB upload and a 10 MiB
//! download at the same time, through a real `pogo-vault serve` process, grow its resident
//! memory by less than 8 MiB (measured as the peak, `VmHWM`, after `clear_refs` reset it,
//! against the resident size just before): within the issue's 20 MB, and tight enough that
//! a gateway holding either body whole (10 MiB) fails. The two bodies arrive intact
//! (SHA-256 both ways).

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::fixture::{self, grant};
use common::serve_process;
use http_body::Frame;
use pogo_vault::sim::pattern_byte;
use pogo_vault::tls::ClientTlsFiles;
use sha2::{Digest, Sha256};

const SIZE: u64 = 10 * 1024 * 1024;
const FRAME: u64 = 64 * 1024;

/// A process's `/proc/PID/status` line `key`, in bytes.
fn status_bytes(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// The SHA-256 of the simulator's pattern bytes `0..n`.
fn pattern_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    let mut from = 0;
    while from < n {
        let to = n.min(from + FRAME);
        h.update((from..to).map(pattern_byte).collect::<Vec<u8>>());
        from = to;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` pattern bytes as a streamed request body (never whole in memory; length not declared).
fn pattern_body(n: u64) -> reqwest::Body {
    let frames = (0..n.div_ceil(FRAME)).map(move |k| {
        let from = k * FRAME;
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(
            (from..n.min(from + FRAME)).map(pattern_byte).collect::<Vec<u8>>(),
        )))
    });
    reqwest::Body::wrap(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
}

fn client(dir: &Path, gateway: std::net::SocketAddr, h2: bool) -> reqwest::Client {
    let certs = dir.join(fixture::CERTS);
    let files = ClientTlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join("api-caller.pem"),
        key: certs.join("api-caller-key.pem"),
    };
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = pogo_vault::tls::https_client_config(&files, alpn).unwrap();
    reqwest::Client::builder().tls_backend_preconfigured(tls).resolve("localhost", gateway).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_each_way_stream_through_without_growing_the_vault_by_twenty() {
    let dir = tempfile::tempdir().unwrap();
    let sim = fixture::start_sim(1000).await;
    fixture::add_bulk_clients(&sim, 0..1);
    let policy = fixture::policy_text(&format!(
        "{}api = [\"GET /v2/Customers\", \"GET /v2/Sim/Download\", \"POST /v2/Sim/Upload\"]\n",
        grant("service/api-caller", &["api"], &["*"])
    ));
    let (pki, vault) = fixture::serve_files(dir.path(), &sim, &policy);
    fixture::add_bulk_tenants(&vault, &["acme".to_owned()], 0, true);
    drop(vault);
    let certs = dir.path().join(fixture::CERTS);
    pogo_vault::tls::issue_client_cert(
        &pki.ca_cert,
        &pki.ca_key,
        &certs.join("api-caller.pem"),
        &certs.join("api-caller-key.pem"),
        Some(&format!("spiffe://{}/service/api-caller", fixture::TRUST)),
        None,
        "api-caller",
    )
    .unwrap();
    let gateway: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let extra = format!("metrics_listen = \"\"\n\n[gateway]\nlisten = \"{gateway}\"\n");
    let (config, endpoint) = serve_process::write_config(dir.path(), &extra);
    let mut child = serve_process::start(&config, "info");
    let caller = pki.client_files("token-caller").unwrap();
    serve_process::wait_ready(&endpoint, &caller, &config, 100, Duration::from_millis(100)).await;
    let pid = child.id();
    let base = format!("https://localhost:{}/acme/v2", gateway.port());
    let (up, down) = (client(dir.path(), gateway, false), client(dir.path(), gateway, true));

    // Warm up: a token, both connections, a smaller body each way.
    assert_eq!(up.get(format!("{base}/Customers")).send().await.unwrap().status(), 200);
    let r = up.post(format!("{base}/Sim/Upload")).body(pattern_body(1 << 20)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", serve_process::log(&config));
    let _ = r.bytes().await;
    let r = down.get(format!("{base}/Sim/Download?bytes={}", 1 << 20)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1 << 20);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = status_bytes(pid, "VmRSS:");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let upload = async {
        let r = up.post(format!("{base}/Sim/Upload")).body(pattern_body(SIZE)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()
    };
    let download = async {
        let mut r = down.get(format!("{base}/Sim/Download?bytes={SIZE}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let (mut h, mut n) = (Sha256::new(), 0u64);
        while let Some(chunk) = r.chunk().await.unwrap() {
            n += chunk.len() as u64;
            h.update(&chunk);
        }
        (n, h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let (uploaded, (downloaded, down_sha)) = tokio::join!(upload, download);
    let peak = status_bytes(pid, "VmHWM:");
    let expected = pattern_sha256(SIZE);
    assert_eq!(uploaded["Bytes"], SIZE);
    assert_eq!(uploaded["Sha256"], expected.as_str(), "the upload arrived intact");
    assert_eq!((downloaded, down_sha.as_str()), (SIZE, expected.as_str()), "the download arrived intact");
    let growth = peak.saturating_sub(before);
    println!(
        "vault RSS before: {:.1} MiB; peak during 10 MiB up + 10 MiB down: {:.1} MiB; growth {:.2} MiB",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        growth as f64 / 1048576.0
    );
    assert!(growth < 8 * 1024 * 1024, "the vault grew by {growth} bytes while streaming");

    child.kill().unwrap();
    let _ = child.wait();
}
