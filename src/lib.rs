//! pogo-vault: the one holder of PowerOffice Go client keys.
//!
//! See `ARCHITECTURE.md` for the map. Data flows one way:
//! server → authz → tokens (→ store, upstream) → audit → response.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authz;
pub mod backup;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod crypto;
pub mod domain;
pub mod hardening;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod toml_error;
pub mod upstream;
pub mod usecase;
pub mod vault;

#[cfg(test)]
mod fuzz_support;
