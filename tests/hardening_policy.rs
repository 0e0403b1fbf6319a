//! Hardening (issue 13, policy patterns): `caller = "**"` passed `policy check` and admitted
//! every certificate, and `*` crossed `/` in SPIFFE paths, so `.../team/*` also admitted
//! `.../team/x/anything`. Now: `*` matches within one path segment, `**` across segments,
//! and a caller pattern made only of `*` is refused, naming the grant and the field.
//!
//! Matching is checked through the public policy API against a reference matcher written
//! here (a plain recursive definition), for random identities and patterns and fixed cases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pogo_vault::authz::{Policy, Role};
use pogo_vault::domain::TenantId;
use proptest::prelude::*;

/// The reference: `**` (a run of two or more `*`) matches any text; `*` matches any text
/// without `/`; every other character matches itself.
fn reference(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', ..] => {
            let rest: &[u8] = &p[p.iter().take_while(|&&c| c == b'*').count()..];
            (0..=s.len()).any(|i| reference(rest, &s[i..]))
        }
        [b'*', rest @ ..] => {
            let segment = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=segment).any(|i| reference(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && reference(rest, &s[1..]),
    }
}

fn only_stars(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|c| c == b'*')
}

/// The refusal rule for wildcards without a literal scope, written again here as the
/// reference: a SPIFFE pattern needs a literal trust domain followed by `/`; another
/// pattern may start with a wildcard only as `*.<domain with a dot, no *>`.
fn unscoped(p: &str) -> bool {
    if !p.contains('*') {
        return false;
    }
    if let Some(rest) = p.strip_prefix("spiffe://") {
        let domain = rest.split('/').next().unwrap_or("");
        return domain.is_empty() || domain.contains('*') || !rest.contains('/');
    }
    match p.strip_prefix("*.") {
        Some(d) => d.contains('*') || !d.contains('.'),
        None => p.starts_with('*'),
    }
}

fn refused(p: &str) -> bool {
    only_stars(p) || unscoped(p)
}

/// A policy whose one grant gives `audit` to `caller`.
fn audit_grant(caller: &str) -> Result<Policy, String> {
    let text = format!("[[grant]]\ncaller = {}\nroles = [\"audit\"]\n", toml_string(caller));
    Policy::parse(&text, "test.toml").map_err(|e| e.to_string())
}

/// A policy whose one grant gives `token` on `tenant_pattern` to one fixed caller.
fn tenant_grant(tenant_pattern: &str) -> Policy {
    let text = format!(
        "[[grant]]\ncaller = \"spiffe://ex.org/svc\"\nroles = [\"token\"]\ntenants = [{}]\n",
        toml_string(tenant_pattern)
    );
    Policy::parse(&text, "test.toml").expect("tenant pattern is valid")
}

fn toml_string(s: &str) -> String {
    // Basic TOML string: our alphabets need no escapes beyond these two.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn caller_admitted(policy: &Policy, identity: &str) -> bool {
    policy.has_role(identity, Role::Audit)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Small alphabets, so patterns and identities often line up, and `/` is frequent.
    #[test]
    fn caller_matching_agrees_with_the_reference(
        pattern in "[ab/*:]{1,10}",
        identity in "[ab/:]{0,12}",
    ) {
        match audit_grant(&pattern) {
            Ok(policy) => {
                prop_assert!(!refused(&pattern), "{pattern:?} must be refused");
                prop_assert_eq!(
                    caller_admitted(&policy, &identity),
                    reference(pattern.as_bytes(), identity.as_bytes()),
                    "pattern {:?} identity {:?}", pattern, identity
                );
            }
            Err(e) => {
                prop_assert!(refused(&pattern), "{pattern:?} refused: {e}");
                prop_assert!(e.contains("grant 1") && e.contains("caller"), "{e}");
            }
        }
    }

    /// SPIFFE-shaped identities and patterns built from their own segments.
    #[test]
    fn spiffe_patterns_agree_with_the_reference(
        segments in proptest::collection::vec("[a-c]{1,3}", 1..5),
        cut in proptest::collection::vec(0usize..4, 1..4),
        extra in "[a-c/]{0,6}",
    ) {
        let identity = format!("spiffe://ex.org/{}{extra}", segments.join("/"));
        // Replace some segments by `*` or `**`, or part of one by `*`.
        let mut parts: Vec<String> = segments.clone();
        for (n, c) in cut.iter().enumerate() {
            let i = c % parts.len();
            parts[i] = match n % 3 {
                0 => "*".into(),
                1 => "**".into(),
                _ => format!("{}*", &parts[i][..1]),
            };
        }
        let pattern = format!("spiffe://ex.org/{}", parts.join("/"));
        let policy = audit_grant(&pattern).expect("pattern with a literal part is valid");
        prop_assert_eq!(
            caller_admitted(&policy, &identity),
            reference(pattern.as_bytes(), identity.as_bytes()),
            "pattern {:?} identity {:?}", pattern, identity
        );
    }

    #[test]
    fn tenant_matching_agrees_with_the_reference(
        pattern in "[ab.*-]{1,8}",
        tenant in "[ab][ab.-]{0,9}",
    ) {
        let policy = tenant_grant(&pattern);
        let id: TenantId = tenant.parse().expect("generated tenant ids are valid");
        prop_assert_eq!(
            policy.allows("spiffe://ex.org/svc", Role::Token, &id),
            reference(pattern.as_bytes(), tenant.as_bytes()),
            "pattern {:?} tenant {:?}", pattern, tenant
        );
    }

    /// Any pattern made only of `*` is refused, whatever its length.
    #[test]
    fn every_all_star_caller_is_refused(n in 1usize..40) {
        let e = audit_grant(&"*".repeat(n)).expect_err("all stars");
        prop_assert!(e.contains("grant 1") && e.contains("caller"), "{e}");
    }
}

