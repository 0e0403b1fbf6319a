//! Starting and stopping the server: open the vault (checking the master key), the audit
//! log, the policy and TLS; bind; serve every service behind the gate; health; metrics;
//! graceful shutdown with a final record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::state::{Caller, Extra, ServerState};
use super::{audit_svc, conn, layer, metrics, onboarding_svc, operator_svc, reload, status_svc, tenant_svc, token_svc};
use crate::audit::{Action, AuditLog, Outcome};
use crate::authz::Authorizer;
use crate::crypto::MasterKeySource;
use crate::proto::v1::audit_service_server::AuditServiceServer;
use crate::proto::v1::onboarding_service_server::OnboardingServiceServer;
use crate::proto::v1::operator_service_server::OperatorServiceServer;
use crate::proto::v1::status_service_server::StatusServiceServer;
use crate::proto::v1::tenant_service_server::TenantServiceServer;
use crate::proto::v1::token_service_server::TokenServiceServer;
use crate::tls::{CallerIdentity, ServerTlsFiles};
use crate::tokens::{Broker, Clock, SystemClock};
use crate::upstream::GoClient;
use crate::vault::Vault;

/// How long in-flight requests may take to finish after a stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The identity recorded for the server's own actions (start, stop, reloads).
fn server_caller(addr: SocketAddr) -> Caller {
    Caller {
        identity: Arc::new(CallerIdentity {
            id: crate::tokens::SERVER_IDENTITY.into(),
            kind: crate::tls::IdentityKind::CommonName,
            serial: String::new(),
        }),
        peer: addr,
        peer_text: addr.to_string().into(),
        request_id: layer::new_request_id(),
        client_request_id: None,
    }
}

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error(transparent)]
    Policy(#[from] crate::authz::PolicyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("upstream client: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("server failed: {0}")]
    Transport(String),
}

/// What the server needs to start, already validated.
/// GetAccessToken requests a second per caller identity when neither the configuration
/// nor the caller's grant says otherwise: generous (Go itself allows about 10 a second for
/// the whole integration), and a bound on how fast one caller can grow the audit log.
pub const DEFAULT_CALLER_REQUESTS_PER_SECOND: f64 = 100.0;
/// How often `[server] watch_files` looks at the files (a change is reloaded once two
/// looks agree: within about a second).
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

pub struct ServeOptions {
    pub db: std::path::PathBuf,
    pub audit_db: std::path::PathBuf,
    pub master_key: MasterKeySource,
    pub listen: SocketAddr,
    pub tls: ServerTlsFiles,
    pub policy: std::path::PathBuf,
    pub upstream: crate::upstream::UpstreamConfig,
    pub tokens: crate::tokens::BrokerConfig,
    pub audit: crate::audit::AuditConfig,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    pub concurrency_limit_per_connection: usize,
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once from one source address (see [`conn`]).
    pub max_pending_handshakes_per_address: usize,
    pub return_subscription_key: bool,
    /// GetAccessToken requests a second per caller identity, unless its policy grant says
    /// otherwise (`usecase::caller_budget`).
    pub caller_requests_per_second: f64,
    /// Where to serve Prometheus metrics (plain HTTP; keep it on loopback or a private
    /// network). `None`: no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// A plaintext listener serving only `grpc.health.v1` (for Kubernetes' native gRPC
    /// probes, which present no client certificate). `None`: no such listener.
    pub health_listen: Option<SocketAddr>,
    /// Watch the certificate, key, client CA bundle, CRLs and policy file, and reload
    /// what changed, looking this often (`server/watch.rs`). `None`: only on SIGHUP.
    pub watch_files: Option<Duration>,
    /// The server's TLS from the SPIFFE Workload API instead of `tls`'s files
    /// (`server/spiffe.rs`). `None`: from the files.
    pub spiffe: Option<super::spiffe::SpiffeOptions>,
    /// The HTTPS gateway to Go's API (`server/gateway/`). `None`: off.
    pub gateway: Option<super::GatewayOptions>,
    /// The vault and its audit log in this PostgreSQL database instead of `db` and
    /// `audit_db` (`[storage] backend = "postgres"`); every replica on it serves.
    pub postgres: Option<crate::store::PostgresOptions>,
}

