//! The gRPC suite of `grpc_api.rs`, the same tests, with every server's vault and audit log
//! in a throwaway PostgreSQL cluster (`common::server` sees `_on_postgres` in this binary's
//! name): one parameterised harness, not a copy.

#[path = "grpc_api.rs"]
mod suite;
