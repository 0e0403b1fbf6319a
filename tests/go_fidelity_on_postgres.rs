//! The tests of `go_fidelity.rs` again, every server on PostgreSQL (see `common::server`).

#[path = "go_fidelity.rs"]
mod suite;
