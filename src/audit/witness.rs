//! Witnesses: every signed checkpoint the writer commits also leaves the machine, to
//! destinations the vault's host cannot rewrite (`[audit.witness]` in the serve config).
//!
//! - **file**: one checkpoint JSON per line (the form `audit checkpoint` prints), opened
//!   `O_APPEND`, `fsync`ed after every line. Meant for another volume, or a log shipper.
//! - **syslog**: RFC 5424 messages over TCP with octet-counting framing (RFC 6587 §3.4.1),
//!   optionally inside TLS (rustls with the ring provider passed explicitly, as everywhere).
//!
//! Invariants:
//! - **A witness never stops or slows the vault.** The writer only pushes a copy of the
//!   checkpoint onto each witness's bounded queue (a short lock, no I/O). Each witness has its
//!   own thread that delivers in order, retries with backoff (100 ms doubling to
//!   `retry_max_secs`) and keeps the rest queued; the queue is bounded (`backlog`), and when
//!   full the *oldest* is dropped and counted: a newer checkpoint covers everything an older
//!   one did, so the newest are the ones worth keeping.
//! - **The primary log stays the durable one.** Delivery is after the commit, best effort,
//!   at least once: a line can repeat after a failure part-way (verify ignores repeats).
//!   A TCP write accepted by the kernel is not a receipt; a peer that closed is noticed
//!   before the next write.
//! - **Nothing secret** goes out: a checkpoint is a sequence, a hash, a time, a key id and a
//!   signature. Errors are logged and reported by their I/O or TLS reason only.
//! - A failing witness raises an alarm (`error` once when it starts failing, then `warn`
//!   at most once a minute while it fails), is counted in
//!   `pogo_vault_audit_witness_backlog{witness=...}` and shows in `status`.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::chain::Checkpoint;
use super::format_time_ms;

/// The first pause after a failed delivery.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// How long a connection attempt or a write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Between repeated alarms for a witness that keeps failing.
const ALARM_EVERY: Duration = Duration::from_secs(60);

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
            let (host, _) = split_host_port(&s.address)
                .ok_or_else(|| ("audit.witness.syslog.address", format!("{:?} is not host:port", s.address)))?;
            if s.facility > 23 {
                return Err(("audit.witness.syslog.facility", format!("{} is not between 0 and 23", s.facility)));
            }
            if let Some(h) = &s.hostname
                && (h.is_empty() || h.len() > 255 || !h.bytes().all(|b| (33..=126).contains(&b)))
            {
                return Err(("audit.witness.syslog.hostname", "must be 1 to 255 printable ASCII characters".into()));
            }
            if s.tls {
                tls_config(s).map_err(|e| ("audit.witness.syslog.ca", e))?;
                let name = s.server_name.clone().unwrap_or_else(|| host.to_owned());
                rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| ("audit.witness.syslog.server_name", format!("{name:?} is not a DNS name or IP")))?;
            } else if s.ca.is_some() || s.server_name.is_some() {
                return Err(("audit.witness.syslog.tls", "ca and server_name need tls = true".into()));
            }
        }
        Ok(())
    }

    fn retry_max(&self) -> Duration {
        Duration::try_from_secs_f64(self.retry_max_secs).unwrap_or(Duration::from_secs(10)).max(FIRST_RETRY)
    }
}

/// `host:port` (a bracketed IPv6 literal allowed) split, or `None`.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

fn tls_config(s: &SyslogWitnessConfig) -> Result<Arc<rustls::ClientConfig>, String> {
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

/// One witness's figures, for metrics and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessStatus {
    /// `file` or `syslog` (the metric label).
    pub name: &'static str,
    /// Checkpoints waiting to be delivered.
    pub backlog: u64,
    pub delivered: u64,
    /// Failed delivery attempts.
    pub failures: u64,
    /// Checkpoints dropped because the backlog was full (newer ones cover them).
    pub dropped: u64,
    /// The last attempt failed.
    pub failing: bool,
    /// Why the last attempt failed (an I/O or TLS reason; no secret).
    pub last_error: Option<String>,
    /// The sequence of the newest checkpoint delivered (0: none yet).
    pub last_delivered_sequence: i64,
}

