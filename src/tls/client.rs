//! The TLS settings of a client of the vault: gRPC (the CLI, tests, example callers) and
//! HTTPS to the API gateway ([`https_client_config`], for any HTTP client built on rustls).
//!
//! tonic builds the rustls client itself (ring provider, ALPN `h2`); this module reads and
//! checks the files first, so a wrong path, a key readable by others or a file without a
//! certificate is reported with its name before any connection is tried, rather than as a
//! handshake error at the first call.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::TlsError;
use super::files;

/// The files a client presents and trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM: the CA(s) that issued the vault's server certificate.
    pub ca: PathBuf,
    /// PEM: the client certificate (then any intermediates).
    pub cert: PathBuf,
    /// PEM: the client's private key; mode 0600.
    pub key: PathBuf,
}

/// A tonic client TLS configuration presenting `files.cert`/`files.key`, trusting only
/// `files.ca`, and expecting the server certificate to be valid for `domain` (a DNS name
/// or IP address, like `localhost`).
pub fn tonic_client_tls(files: &ClientTlsFiles, domain: &str) -> Result<ClientTlsConfig, TlsError> {
    let ca = files::read_public(&files.ca)?;
    files::parse_certs(&files.ca, &ca)?;
    let cert = files::read_public(&files.cert)?;
    files::parse_certs(&files.cert, &cert)?;
    let key = files::read_private(&files.key)?;
    // Parsed only to name the file if it holds no usable key; tonic parses it again.
    drop(files::parse_private_key(&files.key, &key)?);
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, &*key))
        .domain_name(domain))
}

/// A rustls client configuration for the vault's API gateway: presents `files.cert`/
/// `files.key`, trusts only `files.ca`, offers `alpn` (`[b"h2", b"http/1.1"]`, or one of
/// them). With the ring provider passed explicitly (never the process default).
pub fn https_client_config(files: &ClientTlsFiles, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let roots = trust_roots(&files.ca)?;
    let chain = files::read_certs(&files.cert)?;
    let key = files::read_private_key(&files.key)?;
    let bad = |e: rustls::Error| TlsError::Malformed {
        path: files::show(&files.key),
        what: "client certificate and key",
        reason: e.to_string(),
    };
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(bad)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(bad)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The certificates of a PEM bundle (`ca`) as the only trust anchors of a client.
pub fn trust_roots(ca: &std::path::Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in files::read_certs(ca)? {
        roots.add(der).map_err(|e| TlsError::Malformed {
            path: files::show(ca),
            what: "CA certificate bundle",
            reason: format!("not a trust anchor: {e}"),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::dev::generate_dev_pki;

    #[test]
    fn dev_client_files_make_a_config_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        let files = pki.client_files("token-caller").unwrap();
        tonic_client_tls(&files, "localhost").unwrap();

        let swapped = ClientTlsFiles { cert: files.key.clone(), ..files.clone() };
        let err = tonic_client_tls(&swapped, "localhost").unwrap_err();
        assert!(matches!(&err, TlsError::NoCertificate { path } if path.ends_with("token-caller-key.pem")), "{err}");

        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = tonic_client_tls(&files, "localhost").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn load_pem_reads_certificates_and_guards_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        assert!(crate::tls::load_pem(&pki.ca_cert).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(crate::tls::load_pem(&pki.server_key).is_ok());
        std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = crate::tls::load_pem(&pki.server_key).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
