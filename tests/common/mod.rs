//! Shared helpers for the integration tests: running the real binary, and scanning bytes
//! for secrets in every form they could leak in. The fixture (keys, constants, the demo
//! policy) is `fixture.rs`; the in-process server `server.rs`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;

/// A scratch directory with a database path and a generated master key file.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }
    pub fn db(&self) -> PathBuf {
        self.dir.path().join(fixture::VAULT_DB)
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join(fixture::MASTER_KEY)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `pogo-vault --db DB ARGS` with `stdin` piped in.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        run_bin(&[&["--db", self.db().to_str().unwrap()], args].concat(), stdin)
    }

    /// Runs with `--master-key-file KEY` added.
    pub fn run_k(&self, args: &[&str], stdin: &str) -> Output {
        run_bin(
            &[&["--db", self.db().to_str().unwrap(), "--master-key-file", self.key().to_str().unwrap()], args].concat(),
            stdin,
        )
    }

    pub fn init(&self) {
        let out = self.run(&["init", "--generate-master-key-file", self.key().to_str().unwrap()], "");
        assert_ok(&out);
    }
}

pub fn run_bin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(args)
        .env_remove("POGO_VAULT_DB")
        .env_remove("POGO_VAULT_MASTER_KEY_FILE")
        .env_remove("POGO_VAULT_MASTER_PASSPHRASE_FILE")
        .env_remove("POGO_VAULT_MASTER_PASSPHRASE_ENV")
        .env_remove("POGO_VAULT_AUDIT_DB")
        .env_remove("POGO_VAULT_ALLOW_ROOT")
        .env_remove("POGO_VAULT_ENDPOINT")
        .env_remove("POGO_VAULT_CA")
        .env_remove("POGO_VAULT_CERT")
        .env_remove("POGO_VAULT_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pogo-vault");
    // The command may refuse and exit before reading its input: a broken pipe is fine.
    if let Err(e) = child.stdin.take().expect("stdin").write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("wait")
}

/// Removes from `cmd` every `POGO_VAULT_*` variable of the test runner's environment, so the
/// binary reads only what the test gives it (an exported override would change what runs).
pub fn without_vault_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("POGO_VAULT_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts failure with exactly one line on stderr containing every `needle`.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "expected a one-line error, got: {err}");
    for n in needles {
        assert!(err.contains(n), "error {err:?} does not mention {n:?}");
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every form a secret could take on the way out: plain, upper/lower case, base64
/// (standard and URL-safe, padded or not), hex of its bytes.
pub fn leak_forms(secret: &str) -> Vec<Vec<u8>> {
    let b = secret.as_bytes();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let mut forms = vec![
        b.to_vec(),
        secret.to_uppercase().into_bytes(),
        secret.to_lowercase().into_bytes(),
        base64::engine::general_purpose::STANDARD.encode(b).into_bytes(),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(b).into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b).into_bytes(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
    ];
    // A GUID without its dashes, as some tools print it.
    forms.push(secret.replace('-', "").into_bytes());
    forms
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Panics naming the form and the place if any form of `secret` occurs in `hay`.
pub fn assert_no_leak(place: &str, hay: &[u8], secret: &str) {
    for form in leak_forms(secret) {
        assert!(!contains(hay, &form), "{place} contains a form of a secret: {:?}", String::from_utf8_lossy(&form));
    }
}

pub fn read_if_exists(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// A logical dump of every row of every table, to compare "database unchanged".
pub fn dump(db: &Path) -> Vec<String> {
    let conn = rusqlite_open(db);
    let mut tables: Vec<String> = {
        let mut s = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
        s.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    tables.sort();
    let mut out = Vec::new();
    for t in tables {
        let mut s = conn.prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid")).unwrap();
        let n = s.column_count();
        let rows = s
            .query_map([], |r| {
                let mut cols = Vec::new();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cols.push(format!("{v:?}"));
                }
                Ok(cols.join("|"))
            })
            .unwrap();
        for row in rows {
            out.push(format!("{t}: {}", row.unwrap()));
        }
    }
    out
}

/// A demo tenant with no name, labels or organization number.
pub fn new_tenant(id: &str) -> pogo_vault::vault::NewTenant {
    pogo_vault::vault::NewTenant::new(id.parse().expect("tenant id"), pogo_vault::domain::Environment::Demo)
}

pub fn rusqlite_open(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(db).expect("open db")
}
pub mod broker;
pub mod browser;
pub mod dev;
pub mod fixture;
pub mod serve_process;
pub mod server;
pub mod syslog;

/// Asks Go (the simulator) to approve an onboarding as a user's browser would, and returns
/// the onboarding token from the redirect back.
pub async fn approve_at_sim(authorization_url: &str) -> String {
    // A plain-HTTP browser; reqwest still wants a TLS provider chosen: ours, ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http.get(authorization_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302, "the simulator's approval redirects back");
    let back = r.headers()["location"].to_str().unwrap().to_owned();
    let url = reqwest::Url::parse(&back).unwrap();
    url.query_pairs().find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()).expect("token in the redirect")
}
pub mod pg;
