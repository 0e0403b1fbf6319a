//! Who may use the console: the auditor who started it, from this machine.
//!
//! - **Loopback only.** The console binds a loopback address (anything else is refused
//!   before binding), and every request's peer must be a loopback address too.
//! - **The Host header names the console** (`127.0.0.1:PORT`, `localhost:PORT` or
//!   `[::1]:PORT`): a page elsewhere that points a host name of its own at 127.0.0.1 (DNS
//!   rebinding) is refused, so no other site reads the log through the auditor's browser.
//! - **A one-time login token.** The console prints `http://127.0.0.1:PORT/login?token=T`
//!   on the auditor's terminal (not in its own argv, a file or a log). The first request
//!   with it within [`LOGIN_LIFETIME`] gets a session cookie (`HttpOnly`,
//!   `SameSite=Strict`, named with the port so two consoles do not overwrite each other's)
//!   and the token is spent; every other page needs that cookie. Tokens and session ids
//!   are 32 random bytes, kept only as SHA-256 digests and compared in constant time. A
//!   session ends after [`SESSION_LIFETIME`]. Opening the link *from a command line*
//!   (`xdg-open URL`) puts it in that program's argv, which other local users can read
//!   unless /proc is mounted `hidepid`: whoever spends it first wins, and the auditor then
//!   sees "already used" (the refusal says what that means).
//! - **Only the console's own pages may ask it.** Cookies are scoped by host, not port, so
//!   a page another user serves on 127.0.0.1 is "same site" and the browser would send
//!   the cookie: requests a browser marks `Sec-Fetch-Site: same-site` or `cross-site` are
//!   refused, and the one form that acts (the verification button) carries a CSRF token
//!   bound to the session. What this cannot stop: the browser also *sends* the cookie to
//!   such a server when the auditor visits it, and its owner can then replay it from this
//!   machine (README: do not browse other users' local servers while the console runs).
//! - Every response forbids framing, caching, referrers, cross-origin reads and any
//!   script, style or connection not from the console itself (CSP).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a session lasts after the login link was opened.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long the login link works (once) after the console started.
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// The session cookie's name, before the port.
pub const COOKIE: &str = "pogo_audit_console";

/// The security headers of every response.
pub const HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not on this machine.
    NotLoopback,
    /// The Host header is not the console's own address.
    WrongHost,
    /// A browser says another site's page (or a page on another port) sent the request.
    OtherSite,
    /// No valid session (no cookie, an unknown or expired one).
    NoSession,
    /// The login token is wrong or was already used.
    BadLogin,
    /// A form without this session's CSRF token.
    BadCsrf,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotLoopback => "The audit console answers only on this machine (loopback).",
            Refusal::WrongHost => "This address is not the audit console's (the Host header does not match).",
            Refusal::OtherSite => {
                "The audit console answers only its own pages, not requests from another site or port."
            }
            Refusal::NoSession => "Open the login link the console printed when it started.",
            Refusal::BadLogin => {
                "This login link is wrong, expired (it works once, for 10 minutes) or was already used: restart the \
                 console for a new one. If you did not open it yourself, someone else on this machine did: stop the \
                 console."
            }
            Refusal::BadCsrf => "This form did not come from the console's own page: reload the page and try again.",
        }
    }
}

type Digest32 = [u8; 32];

