//! `pogo-vault integration set|use|list`: an environment's integration (application key,
//! Go base URL, the primary and secondary subscription keys, which of them the vault sends),
//! changed on the database files or, with `--endpoint`, through a running vault. Only
//! hints of the subscription keys are ever printed.

use clap::Subcommand;

use super::args::{GlobalArgs, VaultDbArgs};
use super::connect::{ThroughServer, through_server};
use super::db::{ForChange, change_error, unlock, unlock_for_change};
use super::error::CliError;
use super::output::{self, IntegrationView};
use crate::audit::{Action, Outcome};
use crate::crypto::SubscriptionKey;
use crate::domain::{Environment, SubscriptionKeySlot};
use crate::vault::{IntegrationChange, IntegrationInput, SubscriptionKeySwitch};

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
