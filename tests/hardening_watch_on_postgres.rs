//! The tests of `hardening_watch.rs` again, every server on PostgreSQL (see `common::server`).

#[path = "hardening_watch.rs"]
mod suite;
