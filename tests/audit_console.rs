//! Issue 22, the audit console: `pogo-vault audit console` against a real `serve` process,
//! driven in real headless Chromium through chromedriver (WebDriver). The table lists the
//! seeded events, a filter narrows it, the live view shows a token minted after the page
//! opened within 2 s, the verification panel says the log verifies; then the vault is
//! stopped, one event row of its audit database is edited, the vault is started again, and
//! the panel names the sequence where the chain breaks. Besides: the console refuses
//! requests without the login link, with a spent or wrong one, with a foreign Host header,
//! from a non-loopback address, and a non-loopback `--listen`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them when missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture::{self, key};
use common::serve_process;
use pogo_vault::domain::Environment;
use pogo_vault::proto::v1::token_service_client::TokenServiceClient;
use pogo_vault::tls::ClientTlsFiles;
use pogo_vault::vault::{NewTenant, UnauditedFixture};
use thirtyfour::prelude::*;

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pogo-vault audit console` as the auditor; returns it, its login link and its address.
fn start_console(
    endpoint: &str,
    files: &ClientTlsFiles,
    dir: &Path,
    extra: &[&str],
) -> (Killed, BufReader<ChildStdout>, String) {
    let log = std::fs::File::create(dir.join("console.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["audit", "console", "--endpoint", endpoint, "--server-name", "localhost"])
        .args(["--ca", files.ca.to_str().unwrap(), "--cert", files.cert.to_str().unwrap()])
        .args(["--key", files.key.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let child = Killed(child);
    let mut line = String::new();
    for _ in 0..4 {
        line.clear();
        out.read_line(&mut line).unwrap();
        if let Some(at) = line.find("http://") {
            let url = line[at..].trim().to_owned();
            assert!(url.contains("/login?token="), "{url}");
            return (child, out, url);
        }
    }
    panic!("the console printed no login link: {line:?} {}", std::fs::read_to_string(dir.join("console.log")).unwrap());
}

/// The console's address (`127.0.0.1:PORT`) in its login link.
fn console_addr(login: &str) -> SocketAddr {
    login.trim_start_matches("http://").split('/').next().unwrap().parse().unwrap()
}

/// One HTTP/1.1 request over a plain socket (the Host header and the source address are
/// the test's to choose); returns the status and the whole answer.
async fn raw_http(to: SocketAddr, from: Option<SocketAddr>, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(from) = from {
        sock.bind(from).unwrap();
    }
    let mut s = sock.connect(to).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    // A streamed answer comes in chunks: give back the head and the body joined.
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, answer);
    }
    let (mut rest, mut joined) = (body, String::new());
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        joined.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    (status, format!("{head}\r\n\r\n{joined}"))
}

fn get(path: &str, host: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}Connection: close\r\n\r\n")
}

/// The `name=value` of the session cookie an answer sets.
fn set_cookie(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// This machine's first non-loopback IPv4 address, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

/// A vault served by a `serve` process with three tenants, and its auditor's files.
struct Served {
    dir: tempfile::TempDir,
    _sim: pogo_vault::sim::Sim,
    config: PathBuf,
    endpoint: String,
    pki: pogo_vault::tls::DevPki,
    server: Option<Killed>,
}

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

impl Served {
    async fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let sim = fixture::start_sim(1000).await;
        fixture::add_sim_clients(&sim, TENANTS.len());
        let (pki, vault) = fixture::serve_files(dir.path(), &sim, &fixture::policy_text(""));
        for (i, t) in TENANTS.iter().enumerate() {
            vault
                .add_tenant(&NewTenant::new(t.parse().unwrap(), Environment::Demo), &key(i), &UnauditedFixture)
                .unwrap();
        }
        let public_key = pogo_vault::audit::encode_public_key(&fixture::audit_verifying_key(&vault));
        std::fs::write(dir.path().join("audit.pub"), public_key).unwrap();
        drop(vault);
        // No metrics listener: its fixed default port would collide with other tests' servers.
        let (config, endpoint) = serve_process::write_config(dir.path(), "metrics_listen = \"\"\n");
        let mut s = Served { dir, _sim: sim, config, endpoint, pki, server: None };
        s.up().await;
        s
    }

    fn files(&self, who: &str) -> ClientTlsFiles {
        self.pki.client_files(who).unwrap()
    }

    async fn up(&mut self) {
        self.server = Some(Killed(serve_process::start(&self.config, "warn")));
        let files = self.files("token-caller");
        serve_process::wait_ready(&self.endpoint, &files, &self.config, 300, Duration::from_millis(50)).await;
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    fn down(&mut self) {
        let mut k = self.server.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &k.0.id().to_string()]).status().unwrap();
        assert!(status.success());
        let code = k.0.wait().unwrap();
        assert!(code.success(), "serve stopped with {code}: {}", serve_process::log(&self.config));
    }

    async fn token(&self, who: &str, tenant: &str) -> Result<(), tonic::Status> {
        let ch = pogo_vault::client::connect(&self.endpoint, &self.files(who), Some("localhost")).await.unwrap();
        TokenServiceClient::new(ch).get_access_token(fixture::token_request(tenant)).await.map(|_| ())
    }

    fn audit_db(&self) -> PathBuf {
        self.dir.path().join("vault-audit.db")
    }
}

async fn chrome(dir: &Path) -> (Killed, WebDriver) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
    let driver = Killed(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) is installed"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // thirtyfour speaks to chromedriver with reqwest, which wants a TLS provider chosen: ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut caps = DesiredCapabilities::chrome();
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"]
    {
        caps.add_arg(arg).unwrap();
    }
    caps.add_arg(&format!("--user-data-dir={}", dir.join("chrome-profile").display())).unwrap();
    let wd = WebDriver::new(format!("http://127.0.0.1:{port}"), caps).await.expect("a Chromium session");
    (driver, wd)
}

/// Waits up to `limit` for `ok` on the page's element `css`; returns its text and how long
/// it took.
async fn wait_for(wd: &WebDriver, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> (String, Duration) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        if let Ok(e) = wd.find(By::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return (t, start.elapsed());
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} did not show what was expected within {limit:?}; it shows: {last:?}");
}

/// The rows of table `css` as their cells' texts.
async fn rows(wd: &WebDriver, css: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for tr in wd.find_all(By::Css(format!("{css} tbody tr"))).await.unwrap() {
        let mut cells = Vec::new();
        for td in tr.find_all(By::Css("td")).await.unwrap() {
            cells.push(td.text().await.unwrap());
        }
        out.push(cells);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_lists_filters_follows_and_verifies_then_names_the_broken_sequence() {
    let mut vault = Served::start().await;
    let d = vault.dir.path().to_owned();
    // Seed: the token caller reaches every tenant; the admin, without the token role, is
    // refused one.
    for t in TENANTS {
        vault.token("token-caller", t).await.unwrap();
    }
    vault.token("token-caller", "acme").await.unwrap();
    assert_eq!(vault.token("admin", "acme").await.unwrap_err().code(), tonic::Code::PermissionDenied);

    let pinned = d.join("audit.pub");
    let (mut console, _out, login) =
        start_console(&vault.endpoint, &vault.files("auditor"), &d, &["--public-key", pinned.to_str().unwrap()]);
    let base = format!("http://{}", console_addr(&login));
    let (_driver, wd) = chrome(&d).await;

    // The login link opens the event table.
    wd.goto(&login).await.unwrap();
    assert_eq!(wd.current_url().await.unwrap().path(), "/");
    let all = rows(&wd, "#events").await;
    let minted: Vec<&Vec<String>> = all.iter().filter(|r| r[3] == "token_minted").collect();
    assert_eq!(minted.len(), 4, "four tokens handed out: {all:?}");
    for t in TENANTS {
        assert!(minted.iter().any(|r| r[4] == t), "{t} in {all:?}");
    }
    assert!(
        all.iter().any(|r| r[3] == "token_denied" && r[5] == "denied" && r[2].ends_with("/service/admin")),
        "the admin's refusal: {all:?}"
    );

    // A filter narrows it.
    wd.find(By::Id("tenant")).await.unwrap().send_keys("globex").await.unwrap();
    wd.find(By::Id("apply")).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wd.current_url().await.unwrap().query().unwrap_or_default().contains("tenant=globex") {
        assert!(Instant::now() < deadline, "the filter form did not submit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let narrowed = rows(&wd, "#events").await;
    assert!(!narrowed.is_empty() && narrowed.len() < all.len(), "{narrowed:?}");
    assert!(narrowed.iter().all(|r| r[4] == "globex"), "{narrowed:?}");
    let globex_seq: i64 = narrowed.iter().find(|r| r[3] == "token_minted").unwrap()[0].parse().unwrap();

    // The tenant view: who touched globex's key.
    wd.goto(&format!("{base}/tenant?id=globex")).await.unwrap();
    let summary = rows(&wd, "#tenant-summary").await;
    assert!(
        summary.iter().any(|r| r[0].ends_with("/service/token-caller") && r[1] == "token_minted" && r[3] == "1"),
        "{summary:?}"
    );

    // The caller view: which tenants the token caller reached, how often.
    wd.goto(&format!("{base}/caller?id=spiffe%3A%2F%2Ftest.pogo%2Fservice%2Ftoken-caller")).await.unwrap();
    let reached = rows(&wd, "#caller-tenants").await;
    let tokens = |t: &str| reached.iter().find(|r| r[0] == t).map(|r| r[1].clone());
    assert_eq!(
        (tokens("acme"), tokens("globex"), tokens("initech")),
        (Some("2".into()), Some("1".into()), Some("1".into())),
        "{reached:?}"
    );

    // The charts: tokens handed out and denials of the last 24 hours, per caller.
    wd.goto(&format!("{base}/charts")).await.unwrap();
    let caption = |id: &'static str| {
        let wd = &wd;
        async move { wd.find(By::Css(format!("#{id} figcaption"))).await.unwrap().text().await.unwrap() }
    };
    assert_eq!(caption("tokens-chart").await, "Tokens handed out: 4 in all");
    assert_eq!(caption("denials-chart").await, "Denials (every action): 1 in all");
    let legend = wd.find(By::Css("#denials-chart ul.legend")).await.unwrap().text().await.unwrap();
    assert_eq!(legend, "spiffe://test.pogo/service/admin (1)");

    // The live view shows a token minted after the page opened, within 2 s.
    wd.goto(&format!("{base}/live")).await.unwrap();
    wait_for(&wd, "#live-state", Duration::from_secs(10), |t| t.starts_with("Following the log")).await;
    let before = rows(&wd, "#live").await.iter().map(|r| r[0].parse::<i64>().unwrap()).max().unwrap_or(0);
    vault.token("token-caller", "initech").await.unwrap();
    let minted_at = Instant::now();
    let (_, _) = wait_for(&wd, "#live tbody tr:first-child", Duration::from_secs(2), |t| {
        t.contains("token_minted") && t.contains("initech")
    })
    .await;
    let shown_after = minted_at.elapsed();
    let newest = rows(&wd, "#live").await;
    assert!(newest[0][0].parse::<i64>().unwrap() > before, "{newest:?}");
    assert!(shown_after < Duration::from_secs(2), "shown {shown_after:?} after the token was minted");
    println!("live view: the new token's record shown {shown_after:?} after the token was handed out");

    // The verification panel: the log verifies.
    wd.goto(&format!("{base}/verify")).await.unwrap();
    assert_eq!(wd.find(By::Id("verdict")).await.unwrap().text().await.unwrap(), "Not verified from this console yet.");
    wd.find(By::Id("verify-button")).await.unwrap().click().await.unwrap();
    let (verdict, _) = wait_for(&wd, "#verdict", Duration::from_secs(10), |t| t.starts_with("The log")).await;
    assert!(verdict.starts_with("The log verifies"), "{verdict}");
    let notes = wd.find(By::Id("verification")).await.unwrap().text().await.unwrap();
    assert!(!notes.contains("first signing key the log names"), "verified from the pinned key: {notes}");
    let checkpoint = wd.find(By::Id("checkpoint")).await.unwrap().text().await.unwrap();
    assert!(checkpoint.starts_with("sequence "), "{checkpoint}");
    let first = wd.find(By::Id("kept")).await.unwrap().text().await.unwrap();
    assert!(first.starts_with("First run from this console"), "{first}");
    // The second run hands the first run's checkpoint back: nothing up to it went missing.
    let kept_seq: i64 = verdict.split("through sequence ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    wd.find(By::Id("verify-button")).await.unwrap().click().await.unwrap();
    let (kept, _) = wait_for(&wd, "#kept", Duration::from_secs(10), |t| t.starts_with("No event up to")).await;
    assert!(kept.starts_with(&format!("No event up to sequence {kept_seq} was removed")), "{kept}");

    // The screenshot for the README: the event table, filtered to tokens handed out.
    wd.goto(&format!("{base}/?action=token_minted")).await.unwrap();
    let png = wd.screenshot_as_png().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-console.png");
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());

    // Stop the vault with the live view open, edit one event row, start it again: the
    // live view comes back on its own, and the panel names the edited sequence. The edit
    // is markup, as a hostile value in the log would be: the page shows it as text.
    wd.goto(&format!("{base}/live")).await.unwrap();
    wait_for(&wd, "#live-state", Duration::from_secs(10), |t| t.starts_with("Following the log")).await;
    let before_stop = rows(&wd, "#live").await.iter().map(|r| r[0].parse::<i64>().unwrap()).max().unwrap();
    vault.down();
    wait_for(&wd, "#live-state", Duration::from_secs(10), |t| !t.starts_with("Following the log")).await;
    let db = common::rusqlite_open(&vault.audit_db());
    let changed = db
        .execute(
            "UPDATE events SET detail = detail || ' <img id=pwned src=x onerror=\"document.title=1\">' WHERE sequence = ?1",
            [globex_seq],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    vault.up().await;
    vault.token("token-caller", "acme").await.unwrap();
    let minted_at = Instant::now();
    loop {
        let live = rows(&wd, "#live").await;
        let seq = |r: &Vec<String>| r[0].parse::<i64>().unwrap();
        if live.iter().any(|r| seq(r) > before_stop && r[3] == "token_minted" && r[4] == "acme") {
            // In sequence order, newest first, each once.
            assert!(live.windows(2).all(|w| seq(&w[0]) > seq(&w[1])), "{live:?}");
            break;
        }
        assert!(minted_at.elapsed() < Duration::from_secs(15), "the live view did not come back: {live:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("live view: back {:?} after the restarted vault's first token", minted_at.elapsed());
    wd.goto(&format!("{base}/verify")).await.unwrap();
    wd.find(By::Id("verify-button")).await.unwrap().click().await.unwrap();
    let (verdict, _) =
        wait_for(&wd, "#verdict", Duration::from_secs(10), |t| t.contains("NOT") || t.contains("could not")).await;
    assert!(
        verdict.contains(&format!("the chain breaks at sequence {globex_seq}.")),
        "the panel names sequence {globex_seq}: {verdict}"
    );
    println!("after the edit: {verdict}");
    wd.goto(&format!("{base}/?tenant=globex")).await.unwrap();
    let edited = rows(&wd, "#events").await;
    assert!(edited.iter().any(|r| r[6].ends_with("<img id=pwned src=x onerror=\"document.title=1\">")), "{edited:?}");
    assert!(wd.find(By::Id("pwned")).await.is_err(), "the log's markup became no element");
    assert_ne!(wd.title().await.unwrap(), "1");

    // Nothing the pages showed holds a secret: the client keys and the simulator's
    // subscription key never appear.
    let page = wd.source().await.unwrap();
    for i in 0..TENANTS.len() {
        common::assert_no_leak("the event table", page.as_bytes(), &fixture::sim_key(i));
    }

    // Ctrl-C stops the console even with a live view open (its stream is ended, not
    // waited for).
    wd.goto(&format!("{base}/live")).await.unwrap();
    wait_for(&wd, "#live-state", Duration::from_secs(10), |t| t.starts_with("Following the log")).await;
    assert!(Command::new("kill").args(["-INT", &console.0.id().to_string()]).status().unwrap().success());
    let asked = Instant::now();
    let status = loop {
        if let Some(s) = console.0.try_wait().unwrap() {
            break s;
        }
        assert!(asked.elapsed() < Duration::from_secs(6), "the console did not stop on Ctrl-C with a live view open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    println!("console stopped {:?} after Ctrl-C with a live view open", asked.elapsed());
    wd.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_without_the_login_link_from_elsewhere_and_off_loopback() {
    let vault = Served::start().await;
    let d = vault.dir.path().to_owned();
    let auditor = vault.files("auditor");
    vault.token("token-caller", "acme").await.unwrap();
    vault.token("token-caller", "globex").await.unwrap();

    // A non-loopback --listen is refused before anything is bound.
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args([
            "audit",
            "console",
            "--listen",
            "0.0.0.0:0",
            "--endpoint",
            &vault.endpoint,
            "--server-name",
            "localhost",
        ])
        .args(["--ca", auditor.ca.to_str().unwrap(), "--cert", auditor.cert.to_str().unwrap()])
        .args(["--key", auditor.key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen") && err.contains("not a loopback address"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("login?token="), "no login link printed");

    // So is a public key that is not one, naming the option.
    std::fs::write(d.join("not-a-key.pub"), "ed25519:nope").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pogo-vault"))
        .args(["audit", "console", "--public-key", d.join("not-a-key.pub").to_str().unwrap()])
        .args(["--endpoint", &vault.endpoint, "--server-name", "localhost"])
        .args(["--ca", auditor.ca.to_str().unwrap(), "--cert", auditor.cert.to_str().unwrap()])
        .args(["--key", auditor.key.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--public-key"), "{err}");

    // A console whose pinned key is not the vault's: its verification fails.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    std::fs::write(d.join("stranger.pub"), pogo_vault::audit::encode_public_key(&stranger)).unwrap();
    let pinned = d.join("stranger.pub");
    let (_wrong, _wrong_out, wrong_login) =
        start_console(&vault.endpoint, &auditor, &d, &["--public-key", pinned.to_str().unwrap()]);
    let (waddr, whost) = (console_addr(&wrong_login), console_addr(&wrong_login).to_string());
    let (_, answer) =
        raw_http(waddr, None, &get(&wrong_login[wrong_login.find("/login").unwrap()..], &whost, None)).await;
    let wcookie = set_cookie(&answer);
    let (_, panel) = raw_http(waddr, None, &get("/verify", &whost, Some(&wcookie))).await;
    let csrf = panel.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let post = format!(
        "POST /verify HTTP/1.1\r\nHost: {whost}\r\nCookie: {wcookie}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\ncsrf={csrf}",
        5 + csrf.len()
    );
    let (status, _) = raw_http(waddr, None, &post).await;
    assert_eq!(status, 303, "the right CSRF token runs it");
    let (_, panel) = raw_http(waddr, None, &get("/verify", &whost, Some(&wcookie))).await;
    assert!(panel.contains("The log does NOT verify"), "a key that is not the vault's fails: {panel}");

    let (_console, _out, login) = start_console(&vault.endpoint, &auditor, &d, &[]);
    let addr = console_addr(&login);
    let host = addr.to_string();
    let path_and_token = &login[login.find("/login").unwrap()..];

    // No login token, and a wrong one: refused.
    let (status, body) = raw_http(addr, None, &get("/", &host, None)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Open the login link") && !body.contains("<table"), "{body}");
    let (status, _) = raw_http(addr, None, &get("/login?token=00", &host, None)).await;
    assert_eq!(status, 403);
    let guess = format!("pogo_audit_console_{}=guess", addr.port());
    let (status, _) = raw_http(addr, None, &get("/export.csv", &host, Some(&guess))).await;
    assert_eq!(status, 401);

    // A foreign Host header (DNS rebinding) is refused even with the right token, which
    // stays unspent.
    let (status, body) = raw_http(addr, None, &get(path_and_token, "vault.attacker.example", None)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Host header"), "{body}");

    // From a non-loopback address of this machine: refused, token unspent.
    match non_loopback_ip() {
        Some(ip) => {
            let (status, body) = raw_http(addr, Some(SocketAddr::new(ip, 0)), &get(path_and_token, &host, None)).await;
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("only on this machine"), "{body}");
        }
        None => {
            println!("this machine has no non-loopback IPv4 address: the peer check is covered by guard.rs's unit test")
        }
    }

    // The login link works once: a session cookie, then the table.
    let (status, answer) = raw_http(addr, None, &get(path_and_token, &host, None)).await;
    assert_eq!(status, 303, "{answer}");
    let cookie = set_cookie(&answer);
    assert!(answer.to_ascii_lowercase().contains("httponly") && answer.contains("SameSite=Strict"), "{answer}");
    let (status, _) = raw_http(addr, None, &get(path_and_token, &host, None)).await;
    assert_eq!(status, 403, "spent");
    let (status, page) = raw_http(addr, None, &get("/", &host, Some(&cookie))).await;
    assert_eq!(status, 200);
    assert!(page.contains("<table id=\"events\""), "{page}");
    let lower = page.to_ascii_lowercase();
    assert!(lower.contains("content-security-policy: default-src 'none'") && lower.contains("x-frame-options: deny"));

    // Without JavaScript (this client runs none), the filter is a plain GET form.
    let (status, acme) = raw_http(addr, None, &get("/?tenant=acme&action=token_minted", &host, Some(&cookie))).await;
    assert_eq!(status, 200);
    assert_eq!(acme.matches("<td>token_minted</td>").count(), 1, "{acme}");
    assert!(acme.contains(">acme</a>") && !acme.contains(">globex</a>"), "{acme}");

    // A page on another port of 127.0.0.1 is "same site" to a browser, which would send
    // the cookie: the console refuses what the browser marks so.
    let same_site = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nSec-Fetch-Site: same-site\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_http(addr, None, &same_site).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not requests from another site or port"), "{body}");

    // The verification button needs the page's CSRF token, even with the cookie.
    let post = format!(
        "POST /verify HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 9\r\nConnection: close\r\n\r\ncsrf=nope"
    );
    let (status, body) = raw_http(addr, None, &post).await;
    assert_eq!(status, 403, "{body}");

    // Exports of the filter, as `audit export` writes them: every row is of the filter.
    let (status, csv) =
        raw_http(addr, None, &get("/export.csv?action=token_minted&tenant=acme", &host, Some(&cookie))).await;
    assert_eq!(status, 200);
    let body = &csv[csv.find("sequence,time,caller,caller_serial,action").expect(&csv)..];
    let rows: Vec<&str> = body.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{body}");
    assert!(rows.iter().all(|r| r.split(',').nth(4) == Some("token_minted") && r.split(',').nth(5) == Some("acme")));
    let (status, jsonl) = raw_http(addr, None, &get("/export.jsonl?outcome=ok&caller=x", &host, Some(&cookie))).await;
    assert_eq!(status, 200);
    assert!(!jsonl.contains("\"sequence\""), "no event of caller x: {jsonl}");
    let (status, jsonl) = raw_http(addr, None, &get("/export.jsonl?tenant=globex", &host, Some(&cookie))).await;
    assert_eq!(status, 200);
    let events: Vec<serde_json::Value> =
        jsonl.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!events.is_empty() && events.iter().all(|e| e["tenant_id"] == "globex"), "{jsonl}");
    let (status, body) = raw_http(addr, None, &get("/export.csv?since=yesterday", &host, Some(&cookie))).await;
    assert_eq!(status, 400);
    assert!(body.contains("since: not a time"), "{body}");
}
