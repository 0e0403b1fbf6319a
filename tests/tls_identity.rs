#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real TLS handshakes over TCP against the server configuration from `tls::load_server_config`:
//! who gets in (a client of the configured CA, not revoked, TLS 1.3), who does not (no
//! certificate, another CA, a revoked certificate, TLS 1.2 only), and which identity the
//! server reads from the peer certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pogo_vault::tls::{
    self, CallerIdentity, DevPki, IdentityKind, ServerTlsFiles, generate_ca, generate_dev_pki, identity_from_der,
    issue_client_cert, issue_crl, load_server_config,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut &pem[..]).collect::<Result<_, _>>().unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::private_key(&mut &pem[..]).unwrap().unwrap()
}

/// A client trusting the dev CA, speaking `versions`, presenting `identity` (cert, key) if any.
fn client_config(
    pki: &DevPki,
    identity: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs(&pki.ca_cert) {
        roots.add(c).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, k)) => builder.with_client_auth_cert(certs(cert), key(k)).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn tls13_client(pki: &DevPki, cert: &Path, key: &Path) -> Arc<ClientConfig> {
    client_config(pki, Some((cert, key)), &[&rustls::version::TLS13])
}

/// What the server saw: the peer's leaf certificate and the negotiated ALPN, or the handshake error.
type ServerSide = Result<(Vec<u8>, Option<Vec<u8>>), String>;

/// One connection over TCP on 127.0.0.1: the server accepts and, once the handshake is
/// complete, writes `ok`; the client connects and reads it. In TLS 1.3 the server judges the
/// client certificate after the client has finished its side of the handshake, so a refused
/// client learns it from the alert on its first read, which is why the client reads.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> (ServerSide, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server).accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or("no peer certificate")?;
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok((leaf, alpn))
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"ok" {
            return Err(format!("unexpected bytes {buf:?}"));
        }
        Ok(())
    };
    let client_result = tokio::time::timeout(TIMEOUT, client_side).await.expect("client side hung");
    let server_result = tokio::time::timeout(TIMEOUT, server_task).await.expect("server side hung").unwrap();
    (server_result, client_result)
}

fn dev_pki() -> (tempfile::TempDir, DevPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(&dir.path().join("pki"), "example.org").unwrap();
    (dir, pki)
}

fn server_config(pki: &DevPki, crls: Vec<std::path::PathBuf>) -> Arc<ServerConfig> {
    load_server_config(&ServerTlsFiles { crls, ..pki.server_files() }).unwrap()
}

fn assert_refused(outcome: (ServerSide, Result<(), String>), server_says: &str) {
    let (server, client) = outcome;
    let err = server.expect_err("the server accepted a caller it must refuse");
    assert!(err.contains(server_says), "server error {err:?} does not mention {server_says:?}");
    assert!(client.is_err(), "the client got through");
}

fn identity_of(outcome: (ServerSide, Result<(), String>)) -> CallerIdentity {
    let (server, client) = outcome;
    let (leaf, alpn) = server.expect("the server refused a valid caller");
    client.expect("the client failed");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    identity_from_der(&leaf).unwrap()
}

