//! The key hierarchy against a real database file edited by SQL: rows moved between
//! tenants and flipped bytes in any stored field do not open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::APP_KEY;
use common::*;
use pogo_vault::crypto::{ClientKey, MasterKeySource};
use pogo_vault::domain::{Environment, TenantId};
use pogo_vault::vault::{Argon2Costs, InitKey, UnauditedFixture, Vault, VaultError};
use proptest::prelude::*;

fn vault_with(s: &Scratch, tenants: &[(&str, &str)]) -> Vault {
    let v = Vault::init(&s.db(), &InitKey::GenerateKeyFile(s.key()), Argon2Costs::default()).unwrap();
    for (id, key) in tenants {
        v.add_tenant(&new_tenant(id), &ClientKey::parse(key).unwrap(), &UnauditedFixture).unwrap();
    }
    v
}

fn open(v: &Vault, id: &str) -> Result<String, VaultError> {
    let t = v.tenant(&id.parse::<TenantId>().unwrap()).unwrap().unwrap();
    v.open_client_key(&t).map(|k| k.expose_secret().to_owned())
}

const K1: &str = "11111111-2222-4333-8444-555555555555";
const K2: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

#[test]
fn row_copied_onto_another_tenant_does_not_open() {
    let s = Scratch::new();
    let v = vault_with(&s, &[("alpha", K1), ("beta", K2)]);
    assert_eq!(open(&v, "alpha").unwrap(), K1);
    let conn = rusqlite_open(&s.db());
    conn.execute(
        "UPDATE sealed_secrets SET (wrapped_dek, ciphertext) =
             (SELECT wrapped_dek, ciphertext FROM sealed_secrets WHERE owner = 'alpha')
         WHERE owner = 'beta'",
        [],
    )
    .unwrap();
    let err = open(&v, "beta").unwrap_err();
    assert!(matches!(err, VaultError::Integrity { .. }), "{err}");
    assert!(err.to_string().contains("does not open"));
    assert!(!err.to_string().contains(K1) && !err.to_string().contains(K2));
    // The untouched tenant still opens.
    assert_eq!(open(&v, "alpha").unwrap(), K1);
}

#[test]
fn ciphertext_alone_moved_with_its_dek_to_another_version_does_not_open() {
    let s = Scratch::new();
    let v = vault_with(&s, &[("alpha", K1)]);
    v.rotate_key(&"alpha".parse().unwrap(), &ClientKey::parse(K2).unwrap(), None, &UnauditedFixture).unwrap();
    // Relabel the version-2 row as version 3 and point the tenant at it: bound to v2, so it fails.
    let conn = rusqlite_open(&s.db());
    conn.execute("UPDATE sealed_secrets SET version = 3 WHERE owner = 'alpha'", []).unwrap();
    conn.execute("UPDATE tenants SET key_version = 3 WHERE tenant_id = 'alpha'", []).unwrap();
    assert!(matches!(open(&v, "alpha"), Err(VaultError::Integrity { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any single flipped bit in either stored blob makes the row refuse to open.
    #[test]
    fn flipped_byte_in_a_stored_field_fails(dek in any::<bool>(), pos in any::<usize>(), bit in 0u8..8) {
        let s = Scratch::new();
        let v = vault_with(&s, &[("alpha", K1)]);
        let conn = rusqlite_open(&s.db());
        let col = if dek { "wrapped_dek" } else { "ciphertext" };
        let mut blob: Vec<u8> = conn
            .query_row(&format!("SELECT {col} FROM sealed_secrets WHERE owner = 'alpha'"), [], |r| r.get(0))
            .unwrap();
        let i = pos % blob.len();
        blob[i] ^= 1 << bit;
        conn.execute(&format!("UPDATE sealed_secrets SET {col} = ?1 WHERE owner = 'alpha'"), [&blob]).unwrap();
        let refused = matches!(open(&v, "alpha"), Err(VaultError::Integrity { .. }));
        prop_assert!(refused);
    }
}

#[test]
fn wrong_master_key_is_refused_at_unlock() {
    let s = Scratch::new();
    drop(vault_with(&s, &[("alpha", K1)]));
    let other = s.path("other.key");
    std::fs::write(&other, [9u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = Vault::unlock(&s.db(), &MasterKeySource::KeyFile(other)).unwrap_err().to_string();
    let expected = Vault::unlock(&s.db(), &MasterKeySource::KeyFile(s.key())).unwrap().kek_id();
    // Both key ids are public (a PRF output under the key), so the message names them.
    assert!(err.starts_with("wrong master key: the key given has id "), "{err}");
    assert!(
        err.ends_with(&format!("but this database expects master key {expected} (the key it was initialised with)")),
        "{err}"
    );
}

/// Regression (security review M2): an integration row edited to send keys to another host
/// must not open, so the broker never sends a client key there.
#[test]
fn integration_row_edited_to_another_host_does_not_open() {
    use pogo_vault::crypto::SubscriptionKey;
    use pogo_vault::vault::IntegrationInput;
    let s = Scratch::new();
    let v = vault_with(&s, &[]);
    v.set_integration(
        &IntegrationInput {
            environment: Environment::Demo,
            application_key: APP_KEY.into(),
            base_url: "https://goapi.poweroffice.net/Demo".into(),
            subscription_key: SubscriptionKey::parse("0123456789abcdef0123456789abcdef").unwrap(),
            allow_custom_base_url: true,
        },
        &UnauditedFixture,
    )
    .unwrap();
    let rec = v.integration(Environment::Demo).unwrap().unwrap();
    assert!(v.open_subscription_key(&rec).is_ok());
    let conn = rusqlite_open(&s.db());
    conn.execute("UPDATE integrations SET base_url = 'https://evil.example' WHERE environment = 'demo'", []).unwrap();
    let rec = v.integration(Environment::Demo).unwrap().unwrap();
    assert!(matches!(v.open_subscription_key(&rec), Err(VaultError::Integrity { .. })));
}
