//! The syslog sink: each event and checkpoint as one RFC 5424 message over TCP (optionally
//! TLS), on the connection the witness uses (`audit/syslog.rs`). MSGID is `audit-event` or
//! `checkpoint`; the message is the item's JSON, whose `sequence` identifies it.
//!
//! At least once. Syslog has no receipts, and bytes the kernel accepted die with a receiver
//! that stops before reading them. So a batch counts as delivered only after
//! [`CONFIRM_AFTER`] on a connection the receiver has not closed; when the receiver closes
//! the connection (or a write fails) with messages still unconfirmed, they are sent again.
//! A receiver therefore sees some messages twice around an outage, never a gap: it keeps
//! the first of each (`MSGID`, `sequence`). What this cannot see is a receiver machine that
//! vanishes without closing the connection and stays silent past [`CONFIRM_AFTER`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::super::record::Outcome;
use super::super::syslog::{SyslogConn, frame, local_hostname};
use super::config::SinkConfig;
use super::feed::{Destination, Item, SinkCursor};

/// How long a sent batch must stay on an open connection before it counts as delivered.
pub(super) const CONFIRM_AFTER: Duration = Duration::from_secs(2);

pub(super) struct SyslogDest {
    conn: SyslogConn,
    facility: u32,
    hostname: String,
    /// Sent batches not yet confirmed: the position each reaches, and when it was sent.
    pending: VecDeque<(SinkCursor, Instant)>,
}

impl SyslogDest {
    pub(super) fn new(cfg: &SinkConfig) -> Result<SyslogDest, String> {
        let s = cfg.syslog();
        Ok(SyslogDest {
            conn: s.connection()?,
            facility: u32::from(s.facility),
            hostname: s.hostname.clone().unwrap_or_else(local_hostname),
            pending: VecDeque::new(),
        })
    }

    fn frame(&self, item: &Item) -> String {
        let (msgid, severity) = match item {
            // Notice (5) for what a security team looks for first; informational (6) else.
            Item::Event(e) if e.record.outcome != Outcome::Ok => ("audit-event", 5),
            Item::Event(_) => ("audit-event", 6),
            Item::Checkpoint(_) => ("checkpoint", 6),
        };
        frame(self.facility * 8 + severity, item.time_ms(), &self.hostname, msgid, "-", &item.json())
    }
}

impl Destination for SyslogDest {
    fn send(&mut self, items: &[Item], end: SinkCursor) -> Result<(), String> {
        // A receiver that closed the connection while batches were unconfirmed may not have
        // read them: they go again (the worker rewinds), never confirmed by a new connection.
        if self.conn.peer_closed() && !self.pending.is_empty() {
            let n = self.pending.len();
            self.pending.clear();
            return Err(format!(
                "the receiver closed the connection with {n} batch(es) unconfirmed; sending them again"
            ));
        }
        let mut bytes = String::with_capacity(items.len() * 500);
        for item in items {
            bytes.push_str(&self.frame(item));
        }
        self.conn.send(bytes.as_bytes())?;
        self.pending.push_back((end, Instant::now()));
        Ok(())
    }

    fn confirm(&mut self) -> Result<Option<SinkCursor>, String> {
        if self.conn.peer_closed() && !self.pending.is_empty() {
            let n = self.pending.len();
            self.pending.clear();
            return Err(format!(
                "the receiver closed the connection with {n} batch(es) unconfirmed; sending them again"
            ));
        }
        let mut confirmed = None;
        while let Some((at, _)) = self.pending.front().filter(|(_, t)| t.elapsed() >= CONFIRM_AFTER) {
            confirmed = Some(*at);
            self.pending.pop_front();
        }
        Ok(confirmed)
    }

    fn reset(&mut self) {
        self.conn.reset();
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, AuditEvent, AuditRecord};

    fn event(seq: i64) -> Item {
        let record = AuditRecord::new(Action::TokenMinted, Outcome::Ok);
        Item::Event(AuditEvent { sequence: seq, time_ms: 1_700_000_000_000, prev_hash: [0; 32], hash: [2; 32], record })
    }

    /// Regression: a receiver that closed the connection with a batch unread, noticed only
    /// when the next batch was sent, made the sink reconnect quietly and later confirm the
    /// lost batch over the new connection.
    #[test]
    fn a_batch_counts_after_two_seconds_open_and_a_close_before_that_sends_it_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let text = format!("name = \"s\"\nkind = \"syslog\"\naddress = \"{}\"\n", listener.local_addr().unwrap());
        let mut d = SyslogDest::new(&toml::from_str(&text).unwrap()).unwrap();
        let one = SinkCursor { event_sequence: 1, checkpoint_sequence: 0 };
        let two = SinkCursor { event_sequence: 2, checkpoint_sequence: 0 };
        d.send(&[event(1)], one).unwrap();
        let (conn, _) = listener.accept().unwrap();
        assert_eq!(d.confirm().unwrap(), None, "not confirmed before {CONFIRM_AFTER:?}");
        drop(conn);
        std::thread::sleep(Duration::from_millis(100));
        let e = d.send(&[event(2)], two).unwrap_err();
        assert!(e.contains("unconfirmed"), "{e}");
        d.reset();
        // Sent again from the last confirmed position, on a new connection that stays open.
        d.send(&[event(1), event(2)], two).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        std::thread::sleep(CONFIRM_AFTER + Duration::from_millis(100));
        assert_eq!(d.confirm().unwrap(), Some(two));
        let mut got = String::new();
        conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let _ = std::io::Read::read_to_string(&mut conn, &mut got);
        assert_eq!(got.matches(" audit-event - ").count(), 2, "{got}");
    }

    #[test]
    fn a_denial_is_a_notice_and_the_message_is_the_events_json() {
        let cfg: SinkConfig =
            toml::from_str("name = \"s\"\nkind = \"syslog\"\naddress = \"127.0.0.1:1\"\nhostname = \"v1\"\n").unwrap();
        let d = SyslogDest::new(&cfg).unwrap();
        let record = AuditRecord::new(Action::TokenDenied, Outcome::Denied).tenant("acme");
        let e = Item::Event(AuditEvent {
            sequence: 7,
            time_ms: 1_700_000_000_000,
            prev_hash: [0; 32],
            hash: [2; 32],
            record,
        });
        let f = d.frame(&e);
        let (_, msg) = f.split_once(' ').unwrap();
        assert!(msg.starts_with("<109>1 2023-11-14T22:13:20Z v1 pogo-vault "), "{msg}");
        let json = msg.split_once(" audit-event - ").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!((v["sequence"].as_i64(), v["action"].as_str()), (Some(7), Some("token_denied")));
    }
}
