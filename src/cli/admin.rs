//! Operator commands that work on the database file directly: `init`, `integration`,
//! `tenant`, `rotate-kek`, and the standalone simulator.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{ChangeDbArgs, GlobalArgs, VaultDbArgs};
use super::connect::{ThroughServer, through_server};
use super::db::{ForChange, change_error, lock_for_change, unlock, unlock_for_change};
use super::error::CliError;
use super::operator::Operator;
use super::output::{self, IntegrationView, TenantView};
use super::runtime::{StopSignals, runtime};
use crate::audit::{Action, Outcome};
use crate::crypto::{ClientKey, MasterKeySource, SubscriptionKey};
use crate::domain::{
    DisplayName, Environment, Labels, OrganizationNumber, SubscriptionKeySlot, TenantId, TenantStatus,
};
use crate::store::tenants::TenantRecord;
use crate::vault::{
    Argon2Costs, InitKey, IntegrationChange, IntegrationInput, KekRotation, KeyChange, NewTenant,
    SubscriptionKeySwitch, Vault,
};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Create a new master key file (32 random bytes, mode 0600) and use it. Refuses to
    /// overwrite an existing file.
    #[arg(long, value_name = "FILE")]
    pub generate_master_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub argon2: Argon2Args,
    #[command(flatten)]
    pub db: VaultDbArgs,
}

/// Argon2id costs, used when the master key comes from a passphrase.
#[derive(Debug, Args, Clone, Copy)]
pub struct Argon2Args {
    /// Argon2id memory in KiB (default 65536 = 64 MiB).
    #[arg(long, default_value_t = crate::crypto::Argon2Params::DEFAULT_MEMORY_KIB)]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    #[arg(long, default_value_t = crate::crypto::Argon2Params::DEFAULT_ITERATIONS)]
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    #[arg(long, default_value_t = crate::crypto::Argon2Params::DEFAULT_PARALLELISM)]
    pub argon2_parallelism: u32,
}

impl From<Argon2Args> for Argon2Costs {
    fn from(a: Argon2Args) -> Self {
        Argon2Costs {
            memory_kib: a.argon2_memory_kib,
            iterations: a.argon2_iterations,
            parallelism: a.argon2_parallelism,
        }
    }
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum IntegrationCommand {
    /// Set an environment's application key, subscription key (read from standard input)
    /// and Go base URL; or, with `--slot secondary`, the other key of the same subscription.
    Set {
        /// `demo` or `production`.
        #[arg(long)]
        environment: String,
        /// The integration's application key (a GUID; not secret). Needed for the primary
        /// slot; the secondary key uses the integration's.
        #[arg(long)]
        application_key: Option<String>,
        /// Go's base URL; defaults to PowerOffice's for the environment.
        #[arg(long)]
        base_url: Option<String>,
        /// Which of the subscription's two keys this is: `primary` (the default) or
        /// `secondary`. Setting a key does not change which one the vault sends (`integration use`).
        #[arg(long, default_value = "primary")]
        slot: String,
        /// Accept a base URL outside PowerOffice Go's own hosts (the simulator, tests). That
        /// host receives every client key of the environment; the audit record says so.
        #[arg(long)]
        allow_custom_base_url: bool,
        #[command(flatten)]
        remote: ThroughServer,
    },
    /// Switch the subscription key the vault sends to `primary` or `secondary` (the middle
    /// step of a rotation; see the README). The slot's key must be set.
    Use {
        /// `primary` or `secondary`.
        slot: String,
        /// `demo` or `production`.
        #[arg(long)]
        environment: String,
        #[command(flatten)]
        remote: ThroughServer,
    },
    /// List the configured integrations (subscription-key hints only).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: VaultDbArgs,
    },
}

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

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NewKeyArgs {
    /// Use this existing master key file as the new key.
    #[arg(long, value_name = "FILE")]
    pub new_master_key_file: Option<PathBuf>,
    /// Create a new master key file (mode 0600) and use it.
    #[arg(long, value_name = "FILE")]
    pub generate_new_master_key_file: Option<PathBuf>,
    /// File holding the new master passphrase.
    #[arg(long, value_name = "FILE")]
    pub new_master_passphrase_file: Option<PathBuf>,
    /// Environment variable holding the new master passphrase.
    #[arg(long, value_name = "VAR")]
    pub new_master_passphrase_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct RotateKekArgs {
    #[command(flatten)]
    pub new: NewKeyArgs,
    #[command(flatten)]
    pub remote: ThroughServer,
    #[command(flatten)]
    pub argon2: Argon2Args,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free one; the banner shows it).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Also accept this onboarding redirect URI, in both environments (only its scheme,
    /// host, port and path count). Loopback URIs are always accepted. Repeat for more.
    #[arg(long = "redirect-uri", value_name = "URL")]
    pub redirect_uris: Vec<String>,
}

pub fn init(g: &GlobalArgs, a: InitArgs) -> Result<(), CliError> {
    let source = g.master.source_opt()?;
    let init_key = match (a.generate_master_key_file, source) {
        (Some(p), None) => InitKey::GenerateKeyFile(p),
        (None, Some(s)) => InitKey::Existing(s),
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "--generate-master-key-file cannot be combined with another master key option",
            ));
        }
        (None, None) => {
            return Err(CliError::usage(
                "no master key given: pass --generate-master-key-file FILE (new key file), --master-key-file FILE, \
                 --master-passphrase-file FILE or --master-passphrase-env VAR",
            ));
        }
    };
    let _lock = lock_for_change(&g.db)?;
    let vault = Vault::init(&g.db, &init_key, a.argon2.into())?;
    outln!("initialised {} (master key id {})", g.db.display(), vault.kek_id())?;
    if let InitKey::GenerateKeyFile(p) = &init_key {
        outln!("master key written to {} (mode 0600)", p.display())?;
    }
    outln!("keep the master key safe and apart from backups of the database: without it nothing in the vault opens")?;
    Ok(())
}

