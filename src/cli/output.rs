//! Reading secrets from standard input and printing records (hints only).

use std::io::{IsTerminal, Read};

use serde::Serialize;
use zeroize::Zeroizing;

use super::error::CliError;
use crate::store::integrations::IntegrationRecord;
use crate::store::tenants::TenantRecord;

/// The most a secret read from stdin may be; anything longer is not a key.
const MAX_SECRET_INPUT: u64 = 4096;

/// Reads one secret from standard input: without echo from a terminal (prompting on the
/// terminal), or the whole of a pipe. The buffer is zeroized when dropped.
pub fn read_secret(prompt: &str) -> Result<Zeroizing<String>, CliError> {
    if std::io::stdin().is_terminal() {
        let s = rpassword::prompt_password(prompt)
            .map_err(|e| CliError::new(format!("cannot read from the terminal: {}", e.kind())))?;
        return Ok(Zeroizing::new(s));
    }
    let mut buf = Zeroizing::new(String::new());
    std::io::stdin()
        .take(MAX_SECRET_INPUT + 1)
        .read_to_string(&mut buf)
        .map_err(|e| CliError::new(format!("cannot read standard input: {}", e.kind())))?;
    if buf.len() as u64 > MAX_SECRET_INPUT {
        return Err(CliError::new("standard input is too long to be a key"));
    }
    Ok(buf)
}

pub fn format_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A tenant as printed: what an admin may see.
#[derive(Debug, Serialize)]
pub struct TenantView {
    pub tenant_id: String,
    pub environment: String,
    pub display_name: String,
    pub organization_number: Option<String>,
    pub go_client_id: Option<String>,
    pub status: String,
    pub client_key_hint: String,
    pub key_fingerprint: String,
    pub key_version: i64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_token_at: Option<String>,
}

impl From<&TenantRecord> for TenantView {
    fn from(t: &TenantRecord) -> Self {
        Self {
            tenant_id: t.tenant_id.to_string(),
            environment: t.environment.to_string(),
            display_name: t.display_name.to_string(),
            organization_number: t.organization_number.as_ref().map(|o| o.to_string()),
            go_client_id: t.go_client_id.clone(),
            status: t.status.to_string(),
            client_key_hint: t.key_hint.to_string(),
            key_fingerprint: t.key_fingerprint.to_string(),
            key_version: t.key_version,
            labels: t.labels.as_map().clone(),
            created_at: format_time(t.created_at),
            updated_at: format_time(t.updated_at),
            last_token_at: t.last_token_at.map(format_time),
        }
    }
}

pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(value).map_err(|e| CliError::new(e.to_string()))?;
    outln!("{s}")?;
    Ok(())
}

pub fn print_tenant(t: &TenantRecord, json: bool) -> Result<(), CliError> {
    let v = TenantView::from(t);
    if json {
        return print_json(&v);
    }
    outln!("tenant:        {}", v.tenant_id)?;
    outln!("environment:   {}", v.environment)?;
    outln!("display name:  {}", v.display_name)?;
    outln!("organization:  {}", v.organization_number.as_deref().unwrap_or("-"))?;
    outln!("go client id:  {}", v.go_client_id.as_deref().unwrap_or("-"))?;
    outln!("status:        {}", v.status)?;
    outln!("client key:    {} (version {}, fingerprint {})", v.client_key_hint, v.key_version, v.key_fingerprint)?;
    let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    outln!("labels:        {}", if labels.is_empty() { "-".to_owned() } else { labels.join(", ") })?;
    outln!("created:       {}", v.created_at)?;
    outln!("updated:       {}", v.updated_at)?;
    outln!("last token:    {}", v.last_token_at.as_deref().unwrap_or("never"))?;
    Ok(())
}

/// The tenants as a table whose columns fit their widest value. Every cell is formatted to
/// a `String` first: a `Display` that writes with `write!` ignores the width, which is how
/// the rows once drifted away from the header.
pub fn print_tenant_table(ts: &[TenantRecord]) -> Result<(), CliError> {
    if ts.is_empty() {
        return outln!("no tenants yet; add one with `pogo-vault tenant add` or an onboarding");
    }
    let header = ["TENANT", "ENV", "STATUS", "KEY", "VER", "NAME"];
    let rows: Vec<[String; 6]> = ts
        .iter()
        .map(|t| {
            [
                t.tenant_id.to_string(),
                t.environment.to_string(),
                t.status.to_string(),
                t.key_hint.to_string(),
                t.key_version.to_string(),
                t.display_name.to_string(),
            ]
        })
        .collect();
    print_table(&header, &rows)
}

/// Left-aligned columns two spaces apart, each as wide as its widest cell (in characters).
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> Result<(), CliError> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            s.push_str(cell);
            if i + 1 < N {
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        // An empty last cell leaves the padding before it: trimmed.
        s.truncate(s.trim_end().len());
        s
    };
    outln!("{}", line(*header))?;
    for row in rows {
        outln!("{}", line(std::array::from_fn(|i| row[i].as_str())))?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct IntegrationView {
    pub environment: String,
    pub application_key: String,
    pub base_url: String,
    pub subscription_key_hint: String,
    pub subscription_key_version: i64,
    /// The secondary key's hint, when one is set.
    pub secondary_key_hint: Option<String>,
    pub secondary_key_version: Option<i64>,
    /// The key the vault sends: `primary` or `secondary`.
    pub active_slot: String,
    pub updated_at: String,
}

impl From<&IntegrationRecord> for IntegrationView {
    fn from(r: &IntegrationRecord) -> Self {
        Self {
            environment: r.environment.to_string(),
            application_key: r.application_key.clone(),
            base_url: r.base_url.clone(),
            subscription_key_hint: r.subscription_key_hint.to_string(),
            subscription_key_version: r.subscription_key_version,
            secondary_key_hint: r.secondary_key_hint.as_ref().map(ToString::to_string),
            secondary_key_version: r.secondary_key_version,
            active_slot: r.active_slot.to_string(),
            updated_at: format_time(r.updated_at),
        }
    }
}
