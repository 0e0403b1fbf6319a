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
            if starts_fn(t) {
                current = t.to_owned();
                gated = false;
            }
            // The gate's answer must stop the commit: `gate.record(...)?`.
            if checked_gate_call(text, line) || t.contains("rotate_kek_inner(&new_kek, argon2, gate)?") {
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

/// Whether a trimmed line starts a function item (any visibility, `async`, `const`).
fn starts_fn(t: &str) -> bool {
    let mut rest = t;
    for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    rest.starts_with("fn ")
}

/// Whether `line` (a line of `text`) holds a `gate.record(...)` whose result is propagated
/// with `?` (the call may span lines).
fn checked_gate_call(text: &str, line: &str) -> bool {
    let Some(col) = line.find("gate.record(") else { return false };
    let start = line.as_ptr() as usize - text.as_ptr() as usize + col + "gate.record".len();
    let mut depth = 0usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return text[start + i + 1..].trim_start().starts_with('?');
                }
            }
            _ => {}
        }
    }
    false
}

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

/// The top-level module of a file under `src/` (`server/tenant_svc.rs` → `server`).
fn top_module(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

/// The one-way flow of ARCHITECTURE.md, as data: every top-level module of `src/` with the
/// modules it may import, listed bottom up. Nothing may import a module above it, so the
/// table itself has no circle (checked below).
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("toml_error", &[]),
    ("hardening", &[]),
    ("proto", &[]),
    ("fuzz_support", &["domain"]),
    ("metrics", &["domain"]),
    ("crypto", &["domain"]),
    ("tls", &["domain"]),
    ("client", &["tls"]),
    // Traces: the exporter and the W3C context of a request; knows nothing of the vault.
    ("telemetry", &["tls"]),
    // The auditor's web page: a client of the vault's gRPC API (role `audit`), nothing more.
    ("console", &["proto"]),
    // Sealed blobs, hints and fingerprints only: never a plaintext secret. (`tls`: the CA
    // that PostgreSQL's server certificate is checked against.)
    ("store", &["crypto", "domain", "tls"]),
    // Go's HTTP API: knows nothing of storage, tokens or the server.
    ("upstream", &["crypto", "domain", "fuzz_support"]),
    ("vault", &["crypto", "domain", "store"]),
    ("backup", &["store"]),
    ("audit", &["crypto", "domain", "metrics", "store", "tls"]),
    ("authz", &["audit", "domain", "toml_error"]),
    ("sim", &["crypto", "domain", "vault"]),
    ("tokens", &["audit", "crypto", "domain", "metrics", "store", "upstream", "vault"]),
    // Use cases: below every transport (no server, no cli, no tonic).
    ("usecase", &["audit", "authz", "crypto", "domain", "store", "tokens", "upstream", "vault"]),
    (
        "server",
        &[
            "audit",
            "authz",
            "crypto",
            "domain",
            "metrics",
            "proto",
            "store",
            "telemetry",
            "tls",
            "tokens",
            "upstream",
            "usecase",
            "vault",
        ],
    ),
    // (`store`: `[storage.postgres]` becomes the store's `PostgresOptions`, checked by it.)
    (
        "config",
        &["audit", "crypto", "domain", "server", "store", "telemetry", "tls", "tokens", "toml_error", "upstream"],
    ),
    (
        "cli",
        &[
            "audit",
            "authz",
            "backup",
            "client",
            "config",
            "console",
            "crypto",
            "domain",
            "hardening",
            "proto",
            "server",
            "sim",
            "store",
            "telemetry",
            "tls",
            "tokens",
            "upstream",
            "usecase",
            "vault",
        ],
    ),
];

