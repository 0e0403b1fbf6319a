//! Where OTLP goes: a collector's OTLP/gRPC URL checked (`https`, or plain `http` to
//! loopback only) and turned into a tonic endpoint with its TLS. Shared by the audit sink
//! that exports log records and by the trace exporter, so both refuse and connect alike.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A collector and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpTarget {
    /// `https://host:port` (or `http://` on loopback).
    pub endpoint: String,
    /// PEM file of the CA(s) that issued the collector's certificate (required with https).
    pub ca: Option<PathBuf>,
    /// The name the collector's certificate must carry; default: the endpoint's host.
    pub server_name: Option<String>,
    /// PEM certificate and key presented to the collector (mutual TLS), both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl OtlpTarget {
    /// Checks the target: `Err((field, reason))` names the bad field (`endpoint`, `ca`,
    /// `cert`, `key`, `server_name`).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let raw = self.endpoint.as_str();
        let url = url::Url::parse(raw).map_err(|e| ("endpoint", format!("{raw:?} is not a URL: {e}")))?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(("endpoint", format!("{raw:?} names no host")))?;
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(("endpoint", "must be scheme://host:port only (OTLP/gRPC has a fixed path)".into()));
        }
        let loopback = host == "localhost"
            || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let tls_set = self.ca.is_some() || self.server_name.is_some() || self.cert.is_some() || self.key.is_some();
        match url.scheme() {
            "https" if self.ca.is_none() => {
                return Err(("ca", "an https endpoint needs ca (the PEM file of the collector's CA)".into()));
            }
            "https" => {}
            "http" if loopback && tls_set => {
                return Err(("endpoint", "ca, server_name, cert and key need an https endpoint".into()));
            }
            "http" if loopback => {}
            "http" => return Err(("endpoint", "plain http only to a collector on loopback; use https".into())),
            other => return Err(("endpoint", format!("scheme {other:?} is not http or https"))),
        }
        // Read and parsed now, so `config check` catches a file that is not PEM.
        let read = |key, f: &PathBuf| std::fs::read(f).map_err(|e| (key, format!("cannot read {}: {e}", f.display())));
        for (key, file) in [("ca", &self.ca), ("cert", &self.cert)] {
            if let Some(f) = file {
                let pem = read(key, f)?;
                let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
                    .collect::<Result<_, _>>()
                    .map_err(|e| (key, format!("{}: {e}", f.display())))?;
                if certs.is_empty() {
                    return Err((key, format!("{} holds no PEM certificate", f.display())));
                }
            }
        }
        if let Some(f) = &self.key {
            let pem = read("key", f)?;
            match rustls_pemfile::private_key(&mut &pem[..]) {
                Ok(Some(_)) => {}
                _ => return Err(("key", format!("{} holds no PEM private key", f.display()))),
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(("cert", "cert and key go together (mutual TLS), or neither".into()));
        }
        if let Some(name) = &self.server_name {
            rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|_| ("server_name", format!("{name:?} is not a DNS name or IP")))?;
        }
        Ok(())
    }

    /// The tonic endpoint (not connected yet), with TLS for https, each attempt bounded by
    /// `timeout`.
    pub fn endpoint(&self, timeout: Duration) -> Result<Endpoint, String> {
        // The URL as `check` read it (scheme and host normalised), not the raw text.
        let parsed = url::Url::parse(&self.endpoint).map_err(|e| format!("{}: {e}", self.endpoint))?;
        let url = parsed.as_str().trim_end_matches('/').to_owned();
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            // A connection dropped without a word is noticed in seconds, not when TCP gives up.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if parsed.scheme() == "https" {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some(name) = &self.server_name {
                tls = tls.domain_name(name.clone());
            }
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("{url}: TLS: {e}"))?;
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_https_with_a_ca_or_plain_on_loopback() {
        let t = |endpoint: &str| OtlpTarget { endpoint: endpoint.into(), ..OtlpTarget::default() };
        t("http://127.0.0.1:4317").check().unwrap();
        t("http://localhost:4317").check().unwrap();
        t("http://[::1]:4317").check().unwrap();
        assert_eq!(t("http://collector.internal:4317").check().unwrap_err().0, "endpoint");
        assert_eq!(t("https://collector.internal:4317").check().unwrap_err().0, "ca");
        assert_eq!(t("grpc://x:1").check().unwrap_err().0, "endpoint");
        assert_eq!(t("http://127.0.0.1:4317/v1/traces").check().unwrap_err().0, "endpoint");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "x").unwrap();
        let bad_ca = OtlpTarget { ca: Some(not_pem.clone()), ..t("https://c.internal:4317") };
        assert_eq!(bad_ca.check().unwrap_err().0, "ca");
        let pki = crate::tls::generate_dev_pki(&dir.path().join("pki"), "otlp.test").unwrap();
        let ca = pki.ca_cert.clone();
        let ok = OtlpTarget { ca: Some(ca.clone()), ..t("HTTPS://C.Internal:4317") };
        ok.check().unwrap();
        let tls = ok.endpoint(Duration::from_secs(1)).unwrap();
        assert_eq!(tls.uri().to_string(), "https://c.internal:4317/", "the normalised URL, with TLS");
        let half = OtlpTarget { ca: Some(ca.clone()), cert: Some(ca.clone()), ..t("https://c.internal:4317") };
        assert_eq!(half.check().unwrap_err().0, "cert");
        let bad_key = OtlpTarget { cert: Some(ca.clone()), key: Some(not_pem), ..half.clone() };
        assert_eq!(bad_key.check().unwrap_err().0, "key");
        let missing = OtlpTarget { ca: Some(dir.path().join("no.pem")), ..t("https://c.internal:4317") };
        assert_eq!(missing.check().unwrap_err().0, "ca");
        let plain_tls = OtlpTarget { ca: Some(ca), ..t("http://127.0.0.1:4317") };
        assert_eq!(plain_tls.check().unwrap_err().0, "endpoint");
    }
}
