//! The sealed storage through the operator's CLI: the real binary, real SQLite files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::fixture::APP_KEY;
use common::*;
use pogo_vault::crypto::MasterKeySource;
use pogo_vault::domain::TenantId;
use pogo_vault::vault::Vault;

const CANARY_KEY: &str = "c0ffee00-1234-4abc-9def-00000000c4a7";
const CANARY_KEY_2: &str = "c0ffee00-5678-4abc-9def-00000000beef";
const CANARY_SUB: &str = "5ub5cr1pt10nCanary0123456789abcd";

fn setup_with_tenant(s: &Scratch) -> Vec<std::process::Output> {
    s.init();
    let mut outs = Vec::new();
    outs.push(s.run_k(&["integration", "set", "--environment", "demo", "--application-key", APP_KEY], CANARY_SUB));
    outs.push(s.run_k(
        &[
            "tenant",
            "add",
            "--tenant-id",
            "acme",
            "--environment",
            "demo",
            "--display-name",
            "Acme AS",
            "--organization-number",
            "123456789",
            "--label",
            "team=ap",
        ],
        &format!("  {CANARY_KEY}\n"),
    ));
    for o in &outs {
        assert_ok(o);
    }
    outs
}

#[test]
fn no_canary_in_database_wal_or_output() {
    let s = Scratch::new();
    let mut outs = setup_with_tenant(&s);
    outs.push(s.run_k(&["tenant", "list"], ""));
    outs.push(s.run_k(&["tenant", "list", "--json"], ""));
    outs.push(s.run_k(&["tenant", "show", "acme", "--json"], ""));
    outs.push(s.run_k(&["integration", "list", "--json"], ""));
    for o in &outs {
        assert_ok(o);
    }
    let shown = stdout(&outs[4]);
    assert!(shown.contains("\"client_key_hint\": \"…c4a7\""), "{shown}");

    let db = read_if_exists(&s.db());
    let wal = read_if_exists(&s.path("vault.db-wal"));
    let audit = [read_if_exists(&s.path("vault-audit.db")), read_if_exists(&s.path("vault-audit.db-wal"))].concat();
    assert!(!db.is_empty());
    assert!(contains(&audit, b"key_registered"), "the CLI's changes are audited");
    for secret in [CANARY_KEY, CANARY_SUB] {
        assert_no_leak("database file", &db, secret);
        assert_no_leak("WAL file", &wal, secret);
        assert_no_leak("audit database", &audit, secret);
        for (i, o) in outs.iter().enumerate() {
            assert_no_leak(&format!("stdout of command {i}"), &o.stdout, secret);
            assert_no_leak(&format!("stderr of command {i}"), &o.stderr, secret);
        }
    }
    // The scan itself can fail: the plaintext key is in what we fed the command.
    assert!(contains(format!("  {CANARY_KEY}\n").as_bytes(), CANARY_KEY.as_bytes()));
}

#[test]
fn database_and_key_file_are_private() {
    let s = Scratch::new();
    setup_with_tenant(&s);
    for p in [s.db(), s.key(), s.path("vault.db-wal")] {
        if p.exists() {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", p.display());
        }
    }
}

/// (purpose, owner, version, wrapped DEK, ciphertext) of every sealed row.
type SealedRow = (String, String, i64, Vec<u8>, Vec<u8>);

