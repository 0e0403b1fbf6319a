//! Request strings turned into types at the edge ("parse, don't validate").
//!
//! Everything inward of the CLI and the gRPC handlers takes these types, never raw strings,
//! so a value that reached the store or the broker has already passed these rules. Each
//! parse error names the field, because it ends up in an `INVALID_ARGUMENT` message or a
//! one-line CLI error.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub mod api_path;
pub mod base_url;
mod onboarding;

pub use api_path::{ApiMethod, ApiPath, ApiQuery};
pub use base_url::BaseUrl;
pub use onboarding::{GoStatus, OnboardingId, RedirectUrl, STATE_PARAM, Subject, TenantIdPrefix};

/// A value from outside failed its rules. `field` is the name the caller used for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// The field name as the caller knows it (`tenant_id`, `client_key`, ...).
    pub field: &'static str,
    /// What is wrong and, where useful, what is expected. Never echoes a secret.
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// Longest rejected value an error message repeats ([`quoted`]), in bytes as quoted.
pub const MAX_QUOTED_BYTES: usize = 24;

/// A rejected value as an error message may show it: quoted (`{:?}`) when that takes at
/// most [`MAX_QUOTED_BYTES`] between the quotes, else only its length. Errors reach
/// callers, logs and audit records, and a caller who pasted a secret into the wrong field
/// (a client key is 36 characters, a subscription key 32, a token far more) must not find
/// it there.
pub fn quoted(s: &str) -> String {
    let q = format!("{s:?}");
    if q.len() <= MAX_QUOTED_BYTES + 2 { q } else { format!("(a value of {} characters)", s.chars().count()) }
}

/// What is wrong with a JSON text, without `serde_json`'s quotes of it ("invalid type:
/// string \"...\"" repeats the value): a missing field by name, else the kind of problem;
/// with the line and column either way.
pub fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let full = e.to_string();
    let what = match e.classify() {
        // Names one of our own fields, never input.
        Category::Data if full.starts_with("missing field") || full.starts_with("duplicate field") => {
            full.split(" at line ").next().unwrap_or("a field is missing").to_owned()
        }
        Category::Data => "a field has the wrong type or value".to_owned(),
        Category::Syntax => "not valid JSON".to_owned(),
        Category::Eof => "the JSON ends early".to_owned(),
        Category::Io => "the JSON could not be read".to_owned(),
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// A tenant id: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub const MAX_LEN: usize = 64;

    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        if s.is_empty() {
            return Err(InvalidInput::new(field, "must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidInput::new(field, format!("must be at most {} characters", Self::MAX_LEN)));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(InvalidInput::new(field, "must start with a lowercase letter or a digit"));
        }
        if let Some(c) = s.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.')) {
            return Err(InvalidInput::new(
                field,
                format!("character {c:?} is not allowed; use a-z, 0-9, '-', '_' and '.'"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_field("tenant_id", s)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// Go environment. Keys of one never work in the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Environment {
    Demo,
    Production,
}

impl Environment {
    pub const ALL: [Environment; 2] = [Environment::Demo, Environment::Production];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Demo => "demo",
            Environment::Production => "production",
        }
    }

    /// Go's base URL for this environment (see `shared/go-api.md`). Token requests go to
    /// `{base}/OAuth/Token`, API calls to `{base}/v2/...`.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Environment::Demo => "https://goapi.poweroffice.net/Demo",
            Environment::Production => "https://goapi.poweroffice.net",
        }
    }

    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        match s.trim().to_ascii_lowercase().as_str() {
            "demo" => Ok(Environment::Demo),
            "production" | "prod" => Ok(Environment::Production),
            "" => Err(InvalidInput::new(field, "must be set to \"demo\" or \"production\"")),
            _ => Err(InvalidInput::new(
                field,
                format!("unknown environment {}; use \"demo\" or \"production\"", quoted(s)),
            )),
        }
    }
}

impl FromStr for Environment {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_field("environment", s)
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of an integration's two subscription keys (go-api.md, "Keys": the gateway gives
/// every subscription a primary and a secondary key, both valid at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionKeySlot {
    Primary,
    Secondary,
}

impl SubscriptionKeySlot {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }

    /// The slot that is not this one.
    pub fn other(self) -> Self {
        match self {
            Self::Primary => Self::Secondary,
            Self::Secondary => Self::Primary,
        }
    }

    /// `primary` or `secondary` (any case); empty is refused: callers that default to the
    /// primary slot say so themselves.
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        match s.trim().to_ascii_lowercase().as_str() {
            "primary" => Ok(Self::Primary),
            "secondary" => Ok(Self::Secondary),
            _ => Err(InvalidInput::new(
                field,
                format!("unknown subscription-key slot {}; use \"primary\" or \"secondary\"", quoted(s)),
            )),
        }
    }
}

impl FromStr for SubscriptionKeySlot {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_field("slot", s)
    }
}

impl fmt::Display for SubscriptionKeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a tenant's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    /// Tokens are minted on request.
    Active,
    /// An admin switched the tenant off; no tokens until enabled again.
    Disabled,
    /// Go refused the client key (deleted integration or wrong key): the customer must
    /// re-activate the integration, which yields a new key.
    KeyRejected,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "ACTIVE",
            TenantStatus::Disabled => "DISABLED",
            TenantStatus::KeyRejected => "KEY_REJECTED",
        }
    }
}