#[test]
fn double_star_caller_is_refused_with_the_grant_and_field_named() {
    for caller in ["*", "**", "***", "****"] {
        let text = format!(
            "[[grant]]\ncaller = \"spiffe://ex.org/a\"\nroles = [\"audit\"]\n\n\
             [[grant]]\ncaller = \"{caller}\"\nroles = [\"token\"]\ntenants = [\"*\"]\n"
        );
        let e = Policy::parse(&text, "p.toml").expect_err(caller).to_string();
        assert!(e.contains("p.toml") && e.contains("grant 2") && e.contains("caller:"), "{e}");
        assert!(e.contains("every"), "says why: {e}");
    }
}

#[test]
fn star_stays_within_one_spiffe_path_segment() {
    let p = audit_grant("spiffe://ex.org/team/security/*").unwrap();
    assert!(caller_admitted(&p, "spiffe://ex.org/team/security/alice"));
    assert!(caller_admitted(&p, "spiffe://ex.org/team/security/"), "an empty segment is a run of length 0");
    assert!(!caller_admitted(&p, "spiffe://ex.org/team/security/eu/alice"), "* crossed a /");
    assert!(!caller_admitted(&p, "spiffe://ex.org/team/securityx/alice"));

    let p = audit_grant("spiffe://ex.org/team/**").unwrap();
    assert!(caller_admitted(&p, "spiffe://ex.org/team/security/eu/alice"), "** crosses /");
    assert!(!caller_admitted(&p, "spiffe://ex.org/other/alice"));

    // A wildcard trust domain is refused: a federated bundle would let another domain in.
    assert!(audit_grant("spiffe://*/service/billing").unwrap_err().contains("trust domain"));

    let p = audit_grant("spiffe://ex.org/service/admin-*").unwrap();
    assert!(caller_admitted(&p, "spiffe://ex.org/service/admin-eu"));
    assert!(!caller_admitted(&p, "spiffe://ex.org/service/admin-eu/x"));

    // DNS and CN identities have no `/`: `*` works as before.
    let p = audit_grant("*.internal.example.org").unwrap();
    assert!(caller_admitted(&p, "batch01.internal.example.org"));
    assert!(!caller_admitted(&p, "batch01.internal.example.org.evil"));
}

#[test]
fn the_reference_itself_is_right() {
    // The reference decides the property tests: pin it with cases worked by hand.
    assert!(reference(b"*", b"abc") && !reference(b"*", b"a/c") && reference(b"*", b""));
    assert!(reference(b"**", b"a/c") && reference(b"***", b"a/b/c"));
    assert!(reference(b"a*/c", b"ab/c") && !reference(b"a*/c", b"a/b/c"));
    assert!(reference(b"a**c", b"a/b/c") && !reference(b"a*c", b"a/b/c"));
    assert!(!reference(b"ab*ba", b"aba"));
}
