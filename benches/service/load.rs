//! The load generators: timed runs at a fixed concurrency (hot), sequential new
//! connections (handshakes), and a fixed number of requests spread over workers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::fixture::token_request;
use crate::measure::{cpu_secs, micros};
use crate::report::status_line;

/// xorshift64*: cheap, deterministic per task; tenant choice needs no more.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// One timed run: successful requests, their latencies, errors, CPU over the window.
#[derive(Default)]
pub struct Run {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Sorted microseconds of the successful requests.
    pub lat: Vec<u32>,
    pub secs: f64,
    pub cpu: f64,
}

impl Run {
    pub fn p99(&self) -> Option<f64> {
        crate::report::pct(&self.lat, 0.99)
    }
}

/// One load task's successful latencies, its error count and its first error.
pub type TaskResult = (Vec<u32>, u64, Option<String>);

/// The tasks' results as one run (latencies sorted; `secs` and `cpu` left to the caller).
pub async fn gather(tasks: Vec<tokio::task::JoinHandle<TaskResult>>) -> Run {
    let mut run = Run::default();
    for t in tasks {
        let (lat, errors, first) = t.await.unwrap();
        run.ok += lat.len() as u64;
        run.lat.extend(lat);
        run.errors += errors;
        if run.first_error.is_none() {
            run.first_error = first;
        }
    }
    run.lat.sort_unstable();
    run
}

/// Samples process CPU between `start` and `end`.
pub fn cpu_sampler(start: Instant, end: Instant) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let c0 = cpu_secs();
        tokio::time::sleep_until(end.into()).await;
        cpu_secs() - c0
    })
}

/// `channels.len()` connections × `per_conn` tasks, each with one request in flight, for
/// `warm` (not counted) then `secs`; random tenants out of `tenants`.
pub async fn hot_run(
    channels: &[Channel],
    per_conn: usize,
    tenants: &Arc<Vec<String>>,
    warm: Duration,
    secs: f64,
) -> Run {
    let start = Instant::now() + warm;
    let end = start + Duration::from_secs_f64(secs);
    let cpu = cpu_sampler(start, end);
    let mut tasks = Vec::new();
    for (ci, ch) in channels.iter().enumerate() {
        for si in 0..per_conn {
            let mut client = TokenServiceClient::new(ch.clone());
            let tenants = tenants.clone();
            let mut rng = Rng::new((ci * 1000 + si + 1) as u64);
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors, mut first) = (Vec::with_capacity(1 << 14), 0u64, None);
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    let tenant = &tenants[rng.below(tenants.len())];
                    let r = client.get_access_token(token_request(tenant)).await;
                    if t < start {
                        continue;
                    }
                    match r {
                        Ok(_) => lat.push(micros(t.elapsed())),
                        Err(s) => {
                            errors += 1;
                            first.get_or_insert_with(|| status_line(&s));
                        }
                    }
                }
                (lat, errors, first)
            }));
        }
    }
    let mut run = gather(tasks).await;
    run.secs = secs;
    run.cpu = cpu.await.unwrap();
    run
}

/// Sequential requests, each on a new TLS connection (handshake + one GetAccessToken).
/// How each handshake iteration connects and what it sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// One shared client TLS configuration: rustls resumes the session (TLS 1.3 PSK with
    /// x25519), as a long-lived caller reconnecting would. Then one GetAccessToken.
    ResumedWithRpc,
    /// A fresh client TLS configuration per connection (no session to resume): the full
    /// handshake with certificate verification on both sides. Then one GetAccessToken.
    FullWithRpc,
    /// Resumed handshake and HTTP/2 preface only, no request: the acceptor alone.
    ResumedConnectOnly,
}

impl Handshake {
    pub fn label(self) -> &'static str {
        match self {
            Handshake::ResumedWithRpc => "handshakes: resumed + 1 RPC",
            Handshake::FullWithRpc => "handshakes: full + 1 RPC",
            Handshake::ResumedConnectOnly => "handshakes: resumed, no RPC",
        }
    }
}

fn endpoint(uri: &str, tls: &tonic::transport::ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(uri.to_owned())
        .unwrap()
        .tls_config(tls.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
}

/// Sequential iterations, each on a new TLS connection.
pub async fn handshake_run(
    uri: String,
    tls: tonic::transport::ClientTlsConfig,
    kind: Handshake,
    tenants: &Arc<Vec<String>>,
    warm: Duration,
    secs: f64,
) -> Run {
    let start = Instant::now() + warm;
    let end = start + Duration::from_secs_f64(secs);
    let cpu = cpu_sampler(start, end);
    let tenants = tenants.clone();
    let task = tokio::spawn(async move {
        let (mut lat, mut errors, mut first) = (Vec::new(), 0u64, None);
        let mut rng = Rng::new(7);
        let shared = endpoint(&uri, &tls);
        loop {
            let t = Instant::now();
            if t >= end {
                break;
            }
            let tenant = tenants[rng.below(tenants.len())].clone();
            let ep = if kind == Handshake::FullWithRpc { endpoint(&uri, &tls) } else { shared.clone() };
            let r = match ep.connect().await {
                Ok(ch) if kind == Handshake::ResumedConnectOnly => {
                    drop(ch);
                    Ok(())
                }
                Ok(ch) => TokenServiceClient::new(ch)
                    .get_access_token(token_request(&tenant))
                    .await
                    .map(|_| ())
                    .map_err(|s| status_line(&s)),
                Err(e) => Err(pogo_vault::client::error_chain(&e)),
            };
            if t < start {
                continue;
            }
            match r {
                Ok(()) => lat.push(micros(t.elapsed())),
                Err(e) => {
                    errors += 1;
                    first.get_or_insert(e);
                }
            }
        }
        (lat, errors, first)
    });
    let mut run = gather(vec![task]).await;
    run.secs = secs;
    run.cpu = cpu.await.unwrap();
    run
}

/// Items `0..n` handed to `workers` tasks, one request in flight each, until all are done.
/// Returns the run (timed from the first to the last request) and every error status.
pub async fn drive_count<F, Fut>(n: usize, workers: usize, f: F) -> (Run, Vec<tonic::Status>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let c0 = cpu_secs();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers.max(1) {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errs) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                match f(i, w).await {
                    Ok(()) => lat.push(micros(t.elapsed())),
                    Err(s) => errs.push(s),
                }
            }
            (lat, errs)
        }));
    }
    let mut run = Run::default();
    let mut errors = Vec::new();
    for t in tasks {
        let (lat, errs) = t.await.unwrap();
        run.lat.extend(lat);
        errors.extend(errs);
    }
    run.secs = t0.elapsed().as_secs_f64();
    run.cpu = cpu_secs() - c0;
    run.lat.sort_unstable();
    run.ok = run.lat.len() as u64;
    run.errors = errors.len() as u64;
    run.first_error = errors.first().map(status_line);
    (run, errors)
}
