//! `[audit.witness]`: the witness destinations of the serve configuration, checked before
//! serving (every error names its key), and the TLS client configuration of the syslog
//! witness (rustls with the ring provider passed explicitly: the one crypto provider).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// The first pause after a failed delivery.
pub(super) const FIRST_RETRY: Duration = Duration::from_millis(100);

/// `[audit.witness]`: where checkpoints go besides the audit database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WitnessConfig {
    /// `[audit.witness.file]`: an append-only JSON-lines file.
    pub file: Option<FileWitnessConfig>,
    /// `[audit.witness.syslog]`: a syslog receiver over TCP (optionally TLS).
    pub syslog: Option<SyslogWitnessConfig>,
    /// Checkpoints kept per witness while it is down; beyond this the oldest are dropped.
    pub backlog: usize,
    /// The longest pause between delivery attempts, in seconds.
    pub retry_max_secs: f64,
}

impl Default for WitnessConfig {
    fn default() -> Self {
        Self { file: None, syslog: None, backlog: 10_000, retry_max_secs: 10.0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWitnessConfig {
    /// The JSON-lines file (created with mode 0640 if missing; appended to, never rewritten).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogWitnessConfig {
    /// `host:port` of the receiver.
    pub address: String,
    /// Wrap the connection in TLS (RFC 5425), verifying the receiver's certificate.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA(s) that issued the receiver's certificate (required with `tls`).
    pub ca: Option<PathBuf>,
    /// The name the receiver's certificate must carry; default: the host of `address`.
    pub server_name: Option<String>,
    /// HOSTNAME field of each message; default: this machine's host name.
    pub hostname: Option<String>,
    /// Syslog facility number (0 to 23); default 13 (log audit).
    #[serde(default = "default_facility")]
    pub facility: u8,
}

fn default_facility() -> u8 {
    13
}

impl WitnessConfig {
    /// Checks the section before serving: `Err((key, reason))` names the bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=1_000_000).contains(&self.backlog) {
            return Err(("audit.witness.backlog", format!("{} is not between 1 and 1000000", self.backlog)));
        }
        let r = self.retry_max_secs;
        if !(r.is_finite() && r > 0.0 && r <= 3600.0) {
            return Err(("audit.witness.retry_max_secs", format!("{r} is not a number of seconds between 0 and 3600")));
        }
        if let Some(f) = &self.file {
            if f.path.as_os_str().is_empty() || f.path.file_name().is_none() {
                return Err(("audit.witness.file.path", "must name a file".into()));
            }
            if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty())
                && !dir.is_dir()
            {
                return Err(("audit.witness.file.path", format!("directory {} does not exist", dir.display())));
            }
        }
        if let Some(s) = &self.syslog {
            s.check().map_err(|(field, reason)| {
                let key = match field {
                    "address" => "audit.witness.syslog.address",
                    "facility" => "audit.witness.syslog.facility",
                    "hostname" => "audit.witness.syslog.hostname",
                    "ca" => "audit.witness.syslog.ca",
                    "server_name" => "audit.witness.syslog.server_name",
                    _ => "audit.witness.syslog.tls",
                };
                (key, reason)
            })?;
        }
        Ok(())
    }

    pub(super) fn retry_max(&self) -> Duration {
        Duration::try_from_secs_f64(self.retry_max_secs).unwrap_or(Duration::from_secs(10)).max(FIRST_RETRY)
    }
}

impl SyslogWitnessConfig {
    /// Checks the receiver's settings: `Err((field, reason))` names the bad field (`address`,
    /// `facility`, `hostname`, `ca`, `server_name` or `tls`). Shared with the audit sinks.
    pub(in crate::audit) fn check(&self) -> Result<(), (&'static str, String)> {
        let (host, _) = split_host_port(&self.address)
            .ok_or_else(|| ("address", format!("{:?} is not host:port", self.address)))?;
        if self.facility > 23 {
            return Err(("facility", format!("{} is not between 0 and 23", self.facility)));
        }
        if let Some(h) = &self.hostname
            && (h.is_empty() || h.len() > 255 || !h.bytes().all(|b| (33..=126).contains(&b)))
        {
            return Err(("hostname", "must be 1 to 255 printable ASCII characters".into()));
        }
        if self.tls {
            tls_config(self).map_err(|e| ("ca", e))?;
            let name = self.server_name.clone().unwrap_or_else(|| host.to_owned());
            rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|_| ("server_name", format!("{name:?} is not a DNS name or IP")))?;
        } else if self.ca.is_some() || self.server_name.is_some() {
            return Err(("tls", "ca and server_name need tls = true".into()));
        }
        Ok(())
    }

    /// A connection to the receiver (made when first used), TLS when `tls` is set.
    pub(in crate::audit) fn connection(&self) -> Result<super::super::syslog::SyslogConn, String> {
        let tls = if self.tls { Some(tls_config(self)?) } else { None };
        let host = split_host_port(&self.address).map_or("", |(h, _)| h).to_owned();
        Ok(super::super::syslog::SyslogConn::new(self.address.clone(), self.server_name.clone().unwrap_or(host), tls))
    }
}

/// `host:port` (a bracketed IPv6 literal allowed) split, or `None`.
pub(super) fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

pub(super) fn tls_config(s: &SyslogWitnessConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let ca = s.ca.as_ref().ok_or("tls = true needs ca (the PEM file of the receiver's CA)")?;
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", ca.display()));
    }
    // An explicit provider: the process default would be ambiguous with two linked in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key() {
        let mut c = WitnessConfig::default();
        c.validate().unwrap();
        c.backlog = 0;
        assert_eq!(c.validate().unwrap_err().0, "audit.witness.backlog");
        c.backlog = 10;
        c.syslog = Some(SyslogWitnessConfig {
            address: "logs.example.org".into(),
            tls: false,
            ca: None,
            server_name: None,
            hostname: None,
            facility: 13,
        });
        assert_eq!(c.validate().unwrap_err().0, "audit.witness.syslog.address");
        if let Some(s) = c.syslog.as_mut() {
            s.address = "logs.example.org:6514".into();
            s.tls = true;
        }
        let e = c.validate().unwrap_err();
        assert_eq!(e.0, "audit.witness.syslog.ca", "{e:?}");
        c.syslog = None;
        c.file = Some(FileWitnessConfig { path: "/nonexistent-dir/witness.jsonl".into() });
        assert_eq!(c.validate().unwrap_err().0, "audit.witness.file.path");
    }
}
