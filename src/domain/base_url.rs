//! Where an integration sends its keys: [`BaseUrl`], parsed at the edge. Every client key
//! of an environment goes to this host, so only PowerOffice Go's own origin is taken
//! without an operator's say-so, and only a loopback simulator may speak plain http.

use std::fmt;

use super::InvalidInput;

/// PowerOffice Go's own origin: the only host client keys go to unless an operator allows
/// another (`--allow-custom-base-url`).
pub const GO_HOST: &str = "https://goapi.poweroffice.net";

/// An absolute https URL without query, fragment or credentials; plain http only for a
/// loopback host (tests and `dev` mode talk to the simulator). Kept without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    text: String,
    loopback: bool,
}

impl BaseUrl {
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let url =
            reqwest::Url::parse(s.trim()).map_err(|e| InvalidInput::new(field, format!("not an absolute URL: {e}")))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(InvalidInput::new(
                    field,
                    "must use https (plain http is allowed only for loopback addresses)",
                ));
            }
            other => return Err(InvalidInput::new(field, format!("scheme {other:?} is not supported; use https"))),
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(InvalidInput::new(field, "must not contain credentials, a query or a fragment"));
        }
        Ok(Self { text: url.as_str().trim_end_matches('/').to_owned(), loopback })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// PowerOffice Go's production or demo base URL (Go ignores path casing, so `/demo`
    /// is Go's too).
    pub fn is_go(&self) -> bool {
        is_go(&self.text)
    }

    /// Whether the host is a loopback address or `localhost` (a simulator on this machine).
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// The scheme, host and port, for audit records and warnings.
    pub fn origin(&self) -> String {
        origin(&self.text)
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// [`BaseUrl::is_go`] of a stored base URL.
pub fn is_go(base_url: &str) -> bool {
    match base_url.strip_prefix(GO_HOST) {
        Some("") => true,
        Some(path) => path.eq_ignore_ascii_case("/demo"),
        None => false,
    }
}

/// [`BaseUrl::origin`] of a stored base URL.
pub fn origin(base_url: &str) -> String {
    reqwest::Url::parse(base_url).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| "(unparsable)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_loopback_base_urls_parse_and_others_are_refused_naming_the_field() {
        let go = BaseUrl::parse_field("base_url", " https://goapi.poweroffice.net/Demo/ ").unwrap();
        assert_eq!((go.as_str(), go.is_go(), go.is_loopback()), ("https://goapi.poweroffice.net/Demo", true, false));
        assert_eq!(go.origin(), "https://goapi.poweroffice.net");
        let sim = BaseUrl::parse_field("base_url", "http://127.0.0.1:8080").unwrap();
        assert!(!sim.is_go() && sim.is_loopback());
        for bad in ["http://example.com", "ftp://x", "https://u:p@x.example", "https://x.example/?q=1", "x"] {
            assert_eq!(BaseUrl::parse_field("base_url", bad).unwrap_err().field, "base_url", "{bad}");
        }
        assert!(!is_go("https://goapi.poweroffice.net.evil.example"));
    }
}
