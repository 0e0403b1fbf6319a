//! The error of this module: loading TLS files, building the TLS configuration, issuing
//! certificates. A leaf: it imports nothing of its siblings, so every file of `tls` can use it.
//!
//! Invariant: messages name the file and the fix, and never contain key material.

/// Errors from loading TLS files, building the TLS configuration, and issuing certificates.
///
/// Messages name the file and the fix; they never contain key material.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable, not text where text is required).
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    /// A private key file may be read or written by group or others.
    #[error("{path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    LoosePermissions { path: String, mode: u32 },
    /// The file holds no PEM certificate.
    #[error("{path} holds no certificate: expected one or more PEM blocks `-----BEGIN CERTIFICATE-----`")]
    NoCertificate { path: String },
    /// The file holds no PEM private key.
    #[error(
        "{path} holds no private key: expected a PEM block `BEGIN PRIVATE KEY` (PKCS#8), \
         `BEGIN EC PRIVATE KEY` (SEC1) or `BEGIN RSA PRIVATE KEY`"
    )]
    NoPrivateKey { path: String },
    /// The file's content is not a valid object of the expected kind.
    #[error("{path} does not hold a valid {what}: {reason}")]
    Malformed { path: String, what: &'static str, reason: String },
    /// The private key cannot be used with the certificate (another key pair, unsupported algorithm).
    #[error("the private key in {key} cannot be used with the certificate in {cert}: {reason}")]
    KeyMismatch { cert: String, key: String, reason: String },
    /// A certificate is outside its validity period.
    #[error("the certificate in {path} {reason}")]
    Validity { path: String, reason: String },
    /// rustls refused the configuration built from these files.
    #[error("cannot build the TLS configuration from {path}: {reason}")]
    Config { path: String, reason: String },
    /// A file could not be created or written.
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    /// Refusing to overwrite an existing certificate or key file.
    #[error("{path} already exists; refusing to overwrite it (move it away or choose another path)")]
    AlreadyExists { path: String },
    /// An argument to a certificate-issuing function is not acceptable.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// Certificate, key or CRL generation failed.
    #[error("cannot issue the {what}: {reason}")]
    Issue { what: String, reason: String },
}
