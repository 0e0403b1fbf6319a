//! `pogo-vault dev` as a child process, as a newcomer runs it: a data directory, a free
//! port, its standard output read line by line (on a thread) until it says it is ready.
//! Killed when dropped, so a failing test leaves no server behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Dev {
    pub child: Child,
    /// What it printed so far, line by line.
    pub lines: Vec<String>,
    rx: mpsc::Receiver<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    /// Starts `pogo-vault dev --data-dir DATA --listen 127.0.0.1:0`, logging warnings only,
    /// its standard error discarded.
    pub fn spawn(data: &Path) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
            .args(["dev", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .env_remove("POGO_VAULT_DB")
            .env("POGO_VAULT_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        Dev { child, lines: Vec::new(), rx }
    }

    /// Reads its output into `lines` until `dev: ready`, calling `seen` with each line as it
    /// arrives; panics, showing what it printed, when no line comes for `stall`.
    pub fn wait_ready(&mut self, stall: Duration, mut seen: impl FnMut(&str)) {
        loop {
            let line = self
                .rx
                .recv_timeout(stall)
                .unwrap_or_else(|_| panic!("dev mode stalled; it printed {:#?}", self.lines));
            seen(&line);
            let ready = line.contains("dev: ready");
            self.lines.push(line);
            if ready {
                return;
            }
        }
    }

    /// The API gateway's base URL it printed.
    pub fn gateway(&self) -> String {
        let at = "dev: Go API gateway (HTTPS, mutual TLS) at ";
        self.lines.iter().find_map(|l| l.strip_prefix(at)).expect("the gateway is printed").trim().to_owned()
    }

    /// The gRPC endpoint it printed.
    pub fn endpoint(&self) -> String {
        let at = "dev: vault serving gRPC over mutual TLS at ";
        self.lines.iter().find_map(|l| l.strip_prefix(at)).expect("the endpoint is printed").trim().to_owned()
    }
}
