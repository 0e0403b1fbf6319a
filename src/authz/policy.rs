//! The policy file: which caller identity holds which role on which tenants.
//!
//! ```toml
//! [[grant]]
//! caller = "spiffe://example.org/service/billing"   # exact, or a pattern with `*`
//! roles = ["token"]                                  # token | api | tenant-admin | audit | operator
//! tenants = ["acme-*", "beta"]                       # patterns; "*" is every tenant
//! upstream_share = 0.25                              # optional, token and api grants only (below)
//! requests_per_second = 20                           # optional, token and api grants only (below)
//! api = ["GET /v2/Customers/**", "POST /v2/OutgoingInvoices"]   # optional, api grants only
//! ```
//!
//! `api` (the gateway, `server/gateway/`) lists the requests an `api` grant admits, each
//! `METHOD PATH` (`policy/api.rs`); without it the grant admits every request under
//! `/v2/` for its tenants.
//!
//! `upstream_share` (0 to 1) is the caller's weight at the shared upstream limiter when
//! several callers wait for Go at once (`tokens::limiter`); without it the caller gets
//! `tokens.default_upstream_share` (0.5: nobody above half while others wait). Alone, a
//! caller may use the whole budget whatever its share. When several `token` grants admit a
//! caller on a tenant, the first in the file decides.
//!
//! `requests_per_second` (above 0) is the caller's own budget of GetAccessToken and gateway
//! requests together (a token bucket per caller identity, with a burst of one second's
//! worth; see `usecase::caller_budget`); without it the caller gets
//! `server.caller_requests_per_second` (100). It is per caller, not per tenant: the first
//! `token` or `api` grant naming the caller that sets it decides.
//!
//! Deny by default: a caller holds a role on a tenant only if some grant names both. The
//! `audit` and `operator` roles are not tenant-scoped (the security team sees the whole log;
//! an operator changes the master key and integrations of the whole vault), so `tenants` is
//! ignored for them.
//!
//! # Patterns
//!
//! `*` matches any run of characters except `/`, so it stays within one path segment of a
//! SPIFFE ID: `spiffe://ex.org/team/security/*` admits `.../security/alice` but not
//! `.../security/eu/alice`, and `spiffe://*/service/billing` does not admit
//! `spiffe://ex.org/evil/service/billing`. `**` (any run of two or more `*`) matches any
//! run, `/` included: `spiffe://ex.org/team/**` admits the whole subtree. Nothing else is
//! special. Why segments: a SPIFFE path is a hierarchy an issuer hands out by prefix, and a
//! `*` meant for one level must not grow to admit identities minted deeper (by a team that
//! only controls a sub-path). Tenant ids have no `/`, so for tenants `*` and `**` agree.
//!
//! A caller pattern made only of `*` (`*`, `**`, ...) matches every identity the client CA
//! could ever sign and is refused; so is an empty one, and so is any wildcard pattern that
//! does not name its scope literally: a SPIFFE pattern needs a literal trust domain
//! (`spiffe://**`, `spiffe://*/service/x` are refused), and another pattern may not start
//! with a wildcard unless it is a DNS wildcard `*.<literal domain>` (`*/**` is refused). Matching is linear in the identity's
//! length times the pattern's parts (no backtracking), since it runs on every request.

use std::fmt;

use serde::Deserialize;

