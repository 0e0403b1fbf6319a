//! The caller's identity, read from its verified client certificate (DESIGN.md invariant 4).
//!
//! Precedence: the SPIFFE ID (a URI SAN `spiffe://trust-domain/path`) when there is one, else
//! the first DNS SAN, else the subject's first common name. URI SANs of other schemes are
//! ignored. A certificate with two SPIFFE IDs is refused: the SPIFFE X.509-SVID standard
//! allows exactly one, and picking one of two would let the issuer's order decide who the
//! caller is.
//!
//! Invariants:
//! - Only call this on a certificate the TLS verifier accepted: parsing does not verify.
//! - Every id returned is 1 to [`MAX_ID_LEN`] bytes of printable ASCII without spaces, so it
//!   can go into log lines and audit records as is. Errors describe what is wrong without
//!   echoing the offending value.
//! - DNS ids are lowercased (DNS names are case-insensitive), so policy matches one spelling.

use std::fmt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The longest identity accepted, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// Which part of the certificate the identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// The SPIFFE ID in a URI SAN.
    Spiffe,
    /// The first DNS SAN.
    Dns,
    /// The subject's common name.
    CommonName,
}

impl IdentityKind {
    /// A short stable name for logs and audit records: `spiffe`, `dns`, `cn`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Spiffe => "spiffe",
            IdentityKind::Dns => "dns",
            IdentityKind::CommonName => "cn",
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: the identity the policy grants roles to, and the serial of the
/// certificate it was read from (for the audit record).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerIdentity {
    /// The SPIFFE ID, DNS name or common name; printable ASCII, no spaces, at most 255 bytes.
    pub id: String,
    pub kind: IdentityKind,
    /// The certificate serial number as lowercase hex without leading zero bytes (see [`serial_hex`]).
    pub serial: String,
}

impl fmt::Display for CallerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Why no identity could be read from a certificate.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not one DER-encoded X.509 certificate.
    #[error("the client certificate cannot be parsed: {reason}")]
    NotACertificate { reason: String },
    /// The subject alternative name extension is malformed or present twice.
    #[error("the client certificate's subject alternative names cannot be read: {reason}")]
    SubjectAltName { reason: String },
    /// More than one SPIFFE ID: the caller's identity would be ambiguous.
    #[error(
        "the client certificate has {count} SPIFFE IDs (URI SANs spiffe://...); a caller must have exactly one: \
         issue it a certificate with a single SPIFFE ID"
    )]
    MultipleSpiffe { count: usize },
    /// The SPIFFE ID does not follow the SPIFFE ID format.
    #[error("the client certificate's SPIFFE ID is malformed: {reason}")]
    MalformedSpiffe { reason: &'static str },
    /// No SPIFFE ID, no DNS SAN and no common name.
    #[error(
        "the client certificate names no caller: it needs a SPIFFE ID (URI SAN), a DNS SAN or a subject common name"
    )]
    NoIdentity,
    /// The identity found is not fit for logs and policy (empty, too long, spaces, control or non-ASCII characters).
    #[error("the client certificate's {kind} identity is not acceptable: {reason}")]
    InvalidId { kind: IdentityKind, reason: String },
}

/// Reads the caller's identity from a DER certificate (the leaf of the verified peer chain).
pub fn identity_from_der(der: &[u8]) -> Result<CallerIdentity, IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::NotACertificate { reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(IdentityError::NotACertificate { reason: format!("{} bytes follow the certificate", rest.len()) });
    }
    let serial = serial_hex(cert.raw_serial());
    let (id, kind) = pick_identity(&cert)?;
    check_id(&id, kind)?;
    Ok(CallerIdentity { id, kind, serial })
}

