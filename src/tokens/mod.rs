//! The token broker: tenant id in, Go access token out, fast, without showing the client
//! key, and without hurting the integration's shared upstream budget.
//!
//! This file is the module's face: its `mod` lines, what it re-exports, and the constants
//! every part shares. It names none of its children's items in code, so a child may import
//! from here without closing an import circle. The parts, from the bottom up:
//!
//! - plain types: [`BrokerError`] (`error.rs`), [`BrokerStats`] (`stats.rs`), what callers
//!   pass and get back (`lease.rs`: [`Requester`], [`TokenLease`], [`CachedToken`]), what
//!   the broker keeps between requests (`state.rs`: slots, the integration cache entry);
//!   the clock ([`clock`]), the knobs ([`BrokerConfig`], `config.rs`), the limiter
//!   ([`limiter`]);
//! - the [`Broker`] and its hot path: cache, single flight, fetch (`broker.rs`);
//! - the rest of `impl Broker`, each file beside the others and above `broker.rs`: refresh
//!   ahead and the "last token" times (`background.rs`), key validation and onboarding calls
//!   (`checks.rs`), the ClientId fill-in (`client_id.rs`), the integration cache and the
//!   automatic subscription-key switch (`integration.rs`), and what the API gateway asks
//!   beside tokens: a limiter slot per API call, pauses, dropping a refused token
//!   (`api_calls.rs`).
//!
//! Architecture invariant: this is the only module that opens client keys
//! ([`Vault::open_client_key`](crate::vault::Vault::open_client_key)); an opened key lives
//! only for its one upstream request.

/// The identity the server's own audit records carry (start, stop, reloads, a key Go
/// rejected).
pub const SERVER_IDENTITY: &str = "pogo-vault-server";

mod api_calls;
mod background;
mod broker;
mod checks;
mod client_id;
pub mod clock;
mod config;
mod error;
mod follow;
mod integration;
mod lease;
pub mod limiter;
mod shared;
mod state;
mod stats;

pub use broker::Broker;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::BrokerConfig;
pub use error::BrokerError;
pub use lease::{CachedToken, Requester, TokenLease, TokenSource, ValidatedKey};
pub use stats::BrokerStats;

/// The fairness identity of requests made through [`Broker::get_token`] (no caller named).
pub const UNATTRIBUTED: &str = "(unattributed)";
/// The fairness identity of refresh-ahead requests (they never wait for a slot).
pub const REFRESHER: &str = "(refresh ahead)";
/// The fairness identity of key validation and onboarding calls to Go.
pub const KEY_CHECKS: &str = "(key validation and onboarding)";
/// The fairness identity of ClientIntegrationInformation calls that fill in a tenant's
/// ClientId (they never wait for a slot).
pub const METADATA: &str = "(client metadata)";

/// Fingerprint purpose label for access tokens (audit rows carry this fingerprint).
pub const FP_ACCESS_TOKEN: &str = "access-token";
