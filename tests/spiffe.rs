#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The SPIFFE Workload API as the server's TLS source (`[server] tls_source = "spiffe"`),
//! against a Workload API server this test runs on a Unix socket (the public
//! `workload.proto`'s `FetchX509SVID`, served with tonic): the vault takes its X.509-SVID
//! and the trust bundle from it, callers' SVIDs are verified against the bundle of their
//! own trust domain, and a rotation the agent pushes in the middle of a load of token
//! requests is recorded and put in force with not one failed request. With the audit
//! database locked, a rotation waits for its record; it goes into force once the lock is gone.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture::{self, register_request, token_request};
use common::server::TestServer;
use pogo_vault::proto::v1 as pb;
use pogo_vault::tls::ClientTlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_stream::StreamExt;

#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct X509Svid {
    #[prost(string, tag = "1")]
    spiffe_id: String,
    #[prost(bytes = "vec", tag = "2")]
    x509_svid: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    x509_svid_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    hint: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    svids: Vec<X509Svid>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "3")]
    federated_bundles: HashMap<String, Vec<u8>>,
}

/// A Workload API on `socket` that streams the current response, and every new one.
fn serve_workload_api(socket: &Path, current: tokio::sync::watch::Receiver<X509SvidResponse>) {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let service = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let current = current.clone();
        async move {
            assert_eq!(req.uri().path(), "/SpiffeWorkloadAPI/FetchX509SVID", "only X.509-SVIDs are asked for");
            let handler = tower::service_fn(move |_: tonic::Request<X509SvidRequest>| {
                let stream = tokio_stream::wrappers::WatchStream::new(current.clone()).map(Ok::<_, tonic::Status>);
                async move { Ok::<_, tonic::Status>(tonic::Response::new(stream)) }
            });
            let reply =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::default()).server_streaming(handler, req).await;
            Ok::<_, std::convert::Infallible>(reply)
        }
    });
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move { tonic::transport::Server::builder().serve_with_incoming(service, incoming).await });
}

/// A CA of its own for the vault's SVIDs.
fn svid_ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "spiffe test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// An X.509-SVID for the vault (with the DNS name the test's callers check), its PKCS#8 key.
fn vault_svid(ca: &CertifiedIssuer<'static, KeyPair>, id: &str) -> (Vec<u8>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.subject_alt_names.push(SanType::URI(id.try_into().unwrap()));
    // An X.509-SVID says CA:FALSE explicitly (the SPIFFE X.509-SVID spec; `spiffe` checks it).
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

fn der_of_pem(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut &pem[..]).next().unwrap().unwrap().to_vec()
}