fn pick_identity(cert: &X509Certificate<'_>) -> Result<(String, IdentityKind), IdentityError> {
    let san = cert.subject_alternative_name().map_err(|e| IdentityError::SubjectAltName { reason: e.to_string() })?;
    let names: &[GeneralName<'_>] = san.as_ref().map(|ext| ext.value.general_names.as_slice()).unwrap_or(&[]);

    // Any SAN that claims the spiffe scheme counts, also in another case or with bytes that
    // are not UTF-8, so a malformed SPIFFE ID is an error rather than a silent fall-back to
    // a DNS name or CN.
    let spiffe: Vec<Option<&str>> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if has_spiffe_scheme(u.as_bytes()) => Some(Some(*u)),
            GeneralName::Invalid(_, raw) if has_spiffe_scheme(raw) => Some(None),
            _ => None,
        })
        .collect();
    match spiffe.as_slice() {
        [] => {}
        [Some(uri)] => {
            check_spiffe_id(uri).map_err(|reason| IdentityError::MalformedSpiffe { reason })?;
            return Ok(((*uri).to_owned(), IdentityKind::Spiffe));
        }
        [None] => return Err(IdentityError::MalformedSpiffe { reason: "it is not valid text" }),
        many => return Err(IdentityError::MultipleSpiffe { count: many.len() }),
    }

    if let Some(dns) = names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    }) {
        if dns.contains('*') {
            return Err(IdentityError::InvalidId {
                kind: IdentityKind::Dns,
                reason: "a wildcard DNS name names no single caller".to_owned(),
            });
        }
        return Ok((dns.to_ascii_lowercase(), IdentityKind::Dns));
    }

    if let Some(cn) = cert.subject().iter_common_name().next() {
        let cn = cn.as_str().map_err(|_| IdentityError::InvalidId {
            kind: IdentityKind::CommonName,
            reason: "the common name is not a UTF-8, printable or IA5 string".to_owned(),
        })?;
        return Ok((cn.to_owned(), IdentityKind::CommonName));
    }
    Err(IdentityError::NoIdentity)
}

fn has_spiffe_scheme(uri: &[u8]) -> bool {
    uri.get(..7).is_some_and(|p| p.eq_ignore_ascii_case(b"spiffe:"))
}

/// Checks a SPIFFE ID against the SPIFFE ID standard (section 2): the scheme `spiffe`
/// lowercase, a trust domain of `a-z 0-9 . - _`, and an optional path of non-empty segments
/// of `A-Z a-z 0-9 . - _` other than `.` and `..`; no query, fragment, port or user info.
pub(crate) fn check_spiffe_id(id: &str) -> Result<(), &'static str> {
    let rest = id.strip_prefix("spiffe://").ok_or("it must start with `spiffe://` (lowercase scheme)")?;
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if domain.is_empty() {
        return Err("the trust domain is empty");
    }
    if !domain.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')) {
        return Err("the trust domain may only hold lowercase letters, digits, `.`, `-` and `_`");
    }
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err("the path has an empty segment (`//` or a trailing `/`)");
        }
        if segment == "." || segment == ".." {
            return Err("the path has a `.` or `..` segment");
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
            return Err("the path may only hold letters, digits, `.`, `-`, `_` and `/`");
        }
    }
    Ok(())
}

fn check_id(id: &str, kind: IdentityKind) -> Result<(), IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidId { kind, reason };
    if id.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(format!("it is {} bytes long; at most {MAX_ID_LEN} are allowed", id.len())));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "it may only hold printable ASCII characters, without spaces or control characters".to_owned(),
        ));
    }
    // A DNS name or CN that looks like a URI could pass for a SPIFFE id in the policy
    // (which matches ids as strings): refuse it rather than let `kind` decide.
    if kind != IdentityKind::Spiffe && (id.contains(':') || id.contains('/')) {
        return Err(invalid("a DNS name or common name must not contain ':' or '/'".to_owned()));
    }
    Ok(())
}

