//! `[[audit.sink]]`: the audit sinks of the serve configuration, checked before serving.
//! Every error names its key (`audit.sink.<field>`) and the sink it belongs to.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::super::witness::SyslogWitnessConfig;

/// What kind of destination a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A JSON-lines file, rotated by size: for a log shipper that tails files.
    File,
    /// A syslog receiver: RFC 5424 over TCP (RFC 6587 octet counting), optionally TLS.
    Syslog,
    /// An OpenTelemetry collector: log records over OTLP/gRPC.
    Otlp,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Syslog => "syslog",
            SinkKind::Otlp => "otlp",
        }
    }
}

/// Where a sink with no stored cursor starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkStart {
    /// The oldest event the audit database holds (the default: a new SIEM gets the history).
    #[default]
    Oldest,
    /// The events and checkpoints committed from now on.
    Now,
}

/// One `[[audit.sink]]` entry. Keys that belong to another kind are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The sink's name: its cursor's key in the vault database and its metric label
    /// (1 to 32 of `a-z 0-9 - _`). Renaming a sink starts it afresh (see `start`).
    pub name: String,
    pub kind: SinkKind,
    /// Where to start when the sink has no cursor yet: `oldest` (default) or `now`.
    #[serde(default)]
    pub start: SinkStart,
    /// file: the JSON-lines file (created with mode 0640 if missing).
    pub path: Option<PathBuf>,
    /// file: rotate when the file would grow past this many bytes (default 100 MiB).
    pub max_bytes: Option<u64>,
    /// file: rotated files kept (`path.1` newest .. `path.N`; default 5).
    pub keep: Option<u32>,
    /// otlp: the collector's OTLP/gRPC URL (`https://collector:4317`; `http://` on loopback only).
    pub endpoint: Option<String>,
    /// otlp: PEM certificate and key presented to the collector (mutual TLS), both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// syslog: `host:port` of the receiver.
    pub address: Option<String>,
    /// syslog: wrap the connection in TLS (RFC 5425), verifying the receiver's certificate.
    #[serde(default)]
    pub tls: bool,
    /// syslog, otlp: PEM file of the CA(s) that issued the receiver's certificate (with TLS).
    pub ca: Option<PathBuf>,
    /// syslog, otlp: the name the receiver's certificate must carry; default: its host.
    pub server_name: Option<String>,
    /// syslog, otlp: this machine's name in each message; default: its host name.
    pub hostname: Option<String>,
    /// syslog: facility number (0 to 23); default 13 (log audit).
    pub facility: Option<u8>,
}

pub(super) const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub(super) const DEFAULT_KEEP: u32 = 5;

impl SinkConfig {
    /// The syslog receiver's settings, in the witness's form (one transport for both).
    pub(super) fn syslog(&self) -> SyslogWitnessConfig {
        SyslogWitnessConfig {
            address: self.address.clone().unwrap_or_default(),
            tls: self.tls,
            ca: self.ca.clone(),
            server_name: self.server_name.clone(),
            hostname: self.hostname.clone(),
            facility: self.facility.unwrap_or(13),
        }
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        let ok_name = (1..=32).contains(&self.name.len())
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok_name {
            return Err(("audit.sink.name", "must be 1 to 32 of a-z 0-9 - _".into()));
        }
        let file_keys = self.path.is_some() || self.max_bytes.is_some() || self.keep.is_some();
        let syslog_keys = self.address.is_some() || self.tls || self.facility.is_some();
        let tls_keys = self.ca.is_some() || self.server_name.is_some() || self.hostname.is_some();
        let otlp_keys = self.endpoint.is_some() || self.cert.is_some() || self.key.is_some();
        match self.kind {
            SinkKind::File => {
                if syslog_keys || tls_keys || otlp_keys {
                    return Err((
                        "audit.sink.kind",
                        "only name, kind, start, path, max_bytes and keep are for kind = \"file\"".into(),
                    ));
                }
                let Some(path) = &self.path else {
                    return Err(("audit.sink.path", "kind = \"file\" needs path".into()));
                };
                if path.file_name().is_none() {
                    return Err(("audit.sink.path", "must name a file".into()));
                }
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                    && !dir.is_dir()
                {
                    return Err(("audit.sink.path", format!("directory {} does not exist", dir.display())));
                }
                if let Some(m) = self.max_bytes
                    && !(64 * 1024..=1 << 40).contains(&m)
                {
                    return Err(("audit.sink.max_bytes", format!("{m} is not between 65536 and 2^40")));
                }
                if let Some(k) = self.keep
                    && !(1..=1000).contains(&k)
                {
                    return Err(("audit.sink.keep", format!("{k} is not between 1 and 1000")));
                }
            }
            SinkKind::Otlp => {
                if file_keys || syslog_keys {
                    return Err((
                        "audit.sink.kind",
                        "path, max_bytes, keep, address, tls and facility are not for kind = \"otlp\"".into(),
                    ));
                }
                self.check_otlp()?;
            }
            SinkKind::Syslog => {
                if file_keys || otlp_keys {
                    return Err((
                        "audit.sink.kind",
                        "path, max_bytes, keep, endpoint, cert and key are not for kind = \"syslog\"".into(),
                    ));
                }
                if self.address.is_none() {
                    return Err(("audit.sink.address", "kind = \"syslog\" needs address (host:port)".into()));
                }
                self.syslog().check().map_err(|(field, reason)| {
                    let key = match field {
                        "address" => "audit.sink.address",
                        "facility" => "audit.sink.facility",
                        "hostname" => "audit.sink.hostname",
                        "ca" => "audit.sink.ca",
                        "server_name" => "audit.sink.server_name",
                        _ => "audit.sink.tls",
                    };
                    (key, reason)
                })?;
            }
        }
        Ok(())
    }
}

