//! Where the server's TLS comes from: files (reloaded on change or SIGHUP) or the SPIFFE
//! Workload API (`[server] tls_source = "spiffe"`): the vault's X.509-SVID and the trust
//! bundles, from the agent's socket (`spiffe_socket`, else `SPIFFE_ENDPOINT_SOCKET`), via the
//! `spiffe` crate's `X509Source`.
//!
//! Rotation goes through the reload loop like a file change: every update the agent pushes
//! asks for a TLS reload, which reads the source's current SVID and bundles, builds the
//! configuration, makes its `certificates_reloaded` record durable, and only then swaps it
//! in (audit before effect; a record that cannot be written keeps the old configuration in
//! force and is retried). Connections made before a swap are checked again against the new
//! bundles on their next request, as after a file reload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{mpsc, watch};

use super::reload_request::{Parts, Request};
use crate::tls::{ServerTls, ServerTlsFiles, SpiffeMaterial};

/// How long the start waits for the agent's first SVID.
const FIRST_SVID_WAIT: Duration = Duration::from_secs(30);

/// `[server] tls_source = "spiffe"`: the agent's socket and the callers' trust domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeOptions {
    /// The Workload API endpoint (`unix:/run/spire/agent.sock` or `unix:///...`).
    pub socket: String,
    /// Trust domains whose callers are accepted (their bundles must come from the agent;
    /// federated ones included). Empty: the vault's own trust domain only.
    pub trust_domains: Vec<String>,
}

/// Where the server's certificate, key and callers' CAs come from.
pub(super) enum TlsSource {
    Files(ServerTlsFiles),
    Spiffe {
        source: Arc<spiffe::X509Source>,
        trust_domains: Vec<String>,
        /// Subscribed before the first load, so no push between it and `follow` is missed.
        updates: std::sync::Mutex<Option<spiffe::X509SourceUpdates>>,
    },
}

impl TlsSource {
    /// Reads the current material and builds the server's TLS from it; with what a reload
    /// record says was put in force (described from that same material).
    pub(super) fn load(&self) -> Result<(ServerTls, String), String> {
        match self {
            TlsSource::Files(files) => crate::tls::load_server_tls(files)
                .map(|t| (t, "certificates and CRLs reloaded".to_owned()))
                .map_err(|e| e.to_string()),
            TlsSource::Spiffe { source, trust_domains, .. } => {
                let m = material(source)?;
                let detail = m.describe();
                let tls = crate::tls::spiffe_server_tls(m, trust_domains).map_err(|e| e.to_string())?;
                Ok((tls, detail))
            }
        }
    }

    /// Opens the Workload API and waits (bounded) for the first SVID.
    pub(super) async fn spiffe(opts: &SpiffeOptions) -> Result<TlsSource, String> {
        let source = spiffe::X509Source::builder()
            .endpoint(&opts.socket)
            .initial_sync_timeout(FIRST_SVID_WAIT)
            .build()
            .await
            .map_err(|e| format!("the SPIFFE Workload API at {}: {e}", opts.socket))?;
        let updates = std::sync::Mutex::new(Some(source.updated()));
        Ok(TlsSource::Spiffe { source: Arc::new(source), trust_domains: opts.trust_domains.clone(), updates })
    }

    /// For SPIFFE: a task that asks for a TLS reload whenever the agent pushes new material,
    /// until `stop`.
    pub(super) fn follow(&self, reload: mpsc::Sender<Request>, mut stop: watch::Receiver<bool>) {
        let TlsSource::Spiffe { source, updates, .. } = self else { return };
        let Some(mut updates) = updates.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let source = source.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = updates.changed() => match changed {
                        Ok(_) => {
                            tracing::info!("the SPIFFE Workload API pushed new material: reloading TLS");
                            if reload.send(Request::new(Parts::TLS).0).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "ALARM: the SPIFFE Workload API source stopped; the current SVID stays in force until it expires");
                            break;
                        }
                    },
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                }
            }
            let _ = source.shutdown_with_timeout(Duration::from_secs(2)).await;
        });
    }
}

/// The source's current SVID, key and bundles, as rustls wants them, from one snapshot.
fn material(source: &spiffe::X509Source) -> Result<SpiffeMaterial, String> {
    let context = source.x509_context().map_err(|e| format!("no X.509-SVID from the SPIFFE Workload API: {e}"))?;
    let svid = context.default_svid().ok_or("the SPIFFE Workload API holds no X.509-SVID for the vault")?;
    let bundles = context.bundle_set();
    let chain = svid.cert_chain().iter().map(|c| CertificateDer::from(c.as_bytes().to_vec())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec()));
    let bundles: BTreeMap<String, Vec<CertificateDer<'static>>> = bundles
        .iter()
        .map(|(td, b)| {
            let certs = b.authorities().iter().map(|c| CertificateDer::from(c.as_bytes().to_vec())).collect();
            (td.to_string(), certs)
        })
        .collect();
    Ok(SpiffeMaterial { spiffe_id: svid.spiffe_id().to_string(), chain, key, bundles })
}
