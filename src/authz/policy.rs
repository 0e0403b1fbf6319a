//! The policy file: which caller identity holds which role on which tenants.
//!
//! ```toml
//! [[grant]]
//! caller = "spiffe://example.org/service/billing"   # exact, or a pattern with `*`
//! roles = ["token"]                                  # token | tenant-admin | audit | operator
//! tenants = ["acme-*", "beta"]                       # patterns; "*" is every tenant
//! ```
//!
//! Deny by default: a caller holds a role on a tenant only if some grant names both. The
//! `audit` and `operator` roles are not tenant-scoped (the security team sees the whole log;
//! an operator changes the master key and integrations of the whole vault), so `tenants` is
//! ignored for them. `*` matches any run of characters, `/` included; nothing else is
//! special.

use std::fmt;

use serde::Deserialize;

use crate::domain::TenantId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// GetAccessToken.
    Token,
    /// Register, rotate, read, disable, enable, delete tenants; onboarding.
    TenantAdmin,
    /// Read, stream, export and verify the audit log.
    Audit,
    /// Operator changes through a running server: rotate the master key, set integrations.
    /// Not tenant-scoped.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Token => "token",
            Role::TenantAdmin => "tenant-admin",
            Role::Audit => "audit",
            Role::Operator => "operator",
        }
    }

    /// Whether grants of this role name tenants (`audit` and `operator` act on the whole
    /// vault).
    pub fn is_tenant_scoped(self) -> bool {
        matches!(self, Role::Token | Role::TenantAdmin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default, rename = "grant")]
    grants: Vec<GrantFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    caller: String,
    roles: Vec<Role>,
    #[serde(default)]
    tenants: Vec<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    caller: Pattern,
    roles: Vec<Role>,
    tenants: Vec<Pattern>,
}

/// A parsed, validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: Vec<Grant>,
}

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {reason}")]
    Read { path: String, reason: String },
    /// TOML syntax or an unknown key/role; the message names the line.
    #[error("policy {origin}: {message}")]
    Syntax { origin: String, message: String },
    /// A grant that parses but makes no sense.
    #[error("policy {origin}: grant {index} (caller {caller:?}): {reason}")]
    Invalid { origin: String, index: usize, caller: String, reason: String },
}

impl Policy {
    pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            origin: origin.to_owned(),
            message: crate::config::toml_error_with_line(&e, text),
        })?;
        let mut grants = Vec::with_capacity(file.grants.len());
        for (i, g) in file.grants.into_iter().enumerate() {
            let invalid = |reason: &str| PolicyError::Invalid {
                origin: origin.to_owned(),
                index: i + 1,
                caller: g.caller.clone(),
                reason: reason.to_owned(),
            };
            if g.caller.trim().is_empty() || g.caller.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("caller must be a non-empty identity or pattern without spaces"));
            }
            if g.caller == "*" {
                return Err(invalid("caller \"*\" would grant every certificate from the CA; name the callers"));
            }
            if g.roles.is_empty() {
                return Err(invalid("roles is empty"));
            }
            let scoped = g.roles.iter().any(|r| r.is_tenant_scoped());
            if scoped && g.tenants.is_empty() {
                return Err(invalid("tenants is empty: list tenant patterns (\"*\" for all)"));
            }
            for t in &g.tenants {
                if t.is_empty() || t.chars().any(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '*')) {
                    return Err(invalid(&format!("tenant pattern {t:?} may use only a-z 0-9 - _ . and *")));
                }
            }
            grants.push(Grant {
                caller: Pattern::new(&g.caller),
                roles: g.roles,
                tenants: g.tenants.iter().map(|t| Pattern::new(t)).collect(),
            });
        }
        Ok(Policy { grants })
    }

    /// Whether `caller` holds `role` on `tenant`.
    pub fn allows(&self, caller: &str, role: Role, tenant: &TenantId) -> bool {
        self.grants.iter().any(|g| {
            g.roles.contains(&role)
                && g.caller.matches(caller)
                && (!role.is_tenant_scoped() || g.tenants.iter().any(|t| t.matches(tenant.as_str())))
        })
    }

    /// Whether `caller` holds `role` on at least one tenant (the coarse check made before
    /// a request is even decoded).
    pub fn has_role(&self, caller: &str, role: Role) -> bool {
        self.grants.iter().any(|g| g.roles.contains(&role) && g.caller.matches(caller))
    }

    /// Whether `caller` holds `role` on every tenant id that starts with `prefix` (an
    /// onboarding may create any of them): some grant's tenant pattern is `Q*` with `Q` a
    /// prefix of `prefix` (`*` alone: every tenant).
    pub fn allows_every_tenant_with_prefix(&self, caller: &str, role: Role, prefix: &str) -> bool {
        self.grants.iter().any(|g| {
            g.roles.contains(&role)
                && g.caller.matches(caller)
                && (!role.is_tenant_scoped() || g.tenants.iter().any(|t| t.covers_prefix(prefix)))
        })
    }

    pub fn grant_count(&self) -> usize {
        self.grants.len()
    }
}

