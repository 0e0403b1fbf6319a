//! The values an onboarding is made of, parsed at the edge: where Go sends the browser back
//! ([`RedirectUrl`]), how new tenants are named ([`TenantIdPrefix`]), our id for the
//! session ([`OnboardingId`]), whom it is bound to ([`Subject`]) and what Go said at the
//! end ([`GoStatus`]). Errors name the field and never repeat what was sent.

use std::fmt;

use super::InvalidInput;

/// The query parameter that carries our onboarding id through Go and back.
pub const STATE_PARAM: &str = "pogo_onboarding_id";

/// Where Go redirects the user's browser after approval: an absolute `https` URL (`http`
/// only for localhost), without credentials or a fragment, and not already carrying our
/// id or Go's `token`/`status` parameters (which Go and we append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUrl(reqwest::Url);

impl RedirectUrl {
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let url =
            reqwest::Url::parse(s.trim()).map_err(|e| InvalidInput::new(field, format!("not an absolute URL: {e}")))?;
        let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => return Err(InvalidInput::new(field, "must be https (http only for localhost)")),
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidInput::new(field, "must not contain credentials or a fragment"));
        }
        if url.query_pairs().any(|(k, _)| k == STATE_PARAM || k == "token" || k == "status") {
            return Err(InvalidInput::new(field, format!("must not already carry {STATE_PARAM}, token or status")));
        }
        Ok(Self(url))
    }

    /// The URL Go is given: this one with our onboarding id in the query (Go ignores the
    /// query when matching its whitelist, and sends it back).
    pub fn with_onboarding_id(&self, id: &OnboardingId) -> String {
        let mut url = self.0.clone();
        url.query_pairs_mut().append_pair(STATE_PARAM, id.as_str());
        url.to_string()
    }
}

/// The prefix of the tenant ids an onboarding creates (`acme-` + organization number): up
/// to 40 of `a-z 0-9 - _ .`, starting with a letter or digit; empty is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantIdPrefix(String);

impl TenantIdPrefix {
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let prefix = s.trim();
        if prefix.len() > 40 || prefix.chars().any(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.')) {
            return Err(InvalidInput::new(field, "up to 40 of a-z 0-9 - _ ."));
        }
        if let Some(first) = prefix.chars().next()
            && !first.is_ascii_alphanumeric()
        {
            return Err(InvalidInput::new(field, "must start with a letter or digit"));
        }
        Ok(Self(prefix.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Our id of an onboarding session, sent to Go as the redirect's `state`: 16 random bytes
/// in hex when made, because it must be unguessable (request ids are only unique).
/// Accepted back as 1 to 64 ASCII letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnboardingId(String);

impl OnboardingId {
    /// A fresh id; `None` if the system random number generator failed.
    pub fn generate() -> Option<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).ok()?;
        Some(Self(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let id = s.trim();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(InvalidInput::new(field, "not an onboarding id from BeginOnboarding"));
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OnboardingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whom an onboarding is bound to (the integrator's end user or browser session): opaque,
/// 1 to 256 bytes, no control characters. Stored only as a keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                field,
                "required: 1 to 256 bytes without control characters identifying the integrator's end user or browser session",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The `status` Go puts on the redirect back (go-api.md): success or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoStatus {
    Success,
    Canceled,
    ClientNotFound,
    NoClientAccess,
    IntegrationBlocked,
}

impl GoStatus {
    pub const ALL: [GoStatus; 5] = [
        GoStatus::Success,
        GoStatus::Canceled,
        GoStatus::ClientNotFound,
        GoStatus::NoClientAccess,
        GoStatus::IntegrationBlocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GoStatus::Success => "Success",
            GoStatus::Canceled => "Canceled",
            GoStatus::ClientNotFound => "ClientNotFound",
            GoStatus::NoClientAccess => "NoClientAccess",
            GoStatus::IntegrationBlocked => "IntegrationBlocked",
        }
    }

    /// Exactly one of Go's names (surrounding white space ignored); anything else is refused.
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let s = s.trim();
        Self::ALL.into_iter().find(|g| g.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|g| g.as_str()).collect();
            InvalidInput::new(field, format!("must be one of {}", names.join(", ")))
        })
    }

    /// What a refusal means, for the caller's message.
    pub fn advice(self) -> &'static str {
        match self {
            GoStatus::Success => "the onboarding was approved",
            GoStatus::Canceled => "the user cancelled in PowerOffice Go",
            GoStatus::ClientNotFound => "PowerOffice Go found no client for that organization number",
            GoStatus::NoClientAccess => {
                "the user has no access to activate the client (an administrator or the Settings > Organization privilege is needed)"
            }
            GoStatus::IntegrationBlocked => "the integration is blocked for this client in PowerOffice Go",
        }
    }
}

impl fmt::Display for GoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_status_round_trips_and_refuses_the_rest() {
        for g in GoStatus::ALL {
            assert_eq!(GoStatus::parse_field("go_status", &format!(" {g} ")).unwrap(), g);
        }
        let e = GoStatus::parse_field("go_status", "success").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid go_status: must be one of Success, Canceled, ClientNotFound, NoClientAccess, IntegrationBlocked"
        );
    }

    #[test]
    fn onboarding_ids_are_32_hex_digits_when_made_and_alphanumeric_when_read() {
        let id = OnboardingId::generate().unwrap();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(OnboardingId::parse_field("onboarding_id", &format!(" {id} ")).unwrap(), id);
        for bad in ["", "a-b", &"a".repeat(65)] {
            assert_eq!(OnboardingId::parse_field("onboarding_id", bad).unwrap_err().field, "onboarding_id");
        }
    }

    #[test]
    fn redirect_urls_carry_the_id_and_refuse_what_go_or_we_append() {
        let r = RedirectUrl::parse_field("redirect_url", "https://app.example/cb?x=1").unwrap();
        let id = OnboardingId::parse_field("onboarding_id", "abc123").unwrap();
        assert_eq!(r.with_onboarding_id(&id), "https://app.example/cb?x=1&pogo_onboarding_id=abc123");
        assert!(RedirectUrl::parse_field("redirect_url", "http://localhost:8080/cb").is_ok());
        for bad in [
            "http://app.example/cb",
            "https://u:p@app.example/",
            "https://app.example/#f",
            "https://a.example/?status=1",
            "cb",
        ] {
            assert_eq!(RedirectUrl::parse_field("redirect_url", bad).unwrap_err().field, "redirect_url", "{bad}");
        }
    }

    #[test]
    fn prefixes_are_short_lowercase_and_start_with_a_letter_or_digit() {
        assert_eq!(TenantIdPrefix::parse_field("tenant_id_prefix", " acme- ").unwrap().as_str(), "acme-");
        assert_eq!(TenantIdPrefix::parse_field("tenant_id_prefix", "").unwrap().as_str(), "");
        for bad in ["-acme", "ACME", &"a".repeat(41)] {
            assert_eq!(TenantIdPrefix::parse_field("tenant_id_prefix", bad).unwrap_err().field, "tenant_id_prefix");
        }
    }
}