/// No module imports one that the table does not let it (a file naming a new top-level
/// module must add it to the table, in its place).
#[test]
fn modules_import_only_what_the_one_way_flow_allows() {
    let graph = imports::Graph::build(&src_files());
    let allowed = |from: &str, to: &str| MAY_IMPORT.iter().find(|(m, _)| *m == from).map(|(_, ok)| ok.contains(&to));
    let mut offenders = Vec::new();
    for (from, tos) in &graph.edges {
        for (to, names) in tos {
            let (a, b) = (top_module(from), top_module(to));
            if a == b || b == "lib" {
                continue;
            }
            match allowed(a, b) {
                Some(true) => {}
                Some(false) => offenders.push(format!(
                    "src/{from} imports src/{to} ({}): `{a}` may not import `{b}`",
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                None => offenders.push(format!("src/{from}: module `{a}` is not in MAY_IMPORT; add it in its place")),
            }
        }
    }
    offenders.sort();
    offenders.dedup();
    assert!(offenders.is_empty(), "imports against the one-way flow:\n{}", offenders.join("\n"));
}

/// The table is one-way: each module may import only modules listed before it.
#[test]
fn the_module_table_is_one_way() {
    for (i, (m, ok)) in MAY_IMPORT.iter().enumerate() {
        for dep in *ok {
            let at = MAY_IMPORT.iter().position(|(n, _)| n == dep);
            assert!(at.is_some_and(|j| j < i), "`{m}` may import `{dep}`, which is not listed below it");
        }
    }
}

/// Whether a code line builds a `tonic::Status` (`Status::internal(`, `tonic::Status::new(`,
/// ...), as opposed to naming another `...Status::` type (`TenantStatus::Active`).
fn builds_status(line: &str) -> bool {
    let mut rest = line;
    while let Some(i) = rest.find("Status::") {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + "Status::".len()..];
        let standalone = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if standalone && after.starts_with(|c: char| c.is_ascii_lowercase()) {
            return true;
        }
        rest = after;
    }
    false
}

/// "gRPC statuses are made only in `server::errors`" (ARCHITECTURE.md): one place decides
/// what each failure tells the caller.
#[test]
fn grpc_statuses_are_made_only_in_server_errors() {
    let mut offenders = Vec::new();
    for (path, text) in src_files() {
        if path == "server/errors.rs" {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if builds_status(line) {
                offenders.push(format!("src/{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "gRPC statuses built outside src/server/errors.rs (add a function there and call it):\n{}",
        offenders.join("\n")
    );
    assert!(builds_status("return Err(Status::internal(\"x\"))") && builds_status("tonic::Status::new(c, m)"));
    // Nor may a status be built under another name, or by a conversion written elsewhere.
    let mut disguised = Vec::new();
    for (path, text) in src_files() {
        if path == "server/errors.rs" {
            continue;
        }
        for (n, line) in code_lines(&text) {
            let t = line.trim();
            if t.contains("Status as ") || t.contains(" for Status ") || t.contains(" for tonic::Status ") {
                disguised.push(format!("src/{path}:{n}: {t}"));
            }
        }
    }
    assert!(
        disguised.is_empty(),
        "statuses under another name or by conversion outside errors.rs:\n{}",
        disguised.join("\n")
    );
    assert!(!builds_status("TenantStatus::Active") && !builds_status("SessionStatus::parse(s)"));
}

/// Where a secret's plaintext may be read (`expose_secret`), and why. Everywhere else holds
/// the secret types only, which seal, open and fingerprint themselves (`crypto`).
const MAY_EXPOSE: &[(&str, &str)] = &[
    ("crypto/", "the secret types themselves: sealing, opening, fingerprints, key derivation"),
    ("upstream/", "the requests to Go carry the keys (Basic header, subscription key header) and read the token"),
    ("server/token_svc.rs", "GetAccessToken hands the token to the caller: the point of the service"),
    ("server/state.rs", "the subscription key in GetAccessToken responses, where the configuration allows"),
];

/// Nothing outside the files of [`MAY_EXPOSE`] reads a secret's plaintext.
#[test]
fn secrets_are_exposed_only_where_allowed() {
    let mut offenders = Vec::new();
    for (path, text) in src_files() {
        if MAY_EXPOSE.iter().any(|(p, _)| path.starts_with(p)) {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains("expose_secret") {
                offenders.push(format!("src/{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "a secret's plaintext read outside the allowed files:\n{}", offenders.join("\n"));
}

#[test]
#[ignore = "prints the module graph"]
fn print_module_graph() {
    let graph = imports::Graph::build(&src_files());
    let mut m: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = Default::default();
    for (from, tos) in &graph.edges {
        for to in tos.keys() {
            if top_module(from) != top_module(to) {
                m.entry(top_module(from)).or_default().insert(top_module(to));
            }
        }
    }
    for (k, v) in m {
        println!("{k}: {v:?}");
    }
}

/// Use cases and everything below them know nothing of gRPC: `tonic` is named only by the
/// transport (`server`, `client`, `cli`), the generated contract and the TLS helpers that
/// build tonic's configurations. One exception, with its reason: the audit sink that speaks
/// OTLP, whose wire is gRPC; it is a client of a collector and knows nothing of our own
/// contract or handlers.
#[test]
fn nothing_below_the_transport_names_tonic() {
    let below =
        ["usecase/", "vault", "store/", "crypto/", "domain", "tokens/", "audit/", "authz/", "upstream/", "metrics.rs"];
    let outbound_grpc = ["audit/sinks/otlp.rs"];
    let mut offenders = Vec::new();
    for (path, text) in src_files() {
        if !below.iter().any(|b| path.starts_with(b)) || outbound_grpc.contains(&path.as_str()) {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains("tonic::") || line.contains("tonic_") || line.trim_start().starts_with("use tonic") {
                offenders.push(format!("src/{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "gRPC named below the transport:\n{}", offenders.join("\n"));
}

/// Whether `line` holds `what` as a whole name (`Attribute::Value` but not `Attribute::ValueLen`).
fn names(line: &str, what: &str) -> bool {
    line.match_indices(what).any(|(i, _)| {
        !what.ends_with(|c: char| c.is_alphanumeric())
            || !line[i + what.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}

/// DESIGN.md invariant 1, issue 20: the master key in an HSM never enters the vault's
/// memory. Only `src/crypto/hsm.rs` and `src/crypto/pkcs11.rs` speak PKCS#11, and they make
/// no call that could bring a key's bytes out of the module: they encrypt and decrypt (wrap
/// and unwrap of data keys), and read no `CKA_VALUE`, wrap, unwrap, derive, digest or copy
/// no key object.
#[test]
fn only_the_hsm_module_speaks_pkcs11_and_it_never_reads_key_bytes_out() {
    const FORBIDDEN: &[&str] = &[
        "AttributeType::Value",
        "Attribute::Value",
        "wrap_key(",
        "unwrap_key(",
        "derive_key(",
        "digest_key(",
        "copy_object(",
        "get_attribute_info",
        "Extractable(true)",
        "Sensitive(false)",
    ];
    let mut offenders = Vec::new();
    let mut speaks = Vec::new();
    for (path, text) in src_files() {
        for (n, line) in code_lines(&text) {
            if line.contains("cryptoki") {
                speaks.push(path.clone());
            }
            if (path == "crypto/hsm.rs" || path == "crypto/pkcs11.rs") && FORBIDDEN.iter().any(|f| names(line, f)) {
                offenders.push(format!("src/{path}:{n}: {}", line.trim()));
            }
        }
    }
    speaks.dedup();
    assert_eq!(speaks, vec!["crypto/hsm.rs".to_owned(), "crypto/pkcs11.rs".to_owned()], "PKCS#11 elsewhere");
    assert!(offenders.is_empty(), "a call that could read key bytes out of the HSM:\n{}", offenders.join("\n"));
    // The check above can fail: the file does make the calls it is allowed.
    let low = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/crypto/pkcs11.rs")).unwrap();
    assert!(low.contains("Mechanism::AesGcm") && low.contains("Extractable(false)"), "the HSM code moved?");
}

/// The gateway's answers are made in `server/gateway/respond.rs` only: a refusal built in
/// a handler would miss the problem shape, the request id or `Retry-After`.
#[test]
fn gateway_statuses_are_made_only_in_respond() {
    let mut offenders = Vec::new();
    for (path, text) in src_files() {
        if !path.starts_with("server/gateway/") || path == "server/gateway/respond.rs" {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains("StatusCode::") || line.contains("status_mut()") && !line.contains("answer.status") {
                offenders.push(format!("src/{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "gateway statuses made outside respond.rs:\n{}", offenders.join("\n"));
}
