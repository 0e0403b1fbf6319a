//! The policy file's parsing and matching rules.

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
fn wildcards_must_name_their_scope() {
    for bad in ["spiffe://**", "spiffe://*/service/x", "spiffe://ex.org*", "*/**", "**/x", "*.com*", "*.local"] {
        assert!(unscoped_wildcard(bad), "{bad}");
        let text = format!("[[grant]]\ncaller = \"{bad}\"\nroles = [\"audit\"]\n");
        let e = Policy::parse(&text, "t").unwrap_err().to_string();
        assert!(e.contains("caller") && e.contains("trust domain"), "{e}");
    }
    for ok in ["spiffe://ex.org/service/*", "spiffe://ex.org/team/**", "*.internal.example", "batch*", "exact"] {
        assert!(!unscoped_wildcard(ok), "{ok}");
    }
}

#[test]
fn prefix_coverage_is_only_a_trailing_star() {
    let p =
        Policy::parse("[[grant]]\ncaller = \"a\"\nroles = [\"tenant-admin\"]\ntenants = [\"acme-*\", \"x*y\"]\n", "t")
            .unwrap();
    let ok = |prefix: &str| p.allows_every_tenant_with_prefix("a", Role::TenantAdmin, prefix);
    assert!(ok("acme-") && ok("acme-web-"));
    assert!(!ok("acme") && !ok("") && !ok("x") && !ok("beta-"));
    assert!(!p.allows_every_tenant_with_prefix("b", Role::TenantAdmin, "acme-"));
}

#[test]
fn upstream_share_comes_from_the_deciding_token_grant() {
    let p = Policy::parse(
        "[[grant]]\ncaller = \"a\"\nroles = [\"token\"]\ntenants = [\"x-*\"]\nupstream_share = 0.8\n\
         [[grant]]\ncaller = \"a\"\nroles = [\"token\", \"tenant-admin\"]\ntenants = [\"*\"]\n",
        "t",
    )
    .unwrap();
    assert_eq!(p.token_grant("a", &t("x-1")), Some(Some(0.8)));
    assert_eq!(p.token_grant("a", &t("y-1")), Some(None), "admitted, default share");
    assert_eq!(p.token_grant("b", &t("x-1")), None);
}

#[test]
fn requests_per_second_is_per_caller_from_the_first_token_grant_that_sets_it() {
    let p = Policy::parse(
        "[[grant]]\ncaller = \"spiffe://ex.org/a\"\nroles = [\"token\"]\ntenants = [\"x-*\"]\n\
         [[grant]]\ncaller = \"spiffe://ex.org/*\"\nroles = [\"token\"]\ntenants = [\"*\"]\nrequests_per_second = 20\n\
         [[grant]]\ncaller = \"spiffe://ex.org/a\"\nroles = [\"token\"]\ntenants = [\"*\"]\nrequests_per_second = 7.5\n",
        "test",
    )
    .unwrap();
    assert_eq!(p.requests_per_second("spiffe://ex.org/a"), Some(20.0));
    assert_eq!(p.requests_per_second("spiffe://ex.org/b"), Some(20.0));
    assert_eq!(p.requests_per_second("spiffe://other.org/b"), None, "the server's default");
    for (rate, roles, why) in [
        ("0", "[\"token\"]", "above 0"),
        ("-3", "[\"token\"]", "above 0"),
        ("\"fast\"", "[\"token\"]", "above 0"),
        ("nan", "[\"token\"]", "above 0"),
        ("5", "[\"audit\"]", "only to grants with the token or api role"),
    ] {
        let e = Policy::parse(
            &format!("[[grant]]\ncaller = \"x\"\nroles = {roles}\ntenants = [\"*\"]\nrequests_per_second = {rate}\n"),
            "test",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("grant 1") && e.contains("requests_per_second: ") && e.contains(why), "{rate}: {e}");
    }
}

#[test]
fn bad_upstream_share_names_the_grant_and_field() {
    for (share, roles, why) in [
        ("1.5", "[\"token\"]", "from 0 to 1"),
        ("-0.1", "[\"token\"]", "from 0 to 1"),
        ("nan", "[\"token\"]", "from 0 to 1"),
        ("0.5", "[\"tenant-admin\"]", "token or api role"),
    ] {
        let text = format!(
            "[[grant]]\ncaller = \"ok\"\nroles = [\"audit\"]\n\
             [[grant]]\ncaller = \"x\"\nroles = {roles}\ntenants = [\"*\"]\nupstream_share = {share}\n"
        );
        let e = Policy::parse(&text, "p.toml").unwrap_err().to_string();
        assert!(e.contains("grant 2") && e.contains("upstream_share: ") && e.contains(why), "{e}");
    }
    let e = Policy::parse(
        "[[grant]]\ncaller = \"x\"\nroles = [\"token\"]\ntenants = [\"*\"]\nupstream_share = \"half\"\n",
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("grant 1") && e.contains("upstream_share: ") && e.contains("from 0 to 1"), "{e}");
    let p = Policy::parse(
        "[[grant]]\ncaller = \"x\"\nroles = [\"token\"]\ntenants = [\"*\"]\nupstream_share = 1\n",
        "p.toml",
    );
    assert_eq!(p.unwrap().token_grant("x", &t("y")), Some(Some(1.0)), "an integer is a number too");
}

