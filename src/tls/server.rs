//! The server's rustls configuration: TLS 1.3 only, ALPN `h2`, client certificates required.
//!
//! Why these choices:
//! - TLS 1.3 only: every caller is our own service with a modern rustls or Go stack, and 1.3
//!   removes the 1.2 cipher and renegotiation choices we would otherwise have to audit.
//! - Client certificates are required (no `allow_unauthenticated`): deny by default
//!   (DESIGN.md invariant 4) starts at the handshake.
//! - CRLs: a certificate listed in a configured CRL is refused. A certificate whose status no
//!   CRL can tell (`allow_unknown_revocation_status`) is accepted, because CRLs here are an
//!   optional deny list, not a required proof of good standing: without that, configuring one
//!   CRL would lock out every caller whose issuer it does not cover. The whole chain is
//!   checked (rustls' default depth), not only the end entity: with unknown status allowed,
//!   checking intermediates costs nothing when no CRL covers them and refuses a revoked
//!   intermediate when one does. An expired CRL is still applied (rustls' default), with a
//!   warning, since failing open on a stale deny list would un-revoke certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::TlsError;
use super::files::{self, show};

/// Certificates expiring sooner than this get a warning at load.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// The files the server's TLS configuration is loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM: the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the server's private key (PKCS#8, SEC1 or PKCS#1); mode 0600.
    pub key: PathBuf,
    /// PEM: one or more CA certificates that issue client certificates.
    pub client_ca: PathBuf,
    /// PEM or DER certificate revocation lists from those CAs; may be empty.
    pub crls: Vec<PathBuf>,
}

/// The server's rustls configuration and the client-certificate verifier inside it, so
/// connections made before a reload can be checked again against new CAs and CRLs.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

/// Builds the server's rustls configuration from `files` (see the module docs for the policy).
pub fn load_server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    load_server_tls(files).map(|t| t.config)
}

/// [`load_server_config`], keeping the verifier too.
pub fn load_server_tls(files: &ServerTlsFiles) -> Result<ServerTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let chain = files::read_certs(&files.cert)?;
    // `read_certs` returns at least one certificate: the leaf is `chain[0]`.
    check_server_cert_validity(&files.cert, &chain[0])?;
    let key = files::read_private_key(&files.key)?;

    let (roots, ca_subjects) = client_roots(&files.client_ca)?;
    let mut crls = Vec::new();
    for path in &files.crls {
        crls.extend(read_crls(path, &ca_subjects)?);
    }

    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        verifier = verifier.with_crls(crls).allow_unknown_revocation_status();
    }
    let verifier = verifier.build().map_err(|e| TlsError::Config {
        path: std::iter::once(&files.client_ca).chain(&files.crls).map(|p| show(p)).collect::<Vec<_>>().join(", "),
        reason: e.to_string(),
    })?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config { path: show(&files.cert), reason: e.to_string() })?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::KeyMismatch { cert: show(&files.cert), key: show(&files.key), reason: e.to_string() })?;
    config.alpn_protocols = vec![b"h2".to_vec()];

    tracing::debug!(
        cert = %files.cert.display(),
        client_ca = %files.client_ca.display(),
        client_cas = ca_subjects.len(),
        crl_files = files.crls.len(),
        "server TLS configuration loaded (TLS 1.3, client certificates required)"
    );
    Ok(ServerTls { config: Arc::new(config), verifier })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// An expired or not-yet-valid server certificate fails every handshake; say so at start-up.
fn check_server_cert_validity(path: &Path, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Malformed {
        path: show(path),
        what: "X.509 certificate",
        reason: e.to_string(),
    })?;
    let now = OffsetDateTime::now_utc();
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Err(TlsError::Validity {
            path: show(path),
            reason: format!(
                "is not valid before {}: check the system clock or issue a new certificate",
                rfc3339(not_before)
            ),
        });
    }
    if now > not_after {
        return Err(TlsError::Validity {
            path: show(path),
            reason: format!("expired at {}: issue a new server certificate", rfc3339(not_after)),
        });
    }
    if not_after - now < time::Duration::days(EXPIRY_WARNING_DAYS) {
        tracing::warn!(cert = %path.display(), expires = %rfc3339(not_after), "the server certificate expires soon");
    }
    Ok(())
}

