//! What a long-running or networked command runs on: the async runtime, and the stop signals
//! (SIGTERM, Ctrl-C) it listens for from before it says it is ready.

use super::error::CliError;

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is made: made before a
/// long-running command says it is ready, so a stop sent right after that line is a
/// graceful stop, not the signal's default action.
pub(super) struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Must run inside the runtime.
    pub(super) fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
    }

    /// Until either signal arrives.
    pub(super) async fn wait(mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}
