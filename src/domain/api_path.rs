//! What a gateway request names at Go (`server/gateway/`): the method ([`ApiMethod`]), the
//! path under `/v2/` ([`ApiPath`]) and the query ([`ApiQuery`]), checked at the edge so that
//! what the policy matches is what Go serves.
//!
//! Why so strict about the path: an `api` grant admits paths by pattern
//! (`GET /v2/Customers/**`), and Go (ASP.NET behind Azure API Management) decodes and
//! normalises a path before it routes it. A `..` segment, an encoded `/` (`%2F`), `\`, `.` or
//! `%` itself (`%252E` is `%2E` after a second decoding), or a `;` (path parameters: `..;`)
//! could make the path the policy matched differ from the one Go serves, so each is refused
//! rather than interpreted. Case is kept as sent (Go ignores it) and matched lowercased.
//!
//! Go's onboarding endpoints (`/v2/Onboarding/...`) are refused whatever the policy says:
//! Finalize answers with client keys, and only the vault may hold those (its own
//! `OnboardingService` stores them sealed, audited).

/// Go's paths the gateway never forwards (lowercase prefixes, each followed by `/` or the
/// end): Finalize hands out client keys; Initiate starts a session only the vault finalizes.
const NEVER_FORWARDED: [&str; 1] = ["/v2/onboarding"];

use super::{InvalidInput, quoted};

/// The methods the gateway forwards. `CONNECT` and `TRACE` never reach Go.
pub const API_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Longest path accepted, in bytes (the prefix `/v2/` included).
pub const MAX_PATH_BYTES: usize = 2048;

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;

/// The query parameter Go's gateway also reads the subscription key from (go-api.md): it
/// is never forwarded, whoever sent it.
const SUBSCRIPTION_KEY_PARAM: &str = "subscription-key";

/// An HTTP method the gateway forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiMethod(&'static str);

impl ApiMethod {
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        API_METHODS.iter().find(|m| **m == s).map(|m| ApiMethod(m)).ok_or_else(|| {
            InvalidInput::new(field, format!("{} is not forwarded; use one of {}", quoted(s), API_METHODS.join(", ")))
        })
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// A path under Go's `/v2/`, as sent (forwarded as is) and lowercased (what the policy
/// matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    sent: String,
    lower: String,
}

impl ApiPath {
    /// `/v2/` then one or more segments; each segment non-empty, not `.` or `..`, of URL
    /// path characters without `;`, with no encoded `/`, `\`, `.`, `%` or control
    /// character; never Go's onboarding (module docs).
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let bad = |why: &str| InvalidInput::new(field, why.to_owned());
        if s.len() > MAX_PATH_BYTES {
            return Err(bad(&format!("is {} bytes long; at most {MAX_PATH_BYTES}", s.len())));
        }
        let Some(rest) = s.get(..4).filter(|p| p.eq_ignore_ascii_case("/v2/")).map(|_| &s[4..]) else {
            return Err(bad("must start with /v2/ (the gateway forwards Go's API v2 only)"));
        };
        for segment in rest.split('/') {
            if segment.is_empty() {
                return Err(bad("has an empty segment (// or a trailing /)"));
            }
            if segment == "." || segment == ".." {
                return Err(bad("has a . or .. segment"));
            }
            check_segment(segment).map_err(|why| bad(&why))?;
        }
        let lower = s.to_ascii_lowercase();
        let never = NEVER_FORWARDED
            .iter()
            .any(|p| lower.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')));
        if never {
            return Err(bad(
                "names Go's onboarding, which the gateway never forwards (it hands out client keys): use the vault's \
                 OnboardingService",
            ));
        }
        Ok(Self { sent: s.to_owned(), lower })
    }

    /// The path as the caller sent it: what Go receives.
    pub fn as_sent(&self) -> &str {
        &self.sent
    }

    /// The path lowercased: what the policy's rules match (Go ignores case).
    pub fn lower(&self) -> &str {
        &self.lower
    }
}

/// Characters a segment may hold percent-encoded: those that may not stand in a path as
/// they are (space and the printable ASCII RFC 3986 leaves out), and the delimiters that may
/// (decoding them changes nothing a rule matches). Nothing else: an encoded letter, digit
/// or `-._~` would let `%4Fnboarding` pass for something other than what Go, which decodes
/// it, serves; an encoded `/`, `\`, `.`, `%`, `;`, `?` or `#` could change the path's shape
/// after the policy matched it; non-ASCII may fold to ASCII on the way.
const MAY_BE_ENCODED: &[u8] = b" \"<>[]^`{|}!$&'()*+,=:@";

/// A segment's characters: RFC 3986 `pchar` (unreserved, sub-delims but `;`, `:`, `@`)
/// and percent-encodings of [`MAY_BE_ENCODED`] only; no trailing `.` or space (a host may
/// trim them: `Onboarding.` would be `Onboarding`).
fn check_segment(segment: &str) -> Result<(), String> {
    let b = segment.as_bytes();
    let mut i = 0;
    let mut last = 0u8;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    return Err("has a % that is not followed by two hex digits".into());
                };
                if !MAY_BE_ENCODED.contains(&byte) {
                    return Err(
                        "encodes a character that must be written as it is (a letter, digit or -._~) or may not be \
                         in a segment at all (/, \\, ., %, ;, ?, #, control, non-ASCII)"
                            .into(),
                    );
                }
                last = byte;
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&c) => {
                last = c;
                i += 1;
            }
            _ => return Err("has a character that is not allowed in a URL path (encode it)".into()),
        }
    }
    if matches!(last, b'.' | b' ') {
        return Err("has a segment that ends in . or a space".into());
    }
    Ok(())
}