impl ServeOptions {
    /// The acceptor's bounds on anonymous peers.
    pub fn handshake_limits(&self) -> conn::HandshakeLimits {
        conn::HandshakeLimits::new(self.handshake_timeout, self.max_pending_handshakes_per_address)
    }
}

/// A running server: its address, and how to reload and stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where metrics are served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The plaintext health-only listener, when enabled.
    pub health_addr: Option<SocketAddr>,
    /// The API gateway's listener, when enabled.
    pub gateway_addr: Option<SocketAddr>,
    pub state: Arc<ServerState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    reload: mpsc::Sender<reload::Request>,
}

impl RunningServer {
    /// Re-reads certificates, CRLs and policy (what SIGHUP does). Waits until done.
    pub async fn reload(&self) {
        let (request, wait) = reload::Request::new(reload::Parts::ALL);
        if self.reload.send(request).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Graceful stop: no new connections, in-flight requests finish, final checkpoint.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| ServeError::Transport(e.to_string()))?
    }

    /// Resolves when the server stops by itself (fatal error) or after `shutdown`.
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        (&mut self.task).await.map_err(|e| ServeError::Transport(e.to_string()))?
    }

    pub fn stop_signal(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Opens everything, checks the master key, binds, and starts serving in the background.
pub async fn start(opts: ServeOptions) -> Result<RunningServer, ServeError> {
    start_with_clock(opts, Arc::new(SystemClock)).await
}

pub async fn start_with_clock(opts: ServeOptions, clock: Arc<dyn Clock>) -> Result<RunningServer, ServeError> {
    // One process changes a database at a time: held until the server stops (see
    // `store::lock`); a CLI command that writes is refused meanwhile.
    // On PostgreSQL, replicas and commands write side by side, serialised by advisory locks.
    let db_lock = match &opts.postgres {
        None => Some(
            crate::store::lock::DbLock::acquire(&opts.db, crate::store::lock::Holder::Server)
                .map_err(|e| ServeError::Config(e.to_string()))?,
        ),
        Some(_) => None,
    };
    let (db, key_source, postgres) = (opts.db.clone(), opts.master_key.clone(), opts.postgres.clone());
    let vault = tokio::task::spawn_blocking(move || match &postgres {
        None => Vault::unlock(&db, &key_source),
        Some(o) => Vault::unlock_postgres(o, &key_source),
    })
    .await
    .map_err(|e| ServeError::Transport(e.to_string()))??;
    let vault = Arc::new(vault);
    // Every vault call off the async workers (PostgreSQL's client runs its own runtime).
    let v = vault.clone();
    let signing_key = tokio::task::spawn_blocking(move || v.audit_signing_key())
        .await
        .map_err(|e| ServeError::Transport(e.to_string()))??;
    let (audit_db, audit_cfg, postgres) = (opts.audit_db.clone(), opts.audit.clone(), opts.postgres.clone());
    let audit = tokio::task::spawn_blocking(move || match &postgres {
        None => AuditLog::open(&audit_db, signing_key, audit_cfg),
        Some(o) => AuditLog::open_postgres(o, signing_key, audit_cfg),
    })
    .await
    .map_err(|e| ServeError::Transport(e.to_string()))??;
    // What the watched files look like before they are loaded: a change from here on is
    // reloaded (`watch.rs`).
    let tls_source = match &opts.spiffe {
        None => super::spiffe::TlsSource::Files(opts.tls.clone()),
        Some(s) => super::spiffe::TlsSource::spiffe(s).await.map_err(ServeError::Config)?,
    };
    // With SPIFFE no certificate file is watched: the agent's updates ask for reloads.
    let tls_files = matches!(tls_source, super::spiffe::TlsSource::Files(_)).then_some(&opts.tls);
    let watched = super::watch::Files::new(tls_files, &opts.policy);
    let authz = Arc::new(Authorizer::load(opts.policy.clone())?);
    let tls = Arc::new(conn::TlsState::new(match &tls_source {
        super::spiffe::TlsSource::Files(files) => crate::tls::load_server_tls(files)?,
        spiffe => spiffe.load().map_err(ServeError::Config)?.0,
    }));
    let go = GoClient::new(&opts.upstream)?;
    // On PostgreSQL the replicas share one upstream budget and their tokens (`store::shared`).
    let shared = match &opts.postgres {
        Some(o) => {
            let o = o.clone();
            let shared = tokio::task::spawn_blocking(move || crate::store::shared::Shared::connect(&o))
                .await
                .map_err(|e| ServeError::Config(e.to_string()))?
                .map_err(|e| ServeError::Config(format!("shared state on PostgreSQL: {e}")))?;
            Some(Arc::new(shared))
        }
        None => None,
    };
    let broker = Broker::sharing(vault.clone(), go, opts.tokens.clone(), clock, audit.clone(), shared);
    // On PostgreSQL other replicas change the vault too: follow their changes.
    let feed = match &opts.postgres {
        Some(o) => {
            let feed = crate::store::changes::ChangeFeed::start_ignoring(o.clone(), vault.change_origin())
                .map_err(|e| ServeError::Config(e.to_string()))?;
            // Subscribed now, before anything is cached or served: no change is missed.
            let changes = feed.subscribe();
            Some((Arc::new(feed), changes))
        }
        None => None,
    };
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| ServeError::Listen { addr: opts.listen, reason: e.to_string() })?;
    let addr = listener.local_addr().map_err(|e| ServeError::Listen { addr: opts.listen, reason: e.to_string() })?;
    let gateway_listener = match &opts.gateway {
        Some(g) => Some(
            super::gateway::bind(g).await.map_err(|e| ServeError::Listen { addr: g.listen, reason: e.to_string() })?,
        ),
        None => None,
    };
    let gateway_addr = gateway_listener.as_ref().map(|(_, a)| *a);

    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(ServerState {
        vault: vault.clone(),
        broker: broker.clone(),
        authz: authz.clone(),
        audit: audit.clone(),
        return_subscription_key: opts.return_subscription_key,
        caller_requests_per_second: opts.caller_requests_per_second,
        disclosures: crate::usecase::Disclosures::default(),
        budgets: crate::usecase::CallerBudgets::default(),
        stopping: stop_rx.clone(),
        tls: tls.clone(),
        metrics: crate::metrics::ServerMetrics::default(),
        started_at: SystemTime::now(),
        reloaded: watch::Sender::new(0),
        registry: crate::usecase::Registry::new(vault.clone(), broker.clone()),
        onboarding: crate::usecase::Onboarding::new(vault.clone(), broker.clone()),
        integrations: crate::usecase::Integrations::new(vault.clone(), broker.clone()),
        watchers: std::sync::Mutex::default(),
        watch_limits: (opts.audit.max_watch_streams_per_caller.max(1), opts.audit.max_watch_streams.max(1)),
    });
    let me = server_caller(addr);
    state
        .record(
            &me,
            Action::ServerStarted,
            None,
            Outcome::Ok,
            &match gateway_addr {
                None => format!("listening on {addr}, master key {}", vault.kek_id()),
                Some(g) => format!("listening on {addr} and the API gateway on {g}, master key {}", vault.kek_id()),
            },
            Extra::default(),
        )
        .await
        .map_err(|s| ServeError::Transport(s.message().to_owned()))?;

    let v = vault.clone();
    let integrations = tokio::task::spawn_blocking(move || v.integrations())
        .await
        .map_err(|e| ServeError::Transport(e.to_string()))??;
    for i in integrations {
        if !crate::vault::is_go_base_url(&i.base_url) {
            tracing::warn!(
                environment = %i.environment,
                host = %crate::vault::base_url_origin(&i.base_url),
                "the integration's base URL is not PowerOffice Go's: every client key of this environment is sent there (set with --allow-custom-base-url)"
            );
        }
    }

    let gateway_task = match (gateway_listener, &opts.gateway) {
        (Some(l), Some(g)) => Some(
            super::gateway::start(l, g, state.clone(), (opts.handshake_limits(), SHUTDOWN_GRACE), stop_rx.clone())
                .map_err(|e| ServeError::Config(e.to_string()))?,
        ),
        _ => None,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Transport(e.to_string()))?;

    let (conn_tx, conn_rx) = mpsc::channel(256);
    tokio::spawn(conn::accept_loop(
        listener,
        (tls.clone(), conn::Listener::Grpc),
        opts.handshake_limits(),
        conn_tx,
        stop_rx.clone(),
    ));

    // Health: SERVING only while the store is open (it is: we got here with the master key
    // checked) and the audit log commits; follows audit health from then on.
    let health_task = tokio::spawn(health_loop(health_reporter, audit.clone(), vault.clone(), stop_rx.clone()));
    let background = broker.spawn_background();
    let feed = feed.map(|(feed, changes)| {
        let (broker, stop, following) = (broker.clone(), stop_rx.clone(), feed.clone());
        tokio::spawn(async move { broker.follow_changes(&following, changes, stop).await });
        feed
    });
    let refusals_task = tokio::spawn(super::refusals::record_loop(state.clone(), stop_rx.clone()));

    let (reload_tx, reload_rx) = mpsc::channel(4);
    tls_source.follow(reload_tx.clone(), stop_rx.clone());
    tokio::spawn(reload::reload_loop(
        reload_rx,
        reload_tx.clone(),
        state.clone(),
        tls.clone(),
        tls_source,
        me.clone(),
        watched.clone(),
    ));
    reload::spawn_sighup(reload_tx.clone());
    if let Some(every) = opts.watch_files {
        super::watch::spawn(watched, every, reload_tx.clone(), stop_rx.clone());
    }

    let health_addr = match opts.health_listen {
        Some(listen) => {
            let l = TcpListener::bind(listen)
                .await
                .map_err(|e| ServeError::Listen { addr: listen, reason: e.to_string() })?;
            let a = l.local_addr().map_err(|e| ServeError::Listen { addr: listen, reason: e.to_string() })?;
            let mut stop = stop_rx.clone();
            let health = health_service.clone();
            tokio::spawn(async move {
                // Health only: no other service is reachable without mutual TLS.
                let served = tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(l), async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "health listener failed");
                }
            });
            Some(a)
        }
        None => None,
    };

    let max = opts.max_request_bytes;
    let token = TokenServiceServer::new(token_svc::TokenSvc { state: state.clone() }).max_decoding_message_size(max);
    let tenant =
        TenantServiceServer::new(tenant_svc::TenantSvc { state: state.clone() }).max_decoding_message_size(max);
    let audit_svc =
        AuditServiceServer::new(audit_svc::AuditSvc { state: state.clone() }).max_decoding_message_size(max);
    let onboarding = OnboardingServiceServer::new(onboarding_svc::OnboardingSvc { state: state.clone() })
        .max_decoding_message_size(max);

    let router = tonic::transport::Server::builder()
        .timeout(opts.request_timeout)
        .concurrency_limit_per_connection(opts.concurrency_limit_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(layer::GateLayer { state: state.clone() })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(token)
        .add_service(tenant)
        .add_service(audit_svc)
        .add_service(onboarding)
        .add_service(StatusServiceServer::new(status_svc::StatusSvc { state: state.clone() }))
        .add_service(
            OperatorServiceServer::new(operator_svc::OperatorSvc {
                state: state.clone(),
                master_key: opts.master_key.clone(),
            })
            .max_decoding_message_size(max),
        );

    let mut stop_wait = stop_rx.clone();
    let mut grace_wait = stop_rx.clone();
    let final_state = state.clone();
    let task = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
            let _ = stop_wait.wait_for(|s| *s).await;
        });
        // In-flight requests get SHUTDOWN_GRACE to finish after the stop; then we go anyway.
        let served = tokio::select! {
            r = serve => r,
            _ = async {
                let _ = grace_wait.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
                Ok(())
            }
        };
        // Gateway requests still open finish first (bounded inside the task): their
        // records go before the stop's.
        if let Some(t) = gateway_task {
            let _ = t.await;
        }
        background.abort();
        health_task.abort();
        // The task ends at the stop signal once its current records are written (not
        // aborted: windows it has taken would be lost); bounded like any append.
        if tokio::time::timeout(Duration::from_secs(3), refusals_task).await.is_err() {
            tracing::warn!("budget refusals still being recorded at the stop; some windows may be unrecorded");
        }
        super::refusals::record_all(&final_state).await;
        if let Err(e) = final_state.broker.flush_last_served().await {
            tracing::warn!(error = %e, "could not record last-token times at shutdown");
        }
        let stopped = final_state
            .record(&me, Action::ServerStopped, None, Outcome::Ok, "graceful shutdown", Extra::default())
            .await;
        if stopped.is_err() {
            tracing::error!("could not audit the server stop");
        }
        final_state.audit.shutdown().await;
        drop(feed);
        drop(db_lock);
        served.map_err(|e| ServeError::Transport(e.to_string()))
    });
    let metrics_addr = match opts.metrics_listen {
        Some(listen) => Some(
            metrics::serve(listen, scrape(state.clone()), stop_rx.clone())
                .await
                .map_err(|e| ServeError::Listen { addr: listen, reason: e.to_string() })?,
        ),
        None => None,
    };
    // `%`, not `?`: a log line says `127.0.0.1:9464` or `off`, never `Some(127.0.0.1:9464)`.
    let metrics_shown = metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(%addr, metrics = %metrics_shown, "pogo-vault serving gRPC over mutual TLS");
    Ok(RunningServer { addr, metrics_addr, health_addr, gateway_addr, state, stop: stop_tx, task, reload: reload_tx })
}

