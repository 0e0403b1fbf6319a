//! Compiles the wire contract with protox (pure Rust): no system `protoc` needed.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/pogo_vault/v1/token.proto",
    "proto/pogo_vault/v1/tenant.proto",
    "proto/pogo_vault/v1/audit.proto",
    "proto/pogo_vault/v1/onboarding.proto",
    "proto/pogo_vault/v1/status.proto",
    "proto/pogo_vault/v1/operator.proto",
];

const SECRET_BEARING: &[&str] = &[
    ".pogo_vault.v1.GetAccessTokenResponse",
    ".pogo_vault.v1.RegisterClientKeyRequest",
    ".pogo_vault.v1.RotateClientKeyRequest",
    ".pogo_vault.v1.BeginOnboardingRequest",
    ".pogo_vault.v1.CompleteOnboardingRequest",
    ".pogo_vault.v1.SetIntegrationRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The full descriptor set (imports included) feeds server reflection and the test
    // that checks every method has a role.
    std::fs::write(out.join("pogo_vault_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry a secret get a hand-written, redacted Debug (src/proto.rs):
        // a stray `{:?}` of a request must not print a client key or a token.
        .skip_debug(SECRET_BEARING)
        .compile_fds(fds)?;
    Ok(())
}
