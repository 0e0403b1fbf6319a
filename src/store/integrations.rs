//! `integrations`: per environment, the application key, Go base URL and the sealed
//! subscription key's version and hint.

use rusqlite::{Connection, params};

use super::{StoreError, now_ms, optional};
use crate::crypto::KeyHint;
use crate::domain::Environment;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationRecord {
    pub environment: Environment,
    /// The OAuth client id of the integration: not a secret.
    pub application_key: String,
    pub base_url: String,
    pub subscription_key_version: i64,
    pub subscription_key_hint: KeyHint,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Inserts or replaces the record; returns the new subscription-key version
/// (previous version + 1, or 1).
pub fn next_version(conn: &Connection, env: Environment) -> Result<i64, StoreError> {
    let v: Option<i64> = optional(conn.query_row(
        "SELECT subscription_key_version FROM integrations WHERE environment = ?1",
        [env.as_str()],
        |r| r.get(0),
    ))?;
    Ok(v.unwrap_or(0) + 1)
}

pub fn upsert(conn: &Connection, rec: &IntegrationRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO integrations (environment, application_key, base_url, subscription_key_version, subscription_key_hint, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (environment) DO UPDATE SET application_key = excluded.application_key,
             base_url = excluded.base_url, subscription_key_version = excluded.subscription_key_version,
             subscription_key_hint = excluded.subscription_key_hint, updated_at = excluded.updated_at",
        params![
            rec.environment.as_str(),
            rec.application_key,
            rec.base_url,
            rec.subscription_key_version,
            rec.subscription_key_hint.as_str(),
            now_ms()
        ],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, env: Environment) -> Result<Option<IntegrationRecord>, StoreError> {
    optional(conn.query_row(
        "SELECT application_key, base_url, subscription_key_version, subscription_key_hint, created_at, updated_at
         FROM integrations WHERE environment = ?1",
        [env.as_str()],
        |r| {
            Ok(IntegrationRecord {
                environment: env,
                application_key: r.get(0)?,
                base_url: r.get(1)?,
                subscription_key_version: r.get(2)?,
                subscription_key_hint: KeyHint::from_stored(r.get(3)?),
                created_at: r.get(4)?,
                updated_at: r.get(5)?,
            })
        },
    ))
}

pub fn list(conn: &Connection) -> Result<Vec<IntegrationRecord>, StoreError> {
    let mut out = Vec::new();
    for env in Environment::ALL {
        if let Some(r) = get(conn, env)? {
            out.push(r);
        }
    }
    Ok(out)
}
