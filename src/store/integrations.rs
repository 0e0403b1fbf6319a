//! `integrations`: per environment, the application key, Go base URL, the sealed
//! subscription keys' versions and hints (a primary and an optional secondary, as Go's
//! gateway issues them), and which of the two the vault sends.

use super::sql::{Sql, args};
use super::{StoreError, now_ms, query_one};
use crate::crypto::KeyHint;
use crate::domain::{Environment, SubscriptionKeySlot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationRecord {
    pub environment: Environment,
    /// The OAuth client id of the integration: not a secret.
    pub application_key: String,
    pub base_url: String,
    /// The primary key's sealed version and hint.
    pub subscription_key_version: i64,
    pub subscription_key_hint: KeyHint,
    /// The secondary key's sealed version and hint, when one is set.
    pub secondary_key_version: Option<i64>,
    pub secondary_key_hint: Option<KeyHint>,
    /// The key the vault sends to Go.
    pub active_slot: SubscriptionKeySlot,
    pub created_at: i64,
    pub updated_at: i64,
}

impl IntegrationRecord {
    /// The sealed version of a slot's key, if the slot holds one.
    pub fn version_of(&self, slot: SubscriptionKeySlot) -> Option<i64> {
        match slot {
            SubscriptionKeySlot::Primary => Some(self.subscription_key_version),
            SubscriptionKeySlot::Secondary => self.secondary_key_version,
        }
    }

    /// The hint of a slot's key, if the slot holds one.
    pub fn hint_of(&self, slot: SubscriptionKeySlot) -> Option<&KeyHint> {
        match slot {
            SubscriptionKeySlot::Primary => Some(&self.subscription_key_hint),
            SubscriptionKeySlot::Secondary => self.secondary_key_hint.as_ref(),
        }
    }
}

/// The owner of a slot's sealed row: the environment for the primary key (as before there
/// were two), `<environment>:secondary` for the secondary. The owner is in the sealed
/// row's associated data, so a row copied into the other slot does not open.
pub fn secret_owner(env: Environment, slot: SubscriptionKeySlot) -> String {
    match slot {
        SubscriptionKeySlot::Primary => env.as_str().to_owned(),
        SubscriptionKeySlot::Secondary => format!("{}:secondary", env.as_str()),
    }
}

/// The next sealed version for a slot (previous + 1, or 1).
pub fn next_version(db: &mut dyn Sql, env: Environment, slot: SubscriptionKeySlot) -> Result<i64, StoreError> {
    let column = match slot {
        SubscriptionKeySlot::Primary => "subscription_key_version",
        SubscriptionKeySlot::Secondary => "secondary_key_version",
    };
    let v: Option<Option<i64>> = query_one(
        db,
        &format!("SELECT {column} FROM integrations WHERE environment = ?1"),
        args![env.as_str()],
        |r| r.get(0),
    )?;
    Ok(v.flatten().unwrap_or(0) + 1)
}

/// Inserts the integration or replaces its application key, base URL and primary key. The
/// secondary key and the active slot are left as they are.
pub fn upsert(db: &mut dyn Sql, rec: &IntegrationRecord) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO integrations (environment, application_key, base_url, subscription_key_version, subscription_key_hint, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (environment) DO UPDATE SET application_key = excluded.application_key,
             base_url = excluded.base_url, subscription_key_version = excluded.subscription_key_version,
             subscription_key_hint = excluded.subscription_key_hint, updated_at = excluded.updated_at",
        args![
            rec.environment.as_str(),
            &rec.application_key,
            &rec.base_url,
            rec.subscription_key_version,
            rec.subscription_key_hint.as_str(),
            now_ms()
        ],
    )?;
    Ok(())
}

/// Sets (or, with `None`, clears) the secondary key's version and hint.
pub fn set_secondary(db: &mut dyn Sql, env: Environment, key: Option<(i64, &KeyHint)>) -> Result<(), StoreError> {
    db.execute(
        "UPDATE integrations SET secondary_key_version = ?2, secondary_key_hint = ?3, updated_at = ?4 WHERE environment = ?1",
        args![env.as_str(), key.map(|k| k.0), key.map(|k| k.1.as_str()), now_ms()],
    )?;
    Ok(())
}

/// Names the key the vault sends.
pub fn set_active(db: &mut dyn Sql, env: Environment, slot: SubscriptionKeySlot) -> Result<(), StoreError> {
    db.execute(
        "UPDATE integrations SET active_slot = ?2, updated_at = ?3 WHERE environment = ?1",
        args![env.as_str(), slot.as_str(), now_ms()],
    )?;
    Ok(())
}

pub fn get(db: &mut dyn Sql, env: Environment) -> Result<Option<IntegrationRecord>, StoreError> {
    query_one(
        db,
        "SELECT application_key, base_url, subscription_key_version, subscription_key_hint, created_at, updated_at,
                secondary_key_version, secondary_key_hint, active_slot
         FROM integrations WHERE environment = ?1",
        args![env.as_str()],
        |r| {
            let active: String = r.get(8)?;
            Ok(IntegrationRecord {
                environment: env,
                application_key: r.get(0)?,
                base_url: r.get(1)?,
                subscription_key_version: r.get(2)?,
                subscription_key_hint: KeyHint::from_stored(r.get(3)?),
                created_at: r.get(4)?,
                updated_at: r.get(5)?,
                secondary_key_version: r.get(6)?,
                secondary_key_hint: r.get::<Option<String>>(7)?.map(KeyHint::from_stored),
                // The column's CHECK allows only these two.
                active_slot: if active == "secondary" {
                    SubscriptionKeySlot::Secondary
                } else {
                    SubscriptionKeySlot::Primary
                },
            })
        },
    )
}

pub fn list(db: &mut dyn Sql) -> Result<Vec<IntegrationRecord>, StoreError> {
    let mut out = Vec::new();
    for env in Environment::ALL {
        if let Some(r) = get(db, env)? {
            out.push(r);
        }
    }
    Ok(out)
}