#[tokio::test]
async fn dev_client_is_accepted_and_identified_by_its_spiffe_id() {
    let (_dir, pki) = dev_pki();
    let server = server_config(&pki, vec![]);
    for client in &pki.clients {
        let outcome = handshake(server.clone(), tls13_client(&pki, &client.cert, &client.key)).await;
        let id = identity_of(outcome);
        assert_eq!(id.id, client.spiffe_id);
        assert_eq!(id.kind, IdentityKind::Spiffe);
        assert!(!id.serial.is_empty() && id.serial.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}

#[tokio::test]
async fn dns_and_cn_only_callers_are_identified_by_dns_name_and_cn() {
    let (dir, pki) = dev_pki();
    let server = server_config(&pki, vec![]);
    let d = |n: &str| dir.path().join(n);
    issue_client_cert(
        &pki.ca_cert,
        &pki.ca_key,
        &d("dns.pem"),
        &d("dns-key.pem"),
        None,
        Some("batch.example.org"),
        "batch",
    )
    .unwrap();
    issue_client_cert(&pki.ca_cert, &pki.ca_key, &d("cn.pem"), &d("cn-key.pem"), None, None, "legacy-batch").unwrap();

    let id = identity_of(handshake(server.clone(), tls13_client(&pki, &d("dns.pem"), &d("dns-key.pem"))).await);
    assert_eq!((id.id.as_str(), id.kind), ("batch.example.org", IdentityKind::Dns));
    let id = identity_of(handshake(server, tls13_client(&pki, &d("cn.pem"), &d("cn-key.pem"))).await);
    assert_eq!((id.id.as_str(), id.kind), ("legacy-batch", IdentityKind::CommonName));
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let (_dir, pki) = dev_pki();
    let client = client_config(&pki, None, &[&rustls::version::TLS13]);
    assert_refused(handshake(server_config(&pki, vec![]), client).await, "no certificates");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let (dir, pki) = dev_pki();
    let d = |n: &str| dir.path().join(n);
    generate_ca(&d("other-ca.pem"), &d("other-ca-key.pem"), "Another CA").unwrap();
    // Same SPIFFE ID as a legitimate caller: only the issuer differs.
    let spiffe = &pki.clients[0].spiffe_id;
    issue_client_cert(
        &d("other-ca.pem"),
        &d("other-ca-key.pem"),
        &d("x.pem"),
        &d("x-key.pem"),
        Some(spiffe),
        None,
        "x",
    )
    .unwrap();
    let client = tls13_client(&pki, &d("x.pem"), &d("x-key.pem"));
    assert_refused(handshake(server_config(&pki, vec![]), client).await, "UnknownIssuer");
}

#[tokio::test]
async fn revoked_client_is_refused_and_unrevoked_one_accepted_with_pem_and_der_crls() {
    let (dir, pki) = dev_pki();
    let revoked = pki.client("token-caller").unwrap();
    let kept = pki.client("admin").unwrap();
    let serial = identity_from_der(&certs(&revoked.cert)[0]).unwrap().serial;

    let crl_pem = dir.path().join("ca.crl.pem");
    issue_crl(&pki.ca_cert, &pki.ca_key, &[serial], &crl_pem).unwrap();
    let pem = std::fs::read(&crl_pem).unwrap();
    let der = rustls_pemfile::crls(&mut &pem[..]).next().unwrap().unwrap();
    let crl_der = dir.path().join("ca.crl");
    std::fs::write(&crl_der, der.as_ref()).unwrap();

    for crl in [crl_pem, crl_der] {
        let server = server_config(&pki, vec![crl]);
        assert_refused(handshake(server.clone(), tls13_client(&pki, &revoked.cert, &revoked.key)).await, "Revoked");
        let id = identity_of(handshake(server, tls13_client(&pki, &kept.cert, &kept.key)).await);
        assert_eq!(id.id, kept.spiffe_id);
    }
}

#[tokio::test]
async fn crl_of_another_ca_revokes_nothing_here() {
    // Unknown revocation status is allowed: a CRL that does not cover a certificate's
    // issuer must not lock that certificate out.
    let (dir, pki) = dev_pki();
    let d = |n: &str| dir.path().join(n);
    generate_ca(&d("other-ca.pem"), &d("other-ca-key.pem"), "Another CA").unwrap();
    let client = pki.client("auditor").unwrap();
    let serial = identity_from_der(&certs(&client.cert)[0]).unwrap().serial;
    issue_crl(&d("other-ca.pem"), &d("other-ca-key.pem"), &[serial], &d("other.crl")).unwrap();
    let id = identity_of(
        handshake(server_config(&pki, vec![d("other.crl")]), tls13_client(&pki, &client.cert, &client.key)).await,
    );
    assert_eq!(id.id, client.spiffe_id);
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let (_dir, pki) = dev_pki();
    let c = &pki.clients[0];
    let client = client_config(&pki, Some((&c.cert, &c.key)), &[&rustls::version::TLS12]);
    assert_refused(handshake(server_config(&pki, vec![]), client).await, "incompatible");
}

#[test]
fn tonic_client_config_builds_from_dev_files() {
    let (_dir, pki) = dev_pki();
    tls::tonic_client_tls(&pki.client_files("admin").unwrap(), "localhost").unwrap();
}
