//! Certificate authorities for the development PKI: a new CA in memory, or an existing one
//! loaded from its PEM certificate and key files to issue more certificates and CRLs.
//!
//! Why the subject name is rebuilt by hand: rcgen can read an issuer back from a certificate
//! only with its `x509-parser` feature, which this crate does not enable, so we rebuild the
//! issuer's distinguished name from the parsed certificate. Chain building compares the
//! issuer name of a child with the subject of its CA byte for byte, so every certificate and
//! CRL issued from a loaded CA is checked to carry exactly the CA's subject bytes
//! ([`LoadedCa::check_issued`]); a CA whose name cannot be reproduced is refused, never
//! silently used to issue certificates that would not verify.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;
use zeroize::Zeroizing;

use super::TlsError;
use super::files::{self, show};

/// Certificates are valid from a day ago (clock skew between hosts) ...
const BACKDATE: Duration = Duration::days(1);
/// ... for a year.
const LIFETIME: Duration = Duration::days(365);

/// A fresh random positive 128-bit serial number (RFC 5280 asks for unique serials per CA).
pub(crate) fn random_serial(what: &str) -> Result<SerialNumber, TlsError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| TlsError::Issue { what: what.to_owned(), reason: format!("random source: {e}") })?;
    // Positive (top bit clear) and exactly 16 bytes long (second bit set), so the serial's
    // DER encoding and its hex form have one spelling.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

/// `hex`, optionally `0x`-prefixed or with colons, as a serial number of at most 20 bytes
/// (RFC 5280 section 4.1.2.2).
pub(crate) fn parse_serial(hex: &str) -> Result<SerialNumber, TlsError> {
    let invalid = |reason: &str| TlsError::InvalidArgument { field: "revoked serial", reason: reason.to_owned() };
    let t = hex.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let digits: Vec<u8> = t.bytes().filter(|&b| b != b':').collect();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid("a serial is hex digits, like the `serial` of a caller identity (`4f0a...`)"));
    }
    let nibble = |b: u8| (b as char).to_digit(16).map_or(0, |d| d as u8);
    // An odd number of digits gets a leading zero nibble.
    let pad = digits.len() % 2;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', pad).chain(digits).collect();
    let bytes: Vec<u8> = padded.chunks(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect();
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len().saturating_sub(1));
    let bytes = &bytes[start..];
    if bytes.len() > 20 {
        return Err(invalid("a serial is at most 20 bytes (40 hex digits)"));
    }
    Ok(SerialNumber::from_slice(bytes))
}

/// Sets `not_before`/`not_after`: from a day ago for a year, but never past `cap` (the CA's
/// own expiry: a certificate cannot outlive its issuer usefully).
pub(crate) fn set_validity(params: &mut CertificateParams, cap: Option<OffsetDateTime>) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    let until = now + LIFETIME;
    params.not_after = cap.map_or(until, |c| c.min(until));
}

pub(crate) fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Issue { what: what.to_owned(), reason: e.to_string() }
}

/// A new ECDSA P-256 key pair.
pub(crate) fn new_key(what: &str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err(what))
}

/// A new self-signed CA that may sign end-entity certificates and CRLs (path length 0: no
/// intermediates under a development CA).
pub(crate) fn new_ca(cn: &str) -> Result<CertifiedIssuer<'static, KeyPair>, TlsError> {
    let what = "CA certificate";
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial(what)?);
    set_validity(&mut params, None);
    CertifiedIssuer::self_signed(params, new_key(what)?).map_err(rcgen_err(what))
}

/// An existing CA, read from its certificate and key files.
pub(crate) struct LoadedCa {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) key_id_method: KeyIdMethod,
    pub(crate) not_after: OffsetDateTime,
    /// False when the CA's key usage extension lacks `cRLSign`: CRLs it signs would be ignored.
    pub(crate) crl_signer: bool,
    subject: Vec<u8>,
    cert_path: String,
}

