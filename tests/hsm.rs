#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The master key in an HSM, with a real SoftHSM2 token made in a temp dir (`SOFTHSM2_CONF`
//! points at it; nothing touches system state) and the real binary: `init` creates a
//! non-extractable key, a served vault mints with it across a restart, `rotate-kek` moves
//! file → HSM → new HSM key → file without touching a ciphertext, an HSM that goes away mid
//! run fails cold mints `UNAVAILABLE` while cached tokens flow and comes back without a
//! restart, and a wrong PIN, module or label is one clear line with nothing written.
//!
//! `.ci/run` installs `softhsm2`. The test process itself never loads the module (setting
//! `SOFTHSM2_CONF` in-process would need `unsafe`): the one check that reads the key's
//! attributes runs in a child of this test binary (`key_attributes_child`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::fixture::{self, policy_text};
use common::{assert_fails_with, assert_ok, dump, serve_process, stdout};
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1 as pb;
use pogo_vault::vault::{NewTenant, UnauditedFixture};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "pogo-test";
const PIN: &str = "417293";

/// A throwaway SoftHSM2 token: its config, token directory and PIN file in `dir`.
struct Token {
    conf: PathBuf,
    tokens: PathBuf,
    pin_file: PathBuf,
}

impl Token {
    fn new(dir: &Path) -> Token {
        assert!(
            Path::new(MODULE).exists(),
            "{MODULE} is missing: install the Debian package softhsm2 (.ci/run does when it is missing)"
        );
        let tokens = dir.join("softhsm-tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "76543210"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
        let pin_file = dir.join("hsm.pin");
        write_private(&pin_file, &format!("{PIN}\n"));
        Token { conf, tokens, pin_file }
    }

    /// The four `--pkcs11-*` options for key `label` (`prefix` "" or "new-").
    fn options(&self, prefix: &str, label: &str) -> Vec<String> {
        let mut v = Vec::new();
        for (k, val) in [
            ("pkcs11-module", MODULE.to_owned()),
            ("pkcs11-token-label", TOKEN.to_owned()),
            ("pkcs11-key-label", label.to_owned()),
            ("pkcs11-pin-file", self.pin_file.display().to_string()),
        ] {
            v.push(format!("--{prefix}{k}"));
            v.push(val);
        }
        v
    }

    /// `vault.master_key` for key `label`, as a TOML line of `[vault]`.
    fn config_line(&self, label: &str) -> String {
        format!(
            "master_key = {{ pkcs11 = {{ module = \"{MODULE}\", token_label = \"{TOKEN}\", key_label = \"{label}\", \
             pin_file = \"{}\" }} }}\n",
            self.pin_file.display()
        )
    }

    /// Runs the vault binary with this token's `SOFTHSM2_CONF`.
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .env("POGO_VAULT_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The key `label`'s attributes as the token reports them, read by a child of this test
    /// binary with `SOFTHSM2_CONF` set (see the module docs).
    fn attributes(&self, label: &str) -> String {
        self.child(label, "read")
    }

    /// Makes an AES-256 key `label` that is extractable (what the vault must refuse), in a
    /// child of this test binary.
    fn create_extractable_key(&self, label: &str) {
        self.child(label, "create-extractable");
    }

    fn child(&self, label: &str, what: &str) -> String {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "key_attributes_child", "--nocapture", "--test-threads", "1"])
            .env("SOFTHSM2_CONF", &self.conf)
            .env("POGO_HSM_CHILD", format!("{}\n{label}\n{what}", self.pin_file.display()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "child failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        // libtest prints `test key_attributes_child ... ` before the line, on the same line.
        let line = text.lines().find_map(|l| l.find("attributes:").map(|i| &l[i..]));
        line.unwrap_or_else(|| panic!("the child printed no attributes: {text}")).to_owned()
    }
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Not a test of its own: the child [`Token::attributes`] runs, in a process whose
/// environment names the throwaway token. Prints the key's attributes as the module reports
/// them (and whether its value can be read: it must not).
#[test]
#[ignore = "run by Token::attributes in a child process"]
fn key_attributes_child() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let spec = std::env::var("POGO_HSM_CHILD").expect("only run as a child of Token::attributes");
    let mut parts = spec.split('\n');
    let (pin_file, label, what) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let pin = std::fs::read_to_string(pin_file).unwrap();
    let p = Pkcs11::new(MODULE).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let s = p.open_ro_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(pin.trim_end().into()))).unwrap();
    if what == "create-extractable" {
        let s = p.open_rw_session(slot).unwrap();
        s.login(UserType::User, Some(&AuthPin::new(pin.trim_end().into()))).ok();
        s.generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(cryptoki::object::KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .unwrap();
        println!("attributes: created");
        return;
    }
    let keys = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(keys.len(), 1, "one key labelled {label}");
    let attrs = s
        .get_attributes(keys[0], &[AttributeType::Extractable, AttributeType::Sensitive, AttributeType::Token])
        .unwrap();
    let value = s.get_attributes(keys[0], &[AttributeType::Value]);
    let value_readable = matches!(&value, Ok(v) if v.iter().any(|a| matches!(a, Attribute::Value(_))));
    println!("attributes: {attrs:?} value_readable={value_readable}");
}

/// Every canary a scan must not find: the sim's client keys used here and the
/// subscription key.
fn canaries(n: usize) -> Vec<String> {
    let mut c: Vec<String> = (0..n).map(fixture::sim_key).collect();
    c.push(pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY.to_owned());
    c
}

/// Files in `dir` (recursively) whose bytes hold any canary.
fn files_holding(dir: &Path, canaries: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                for c in canaries {
                    if bytes.windows(c.len()).any(|w| w == c.as_bytes()) {
                        found.push(format!("{} holds {c}", p.display()));
                    }
                }
            }
        }
    }
    found
}

