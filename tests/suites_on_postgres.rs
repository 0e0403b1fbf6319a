//! Eight test suites written for SQLite, the same tests, with every server's vault and audit
//! log in a throwaway PostgreSQL cluster (`common::server` sees `_on_postgres` in this
//! binary's name and moves each test server's files there with `storage migrate`'s use
//! case): one parameterised harness, not a copy. One binary for all eight (each a module),
//! so CI links it once. Tests left out, with their reasons: `.config/nextest.toml`.

// Each suite declares `mod common;` as it does in its own binary: the harness is compiled
// once per suite here, which is what keeps the suites unchanged.
#![allow(clippy::duplicate_mod)]

#[path = "audit_api.rs"]
mod audit_api;
#[path = "disclosure.rs"]
mod disclosure;
#[path = "gateway.rs"]
mod gateway;
#[path = "go_fidelity.rs"]
mod go_fidelity;
#[path = "grpc_api.rs"]
mod grpc_api;
#[path = "hardening_onboarding.rs"]
mod hardening_onboarding;
#[path = "hardening_watch.rs"]
mod hardening_watch;
#[path = "metrics.rs"]
mod metrics;