impl LoadedCa {
    /// Reads the CA certificate (the first in the file) and its private key (mode 0600).
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<LoadedCa, TlsError> {
        // `read_certs` returns at least one certificate, so index 0 exists.
        let cert_der = files::read_certs(cert_path)?.swap_remove(0);
        let malformed = |reason: String| TlsError::Malformed { path: show(cert_path), what: "CA certificate", reason };
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| malformed(e.to_string()))?;
        if !cert.is_ca() {
            return Err(malformed("it is not a CA certificate (basicConstraints CA:TRUE is missing)".to_owned()));
        }

        let key_pem = files::read_private(key_path)?;
        let key_text = Zeroizing::new(String::from_utf8(key_pem.to_vec()).map_err(|_| TlsError::Malformed {
            path: show(key_path),
            what: "PEM private key file",
            reason: "it is not text".to_owned(),
        })?);
        let key = KeyPair::from_pem(&key_text).map_err(|e| TlsError::Malformed {
            path: show(key_path),
            what: "PEM private key file",
            reason: e.to_string(),
        })?;
        if key.subject_public_key_info() != cert.tbs_certificate.subject_pki.raw {
            return Err(TlsError::KeyMismatch {
                cert: show(cert_path),
                key: show(key_path),
                reason: "the key is not the CA certificate's key".to_owned(),
            });
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = name_of(cert.subject()).map_err(malformed)?;
        params.key_identifier_method = key_id_method(&cert);
        // The issuer's key usages stay empty: rcgen only uses them to refuse CRL signing,
        // which `crl_signer` decides here with a clearer error.
        let crl_signer = crl_signer(&cert).map_err(|e| malformed(e.to_string()))?;
        let key_id_method = params.key_identifier_method.clone();
        Ok(LoadedCa {
            issuer: Issuer::new(params, key),
            key_id_method,
            crl_signer,
            not_after: cert.validity().not_after.to_datetime(),
            subject: cert.subject().as_raw().to_vec(),
            cert_path: show(cert_path),
        })
    }

    /// Refuses an issued certificate or CRL whose issuer name is not byte for byte the CA's
    /// subject (see the module docs).
    pub(crate) fn check_issued(&self, what: &str, issuer_raw: &[u8]) -> Result<(), TlsError> {
        if issuer_raw == self.subject.as_slice() {
            return Ok(());
        }
        Err(TlsError::Issue {
            what: what.to_owned(),
            reason: format!(
                "the subject name of {} is encoded in a way this tool cannot reproduce; issue with openssl instead",
                self.cert_path
            ),
        })
    }
}

/// The CA's subject as an rcgen name, in order; refuses what rcgen cannot write back equally.
fn name_of(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("its subject has a multi-valued name component, which this tool cannot reproduce".to_owned());
        };
        let oid: Vec<u64> =
            attr.attr_type().iter().ok_or("its subject has an attribute type this tool cannot read")?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err("its subject repeats an attribute type, which this tool cannot reproduce".to_owned());
        }
        let data = attr.attr_value().data;
        let text = std::str::from_utf8(data).map_err(|_| "its subject has an attribute that is not text".to_owned())?;
        let value = match attr.attr_value().tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text.try_into().map_err(|e| format!("subject: {e}"))?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into().map_err(|e| format!("subject: {e}"))?),
            _ => return Err("its subject uses a string type this tool cannot reproduce".to_owned()),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// The CA's subject key identifier when it has one, so children's authority key identifier
/// matches it; else the SHA-256 method rcgen would use.
fn key_id_method(cert: &X509Certificate<'_>) -> KeyIdMethod {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(KeyIdMethod::PreSpecified(id.0.to_vec())),
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256)
}

/// Whether the CA may sign CRLs: no key usage extension, or one with `cRLSign`. Verifiers
/// ignore a CRL from a CA whose key usage lacks it, so issuing one would revoke nothing.
fn crl_signer(cert: &X509Certificate<'_>) -> Result<bool, x509_parser::error::X509Error> {
    Ok(cert.key_usage()?.is_none_or(|ku| ku.value.crl_sign()))
}
