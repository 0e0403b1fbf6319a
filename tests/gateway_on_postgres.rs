//! The tests of `gateway.rs` again, every server on PostgreSQL (see `common::server`).

#[path = "gateway.rs"]
mod suite;
