//! The generated wire contract (`proto/pogo_vault/v1/*.proto`, compiled by `build.rs`).
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("pogo_vault.v1");
}

/// The encoded descriptor set of every proto file (imports included), for server
/// reflection and the method-to-role test.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pogo_vault_descriptor");