/// Starts `serve` on `config` with the token's environment; waits until it answers.
async fn serve(token: &Token, config: &Path, pki: &pogo_vault::tls::DevPki, endpoint: &str) -> std::process::Child {
    let log = std::fs::File::create(config.with_file_name("serve.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["serve", "--allow-root", "--config", config.to_str().unwrap()])
        .env("SOFTHSM2_CONF", &token.conf)
        .env("POGO_VAULT_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    serve_process::wait_ready(
        endpoint,
        &pki.client_files("token-caller").unwrap(),
        config,
        200,
        Duration::from_millis(50),
    )
    .await;
    child
}

/// SIGTERM, and the server must exit cleanly: a PKCS#11 call racing the exit crashed it
/// (SoftHSM) before dropping a key waited for its session to close.
fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

/// A served vault's files in `dir` ([`fixture::serve_files`] on a new simulator) with
/// `tenants`, tenant `i` holding the simulator's client key `i`. Returns the simulator
/// (keep it: the vault's integration points at it) and the PKI.
async fn served_files(dir: &Path, tenants: &[&str]) -> (pogo_vault::sim::Sim, pogo_vault::tls::DevPki) {
    let sim = fixture::start_sim(1000).await;
    fixture::add_sim_clients(&sim, tenants.len());
    let (pki, vault) = fixture::serve_files(dir, &sim, &policy_text(""));
    for (i, t) in tenants.iter().enumerate() {
        vault
            .add_tenant(&NewTenant::new(t.parse().unwrap(), Environment::Demo), &fixture::key(i), &UnauditedFixture)
            .unwrap();
    }
    (sim, pki)
}

/// `rotate-kek` of the served files in `dir` from their key file to a new key `label` on
/// the token.
fn rotate_file_to_hsm(token: &Token, dir: &Path, label: &str) {
    let mut args = vec!["--db".to_owned(), dir.join(fixture::VAULT_DB).to_str().unwrap().to_owned()];
    args.extend(["--master-key-file".into(), dir.join(fixture::MASTER_KEY).to_str().unwrap().to_owned()]);
    args.push("rotate-kek".into());
    args.extend(token.options("new-", label));
    assert_ok(&token.run(&args.iter().map(String::as_str).collect::<Vec<_>>(), ""));
}

/// `config.toml` for the served files in `dir`, with the master key in the HSM as `label`.
fn hsm_config(dir: &Path, token: &Token, label: &str) -> (PathBuf, String) {
    let (config, endpoint) = serve_process::write_config(dir, "metrics_listen = \"\"\n");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&format!("master_key_file = \"{}\"\n", fixture::MASTER_KEY), &token.config_line(label));
    assert!(text.contains("pkcs11"), "{text}");
    std::fs::write(&config, text).unwrap();
    (config, endpoint)
}

async fn token_client(
    endpoint: &str,
    pki: &pogo_vault::tls::DevPki,
) -> pb::token_service_client::TokenServiceClient<tonic::transport::Channel> {
    let ch = pogo_vault::client::connect(endpoint, &pki.client_files("token-caller").unwrap(), Some("localhost"))
        .await
        .unwrap();
    pb::token_service_client::TokenServiceClient::new(ch)
}

fn get(tenant: &str) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest { tenant_id: tenant.into(), min_validity_seconds: 0 }
}