fn sealed_rows(s: &Scratch) -> Vec<SealedRow> {
    let conn = rusqlite_open(&s.db());
    let mut st = conn
        .prepare("SELECT purpose, owner, version, wrapped_dek, ciphertext FROM sealed_secrets ORDER BY purpose, owner")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn rotate_kek_rewraps_deks_and_leaves_ciphertexts() {
    let s = Scratch::new();
    setup_with_tenant(&s);
    assert_ok(&s.run_k(&["tenant", "add", "--tenant-id", "beta", "--environment", "demo"], CANARY_KEY_2));
    let before = sealed_rows(&s);
    assert_eq!(before.len(), 5, "2 client keys, 1 subscription key, fingerprint and signing keys");

    let new_key = s.path("new.key");
    let out = s.run_k(&["rotate-kek", "--generate-new-master-key-file", new_key.to_str().unwrap()], "");
    assert_ok(&out);
    assert!(stdout(&out).contains("5 data keys rewrapped"), "{}", stdout(&out));

    let after = sealed_rows(&s);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, &b.1, b.2), (&a.0, &a.1, a.2));
        assert_eq!(b.4, a.4, "ciphertext of {} {} must be untouched", b.0, b.1);
        assert_ne!(b.3, a.3, "wrapped DEK of {} {} must change", b.0, b.1);
    }

    // Every tenant opens under the new key, to the key that was stored.
    let vault = Vault::unlock(&s.db(), &MasterKeySource::KeyFile(new_key.clone())).unwrap();
    for (id, key) in [("acme", CANARY_KEY), ("beta", CANARY_KEY_2)] {
        let t = vault.tenant(&id.parse::<TenantId>().unwrap()).unwrap().unwrap();
        assert_eq!(vault.open_client_key(&t).unwrap().expose_secret(), key);
    }
    let integ = vault.integration(pogo_vault::domain::Environment::Demo).unwrap().unwrap();
    assert_eq!(vault.open_subscription_key(&integ).unwrap().expose_secret(), CANARY_SUB);
    drop(vault);

    // The old key is refused with the clear message, through the CLI too.
    let err = Vault::unlock(&s.db(), &MasterKeySource::KeyFile(s.key())).unwrap_err();
    assert!(err.to_string().contains("wrong master key"), "{err}");
    assert_fails_with(&s.run_k(&["tenant", "list"], ""), &["wrong master key"]);
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let s = Scratch::new();
    setup_with_tenant(&s);
    let before = dump(&s.db());

    let cases: Vec<(Vec<&str>, &str, Vec<&str>)> = vec![
        (
            vec!["tenant", "add", "--tenant-id", "ok1", "--environment", "demo"],
            "not-a-guid",
            vec!["client_key", "GUID"],
        ),
        (vec!["tenant", "add", "--tenant-id", "ok2", "--environment", "demo"], "", vec!["client_key"]),
        (vec!["tenant", "add", "--tenant-id", "Bad Id", "--environment", "demo"], CANARY_KEY_2, vec!["tenant_id"]),
        (
            vec!["tenant", "add", "--tenant-id", "ok3", "--environment", "staging"],
            CANARY_KEY_2,
            vec!["environment", "staging"],
        ),
        (
            vec!["tenant", "add", "--tenant-id", "acme", "--environment", "demo"],
            CANARY_KEY_2,
            vec!["acme", "already exists"],
        ),
        (vec!["tenant", "rotate-key", "acme"], "1234", vec!["client_key"]),
        (vec!["tenant", "rotate-key", "nobody"], CANARY_KEY_2, vec!["nobody", "not found"]),
        (
            vec!["integration", "set", "--environment", "demo", "--application-key", "nope"],
            CANARY_SUB,
            vec!["application_key"],
        ),
        (
            vec![
                "integration",
                "set",
                "--environment",
                "demo",
                "--application-key",
                APP_KEY,
                "--base-url",
                "http://example.com",
            ],
            CANARY_SUB,
            vec!["base_url", "https"],
        ),
        (
            vec!["integration", "set", "--environment", "demo", "--application-key", APP_KEY],
            "short",
            vec!["subscription_key"],
        ),
    ];
    for (args, stdin, needles) in &cases {
        let out = s.run_k(args, stdin);
        assert_fails_with(&out, needles);
        assert_no_leak("error output", &out.stderr, CANARY_KEY_2);
        assert_eq!(dump(&s.db()), before, "database changed after {args:?}");
    }

    // Master key problems: loose permissions, unreadable, missing, wrong key.
    let loose = s.path("loose.key");
    fs::copy(s.key(), &loose).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_bin(
        &["--db", s.db().to_str().unwrap(), "--master-key-file", loose.to_str().unwrap(), "tenant", "list"],
        "",
    );
    assert_fails_with(&out, &["loose.key", "readable by group or others", "chmod 600"]);

    let missing = s.path("missing.key");
    let out = run_bin(
        &["--db", s.db().to_str().unwrap(), "--master-key-file", missing.to_str().unwrap(), "tenant", "list"],
        "",
    );
    assert_fails_with(&out, &["missing.key"]);

    let other = s.path("other.key");
    fs::write(&other, [7u8; 32]).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bin(
        &[
            "--db",
            s.db().to_str().unwrap(),
            "--master-key-file",
            other.to_str().unwrap(),
            "tenant",
            "add",
            "--tenant-id",
            "x",
            "--environment",
            "demo",
        ],
        CANARY_KEY_2,
    );
    assert_fails_with(&out, &["wrong master key"]);

    let garbage = s.path("garbage.key");
    fs::write(&garbage, b"not a key").unwrap();
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bin(
        &["--db", s.db().to_str().unwrap(), "--master-key-file", garbage.to_str().unwrap(), "tenant", "list"],
        "",
    );
    assert_fails_with(&out, &["garbage.key", "32 random bytes"]);

    let out = s.run(&["tenant", "list"], "");
    assert_fails_with(&out, &["no master key given"]);

    assert_eq!(dump(&s.db()), before, "database changed by a refused master key");
}