/// What `integration set` and `integration use` print (hints only).
fn integration_line(
    env: &str,
    application_key: &str,
    base_url: &str,
    primary: (&str, i64),
    secondary: Option<(&str, i64)>,
    active: &str,
) -> String {
    let secondary = secondary.map_or_else(|| "none".to_owned(), |(h, v)| format!("{h} (v{v})"));
    format!(
        "{env:<11} application key {application_key}  primary key {} (v{})  secondary key {secondary}  active {active}  {base_url}",
        primary.0, primary.1
    )
}

fn print_integration(i: &crate::store::integrations::IntegrationRecord) -> Result<(), CliError> {
    let secondary = i.secondary_key_hint.as_ref().map(|h| h.as_str()).zip(i.secondary_key_version);
    outln!(
        "{}",
        integration_line(
            i.environment.as_str(),
            &i.application_key,
            &i.base_url,
            (i.subscription_key_hint.as_str(), i.subscription_key_version),
            secondary,
            i.active_slot.as_str()
        )
    )
}

fn print_remote_integration(i: &crate::proto::v1::Integration) -> Result<(), CliError> {
    let secondary =
        (!i.secondary_key_hint.is_empty()).then_some((i.secondary_key_hint.as_str(), i.secondary_key_version));
    outln!(
        "{}",
        integration_line(
            &i.environment,
            &i.application_key,
            &i.base_url,
            (&i.subscription_key_hint, i.subscription_key_version),
            secondary,
            &i.active_slot
        )
    )
}