/// Serves `config` once and mints a token for every tenant (a fresh server has nothing
/// cached, so each mint unwraps that tenant's client key with the master key).
async fn mint_all(token: &Token, config: &Path, endpoint: &str, pki: &pogo_vault::tls::DevPki, tenants: &[&str]) {
    let child = serve(token, config, pki, endpoint).await;
    let mut c = token_client(endpoint, pki).await;
    for t in tenants {
        let r = c.get_access_token(get(t)).await;
        assert!(r.is_ok(), "tenant {t} did not mint: {r:?}\n{}", serve_process::log(config));
    }
    stop(child);
}

/// Must show 1: init, register, mint, restart, mint again with the KEK in SoftHSM; the key
/// is sensitive and not extractable as the token reports it; no canary anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_register_mint_restart_mint_with_the_master_key_in_softhsm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = Token::new(d);
    let sim = fixture::start_sim(1000).await;
    fixture::add_sim_clients(&sim, 2);
    let pki = pogo_vault::tls::generate_dev_pki(&d.join(fixture::CERTS), fixture::TRUST).unwrap();
    std::fs::write(d.join(fixture::POLICY), policy_text("")).unwrap();
    let db = d.join(fixture::VAULT_DB);
    let dbs = db.to_str().unwrap();
    let hsm = token.options("", "pogo-kek");
    let with_hsm = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--db".into(), dbs.into()];
        v.extend(hsm.iter().cloned());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let mut printed = String::new();
    let mut run = |args: Vec<String>, stdin: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = token.run(&refs, stdin);
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
        out
    };

    let out = run(with_hsm(&["init"]), "");
    assert_ok(&out);
    assert!(stdout(&out).contains("sensitive and not extractable"), "{}", stdout(&out));
    let base = sim.base_url(Environment::Demo);
    assert_ok(&run(
        with_hsm(&[
            "integration",
            "set",
            "--environment",
            "demo",
            "--application-key",
            fixture::APP_KEY,
            "--base-url",
            &base,
            "--allow-custom-base-url",
        ]),
        pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY,
    ));
    for (t, i) in [("acme", 0), ("beta", 1)] {
        assert_ok(&run(with_hsm(&["tenant", "add", "--tenant-id", t, "--environment", "demo"]), &fixture::sim_key(i)));
    }
    let attrs = token.attributes("pogo-kek");
    assert!(
        attrs.contains("Extractable(false)")
            && attrs.contains("Sensitive(true)")
            && attrs.contains("value_readable=false"),
        "{attrs}"
    );

    let (config, endpoint) = hsm_config(d, &token, "pogo-kek");
    mint_all(&token, &config, &endpoint, &pki, &["acme", "beta"]).await;
    printed.push_str(&serve_process::log(&config));
    // Restarted: nothing cached, so both mint with the HSM again.
    mint_all(&token, &config, &endpoint, &pki, &["acme", "beta"]).await;
    printed.push_str(&serve_process::log(&config));

    let canaries = canaries(2);
    let found = files_holding(d, &canaries);
    assert!(found.is_empty(), "{found:?}");
    for c in canaries.iter().map(String::as_str).chain([PIN]) {
        assert!(!printed.contains(c), "printed output holds {c}");
    }
    // The PIN is only in its own file (SoftHSM keeps no plaintext PIN in the token either).
    let found = files_holding(d, &[PIN.to_owned()]);
    assert_eq!(found, vec![format!("{} holds {PIN}", token.pin_file.display())]);
}

