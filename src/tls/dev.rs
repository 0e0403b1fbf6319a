//! A development PKI: a CA, a server certificate for `localhost`, client certificates with
//! SPIFFE IDs for the three roles, more client certificates and CRLs on demand.
//!
//! For `dev` mode, tests and operators trying the vault out; production certificates come
//! from the organisation's own CA (`certs/README.md`).
//!
//! Invariants: keys are ECDSA P-256; private keys are written into files created with mode
//! 0600 and the directory is created 0700; no function overwrites an existing certificate or
//! key (CRLs, which are re-issued in place, are replaced atomically); every client
//! certificate issued here yields a valid [`CallerIdentity`](super::CallerIdentity).

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::ca::{LoadedCa, new_ca, new_key, parse_serial, random_serial, rcgen_err, set_validity};
use super::files::{self, KEY_MODE, PUBLIC_MODE, refuse_existing, show};
use super::identity::check_spiffe_id;
use super::{ClientTlsFiles, ServerTlsFiles, TlsError, identity_from_der};

/// The development clients: name (the CN and file stem) and SPIFFE path under the trust domain.
const DEV_CLIENTS: [(&str, &str); 4] = [
    ("token-caller", "service/token-caller"),
    ("admin", "service/admin"),
    ("auditor", "team/security/auditor"),
    ("operator", "service/operator"),
];

/// How long a CRL issued here says it is current.
const CRL_LIFETIME: Duration = Duration::days(30);

/// Where [`generate_dev_pki`] puts its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    pub dir: PathBuf,
    /// `ca.pem`: the CA certificate, the client CA bundle for the server and the trust root for clients.
    pub ca_cert: PathBuf,
    /// `ca-key.pem` (mode 0600): the CA key, for issuing more certificates and CRLs.
    pub ca_key: PathBuf,
    /// `server.pem`: for `localhost`, `127.0.0.1` and `::1`.
    pub server_cert: PathBuf,
    /// `server-key.pem` (mode 0600).
    pub server_key: PathBuf,
    /// `token-caller`, `admin`, `auditor`, in that order.
    pub clients: Vec<DevClient>,
}

/// One development client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevClient {
    /// `token-caller`, `admin` or `auditor`; also the certificate's CN.
    pub name: String,
    /// `spiffe://{trust_domain}/service/token-caller` etc.
    pub spiffe_id: String,
    /// `{name}.pem`.
    pub cert: PathBuf,
    /// `{name}-key.pem` (mode 0600).
    pub key: PathBuf,
}

impl DevPki {
    /// The paths and SPIFFE IDs [`generate_dev_pki`] uses for `out`, without touching the
    /// disk: for reusing a PKI generated earlier.
    pub fn layout(out: &Path, trust_domain: &str) -> DevPki {
        let clients = DEV_CLIENTS
            .iter()
            .map(|(name, path)| DevClient {
                name: (*name).to_owned(),
                spiffe_id: format!("spiffe://{trust_domain}/{path}"),
                cert: out.join(format!("{name}.pem")),
                key: out.join(format!("{name}-key.pem")),
            })
            .collect();
        DevPki {
            dir: out.to_owned(),
            ca_cert: out.join("ca.pem"),
            ca_key: out.join("ca-key.pem"),
            server_cert: out.join("server.pem"),
            server_key: out.join("server-key.pem"),
            clients,
        }
    }

    /// The development client called `name`.
    pub fn client(&self, name: &str) -> Option<&DevClient> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// The server's TLS files: this server certificate, this CA as client CA, no CRL.
    pub fn server_files(&self) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: self.ca_cert.clone(),
            crls: Vec::new(),
        }
    }

    /// The TLS files of the development client called `name`, trusting this CA.
    pub fn client_files(&self, name: &str) -> Option<ClientTlsFiles> {
        self.client(name).map(|c| ClientTlsFiles { ca: self.ca_cert.clone(), cert: c.cert.clone(), key: c.key.clone() })
    }

    fn all_files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.ca_cert, &self.ca_key, &self.server_cert, &self.server_key]
            .into_iter()
            .chain(self.clients.iter().flat_map(|c| [&c.cert, &c.key]))
    }
}

