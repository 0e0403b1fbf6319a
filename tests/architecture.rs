//! Architecture invariants of ARCHITECTURE.md, checked by reading the source tree, so they
//! cannot quietly stop being true.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
    out
}

/// The lines of `text` that are code (not `//` comments).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")).map(|(i, l)| (i + 1, l))
}

/// "Audit before effect": the gate that records nothing exists for test and benchmark
/// set-up only. No path a user can reach may pass it to a vault write.
#[test]
fn no_path_in_src_writes_the_vault_without_an_audit_gate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    for (path, text) in sources(&src) {
        if path.ends_with("src/vault.rs") {
            continue; // where it is defined
        }
        for (n, line) in code_lines(&text) {
            if line.contains("UnauditedFixture") {
                offenders.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "vault writes without an audit gate:\n{}", offenders.join("\n"));
}

/// The gate is called in every vault write: a `tx.commit()` in `vault.rs` (or its
/// submodules in `src/vault/`) is preceded, in the same function, by `gate.record(`.
#[test]
fn every_commit_in_the_vault_is_preceded_by_its_gate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![(root.join("src/vault.rs"), std::fs::read_to_string(root.join("src/vault.rs")).unwrap())];
    files.extend(sources(&root.join("src/vault")));
    // Functions that commit without a gate by design: creating a new database (nothing to
    // record yet: there is no audit key before `init`) and bookkeeping that is not a
    // change of keys, tenants or integrations.
    // `replace_audit_signing_key` is recorded before it is called, in the same audit
    // transaction as the old key's signed hand-over (`src/audit/rotate.rs`).
    let exempt = ["fn init_inner(", "fn touch_last_tokens(", "fn replace_audit_signing_key("];
    let mut offenders = Vec::new();
    let mut commits = 0;
    for (path, text) in &files {
        let mut current = String::new();
        let mut gated = false;
        for (n, line) in code_lines(text) {
            let t = line.trim_start();
            if (t.starts_with("pub fn ") || t.starts_with("fn ")) && line.starts_with("    ") {
                current = t.to_owned();
                gated = false;
            }
            if t.contains("gate.record(") || t.contains("rotate_kek_inner(&new_kek, argon2, gate)") {
                gated = true;
            }
            if t.contains("tx.commit()") {
                commits += 1;
                if !gated && !exempt.iter().any(|e| current.contains(e)) {
                    offenders.push(format!("{}:{n} in `{current}`", path.display()));
                }
            }
        }
    }
    assert!(commits >= 10, "found only {commits} commits: is the scan still reading the vault's files?");
    assert!(offenders.is_empty(), "commits with no audit gate before them:\n{}", offenders.join("\n"));
}