impl FromStr for TenantStatus {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ACTIVE" => Ok(TenantStatus::Active),
            "DISABLED" => Ok(TenantStatus::Disabled),
            "KEY_REJECTED" => Ok(TenantStatus::KeyRejected),
            _ => Err(InvalidInput::new("status", format!("unknown status {}", quoted(s)))),
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A human name for a tenant, shown in lists. Up to 200 characters, no control characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let s = s.trim();
        if s.chars().count() > Self::MAX_CHARS {
            return Err(InvalidInput::new(field, format!("must be at most {} characters", Self::MAX_CHARS)));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidInput::new(field, "must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Norwegian organization number: nine digits (spaces allowed on input, dropped).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrganizationNumber(String);

impl OrganizationNumber {
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() != 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidInput::new(field, "must be nine digits"));
        }
        Ok(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OrganizationNumber {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_field("organization_number", s)
    }
}

impl fmt::Display for OrganizationNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Free-form labels on a tenant, for the integrator's own bookkeeping (and list filters).
/// Keys: 1 to 63 of `a-z 0-9 - _ . /`; values: up to 256 characters, no control characters;
/// at most 32 labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub const MAX_LABELS: usize = 32;

    pub fn parse_field<'a>(
        field: &'static str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, InvalidInput> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if k.is_empty() || k.len() > 63 {
                return Err(InvalidInput::new(field, "label keys must be 1 to 63 characters"));
            }
            if let Some(c) = k.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '/')) {
                return Err(InvalidInput::new(
                    field,
                    format!("label key {}: character {c:?} is not allowed", quoted(k)),
                ));
            }
            if v.chars().count() > 256 || v.chars().any(char::is_control) {
                return Err(InvalidInput::new(
                    field,
                    format!("label {}: value must be at most 256 characters without control characters", quoted(k)),
                ));
            }
            if map.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(InvalidInput::new(field, format!("label {} given twice", quoted(k))));
            }
        }
        if map.len() > Self::MAX_LABELS {
            return Err(InvalidInput::new(field, format!("at most {} labels", Self::MAX_LABELS)));
        }
        Ok(Self(map))
    }

    /// Parses `key=value` strings, as given on the command line.
    pub fn parse_assignments(field: &'static str, items: &[String]) -> Result<Self, InvalidInput> {
        let mut pairs = Vec::with_capacity(items.len());
        for item in items {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| InvalidInput::new(field, format!("{} is not key=value", quoted(item))))?;
            pairs.push((k, v));
        }
        Self::parse_field(field, pairs)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn to_json(&self) -> String {
        // A BTreeMap<String, String> always serializes.
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Reads labels back from the store, where they were written by `to_json`.
    pub fn from_json(s: &str) -> Result<Self, InvalidInput> {
        let map: BTreeMap<String, String> =
            serde_json::from_str(s).map_err(|e| InvalidInput::new("labels", json_error(&e)))?;
        Ok(Self(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tenant_id_rules() {
        for ok in ["a", "0", "acme-1", "acme_1.x", &"a".repeat(64)] {
            assert_eq!(ok.parse::<TenantId>().map(|t| t.to_string()).as_deref(), Ok(ok));
        }
        for bad in ["", "-a", "_a", ".a", "A", "a b", "a/b", "æ", &"a".repeat(65)] {
            let err = bad.parse::<TenantId>().unwrap_err();
            assert_eq!(err.field, "tenant_id", "{bad:?}");
        }
    }

    #[test]
    fn environment_round_trip_and_errors() {
        for env in Environment::ALL {
            assert_eq!(env.to_string().parse::<Environment>(), Ok(env));
        }
        let err = "staging".parse::<Environment>().unwrap_err();
        assert!(err.to_string().contains("environment"), "{err}");
    }

    #[test]
    fn labels_parse_and_refuse() {
        let l = Labels::parse_assignments("labels", &["team=ap".into(), "region=no".into()]).unwrap();
        assert_eq!(Labels::from_json(&l.to_json()).unwrap(), l);
        assert!(Labels::parse_assignments("labels", &["novalue".into()]).is_err());
        assert!(Labels::parse_assignments("labels", &["Bad=x".into()]).is_err());
        assert!(Labels::parse_assignments("labels", &["a=1".into(), "a=2".into()]).is_err());
    }

    #[test]
    fn errors_quote_short_values_and_never_a_key_length_one() {
        let guid = "5eed0000-0000-4000-8000-000000abc000";
        let e = guid.parse::<Environment>().unwrap_err().to_string();
        assert!(!e.contains(guid) && e.contains("36 characters"), "{e}");
        assert!("staging".parse::<Environment>().unwrap_err().to_string().contains("\"staging\""));
        let e = Labels::parse_assignments("labels", &[guid.to_uppercase()]).unwrap_err().to_string();
        assert!(!e.to_lowercase().contains(guid), "{e}");
    }

    #[test]
    fn organization_number_is_nine_digits() {
        assert_eq!("123 456 789".parse::<OrganizationNumber>().unwrap().as_str(), "123456789");
        assert!("12345678".parse::<OrganizationNumber>().is_err());
        assert!("12345678x".parse::<OrganizationNumber>().is_err());
    }

    proptest! {
        #[test]
        fn tenant_id_display_round_trips(s in "[a-z0-9][a-z0-9._-]{0,63}") {
            let id: TenantId = s.parse().unwrap();
            prop_assert_eq!(id.to_string().parse::<TenantId>().unwrap(), id);
        }
    }
}
