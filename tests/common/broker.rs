//! The token broker in-process, for the tests that drive its clock by hand: the simulator
//! over loopback HTTP as Go, a real SQLite vault of bulk tenants
//! ([`fixture::add_bulk_tenants`]) and the audit log beside it.

use std::sync::Arc;
use std::time::Duration;

use pogo_vault::audit::{AuditConfig, AuditLog};
use pogo_vault::sim::Sim;
use pogo_vault::upstream::{GoClient, UpstreamConfig};
use pogo_vault::vault::Vault;

use super::fixture;

/// The simulator with its own rate limit out of the way, so the limiter a test meets is
/// the broker's.
pub async fn start_sim() -> Sim {
    fixture::start_sim(100_000).await
}

/// A vault in a new temporary directory whose demo tenants `ids` hold the bulk keys `0..`
/// (see [`fixture::add_bulk_tenants`] for `known_client_id`), all known to the simulator.
pub fn vault_of(sim: &Sim, ids: &[String], known_client_id: bool) -> (Arc<Vault>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let vault = fixture::init_vault(&dir.path().join("v.db"), &dir.path().join("k"), sim);
    fixture::add_bulk_tenants(&vault, ids, 0, known_client_id);
    fixture::add_bulk_clients(sim, 0..ids.len());
    (Arc::new(vault), dir)
}

/// The audit log beside a test vault: the broker records a key Go rejected before marking it.
pub fn audit_of(vault: &Vault) -> AuditLog {
    let path = vault.sqlite_path().expect("a SQLite vault").with_extension("audit.db");
    AuditLog::open(&path, vault.audit_signing_key().unwrap(), AuditConfig::default()).unwrap()
}

/// A Go client that waits 2 s for a connection and `request_timeout` for an answer.
pub fn go(request_timeout: Duration) -> GoClient {
    GoClient::new(&UpstreamConfig { connect_timeout: Duration::from_secs(2), request_timeout }).unwrap()
}