pub fn integration(g: &GlobalArgs, c: IntegrationCommand) -> Result<(), CliError> {
    match c {
        IntegrationCommand::Set { environment, application_key, base_url, slot, allow_custom_base_url, remote } => {
            let environment = Environment::parse_field("environment", &environment)?;
            let slot = SubscriptionKeySlot::parse_field("slot", &slot)?;
            if slot == SubscriptionKeySlot::Primary && application_key.is_none() {
                return Err(CliError::usage(
                    "--application-key is needed for the primary key (the secondary uses the integration's)",
                ));
            }
            if let Some(conn) = remote.connect_args()? {
                let secret = output::read_secret("subscription key (input hidden): ")?;
                let req = crate::proto::v1::SetIntegrationRequest {
                    environment: environment.to_string(),
                    application_key: application_key.unwrap_or_default(),
                    base_url: base_url.unwrap_or_default(),
                    subscription_key: secret.to_string(),
                    allow_custom_base_url,
                    slot: slot.to_string(),
                };
                let rec = through_server(conn, async move |mut c| c.set_integration(req).await)?;
                outln!("{slot} subscription key set through {}:", remote.endpoint.as_deref().unwrap_or_default())?;
                print_remote_integration(&rec)?;
                return Ok(());
            }
            if slot == SubscriptionKeySlot::Secondary {
                let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
                let Some(current) = vault.integration(environment)? else {
                    return Err(CliError::new(format!(
                        "slot: the {environment} integration is not set: set it with its primary key first"
                    )));
                };
                if application_key.as_deref().is_some_and(|a| !a.trim().eq_ignore_ascii_case(&current.application_key))
                    || base_url.as_deref().is_some_and(|u| u.trim().trim_end_matches('/') != current.base_url)
                {
                    return Err(CliError::new(
                        "the secondary key belongs to the integration's subscription: leave out --application-key and \
                         --base-url, or change the integration with --slot primary",
                    ));
                }
                let secret = output::read_secret("secondary subscription key (input hidden): ")?;
                let key = SubscriptionKey::parse(&secret)?;
                let gate = op.gate(g.audit_db(), &akey, |op, c: &IntegrationChange| {
                    vec![op.record(Action::IntegrationSet, Outcome::Ok, c.describe("with the CLI"))]
                });
                let rec =
                    vault.set_secondary_subscription_key(environment, &key, &gate).map_err(|e| change_error(g, e))?;
                outln!("secondary subscription key set (the vault sends the {} key):", rec.active_slot)?;
                print_integration(&rec)?;
                return Ok(());
            }
            let application_key = application_key.unwrap_or_default();
            let base_url = base_url.unwrap_or_else(|| environment.default_base_url().to_owned());
            // Checked before the key is read, so a refused URL costs no paste.
            let checked = crate::vault::validate_base_url(&base_url)?;
            if !allow_custom_base_url && !crate::vault::is_go_base_url(&checked) {
                return Err(CliError::new(format!(
                    "base_url: {checked} is not PowerOffice Go's ({}, or {}/Demo); it would receive every client key, \
                     so another host needs --allow-custom-base-url (for the simulator and tests), which the audit log records",
                    crate::vault::GO_HOST,
                    crate::vault::GO_HOST
                )));
            }
            let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
            let secret = output::read_secret("subscription key (input hidden): ")?;
            let subscription_key = SubscriptionKey::parse(&secret)?;
            let gate = op.gate(g.audit_db(), &akey, |op, c: &IntegrationChange| {
                vec![op.record(Action::IntegrationSet, Outcome::Ok, c.describe("with the CLI"))]
            });
            let rec = vault
                .set_integration(
                    &IntegrationInput {
                        environment,
                        application_key,
                        base_url,
                        subscription_key,
                        allow_custom_base_url,
                    },
                    &gate,
                )
                .map_err(|e| change_error(g, e))?;
            outln!("integration {} set:", rec.environment)?;
            print_integration(&rec)?;
            Ok(())
        }
        IntegrationCommand::Use { slot, environment, remote } => {
            let environment = Environment::parse_field("environment", &environment)?;
            let slot = SubscriptionKeySlot::parse_field("slot", &slot)?;
            if let Some(conn) = remote.connect_args()? {
                let req = crate::proto::v1::UseSubscriptionKeyRequest {
                    environment: environment.to_string(),
                    slot: slot.to_string(),
                };
                let rec = through_server(conn, async move |mut c| c.use_subscription_key(req).await)?;
                outln!("the {environment} integration sends the {} subscription key now:", rec.active_slot)?;
                print_remote_integration(&rec)?;
                return Ok(());
            }
            let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
            let gate = op.gate(g.audit_db(), &akey, |op, s: &SubscriptionKeySwitch| {
                vec![op.record(Action::SubscriptionKeySwitched, Outcome::Ok, s.describe("by an operator with the CLI"))]
            });
            let (rec, changed) =
                vault.use_subscription_key(environment, slot, None, &gate).map_err(|e| change_error(g, e))?;
            if changed {
                outln!("the {environment} integration sends the {slot} subscription key now:")?;
            } else {
                outln!("the {environment} integration already sends the {slot} subscription key; nothing changed:")?;
            }
            print_integration(&rec)?;
            Ok(())
        }
        IntegrationCommand::List { json, .. } => {
            let vault = unlock(g)?;
            let records = vault.integrations()?;
            if json {
                let list: Vec<IntegrationView> = records.iter().map(IntegrationView::from).collect();
                return output::print_json(&list);
            }
            if records.is_empty() {
                return outln!(
                    "no integration set yet; set one with `pogo-vault integration set --environment demo|production --application-key KEY < subscription.key`"
                );
            }
            for i in &records {
                print_integration(i)?;
            }
            Ok(())
        }
    }
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

pub fn rotate_kek(g: &GlobalArgs, a: RotateKekArgs) -> Result<(), CliError> {
    let n = a.new;
    if let Some(conn) = a.remote.connect_args()? {
        // The key file is on the server's host: absolute paths only.
        let (path, generate) = match (n.new_master_key_file, n.generate_new_master_key_file) {
            (Some(p), None) => (p, false),
            (None, Some(p)) => (p, true),
            _ => {
                return Err(CliError::usage(
                    "through --endpoint the new key is a key file on the server's host: \
                     --new-master-key-file or --generate-new-master-key-file",
                ));
            }
        };
        if generate {
            return Err(CliError::usage(
                "through --endpoint the new key must already be on the server's host: provision it there \
                 (32 random bytes, mode 0600) and pass --new-master-key-file with its absolute path",
            ));
        }
        if !path.is_absolute() {
            return Err(CliError::usage(
                "--new-master-key-file: through --endpoint the path is on the server's host; give it absolute",
            ));
        }
        let req = crate::proto::v1::RotateKekRequest { new_master_key_file: path.display().to_string(), generate };
        let r = through_server(conn, async move |mut c| c.rotate_kek(req).await)?;
        outln!(
            "master key rotated through {}: {} -> {}; {} data keys rewrapped; the server uses the new key now. \
             Before its next restart point its master key source (vault.master_key_file, POGO_VAULT_MASTER_KEY_FILE \
             or the systemd credential) at {}: the old key no longer opens the database",
            a.remote.endpoint.as_deref().unwrap_or_default(),
            r.old_kek_id,
            r.new_kek_id,
            r.rewrapped,
            path.display()
        )?;
        return Ok(());
    }
    let new = if let Some(p) = n.new_master_key_file {
        InitKey::Existing(MasterKeySource::KeyFile(p))
    } else if let Some(p) = n.generate_new_master_key_file {
        InitKey::GenerateKeyFile(p)
    } else if let Some(p) = n.new_master_passphrase_file {
        InitKey::Existing(MasterKeySource::PassphraseFile(p))
    } else if let Some(v) = n.new_master_passphrase_env {
        InitKey::Existing(MasterKeySource::PassphraseEnv(v))
    } else {
        return Err(CliError::usage("give the new master key"));
    };
    let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
    let gate = op.gate(g.audit_db(), &akey, |op, r: &KekRotation| {
        let detail = format!("master key {} -> {}: {} data keys rewrapped", r.old_kek_id, r.new_kek_id, r.rewrapped);
        vec![op.record(Action::KekRotated, Outcome::Ok, detail)]
    });
    let r = vault.rotate_kek(&new, a.argon2.into(), &gate).map_err(|e| change_error(g, e))?;
    outln!(
        "master key rotated: {} -> {}; {} data keys rewrapped; the old master key no longer opens this database",
        r.old_kek_id,
        r.new_kek_id,
        r.rewrapped
    )?;
    Ok(())
}

/// `backup`: its record is durable in the audit database before anything is copied (so the
/// audit copy holds it); a record that cannot be written means no backup.
pub fn backup(g: &GlobalArgs, out: &std::path::Path) -> Result<(), CliError> {
    // No database lock: a backup reads, so it runs beside a server (its record is an
    // append to the audit log, which serialises with the server's writer).
    let akey = unlock(g)?.audit_signing_key()?;
    let op = Operator::current();
    let audit_db = g.audit_db();
    let record = || {
        let rec = op.record(Action::BackupTaken, Outcome::Ok, format!("backup to {}", out.display()));
        crate::audit::AuditLog::append_blocking_once(&audit_db, &akey, rec).map(|_| ()).map_err(|e| e.to_string())
    };
    let r = crate::backup::backup(&g.db, &audit_db, out, record).map_err(|e| CliError::new(e.to_string()))?;
    outln!(
        "backup written: {} (vault: {} tenants) and {} (audit: {} events); the master key is not inside: keep it apart",
        r.files.vault.display(),
        r.tenants,
        r.files.audit.display(),
        r.audit_events
    )?;
    Ok(())
}

/// `restore`: the restored audit database receives the restore's record (signed with the
/// restored vault's key, so the master key is needed) before either file is put in place.
pub fn restore(g: &GlobalArgs, from: &std::path::Path) -> Result<(), CliError> {
    let source = g.master.source()?;
    // The lock file lives beside the database: a new place is made (0700) first.
    crate::backup::create_missing_dirs(&[&g.db, &g.audit_db()]).map_err(|e| CliError::new(e.to_string()))?;
    let _lock = lock_for_change(&g.db)?;
    let op = Operator::current();
    let record = |staged_db: &std::path::Path, staged_audit: &std::path::Path| {
        let vault = Vault::unlock(staged_db, &source).map_err(|e| e.to_string())?;
        let akey = vault.audit_signing_key().map_err(|e| e.to_string())?;
        let detail = format!("restored from {} into {}", from.display(), g.db.display());
        let rec = op.record(Action::Restored, Outcome::Ok, detail);
        crate::audit::AuditLog::append_blocking_once(staged_audit, &akey, rec).map(|_| ()).map_err(|e| e.to_string())
    };
    let r = crate::backup::restore(from, &g.db, &g.audit_db(), record).map_err(|e| CliError::new(e.to_string()))?;
    outln!(
        "restored {} tenants into {} and {} audit events into {}; start with the same master key, then run `audit verify`",
        r.tenants,
        g.db.display(),
        r.audit_events,
        g.audit_db().display()
    )?;
    Ok(())
}

/// `pogo-vault sim`: a simulated Go with the demo clients, until Ctrl-C or SIGTERM. Its
/// banner (standard output) holds what a newcomer pastes: base URLs, the application key,
/// the subscription keys and the demo client keys, all fixed public demo values.
pub fn sim(a: SimArgs) -> Result<(), CliError> {
    use crate::sim::{DEFAULT_APPLICATION_KEY, DEMO_CLIENTS, SimConfig};
    let mut config = SimConfig { loopback_redirects: true, ..SimConfig::default() };
    for uri in &a.redirect_uris {
        config.redirect_uris.extend(Environment::ALL.iter().map(|env| (*env, uri.clone())));
    }
    runtime()?.block_on(async move {
        let stop = StopSignals::listen();
        let sim = crate::sim::start(a.listen, config).await.map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::InvalidInput { "--redirect-uri" } else { "--listen" };
            CliError::new(format!("{what}: the simulator cannot start on {}: {e}", a.listen))
        })?;
        sim.add_demo_clients();
        let banner = (|| {
            outln!(
                "simulated PowerOffice Go on {} (fixed, public demo values: they work nowhere but in a simulator)",
                sim.addr()
            )?;
            outln!("  demo base URL:               {}", sim.base_url(Environment::Demo))?;
            outln!("  production base URL:         {}", sim.base_url(Environment::Production))?;
            outln!("  application key:             {DEFAULT_APPLICATION_KEY}")?;
            outln!("  demo subscription key:       {}", crate::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY)?;
            outln!("    and its secondary:         {}", crate::sim::DEFAULT_DEMO_SECONDARY_SUBSCRIPTION_KEY)?;
            outln!("  production subscription key: {}", crate::sim::DEFAULT_PRODUCTION_SUBSCRIPTION_KEY)?;
            outln!("    and its secondary:         {}", crate::sim::DEFAULT_PRODUCTION_SECONDARY_SUBSCRIPTION_KEY)?;
            outln!("  demo clients (client key, organization number, name):")?;
            for c in DEMO_CLIENTS {
                let note = if c.onboarding { " (the approving user's: an onboarding activates it)" } else { "" };
                outln!("    {}  {}  {}{note}", c.client_key, c.organization_number, c.name)?;
            }
            let extra: String = a.redirect_uris.iter().map(|u| format!(", {u}")).collect();
            outln!("  onboarding redirect URIs accepted: any loopback URI (http://127.0.0.1:PORT/PATH, http://localhost:PORT/PATH){extra}")?;
            outln!("ready; Ctrl-C stops it")
        })();
        if banner.is_ok() {
            tracing::info!(addr = %sim.addr(), "simulated PowerOffice Go ready");
            stop.wait().await;
        }
        sim.shutdown().await;
        banner
    })
}