/// A request's query: what is forwarded (the caller's own, byte for byte, less any
/// `subscription-key` parameter) and how the audit log shows it (the parameter names, not
/// their values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiQuery {
    forward: Option<String>,
    shown: String,
}

impl ApiQuery {
    pub fn parse_field(field: &'static str, raw: Option<&str>) -> Result<Self, InvalidInput> {
        let Some(raw) = raw.filter(|q| !q.is_empty()) else {
            return Ok(Self { forward: None, shown: String::new() });
        };
        if raw.len() > MAX_QUERY_BYTES {
            return Err(InvalidInput::new(field, format!("is {} bytes long; at most {MAX_QUERY_BYTES}", raw.len())));
        }
        if raw.bytes().any(|c| c <= b' ' || c == 0x7f || c == b'#') {
            return Err(InvalidInput::new(field, "has a space, # or control character (encode it)"));
        }
        let mut kept = Vec::new();
        let mut names = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            let decoded = form_decode(name);
            if decoded.trim().eq_ignore_ascii_case(SUBSCRIPTION_KEY_PARAM) {
                // Go's gateway would take a key from here; never the caller's.
                continue;
            }
            kept.push(pair);
            // A name is the caller's text too: a long one is described, never repeated.
            names.push(if decoded.len() <= 24 {
                format!("{name}=")
            } else {
                format!("({} characters)=", decoded.len())
            });
        }
        let forward = (!kept.is_empty()).then(|| kept.join("&"));
        Ok(Self { forward, shown: names.join("&") })
    }

    /// What Go receives after `?`, if anything.
    pub fn forward(&self) -> Option<&str> {
        self.forward.as_deref()
    }

    /// The parameter names without their values (`$top=&customerNo=`), for the audit log.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// `application/x-www-form-urlencoded` decoding, lossy: a malformed `%` stays as it is.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_v2_only_without_tricks() {
        let p = ApiPath::parse_field("path", "/v2/Customers/42").unwrap();
        assert_eq!((p.as_sent(), p.lower()), ("/v2/Customers/42", "/v2/customers/42"));
        assert!(ApiPath::parse_field("path", "/V2/customers").is_ok(), "case is Go's to ignore");
        assert!(ApiPath::parse_field("path", "/v2/Customers/a%20b").is_ok());
        assert!(ApiPath::parse_field("path", "/v2/OnboardingReports").is_ok(), "a prefix of a segment is not it");
        for bad in [
            "/v1/Customers",
            "/v2",
            "/v2/",
            "/v2//Customers",
            "/v2/Customers/",
            "/v2/Customers/../Salaries",
            "/v2/./Customers",
            "/v2/Customers/..%2FSalaries",
            "/v2/Customers%2f..",
            "/v2/Customers/%2E%2E",
            "/v2/a\\b",
            "/v2/a%5cb",
            "/v2/a%00",
            "/v2/a%zz",
            "/v2/a b",
            "/v2/a?b",
            "/v2/Customers/%252e%252e/Salaries",
            "/v2/Customers/..;/Salaries",
            "/v2/Customers;x=1",
            "/v2/Onboarding/Finalize",
            "/V2/ONBOARDING/initiate",
            "/v2/onboarding",
            "/v2/%4Fnboarding/Finalize",
            "/v2/Onboarding%2e/Finalize",
            "/v2/Onboarding./Finalize",
            "/v2/Onboarding%20/Finalize",
            "/v2/Onb%C4%B1arding/Finalize",
            "/v2/Customers/..%3B/Salaries",
            "/v2/Customers%3Fx",
            "/v2/Customers%23x",
            "OAuth/Token",
        ] {
            let e = ApiPath::parse_field("path", bad).unwrap_err();
            assert_eq!(e.field, "path", "{bad}");
        }
        let long = format!("/v2/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(ApiPath::parse_field("path", &long).unwrap_err().reason.contains("at most"));
    }

    #[test]
    fn methods_are_the_forwarded_ones() {
        assert_eq!(ApiMethod::parse_field("method", "GET").unwrap().as_str(), "GET");
        for bad in ["CONNECT", "TRACE", "get", "BREW"] {
            assert_eq!(ApiMethod::parse_field("method", bad).unwrap_err().field, "method");
        }
    }

    #[test]
    fn the_subscription_key_parameter_never_passes_and_values_are_not_shown() {
        let q = ApiQuery::parse_field("query", Some("$top=10&subscription-key=abc&name=Ola%20N")).unwrap();
        assert_eq!(q.forward(), Some("$top=10&name=Ola%20N"));
        assert_eq!(q.shown(), "$top=&name=");
        for sneaky in ["Subscription-Key=x", "subscription%2Dkey=x", "subscription-key", "subscription-key+=x"] {
            let q = ApiQuery::parse_field("query", Some(sneaky)).unwrap();
            assert_eq!(q.forward(), None, "{sneaky}");
        }
        let q = ApiQuery::parse_field("query", Some(&format!("{}=1", "n".repeat(40)))).unwrap();
        assert_eq!(q.shown(), "(40 characters)=");
        assert_eq!(ApiQuery::parse_field("query", None).unwrap().forward(), None);
        assert_eq!(ApiQuery::parse_field("query", Some("a b")).unwrap_err().field, "query");
    }
}