/// The client CA bundle as a root store, and the raw subjects of its CAs (to check CRL issuers).
fn client_roots(path: &Path) -> Result<(RootCertStore, Vec<Vec<u8>>), TlsError> {
    let certs = files::read_certs(path)?;
    let mut roots = RootCertStore::empty();
    let mut subjects = Vec::with_capacity(certs.len());
    for (i, der) in certs.into_iter().enumerate() {
        let n = i + 1;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Malformed {
            path: show(path),
            what: "CA certificate bundle",
            reason: format!("certificate {n}: {e}"),
        })?;
        subjects.push(cert.subject().as_raw().to_vec());
        roots.add(der).map_err(|e| TlsError::Malformed {
            path: show(path),
            what: "CA certificate bundle",
            reason: format!("certificate {n} cannot be a trust anchor: {e}"),
        })?;
    }
    Ok((roots, subjects))
}

/// Reads a CRL file (PEM with one or more `X509 CRL` blocks, or one DER CRL) and checks each
/// CRL parses, so a bad file is named here rather than in a rustls error about "a CRL".
fn read_crls(path: &Path, ca_subjects: &[Vec<u8>]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = files::read_public(path)?;
    let malformed = |reason: String| TlsError::Malformed { path: show(path), what: "CRL file", reason };
    let is_pem = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
    let crls = if is_pem {
        let crls = rustls_pemfile::crls(&mut &bytes[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed(e.to_string()))?;
        if crls.is_empty() {
            return Err(malformed("no `-----BEGIN X509 CRL-----` block".to_owned()));
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    let now = OffsetDateTime::now_utc();
    for (i, der) in crls.iter().enumerate() {
        let (rest, crl) = x509_parser::parse_x509_crl(der).map_err(|e| malformed(format!("CRL {}: {e}", i + 1)))?;
        if !rest.is_empty() {
            return Err(malformed(format!("CRL {}: {} bytes follow it", i + 1, rest.len())));
        }
        // A CRL can come from an intermediate CA that is not in the bundle itself, so this is
        // a warning, not an error.
        if !ca_subjects.iter().any(|s| s.as_slice() == crl.issuer().as_raw()) {
            tracing::warn!(crl = %path.display(), issuer = %crl.issuer(), "this CRL's issuer is not one of the client CAs; it can only revoke certificates of an intermediate CA");
        }
        if let Some(next) = crl.next_update()
            && next.to_datetime() < now
        {
            tracing::warn!(crl = %path.display(), next_update = %rfc3339(next.to_datetime()), "this CRL is past its next update; it is still applied, publish a fresh one");
        }
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::dev::generate_dev_pki;

    fn files_of(pki: &crate::tls::DevPki) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: pki.ca_cert.clone(),
            crls: vec![],
        }
    }

    #[test]
    fn dev_pki_loads_with_tls13_only_and_h2() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        let config = load_server_config(&files_of(&pki)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn world_readable_server_key_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_server_config(&files_of(&pki)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("chmod 600") && msg.contains(&pki.server_key.display().to_string()), "{msg}");
        assert!(!msg.contains("PRIVATE KEY"), "{msg}");
    }

    #[test]
    fn key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        let mut files = files_of(&pki);
        files.key = pki.clients[0].key.clone();
        let err = load_server_config(&files).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("server.pem") && err.to_string().contains("token-caller-key.pem"), "{err}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();

        let mut files = files_of(&pki);
        files.client_ca = junk.clone();
        let err = load_server_config(&files).unwrap_err();
        assert!(matches!(&err, TlsError::NoCertificate { path } if path.ends_with("junk.pem")), "{err}");

        let mut files = files_of(&pki);
        files.crls = vec![junk.clone()];
        let err = load_server_config(&files).unwrap_err();
        assert!(matches!(&err, TlsError::Malformed { path, .. } if path.ends_with("junk.pem")), "{err}");

        let mut files = files_of(&pki);
        files.crls = vec![dir.path().join("missing.crl")];
        let err = load_server_config(&files).unwrap_err();
        assert!(matches!(&err, TlsError::Read { path, .. } if path.ends_with("missing.crl")), "{err}");
    }
}