/// Generates a development PKI in `out` (created with mode 0700 if missing); see [`DevPki`]
/// for the files. Refuses to overwrite any of them: remove the directory to start over, or
/// use [`DevPki::layout`] to reuse it.
pub fn generate_dev_pki(out: &Path, trust_domain: &str) -> Result<DevPki, TlsError> {
    let td = if trust_domain.contains('/') { Err("it must not contain `/`") } else { Ok(()) };
    td.and_then(|()| check_spiffe_id(&format!("spiffe://{trust_domain}"))).map_err(|reason| {
        TlsError::InvalidArgument { field: "trust domain", reason: format!("{reason} (for example `example.org`)") }
    })?;
    let pki = DevPki::layout(out, trust_domain);
    refuse_existing(pki.all_files())?;
    files::create_private_dir(out)?;

    let ca = new_ca("pogo-vault development CA")?;
    write_key_and_cert(&pki.ca_key, ca.key(), &pki.ca_cert, &ca.pem())?;

    let what = "server certificate";
    let mut params = leaf_params(what, "pogo-vault development server", None)?;
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(rcgen_err(what))?),
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (cert, key) = sign_leaf(what, &params, &ca)?;
    write_key_and_cert(&pki.server_key, &key, &pki.server_cert, &cert.pem())?;

    for client in &pki.clients {
        let params = client_params(Some(&client.spiffe_id), None, &client.name, None)?;
        let (cert, key) = sign_leaf("client certificate", &params, &ca)?;
        write_key_and_cert(&client.key, &key, &client.cert, &cert.pem())?;
    }
    Ok(pki)
}

/// Creates a new self-signed CA (ECDSA P-256, a year, may sign end-entity certificates and
/// CRLs) in `out_cert` and `out_key` (mode 0600). For a second, foreign CA in tests, or a
/// fresh development CA.
pub fn generate_ca(out_cert: &Path, out_key: &Path, cn: &str) -> Result<(), TlsError> {
    check_cn(cn)?;
    refuse_existing([out_cert, out_key])?;
    let ca = new_ca(cn)?;
    write_key_and_cert(out_key, ca.key(), out_cert, &ca.pem())
}

/// Issues a client certificate (clientAuth, ECDSA P-256, a year but not past the CA's
/// expiry) from the CA in `ca_cert_pem`/`ca_key_pem`: with the SPIFFE ID as URI SAN and the
/// DNS name as DNS SAN when given, and `cn` as subject CN. Writes `out_cert` and `out_key`
/// (mode 0600), refusing to overwrite either.
///
/// Refuses a certificate the vault would not accept as a caller identity (for example a CN
/// with spaces and no SAN), so an operator learns it here rather than at the first call.
pub fn issue_client_cert(
    ca_cert_pem: &Path,
    ca_key_pem: &Path,
    out_cert: &Path,
    out_key: &Path,
    spiffe_id: Option<&str>,
    dns: Option<&str>,
    cn: &str,
) -> Result<(), TlsError> {
    refuse_existing([out_cert, out_key])?;
    let ca = LoadedCa::load(ca_cert_pem, ca_key_pem)?;
    let params = client_params(spiffe_id, dns, cn, Some(ca.not_after))?;
    let what = "client certificate";
    let (cert, key) = sign_leaf(what, &params, &ca.issuer)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).map_err(|e| TlsError::Issue {
        what: what.to_owned(),
        reason: format!("the issued certificate does not parse: {e}"),
    })?;
    ca.check_issued(what, parsed.issuer().as_raw())?;
    identity_from_der(cert.der()).map_err(|e| TlsError::InvalidArgument {
        field: "client certificate names",
        reason: format!("the vault would refuse this certificate: {e}"),
    })?;
    write_key_and_cert(out_key, &key, out_cert, &cert.pem())
}