#[derive(Default)]
struct SlotState {
    queue: VecDeque<Checkpoint>,
    closed: bool,
    failing: bool,
    last_error: Option<String>,
    last_delivered_sequence: i64,
    stopped: bool,
}

struct Slot {
    name: &'static str,
    state: Mutex<SlotState>,
    wake: Condvar,
    delivered: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
}

fn lock(m: &Mutex<SlotState>) -> std::sync::MutexGuard<'_, SlotState> {
    // Every update under this lock is a push, a pop or a field write: never half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The configured witnesses and their delivery threads.
pub(crate) struct WitnessSet {
    slots: Vec<Arc<Slot>>,
    backlog: usize,
}

impl WitnessSet {
    /// Starts one delivery thread per configured witness (none: an empty set).
    pub(crate) fn start(cfg: &WitnessConfig) -> std::io::Result<WitnessSet> {
        let mut set = WitnessSet { slots: Vec::new(), backlog: cfg.backlog.max(1) };
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(f) = &cfg.file {
            sinks.push(Box::new(FileSink { path: f.path.clone(), file: None }));
        }
        if let Some(s) = &cfg.syslog {
            let tls = if s.tls { Some(tls_config(s).map_err(std::io::Error::other)?) } else { None };
            let host = split_host_port(&s.address).map_or("", |(h, _)| h).to_owned();
            let hostname = s.hostname.clone().unwrap_or_else(local_hostname);
            sinks.push(Box::new(SyslogSink {
                address: s.address.clone(),
                server_name: s.server_name.clone().unwrap_or(host),
                tls,
                conn: None,
                pri: u32::from(s.facility) * 8 + 6,
                hostname,
            }));
        }
        for sink in sinks {
            let slot = Arc::new(Slot {
                name: sink.name(),
                state: Mutex::new(SlotState::default()),
                wake: Condvar::new(),
                delivered: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            });
            let worker = Worker { slot: slot.clone(), sink, retry_max: cfg.retry_max() };
            if let Err(e) =
                std::thread::Builder::new().name(format!("pogo-witness-{}", slot.name)).spawn(move || worker.run())
            {
                set.close_and_wait(Duration::ZERO);
                return Err(e);
            }
            set.slots.push(slot);
        }
        Ok(set)
    }

    /// Queues a copy of `cp` for every witness. Never blocks on I/O.
    pub(crate) fn offer(&self, cp: &Checkpoint) {
        for slot in &self.slots {
            let mut st = lock(&slot.state);
            if st.closed {
                continue;
            }
            while st.queue.len() >= self.backlog {
                st.queue.pop_front();
                slot.dropped.fetch_add(1, Ordering::Relaxed);
            }
            st.queue.push_back(cp.clone());
            drop(st);
            slot.wake.notify_one();
        }
    }

    pub(crate) fn status(&self) -> Vec<WitnessStatus> {
        self.slots
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                WitnessStatus {
                    name: s.name,
                    backlog: st.queue.len() as u64,
                    delivered: s.delivered.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                    dropped: s.dropped.load(Ordering::Relaxed),
                    failing: st.failing,
                    last_error: st.last_error.clone(),
                    last_delivered_sequence: st.last_delivered_sequence,
                }
            })
            .collect()
    }

    /// Stops taking checkpoints; each thread delivers what it holds while deliveries
    /// succeed, and stops at the first failure. Waits at most `limit` for that.
    pub(crate) fn close_and_wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for slot in &self.slots {
            lock(&slot.state).closed = true;
            slot.wake.notify_all();
        }
        for slot in &self.slots {
            let mut st = lock(&slot.state);
            while !st.stopped {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = slot.wake.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
    }
}

impl Drop for WitnessSet {
    fn drop(&mut self) {
        for slot in &self.slots {
            lock(&slot.state).closed = true;
            slot.wake.notify_all();
        }
    }
}

/// A destination: delivers one checkpoint or says why not.
trait Sink: Send {
    fn name(&self) -> &'static str;
    fn deliver(&mut self, cp: &Checkpoint) -> Result<(), String>;
}