/// A glob with `*` only.
#[derive(Debug, Clone)]
struct Pattern {
    parts: Vec<String>,
    exact: bool,
}

impl Pattern {
    fn new(p: &str) -> Self {
        Self { parts: p.split('*').map(str::to_owned).collect(), exact: !p.contains('*') }
    }

    /// Whether every string that starts with `prefix` matches: the pattern is `Q*` (one
    /// trailing star, no other) with `prefix` starting with `Q`.
    fn covers_prefix(&self, prefix: &str) -> bool {
        !self.exact && self.parts.len() == 2 && self.parts[1].is_empty() && prefix.starts_with(self.parts[0].as_str())
    }

    fn matches(&self, s: &str) -> bool {
        if self.exact {
            return self.parts[0] == s;
        }
        let (first, rest) = self.parts.split_first().expect("split yields at least one part");
        let Some(mut remaining) = s.strip_prefix(first.as_str()) else { return false };
        let (last, middle) = rest.split_last().expect("a pattern with * has at least two parts");
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(i) => remaining = &remaining[i + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[grant]]
caller = "spiffe://ex.org/service/billing"
roles = ["token"]
tenants = ["a-*"]

[[grant]]
caller = "spiffe://ex.org/service/admin-*"
roles = ["tenant-admin", "token"]
tenants = ["*"]

[[grant]]
caller = "spiffe://ex.org/team/security/*"
roles = ["audit"]
"#;

    fn t(s: &str) -> TenantId {
        s.parse().unwrap()
    }

    #[test]
    fn grants_are_scoped_by_caller_role_and_tenant() {
        let p = Policy::parse(POLICY, "test").unwrap();
        let billing = "spiffe://ex.org/service/billing";
        assert!(p.allows(billing, Role::Token, &t("a-1")));
        assert!(!p.allows(billing, Role::Token, &t("b-1")));
        assert!(!p.allows(billing, Role::TenantAdmin, &t("a-1")));
        assert!(!p.allows("spiffe://ex.org/service/billing2", Role::Token, &t("a-1")));
        assert!(p.allows("spiffe://ex.org/service/admin-eu", Role::TenantAdmin, &t("zz")));
        assert!(p.allows("spiffe://ex.org/team/security/alice", Role::Audit, &t("anything")));
        assert!(!p.has_role(billing, Role::Audit));
        assert!(!p.has_role("unknown", Role::Token));
    }

    #[test]
    fn prefix_coverage_is_only_a_trailing_star() {
        let p = Policy::parse(
            "[[grant]]\ncaller = \"a\"\nroles = [\"tenant-admin\"]\ntenants = [\"acme-*\", \"x*y\"]\n",
            "t",
        )
        .unwrap();
        let ok = |prefix: &str| p.allows_every_tenant_with_prefix("a", Role::TenantAdmin, prefix);
        assert!(ok("acme-") && ok("acme-web-"));
        assert!(!ok("acme") && !ok("") && !ok("x") && !ok("beta-"));
        assert!(!p.allows_every_tenant_with_prefix("b", Role::TenantAdmin, "acme-"));
    }

    #[test]
    fn patterns() {
        let m = |p: &str, s: &str| Pattern::new(p).matches(s);
        assert!(m("*", ""));
        assert!(m("a*", "a"));
        assert!(m("a*c", "abc"));
        assert!(!m("a*c", "ab"));
        assert!(m("*b*", "abc"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix must not overlap");
        assert!(m("x", "x") && !m("x", "xy"));
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let e =
            Policy::parse("[[grant]]\ncaller = \"x\"\nroles = [\"root\"]\ntenants=[\"*\"]\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = Policy::parse("[[grant]]\ncaller = \"x\"\nroles = [\"token\"]\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("tenants is empty"), "{e}");
        let e = Policy::parse("[[grant]]\ncaller = \"*\"\nroles = [\"audit\"]\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("every certificate"), "{e}");
        let e =
            Policy::parse("[[grant]]\ncaller = \"x\"\nroles = [\"token\"]\ntenants = [\"A\"]\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("tenant pattern"), "{e}");
        let e = Policy::parse("[[grant]]\ncaller = \"x\"\nrole = [\"token\"]\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
    }
}
