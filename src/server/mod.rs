//! The transports: the gRPC server (mutual TLS front door `conn`, the gate every request
//! passes `layer`, thin service handlers, health, reflection, reload on SIGHUP and graceful
//! shutdown) and, beside it on the same TLS state and policy, the HTTPS gateway to Go's API
//! (`gateway/`).
//!
//! Architecture invariants:
//! - handlers stay thin: parse → authorize on the tenant → call the core → audit → answer;
//! - every decision is audited before its answer leaves; an audit record that cannot be
//!   committed fails the request with `UNAVAILABLE` (fail closed). Two exceptions, both by
//!   DESIGN.md invariant 6 and issue 17: a repeat of a token a caller already holds is
//!   recorded in the next commit without waiting (still refused while the log is failing),
//!   and requests over a caller's budget are recorded as one record per caller per second
//!   (`refusals`);
//! - errors become gRPC statuses only in `errors`.

//!
//! Files, bottom up: `errors` (the only place statuses are made), `metrics` (the scrape),
//! `conn` (the mTLS acceptor), `state` (what handlers share), `layer` (the gate), the
//! handlers (`*_svc`), the gateway (`gateway/`), `refusals` (budget refusals on the
//! record), `reload_request` (what a reload is asked for), `watch` (reload on change),
//! `reload`, and `run` (start, serve, stop). This file only names them.

mod audit_svc;
pub mod conn;
pub mod errors;
pub mod gateway;
mod layer;
pub mod metrics;
mod onboarding_svc;
mod operator_svc;
mod refusals;
mod reload;
mod reload_request;
mod run;
mod spiffe;
mod state;
mod status_svc;
mod tenant_svc;
mod token_svc;
mod watch;

pub use gateway::GatewayOptions;
pub use layer::new_request_id;
pub use run::{
    DEFAULT_CALLER_REQUESTS_PER_SECOND, RunningServer, ServeError, ServeOptions, WATCH_EVERY, start, start_with_clock,
};
pub use spiffe::SpiffeOptions;
pub use state::{Caller, Extra, ServerState, caller_record, timestamp, timestamp_ms};
