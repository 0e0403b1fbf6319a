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
        if path.ends_with("src/vault/gate.rs") || path.ends_with("src/vault.rs") {
            continue; // where it is defined and re-exported
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

#[path = "architecture/imports.rs"]
mod imports;

/// Every `.rs` file under `src/`, as (path relative to `src/`, text).
fn src_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<(String, String)> = sources(&src)
        .into_iter()
        .map(|(p, t)| (p.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/"), t))
        .collect();
    files.sort();
    files
}

/// No file of `src/` imports, through any chain of others, a file that imports it: the
/// one-way flow of ARCHITECTURE.md at the level of files. A circle is named with the
/// imports that close it.
#[test]
fn no_import_circle_among_src_files() {
    let graph = imports::Graph::build(&src_files());
    assert!(
        graph.edges.len() > 50,
        "only {} files import anything: is the parser still reading `src/`?",
        graph.edges.len()
    );
    let circles = graph.circles();
    let text: Vec<String> = circles
        .iter()
        .map(|c| format!("circle of {} files: {}\n{}", c.len(), c.join(", "), graph.describe(c)))
        .collect();
    assert!(circles.is_empty(), "import circles among the files of src/:\n{}", text.join("\n"));
}

/// The circle check finds a circle, through a re-export, and ignores test-only imports and
/// imports of the file's own definitions.
#[test]
fn the_import_graph_sees_circles_through_reexports_and_not_test_code() {
    let file = |p: &str, t: &str| (p.to_owned(), t.to_owned());
    let files = vec![
        file("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        file("a.rs", "use crate::b::B;\npub struct A;\n#[cfg(test)]\nmod tests { use crate::c::C; }"),
        file("b/mod.rs", "mod inner;\npub use inner::B;\n"),
        file("b/inner.rs", "pub struct B(crate::c::C);"),
        file("c.rs", "use super::a::{self, A};\npub struct C; fn f() { let _ = a::A; }\n// use crate::b::B;"),
    ];
    let graph = imports::Graph::build(&files);
    assert_eq!(graph.circles(), vec![vec!["a.rs".to_owned(), "b/inner.rs".into(), "c.rs".into()]]);
    assert!(graph.imports("a.rs", "b/inner.rs").is_some(), "the re-export leads to the defining file");
    assert!(graph.imports("a.rs", "c.rs").is_none(), "test code is not an import");
    assert!(graph.imports("c.rs", "b/inner.rs").is_none(), "comments are not imports");

    let acyclic = vec![
        file("lib.rs", "pub mod a; pub mod b;"),
        file("a.rs", "use crate::b::B; pub struct A;"),
        file("b.rs", "pub struct B; const S: &str = \"crate::a::A\";"),
    ];
    assert!(imports::Graph::build(&acyclic).circles().is_empty(), "a path in a string is not an import");
}

/// A file past ~600 lines usually hides two modules (STYLE.md). The ones allowed to be
/// longer are listed with the reason.
#[test]
fn no_src_file_is_longer_than_600_lines() {
    const LIMIT: usize = 600;
    let allowed: [(&str, usize, &str); 0] = [];
    let mut offenders = Vec::new();
    for (path, text) in src_files() {
        let lines = text.lines().count();
        let limit = allowed.iter().find(|(p, _, _)| *p == path).map_or(LIMIT, |(_, n, _)| *n);
        if lines > limit {
            offenders.push(format!("src/{path}: {lines} lines (limit {limit})"));
        }
    }
    assert!(offenders.is_empty(), "files too long; split them by concern:\n{}", offenders.join("\n"));
}
