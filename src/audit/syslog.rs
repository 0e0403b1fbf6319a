//! Syslog over TCP, shared by the checkpoint witness (`witness/`) and the audit sinks
//! (`sinks/`): RFC 5424 messages with octet-counting framing (RFC 6587 §3.4.1), optionally
//! inside TLS (RFC 5425; rustls with the ring provider passed explicitly, as everywhere).
//! One connection, reused; [`SyslogConn::peer_closed`] tells whether the receiver has
//! closed it, because a write to a closed peer is accepted once by the kernel and lost.
//!
//! Syslog has no receipts: bytes the kernel accepted may still be lost with the receiver.
//! What a caller makes of that is its own policy (the witness resends nothing, a sink
//! confirms late and resends what was not confirmed).

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::format_time_ms;

/// How long a connection attempt or a write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads of what a receiver sent, per look for its close (then it counts as open).
const MAX_DRAIN_READS: usize = 64;

/// A connection to the receiver that can tell whether the receiver has closed it.
trait Stream: Write + Send {
    /// True when the receiver closed the connection (or it broke).
    fn peer_closed(&mut self) -> bool;
}

impl Stream for TcpStream {
    fn peer_closed(&mut self) -> bool {
        if self.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 512];
        // A syslog receiver sends nothing; whatever it sent is read and ignored, so the end
        // of the stream behind it is seen. Bounded: a receiver that keeps talking is open.
        let mut closed = false;
        for _ in 0..MAX_DRAIN_READS {
            match std::io::Read::read(self, &mut b) {
                Ok(0) => closed = true,
                Ok(_) => continue,
                Err(e) => closed = e.kind() != std::io::ErrorKind::WouldBlock,
            }
            break;
        }
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
        let mut reads = 0;
        let closed = loop {
            reads += 1;
            if reads > MAX_DRAIN_READS {
                break false;
            }
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

/// One connection to a syslog receiver, made when first needed and again after a failure.
pub(super) struct SyslogConn {
    address: String,
    server_name: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<Box<dyn Stream>>,
}

impl SyslogConn {
    /// `tls`: wrap the connection in TLS, verifying the receiver as `server_name`.
    pub(super) fn new(address: String, server_name: String, tls: Option<Arc<rustls::ClientConfig>>) -> SyslogConn {
        SyslogConn { address, server_name, tls, conn: None }
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

    /// Writes `bytes` (whole frames) on the connection, connecting first when there is none
    /// or the receiver closed the last one. On an error the connection is dropped.
    pub(super) fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.peer_closed() {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let Some(conn) = self.conn.as_mut() else { unreachable!("connected above") };
        let sent = conn.write_all(bytes).and_then(|()| conn.flush());
        sent.map_err(|e| {
            self.conn = None;
            format!("{}: {e}", self.address)
        })
    }

    /// True when there is a connection and the receiver has closed it (the connection is
    /// then dropped). False with no connection.
    pub(super) fn peer_closed(&mut self) -> bool {
        let closed = self.conn.as_mut().is_some_and(|c| c.peer_closed());
        if closed {
            self.conn = None;
        }
        closed
    }

    /// Drops the connection (the next send connects again).
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }
}

/// One RFC 5424 message, octet-counted: `LEN <PRI>1 TIMESTAMP HOSTNAME pogo-vault PROCID
/// MSGID SD MSG`. `sd` is the structured-data field (`-` for none).
pub(super) fn frame(pri: u32, time_ms: i64, hostname: &str, msgid: &str, sd: &str, msg: &str) -> String {
    let body =
        format!("<{pri}>1 {} {hostname} pogo-vault {} {msgid} {sd} {msg}", format_time_ms(time_ms), std::process::id());
    format!("{} {body}", body.len())
}

/// This machine's host name as an RFC 5424 HOSTNAME (printable ASCII), or `-`.
pub(super) fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_rfc5424_octet_counted() {
        let f = frame(110, 1_700_000_000_000, "vault-1", "audit-event", "[x@32473 seq=\"4\"]", "{\"a\":1}");
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        let pid = std::process::id();
        assert_eq!(
            msg,
            format!("<110>1 2023-11-14T22:13:20Z vault-1 pogo-vault {pid} audit-event [x@32473 seq=\"4\"] {{\"a\":1}}")
        );
    }
}
