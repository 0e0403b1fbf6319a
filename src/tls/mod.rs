//! Mutual TLS: the server's rustls configuration, the caller's identity, and a development PKI.
//!
//! Owns:
//! - [`load_server_config`]: the rustls `ServerConfig` the gRPC server listens with (TLS 1.3
//!   only, ALPN `h2`, client certificates required and verified against the configured client
//!   CA bundle, optional CRLs), built on the `ring` provider only.
//! - [`identity_from_der`]: the caller's identity read from its verified certificate
//!   (DESIGN.md invariant 4): the SPIFFE URI SAN, else the first DNS SAN, else the subject CN.
//! - [`dev`]: a development PKI (CA, server and client certificates, CRLs) for `dev` mode,
//!   tests and operators; [`client`]: the TLS settings of a tonic client.
//!
//! Invariants:
//! - Every configuration uses `rustls::crypto::ring::default_provider()` explicitly, never the
//!   process-default provider, so there is exactly one TLS/crypto backend.
//! - A private key file that group or others may read is refused, with the `chmod 600` fix in
//!   the error (the same rule as master key files). Private keys are created with mode 0600
//!   from the first byte.
//! - Errors name the file and what is wrong with it, and never contain key material.
//! - No anonymous caller reaches a service: the verifier refuses a handshake without a client
//!   certificate, so every connection has a peer certificate to read the identity from.

use std::path::Path;

mod ca;
pub mod client;
pub mod dev;
mod error;
mod files;
pub mod identity;
pub mod otlp;
mod server;
pub mod spiffe;

pub use client::{ClientTlsFiles, https_client_config, tonic_client_tls, trust_roots};
pub use dev::{DevClient, DevPki, generate_ca, generate_dev_pki, issue_client_cert, issue_crl};
pub use error::TlsError;
pub use identity::{CallerIdentity, IdentityError, IdentityKind, identity_from_der, serial_hex};
pub use otlp::OtlpTarget;
pub use server::{ServerTls, ServerTlsFiles, load_server_config, load_server_tls};
pub use spiffe::{SpiffeMaterial, spiffe_server_tls, trust_domain_of};

/// Reads a PEM file as text, for handing to tonic's `Certificate::from_pem` /
/// `Identity::from_pem`.
///
/// A file that holds a private key must have mode 0600 (or stricter), as every key file here.
/// The returned `String` is not zeroized: prefer [`tonic_client_tls`], which keeps key PEM in
/// zeroizing buffers, when building a client.
pub fn load_pem(path: &Path) -> Result<String, TlsError> {
    let bytes = files::read_private_or_public(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| TlsError::Malformed {
        path: path.display().to_string(),
        what: "PEM file",
        reason: "it is not text (a DER file? convert it with `openssl x509 -inform der`)".to_owned(),
    })?;
    if !text.contains("-----BEGIN ") {
        return Err(TlsError::Malformed {
            path: path.display().to_string(),
            what: "PEM file",
            reason: "no `-----BEGIN ...-----` line".to_owned(),
        });
    }
    Ok(text.to_owned())
}
