//! An `api` grant's rules: which requests through the gateway it admits.
//!
//! A rule is `METHOD PATH`: `METHOD` is one of the forwarded methods
//! (`domain::api_path::API_METHODS`) or `*` for any; `PATH` starts with `/v2/` and is a
//! pattern with the policy's wildcards: `*` within one path segment, `**` across segments.
//! So `GET /v2/Customers` admits exactly that path, `GET /v2/Customers/*` one level below
//! it, `GET /v2/Customers/**` every path below it, and `* /v2/**` everything. Matched
//! without regard to case (Go ignores it), on a path the gateway has already checked
//! (`domain::ApiPath`: no `..`, no encoded `/`). The query is not matched.

use super::pattern::Pattern;
use crate::domain::api_path::API_METHODS;

/// One `METHOD PATH` rule.
#[derive(Debug, Clone)]
pub struct ApiRule {
    /// `None`: any method.
    method: Option<&'static str>,
    path: Pattern,
}

impl ApiRule {
    /// Parses `METHOD PATH`; the error says what is wrong with it.
    pub fn parse(rule: &str) -> Result<Self, String> {
        let shown = crate::domain::quoted(rule);
        let (method, path) = rule
            .trim()
            .split_once(' ')
            .map(|(m, p)| (m, p.trim()))
            .ok_or_else(|| format!("rule {shown} is not METHOD PATH (such as \"GET /v2/Customers/**\")"))?;
        let method =
            match method {
                "*" => None,
                m => Some(API_METHODS.iter().copied().find(|x| *x == m).ok_or_else(|| {
                    format!("rule {shown}: the method must be * or one of {}", API_METHODS.join(", "))
                })?),
            };
        let starts = path.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("/v2/"));
        if !starts || path.len() == 4 {
            return Err(format!("rule {shown}: the path must start with /v2/ and name something below it"));
        }
        if path.bytes().any(|c| c <= b' ' || c == 0x7f || c == b'?' || c == b'#' || c == b'\\') {
            return Err(format!("rule {shown}: the path has a space, ?, #, \\ or control character"));
        }
        if path[1..].split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(format!("rule {shown}: the path has an empty, . or .. segment"));
        }
        Ok(Self { method, path: Pattern::new(&path.to_ascii_lowercase()) })
    }

    /// Whether this rule admits `method` on `lower_path` (lowercased).
    pub fn admits(&self, method: &str, lower_path: &str) -> bool {
        self.method.is_none_or(|m| m == method) && self.path.matches(lower_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(rule: &str, method: &str, path: &str) -> bool {
        ApiRule::parse(rule).unwrap().admits(method, &path.to_ascii_lowercase())
    }

    #[test]
    fn rules_match_method_and_path_by_segment_without_case() {
        assert!(admits("GET /v2/Customers", "GET", "/v2/customers"));
        assert!(admits("GET /v2/Customers", "GET", "/v2/CUSTOMERS"));
        assert!(!admits("GET /v2/Customers", "POST", "/v2/Customers"));
        assert!(!admits("GET /v2/Customers", "GET", "/v2/Customers/42"));
        assert!(admits("GET /v2/Customers*", "GET", "/v2/CustomersArchive"));
        assert!(!admits("GET /v2/Customers*", "GET", "/v2/Customers/42"), "* stays within its segment");
        assert!(admits("GET /v2/Customers/*", "GET", "/v2/Customers/42"));
        assert!(!admits("GET /v2/Customers/*", "GET", "/v2/Customers/42/Contacts"));
        assert!(admits("GET /v2/Customers/**", "GET", "/v2/Customers/42/Contacts"));
        assert!(admits("* /v2/**", "DELETE", "/v2/Anything/1"));
        assert!(!admits("* /v2/Customers/**", "GET", "/v2/Salaries/1"));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (rule, why) in [
            ("GET", "METHOD PATH"),
            ("FETCH /v2/Customers", "the method"),
            ("get /v2/Customers", "the method"),
            ("GET /v1/Customers", "/v2/"),
            ("GET /v2/", "/v2/"),
            ("GET /v2/a?b=1", "?"),
            ("GET /v2/a/../b", ". or .."),
            ("GET /v2//a", "empty"),
        ] {
            let e = ApiRule::parse(rule).unwrap_err();
            assert!(e.contains(why), "{rule}: {e}");
        }
    }
}