/// The `sealed_secrets` ciphertexts (not the wrapped DEKs), by row.
fn ciphertexts(db: &Path) -> Vec<(String, String, i64, Vec<u8>)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut s = c.prepare("SELECT purpose, owner, version, ciphertext FROM sealed_secrets ORDER BY 1, 2, 3").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
}

/// Must show 2: `rotate-kek` file → HSM → new HSM key → file, each step one transaction;
/// the ciphertexts are byte for byte the same after each, and every tenant opens (mints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_kek_file_to_hsm_to_a_new_hsm_key_and_back_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = Token::new(d);
    let tenants = ["t-0", "t-1", "t-2"];
    let (_sim, pki) = served_files(d, &tenants).await;
    let db = d.join(fixture::VAULT_DB);
    let dbs = db.to_str().unwrap().to_owned();
    let file_key = d.join(fixture::MASTER_KEY).to_str().unwrap().to_owned();
    let before = ciphertexts(&db);
    assert_eq!(before.len(), 3 + 3, "three client keys, the subscription key and the vault's two keys");

    let step = |current: Vec<String>, new: Vec<String>| {
        let mut args = vec!["--db".to_owned(), dbs.clone()];
        args.extend(current);
        args.push("rotate-kek".into());
        args.extend(new);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = token.run(&refs, "");
        assert_ok(&out);
        assert_eq!(ciphertexts(&db), before, "no ciphertext was touched");
        stdout(&out)
    };
    // File -> HSM key 1.
    step(vec!["--master-key-file".into(), file_key.clone()], token.options("new-", "kek-1"));
    let (config, endpoint) = hsm_config(d, &token, "kek-1");
    mint_all(&token, &config, &endpoint, &pki, &tenants).await;
    // HSM key 1 -> a new HSM key 2 on the same token.
    step(token.options("", "kek-1"), vec!["--new-pkcs11-key-label".into(), "kek-2".into()]);
    let (config, endpoint) = hsm_config(d, &token, "kek-2");
    mint_all(&token, &config, &endpoint, &pki, &tenants).await;
    // The old HSM key no longer opens the database: one clear line, nothing written.
    let snapshot = dump(&db);
    let mut args = vec!["--db".to_owned(), dbs.clone()];
    args.extend(token.options("", "kek-1"));
    args.extend(["tenant".into(), "list".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_with(&token.run(&refs, ""), &["wrong master key"]);
    assert_eq!(dump(&db), snapshot);
    // HSM key 2 -> a file again (the exit).
    let exit_key = d.join("exit.key");
    step(token.options("", "kek-2"), vec!["--generate-new-master-key-file".into(), exit_key.to_str().unwrap().into()]);
    let (config, endpoint) = serve_process::write_config(d, "metrics_listen = \"\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(fixture::MASTER_KEY, exit_key.to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    mint_all(&token, &config, &endpoint, &pki, &tenants).await;
}

fn run_with(token: &Token, base: &[String], extra: &[&str]) -> Output {
    let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    token.run(&args, "")
}

/// Must show 4: a wrong PIN, a missing module, a missing key label: one clear line each, a
/// non-zero exit, nothing written (no database for `init`; the database unchanged otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_missing_module_and_missing_label_are_one_clear_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = Token::new(d);
    let db = d.join("v.db");
    let dbs = db.to_str().unwrap().to_owned();
    let wrong_pin = d.join("wrong.pin");
    write_private(&wrong_pin, "000000\n");
    let with = |opts: Vec<String>| -> Vec<String> { [vec!["--db".to_owned(), dbs.clone()], opts].concat() };
    let replace = |opts: Vec<String>, flag: &str, value: &str| -> Vec<String> {
        let mut o = opts;
        let i = o.iter().position(|a| a == flag).unwrap();
        o[i + 1] = value.to_owned();
        o
    };
    let good = token.options("", "kek");
    for (opts, needles) in [
        (replace(good.clone(), "--pkcs11-pin-file", wrong_pin.to_str().unwrap()), vec!["refused the PIN", "wrong.pin"]),
        (
            replace(good.clone(), "--pkcs11-module", "/nonexistent/libnothing.so"),
            vec!["cannot load the PKCS#11 module", "/nonexistent/libnothing.so"],
        ),
        (replace(good.clone(), "--pkcs11-token-label", "no-such-token"), vec!["no token labelled \"no-such-token\""]),
    ] {
        let out = run_with(&token, &with(opts), &["init"]);
        assert_fails_with(&out, &needles.iter().map(|s| &**s).collect::<Vec<_>>());
        assert!(!db.exists(), "init wrote nothing");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains(PIN) && !err.contains("000000"), "{err}");
    }
    // A real vault, then opened with a label that does not exist, and with the wrong PIN.
    assert_ok(&run_with(&token, &with(good.clone()), &["init"]));
    let snapshot = dump(&db);
    let out = run_with(&token, &with(replace(good.clone(), "--pkcs11-key-label", "missing")), &["tenant", "list"]);
    assert_fails_with(&out, &["no AES key labelled \"missing\""]);
    let out = run_with(
        &token,
        &with(replace(good.clone(), "--pkcs11-pin-file", wrong_pin.to_str().unwrap())),
        &["tenant", "list"],
    );
    assert_fails_with(&out, &["refused the PIN"]);
    // `init` again on the same label: the key exists (and the database too).
    let other = d.join("w.db");
    let out = token.run(
        &[&["--db", other.to_str().unwrap()][..], &good.iter().map(String::as_str).collect::<Vec<_>>()[..], &["init"]]
            .concat(),
        "",
    );
    assert_fails_with(&out, &["already exists", "--existing-key"]);
    assert!(!other.exists());
    assert_eq!(dump(&db), snapshot, "nothing written");
    // An existing key that could be, or could have been, outside the HSM is refused.
    token.create_extractable_key("exportable");
    let fresh = d.join("x.db");
    let mut opts = vec!["--db".to_owned(), fresh.to_str().unwrap().to_owned()];
    opts.extend(replace(good.clone(), "--pkcs11-key-label", "exportable"));
    let out = run_with(&token, &opts, &["init", "--existing-key"]);
    assert!(!fresh.exists(), "nothing written");
    assert_fails_with(
        &out,
        &["refusing it as a master key", "CKA_EXTRACTABLE is true", "CKA_NEVER_EXTRACTABLE is false"],
    );
    // --existing-key uses it.
    let out = token.run(
        &[
            &["--db", other.to_str().unwrap()][..],
            &good.iter().map(String::as_str).collect::<Vec<_>>()[..],
            &["init", "--existing-key"],
        ]
        .concat(),
        "",
    );
    assert_ok(&out);
}

