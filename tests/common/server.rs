//! A real vault server on 127.0.0.1:0 with generated certificates, a real SQLite vault,
//! the simulator as Go, and clients speaking gRPC over mutual TLS.
//!
//! In a test binary whose name holds `_on_postgres` (`suites_on_postgres.rs` runs the
//! tests of `grpc_api.rs` and seven other suites again), every server's vault and audit
//! log are in a throwaway PostgreSQL cluster of their own instead: the same files are made, then moved over with
//! `storage migrate`'s use case, and the server started on the database. One harness, the
//! same tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pogo_vault::crypto::MasterKeySource;
use pogo_vault::proto::v1::audit_service_client::AuditServiceClient;
use pogo_vault::proto::v1::tenant_service_client::TenantServiceClient;
use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::server::{RunningServer, ServeOptions};
use pogo_vault::sim::Sim;
use pogo_vault::tls::{ClientTlsFiles, DevPki};
use pogo_vault::vault::Vault;
use prost::Message;
use tonic::transport::Channel;

use super::fixture::{self, MASTER_KEY, TRUST, VAULT_DB};

/// The CRL of [`TestServer::start_with_crl`], beside the client CA.
const CRL_FILE: &str = "callers.crl";

/// Simulated clients the test server starts with: [`fixture::sim_key`] `0..8`.
const SIM_CLIENTS: usize = 8;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
    pub sim: Sim,
    pub server: Option<RunningServer>,
    pub endpoint: String,
    pub policy: PathBuf,
    /// Encoded bytes of every response and status seen by [`TestServer::seen`] callers.
    pub seen: Arc<Mutex<Vec<u8>>>,
    /// The cluster holding the vault, in a `_on_postgres` test binary.
    pub pg: Option<super::pg::PgCluster>,
}

/// Whether this test binary runs its servers on PostgreSQL (see the module docs).
pub fn on_postgres() -> bool {
    std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().contains("_on_postgres")))
        == Some(true)
}

