//! The tests of `hardening_onboarding.rs` again, every server on PostgreSQL (see `common::server`).

#[path = "hardening_onboarding.rs"]
mod suite;