/// Must show 3: the HSM goes away mid run (its token directory moved away); cached tokens
/// keep flowing, cold mints fail `UNAVAILABLE` naming the HSM, health says so; it comes back
/// (the directory moved back) and the vault recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_that_goes_away_fails_cold_mints_keeps_cached_tokens_and_comes_back_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = Token::new(d);
    let (_sim, pki) = served_files(d, &["warm", "cold", "tampered"]).await;
    let db = d.join(fixture::VAULT_DB);
    rotate_file_to_hsm(&token, d, "kek");

    // One tenant's wrapped data key altered: under the HSM too, that is an integrity failure
    // (INTERNAL, alarmed), never mistaken for an outage.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut wrapped: Vec<u8> =
        conn.query_row("SELECT wrapped_dek FROM sealed_secrets WHERE owner = 'tampered'", [], |r| r.get(0)).unwrap();
    wrapped[20] ^= 1;
    conn.execute("UPDATE sealed_secrets SET wrapped_dek = ?1 WHERE owner = 'tampered'", [&wrapped]).unwrap();
    drop(conn);
    let (config, endpoint) = hsm_config(d, &token, "kek");
    let child = serve(&token, &config, &pki, &endpoint).await;
    let mut c = token_client(&endpoint, &pki).await;
    c.get_access_token(get("warm")).await.unwrap();
    let e = c.get_access_token(get("tampered")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    let ch = pogo_vault::client::connect(&endpoint, &pki.client_files("token-caller").unwrap(), Some("localhost"))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let key_health = |h: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest { service: "pogo_vault.MasterKey".into() })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(key_health(&mut health).await, serving, "an altered row is not an outage");
    let tenant_health = |h: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest { service: "pogo_vault.v1.TenantService".into() })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };

    // Away: the token's files are gone from where the module looks.
    let away = d.join("softhsm-tokens.away");
    std::fs::rename(&token.tokens, &away).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    // The first unwrap after the move already fails: its probe fails and so does the reconnect.
    let e = c.get_access_token(get("cold")).await.expect_err("a cold mint succeeded with the HSM away");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("HSM is unavailable"), "{}", e.message());
    // The cached token still flows.
    for _ in 0..5 {
        c.get_access_token(get("warm")).await.unwrap();
    }
    // A registration (it seals a key) fails closed too, and stores nothing.
    let ch =
        pogo_vault::client::connect(&endpoint, &pki.client_files("admin").unwrap(), Some("localhost")).await.unwrap();
    let mut admin = pb::tenant_service_client::TenantServiceClient::new(ch);
    let e = admin.register_client_key(fixture::register_unvalidated("new-one", 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("HSM is unavailable"), "{}", e.message());
    let e = admin.get_tenant(pb::GetTenantRequest { tenant_id: "new-one".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    while key_health(&mut health).await == serving {
        assert!(std::time::Instant::now() < deadline, "health never said the HSM is away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(tenant_health(&mut health).await, serving, "registrations need the master key");

    // Back: recovered without a restart (the monitor reconnects within a second or so).
    std::fs::rename(&away, &token.tokens).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while key_health(&mut health).await != serving {
        assert!(std::time::Instant::now() < deadline, "health never came back:\n{}", serve_process::log(&config));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.get_access_token(get("cold")).await.unwrap();
    let log = serve_process::log(&config);
    assert!(log.contains("HSM is unavailable") && log.contains("answers again"), "{log}");
    stop(child);
}

/// A measurement, not a check (run it with `cargo nextest run --run-ignored only -E
/// 'test(cold_mint_with_the_key_in_softhsm_against_a_key_file)' --no-capture`): cold mints
/// (nothing cached, so each unwraps its tenant's client key) with the master key in SoftHSM
/// against the same vault with a key file, alternating, in one run. Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that prints figures; run it on purpose"]
async fn cold_mint_with_the_key_in_softhsm_against_a_key_file() {
    const TENANTS: usize = 10;
    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = Token::new(d);
    let tenants: Vec<String> = (0..TENANTS).map(|i| format!("t-{i}")).collect();
    let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
    // Two vaults with the same tenants: `file/` keeps its key file, `hsm/` is rotated into
    // SoftHSM. Each has a simulator of its own, alike.
    let mut configs = Vec::new();
    let mut sims = Vec::new();
    for kind in ["file", "hsm"] {
        let sub = d.join(kind);
        std::fs::create_dir_all(&sub).unwrap();
        let (sim, pki) = served_files(&sub, &tenants).await;
        sims.push(sim);
        // The upstream budget out of the way (a burst as large as the round), so the figures
        // are the vault's: unwrap, Go's (simulated) token request, the audit record.
        let extra = "metrics_listen = \"\"\n\n[tokens]\nupstream_rate_per_second = 10\nupstream_burst = 10\n";
        let (config, endpoint) = serve_process::write_config(&sub, extra);
        if kind == "hsm" {
            rotate_file_to_hsm(&token, &sub, "bench-kek");
            let text = std::fs::read_to_string(&config).unwrap();
            let line = format!("master_key_file = \"{}\"\n", fixture::MASTER_KEY);
            std::fs::write(&config, text.replace(&line, &token.config_line("bench-kek"))).unwrap();
        }
        configs.push((kind, config, endpoint, pki));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (k, (_, config, endpoint, pki)) in configs.iter().enumerate() {
            let child = serve(&token, config, pki, endpoint).await;
            let mut c = token_client(endpoint, pki).await;
            for i in 0..TENANTS {
                let started = std::time::Instant::now();
                c.get_access_token(get(&format!("t-{i}"))).await.unwrap();
                times[k].push(started.elapsed().as_secs_f64() * 1000.0);
            }
            stop(child);
        }
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (p(0.5), p(0.9), v.iter().sum::<f64>() / v.len() as f64)
    };
    let (f50, f90, fmean) = stats(&mut times[0]);
    let (h50, h90, hmean) = stats(&mut times[1]);
    println!("cold mint, {} each, alternating rounds ({ROUNDS} x {TENANTS}):", times[0].len());
    println!("  key file : p50 {f50:.2} ms, p90 {f90:.2} ms, mean {fmean:.2} ms");
    println!("  SoftHSM  : p50 {h50:.2} ms, p90 {h90:.2} ms, mean {hmean:.2} ms");
    println!("  SoftHSM / key file: p50 {:.2}x, mean {:.2}x", h50 / f50, hmean / fmean);
}

/// A PIN the token refused is not tried again until the PIN file changes (many HSMs lock the
/// user PIN after a few failures): the vault waits, says why, and comes back when the file
/// holds the right PIN again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pin_is_not_retried_until_the_pin_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = Token::new(d);
    let (_sim, pki) = served_files(d, &["cold"]).await;
    rotate_file_to_hsm(&token, d, "kek");
    let (config, endpoint) = hsm_config(d, &token, "kek");
    let child = serve(&token, &config, &pki, &endpoint).await;
    let mut c = token_client(&endpoint, &pki).await;

    // The session goes (the token away for a moment) while the PIN file holds a wrong PIN.
    write_private(&token.pin_file, "999999\n");
    let away = d.join("softhsm-tokens.away");
    std::fs::rename(&token.tokens, &away).unwrap();
    assert_eq!(c.get_access_token(get("cold")).await.unwrap_err().code(), tonic::Code::Unavailable);
    std::fs::rename(&away, &token.tokens).unwrap();
    // Back, but the PIN is wrong: refused once, then not tried again.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !serve_process::log(&config).contains("not tried again until that file changes") {
        assert!(std::time::Instant::now() < deadline, "{}", serve_process::log(&config));
        let _ = c.get_access_token(get("cold")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = serve_process::log(&config);
    assert!(!log.contains("999999") && !log.contains(PIN));
    // The right PIN in the file: back without a restart.
    write_private(&token.pin_file, &format!("{PIN}\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while c.get_access_token(get("cold")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", serve_process::log(&config));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(child);
}
