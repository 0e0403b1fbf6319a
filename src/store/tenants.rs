//! `tenants`: one row per Go client the integrator serves. Hints and fingerprints only;
//! the sealed key lives in `sealed_secrets` under (client-key, tenant id, key version).

use super::sql::{Row, Sql, args};
use super::{StoreError, now_ms, query_all, query_one};
use crate::crypto::{Fingerprint, KeyHint};
use crate::domain::{DisplayName, Environment, InvalidInput, Labels, OrganizationNumber, TenantId, TenantStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub tenant_id: TenantId,
    pub environment: Environment,
    pub display_name: DisplayName,
    pub organization_number: Option<OrganizationNumber>,
    /// Go's id of the client, when Go told us (ClientIntegrationInformation or onboarding).
    pub go_client_id: Option<String>,
    pub labels: Labels,
    pub status: TenantStatus,
    pub key_version: i64,
    pub key_hint: KeyHint,
    pub key_fingerprint: Fingerprint,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_token_at: Option<i64>,
}

const COLUMNS: &str = "tenant_id, environment, display_name, organization_number, go_client_id, labels, status, \
                       key_version, key_hint, key_fingerprint, created_at, updated_at, last_token_at";

fn corrupt(e: InvalidInput) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn from_row(r: &Row) -> Result<TenantRecord, StoreError> {
    let fp: String = r.get(9)?;
    let (key_id, tag) = fp.split_once(':').unwrap_or(("", fp.as_str()));
    Ok(TenantRecord {
        tenant_id: r.get::<String>(0)?.parse().map_err(corrupt)?,
        environment: r.get::<String>(1)?.parse().map_err(corrupt)?,
        display_name: DisplayName::parse_field("display_name", &r.get::<String>(2)?).map_err(corrupt)?,
        organization_number: r.get::<Option<String>>(3)?.map(|s| s.parse()).transpose().map_err(corrupt)?,
        go_client_id: r.get(4)?,
        labels: Labels::from_json(&r.get::<String>(5)?).map_err(corrupt)?,
        status: r.get::<String>(6)?.parse().map_err(corrupt)?,
        key_version: r.get(7)?,
        key_hint: KeyHint::from_stored(r.get(8)?),
        key_fingerprint: Fingerprint { key_id: key_id.to_owned(), tag: tag.to_owned() },
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        last_token_at: r.get(12)?,
    })
}

pub fn insert(db: &mut dyn Sql, t: &TenantRecord) -> Result<(), StoreError> {
    db.execute(
        &format!("INSERT INTO tenants ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        args![
            t.tenant_id.as_str(),
            t.environment.as_str(),
            t.display_name.as_str(),
            t.organization_number.as_ref().map(|o| o.as_str()),
            &t.go_client_id,
            t.labels.to_json(),
            t.status.as_str(),
            t.key_version,
            t.key_hint.as_str(),
            t.key_fingerprint.to_string(),
            t.created_at,
            t.updated_at,
            t.last_token_at,
        ],
    )
    .map_err(|e| StoreError::map_unique(e, || format!("tenant {}", t.tenant_id)))?;
    Ok(())
}

pub fn get(db: &mut dyn Sql, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
    query_one(db, &format!("SELECT {COLUMNS} FROM tenants WHERE tenant_id = ?1"), args![id.as_str()], from_row)
}

/// Every tenant of `env` with this organization number, in id order.
pub fn find_by_organization(
    db: &mut dyn Sql,
    env: Environment,
    org: &OrganizationNumber,
) -> Result<Vec<TenantRecord>, StoreError> {
    query_all(
        db,
        &format!(
            "SELECT {COLUMNS} FROM tenants WHERE environment = ?1 AND organization_number = ?2 ORDER BY tenant_id"
        ),
        args![env.as_str(), org.as_str()],
        from_row,
    )
}

/// Every tenant of `env` whose organization number Go itself reported (in an onboarding)
/// as `org`, in id order. Numbers typed by an admin are not in this index.
pub fn find_by_verified_organization(
    db: &mut dyn Sql,
    env: Environment,
    org: &OrganizationNumber,
) -> Result<Vec<TenantRecord>, StoreError> {
    let cols: String = COLUMNS.split(", ").map(|c| format!("t.{}", c.trim())).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {cols} FROM tenants AS t JOIN verified_organization_numbers AS v ON v.tenant_id = t.tenant_id \
         WHERE v.environment = ?1 AND v.organization_number = ?2 AND t.organization_number = ?2 ORDER BY t.tenant_id"
    );
    query_all(db, &sql, args![env.as_str(), org.as_str()], from_row)
}

/// Records that Go reported `org` for the tenant (in an onboarding).
pub fn set_verified_organization(
    db: &mut dyn Sql,
    id: &TenantId,
    env: Environment,
    org: &OrganizationNumber,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO verified_organization_numbers (tenant_id, environment, organization_number, verified_at) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant_id) DO UPDATE SET environment = excluded.environment, \
         organization_number = excluded.organization_number, verified_at = excluded.verified_at",
        args![id.as_str(), env.as_str(), org.as_str(), now_ms()],
    )?;
    Ok(())
}

/// Tenants with id greater than `after`, in id order, at most `limit`.
pub fn list(db: &mut dyn Sql, after: Option<&str>, limit: usize) -> Result<Vec<TenantRecord>, StoreError> {
    query_all(
        db,
        &format!("SELECT {COLUMNS} FROM tenants WHERE tenant_id > ?1 ORDER BY tenant_id LIMIT ?2"),
        args![after.unwrap_or(""), limit as i64],
        from_row,
    )
}

