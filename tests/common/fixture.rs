//! The one fixture of the integration tests and the service bench: the trust domain, the
//! client keys the simulator knows, the demo policy, the files of a served vault and its
//! `serve --config` file, and the requests callers send. The in-process server
//! (`server.rs`), the broker harness (`broker.rs`), the crash tests' `serve` processes and
//! `benches/service` are all built from it.
//!
//! `benches/service/main.rs` includes this file by path (`#[path]`), so it uses only the
//! crate and its dev-dependencies, never a sibling module of `tests/common`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use pogo_vault::crypto::{ClientKey, Purpose};
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;
use pogo_vault::sim::{self, Sim, SimClient, SimConfig};
use pogo_vault::tls::DevPki;
use pogo_vault::vault::{Argon2Costs, InitKey, NewTenant, UnauditedFixture, Vault};

/// The SPIFFE trust domain of the generated PKI: callers are `spiffe://test.pogo/...`.
pub const TRUST: &str = "test.pogo";

/// The simulator's application key: an integration set with it is one the simulator accepts.
pub const APP_KEY: &str = sim::DEFAULT_APPLICATION_KEY;

// ---------------------------------------------------------------- client keys

/// Client key `i` of the tests' simulated clients ([`sim_client`]): GUIDs that are easy to
/// spot in a scan.
pub fn sim_key(i: usize) -> String {
    format!("5eed0000-0000-4000-8000-{:012x}", 0xabc000 + i)
}

/// [`sim_key`] as a parsed key.
pub fn key(i: usize) -> ClientKey {
    ClientKey::parse(&sim_key(i)).unwrap()
}

/// Client `i` as the simulator knows it under [`sim_key`]`(i)`: Go's ClientId `700i`,
/// organization number `91000000i` (onboarding tests name tenants after it).
pub fn sim_client(i: usize) -> SimClient {
    SimClient {
        client_id: format!("{}", 7000 + i),
        name: format!("Kunde {i} AS"),
        organization_number: format!("91000000{i}"),
    }
}

/// Tells the simulator about clients `0..n` ([`sim_client`]) in the demo environment.
pub fn add_sim_clients(sim: &Sim, n: usize) {
    for i in 0..n {
        sim.add_client(Environment::Demo, &sim_key(i), sim_client(i));
    }
}

/// Client key `i` of the bulk set: distinct valid GUIDs for any number of tenants (the
/// broker tests, the limiter and list-scope tests, the bench's hundred thousand), beside
/// [`sim_key`]'s handful whose organization numbers stop being nine digits at ten.
pub fn client_key(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i + 1, i + 1)
}

/// Client `i` of the bulk set as the simulator knows it under [`client_key`]`(i)`: Go's
/// ClientId `1000 + i`.
pub fn bulk_client(i: usize) -> SimClient {
    SimClient {
        client_id: format!("{}", 1000 + i),
        name: format!("Client {i}"),
        organization_number: format!("{i:09}"),
    }
}

/// Tells the simulator about the bulk clients `range` ([`bulk_client`]) in the demo environment.
pub fn add_bulk_clients(sim: &Sim, range: Range<usize>) {
    for i in range {
        sim.add_client(Environment::Demo, &client_key(i), bulk_client(i));
    }
}

/// Adds demo tenants `ids` to `vault` in one batch (unaudited set-up), `ids[j]` holding the
/// bulk key [`client_key`]`(first + j)`. With `known_client_id` each row carries Go's
/// ClientId, as for tenants registered with validation, so no background
/// ClientIntegrationInformation call follows a first token (and competes with what a test
/// counts or a bench measures).
pub fn add_bulk_tenants(vault: &Vault, ids: &[String], first: usize, known_client_id: bool) {
    let keys: Vec<ClientKey> = (0..ids.len()).map(|j| ClientKey::parse(&client_key(first + j)).unwrap()).collect();
    let batch: Vec<(NewTenant, &ClientKey)> = ids
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(j, (id, k))| {
            let mut new = NewTenant::new(id.parse().unwrap(), Environment::Demo);
            if known_client_id {
                new.go_client_id = Some(bulk_client(first + j).client_id);
            }
            (new, k)
        })
        .collect();
    vault.add_tenants(&batch, &UnauditedFixture).unwrap();
}

// ---------------------------------------------------------------- the demo policy

/// One `[[grant]]` (with a blank line before it) for `spiffe://TRUST/{caller}`; no
/// `tenants` line when `tenants` is empty.
pub fn grant(caller: &str, roles: &[&str], tenants: &[&str]) -> String {
    let list = |v: &[&str]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let mut g = format!("\n[[grant]]\ncaller = \"spiffe://{TRUST}/{caller}\"\nroles = [{}]\n", list(roles));
    if !tenants.is_empty() {
        g.push_str(&format!("tenants = [{}]\n", list(tenants)));
    }
    g
}

/// The demo policy for the dev PKI's callers: `token-caller` mints for every tenant,
/// `admin` manages every tenant, `auditor` reads the audit log.
pub fn demo_policy() -> String {
    [
        grant("service/token-caller", &["token"], &["*"]),
        grant("service/admin", &["tenant-admin"], &["*"]),
        grant("team/security/auditor", &["audit"], &[]),
    ]
    .concat()
}

