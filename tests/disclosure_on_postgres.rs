//! The tests of `disclosure.rs` again, every server on PostgreSQL (see `common::server`).

#[path = "disclosure.rs"]
mod suite;