use crate::domain::TenantId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// GetAccessToken.
    Token,
    /// Go's API through the vault's gateway (`server/gateway/`), for the grant's tenants and
    /// its `api` rules.
    Api,
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
            Role::Api => "api",
            Role::TenantAdmin => "tenant-admin",
            Role::Audit => "audit",
            Role::Operator => "operator",
        }
    }

    /// Whether grants of this role name tenants (`audit` and `operator` act on the whole
    /// vault).
    pub fn is_tenant_scoped(self) -> bool {
        matches!(self, Role::Token | Role::Api | Role::TenantAdmin)
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
    /// Read as any TOML value so a wrong type is reported naming the grant and field.
    #[serde(default)]
    upstream_share: Option<toml::Value>,
    #[serde(default)]
    requests_per_second: Option<toml::Value>,
    /// `api` grants only: `METHOD PATH` rules (`api.rs`).
    #[serde(default)]
    api: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Grant {
    caller: Pattern,
    roles: Vec<Role>,
    tenants: Vec<Pattern>,
    upstream_share: Option<f64>,
    requests_per_second: Option<f64>,
    /// `None`: every request under `/v2/` (an `api` grant without rules).
    api: Option<Vec<api::ApiRule>>,
}

impl Grant {
    /// Whether this grant's budget settings apply: grants of a role that reaches Go.
    fn reaches_go(&self) -> bool {
        self.roles.iter().any(|r| matches!(r, Role::Token | Role::Api))
    }
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
    /// A grant that parses but makes no sense; `field` is the grant's key at fault.
    #[error("policy {origin}: grant {index} (caller {caller:?}): {field}: {reason}")]
    Invalid { origin: String, index: usize, caller: String, field: &'static str, reason: String },
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
            message: crate::toml_error::with_line(&e, text),
        })?;
        let mut grants = Vec::with_capacity(file.grants.len());
        for (i, g) in file.grants.into_iter().enumerate() {
            let invalid = |field: &'static str, reason: &str| PolicyError::Invalid {
                origin: origin.to_owned(),
                index: i + 1,
                caller: g.caller.clone(),
                field,
                reason: reason.to_owned(),
            };
            if g.caller.trim().is_empty() || g.caller.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("caller", "must be a non-empty identity or pattern without spaces"));
            }
            if g.caller.chars().all(|c| c == '*') {
                return Err(invalid(
                    "caller",
                    "a pattern made only of * would grant every certificate from the CA; name the callers \
                     (e.g. spiffe://example.org/service/*)",
                ));
            }
            if unscoped_wildcard(&g.caller) {
                return Err(invalid(
                    "caller",
                    "a pattern must name its trust domain (spiffe://<domain>/...) or, for a DNS name, start with a \
                     literal or *. and a literal domain: a leading wildcard would admit nearly every certificate",
                ));
            }
            if g.roles.is_empty() {
                return Err(invalid("roles", "roles is empty"));
            }
            let scoped = g.roles.iter().any(|r| r.is_tenant_scoped());
            if scoped && g.tenants.is_empty() {
                return Err(invalid("tenants", "tenants is empty: list tenant patterns (\"*\" for all)"));
            }
            for t in &g.tenants {
                if t.is_empty() || t.chars().any(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '*')) {
                    return Err(invalid("tenants", &format!("tenant pattern {t:?} may use only a-z 0-9 - _ . and *")));
                }
            }
            let upstream_share = match &g.upstream_share {
                None => None,
                Some(toml::Value::Float(f)) => Some(*f),
                Some(toml::Value::Integer(i)) => Some(*i as f64),
                Some(_) => {
                    return Err(invalid(
                        "upstream_share",
                        "must be a number from 0 to 1 (a share of the upstream budget)",
                    ));
                }
            };
            if let Some(share) = upstream_share {
                if !(0.0..=1.0).contains(&share) {
                    return Err(invalid(
                        "upstream_share",
                        "must be a number from 0 to 1 (a share of the upstream budget)",
                    ));
                }
                if !g.roles.iter().any(|r| matches!(r, Role::Token | Role::Api)) {
                    return Err(invalid("upstream_share", "applies only to grants with the token or api role"));
                }
            }
            let requests_per_second = match &g.requests_per_second {
                None => None,
                Some(v) => {
                    let rate = match v {
                        toml::Value::Float(f) => *f,
                        toml::Value::Integer(i) => *i as f64,
                        _ => f64::NAN,
                    };
                    if !(rate > 0.0 && rate <= 1e6) {
                        return Err(invalid(
                            "requests_per_second",
                            "must be a number above 0 (GetAccessToken requests a second for this caller), at most \
                             1000000",
                        ));
                    }
                    if !g.roles.iter().any(|r| matches!(r, Role::Token | Role::Api)) {
                        return Err(invalid(
                            "requests_per_second",
                            "applies only to grants with the token or api role",
                        ));
                    }
                    Some(rate)
                }
            };
            let api = match &g.api {
                None => None,
                Some(_) if !g.roles.contains(&Role::Api) => {
                    return Err(invalid("api", "applies only to grants with the api role"));
                }
                Some(rules) if rules.is_empty() => {
                    return Err(invalid(
                        "api",
                        "is empty: list rules such as \"GET /v2/Customers/**\", or leave api out to admit every request under /v2/",
                    ));
                }
                Some(rules) => Some(
                    rules
                        .iter()
                        .map(|r| api::ApiRule::parse(r))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|why| invalid("api", &why))?,
                ),
            };
            grants.push(Grant {
                caller: Pattern::new(&g.caller),
                roles: g.roles,
                tenants: g.tenants.iter().map(|t| Pattern::new(t)).collect(),
                upstream_share,
                requests_per_second,
                api,
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

    /// Like [`Policy::allows`] for the `token` role, with the deciding grant's
    /// `upstream_share`: `None` if refused, `Some(None)` if admitted with the default share.
    /// The same walk as `allows` (first matching grant), so no extra work per request.
    pub fn token_grant(&self, caller: &str, tenant: &TenantId) -> Option<Option<f64>> {
        self.grants
            .iter()
            .find(|g| {
                g.roles.contains(&Role::Token)
                    && g.caller.matches(caller)
                    && g.tenants.iter().any(|t| t.matches(tenant.as_str()))
            })
            .map(|g| g.upstream_share)
    }

    /// Whether `caller` may send `method` `path` (lowercase, as [`api::ApiPath`] keeps it)
    /// to `tenant` through the gateway, with the deciding grant's `upstream_share`: `None`
    /// if refused, `Some(None)` if admitted with the default share. The first `api` grant
    /// that names the caller and the tenant and admits the request decides.
    pub fn api_grant(&self, caller: &str, tenant: &TenantId, method: &str, path: &str) -> Option<Option<f64>> {
        self.grants
            .iter()
            .find(|g| {
                g.roles.contains(&Role::Api)
                    && g.caller.matches(caller)
                    && g.tenants.iter().any(|t| t.matches(tenant.as_str()))
                    && g.api.as_ref().is_none_or(|rules| rules.iter().any(|r| r.admits(method, path)))
            })
            .map(|g| g.upstream_share)
    }

    /// `caller`'s own request budget (GetAccessToken and gateway requests, a second): from
    /// the first `token` or `api` grant naming it that sets `requests_per_second`; `None`:
    /// the server's default.
    pub fn requests_per_second(&self, caller: &str) -> Option<f64> {
        self.grants
            .iter()
            .filter(|g| g.requests_per_second.is_some() && g.reaches_go())
            .find(|g| g.caller.matches(caller))
            .and_then(|g| g.requests_per_second)
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

    /// The tenant ids `caller` may hold `role` on, as sorted, disjoint id ranges to scan
    /// (ListTenants reads only these through the primary-key index instead of every
    /// tenant). A tenant pattern `Q*` is the range of ids starting with `Q`, an exact id its
    /// own one-id range; `*` alone, or a pattern with a `*` anywhere else, needs every id
    /// (one unbounded range). Ranges may hold ids the caller cannot see (another grant's
    /// role, ...): the caller still checks each row with [`Policy::allows`].
    pub fn tenant_ranges(&self, caller: &str, role: Role) -> Vec<IdRange> {
        let mut ranges = Vec::new();
        for g in self.grants.iter().filter(|g| g.roles.contains(&role) && g.caller.matches(caller)) {
            if !role.is_tenant_scoped() {
                return vec![IdRange::all()];
            }
            for t in &g.tenants {
                match t.tokens.as_slice() {
                    [Token::Literal(q)] => {
                        ranges.push(IdRange { from: q.clone(), to: format!("{q}{}", IdRange::AFTER_ID) })
                    }
                    [Token::Literal(q), Token::Segment | Token::Any] => {
                        ranges.push(IdRange { from: q.clone(), to: format!("{q}{}", IdRange::ABOVE_ALL) })
                    }
                    _ => return vec![IdRange::all()],
                }
            }
        }
        ranges.sort_by(|a, b| a.from.cmp(&b.from));
        let mut merged: Vec<IdRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.from <= last.to => {
                    if r.to > last.to {
                        last.to = r.to;
                    }
                }
                _ => merged.push(r),
            }
        }
        merged
    }

    pub fn grant_count(&self) -> usize {
        self.grants.len()
    }
}