/// Moves the vault made under `dir` into a new cluster (database `vault`).
pub fn move_to_postgres(dir: &Path) -> super::pg::PgCluster {
    let cluster = super::pg::PgCluster::start(&[]);
    cluster.create_database("vault");
    let db = dir.join(VAULT_DB);
    let rec =
        pogo_vault::audit::AuditRecord::new(pogo_vault::audit::Action::StorageMoved, pogo_vault::audit::Outcome::Ok)
            .caller("test-harness", "")
            .request("", "local");
    pogo_vault::usecase::storage_move::migrate_to_postgres(
        &db,
        &pogo_vault::config::default_audit_db(&db),
        &MasterKeySource::KeyFile(dir.join(MASTER_KEY)),
        &cluster.options("vault"),
        rec,
    )
    .unwrap();
    cluster
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A test server whose callers are also checked against a CRL (revoking nothing yet);
    /// [`TestServer::revoke`] lists a caller in it, in force after a reload.
    pub async fn start_with_crl() -> TestServer {
        Self::start_with_crl_and(|_| {}).await
    }

    /// [`TestServer::start_with_crl`], then `tweak`.
    pub async fn start_with_crl_and(tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
        Self::start_with(|o| {
            Self::with_crl(o);
            tweak(o);
        })
        .await
    }

    /// Makes `o` check callers against a CRL revoking nothing yet ([`TestServer::revoke`]).
    pub fn with_crl(o: &mut ServeOptions) {
        let crl = o.tls.client_ca.with_file_name(CRL_FILE);
        let ca_key = o.tls.client_ca.with_file_name("ca-key.pem");
        pogo_vault::tls::issue_crl(&o.tls.client_ca, &ca_key, &[], &crl).unwrap();
        o.tls.crls = vec![crl];
    }

    /// Lists the certificate of caller `name` in the CRL of [`TestServer::start_with_crl`]
    /// (read by the server at its next reload).
    pub fn revoke(&self, name: &str) {
        let pem = std::fs::read(self.files(name).cert).unwrap();
        let der = rustls_pemfile::certs(&mut &pem[..]).next().unwrap().unwrap();
        let serial = pogo_vault::tls::identity_from_der(der.as_ref()).unwrap().serial;
        let crl = self.pki.ca_cert.with_file_name(CRL_FILE);
        pogo_vault::tls::issue_crl(&self.pki.ca_cert, &self.pki.ca_key, &[serial], &crl).unwrap();
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
        Self::start_with_policy("", tweak).await
    }

    /// A test server with the API gateway on (a free loopback port) and `extra` grants in
    /// its policy, then `tweak`.
    pub async fn start_gateway(extra: &str, tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
        Self::start_with_policy(extra, |o| {
            o.gateway = Some(pogo_vault::server::GatewayOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                max_request_bytes: 32 * 1024 * 1024,
                max_response_bytes: 64 * 1024 * 1024,
                replay_body_bytes: 64 * 1024,
                upstream: pogo_vault::upstream::UpstreamConfig {
                    connect_timeout: Duration::from_secs(2),
                    request_timeout: Duration::from_secs(30),
                },
                max_queue_wait: Duration::from_secs(2),
            });
            tweak(o);
        })
        .await
    }

    /// Issues a client certificate for `spiffe://TRUST/service/{name}` (files `{name}.pem`).
    pub fn issue(&self, name: &str) {
        pogo_vault::tls::issue_client_cert(
            &self.pki.ca_cert,
            &self.pki.ca_key,
            &self.pki.dir.join(format!("{name}.pem")),
            &self.pki.dir.join(format!("{name}-key.pem")),
            Some(&format!("spiffe://{TRUST}/service/{name}")),
            None,
            name,
        )
        .unwrap();
    }

    /// The gateway's base URL (`https://localhost:PORT`).
    pub fn gateway_url(&self) -> String {
        format!("https://localhost:{}", self.server().gateway_addr.unwrap().port())
    }

    /// An HTTPS client of the gateway as caller `name`, speaking HTTP/2 when `h2`, else
    /// HTTP/1.1 (ALPN).
    pub fn https(&self, name: &str, h2: bool) -> reqwest::Client {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = pogo_vault::tls::https_client_config(&self.files(name), alpn).unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve("localhost", self.server().gateway_addr.unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    pub async fn start_with_policy(extra: &str, tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sim = fixture::start_sim(1000).await;
        fixture::add_sim_clients(&sim, SIM_CLIENTS);
        let (pki, vault) = fixture::serve_files(dir.path(), &sim, &fixture::policy_text(extra));
        drop(vault);
        // Extra callers: one limited to a-*, one the policy does not know, one from a foreign CA.
        let issue = |name: &str, spiffe: Option<&str>, dns: Option<&str>| {
            pogo_vault::tls::issue_client_cert(
                &pki.ca_cert,
                &pki.ca_key,
                &pki.dir.join(format!("{name}.pem")),
                &pki.dir.join(format!("{name}-key.pem")),
                spiffe,
                dns,
                name,
            )
            .unwrap();
        };
        issue("a-only", Some(&format!("spiffe://{TRUST}/service/a-only")), None);
        issue("stranger", Some(&format!("spiffe://{TRUST}/service/stranger")), None);
        issue("dns-caller", None, Some("billing.internal.example"));
        let foreign = dir.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        pogo_vault::tls::generate_ca(&foreign.join("ca.pem"), &foreign.join("ca-key.pem"), "foreign CA").unwrap();
        pogo_vault::tls::issue_client_cert(
            &foreign.join("ca.pem"),
            &foreign.join("ca-key.pem"),
            &foreign.join("admin.pem"),
            &foreign.join("admin-key.pem"),
            Some(&format!("spiffe://{TRUST}/service/admin")),
            None,
            "admin",
        )
        .unwrap();

        let policy = dir.path().join(fixture::POLICY);
        let pg = match on_postgres() {
            // The cluster's set-up uses blocking clients: off the async workers.
            true => {
                let path = dir.path().to_owned();
                Some(tokio::task::spawn_blocking(move || move_to_postgres(&path)).await.unwrap())
            }
            false => None,
        };
        let mut opts = options_for(dir.path(), &pki, &policy);
        opts.postgres = pg.as_ref().map(|c| c.options("vault"));
        tweak(&mut opts);
        let server = pogo_vault::server::start(opts).await.unwrap();
        assert_eq!(server.state.vault.backend() == pogo_vault::store::Backend::Postgres, pg.is_some());
        let endpoint = format!("https://{}", server.addr);
        TestServer { dir, pki, sim, server: Some(server), endpoint, policy, seen: Arc::default(), pg }
    }

    /// Options for another server on this test server's files (after `stop`, or to show
    /// that a second one is refused while it runs).
    pub fn options(&self) -> ServeOptions {
        let mut o = options_for(self.dir.path(), &self.pki, &self.policy);
        o.postgres = self.pg.as_ref().map(|c| c.options("vault"));
        o
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn files(&self, name: &str) -> ClientTlsFiles {
        match name {
            "foreign" => ClientTlsFiles {
                ca: self.pki.ca_cert.clone(),
                cert: self.dir.path().join("foreign/admin.pem"),
                key: self.dir.path().join("foreign/admin-key.pem"),
            },
            n => ClientTlsFiles {
                ca: self.pki.ca_cert.clone(),
                cert: self.pki.dir.join(format!("{n}.pem")),
                key: self.pki.dir.join(format!("{n}-key.pem")),
            },
        }
    }

    /// The options that point a CLI command at this server as caller `name`.
    pub fn cli_args(&self, name: &str) -> Vec<String> {
        let f = self.files(name);
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let mut args = vec!["--endpoint".to_owned(), self.endpoint.clone()];
        args.extend([
            "--ca".to_owned(),
            path(&f.ca),
            "--cert".to_owned(),
            path(&f.cert),
            "--key".to_owned(),
            path(&f.key),
        ]);
        args.extend(["--server-name".to_owned(), "localhost".to_owned()]);
        args
    }

    pub async fn channel(&self, name: &str) -> Channel {
        pogo_vault::client::connect(&self.endpoint, &self.files(name), Some("localhost")).await.unwrap()
    }

    pub async fn token_client(&self, name: &str) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel(name).await)
    }

    pub async fn tenant_client(&self, name: &str) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel(name).await)
    }

    pub async fn audit_client(&self, name: &str) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel(name).await)
    }

    /// Registers demo tenant `tenant` with [`fixture::sim_key`]`(key)` as `admin`, validated
    /// with Go (the simulator).
    pub async fn register(&self, tenant: &str, key: usize) {
        let mut admin = self.tenant_client("admin").await;
        admin.register_client_key(fixture::register_request(tenant, key)).await.unwrap();
    }

    /// Records a response's encoded bytes (or a status's message and details) for the
    /// leak scan, and passes it on.
    pub fn seen<T: Message>(&self, r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, tonic::Status> {
        let mut seen = self.seen.lock().unwrap();
        match r {
            Ok(resp) => {
                let m = resp.into_inner();
                seen.extend_from_slice(&m.encode_to_vec());
                Ok(m)
            }
            Err(s) => {
                seen.extend_from_slice(s.message().as_bytes());
                seen.extend_from_slice(s.details());
                Err(s)
            }
        }
    }

    pub fn vault(&self) -> Vault {
        let key = MasterKeySource::KeyFile(self.dir.path().join(MASTER_KEY));
        match &self.pg {
            Some(c) => Vault::unlock_postgres(&c.options("vault"), &key).unwrap(),
            None => Vault::unlock(&self.dir.path().join(VAULT_DB), &key).unwrap(),
        }
    }

    /// The audit database file; on PostgreSQL a snapshot of the log copied out into a new
    /// file (`storage export`'s copy), for tests that read the log as a file.
    pub fn audit_db(&self) -> PathBuf {
        let Some(c) = &self.pg else { return pogo_vault::config::default_audit_db(&self.dir.path().join(VAULT_DB)) };
        static SNAPSHOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = self
            .dir
            .path()
            .join(format!("pg-audit-{}.db", SNAPSHOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        let from = pogo_vault::audit::AuditLocation::Postgres(c.options("vault"));
        let to = pogo_vault::audit::AuditLocation::File(path.clone());
        // Blocking client calls: on a thread of their own (callers may be async workers).
        std::thread::scope(|s| s.spawn(|| pogo_vault::audit::copy_audit(&from, &to).unwrap()).join().unwrap());
        path
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

/// The options of a test server on files laid out by `fixture::serve_files` in `dir`.
pub fn options_on(dir: &Path, pki: &DevPki, policy: &Path) -> ServeOptions {
    options_for(dir, pki, policy)
}

/// The test server's options: its files under `dir`, loopback listeners on free ports.
fn options_for(dir: &Path, pki: &DevPki, policy: &Path) -> ServeOptions {
    let db = dir.join(VAULT_DB);
    ServeOptions {
        db: db.clone(),
        audit_db: pogo_vault::config::default_audit_db(&db),
        master_key: MasterKeySource::KeyFile(dir.join(MASTER_KEY)),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: pki.server_files(),
        policy: policy.to_owned(),
        upstream: pogo_vault::upstream::UpstreamConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        },
        tokens: pogo_vault::tokens::BrokerConfig::default(),
        audit: pogo_vault::audit::AuditConfig::default(),
        max_request_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(10),
        concurrency_limit_per_connection: 64,
        handshake_timeout: Duration::from_secs(5),
        max_pending_handshakes_per_address: pogo_vault::server::conn::DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
        return_subscription_key: false,
        caller_requests_per_second: pogo_vault::server::DEFAULT_CALLER_REQUESTS_PER_SECOND,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        health_listen: Some("127.0.0.1:0".parse().unwrap()),
        watch_files: None,
        spiffe: None,
        gateway: None,
        postgres: None,
    }
}
