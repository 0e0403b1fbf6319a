//! The syslog witness: each checkpoint as one RFC 5424 message (MSGID `checkpoint`, the
//! checkpoint's JSON as the message) over the shared connection of `audit/syslog.rs`.

use super::super::chain::Checkpoint;
use super::super::syslog::{SyslogConn, frame, local_hostname};
use super::config::SyslogWitnessConfig;
use super::sink::Sink;

pub(super) struct SyslogSink {
    conn: SyslogConn,
    pri: u32,
    hostname: String,
}

impl SyslogSink {
    /// From the checked configuration (see [`SyslogWitnessConfig`]); connects lazily.
    pub(super) fn new(s: &SyslogWitnessConfig) -> std::io::Result<SyslogSink> {
        Ok(SyslogSink {
            conn: s.connection().map_err(std::io::Error::other)?,
            // Severity 6 (informational): a checkpoint is a record, not a problem.
            pri: u32::from(s.facility) * 8 + 6,
            hostname: s.hostname.clone().unwrap_or_else(local_hostname),
        })
    }

    fn frame(&self, cp: &Checkpoint) -> String {
        frame(self.pri, cp.time_ms, &self.hostname, "checkpoint", "-", &cp.to_json())
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn deliver(&mut self, cp: &Checkpoint) -> Result<(), String> {
        self.conn.send(self.frame(cp).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(seq: i64) -> Checkpoint {
        Checkpoint::sign(seq, [1; 32], 1_700_000_000_000, &ed25519_dalek::SigningKey::from_bytes(&[5; 32]))
    }

    #[test]
    fn syslog_frame_carries_the_checkpoint_json() {
        let s = SyslogSink {
            conn: SyslogConn::new("127.0.0.1:1".into(), "localhost".into(), None),
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