/// Tenant ids `from <= id < to` (byte order, which is SQLite's `BINARY` order for text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRange {
    pub from: String,
    pub to: String,
}

impl IdRange {
    /// Sorts after every tenant id (ids are ASCII; this is the last Unicode scalar), so
    /// `Q` + this bounds every id that starts with `Q`, as `Q || char(0x10FFFF)` in SQL.
    pub const ABOVE_ALL: char = '\u{10FFFF}';
    /// No tenant id holds it and it sorts below every character one may, so `id` + this is
    /// the smallest string above `id` that is not an id: the exclusive end of `[id]`, and
    /// the inclusive start of "after `id`".
    pub const AFTER_ID: char = '\u{1}';

    /// Every tenant id.
    pub fn all() -> Self {
        Self { from: String::new(), to: Self::ABOVE_ALL.to_string() }
    }
}

/// Whether a caller pattern has a wildcard but no literal scope (see the module docs).
fn unscoped_wildcard(p: &str) -> bool {
    if !p.contains('*') {
        return false;
    }
    if let Some(rest) = p.strip_prefix("spiffe://") {
        let domain = rest.split('/').next().unwrap_or("");
        return domain.is_empty() || domain.contains('*') || !rest.contains('/');
    }
    match p.strip_prefix("*.") {
        Some(domain) => domain.contains('*') || !domain.contains('.'),
        None => p.starts_with('*'),
    }
}

pub mod api;
mod pattern;

use pattern::{Pattern, Token};
#[cfg(test)]
mod tests;