/// The health service's name for the master key: NOT_SERVING while its HSM is away.
pub const MASTER_KEY_HEALTH: &str = "pogo_vault.MasterKey";

/// Health: every service follows the audit log (nothing is served without its record). The
/// master key's HSM has a status of its own ([`MASTER_KEY_HEALTH`]), and while it is away
/// `TenantService` is NOT_SERVING too (registering seals a key); the whole server stays
/// SERVING, since cached tokens keep flowing and a mint that needs an unwrap fails
/// `UNAVAILABLE` on its own.
async fn health_loop(
    reporter: tonic_health::server::HealthReporter,
    audit: AuditLog,
    vault: Arc<Vault>,
    mut stop: watch::Receiver<bool>,
) {
    let services = ["", "pogo_vault.v1.TokenService", "pogo_vault.v1.AuditService"];
    let serving =
        |ok: bool| if ok { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
    let mut last = None;
    loop {
        let healthy = audit.is_healthy() && !*stop.borrow();
        let hsm = vault.master_key_health();
        let key_ok = hsm.as_ref().is_none_or(Result::is_ok);
        if last != Some((healthy, key_ok)) {
            for s in services {
                reporter.set_service_status(s, serving(healthy)).await;
            }
            reporter.set_service_status("pogo_vault.v1.TenantService", serving(healthy && key_ok)).await;
            reporter.set_service_status(MASTER_KEY_HEALTH, serving(key_ok && !*stop.borrow())).await;
            if last.is_some() && !*stop.borrow() {
                match &hsm {
                    Some(Err(why)) => tracing::warn!(serving = healthy, master_key = %why, "health changed"),
                    _ => tracing::warn!(serving = healthy, master_key_ok = key_ok, "health changed"),
                }
            }
            last = Some((healthy, key_ok));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The metrics listener's renderer: one scrape of `state` per request.
fn scrape(state: Arc<ServerState>) -> metrics::Scrape {
    Arc::new(move || {
        let state = state.clone();
        Box::pin(async move { state.metrics_text().await })
    })
}
