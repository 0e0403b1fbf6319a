//! The example files in `deploy/` are what operators copy: each must pass the real binary's
//! check, and a broken copy must fail with one line that says where it is broken.
//!
//! Every `*.toml` under `deploy/` (recursively) is an example: files whose name starts with
//! `policy` are policies (`pogo-vault policy check`), all others are server configurations
//! (`pogo-vault config check`). A new example is covered by being put there.
//!
//! The configurations are checked with `config check --no-files`: their keys and values,
//! not the files they name (production paths such as `/etc/pogo-vault/...`, which do not
//! exist here). `tests/newcomer_paths.rs` checks that without `--no-files` those files are
//! checked as `serve` would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The fully commented example that must mention every configuration key.
const FULL_CONFIG: &str = "config.toml";
/// The example policy the broken copies are made from.
const POLICY: &str = "policy.toml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn is_policy(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("policy"))
}

/// Every `*.toml` under `dir`, recursively, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "toml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn examples() -> (Vec<PathBuf>, Vec<PathBuf>) {
    toml_files(&deploy_dir()).into_iter().partition(|p| !is_policy(p))
}

/// `pogo-vault <what> check FILE`, with no `POGO_VAULT_*` variable from the test's
/// environment (an override would change what is checked).
fn check(what: &str, file: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pogo-vault"));
    cmd.args([what, "check"]).arg(file);
    if what == "config" {
        cmd.arg("--no-files");
    }
    common::without_vault_env(&mut cmd);
    cmd.output().expect("run pogo-vault")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_passes(what: &str, file: &Path) {
    let out = check(what, file);
    assert!(
        out.status.success(),
        "`pogo-vault {what} check {}` failed:\nstdout: {}\nstderr: {}",
        file.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains(": ok"), "{}", text(&out.stdout));
}

/// Fails, prints exactly one line on stderr and nothing on stdout; returns that line.
fn assert_fails_one_line(what: &str, file: &Path) -> String {
    let out = check(what, file);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "`{what} check` accepted a broken file:\n{stdout}\n{}", read(file));
    assert_eq!(stdout, "", "nothing on stdout when the check fails");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with the first occurrence of `from` replaced (which must be there, so a changed
/// example fails here with a clear message rather than testing nothing).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example no longer contains {from:?}: update this test");
    text.replacen(from, to, 1)
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not found"));
    text[..at].matches('\n').count() + 1
}

/// Writes `contents` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn every_config_example_passes_config_check() {
    let (configs, _) = examples();
    let names: BTreeSet<_> = configs.iter().filter_map(|p| p.file_name()?.to_str()).collect();
    for expected in [FULL_CONFIG, "config-passphrase.toml"] {
        assert!(names.contains(expected), "deploy/{expected} is missing (found {names:?})");
    }
    for file in &configs {
        assert_passes("config", file);
    }
}

#[test]
fn every_policy_example_passes_policy_check() {
    let (_, policies) = examples();
    assert!(policies.iter().any(|p| p == &deploy_dir().join(POLICY)), "deploy/{POLICY} is missing");
    for file in &policies {
        assert_passes("policy", file);
    }
}

/// The names of every key a section accepts, read from the binary's own "unknown field"
/// error (`expected one of `a`, `b``), so a key added to the configuration later is
/// required here too without touching this test.
fn accepted_keys(section: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&deploy_dir().join(FULL_CONFIG));
    let probe = "zz_not_a_key";
    let broken = match section {
        None => format!("[{probe}]\n{base}"),
        Some(s) => replace_once(&base, &format!("\n[{s}]\n"), &format!("\n[{s}]\n{probe} = 1\n")),
    };
    let line = assert_fails_one_line("config", &write(dir.path(), "c.toml", &broken));
    // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, ...".
    let (_, list) = line.split_once(", expected ").unwrap_or_else(|| panic!("no key list in: {line}"));
    let keys: Vec<String> = list.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(!keys.is_empty(), "no keys parsed from: {line}");
    keys
}

/// `(section, key)` for every key the file sets or shows commented out (`# key = ...`)
/// below a `[section]` header.
fn mentioned_keys(text: &str) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let line = line.trim_start_matches('#').trim();
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                out.insert((section.clone(), key.to_owned()));
            }
        }
    }
    out
}