/// Issues a PEM CRL from the CA in `ca_cert_pem`/`ca_key_pem` that revokes the given serials
/// (hex as [`CallerIdentity::serial`](super::CallerIdentity) shows them; colons and a `0x`
/// prefix are accepted; an empty list publishes "nothing revoked"). Replaces `out`
/// atomically, so a server never reads half a CRL. Current from an hour ago for 30 days.
pub fn issue_crl(
    ca_cert_pem: &Path,
    ca_key_pem: &Path,
    revoked_serials_hex: &[String],
    out: &Path,
) -> Result<(), TlsError> {
    let serials = revoked_serials_hex.iter().map(|s| parse_serial(s)).collect::<Result<Vec<_>, _>>()?;
    let ca = LoadedCa::load(ca_cert_pem, ca_key_pem)?;
    if !ca.crl_signer {
        return Err(TlsError::InvalidArgument {
            field: "CA certificate",
            reason: format!("{} may not sign CRLs (its key usage lacks cRLSign)", show(ca_cert_pem)),
        });
    }
    let now = OffsetDateTime::now_utc();
    // CRL numbers must increase with each CRL from a CA: the issue time in milliseconds does.
    let crl_number = u64::try_from((now - OffsetDateTime::UNIX_EPOCH).whole_milliseconds()).unwrap_or(0);
    let params = CertificateRevocationListParams {
        this_update: now - Duration::hours(1),
        next_update: now + CRL_LIFETIME,
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .into_iter()
            .map(|serial_number| RevokedCertParams {
                serial_number,
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: ca.key_id_method.clone(),
    };
    let what = "CRL";
    let crl = params.signed_by(&ca.issuer).map_err(rcgen_err(what))?;
    let (_, parsed) = x509_parser::parse_x509_crl(crl.der()).map_err(|e| TlsError::Issue {
        what: what.to_owned(),
        reason: format!("the issued CRL does not parse: {e}"),
    })?;
    ca.check_issued(what, parsed.issuer().as_raw())?;
    files::replace(out, crl.pem().map_err(rcgen_err(what))?.as_bytes(), PUBLIC_MODE)
}

fn check_cn(cn: &str) -> Result<(), TlsError> {
    if cn.trim().is_empty() || cn.len() > 64 || cn.chars().any(char::is_control) {
        return Err(TlsError::InvalidArgument {
            field: "common name",
            reason: "it must be 1 to 64 bytes without control characters".to_owned(),
        });
    }
    Ok(())
}

/// Parameters common to end-entity certificates: CN, digital signature, random serial,
/// validity, authority key identifier.
fn leaf_params(what: &str, cn: &str, cap: Option<OffsetDateTime>) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial(what)?);
    set_validity(&mut params, cap);
    Ok(params)
}

