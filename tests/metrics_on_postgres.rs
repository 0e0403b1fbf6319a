//! The tests of `metrics.rs` again, every server on PostgreSQL (see `common::server`).

#[path = "metrics.rs"]
mod suite;
