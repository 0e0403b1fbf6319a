//! `pogo-vault tenant add|list|show|rotate-key|disable|enable|delete`: tenants and their
//! client keys, on the database files. A client key is read from standard input, never
//! from argv; only its hint is printed. Every change is recorded in the audit log before
//! it commits (`Operator::gate`).

use std::io::IsTerminal;

use clap::Subcommand;

use super::args::{ChangeDbArgs, GlobalArgs, VaultDbArgs};
use super::db::{ForChange, change_error, unlock, unlock_for_change};
use super::error::CliError;
use super::output::{self, TenantView};
use crate::audit::{Action, Outcome};
use crate::crypto::ClientKey;
use crate::domain::{DisplayName, Environment, Labels, OrganizationNumber, TenantId, TenantStatus};
use crate::store::tenants::TenantRecord;
use crate::vault::{KeyChange, NewTenant};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Register a tenant; its client key is read from standard input (no echo on a terminal).
    Add {
        /// 1 to 64 of a-z 0-9 - _ . starting with a letter or digit.
        #[arg(long)]
        tenant_id: String,
        /// `demo` or `production`: where the client key was issued.
        #[arg(long)]
        environment: String,
        /// A name to show in lists.
        #[arg(long)]
        display_name: Option<String>,
        /// The client's organization number (nine digits).
        #[arg(long)]
        organization_number: Option<String>,
        /// A label `key=value`; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// List tenants (key hints only).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: VaultDbArgs,
    },
    /// Show one tenant (key hint only).
    Show {
        /// The tenant to show.
        tenant_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: VaultDbArgs,
    },
    /// Replace a tenant's client key (new key from standard input); the old key is destroyed.
    RotateKey {
        /// The tenant whose key to replace.
        tenant_id: String,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// Stop minting tokens for a tenant.
    Disable {
        /// The tenant to disable.
        tenant_id: String,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// Resume minting tokens for a tenant.
    Enable {
        /// The tenant to enable.
        tenant_id: String,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// Delete a tenant and destroy its key.
    Delete {
        /// The tenant to delete.
        tenant_id: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
}

pub fn tenant(g: &GlobalArgs, c: TenantCommand) -> Result<(), CliError> {
    match c {
        TenantCommand::Add { tenant_id, environment, display_name, organization_number, labels, .. } => {
            // Everything from argv is checked, and the vault unlocked, before the key is read.
            let new = NewTenant {
                tenant_id: TenantId::parse_field("tenant_id", &tenant_id)?,
                environment: Environment::parse_field("environment", &environment)?,
                display_name: DisplayName::parse_field("display_name", display_name.as_deref().unwrap_or(""))?,
                organization_number: organization_number
                    .map(|o| OrganizationNumber::parse_field("organization_number", &o))
                    .transpose()?,
                go_client_id: None,
                labels: Labels::parse_assignments("label", &labels)?,
            };
            let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
            if vault.tenant(&new.tenant_id)?.is_some() {
                return Err(CliError::new(format!(
                    "tenant {} already exists; use `tenant rotate-key` to replace its key",
                    new.tenant_id
                )));
            }
            let secret = output::read_secret("client key (input hidden): ")?;
            let key = ClientKey::parse(&secret)?;
            let gate = op.gate(g.audit_db(), &akey, |op, t: &TenantRecord| {
                let detail = "registered with the CLI (not validated)";
                vec![
                    op.record(Action::KeyRegistered, Outcome::Ok, detail)
                        .tenant(t.tenant_id.to_string())
                        .key_version(t.key_version),
                ]
            });
            let rec = vault.add_tenant(&new, &key, &gate).map_err(|e| change_error(g, e))?;
            outln!("tenant {} added: client key {} (version {})", rec.tenant_id, rec.key_hint, rec.key_version)?;
            if vault.integration(rec.environment)?.is_none() {
                eprintln!(
                    "warning: no {} integration is set yet; tokens cannot be minted until `pogo-vault integration set --environment {}`",
                    rec.environment, rec.environment
                );
            }
            Ok(())
        }
        TenantCommand::List { json, .. } => {
            let vault = unlock(g)?;
            let mut all = Vec::new();
            loop {
                let after = all.last().map(|t: &crate::store::tenants::TenantRecord| t.tenant_id.to_string());
                let page = vault.list_tenants(after.as_deref(), 500)?;
                if page.is_empty() {
                    break;
                }
                all.extend(page);
            }
            if json {
                let views: Vec<TenantView> = all.iter().map(TenantView::from).collect();
                return output::print_json(&views);
            }
            output::print_tenant_table(&all)
        }
        TenantCommand::Show { tenant_id, json, .. } => {
            let id = TenantId::parse_field("tenant_id", &tenant_id)?;
            let vault = unlock(g)?;
            let rec = vault.tenant(&id)?.ok_or_else(|| CliError::new(format!("tenant {id} not found")))?;
            output::print_tenant(&rec, json)
        }
        TenantCommand::RotateKey { tenant_id, .. } => {
            let id = TenantId::parse_field("tenant_id", &tenant_id)?;
            let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
            let cur = vault.tenant(&id)?.ok_or_else(|| CliError::new(format!("tenant {id} not found")))?;
            let secret = output::read_secret("new client key (input hidden): ")?;
            let key = ClientKey::parse(&secret)?;
            let gate = op.gate(g.audit_db(), &akey, |op, k: &KeyChange| {
                let (new, old) = (k.current.key_version, k.previous.key_version);
                let detail = format!("key version {new} replaces {old} (destroyed), with the CLI");
                vec![
                    op.record(Action::KeyRotated, Outcome::Ok, detail)
                        .tenant(k.current.tenant_id.to_string())
                        .key_version(new),
                ]
            });
            let rec = vault.rotate_key(&id, &key, None, &gate).map_err(|e| change_error(g, e))?;
            outln!(
                "tenant {}: client key {} (version {}) replaces {} (version {}, destroyed)",
                rec.tenant_id,
                rec.key_hint,
                rec.key_version,
                cur.key_hint,
                cur.key_version
            )?;
            Ok(())
        }
        TenantCommand::Disable { tenant_id, .. } => set_status(g, &tenant_id, TenantStatus::Disabled),
        TenantCommand::Enable { tenant_id, .. } => set_status(g, &tenant_id, TenantStatus::Active),
        TenantCommand::Delete { tenant_id, yes, .. } => {
            let id = TenantId::parse_field("tenant_id", &tenant_id)?;
            let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
            if vault.tenant(&id)?.is_none() {
                return Err(CliError::new(format!("tenant {id} not found")));
            }
            if !yes {
                confirm(
                    &format!(
                        "Deleting tenant {id} destroys its client key for good; the customer must re-activate the integration to get a new one.\nType the tenant id to confirm: "
                    ),
                    id.as_str(),
                )?;
            }
            let gate = op.gate(g.audit_db(), &akey, |op, t: &TenantRecord| {
                let detail = "deleted with the CLI; client key destroyed";
                vec![
                    op.record(Action::TenantDeleted, Outcome::Ok, detail)
                        .tenant(t.tenant_id.to_string())
                        .key_version(t.key_version),
                ]
            });
            vault.delete_tenant(&id, &gate).map_err(|e| change_error(g, e))?;
            outln!("tenant {id} deleted; its client key is destroyed")?;
            Ok(())
        }
    }
}

fn set_status(g: &GlobalArgs, tenant_id: &str, status: TenantStatus) -> Result<(), CliError> {
    let id = TenantId::parse_field("tenant_id", tenant_id)?;
    let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
    let action = if status == TenantStatus::Disabled { Action::TenantDisabled } else { Action::TenantEnabled };
    let gate = op.gate(g.audit_db(), &akey, |op, t: &TenantRecord| {
        vec![op.record(action, Outcome::Ok, "with the CLI").tenant(t.tenant_id.to_string()).key_version(t.key_version)]
    });
    let rec = vault.set_status(&id, status, &gate).map_err(|e| change_error(g, e))?;
    outln!("tenant {} is {}", rec.tenant_id, rec.status)?;
    Ok(())
}

fn confirm(prompt: &str, expected: &str) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage("refusing to delete without confirmation: pass --yes"));
    }
    eprint!("{prompt}");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::new(format!("cannot read confirmation: {}", e.kind())))?;
    if line.trim() != expected {
        return Err(CliError::new("not confirmed; nothing deleted"));
    }
    Ok(())
}
