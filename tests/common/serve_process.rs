//! `pogo-vault serve --config` as a child process, for the tests that `kill -9` it: started
//! on the files of [`super::fixture::serve_files`] with standard error in `serve.log`
//! beside the configuration, and waited for until it answers over mutual TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pogo_vault::tls::ClientTlsFiles;
use tonic::transport::Channel;

use super::fixture;

/// Writes `config.toml` in `dir`, beside the files of [`fixture::serve_files`]: their
/// [`fixture::serve_config`] on a port that was free a moment ago, then `extra`. Returns
/// the file and the endpoint the server will answer at.
pub fn write_config(dir: &Path, extra: &str) -> (PathBuf, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("config.toml");
    std::fs::write(&config, fixture::serve_config(&format!("127.0.0.1:{port}")) + extra).unwrap();
    (config, format!("https://127.0.0.1:{port}"))
}

/// Starts `serve --allow-root --config CONFIG` logging at `log_level`; its standard error
/// replaces `serve.log` beside the configuration.
pub fn start(config: &Path, log_level: &str) -> Child {
    let log = std::fs::File::create(config.with_file_name("serve.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["serve", "--allow-root", "--config", config.to_str().unwrap()])
        .env("POGO_VAULT_LOG", log_level)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// What the last [`start`] on `config` wrote to its standard error.
pub fn log(config: &Path) -> String {
    std::fs::read_to_string(config.with_file_name("serve.log")).unwrap_or_default()
}

/// Connects to `endpoint` as `files` until the server answers, `attempts` times `pause`
/// apart; panics with the server's log if it never does.
pub async fn wait_ready(
    endpoint: &str,
    files: &ClientTlsFiles,
    config: &Path,
    attempts: usize,
    pause: Duration,
) -> Channel {
    for _ in 0..attempts {
        if let Ok(ch) = pogo_vault::client::connect(endpoint, files, Some("localhost")).await {
            return ch;
        }
        tokio::time::sleep(pause).await;
    }
    panic!("server did not come up at {endpoint}: {}", log(config));
}