fn client_params(
    spiffe_id: Option<&str>,
    dns: Option<&str>,
    cn: &str,
    cap: Option<OffsetDateTime>,
) -> Result<CertificateParams, TlsError> {
    check_cn(cn)?;
    let what = "client certificate";
    let mut params = leaf_params(what, cn, cap)?;
    if let Some(id) = spiffe_id {
        check_spiffe_id(id)
            .map_err(|reason| TlsError::InvalidArgument { field: "SPIFFE ID", reason: reason.to_owned() })?;
        params.subject_alt_names.push(SanType::URI(id.try_into().map_err(rcgen_err(what))?));
    }
    if let Some(dns) = dns {
        let ok = !dns.is_empty()
            && dns.len() <= 253
            && dns.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
        if !ok {
            return Err(TlsError::InvalidArgument {
                field: "DNS name",
                reason: "it must be a host name of letters, digits, `.` and `-` (no wildcards)".to_owned(),
            });
        }
        params.subject_alt_names.push(SanType::DnsName(dns.try_into().map_err(rcgen_err(what))?));
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn sign_leaf(
    what: &str,
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let key = new_key(what)?;
    let cert = params.signed_by(&key, issuer).map_err(rcgen_err(what))?;
    Ok((cert, key))
}

/// Writes the key (mode 0600) first, then the certificate.
fn write_key_and_cert(key_path: &Path, key: &KeyPair, cert_path: &Path, cert_pem: &str) -> Result<(), TlsError> {
    let key_pem = Zeroizing::new(key.serialize_pem());
    files::write_new(key_path, key_pem.as_bytes(), KEY_MODE)?;
    files::write_new(cert_path, cert_pem.as_bytes(), PUBLIC_MODE)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generated_keys_are_0600_the_directory_0700_and_identities_spiffe() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/pki");
        let pki = generate_dev_pki(&out, "example.org").unwrap();
        assert_eq!(mode(&out), 0o700);
        for key in [&pki.ca_key, &pki.server_key].into_iter().chain(pki.clients.iter().map(|c| &c.key)) {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        let names: Vec<_> = pki.clients.iter().map(|c| (c.name.as_str(), c.spiffe_id.as_str())).collect();
        assert_eq!(
            names,
            [
                ("token-caller", "spiffe://example.org/service/token-caller"),
                ("admin", "spiffe://example.org/service/admin"),
                ("auditor", "spiffe://example.org/team/security/auditor"),
                ("operator", "spiffe://example.org/service/operator"),
            ]
        );
        for c in &pki.clients {
            let der = files::read_certs(&c.cert).unwrap().remove(0);
            let id = identity_from_der(&der).unwrap();
            assert_eq!(id.id, c.spiffe_id);
            assert_eq!(id.serial.len(), 32, "16-byte serial: {}", id.serial);
        }
        assert_eq!(pki, DevPki::layout(&out, "example.org"));
    }

    #[test]
    fn generating_twice_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_pki(dir.path(), "example.org").unwrap();
        let before = std::fs::read(dir.path().join("ca-key.pem")).unwrap();
        let err = generate_dev_pki(dir.path(), "example.org").unwrap_err();
        assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca-key.pem")).unwrap(), before);
    }

    #[test]
    fn bad_trust_domain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for td in ["", "Example.org", "example.org/x", "a b"] {
            let err = generate_dev_pki(dir.path(), td).unwrap_err();
            assert!(matches!(err, TlsError::InvalidArgument { field: "trust domain", .. }), "{td}: {err}");
        }
    }

    #[test]
    fn issued_client_certs_carry_the_requested_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        let issue = |stem: &str, spiffe: Option<&str>, dns: Option<&str>, cn: &str| {
            let (c, k) = (dir.path().join(format!("{stem}.pem")), dir.path().join(format!("{stem}-key.pem")));
            issue_client_cert(&pki.ca_cert, &pki.ca_key, &c, &k, spiffe, dns, cn).map(|()| {
                assert_eq!(mode(&k), 0o600);
                identity_from_der(&files::read_certs(&c).unwrap()[0]).unwrap()
            })
        };
        let id = issue("s", Some("spiffe://example.org/service/other"), Some("x.example.org"), "other").unwrap();
        assert_eq!((id.id.as_str(), id.kind), ("spiffe://example.org/service/other", crate::tls::IdentityKind::Spiffe));
        let id = issue("d", None, Some("batch.example.org"), "batch").unwrap();
        assert_eq!((id.id.as_str(), id.kind), ("batch.example.org", crate::tls::IdentityKind::Dns));
        let id = issue("c", None, None, "legacy-batch").unwrap();
        assert_eq!((id.id.as_str(), id.kind), ("legacy-batch", crate::tls::IdentityKind::CommonName));

        assert!(matches!(issue("bad1", Some("https://x"), None, "x"), Err(TlsError::InvalidArgument { .. })));
        assert!(matches!(issue("bad2", None, Some("*.example.org"), "x"), Err(TlsError::InvalidArgument { .. })));
        assert!(matches!(issue("bad3", None, None, "two words"), Err(TlsError::InvalidArgument { .. })));
        assert!(matches!(issue("s", None, None, "again"), Err(TlsError::AlreadyExists { .. })));
    }

    #[test]
    fn issuing_with_a_key_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("c-key.pem"));
        let err = issue_client_cert(&pki.ca_cert, &pki.server_key, &c, &k, None, None, "x").unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let err = issue_client_cert(&pki.server_cert, &pki.server_key, &c, &k, None, None, "x").unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
        assert!(!c.exists() && !k.exists());
    }

    #[test]
    fn crl_lists_the_given_serials() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        generate_ca(&ca, &ca_key, "Test CA").unwrap();
        let out = dir.path().join("ca.crl");
        issue_crl(&ca, &ca_key, &["00:8f:01".to_owned(), "0x4a".to_owned(), "abc".to_owned()], &out).unwrap();
        let pem = std::fs::read(&out).unwrap();
        let der = rustls_pemfile::crls(&mut &pem[..]).next().unwrap().unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<_> = crl.iter_revoked_certificates().map(|r| crate::tls::serial_hex(r.raw_serial())).collect();
        assert_eq!(serials, ["8f01", "4a", "0abc"]);
        // Re-issuing replaces the file.
        issue_crl(&ca, &ca_key, &[], &out).unwrap();
        let err = issue_crl(&ca, &ca_key, &["xyz".to_owned()], &out).unwrap_err();
        assert!(matches!(err, TlsError::InvalidArgument { field: "revoked serial", .. }), "{err}");
    }
}