/// The tests' policy: the demo policy, `a-only` (token and tenant-admin on `a-*`, a caller
/// the test server issues), then `extra`.
pub fn policy_text(extra: &str) -> String {
    format!("{}{}{extra}\n", demo_policy(), grant("service/a-only", &["token", "tenant-admin"], &["a-*"]))
}

// ---------------------------------------------------------------- the simulator

/// Any free port on 127.0.0.1.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The simulator on loopback with its default keys, admitting `rate_limit_per_second`
/// token requests a second (Go admits 10; tests raise it so that it is not what they meet).
pub async fn start_sim(rate_limit_per_second: u32) -> Sim {
    sim::start(loopback(), SimConfig { rate_limit_per_second, ..SimConfig::default() }).await.unwrap()
}

/// A simulated Go with keys of its own instead of the simulator's defaults, for the Go
/// client's tests: what they see on the wire is what the client was given.
pub mod own_keys {
    use pogo_vault::domain::Environment;
    use pogo_vault::sim::SimConfig;

    pub const APP_KEY: &str = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d";
    pub const DEMO_SUB: &str = "d3d3d3d3e4e4e4e4f5f5f5f5a6a6a6a6";
    pub const PROD_SUB: &str = "b7b7b7b7c8c8c8c8d9d9d9d9e0e0e0e0";
    /// A subscription key Go does not know.
    pub const BAD_SUB: &str = "ffffffffffffffffffffffffffffffff";
    /// A demo client's key and a production client's key.
    pub const DEMO_KEY: &str = "11111111-2222-4333-8444-555555555555";
    pub const PROD_KEY: &str = "66666666-7777-4888-9999-aaaaaaaaaaaa";

    /// The simulator's configuration with these keys (one subscription key per environment).
    pub fn sim_config() -> SimConfig {
        SimConfig {
            application_key: APP_KEY.into(),
            subscription_keys: vec![(Environment::Demo, DEMO_SUB.into()), (Environment::Production, PROD_SUB.into())],
            ..SimConfig::default()
        }
    }
}

// ---------------------------------------------------------------- a served vault's files

/// The files of a served vault, by their names under one directory: the in-process test
/// server, the crash tests' `serve` processes and the bench lay them out alike, and
/// [`serve_config`] names them relative to that directory.
pub const VAULT_DB: &str = "vault.db";
pub const MASTER_KEY: &str = "master.key";
pub const POLICY: &str = "policy.toml";
/// The dev PKI (`ca.pem`, `server.pem`, the callers' certificates).
pub const CERTS: &str = "certs";

/// A new vault at `db` (master key generated into `key`) whose demo integration is `sim`'s.
pub fn init_vault(db: &Path, key: &Path, sim: &Sim) -> Vault {
    let vault = Vault::init(db, &InitKey::GenerateKeyFile(key.to_owned()), Argon2Costs::default()).unwrap();
    vault.set_integration(&sim.demo_integration().unwrap(), &UnauditedFixture).unwrap();
    vault
}

/// Lays out a served vault in `dir`: the dev PKI for [`TRUST`] under [`CERTS`], a vault
/// ([`init_vault`]) and `policy` as [`POLICY`]. Returns the PKI and the open vault (for
/// tenants; drop it before serving).
pub fn serve_files(dir: &Path, sim: &Sim, policy: &str) -> (DevPki, Vault) {
    let pki = pogo_vault::tls::generate_dev_pki(&dir.join(CERTS), TRUST).unwrap();
    let vault = init_vault(&dir.join(VAULT_DB), &dir.join(MASTER_KEY), sim);
    std::fs::write(dir.join(POLICY), policy).unwrap();
    (pki, vault)
}

/// The configuration `serve --config` reads for [`serve_files`], written beside them: only
/// the required keys (every other setting at its production default), listening on
/// `listen`. It ends inside `[server]`, so lines appended first are more of that table.
pub fn serve_config(listen: &str) -> String {
    format!(
        "[vault]\ndb = \"{VAULT_DB}\"\nmaster_key_file = \"{MASTER_KEY}\"\n\n[server]\nlisten = \"{listen}\"\n\
         cert = \"{CERTS}/server.pem\"\nkey = \"{CERTS}/server-key.pem\"\nclient_ca = \"{CERTS}/ca.pem\"\npolicy = \"{POLICY}\"\n"
    )
}

/// The key that verifies the vault's audit log (its audit signing key's public half).
pub fn audit_verifying_key(vault: &Vault) -> ed25519_dalek::VerifyingKey {
    let pk = vault.vault_key(Purpose::AuditSigningKey).unwrap().unwrap().public_key.unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&pk.try_into().unwrap()).unwrap()
}

// ---------------------------------------------------------------- requests

/// `RegisterClientKey` for demo tenant `tenant` with [`sim_key`]`(key)`, validated with Go.
pub fn register_request(tenant: &str, key: usize) -> pb::RegisterClientKeyRequest {
    pb::RegisterClientKeyRequest {
        tenant_id: tenant.into(),
        environment: "demo".into(),
        client_key: sim_key(key),
        ..Default::default()
    }
}

/// [`register_request`] with `skip_validation`: stored without asking Go.
pub fn register_unvalidated(tenant: &str, key: usize) -> pb::RegisterClientKeyRequest {
    pb::RegisterClientKeyRequest { skip_validation: true, ..register_request(tenant, key) }
}

/// `GetAccessToken` for `tenant`, no minimum validity.
pub fn token_request(tenant: &str) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest { tenant_id: tenant.into(), min_validity_seconds: 0 }
}
