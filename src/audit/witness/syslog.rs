//! The syslog witness: RFC 5424 messages over TCP with octet-counting framing (RFC 6587
//! §3.4.1), optionally inside TLS. One connection, reused; before each write it checks
//! whether the receiver has closed it, because a write to a closed peer is accepted once by
//! the kernel and lost.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::super::chain::Checkpoint;
use super::super::format_time_ms;
use super::config::{SyslogWitnessConfig, split_host_port, tls_config};
use super::sink::Sink;

/// How long a connection attempt or a write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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

pub(super) struct SyslogSink {
    address: String,
    server_name: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<Box<dyn Stream>>,
    pri: u32,
    hostname: String,
}

impl SyslogSink {
    /// From the checked configuration (see [`SyslogWitnessConfig`]); connects lazily.
    pub(super) fn new(s: &SyslogWitnessConfig) -> std::io::Result<SyslogSink> {
        let tls = if s.tls { Some(tls_config(s).map_err(std::io::Error::other)?) } else { None };
        let host = split_host_port(&s.address).map_or("", |(h, _)| h).to_owned();
        Ok(SyslogSink {
            address: s.address.clone(),
            server_name: s.server_name.clone().unwrap_or(host),
            tls,
            conn: None,
            // Severity 6 (informational): a checkpoint is a record, not a problem.
            pri: u32::from(s.facility) * 8 + 6,
            hostname: s.hostname.clone().unwrap_or_else(local_hostname),
        })
    }

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
}
