//! A syslog receiver for the audit sink tests: RFC 5424 over TCP with RFC 6587 octet
//! counting, as the vault's syslog sink sends it, on a real loopback port.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a sink delivered: `event` or `checkpoint`, and its sequence.
pub type Got = (&'static str, i64);

/// A syslog receiver (RFC 6587 octet counting) that keeps the kind and sequence of every
/// message it reads, in arrival order.
pub struct Receiver {
    pub port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Receiver {
    pub async fn start(port: u16, got: Arc<Mutex<Vec<Got>>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (g, t) = (got.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let conn = tokio::spawn(read_frames(stream, g.clone()));
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Receiver { port, tasks }
    }

    /// Stopped: the listener and every connection closed, unread bytes lost.
    pub async fn stop(self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The next RFC 6587 octet-counted message on `s`; `None` once it closes or breaks off.
pub async fn next_message(s: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut len = 0usize;
    loop {
        match s.read_u8().await.ok()? {
            b @ b'0'..=b'9' => len = len * 10 + usize::from(b - b'0'),
            b' ' => break,
            other => panic!("not octet-counted framing: byte {other}"),
        }
    }
    let mut msg = vec![0; len];
    s.read_exact(&mut msg).await.ok()?;
    Some(String::from_utf8(msg).unwrap())
}

async fn read_frames(mut s: impl AsyncRead + Unpin, got: Arc<Mutex<Vec<Got>>>) {
    while let Some(msg) = next_message(&mut s).await {
        // RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
        let fields: Vec<&str> = msg.splitn(8, ' ').collect();
        assert_eq!((fields[2], fields[3], fields[6]), ("vault-test", "pogo-vault", "-"), "{msg}");
        let kind = match fields[5] {
            "audit-event" => "event",
            "checkpoint" => "checkpoint",
            other => panic!("unexpected MSGID {other}: {msg}"),
        };
        let json: serde_json::Value = serde_json::from_str(fields[7]).unwrap();
        got.lock().unwrap().push((kind, json["sequence"].as_i64().unwrap()));
    }
}