impl SinkConfig {
    /// Every file the entry names (to resolve them against the config file's directory).
    pub fn files_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [&mut self.path, &mut self.ca, &mut self.cert, &mut self.key].into_iter().flatten()
    }

    /// The collector of an `otlp` sink.
    pub(super) fn otlp_target(&self) -> crate::tls::OtlpTarget {
        crate::tls::OtlpTarget {
            endpoint: self.endpoint.clone().unwrap_or_default(),
            ca: self.ca.clone(),
            server_name: self.server_name.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    fn check_otlp(&self) -> Result<(), (&'static str, String)> {
        if self.endpoint.is_none() {
            return Err(("audit.sink.endpoint", "kind = \"otlp\" needs endpoint".into()));
        }
        self.otlp_target().check().map_err(|(field, reason)| {
            let key = match field {
                "ca" => "audit.sink.ca",
                "cert" => "audit.sink.cert",
                "key" => "audit.sink.key",
                "server_name" => "audit.sink.server_name",
                _ => "audit.sink.endpoint",
            };
            (key, reason)
        })
    }
}

/// Checks every sink (and that names are unique): `Err((key, reason))` names the bad key,
/// the reason names the sink.
/// `reserved`: files no sink may write (the vault and audit databases).
pub fn validate_sinks(sinks: &[SinkConfig], reserved: &[PathBuf]) -> Result<(), (&'static str, String)> {
    let mut names = HashSet::new();
    let mut files: Vec<&PathBuf> = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        let named = |reason: String| format!("sink {} ({:?}): {reason}", i + 1, s.name);
        s.check().map_err(|(key, reason)| (key, named(reason)))?;
        if !names.insert(s.name.as_str()) {
            return Err(("audit.sink.name", format!("two sinks are named {:?}: each needs its own cursor", s.name)));
        }
        let Some(path) = s.path.as_ref().filter(|_| s.kind == SinkKind::File) else { continue };
        // Another file sink's file or one of its rotated files (`path.N`), or a database (or
        // its `-wal`, `-shm`).
        let clash = |a: &std::path::Path, b: &std::path::Path| {
            let (a, b) = (a.as_os_str().to_string_lossy(), b.as_os_str().to_string_lossy());
            let rotated = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|r| r.starts_with(['.', '-']));
            a == b || rotated(&a, &b) || rotated(&b, &a)
        };
        if let Some(other) = files.iter().find(|f| clash(f, path)) {
            return Err((
                "audit.sink.path",
                named(format!("{} collides with another file sink's {}", path.display(), other.display())),
            ));
        }
        if let Some(db) = reserved.iter().find(|db| clash(db, path)) {
            return Err((
                "audit.sink.path",
                named(format!("{} is a database file ({})", path.display(), db.display())),
            ));
        }
        files.push(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<SinkConfig>, String> {
        #[derive(Deserialize)]
        struct Top {
            sink: Vec<SinkConfig>,
        }
        toml::from_str::<Top>(toml_text).map(|t| t.sink).map_err(|e| e.to_string())
    }

    #[test]
    fn sink_entries_are_parsed_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let ok = parse(&format!(
            "[[sink]]\nname = \"siem\"\nkind = \"syslog\"\naddress = \"127.0.0.1:6514\"\n\
             [[sink]]\nname = \"files\"\nkind = \"file\"\npath = {p:?}\nmax_bytes = 1048576\nstart = \"now\"\n"
        ))
        .unwrap();
        validate_sinks(&ok, &[]).unwrap();
        let db = dir.path().join("vault.db");
        let e = validate_sinks(&ok, &[p.with_file_name("audit.jsonl.1")]).unwrap_err();
        assert_eq!(e.0, "audit.sink.path", "{e:?}");
        let mut twice = ok.clone();
        twice[0] = twice[1].clone();
        twice[0].name = "other".into();
        assert_eq!(validate_sinks(&twice, std::slice::from_ref(&db)).unwrap_err().0, "audit.sink.path");
        let mut onto_db = ok.clone();
        onto_db[1].path = Some(PathBuf::from(format!("{}-wal", db.display())));
        assert_eq!(validate_sinks(&onto_db, &[db]).unwrap_err().0, "audit.sink.path");
        assert_eq!((ok[1].kind, ok[1].start, ok[1].max_bytes), (SinkKind::File, SinkStart::Now, Some(1 << 20)));
        assert!(parse("[[sink]]\nname = \"x\"\nkind = \"kafka\"\n").unwrap_err().contains("kafka"));
        assert!(parse("[[sink]]\nname = \"x\"\nkind = \"file\"\npth = \"a\"\n").unwrap_err().contains("pth"));
        let bad = |text: &str| validate_sinks(&parse(text).unwrap(), &[]).unwrap_err();
        assert_eq!(bad("[[sink]]\nname = \"Bad Name\"\nkind = \"file\"\npath = \"a\"\n").0, "audit.sink.name");
        assert_eq!(bad("[[sink]]\nname = \"a\"\nkind = \"file\"\n").0, "audit.sink.path");
        assert_eq!(
            bad("[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"a\"\naddress = \"h:1\"\n").0,
            "audit.sink.kind"
        );
        assert_eq!(bad("[[sink]]\nname = \"a\"\nkind = \"syslog\"\n").0, "audit.sink.address");
        assert_eq!(bad("[[sink]]\nname = \"a\"\nkind = \"syslog\"\naddress = \"nohost\"\n").0, "audit.sink.address");
        let e = bad("[[sink]]\nname = \"a\"\nkind = \"syslog\"\naddress = \"h:1\"\ntls = true\n");
        assert_eq!(e.0, "audit.sink.ca");
        assert!(e.1.contains("\"a\""), "{e:?}");
        let e = bad(
            "[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"a\"\n[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"b\"\n",
        );
        assert_eq!(e.0, "audit.sink.name");
        assert_eq!(
            bad("[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"a\"\nmax_bytes = 10\n").0,
            "audit.sink.max_bytes"
        );
        let otlp = |rest: &str| format!("[[sink]]\nname = \"o\"\nkind = \"otlp\"\n{rest}");
        validate_sinks(&parse(&otlp("endpoint = \"http://127.0.0.1:4317\"\n")).unwrap(), &[]).unwrap();
        assert_eq!(bad(&otlp("")).0, "audit.sink.endpoint");
        assert_eq!(bad(&otlp("endpoint = \"http://collector.internal:4317\"\n")).0, "audit.sink.endpoint");
        assert_eq!(bad(&otlp("endpoint = \"https://collector.internal:4317\"\n")).0, "audit.sink.ca");
        assert_eq!(bad(&otlp("endpoint = \"grpc://x:1\"\n")).0, "audit.sink.endpoint");
        assert_eq!(bad(&otlp("endpoint = \"http://127.0.0.1:4317/v1/logs\"\n")).0, "audit.sink.endpoint");
        assert_eq!(bad(&otlp("endpoint = \"http://127.0.0.1:4317\"\naddress = \"h:1\"\n")).0, "audit.sink.kind");
        let ca = p.with_file_name("ca.pem");
        std::fs::write(&ca, "not PEM").unwrap();
        let e = bad(&otlp(&format!("endpoint = \"https://c.internal:4317\"\nca = {ca:?}\n")));
        assert_eq!(e.0, "audit.sink.ca");
        let ca = crate::tls::generate_dev_pki(&dir.path().join("pki"), "sink.test").unwrap().ca_cert;
        let e = bad(&otlp(&format!("endpoint = \"https://c.internal:4317\"\nca = {ca:?}\ncert = {ca:?}\n")));
        assert_eq!(e.0, "audit.sink.cert");
        let e =
            bad(&otlp(&format!("endpoint = \"https://c.internal:4317\"\nca = {ca:?}\ncert = {ca:?}\nkey = {ca:?}\n")));
        assert_eq!(e.0, "audit.sink.key");
    }
}