fn digest(s: &str) -> Digest32 {
    Sha256::digest(s.as_bytes()).into()
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    // getrandom fails only without an OS random source, where nothing here can be safe.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut b).expect("the OS random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A session: its CSRF token and when it ends.
/// The CSRF token is a credential of the session: zeroized when the session goes.
#[derive(Clone)]
pub struct Session {
    pub csrf: zeroize::Zeroizing<String>,
    ends: Instant,
}

/// The console's doors: its address, the login token until it is spent, the sessions.
pub struct Access {
    hosts: Vec<String>,
    cookie_name: String,
    /// The login token's digest and when it stops working; `None` once spent.
    login: Mutex<Option<(Digest32, Instant)>>,
    sessions: Mutex<HashMap<Digest32, Session>>,
}

impl Access {
    /// For a console bound at `addr` (a loopback address): returns the access and the
    /// login token to print.
    pub fn new(addr: SocketAddr) -> (Access, String) {
        let port = addr.port();
        let hosts = if addr.is_ipv6() {
            vec![format!("[::1]:{port}"), format!("localhost:{port}")]
        } else {
            vec![format!("{}:{port}", addr.ip()), format!("localhost:{port}")]
        };
        let token = random_hex();
        let access = Access {
            hosts,
            cookie_name: format!("{COOKIE}_{port}"),
            login: Mutex::new(Some((digest(&token), Instant::now() + LOGIN_LIFETIME))),
            sessions: Mutex::new(HashMap::new()),
        };
        (access, token)
    }

    /// The first check of every request: the peer is on this machine, the Host header
    /// names the console, and no browser says another site's page sent it
    /// (`Sec-Fetch-Site`; absent from non-browser clients, `none` for a link opened from
    /// outside a page).
    pub fn admit(&self, peer: SocketAddr, host: Option<&str>, fetch_site: Option<&str>) -> Result<(), Refusal> {
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            ip => ip,
        };
        if !ip.is_loopback() {
            return Err(Refusal::NotLoopback);
        }
        match host {
            Some(h) if self.hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h)) => {}
            _ => return Err(Refusal::WrongHost),
        }
        match fetch_site {
            None | Some("same-origin" | "none") => Ok(()),
            Some(_) => Err(Refusal::OtherSite),
        }
    }

    /// Spends the login token: a new session id (for the cookie) when `token` is the one
    /// printed and not yet used.
    pub fn log_in(&self, token: &str) -> Result<String, Refusal> {
        let mut login = self.login.lock().unwrap_or_else(|p| p.into_inner());
        let Some((expected, until)) = *login else { return Err(Refusal::BadLogin) };
        if !bool::from(expected.ct_eq(&digest(token))) || Instant::now() > until {
            return Err(Refusal::BadLogin);
        }
        *login = None;
        let id = random_hex();
        let session = Session { csrf: zeroize::Zeroizing::new(random_hex()), ends: Instant::now() + SESSION_LIFETIME };
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(digest(&id), session);
        Ok(id)
    }

    /// The session of a `Cookie` header, if it holds a live one.
    pub fn session(&self, cookie_header: Option<&str>) -> Result<Session, Refusal> {
        let id = cookie_header
            .into_iter()
            .flat_map(|h| h.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == self.cookie_name)
            .map(|(_, v)| v)
            .ok_or(Refusal::NoSession)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.ends > now);
        // The map is keyed by the digest of a 256-bit random id: finding it leaks nothing
        // usable about other ids.
        sessions.get(&digest(id)).cloned().ok_or(Refusal::NoSession)
    }

    /// The `Set-Cookie` value for a new session.
    pub fn cookie(&self, id: &str) -> String {
        format!("{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", self.cookie_name, SESSION_LIFETIME.as_secs())
    }
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, given: &str) -> Result<(), Refusal> {
        if given.len() == self.csrf.len() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::BadCsrf)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn access() -> (Access, String) {
        Access::new("127.0.0.1:4711".parse().unwrap())
    }

    #[test]
    fn only_loopback_peers_naming_the_console_get_in() {
        let (a, _) = access();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let host = Some("127.0.0.1:4711");
        assert_eq!(a.admit(local, host, None), Ok(()));
        assert_eq!(a.admit(local, Some("LOCALHOST:4711"), Some("same-origin")), Ok(()));
        assert_eq!(a.admit(local, host, Some("none")), Ok(()));
        assert_eq!(a.admit("[::ffff:127.0.0.1]:5000".parse().unwrap(), host, None), Ok(()));
        assert_eq!(a.admit("10.1.2.3:5000".parse().unwrap(), host, None), Err(Refusal::NotLoopback));
        assert_eq!(a.admit("[2001:db8::1]:5000".parse().unwrap(), host, None), Err(Refusal::NotLoopback));
        assert_eq!(a.admit(local, Some("evil.example:4711"), None), Err(Refusal::WrongHost));
        assert_eq!(a.admit(local, Some("127.0.0.1:4712"), None), Err(Refusal::WrongHost));
        assert_eq!(a.admit(local, None, None), Err(Refusal::WrongHost));
        assert_eq!(a.admit(local, host, Some("same-site")), Err(Refusal::OtherSite), "a page on another port");
        assert_eq!(a.admit(local, host, Some("cross-site")), Err(Refusal::OtherSite));
    }

    #[test]
    fn the_login_token_works_once_and_the_session_needs_its_cookie() {
        let (a, token) = access();
        assert_eq!(a.log_in("0".repeat(64).as_str()).err(), Some(Refusal::BadLogin));
        let id = a.log_in(&token).unwrap();
        assert_eq!(a.log_in(&token).err(), Some(Refusal::BadLogin), "spent");
        let cookie = a.cookie(&id);
        assert!(cookie.starts_with(&format!("{COOKIE}_4711={id};")), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert_eq!(
            a.session(Some(&format!("{COOKIE}_4712={id}"))).err(),
            Some(Refusal::NoSession),
            "another console's"
        );
        let s = a.session(Some(&format!("other=1; {COOKIE}_4711={id}"))).unwrap();
        assert!(s.csrf_ok(&s.csrf).is_ok());
        assert_eq!(s.csrf_ok("x").err(), Some(Refusal::BadCsrf));
        assert_eq!(a.session(Some(&format!("{COOKIE}_4711={token}"))).err(), Some(Refusal::NoSession));
        assert_eq!(a.session(None).err(), Some(Refusal::NoSession));
        assert_ne!(id, token);
    }
}