#[test]
fn full_config_example_mentions_every_key() {
    let text = read(&deploy_dir().join(FULL_CONFIG));
    let mentioned = mentioned_keys(&text);
    let sections = accepted_keys(None);
    let mut missing = Vec::new();
    for section in &sections {
        assert!(text.contains(&format!("\n[{section}]\n")), "deploy/{FULL_CONFIG} has no [{section}] section");
        for key in accepted_keys(Some(section)) {
            if !mentioned.contains(&(section.clone(), key.clone())) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "deploy/{FULL_CONFIG} does not show these keys: {missing:?}");
}

#[test]
fn broken_config_copies_fail_with_one_line_naming_the_line_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&deploy_dir().join(FULL_CONFIG));
    let listen = "listen = \"0.0.0.0:8443\"";

    // (name, broken text, what the one line must contain)
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "syntax-error.toml",
            replace_once(&base, listen, "listen = \"0.0.0.0:8443"),
            vec![format!("line {}", line_of(&base, listen))],
        ),
        (
            "unknown-key.toml",
            replace_once(&base, listen, &format!("{listen}\nlisten_addr = \"0.0.0.0:9443\"")),
            vec![format!("line {}", line_of(&base, listen) + 1), "unknown field".into(), "listen_addr".into()],
        ),
        (
            "bad-address.toml",
            replace_once(&base, listen, "listen = \"nowhere\""),
            vec![format!("line {}", line_of(&base, listen))],
        ),
        (
            "rate-above-go-limit.toml",
            replace_once(&base, "upstream_rate_per_second = 2\n", "upstream_rate_per_second = 50\n"),
            vec!["upstream_rate_per_second".into()],
        ),
        (
            "zero-timeout.toml",
            replace_once(&base, "request_timeout_secs = 15\n", "request_timeout_secs = 0\n"),
            vec!["server.request_timeout_secs".into()],
        ),
        (
            "two-master-key-sources.toml",
            replace_once(
                &base,
                "# master_passphrase_file = \"/etc/pogo-vault/master.passphrase\"",
                "master_passphrase_file = \"/etc/pogo-vault/master.passphrase\"",
            ),
            vec!["master_key_file".into(), "only one".into()],
        ),
        (
            "witness-backlog-zero.toml",
            replace_once(&base, "backlog = 10000\n", "backlog = 0\n"),
            vec!["audit.witness.backlog".into()],
        ),
        (
            "witness-syslog-without-port.toml",
            replace_once(
                &base,
                "# [audit.witness.syslog]\n# address = \"logs.example.org:6514\"",
                "[audit.witness.syslog]\naddress = \"logs.example.org\"",
            ),
            vec!["audit.witness.syslog.address".into(), "host:port".into()],
        ),
        (
            "witness-tls-without-ca.toml",
            replace_once(
                &base,
                "# [audit.witness.syslog]\n# address = \"logs.example.org:6514\"\n# tls = true",
                "[audit.witness.syslog]\naddress = \"logs.example.org:6514\"\ntls = true",
            ),
            vec!["audit.witness.syslog.ca".into()],
        ),
        (
            "witness-file-in-missing-directory.toml",
            replace_once(
                &base,
                "# [audit.witness.file]\n# path = \"/mnt/witness/pogo-vault-checkpoints.jsonl\"",
                "[audit.witness.file]\npath = \"/nonexistent-volume/checkpoints.jsonl\"",
            ),
            vec!["audit.witness.file.path".into(), "does not exist".into()],
        ),
    ];
    for (name, broken, needles) in cases {
        let line = assert_fails_one_line("config", &write(dir.path(), name, &broken));
        assert!(line.contains(name), "the error names the file: {line}");
        for needle in needles {
            assert!(line.contains(&needle), "{name}: {needle:?} not in: {line}");
        }
    }
}

#[test]
fn broken_policy_copies_fail_with_one_line_naming_the_line_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&deploy_dir().join(POLICY));
    let token = "roles = [\"token\"]";
    let tenants_all = "tenants = [\"*\"]\n";

    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "syntax-error.toml",
            replace_once(&base, token, "roles = [\"token\"] ]"),
            vec![format!("line {}", line_of(&base, token))],
        ),
        (
            "unknown-role.toml",
            replace_once(&base, token, "roles = [\"root\"]"),
            vec![format!("line {}", line_of(&base, token)), "root".into()],
        ),
        ("unknown-key.toml", replace_once(&base, token, "role = [\"token\"]"), vec!["line".into(), "role".into()]),
        (
            "grant-without-tenants.toml",
            replace_once(&base, tenants_all, ""),
            vec!["grant 1".into(), "tenants is empty".into()],
        ),
        (
            "every-caller.toml",
            replace_once(&base, "caller = \"spiffe://example.org/service/billing\"", "caller = \"*\""),
            vec!["grant 1".into(), "every certificate".into()],
        ),
        (
            "bad-tenant-pattern.toml",
            replace_once(&base, tenants_all, "tenants = [\"Acme AS\"]\n"),
            vec!["grant 1".into(), "tenant pattern".into()],
        ),
    ];
    for (name, broken, needles) in cases {
        let line = assert_fails_one_line("policy", &write(dir.path(), name, &broken));
        assert!(line.contains(name), "the error names the file: {line}");
        for needle in needles {
            assert!(line.contains(&needle), "{name}: {needle:?} not in: {line}");
        }
    }
}

/// The Kubernetes Litestream component ships its own copy of `deploy/litestream.yml`
/// (kustomize does not read files above its directory): the two must not drift apart.
#[test]
fn kubernetes_litestream_config_is_a_copy_of_the_host_one() {
    let host = read(&deploy_dir().join("litestream.yml"));
    let kube = read(&deploy_dir().join("kubernetes/litestream/litestream.yml"));
    assert!(host == kube, "deploy/kubernetes/litestream/litestream.yml differs from deploy/litestream.yml: copy it");
}
