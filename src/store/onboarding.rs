//! `onboarding_sessions`: Go onboarding sessions and their one-way status changes.

use super::sql::{Sql, args};
use super::{StoreError, now_ms, query_one};
use crate::domain::{Environment, OrganizationNumber};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Pending,
    Completing,
    Completed,
    Failed,
}

impl SessionStatus {
    fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Pending => "PENDING",
            SessionStatus::Completing => "COMPLETING",
            SessionStatus::Completed => "COMPLETED",
            SessionStatus::Failed => "FAILED",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "PENDING" => SessionStatus::Pending,
            "COMPLETING" => SessionStatus::Completing,
            "COMPLETED" => SessionStatus::Completed,
            "FAILED" => SessionStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("unknown onboarding status {other:?}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub onboarding_id: String,
    pub environment: Environment,
    pub redirect_url: String,
    pub organization_number: Option<OrganizationNumber>,
    pub tenant_id_prefix: String,
    pub caller: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: SessionStatus,
    pub go_status: Option<String>,
    pub tenants: Vec<String>,
    /// Keyed hash (`keyid:tag`) of the integrator's end-user subject the session is bound
    /// to; `None` only for sessions begun before subjects existed.
    pub subject_hash: Option<String>,
}

pub fn insert(db: &mut dyn Sql, s: &Session) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO onboarding_sessions (onboarding_id, environment, redirect_url, organization_number, tenant_id_prefix,
             caller, created_at, expires_at, status, subject_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'PENDING', ?9)",
        args![
            &s.onboarding_id,
            s.environment.as_str(),
            &s.redirect_url,
            s.organization_number.as_ref().map(|o| o.as_str()),
            &s.tenant_id_prefix,
            &s.caller,
            s.created_at,
            s.expires_at,
            &s.subject_hash
        ],
    )
    .map_err(|e| StoreError::map_unique(e, || format!("onboarding {}", s.onboarding_id)))?;
    Ok(())
}

pub fn get(db: &mut dyn Sql, id: &str) -> Result<Option<Session>, StoreError> {
    let row = query_one(
        db,
        "SELECT onboarding_id, environment, redirect_url, organization_number, tenant_id_prefix, caller, created_at,
                expires_at, status, go_status, tenants, subject_hash FROM onboarding_sessions WHERE onboarding_id = ?1",
        args![id],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<Option<String>>(3)?,
                r.get::<String>(4)?,
                r.get::<String>(5)?,
                r.get::<i64>(6)?,
                r.get::<i64>(7)?,
                r.get::<String>(8)?,
                r.get::<Option<String>>(9)?,
                r.get::<String>(10)?,
                r.get::<Option<String>>(11)?,
            ))
        },
    )?;
    let Some((
        onboarding_id,
        env,
        redirect_url,
        org,
        prefix,
        caller,
        created_at,
        expires_at,
        status,
        go_status,
        tenants,
        subject_hash,
    )) = row
    else {
        return Ok(None);
    };
    let corrupt = |e: crate::domain::InvalidInput| StoreError::Corrupt(e.to_string());
    Ok(Some(Session {
        onboarding_id,
        environment: env.parse().map_err(corrupt)?,
        redirect_url,
        organization_number: org.map(|o| o.parse()).transpose().map_err(corrupt)?,
        tenant_id_prefix: prefix,
        caller,
        created_at,
        expires_at,
        status: SessionStatus::parse(&status)?,
        go_status,
        tenants: serde_json::from_str(&tenants).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        subject_hash,
    }))
}

/// Moves a session from `from` to `to`; false when it was not in `from` (someone else
/// claimed it, or it is finished): the compare-and-set that makes completion happen once.
pub fn transition(
    db: &mut dyn Sql,
    id: &str,
    from: SessionStatus,
    to: SessionStatus,
    go_status: Option<&str>,
    tenants: &[String],
) -> Result<bool, StoreError> {
    let finished = matches!(to, SessionStatus::Completed | SessionStatus::Failed);
    let n = db.execute(
        "UPDATE onboarding_sessions SET status = ?3, go_status = COALESCE(CAST(?4 AS TEXT), go_status),
             completed_at = CASE WHEN ?5 = 1 THEN ?6 ELSE completed_at END,
             tenants = CASE WHEN ?5 = 1 THEN ?7 ELSE tenants END
         WHERE onboarding_id = ?1 AND status = ?2",
        args![
            id,
            from.as_str(),
            to.as_str(),
            go_status,
            i64::from(finished),
            now_ms(),
            serde_json::to_string(tenants).unwrap_or_else(|_| "[]".into())
        ],
    )?;
    Ok(n == 1)
}