/// Records a new key version (the caller has stored its sealed secret).
pub fn set_key(
    db: &mut dyn Sql,
    id: &TenantId,
    version: i64,
    hint: &KeyHint,
    fp: &Fingerprint,
) -> Result<(), StoreError> {
    let n = db.execute(
        "UPDATE tenants SET key_version = ?2, key_hint = ?3, key_fingerprint = ?4, updated_at = ?5,
             status = CASE status WHEN 'KEY_REJECTED' THEN 'ACTIVE' ELSE status END
         WHERE tenant_id = ?1",
        args![id.as_str(), version, hint.as_str(), fp.to_string(), now_ms()],
    )?;
    not_found_if_zero(n, id)
}

pub fn set_status(db: &mut dyn Sql, id: &TenantId, status: TenantStatus) -> Result<(), StoreError> {
    let n = db.execute(
        "UPDATE tenants SET status = ?2, updated_at = ?3 WHERE tenant_id = ?1",
        args![id.as_str(), status.as_str(), now_ms()],
    )?;
    not_found_if_zero(n, id)
}

/// Marks the tenant's key rejected only if `version` is still its key: a rotation that
/// landed meanwhile must not be undone by a verdict on the old key. True if marked.
pub fn mark_rejected_if_version(db: &mut dyn Sql, id: &TenantId, version: i64) -> Result<bool, StoreError> {
    let n = db.execute(
        "UPDATE tenants SET status = 'KEY_REJECTED', updated_at = ?3 WHERE tenant_id = ?1 AND key_version = ?2",
        args![id.as_str(), version, now_ms()],
    )?;
    Ok(n == 1)
}

/// Sets Go's ClientId exactly (`None` clears it): after a key rotation, the ClientId learnt
/// with the old key no longer holds.
pub fn replace_go_client_id(db: &mut dyn Sql, id: &TenantId, go_client_id: Option<&str>) -> Result<(), StoreError> {
    let n = db.execute(
        "UPDATE tenants SET go_client_id = ?2, updated_at = ?3 WHERE tenant_id = ?1",
        args![id.as_str(), go_client_id, now_ms()],
    )?;
    not_found_if_zero(n, id)
}

/// Fills in what Go told us about the client.
pub fn set_go_metadata(
    db: &mut dyn Sql,
    id: &TenantId,
    go_client_id: Option<&str>,
    display_name: Option<&DisplayName>,
) -> Result<(), StoreError> {
    let n = db.execute(
        "UPDATE tenants SET go_client_id = COALESCE(CAST(?2 AS TEXT), go_client_id),
             display_name = CASE WHEN display_name = '' AND CAST(?3 AS TEXT) IS NOT NULL THEN CAST(?3 AS TEXT)
                                 ELSE display_name END,
             updated_at = ?4
         WHERE tenant_id = ?1",
        args![id.as_str(), go_client_id, display_name.map(|d| d.as_str()), now_ms()],
    )?;
    not_found_if_zero(n, id)
}

pub fn touch_last_token(db: &mut dyn Sql, id: &TenantId, at_ms: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE tenants SET last_token_at = CASE WHEN COALESCE(last_token_at, 0) > ?2 THEN last_token_at ELSE ?2 END \
         WHERE tenant_id = ?1",
        args![id.as_str(), at_ms],
    )?;
    Ok(())
}

pub fn delete(db: &mut dyn Sql, id: &TenantId) -> Result<(), StoreError> {
    let n = db.execute("DELETE FROM tenants WHERE tenant_id = ?1", args![id.as_str()])?;
    not_found_if_zero(n, id)
}

/// Tenant counts by status.
pub fn count_by_status(db: &mut dyn Sql) -> Result<Vec<(TenantStatus, i64)>, StoreError> {
    query_all(db, "SELECT status, COUNT(*) FROM tenants GROUP BY status ORDER BY status", args![], |r| {
        Ok((r.get::<String>(0)?.parse().map_err(corrupt)?, r.get::<i64>(1)?))
    })
}

fn not_found_if_zero(n: usize, id: &TenantId) -> Result<(), StoreError> {
    if n == 0 { Err(StoreError::NotFound { what: format!("tenant {id}") }) } else { Ok(()) }
}

/// The statement of [`list_range`], for tests that check its query plan.
pub const LIST_RANGE_SQL: &str = "SELECT tenant_id, environment, display_name, organization_number, go_client_id, \
     labels, status, key_version, key_hint, key_fingerprint, created_at, updated_at, last_token_at \
     FROM tenants WHERE tenant_id >= ?1 AND tenant_id < ?2 ORDER BY tenant_id LIMIT ?3";

/// Tenants with `from <= id < to` (byte order: SQLite's `BINARY` collation of the primary
/// key, PostgreSQL's `"C"`), in id order, at most `limit`. Both bounds are on the primary
/// key, so the database searches its index and reads only the rows in the range (at most
/// `limit`), never the tenants outside it.
pub fn list_range(db: &mut dyn Sql, from: &str, to: &str, limit: usize) -> Result<Vec<TenantRecord>, StoreError> {
    query_all(db, LIST_RANGE_SQL, args![from, to, limit as i64], from_row)
}

#[cfg(test)]
mod range_tests {
    #[test]
    fn list_range_reads_the_same_columns_as_every_other_query() {
        assert!(super::LIST_RANGE_SQL.starts_with(&format!("SELECT {} FROM tenants ", super::COLUMNS)));
    }
}
