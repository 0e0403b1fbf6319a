//! Hardening (issue 13, connection exhaustion): idle TCP connections that never start a TLS
//! handshake must not lock real callers out. Before the fix, about 50 idle connections a
//! second held all 512 handshake slots (10 s each) and every new caller was dropped.
//!
//! Real TCP on loopback only: the flood comes from 127.0.0.1, the real caller binds its
//! socket to 127.0.0.2 (every 127.0.0.0/8 address is the loopback interface on Linux).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::fixture::token_request;
use common::server::TestServer;
use pogo_vault::proto::v1 as pb;
use tokio::net::TcpStream;

/// Idle connections the test opens, all from one source address.
const IDLE: usize = 2_000;
/// How long the real caller may take to connect and mint, counted from its first attempt.
const CALLER_BUDGET: Duration = Duration::from_secs(1);

/// Makes room for the flood's sockets plus the server's, within the hard limit.
fn raise_fd_limit(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    let hard = cur.maximum.unwrap_or(u64::MAX);
    assert!(hard >= want, "RLIMIT_NOFILE hard limit {hard} is below the {want} descriptors this test needs");
    setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: cur.maximum }).expect("raise RLIMIT_NOFILE");
}

/// A token caller whose TCP connection comes from `local`, connected and minting once.
async fn mint_from(ts: &TestServer, local: IpAddr) -> Result<pb::GetAccessTokenResponse, String> {
    let tls = pogo_vault::tls::tonic_client_tls(&ts.files("token-caller"), "localhost").map_err(|e| e.to_string())?;
    let channel = tonic::transport::Endpoint::from_shared(ts.endpoint.clone())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .local_address(Some(local))
        .connect_timeout(CALLER_BUDGET)
        .connect()
        .await
        .map_err(|e| pogo_vault::client::error_chain(&e))?;
    let req = token_request("acme");
    pb::token_service_client::TokenServiceClient::new(channel)
        .get_access_token(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Whether the server closed this connection (end of stream or reset); `false` while open.
fn closed_by_server(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_lock_out_a_real_caller() {
    raise_fd_limit(IDLE as u64 + 1_024);
    // The old default handshake timeout: the fix must hold even with slow timeouts.
    let ts = TestServer::start_with(|o| o.handshake_timeout = Duration::from_secs(10)).await;
    ts.register("acme", 0).await;

    // The flood: connections that never send a byte. They enter the server's accept queue
    // before the real caller's, so the accept loop has seen every one of them by the time
    // it reaches the caller.
    let server: SocketAddr = ts.server().addr;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(server).await.expect("idle connect"));
    }

    // A real caller from another address connects and mints within the budget.
    let start = Instant::now();
    let caller = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut last = String::new();
    let mut minted = None;
    while start.elapsed() < CALLER_BUDGET {
        match tokio::time::timeout(CALLER_BUDGET.saturating_sub(start.elapsed()), mint_from(&ts, caller)).await {
            Ok(Ok(t)) => {
                minted = Some(t);
                break;
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    let token = minted
        .unwrap_or_else(|| panic!("the real caller was locked out for {took:?} by {IDLE} idle connections: {last}"));
    assert!(!token.access_token.is_empty());
    assert!(took <= CALLER_BUDGET, "connecting and minting took {took:?}");

    // The flood itself is capped per address: the server drops all but a few of its
    // connections at once instead of holding a handshake slot for each.
    let cap = pogo_vault::server::conn::DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = IDLE;
    while Instant::now() < deadline {
        open = idle.iter().filter(|s| !closed_by_server(s)).count();
        if open <= cap {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open <= cap, "{open} idle connections from one address still held by the server (cap {cap})");
    drop(idle);
}

/// The configuration side: the short handshake timeout and the per-address bound are the
/// defaults, and an impossible bound is refused naming its key.
#[test]
fn handshake_defaults_are_short_and_bounded_per_address() {
    let min = "[vault]\ndb = 'v.db'\nmaster_key_file = 'k'\n\n[server]\nlisten = '127.0.0.1:0'\n\
               cert = 'c'\nkey = 'k'\nclient_ca = 'ca'\npolicy = 'p'\n";
    let path = std::path::Path::new("/etc/pogo-vault/config.toml");
    let c = pogo_vault::config::Config::parse(min, path).unwrap();
    c.validate(path).unwrap();
    assert_eq!(c.handshake_timeout(), Duration::from_secs(3));
    let opts = pogo_vault::server::ServeOptions::from_config(&c).unwrap();
    let limits = opts.handshake_limits();
    assert_eq!(limits.per_address, 32);
    assert_eq!(limits.total, pogo_vault::server::conn::MAX_PENDING_HANDSHAKES);
    for bad in ["0", "513"] {
        let text = format!("{min}max_pending_handshakes_per_address = {bad}\n");
        let e = pogo_vault::config::Config::parse(&text, path).unwrap().validate(path).unwrap_err().to_string();
        assert!(e.contains("server.max_pending_handshakes_per_address"), "{e}");
    }
}