struct Worker {
    slot: Arc<Slot>,
    sink: Box<dyn Sink>,
    retry_max: Duration,
}

impl Worker {
    fn run(mut self) {
        let slot = self.slot.clone();
        let mut backoff = FIRST_RETRY;
        let mut last_alarm: Option<Instant> = None;
        loop {
            // The oldest queued checkpoint, left in the queue until it is delivered.
            let next = {
                let mut st = lock(&slot.state);
                loop {
                    if let Some(cp) = st.queue.front() {
                        break Some(cp.clone());
                    }
                    if st.closed {
                        break None;
                    }
                    st = slot.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            let Some(cp) = next else { break };
            match self.sink.deliver(&cp) {
                Ok(()) => {
                    slot.delivered.fetch_add(1, Ordering::Relaxed);
                    let mut st = lock(&slot.state);
                    // Dropped meanwhile (backlog full) is fine: only pop what was sent.
                    if st.queue.front() == Some(&cp) {
                        st.queue.pop_front();
                    }
                    st.last_delivered_sequence = st.last_delivered_sequence.max(cp.sequence);
                    if std::mem::replace(&mut st.failing, false) {
                        tracing::warn!(
                            witness = slot.name,
                            backlog = st.queue.len(),
                            "audit witness reachable again; draining its backlog in order"
                        );
                    }
                    backoff = FIRST_RETRY;
                    last_alarm = None;
                }
                Err(reason) => {
                    slot.failures.fetch_add(1, Ordering::Relaxed);
                    let mut st = lock(&slot.state);
                    let backlog = st.queue.len();
                    st.failing = true;
                    st.last_error = Some(reason.clone());
                    match last_alarm {
                        None => {
                            tracing::error!(witness = slot.name, backlog, error = %reason, "ALARM: audit witness unreachable; checkpoints are queued and retried, the vault keeps serving")
                        }
                        Some(t) if t.elapsed() >= ALARM_EVERY => {
                            tracing::warn!(witness = slot.name, backlog, error = %reason, "audit witness still unreachable")
                        }
                        Some(_) => {}
                    }
                    if last_alarm.is_none_or(|t| t.elapsed() >= ALARM_EVERY) {
                        last_alarm = Some(Instant::now());
                    }
                    if st.closed {
                        break;
                    }
                    // Interruptible by close, not by new checkpoints (they wait their turn).
                    let until = Instant::now() + backoff;
                    while !st.closed {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        st = slot.wake.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                }
            }
        }
        lock(&slot.state).stopped = true;
        slot.wake.notify_all();
    }
}

struct FileSink {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn deliver(&mut self, cp: &Checkpoint) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut line = cp.to_json();
        line.push('\n');
        let result = (|| {
            if self.file.is_none() {
                let f = std::fs::OpenOptions::new().append(true).create(true).mode(0o640).open(&self.path)?;
                self.file = Some(f);
            }
            let Some(f) = self.file.as_mut() else { unreachable!("opened above") };
            // One write of the whole line: with O_APPEND it lands at the end in one piece.
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })();
        result.map_err(|e| {
            // Reopened on the next attempt (the volume may have been remounted).
            self.file = None;
            format!("{}: {e}", self.path.display())
        })
    }
}

/// A connection to the receiver that can tell whether the receiver has closed it.
trait Stream: Write + Send {
    /// True when the receiver closed the connection (or it broke): checked before each
    /// write, because a write to a closed peer is accepted once by the kernel and lost.
    fn peer_closed(&mut self) -> bool;
}

impl Stream for TcpStream {
    fn peer_closed(&mut self) -> bool {
        if self.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 1];
        let closed = match self.peek(&mut b) {
            Ok(0) => true,
            // A syslog receiver sends nothing; whatever it sent is ignored.
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        closed || self.set_nonblocking(false).is_err()
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn peer_closed(&mut self) -> bool {
        // The receiver's TLS records (session tickets, close_notify) must be read through
        // rustls: a peek would see them forever and miss the end of the stream behind them.
        if self.sock.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => break true,
                Ok(_) => match self.conn.process_new_packets() {
                    Ok(state) if state.peer_has_closed() => break true,
                    Ok(_) => {
                        // Plaintext from a syslog receiver is not expected; discard it.
                        let mut sink = [0u8; 512];
                        while matches!(std::io::Read::read(&mut self.conn.reader(), &mut sink), Ok(n) if n > 0) {}
                    }
                    Err(_) => break true,
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        closed || self.sock.set_nonblocking(false).is_err()
    }
}

struct SyslogSink {
    address: String,
    server_name: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<Box<dyn Stream>>,
    pri: u32,
    hostname: String,
}

impl SyslogSink {
    fn connect(&self) -> Result<Box<dyn Stream>, String> {
        let addrs: Vec<_> = self.address.to_socket_addrs().map_err(|e| format!("{}: {e}", self.address))?.collect();
        let mut last = format!("{}: no address", self.address);
        for a in addrs {
            match TcpStream::connect_timeout(&a, IO_TIMEOUT) {
                Ok(tcp) => {
                    tcp.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
                    tcp.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
                    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                    let Some(cfg) = &self.tls else { return Ok(Box::new(tcp)) };
                    let name = rustls_pki_types::ServerName::try_from(self.server_name.clone())
                        .map_err(|_| format!("{:?} is not a server name", self.server_name))?;
                    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
                    let mut s = rustls::StreamOwned::new(conn, tcp);
                    // Handshake now, so a certificate problem is reported as such.
                    while s.conn.is_handshaking() {
                        s.conn.complete_io(&mut s.sock).map_err(|e| format!("{}: TLS: {e}", self.address))?;
                    }
                    return Ok(Box::new(s));
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        Err(last)
    }

    /// RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`, octet-counted.
    fn frame(&self, cp: &Checkpoint) -> String {
        let msg = format!(
            "<{}>1 {} {} pogo-vault {} checkpoint - {}",
            self.pri,
            format_time_ms(cp.time_ms),
            self.hostname,
            std::process::id(),
            cp.to_json()
        );
        format!("{} {msg}", msg.len())
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn deliver(&mut self, cp: &Checkpoint) -> Result<(), String> {
        if self.conn.as_mut().is_some_and(|c| c.peer_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let frame = self.frame(cp);
        let Some(conn) = self.conn.as_mut() else { unreachable!("connected above") };
        let sent = conn.write_all(frame.as_bytes()).and_then(|()| conn.flush());
        sent.map_err(|e| {
            self.conn = None;
            format!("{}: {e}", self.address)
        })
    }
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(seq: i64) -> Checkpoint {
        Checkpoint::sign(seq, [1; 32], 1_700_000_000_000, &ed25519_dalek::SigningKey::from_bytes(&[5; 32]))
    }

    #[test]
    fn syslog_frame_is_rfc5424_octet_counted() {
        let s = SyslogSink {
            address: "127.0.0.1:1".into(),
            server_name: "localhost".into(),
            tls: None,
            conn: None,
            pri: 13 * 8 + 6,
            hostname: "vault-1".into(),
        };
        let f = s.frame(&cp(3));
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<110>1 2023-11-14T22:13:20Z vault-1 pogo-vault "), "{msg}");
        let json = msg.split_once(" checkpoint - ").unwrap().1;
        assert_eq!(Checkpoint::from_json(json).unwrap(), cp(3));
    }

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

    #[test]
    fn a_full_backlog_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        // A path in a missing directory: every delivery fails, so everything stays queued.
        let cfg = WitnessConfig {
            file: Some(FileWitnessConfig { path: dir.path().join("missing/w.jsonl") }),
            backlog: 3,
            retry_max_secs: 0.1,
            ..WitnessConfig::default()
        };
        let set = WitnessSet::start(&cfg).unwrap();
        for i in 1..=5 {
            set.offer(&cp(i));
        }
        let st = &set.status()[0];
        assert_eq!((st.name, st.backlog, st.dropped), ("file", 3, 2), "{st:?}");
        set.close_and_wait(Duration::from_secs(5));
    }
}
