//! Issue 14, two subscription keys per integration, through the CLI on the database files:
//! the README's rotation procedure step by step, the refusals that name their field and
//! leave nothing half-written, the audit records, and no key in any output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::APP_KEY;
use common::{Scratch, assert_fails_with, assert_no_leak, assert_ok, dump, stdout};

/// The simulator's demo subscription keys, primary and secondary.
const PRIMARY: &str = pogo_vault::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY;
const SECONDARY: &str = pogo_vault::sim::DEFAULT_DEMO_SECONDARY_SUBSCRIPTION_KEY;
const PRIMARY_2: &str = "77aa55cc33ee11ff77aa55cc33ee1234";

fn set(slot: &str) -> Vec<&str> {
    let mut a = vec!["integration", "set", "--environment", "demo", "--slot", slot];
    if slot == "primary" {
        a.extend(["--application-key", APP_KEY]);
    }
    a
}

fn audit_actions(s: &Scratch) -> Vec<(String, String)> {
    let audit_db = pogo_vault::config::default_audit_db(&s.db());
    let conn = common::rusqlite_open(&audit_db);
    let mut stmt = conn.prepare("SELECT action, detail FROM events ORDER BY sequence").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

#[test]
fn the_readme_rotation_procedure_works_step_by_step_and_is_audited() {
    let s = Scratch::new();
    s.init();
    let mut outputs = Vec::new();

    // No integration yet: the secondary has nothing to belong to.
    let out = s.run_k(&set("secondary"), SECONDARY);
    assert_fails_with(&out, &["slot", "primary key first"]);
    outputs.push(out);
    let out = s.run_k(&["integration", "set", "--environment", "demo", "--slot", "tertiary"], PRIMARY);
    assert_fails_with(&out, &["slot", "tertiary"]);
    outputs.push(out);
    let out = s.run_k(&["integration", "set", "--environment", "demo"], PRIMARY);
    assert_fails_with(&out, &["--application-key"]);
    outputs.push(out);

    let out = s.run_k(&set("primary"), PRIMARY);
    assert_ok(&out);
    outputs.push(out);
    // The secondary belongs to the same subscription: another host or application key is
    // refused before anything is written.
    let before = dump(&s.db());
    let mut other_host = set("secondary");
    other_host.extend(["--base-url", "https://elsewhere.example"]);
    let out = s.run_k(&other_host, SECONDARY);
    assert_fails_with(&out, &["secondary key belongs to the integration's subscription"]);
    outputs.push(out);
    assert_eq!(dump(&s.db()), before, "a refused secondary left a trace");

    // 1. Set the secondary; the primary is still sent.
    let out = s.run_k(&set("secondary"), SECONDARY);
    assert_ok(&out);
    assert!(stdout(&out).contains("active primary"), "{}", stdout(&out));
    outputs.push(out);
    // `use` of an empty slot is refused... after step 1 it is not empty; a fresh vault shows it.
    // 2. Switch.
    let out = s.run_k(&["integration", "use", "secondary", "--environment", "demo"], "");
    assert_ok(&out);
    assert!(stdout(&out).contains("sends the secondary subscription key now"), "{}", stdout(&out));
    outputs.push(out);
    let out = s.run_k(&["integration", "use", "secondary", "--environment", "demo"], "");
    assert_ok(&out);
    assert!(stdout(&out).contains("nothing changed"), "{}", stdout(&out));
    outputs.push(out);
    // 4. The regenerated primary goes into its slot; the secondary stays active.
    let out = s.run_k(&set("primary"), PRIMARY_2);
    assert_ok(&out);
    outputs.push(out);
    let out = s.run_k(&["integration", "list"], "");
    assert_ok(&out);
    let listed = stdout(&out);
    assert!(listed.contains("primary key …1234 (v2)"), "{listed}");
    assert!(listed.contains("secondary key …a9c4 (v1)"), "{listed}");
    assert!(listed.contains("active secondary"), "{listed}");
    outputs.push(out);
    let out = s.run_k(&["integration", "list", "--json"], "");
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json[0]["active_slot"], "secondary");
    outputs.push(out);

    // The vault opens what it sends: the secondary.
    let vault =
        pogo_vault::vault::Vault::unlock(&s.db(), &pogo_vault::crypto::MasterKeySource::KeyFile(s.key())).unwrap();
    let rec = vault.integration(pogo_vault::domain::Environment::Demo).unwrap().unwrap();
    assert_eq!(vault.open_subscription_key(&rec).unwrap().expose_secret(), SECONDARY);
    drop(vault);

    // A primary with another base URL is another subscription. Not while its secondary is
    // the key in use (that would send a key nobody tried)...
    let mut moved = set("primary");
    moved.extend(["--base-url", "http://127.0.0.1:9", "--allow-custom-base-url"]);
    let before = dump(&s.db());
    let out = s.run_k(&moved, PRIMARY);
    assert_fails_with(&out, &["base_url", "integration use primary"]);
    outputs.push(out);
    assert_eq!(dump(&s.db()), before, "a refused change left a trace");
    // ... but after switching back, the old subscription's secondary is destroyed.
    let out = s.run_k(&["integration", "use", "primary", "--environment", "demo"], "");
    assert_ok(&out);
    outputs.push(out);
    let out = s.run_k(&moved, PRIMARY);
    assert_ok(&out);
    assert!(stdout(&out).contains("secondary key none") && stdout(&out).contains("active primary"), "{}", stdout(&out));
    outputs.push(out);
    let out = s.run_k(&["integration", "use", "secondary", "--environment", "demo"], "");
    assert_fails_with(&out, &["slot", "no secondary subscription key"]);
    outputs.push(out);

    let actions = audit_actions(&s);
    let sets: Vec<_> = actions.iter().filter(|(a, _)| a == "integration_set").collect();
    assert_eq!(sets.len(), 4, "{actions:#?}");
    assert!(sets[1].1.contains("secondary subscription key …a9c4"), "{}", sets[1].1);
    assert!(sets[3].1.contains("secondary subscription key was destroyed"), "{}", sets[3].1);
    let switches: Vec<_> = actions.iter().filter(|(a, _)| a == "subscription_key_switched").collect();
    assert_eq!(switches.len(), 2, "no change, no record: {actions:#?}");
    assert!(switches[0].1.contains("from the primary to the secondary") && switches[0].1.contains("CLI"));

    for out in &outputs {
        for key in [PRIMARY, SECONDARY, PRIMARY_2] {
            assert_no_leak("CLI output", &out.stdout, key);
            assert_no_leak("CLI errors", &out.stderr, key);
        }
    }
    for (_, detail) in &actions {
        for key in [PRIMARY, SECONDARY, PRIMARY_2] {
            assert_no_leak("audit detail", detail.as_bytes(), key);
        }
    }
}