#[test]
fn passphrase_vault_refuses_wrong_passphrase() {
    let s = Scratch::new();
    let pass = s.path("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).unwrap();
    let db = s.db();
    let base = ["--db", db.to_str().unwrap(), "--master-passphrase-file", pass.to_str().unwrap()];
    let cheap = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1"];
    assert_ok(&run_bin(&[&base[..], &["init"], &cheap[..]].concat(), ""));
    assert_ok(&run_bin(
        &[&base[..], &["tenant", "add", "--tenant-id", "p1", "--environment", "production"]].concat(),
        CANARY_KEY,
    ));
    let before = dump(&db);

    let wrong = s.path("wrong");
    fs::write(&wrong, "incorrect horse battery staple").unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bin(
        &["--db", db.to_str().unwrap(), "--master-passphrase-file", wrong.to_str().unwrap(), "tenant", "list"],
        "",
    );
    assert_fails_with(&out, &["wrong master key"]);

    // The passphrase from an environment variable named by the operator.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["--db", db.to_str().unwrap(), "--master-passphrase-env", "MY_PASS", "tenant", "show", "p1"])
        .env("MY_PASS", "correct horse battery staple")
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(stdout(&out).contains("p1"));

    let out = run_bin(&["--db", db.to_str().unwrap(), "--master-passphrase-env", "UNSET_VAR_X", "tenant", "list"], "");
    // Said without the name: it could be the passphrase itself, typed there by mistake (issue 21).
    assert_fails_with(&out, &["--master-passphrase-env", "not set"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("UNSET_VAR_X"));

    // A key file on a passphrase vault says which option to use.
    let out = s.run_k(&["tenant", "list"], "");
    assert_fails_with(&out, &["passphrase"]);

    let short = s.path("short");
    fs::write(&short, "short").unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bin(
        &["--db", s.path("new.db").to_str().unwrap(), "--master-passphrase-file", short.to_str().unwrap(), "init"],
        "",
    );
    assert_fails_with(&out, &["too short"]);
    assert!(!s.path("new.db").exists(), "a refused init leaves no database behind");

    assert_eq!(dump(&db), before);
}

#[test]
fn init_refuses_twice_and_commands_refuse_missing_database() {
    let s = Scratch::new();
    s.init();
    let out = s.run(&["init", "--generate-master-key-file", s.path("k2").to_str().unwrap()], "");
    assert_fails_with(&out, &["already initialised"]);
    assert!(!s.path("k2").exists(), "no key file is generated for a refused init");
    let out = run_bin(
        &[
            "--db",
            s.path("nope.db").to_str().unwrap(),
            "--master-key-file",
            s.key().to_str().unwrap(),
            "tenant",
            "list",
        ],
        "",
    );
    assert_fails_with(&out, &["no database at", "pogo-vault init"]);
    assert!(!s.path("nope.db").exists());
}

#[test]
fn tenant_lifecycle_rotate_disable_enable_delete() {
    let s = Scratch::new();
    setup_with_tenant(&s);
    let out = s.run_k(&["tenant", "rotate-key", "acme"], CANARY_KEY_2);
    assert_ok(&out);
    assert!(stdout(&out).contains("…beef (version 2) replaces …c4a7 (version 1, destroyed)"), "{}", stdout(&out));
    let rows = sealed_rows(&s);
    let acme: Vec<_> = rows.iter().filter(|r| r.1 == "acme").collect();
    assert_eq!(acme.len(), 1, "only the new version remains");
    assert_eq!(acme[0].2, 2);

    assert_ok(&s.run_k(&["tenant", "disable", "acme"], ""));
    assert!(stdout(&s.run_k(&["tenant", "show", "acme"], "")).contains("DISABLED"));
    assert_ok(&s.run_k(&["tenant", "enable", "acme"], ""));
    assert!(stdout(&s.run_k(&["tenant", "show", "acme"], "")).contains("ACTIVE"));

    assert_fails_with(&s.run_k(&["tenant", "delete", "acme"], ""), &["--yes"]);
    assert_ok(&s.run_k(&["tenant", "delete", "acme", "--yes"], ""));
    assert!(sealed_rows(&s).iter().all(|r| r.1 != "acme"), "the sealed key is destroyed with the tenant");
    assert_fails_with(&s.run_k(&["tenant", "show", "acme"], ""), &["acme", "not found"]);

    // Crypto-shredding: after deletion, the destroyed DEK's bytes are in neither file.
    let db = read_if_exists(&s.db());
    let wal = read_if_exists(&s.path("vault.db-wal"));
    for r in rows.iter().filter(|r| r.1 == "acme") {
        assert!(!contains(&db, &r.3) && !contains(&wal, &r.3), "wrapped DEK bytes survive deletion");
    }
}
