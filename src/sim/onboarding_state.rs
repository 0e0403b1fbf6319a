//! Onboarding's part of the simulator state: the redirect-URI whitelist, the open sessions
//! (each a `TemporaryUrl`), the grants onboarding tokens buy, and what the knobs set for the
//! simulated approving user. The endpoints that use it are in `onboarding`; the knobs are
//! methods of [`Sim`](super::Sim).
//!
//! Redirect URIs compare as Go compares them: scheme, host, port and path, the query
//! ignored; every loopback URI passes too while `SimConfig::loopback_redirects` is on.
//!
//! Invariant: grants hold client keys and are keyed by tokens, so `OnboardingState`'s
//! `Debug` prints counts only.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use url::Url;

use super::types::SimClient;
use crate::domain::Environment;

/// How long a `TemporaryUrl` stays valid.
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Default lifetime of an onboarding token (Go does not document it; go-api.md).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// Onboarding's part of the simulator state.
pub(super) struct OnboardingState {
    /// Whitelisted redirect URIs (query and fragment dropped).
    redirects: Vec<(Environment, Url)>,
    /// Every loopback redirect URI is accepted too (`SimConfig::loopback_redirects`).
    pub(super) loopback: bool,
    /// Client ids the simulated user can reach, per environment; absent means all.
    pub(super) user_clients: HashMap<Environment, HashSet<String>>,
    /// The outcome of the next approval, if a test chose one.
    pub(super) next_status: Option<String>,
    pub(super) token_ttl: Duration,
    pub(super) sessions: HashMap<String, Session>,
    pub(super) grants: HashMap<String, Grant>,
}

impl Default for OnboardingState {
    fn default() -> Self {
        Self {
            redirects: Vec::new(),
            loopback: false,
            user_clients: HashMap::new(),
            next_status: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            sessions: HashMap::new(),
            grants: HashMap::new(),
        }
    }
}

impl fmt::Debug for OnboardingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Grants hold client keys and are keyed by tokens: counts only.
        f.debug_struct("OnboardingState")
            .field("redirects", &self.redirects.len())
            .field("sessions", &self.sessions.len())
            .field("grants", &self.grants.len())
            .finish_non_exhaustive()
    }
}

impl OnboardingState {
    /// Whitelists `uri` for `env`: an absolute http(s) URL with a host.
    pub(super) fn allow_redirect(&mut self, env: Environment, uri: &str) -> io::Result<()> {
        let url = redirect_url(uri).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a redirect URI must be an absolute http(s) URL with a host")
        })?;
        self.redirects.push((env, comparable(url)));
        Ok(())
    }

    /// Whether `uri` matches a whitelisted URI of `env` by scheme, host, port and path, or
    /// is a loopback URI while those are accepted.
    pub(super) fn redirect_allowed(&self, env: Environment, uri: &Url) -> bool {
        if self.loopback && is_loopback(uri) {
            return true;
        }
        let uri = comparable(uri.clone());
        self.redirects.iter().any(|(e, allowed)| *e == env && *allowed == uri)
    }
}

/// An onboarding session opened by Initiate.
pub(super) struct Session {
    pub(super) environment: Environment,
    /// As given, query included.
    pub(super) redirect_uri: Url,
    pub(super) organization_no: Option<String>,
    pub(super) created: Instant,
    /// Set by [`Sim::expire_onboarding_sessions`](super::Sim::expire_onboarding_sessions).
    pub(super) expired: bool,
}

impl Session {
    pub(super) fn valid_at(&self, now: Instant) -> bool {
        !self.expired && now.saturating_duration_since(self.created) < SESSION_LIFETIME
    }
}

/// What an onboarding token buys: the approved clients and their new keys.
pub(super) struct Grant {
    pub(super) environment: Environment,
    /// `(client key, client)` per approved client.
    pub(super) clients: Vec<(String, SimClient)>,
    pub(super) expires_at: Instant,
}

/// An absolute http(s) URL with a host, without credentials.
pub(super) fn redirect_url(s: &str) -> Option<Url> {
    let u = Url::parse(s).ok()?;
    let ok = matches!(u.scheme(), "http" | "https")
        && u.host_str().is_some_and(|h| !h.is_empty())
        && u.username().is_empty()
        && u.password().is_none();
    ok.then_some(u)
}

/// `localhost` (or a name under it), `127.0.0.0/8` or `[::1]`.
fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The parts Go compares: scheme, host, port and path (the url crate lowercases scheme and
/// host and drops a default port, so equality of what is left is the comparison).
fn comparable(mut u: Url) -> Url {
    u.set_query(None);
    u.set_fragment(None);
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_compare_scheme_host_port_and_path_only() {
        let mut o = OnboardingState::default();
        o.allow_redirect(Environment::Demo, "https://App.Example/cb?x=1").expect("ok");
        o.allow_redirect(Environment::Demo, "http://localhost:8080/cb").expect("ok");
        let ok = |s: &str| o.redirect_allowed(Environment::Demo, &redirect_url(s).expect("url"));
        assert!(ok("https://app.example/cb"));
        assert!(ok("https://app.example:443/cb?state=abc#f"));
        assert!(ok("http://localhost:8080/cb?state=1"));
        assert!(!ok("http://app.example/cb"), "scheme");
        assert!(!ok("https://evil.example/cb"), "host");
        assert!(!ok("https://app.example:8443/cb"), "port");
        assert!(!ok("https://app.example/cb/other"), "path");
        assert!(!ok("http://localhost:8081/cb"), "port");
        assert!(!o.redirect_allowed(Environment::Production, &redirect_url("https://app.example/cb").expect("url")));
        for bad in ["/cb", "ftp://x/cb", "https://u:p@x/cb", "not a url"] {
            assert!(o.allow_redirect(Environment::Demo, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_redirects_are_accepted_only_when_allowed() {
        let mut o = OnboardingState::default();
        let ok = |o: &OnboardingState, s: &str| o.redirect_allowed(Environment::Demo, &redirect_url(s).expect("url"));
        let loopback =
            ["http://127.0.0.1:9999/callback", "http://localhost:8080/cb?x=1", "https://[::1]/a", "http://127.8.0.1/"];
        for u in loopback {
            assert!(!ok(&o, u), "off by default: {u}");
        }
        o.loopback = true;
        for u in loopback {
            assert!(ok(&o, u), "{u}");
        }
        for u in ["https://integrator.example/cb", "http://localhost.example/cb", "http://128.0.0.1/cb"] {
            assert!(!ok(&o, u), "not loopback: {u}");
        }
    }
}