/// Formats a certificate serial (the DER INTEGER's content bytes) as lowercase hex without
/// leading zero bytes and without colons: `00:8f:01` becomes `8f01`. A zero serial is `00`.
/// This is the form `dev::issue_crl` takes.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let digits = &raw[start..];
    if digits.is_empty() {
        return "00".to_owned();
    }
    digits.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, SerialNumber};

    use super::*;

    fn cert(sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
        cert_with(sans, cn, |_| {})
    }

    fn cert_with(sans: Vec<SanType>, cn: Option<&str>, tweak: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        tweak(&mut params);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn spiffe_id_wins_over_dns_and_cn_and_other_uris_are_ignored() {
        let der = cert(
            vec![dns("svc.example.org"), uri("https://example.org/x"), uri("spiffe://example.org/service/a")],
            Some("a"),
        );
        let id = identity_from_der(&der).unwrap();
        assert_eq!(id.id, "spiffe://example.org/service/a");
        assert_eq!(id.kind, IdentityKind::Spiffe);
        assert_eq!(id.to_string(), "spiffe://example.org/service/a");
    }

    #[test]
    fn two_spiffe_ids_are_refused() {
        let der = cert(vec![uri("spiffe://example.org/a"), uri("spiffe://example.org/b")], None);
        assert_eq!(identity_from_der(&der), Err(IdentityError::MultipleSpiffe { count: 2 }));
    }

    #[test]
    fn malformed_spiffe_id_is_an_error_not_a_fall_back_to_dns() {
        for bad in ["SPIFFE://example.org/a", "spiffe://Example.org/a", "spiffe:///a", "spiffe://example.org/a/../b"] {
            let der = cert(vec![uri(bad), dns("fallback.example.org")], None);
            let err = identity_from_der(&der).unwrap_err();
            assert!(matches!(err, IdentityError::MalformedSpiffe { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn dns_only_gives_the_first_dns_name_lowercased() {
        let der =
            cert(vec![uri("https://example.org/"), dns("Batch.Example.org"), dns("other.example.org")], Some("x"));
        let id = identity_from_der(&der).unwrap();
        assert_eq!((id.id.as_str(), id.kind), ("batch.example.org", IdentityKind::Dns));
    }

    #[test]
    fn wildcard_dns_name_is_refused() {
        let der = cert(vec![dns("*.example.org")], None);
        assert!(matches!(identity_from_der(&der), Err(IdentityError::InvalidId { kind: IdentityKind::Dns, .. })));
    }

    #[test]
    fn cn_only_gives_the_common_name() {
        let der = cert(vec![], Some("legacy-batch"));
        let id = identity_from_der(&der).unwrap();
        assert_eq!((id.id.as_str(), id.kind), ("legacy-batch", IdentityKind::CommonName));
    }

    #[test]
    fn no_name_at_all_is_an_error() {
        assert_eq!(identity_from_der(&cert(vec![], None)), Err(IdentityError::NoIdentity));
    }

    #[test]
    fn ids_unfit_for_logs_are_refused_without_echoing_them() {
        let long = format!("{}.example.org", "a".repeat(250));
        for (der, kind) in [
            (cert(vec![], Some("two words")), IdentityKind::CommonName),
            (cert(vec![], Some("line\nbreak")), IdentityKind::CommonName),
            (cert(vec![], Some("blåbær")), IdentityKind::CommonName),
            (cert(vec![dns(&long)], None), IdentityKind::Dns),
        ] {
            let err = identity_from_der(&der).unwrap_err();
            assert!(matches!(err, IdentityError::InvalidId { kind: k, .. } if k == kind), "{err}");
            assert!(!err.to_string().contains("two words") && !err.to_string().contains("aaaa"), "{err}");
        }
    }

    #[test]
    fn serial_is_lowercase_hex_without_leading_zero_bytes() {
        assert_eq!(serial_hex(&[0x00, 0x8F, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(serial_hex(&[0x0a]), "0a");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "00");
        let der =
            cert_with(vec![], Some("s"), |p| p.serial_number = Some(SerialNumber::from_slice(&[0xAB, 0xCD, 0x01])));
        assert_eq!(identity_from_der(&der).unwrap().serial, "abcd01");
    }

    #[test]
    fn garbage_and_trailing_bytes_are_not_a_certificate() {
        assert!(matches!(identity_from_der(b"not a cert"), Err(IdentityError::NotACertificate { .. })));
        let mut der = cert(vec![], Some("a"));
        der.push(0);
        assert!(matches!(identity_from_der(&der), Err(IdentityError::NotACertificate { .. })));
    }

    #[test]
    fn spiffe_id_format() {
        for ok in ["spiffe://example.org", "spiffe://example.org/service/token-caller", "spiffe://a_b.c-d/x.Y_z"] {
            assert_eq!(check_spiffe_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "spiffe://",
            "spiffe://ex ample.org/a",
            "spiffe://example.org/",
            "spiffe://example.org//a",
            "spiffe://e.org:443/a",
            "spiffe://e.org/a?q",
            "spiffe://u@e.org/a",
            "spiffe://e.org/./a",
            "http://e.org/a",
        ] {
            assert!(check_spiffe_id(bad).is_err(), "{bad}");
        }
    }
}
