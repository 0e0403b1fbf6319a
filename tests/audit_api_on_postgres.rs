//! The tests of `audit_api.rs` again, every server on PostgreSQL (see `common::server`).

#[path = "audit_api.rs"]
mod suite;
