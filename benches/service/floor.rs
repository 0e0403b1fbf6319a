//! The floors: the same acceptor, TLS configuration and transport settings as the vault,
//! in front of a `TokenService` that does nothing (the floor), or nothing but make a record
//! of the vault's size durable before it answers (the durable floor: `Journal`).

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use pogo_vault::proto::v1 as pb;
use pogo_vault::proto::v1::token_service_server::{TokenService, TokenServiceServer};
use pogo_vault::server::{ServeOptions, conn};
use tokio::sync::{mpsc, watch};

/// The keep-alive interval `server::start` sets (not configurable), used for the floor too.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// The floor: tonic's generated `TokenService` server with no gate, no broker, no audit,
/// answering a canned response of a real response's size; with a journal, only after a
/// record of the vault's size is durable in it.
struct Floor {
    canned: pb::GetAccessTokenResponse,
    journal: Option<Arc<Journal>>,
}

#[tonic::async_trait]
impl TokenService for Floor {
    async fn get_access_token(
        &self,
        _req: tonic::Request<pb::GetAccessTokenRequest>,
    ) -> Result<tonic::Response<pb::GetAccessTokenResponse>, tonic::Status> {
        if let Some(j) = &self.journal {
            j.append().await;
        }
        Ok(tonic::Response::new(self.canned.clone()))
    }
}

/// The physical limit of "durable before the answer": one thread that writes every queued
/// record (up to `MAX_BATCH`, the vault writer's batch limit) with one `pwrite` and one
/// `fdatasync`, then answers them; appenders queue while it writes, as the vault's group
/// commit does. The file is a preallocated ring of `RING` bytes (the size of SQLite's WAL
/// before its checkpoint), so `fdatasync` flushes data, never a growing file's metadata.
pub struct Journal {
    queue: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    writer: std::sync::OnceLock<Thread>,
}

const MAX_BATCH: usize = 1024;
const RING: u64 = 4 << 20;

impl Journal {
    /// Starts the writer thread on a new file in `dir`; records are `record_bytes` long.
    pub fn start(dir: &Path, record_bytes: usize) -> Arc<Journal> {
        let file = File::create(dir.join("durable-floor.journal")).unwrap();
        file.write_all_at(&vec![0u8; RING as usize], 0).unwrap();
        file.sync_all().unwrap();
        let j = Arc::new(Journal { queue: Mutex::new(Vec::new()), writer: std::sync::OnceLock::new() });
        let weak = Arc::downgrade(&j);
        let t = std::thread::Builder::new()
            .name("durable-floor".into())
            .spawn(move || {
                let record = vec![0x5au8; record_bytes];
                let mut buf = Vec::with_capacity(record_bytes * 64);
                let mut offset = 0u64;
                loop {
                    let Some(j) = weak.upgrade() else { return };
                    let batch = {
                        let mut q = j.queue.lock().unwrap();
                        let n = q.len().min(MAX_BATCH);
                        q.drain(..n).collect::<Vec<_>>()
                    };
                    drop(j);
                    if batch.is_empty() {
                        std::thread::park_timeout(Duration::from_millis(50));
                        continue;
                    }
                    buf.clear();
                    for _ in 0..batch.len() {
                        buf.extend_from_slice(&record);
                    }
                    if offset + buf.len() as u64 > RING {
                        offset = 0;
                    }
                    file.write_all_at(&buf, offset).unwrap();
                    file.sync_data().unwrap();
                    offset += buf.len() as u64;
                    for done in batch {
                        let _ = done.send(());
                    }
                }
            })
            .unwrap();
        let _ = j.writer.set(t.thread().clone());
        j
    }

    async fn append(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut q = self.queue.lock().unwrap();
            q.push(tx);
            q.len() == 1
        };
        if first && let Some(t) = self.writer.get() {
            t.unpark();
        }
        let _ = rx.await;
    }
}

pub struct FloorServer {
    pub addr: SocketAddr,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The floor with the vault's own transport settings (`opts`): TLS files, handshake
/// timeout, request timeout, per-connection concurrency, message size.
pub async fn start_floor(
    opts: &ServeOptions,
    canned: pb::GetAccessTokenResponse,
    journal: Option<Arc<Journal>>,
) -> FloorServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The same TLS configuration and the same acceptor as the vault (`server::start` does
    // exactly this with the configured files).
    let tls = Arc::new(conn::TlsState::new(pogo_vault::tls::load_server_tls(&opts.tls).unwrap()));
    let (stop, stop_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::channel(256);
    tokio::spawn(conn::accept_loop(
        listener,
        (tls, conn::Listener::Grpc),
        opts.handshake_limits(),
        conn_tx,
        stop_rx.clone(),
    ));
    let router = tonic::transport::Server::builder()
        .timeout(opts.request_timeout)
        .concurrency_limit_per_connection(opts.concurrency_limit_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .add_service(
            TokenServiceServer::new(Floor { canned, journal }).max_decoding_message_size(opts.max_request_bytes),
        );
    let mut wait = stop_rx;
    let task = tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::ReceiverStream::new(conn_rx),
        async move {
            let _ = wait.wait_for(|s| *s).await;
        },
    ));
    FloorServer { addr, stop, task }
}