#[test]
fn tenant_ranges_are_the_prefixes_merged_in_order() {
    let p = |tenants: &str| {
        Policy::parse(
            &format!(
                "[[grant]]\ncaller = \"a\"\nroles = [\"tenant-admin\"]\ntenants = [{tenants}]\n\
                 [[grant]]\ncaller = \"a\"\nroles = [\"token\"]\ntenants = [\"*\"]\n"
            ),
            "t",
        )
        .unwrap()
        .tenant_ranges("a", Role::TenantAdmin)
    };
    let r = |from: &str, to: String| IdRange { from: from.into(), to };
    let top = IdRange::ABOVE_ALL;
    let after = IdRange::AFTER_ID;
    assert_eq!(p("\"acme-*\""), [r("acme-", format!("acme-{top}"))]);
    assert_eq!(
        p("\"zed\", \"acme-*\", \"acme-eu-*\", \"acme-x\", \"beta-*\""),
        [r("acme-", format!("acme-{top}")), r("beta-", format!("beta-{top}")), r("zed", format!("zed{after}"))],
        "sorted, nested prefixes and exact ids inside a prefix merged"
    );
    assert_eq!(p("\"acme-*\", \"*\""), [IdRange::all()]);
    assert_eq!(p("\"a*b\""), [IdRange::all()], "a star elsewhere: full scan");
    assert_eq!(p("\"acme-*\"").len(), 1, "the token grant's * is another role");
    let none = Policy::parse("[[grant]]\ncaller = \"b\"\nroles = [\"audit\"]\n", "t").unwrap();
    assert!(none.tenant_ranges("a", Role::TenantAdmin).is_empty());
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
    assert!(!m("*", "a/b") && m("**", "a/b") && m("a/*", "a/") && !m("a/*", "a/b/c"));
    assert!(m("a/**/c", "a/b/x/c") && !m("a/*/c", "a/b/x/c") && m("a/*/c", "a/b/c"));
    assert!(m("*/*", "é/ü") && !m("é*", "e"), "multi-byte characters");
}

#[test]
fn bad_policies_name_the_problem() {
    let e = Policy::parse("[[grant]]\ncaller = \"x\"\nroles = [\"root\"]\ntenants=[\"*\"]\n", "p.toml").unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
    let e = Policy::parse("[[grant]]\ncaller = \"x\"\nroles = [\"token\"]\n", "p.toml").unwrap_err();
    assert!(e.to_string().contains("tenants is empty"), "{e}");
    for stars in ["*", "**", "*****"] {
        let e =
            Policy::parse(&format!("[[grant]]\ncaller = \"{stars}\"\nroles = [\"audit\"]\n"), "p.toml").unwrap_err();
        assert!(e.to_string().contains("grant 1") && e.to_string().contains("caller: "), "{e}");
        assert!(e.to_string().contains("every certificate"), "{e}");
    }
    let e = Policy::parse("[[grant]]\ncaller = \"x\"\nroles = [\"token\"]\ntenants = [\"A\"]\n", "p.toml").unwrap_err();
    assert!(e.to_string().contains("tenant pattern"), "{e}");
    let e = Policy::parse("[[grant]]\ncaller = \"x\"\nrole = [\"token\"]\n", "p.toml").unwrap_err();
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn api_grants_admit_their_tenants_methods_and_paths_only() {
    let p = Policy::parse(
        "[[grant]]\ncaller = \"a\"\nroles = [\"api\"]\ntenants = [\"x-*\"]\nupstream_share = 0.3\n\
         api = [\"GET /v2/Customers/**\", \"POST /v2/OutgoingInvoices\"]\n\
         [[grant]]\ncaller = \"b\"\nroles = [\"api\"]\ntenants = [\"y\"]\n\
         [[grant]]\ncaller = \"c\"\nroles = [\"token\"]\ntenants = [\"*\"]\n",
        "t",
    )
    .unwrap();
    assert_eq!(p.api_grant("a", &t("x-1"), "GET", "/v2/customers/7"), Some(Some(0.3)));
    assert_eq!(p.api_grant("a", &t("x-1"), "POST", "/v2/outgoinginvoices"), Some(Some(0.3)));
    assert_eq!(p.api_grant("a", &t("x-1"), "DELETE", "/v2/customers/7"), None, "method not listed");
    assert_eq!(p.api_grant("a", &t("x-1"), "GET", "/v2/salaries"), None, "path not listed");
    assert_eq!(p.api_grant("a", &t("y"), "GET", "/v2/customers/7"), None, "tenant not granted");
    assert_eq!(p.api_grant("b", &t("y"), "DELETE", "/v2/anything/1"), Some(None), "no rules: all of /v2/");
    assert_eq!(p.api_grant("c", &t("y"), "GET", "/v2/customers"), None, "token is not api");
    assert!(p.has_role("a", Role::Api) && !p.has_role("c", Role::Api));
    for (grant, why) in [
        ("roles = [\"token\"]\ntenants = [\"*\"]\napi = [\"GET /v2/a\"]\n", "only to grants with the api role"),
        ("roles = [\"api\"]\ntenants = [\"*\"]\napi = []\n", "is empty"),
        ("roles = [\"api\"]\ntenants = [\"*\"]\napi = [\"GET /v2/../a\"]\n", ". or .."),
        ("roles = [\"api\"]\n", "tenants is empty"),
    ] {
        let e = Policy::parse(&format!("[[grant]]\ncaller = \"x\"\n{grant}"), "p.toml").unwrap_err().to_string();
        assert!(e.contains("grant 1") && e.contains(why), "{grant}: {e}");
    }
}
