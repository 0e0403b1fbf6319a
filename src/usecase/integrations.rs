//! The integrations of the running vault: set an environment's application key, base URL
//! and primary subscription key; set the secondary key (first checked with Go's gateway);
//! switch which key is sent (the other first checked with the gateway). Each change goes
//! through the vault behind the actor's gate and then drops the broker's cached
//! integration, so the next request to Go uses what was just stored.

use std::sync::Arc;

use super::actor::{Actor, Entry, gate};
use super::blocking::{Blocking, on_vault};
use crate::audit::Action;
use crate::crypto::SubscriptionKey;
use crate::domain::{Environment, InvalidInput, SubscriptionKeySlot};
use crate::store::integrations::IntegrationRecord;
use crate::tokens::{Broker, BrokerError};
use crate::vault::{IntegrationChange, IntegrationInput, SubscriptionKeySwitch, Vault, VaultError};

/// Why an integration change did not happen. Nothing was changed in any case.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// Go's gateway refused the key, or could not be reached.
    #[error(transparent)]
    Go(#[from] BrokerError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("internal error; operators are alerted")]
    Internal,
    /// Reading the integration before a change failed: no decision was made, nothing to
    /// record.
    #[error(transparent)]
    Read(VaultError),
    /// The record of a switch that changed nothing could not be written.
    #[error("the audit log cannot be written right now")]
    AuditUnavailable,
}

impl IntegrationError {
    /// Whether the transport records this refusal (not a failed read before any decision,
    /// nor a record that could not be written).
    pub fn recorded(&self) -> bool {
        !matches!(self, IntegrationError::Read(_) | IntegrationError::AuditUnavailable)
    }
}

impl From<Blocking> for IntegrationError {
    fn from(e: Blocking) -> Self {
        e.into_error(IntegrationError::Vault, IntegrationError::Internal)
    }
}

/// What [`Integrations::use_slot`] did.
#[derive(Debug)]
pub struct SlotInUse {
    pub record: IntegrationRecord,
    /// False: the slot was already the one sent; nothing changed (recorded as such).
    pub changed: bool,
}

/// Integration changes over a vault and the broker whose integration cache they keep true.
#[derive(Clone, Debug)]
pub struct Integrations {
    vault: Arc<Vault>,
    broker: Broker,
}

impl Integrations {
    pub fn new(vault: Arc<Vault>, broker: Broker) -> Self {
        Self { vault, broker }
    }

    /// Sets an environment's integration (its primary key); `how` ends the record's detail.
    pub async fn set(
        &self,
        actor: &Arc<dyn Actor>,
        input: IntegrationInput,
        how: &'static str,
    ) -> Result<IntegrationRecord, IntegrationError> {
        let env = input.environment;
        let gate = gate(actor, move |change: &IntegrationChange| {
            vec![Entry::ok(Action::IntegrationSet, change.describe(how))]
        });
        // Dropped in the blocking task, whatever the caller does meanwhile (see `registry`).
        let broker = self.broker.clone();
        let rec = on_vault(&self.vault, move |v| {
            let r = v.set_integration(&input, &gate);
            broker.forget_integration(env);
            r
        })
        .await?;
        Ok(rec)
    }

    /// Sets the secondary subscription key, once Go's gateway accepted it. An application key
    /// or base URL given with it must be the integration's own (the secondary key belongs
    /// to the same subscription).
    pub async fn set_secondary(
        &self,
        actor: &Arc<dyn Actor>,
        env: Environment,
        key: SubscriptionKey,
        application_key: &str,
        base_url: &str,
    ) -> Result<IntegrationRecord, IntegrationError> {
        let current = on_vault(&self.vault, move |v| v.integration(env))
            .await
            .map_err(|e| e.into_error(IntegrationError::Read, IntegrationError::Internal))?;
        if let Some(cur) = current {
            let app = application_key.trim();
            let url = base_url.trim().trim_end_matches('/');
            let mismatch = if !app.is_empty() && !app.eq_ignore_ascii_case(&cur.application_key) {
                Some("application_key")
            } else if !url.is_empty() && url != cur.base_url {
                Some("base_url")
            } else {
                None
            };
            if let Some(field) = mismatch {
                return Err(InvalidInput::new(
                    field,
                    "the secondary key belongs to the integration's subscription: leave this empty, or change the integration with slot primary",
                )
                .into());
            }
        }
        self.broker.probe_subscription_key(env, &key).await?;
        let gate = gate(actor, move |change: &IntegrationChange| {
            vec![Entry::ok(Action::IntegrationSet, change.describe("through the API (Go's gateway accepted the key)"))]
        });
        let broker = self.broker.clone();
        let rec = on_vault(&self.vault, move |v| {
            let r = v.set_secondary_subscription_key(env, &key, &gate);
            broker.forget_integration(env);
            r
        })
        .await?;
        Ok(rec)
    }

    /// Makes `slot`'s key the one sent, once Go's gateway accepted it (a slot already in use
    /// is not probed, and changes nothing: that is recorded too).
    pub async fn use_slot(
        &self,
        actor: &Arc<dyn Actor>,
        env: Environment,
        slot: SubscriptionKeySlot,
    ) -> Result<SlotInUse, IntegrationError> {
        let (already, key) = on_vault(&self.vault, move |v| {
            let rec = v
                .integration(env)?
                .ok_or_else(|| InvalidInput::new("environment", format!("the {env} integration is not set")))?;
            Ok((rec.active_slot == slot, v.open_subscription_key_in(&rec, slot)?))
        })
        .await?;
        if !already {
            self.broker.probe_subscription_key(env, &key).await?;
        }
        drop(key);
        let gate = gate(actor, move |s: &SubscriptionKeySwitch| {
            let detail = s.describe("by an operator through the API (Go's gateway accepted the key)");
            vec![Entry::ok(Action::SubscriptionKeySwitched, detail)]
        });
        let broker = self.broker.clone();
        let (record, changed) = on_vault(&self.vault, move |v| {
            let r = v.use_subscription_key(env, slot, None, &gate);
            if !matches!(r, Ok((_, false))) {
                broker.forget_integration(env);
            }
            r
        })
        .await?;
        if !changed {
            let detail = format!("{env}: the {slot} subscription key is already the one sent; nothing changed");
            let entry = Entry::ok(Action::SubscriptionKeySwitched, detail);
            let actor = actor.clone();
            tokio::task::spawn_blocking(move || actor.record_durably(vec![entry]))
                .await
                .map_err(|_| IntegrationError::Internal)?
                .map_err(|_| IntegrationError::AuditUnavailable)?;
        }
        Ok(SlotInUse { record, changed })
    }

    pub async fn list(&self) -> Result<Vec<IntegrationRecord>, IntegrationError> {
        Ok(on_vault(&self.vault, |v| v.integrations()).await?)
    }
}
