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
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Syslog => "syslog",
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
    /// syslog: `host:port` of the receiver.
    pub address: Option<String>,
    /// syslog: wrap the connection in TLS (RFC 5425), verifying the receiver's certificate.
    #[serde(default)]
    pub tls: bool,
    /// syslog: PEM file of the CA(s) that issued the receiver's certificate (with `tls`).
    pub ca: Option<PathBuf>,
    /// syslog: the name the receiver's certificate must carry; default: the host of `address`.
    pub server_name: Option<String>,
    /// syslog: HOSTNAME of each message; default: this machine's host name.
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
        let syslog_keys = self.address.is_some()
            || self.tls
            || self.ca.is_some()
            || self.server_name.is_some()
            || self.hostname.is_some()
            || self.facility.is_some();
        match self.kind {
            SinkKind::File => {
                if syslog_keys {
                    return Err((
                        "audit.sink.kind",
                        "address, tls, ca, server_name, hostname and facility are for kind = \"syslog\"".into(),
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
            SinkKind::Syslog => {
                if file_keys {
                    return Err(("audit.sink.kind", "path, max_bytes and keep are for kind = \"file\"".into()));
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

/// Checks every sink (and that names are unique): `Err((key, reason))` names the bad key,
/// the reason names the sink.
pub fn validate_sinks(sinks: &[SinkConfig]) -> Result<(), (&'static str, String)> {
    let mut names = HashSet::new();
    for (i, s) in sinks.iter().enumerate() {
        s.check().map_err(|(key, reason)| (key, format!("sink {} ({:?}): {reason}", i + 1, s.name)))?;
        if !names.insert(s.name.as_str()) {
            return Err(("audit.sink.name", format!("two sinks are named {:?}: each needs its own cursor", s.name)));
        }
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
        validate_sinks(&ok).unwrap();
        assert_eq!((ok[1].kind, ok[1].start, ok[1].max_bytes), (SinkKind::File, SinkStart::Now, Some(1 << 20)));
        assert!(parse("[[sink]]\nname = \"x\"\nkind = \"kafka\"\n").unwrap_err().contains("kafka"));
        assert!(parse("[[sink]]\nname = \"x\"\nkind = \"file\"\npth = \"a\"\n").unwrap_err().contains("pth"));
        let bad = |text: &str| validate_sinks(&parse(text).unwrap()).unwrap_err();
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
    }
}