/// The certificate the vault presents to a new connection.
async fn presented(addr: std::net::SocketAddr, files: &ClientTlsFiles) -> Vec<u8> {
    let pem = std::fs::read(&files.ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> =
        rustls_pemfile::certs(&mut &std::fs::read(&files.cert).unwrap()[..]).map(Result::unwrap).collect();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(&files.key).unwrap()[..]).unwrap().unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_keep_working_across_an_svid_rotation_pushed_by_the_workload_api() {
    let sdir = tempfile::tempdir().unwrap();
    let socket = sdir.path().join("agent.sock");
    let ca = svid_ca();
    let ca_pem = sdir.path().join("svid-ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let vault_id = format!("spiffe://{}/pogo-vault", fixture::TRUST);
    let (first, first_key) = vault_svid(&ca, &vault_id);
    let (tx, rx) = tokio::sync::watch::channel(X509SvidResponse::default());
    serve_workload_api(&socket, rx);
    let bundle_of = |dev_ca: &Path| [der_of_pem(dev_ca), ca.der().to_vec()].concat();
    let response = |svid: &[u8], key: &[u8], bundle: Vec<u8>| X509SvidResponse {
        svids: vec![X509Svid {
            spiffe_id: vault_id.clone(),
            x509_svid: svid.to_vec(),
            x509_svid_key: key.to_vec(),
            bundle,
            hint: String::new(),
        }],
        ..X509SvidResponse::default()
    };

    // The trust bundle holds the callers' CA (the test PKI's) and the CA of the vault's SVIDs.
    let dev_ca = Arc::new(Mutex::new(None));
    let ts = TestServer::start_with(|o| {
        *dev_ca.lock().unwrap() = Some(o.tls.client_ca.clone());
        tx.send_replace(response(&first, &first_key, bundle_of(&o.tls.client_ca)));
        o.spiffe = Some(pogo_vault::server::SpiffeOptions {
            socket: format!("unix:{}", socket.display()),
            trust_domains: Vec::new(),
        });
        o.caller_requests_per_second = 100_000.0;
    })
    .await;
    let dev_ca = dev_ca.lock().unwrap().clone().unwrap();
    let addr = ts.server().addr;
    // Callers verify the vault against the SVID CA; their own certificates are the test PKI's.
    let files = |name: &str| ClientTlsFiles { ca: ca_pem.clone(), ..ts.files(name) };
    let connect = |name: &str| {
        let f = files(name);
        let endpoint = ts.endpoint.clone();
        async move { pogo_vault::client::connect(&endpoint, &f, Some("localhost")).await }
    };
    assert_eq!(presented(addr, &files("token-caller")).await, first, "the vault presents its SVID");
    let admin = connect("admin").await.unwrap();
    pb::tenant_service_client::TenantServiceClient::new(admin)
        .register_client_key(register_request("t0", 0))
        .await
        .unwrap();

    // A load of token requests: one long-lived channel, and new connections all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::<String>::new())));
    let mut load = Vec::new();
    for fresh in [false, true] {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let (f, endpoint) = (files("token-caller"), ts.endpoint.clone());
        load.push(tokio::spawn(async move {
            let mut ch = pogo_vault::client::connect(&endpoint, &f, Some("localhost")).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                if fresh {
                    match pogo_vault::client::connect(&endpoint, &f, Some("localhost")).await {
                        Ok(c) => ch = c,
                        Err(e) => {
                            failed.lock().unwrap().push(format!("connect: {e}"));
                            continue;
                        }
                    }
                }
                match pb::token_service_client::TokenServiceClient::new(ch.clone())
                    .get_access_token(token_request("t0"))
                    .await
                {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failed.lock().unwrap().push(e.to_string());
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The agent rotates the vault's SVID (a new key) mid-load.
    let (second, second_key) = vault_svid(&ca, &vault_id);
    let rotated_at = Instant::now();
    tx.send_replace(response(&second, &second_key, bundle_of(&dev_ca)));
    while presented(addr, &files("token-caller")).await != second {
        assert!(rotated_at.elapsed() < Duration::from_secs(10), "the rotated SVID was not put in force");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = rotated_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} requests failed, the first: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    let served = served.load(Ordering::Relaxed);
    assert!(served > 50, "the load ran: {served}");

    // The rotation is on the record (put in force, not refused), naming the new SVID's serial.
    let serial = pogo_vault::tls::identity_from_der(&second).unwrap().serial;
    let audit = pogo_vault::audit::open_reader(&ts.audit_db()).unwrap();
    let events = pogo_vault::audit::events_from(&audit, 1, 100_000).unwrap();
    let rotated: Vec<_> = events
        .iter()
        .filter(|e| e.record.action == pogo_vault::audit::Action::CertificatesReloaded)
        .filter(|e| e.record.outcome == pogo_vault::audit::Outcome::Ok && e.record.detail.contains(&serial))
        .collect();
    assert_eq!(rotated.len(), 1, "one record of the rotation");
    assert!(rotated[0].record.detail.contains(&vault_id), "{:?}", rotated[0].record.detail);

    // Trust domains: a caller whose SPIFFE ID names another trust domain is refused, though
    // its certificate chains to a CA in this trust domain's bundle; and so is a caller of a
    // CA in no bundle.
    let other = sdir.path().join("other");
    pogo_vault::tls::issue_client_cert(
        &dev_ca,
        &dev_ca.with_file_name("ca-key.pem"),
        &other.with_extension("pem"),
        &other.with_extension("key"),
        Some("spiffe://other.td/service/token-caller"),
        None,
        "other",
    )
    .unwrap();
    let other_files =
        ClientTlsFiles { ca: ca_pem.clone(), cert: other.with_extension("pem"), key: other.with_extension("key") };
    // Refused at the handshake: the connection fails, or its first call fails as a broken
    // connection, never with an answer from the server (PERMISSION_DENIED would
    // mean the TLS layer let the certificate in and the policy refused it).
    let at_handshake = |files: ClientTlsFiles| {
        let endpoint = ts.endpoint.clone();
        async move {
            match pogo_vault::client::connect(&endpoint, &files, Some("localhost")).await {
                Err(_) => true,
                Ok(ch) => match pb::token_service_client::TokenServiceClient::new(ch)
                    .get_access_token(token_request("t0"))
                    .await
                {
                    Ok(_) => false,
                    // The server's TLS alert reaches the first call as a broken connection: tonic
                    // reports it as UNAVAILABLE, UNKNOWN "transport error" or CANCELLED,
                    // depending on when the alert arrives (all three seen here).
                    Err(s) => {
                        matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
                            || (s.code() == tonic::Code::Unknown && s.message().contains("transport error"))
                    }
                },
            }
        }
    };
    assert!(at_handshake(other_files).await, "a caller of another trust domain passed the handshake");
    let foreign = ClientTlsFiles { ca: ca_pem.clone(), ..ts.files("foreign") };
    assert!(at_handshake(foreign).await, "a caller of a CA in no bundle passed the handshake");

    // Audit before effect: with the audit database locked, a rotation the agent pushes is
    // not put in force (its record cannot be written); once the lock is gone it is, recorded.
    let (third, third_key) = vault_svid(&ca, &vault_id);
    let lock = common::rusqlite_open(&ts.audit_db());
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    tx.send_replace(response(&third, &third_key, bundle_of(&dev_ca)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(presented(addr, &files("token-caller")).await, second, "a rotation went into force unrecorded");
    lock.execute_batch("ROLLBACK").unwrap();
    let unlocked = Instant::now();
    while presented(addr, &files("token-caller")).await != third {
        assert!(unlocked.elapsed() < Duration::from_secs(15), "the rotation was not retried once the log was writable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let serial = pogo_vault::tls::identity_from_der(&third).unwrap().serial;
    let events = pogo_vault::audit::events_from(&audit, 1, 100_000).unwrap();
    assert!(
        events.iter().any(|e| e.record.action == pogo_vault::audit::Action::CertificatesReloaded
            && e.record.outcome == pogo_vault::audit::Outcome::Ok
            && e.record.detail.contains(&serial)),
        "the retried rotation is on the record"
    );
    eprintln!("{served} tokens, 0 failed; the rotated SVID was in force {took:?} after the agent pushed it");
}
