//! The server's TLS from SPIFFE material: the vault's X.509-SVID and the trust bundles the
//! SPIFFE Workload API hands out (`[server] tls_source = "spiffe"`; fetched and rotated by
//! `server/spiffe.rs`). The same policy as from files (TLS 1.3, ALPN `h2`, client
//! certificates required), with one difference that matters under federation: a caller's
//! certificate is verified against the bundle of **its own trust domain** (the one in its
//! SPIFFE ID), never against the union of all bundles, so a CA of one trust domain cannot
//! vouch for an identity in another.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::identity::{IdentityKind, identity_from_der};
use super::{ServerTls, TlsError};

/// What the Workload API gave: the SVID, its key, and the bundles by trust domain (the
/// vault's own and federated ones).
pub struct SpiffeMaterial {
    pub spiffe_id: String,
    /// The SVID first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8, as the Workload API sends it.
    pub key: PrivateKeyDer<'static>,
    pub bundles: BTreeMap<String, Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for SpiffeMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SpiffeMaterial")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain", &self.chain.len())
            .field("bundles", &self.bundles.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SpiffeMaterial {
    /// What a reload record says was put in force: the SVID's ID, serial and expiry, and
    /// the trust domains of the bundles (from this same material, never a second read).
    pub fn describe(&self) -> String {
        let leaf = self.chain.first();
        let serial = leaf.and_then(|c| identity_from_der(c.as_ref()).ok()).map(|i| i.serial).unwrap_or_default();
        let until = leaf
            .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .map(|(_, c)| c.validity().not_after.to_datetime().to_string())
            .unwrap_or_default();
        let domains: Vec<&str> = self.bundles.keys().map(String::as_str).collect();
        format!(
            "SPIFFE X.509-SVID {} (serial {serial}, valid until {until}) and trust bundles ({}) from the Workload API put in force",
            self.spiffe_id,
            domains.join(", ")
        )
    }
}

/// The trust domain of a SPIFFE ID (`spiffe://TD/path` → `TD`).
pub fn trust_domain_of(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    (!td.is_empty()).then_some(td)
}

/// The server configuration from `m`, accepting callers of the trust domains in `accept`
/// (empty: the SVID's own trust domain only). Fails when a trust domain to accept has no
/// bundle, or the SVID and key do not match.
pub fn spiffe_server_tls(m: SpiffeMaterial, accept: &[String]) -> Result<ServerTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let source = || format!("the SPIFFE Workload API (SVID {})", m.spiffe_id);
    let own = trust_domain_of(&m.spiffe_id).unwrap_or_default().to_owned();
    let accept: Vec<String> = if accept.is_empty() { vec![own] } else { accept.to_vec() };
    let mut by_domain: BTreeMap<String, Arc<dyn ClientCertVerifier>> = BTreeMap::new();
    let mut hints = Vec::new();
    for td in &accept {
        let certs = m.bundles.get(td).filter(|c| !c.is_empty()).ok_or_else(|| TlsError::Config {
            path: source(),
            reason: format!("no trust bundle for trust domain {td:?}, whose callers are to be accepted"),
        })?;
        let mut roots = RootCertStore::empty();
        for c in certs {
            roots.add(c.clone()).map_err(|e| TlsError::Config { path: source(), reason: format!("{td}: {e}") })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config { path: source(), reason: format!("{td}: {e}") })?;
        hints.extend(verifier.root_hint_subjects().iter().cloned());
        by_domain.insert(td.clone(), verifier);
    }
    let verifier: Arc<dyn ClientCertVerifier> =
        Arc::new(TrustDomainVerifier { by_domain, hints, provider: provider.clone() });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config { path: source(), reason: e.to_string() })?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(m.chain, m.key)
        .map_err(|e| TlsError::KeyMismatch { cert: source(), key: source(), reason: e.to_string() })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls { config: Arc::new(config), verifier })
}

/// Verifies a caller's certificate with the bundle of the trust domain its SPIFFE ID names.
#[derive(Debug)]
struct TrustDomainVerifier {
    by_domain: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let refused = || rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
        // The chain is verified first, against one accepted trust domain's bundle at a time;
        // only a certificate a bundle accepted is parsed for its SPIFFE ID, which must name
        // that same trust domain. A caller without a SPIFFE ID, of a trust domain not
        // accepted, or vouched for by another trust domain's CA is refused.
        let mut last = refused();
        for (td, verifier) in &self.by_domain {
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(verified) => {
                    let identity = identity_from_der(end_entity.as_ref()).map_err(|_| refused())?;
                    if identity.kind == IdentityKind::Spiffe && trust_domain_of(&identity.id) == Some(td.as_str()) {
                        return Ok(verified);
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trust_domain_is_the_host_of_the_spiffe_id() {
        assert_eq!(trust_domain_of("spiffe://prod.example.org/service/billing"), Some("prod.example.org"));
        assert_eq!(trust_domain_of("spiffe://td"), Some("td"));
        assert_eq!(trust_domain_of("spiffe:///x"), None);
        assert_eq!(trust_domain_of("https://td/x"), None);
    }
}
