//! The vault's integrations: per Go environment, the application key, the base URL that
//! receives every client key, and the subscription keys, two of them as Go's gateway issues
//! them (go-api.md, "Keys"): a primary and a secondary, both valid at once, sharing one
//! rate-limit budget. The vault sends one (the active slot) and can switch to the other,
//! which is how a subscription key is rotated without downtime:
//! set the secondary, switch to it, regenerate the primary in Go's portal, set the primary.
//!
//! Each key is sealed together with the application key and base URL it may be used with
//! (`SubscriptionKey::seal_bound` in `crypto::sealing`), so a row edited to send keys to another host does not open. The
//! primary's sealed row has the environment as owner (as before there were two), the
//! secondary's `<environment>:secondary` (`store::integrations::secret_owner`).
//!
//! Every write passes the commit gate, as all vault writes do (module docs of `vault`).

use super::{Gate, Vault, VaultError};
use crate::crypto::{ClientKey, KeyHint, Purpose, SealContext, SubscriptionKey};
use crate::domain::{BaseUrl, InvalidInput};
use crate::domain::{Environment, SubscriptionKeySlot};
use crate::store::changes::{Change, announce};
use crate::store::integrations::{self, IntegrationRecord, secret_owner};
use crate::store::now_ms;
use crate::store::secrets::{self, SecretRef};

/// What `set_integration` or `set_secondary_subscription_key` is about to commit: the row
/// it replaces, if any, the new one, and which slot's key changed.
#[derive(Debug, Clone)]
pub struct IntegrationChange {
    pub previous: Option<IntegrationRecord>,
    pub current: IntegrationRecord,
    /// The slot whose key was set.
    pub slot: SubscriptionKeySlot,
    /// A secondary key destroyed because the application key or base URL changed (it
    /// belonged to the old subscription).
    pub dropped_secondary: bool,
}

impl IntegrationChange {
    /// What its audit record says: the host that receives keys (old and new), the
    /// application key, the changed key's slot, hint and version, the active slot, and
    /// whether a custom host was allowed. `how`: "with the CLI", "by dev mode", ...
    pub fn describe(&self, how: &str) -> String {
        let n = &self.current;
        let old = self.previous.as_ref().map_or_else(|| "none".to_owned(), |p| base_url_origin(&p.base_url));
        let custom = if is_go_base_url(&n.base_url) {
            String::new()
        } else {
            "; CUSTOM base URL allowed (--allow-custom-base-url): not PowerOffice Go".to_owned()
        };
        let dropped = if self.dropped_secondary {
            "; the secondary subscription key was destroyed (it belonged to the old application key or base URL)"
        } else {
            ""
        };
        let hint = n.hint_of(self.slot).map_or_else(|| "-".to_owned(), KeyHint::to_string);
        let version = n.version_of(self.slot).unwrap_or(0);
        format!(
            "{} integration set {how}: base URL host {old} -> {}, application key {}, {} subscription key {hint} \
             (version {version}), active slot {}{dropped}{custom}",
            n.environment,
            base_url_origin(&n.base_url),
            n.application_key,
            self.slot,
            n.active_slot
        )
    }
}

/// What `use_subscription_key` is about to commit: the vault switches the key it sends.
#[derive(Debug, Clone)]
pub struct SubscriptionKeySwitch {
    pub environment: Environment,
    pub from: SubscriptionKeySlot,
    pub to: SubscriptionKeySlot,
    /// The hint and version of the key now sent.
    pub to_hint: KeyHint,
    pub to_version: i64,
}

impl SubscriptionKeySwitch {
    /// What its audit record says; `why`: "by the operator with the CLI", "automatically:
    /// ...".
    pub fn describe(&self, why: &str) -> String {
        format!(
            "{} subscription key switched from the {} to the {} key {} (version {}) {why}",
            self.environment, self.from, self.to, self.to_hint, self.to_version
        )
    }
}

/// The integration as the broker saw it when the other key worked: the switch is made only
/// if it is still so (the active slot and both keys' versions), so a key set meanwhile is
/// never activated untried, and two requests that both saw the old key fail switch once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchIf {
    pub from: SubscriptionKeySlot,
    pub from_version: i64,
    pub to_version: i64,
}

/// Everything a caller of `integration set` gives (the primary slot).
#[derive(Debug)]
pub struct IntegrationInput {
    pub environment: Environment,
    pub application_key: String,
    pub base_url: String,
    pub subscription_key: SubscriptionKey,
    /// Accept a base URL that is not PowerOffice Go's own (the simulator, tests). The
    /// base URL receives every client key of the environment: the audit record says when
    /// this was used.
    pub allow_custom_base_url: bool,
}

impl Vault {
    /// Stores (or replaces) an environment's integration with its primary subscription key:
    /// a new key version, the old one destroyed. The secondary key and the active slot stay,
    /// unless the application key or base URL changed: then the secondary belonged to the
    /// old subscription and is destroyed, and the primary is active.
    pub fn set_integration(
        &self,
        input: &IntegrationInput,
        gate: Gate<'_, IntegrationChange>,
    ) -> Result<IntegrationRecord, VaultError> {
        validate_application_key(&input.application_key)?;
        let base_url = BaseUrl::parse_field("base_url", &input.base_url)?;
        if !input.allow_custom_base_url && !base_url.is_go() {
            return Err(InvalidInput::new(
                "base_url",
                format!(
                    "{base_url} is not PowerOffice Go's ({GO_HOST}, or {GO_HOST}/Demo); it would receive every client key, \
                     so another host needs --allow-custom-base-url (for the simulator and tests), which the audit log records"
                ),
            )
            .into());
        }
        let base_url = base_url.into_string();
        let env = input.environment;
        let application_key = input.application_key.trim().to_owned();
        let slot = SubscriptionKeySlot::Primary;
        let mut store = self.store();
        let mut tx = store.write_tx()?;
        let previous = integrations::get(&mut tx, env)?;
        // Another application key or base URL is another subscription: its secondary key
        // goes. Not while that secondary is the key in use: that would silently send a key
        // nobody tried; switch to the primary first.
        let new_subscription =
            |p: &IntegrationRecord| !p.application_key.eq_ignore_ascii_case(&application_key) || p.base_url != base_url;
        if let Some(p) =
            previous.as_ref().filter(|p| p.active_slot == SubscriptionKeySlot::Secondary && new_subscription(p))
        {
            let field = if p.base_url != base_url { "base_url" } else { "application_key" };
            return Err(InvalidInput::new(
                field,
                format!(
                    "differs from the {env} integration's ({}) while its secondary key is the one in use: give the same value to \
                     replace only the primary key, or switch to the primary first (`integration use primary`)",
                    if field == "base_url" { base_url_origin(&p.base_url) } else { p.application_key.clone() }
                ),
            )
            .into());
        }
        let version = integrations::next_version(&mut tx, env, slot)?;
        let r = SecretRef { purpose: Purpose::SubscriptionKey, owner: secret_owner(env, slot), version };
        self.seal_subscription_key(&mut tx, &r, &application_key, &base_url, &input.subscription_key)?;
        let now = now_ms();
        let rec = IntegrationRecord {
            environment: env,
            application_key: application_key.clone(),
            base_url: base_url.clone(),
            subscription_key_version: version,
            subscription_key_hint: input.subscription_key.hint(),
            secondary_key_version: None,
            secondary_key_hint: None,
            active_slot: slot,
            created_at: now,
            updated_at: now,
        };
        integrations::upsert(&mut tx, &rec)?;
        let mut destroyed = secrets::delete_other_versions(&mut tx, r.purpose, &r.owner, version)?;
        let dropped_secondary =
            previous.as_ref().is_some_and(|p| p.secondary_key_version.is_some() && new_subscription(p));
        if dropped_secondary {
            let owner = secret_owner(env, SubscriptionKeySlot::Secondary);
            destroyed += secrets::delete_all(&mut tx, r.purpose, &owner)?;
            integrations::set_secondary(&mut tx, env, None)?;
            integrations::set_active(&mut tx, env, SubscriptionKeySlot::Primary)?;
        }
        let current = integrations::get(&mut tx, env)?.unwrap_or(rec);
        announce(&mut tx, &Change::Integration(env.as_str().to_owned()))?;
        gate.record(&IntegrationChange { previous, current: current.clone(), slot, dropped_secondary })?;
        tx.commit()?;
        if destroyed > 0 {
            store.checkpoint_truncate()?;
        }
        Ok(current)
    }

    /// Stores (or replaces) the secondary subscription key of an environment's integration:
    /// the other key of the same subscription, so it is bound to the integration's
    /// application key and base URL. The active slot does not change
    /// ([`Vault::use_subscription_key`] switches).
    pub fn set_secondary_subscription_key(
        &self,
        env: Environment,
        key: &SubscriptionKey,
        gate: Gate<'_, IntegrationChange>,
    ) -> Result<IntegrationRecord, VaultError> {
        let slot = SubscriptionKeySlot::Secondary;
        let mut store = self.store();
        let mut tx = store.write_tx()?;
        let Some(previous) = integrations::get(&mut tx, env)? else {
            return Err(InvalidInput::new(
                "slot",
                format!(
                    "the {env} integration is not set: set it with its primary key first (`integration set --environment {env}`); \
                     the secondary is the other key of the same subscription"
                ),
            )
            .into());
        };
        // The subscription's *other* key: the primary again would leave no second key.
        let primary = self.open_subscription_key_in_tx(&mut tx, &previous, SubscriptionKeySlot::Primary)?;
        if primary.same_as(key) {
            return Err(InvalidInput::new(
                "subscription_key",
                "is the primary key: the secondary slot takes the subscription's other key (Go's portal shows both)",
            )
            .into());
        }
        let version = integrations::next_version(&mut tx, env, slot)?;
        let r = SecretRef { purpose: Purpose::SubscriptionKey, owner: secret_owner(env, slot), version };
        self.seal_subscription_key(&mut tx, &r, &previous.application_key, &previous.base_url, key)?;
        integrations::set_secondary(&mut tx, env, Some((version, &key.hint())))?;
        let destroyed = secrets::delete_other_versions(&mut tx, r.purpose, &r.owner, version)?;
        let current = integrations::get(&mut tx, env)?.ok_or_else(|| VaultError::Integrity {
            what: format!("{env} integration (vanished during its own update)"),
        })?;
        announce(&mut tx, &Change::Integration(env.as_str().to_owned()))?;
        gate.record(&IntegrationChange {
            previous: Some(previous),
            current: current.clone(),
            slot,
            dropped_secondary: false,
        })?;
        tx.commit()?;
        if destroyed > 0 {
            store.checkpoint_truncate()?;
        }
        Ok(current)
    }

    /// Makes `slot` the key the vault sends for `env`. With `only_if`, switches only while
    /// the integration is as the caller saw it ([`SwitchIf`]: the broker's automatic switch).
    /// Returns the integration and whether it changed; no change, no record. The slot's key
    /// must be set and open.
    pub fn use_subscription_key(
        &self,
        env: Environment,
        slot: SubscriptionKeySlot,
        only_if: Option<SwitchIf>,
        gate: Gate<'_, SubscriptionKeySwitch>,
    ) -> Result<(IntegrationRecord, bool), VaultError> {
        let mut store = self.store();
        let mut tx = store.write_tx()?;
        let Some(rec) = integrations::get(&mut tx, env)? else {
            return Err(InvalidInput::new(
                "environment",
                format!("the {env} integration is not set (`integration set --environment {env}`)"),
            )
            .into());
        };
        let unchanged = |c: SwitchIf| {
            c.from == rec.active_slot
                && rec.version_of(c.from) == Some(c.from_version)
                && rec.version_of(c.from.other()) == Some(c.to_version)
        };
        if rec.active_slot == slot || only_if.is_some_and(|c| !unchanged(c)) {
            return Ok((rec, false));
        }
        let (Some(version), Some(hint)) = (rec.version_of(slot), rec.hint_of(slot).cloned()) else {
            return Err(InvalidInput::new(
                "slot",
                format!(
                    "the {env} integration has no {slot} subscription key: set it first (`integration set --environment {env} --slot {slot}`)"
                ),
            )
            .into());
        };
        // Refuse a switch to a key that does not open: better the old key than none.
        drop(self.open_subscription_key_in_tx(&mut tx, &rec, slot)?);
        integrations::set_active(&mut tx, env, slot)?;
        let current = integrations::get(&mut tx, env)?.unwrap_or(rec.clone());
        announce(&mut tx, &Change::Integration(env.as_str().to_owned()))?;
        gate.record(&SubscriptionKeySwitch {
            environment: env,
            from: rec.active_slot,
            to: slot,
            to_hint: hint,
            to_version: version,
        })?;
        tx.commit()?;
        Ok((current, true))
    }

    pub fn integration(&self, env: Environment) -> Result<Option<IntegrationRecord>, VaultError> {
        Ok(integrations::get(self.store().db()?, env)?)
    }

    pub fn integrations(&self) -> Result<Vec<IntegrationRecord>, VaultError> {
        Ok(integrations::list(self.store().db()?)?)
    }

    /// Opens the key of the integration's active slot (for the upstream client and, where
    /// the configuration allows, `GetAccessToken` responses).
    pub fn open_subscription_key(&self, rec: &IntegrationRecord) -> Result<SubscriptionKey, VaultError> {
        self.open_subscription_key_in(rec, rec.active_slot)
    }

    /// Opens the key of one slot; `Ok(None)`-like absence is an input error naming the slot.
    pub fn open_subscription_key_in(
        &self,
        rec: &IntegrationRecord,
        slot: SubscriptionKeySlot,
    ) -> Result<SubscriptionKey, VaultError> {
        let mut store = self.store();
        self.open_subscription_key_in_tx(store.db()?, rec, slot)
    }

    fn open_subscription_key_in_tx(
        &self,
        conn: &mut dyn crate::store::Sql,
        rec: &IntegrationRecord,
        slot: SubscriptionKeySlot,
    ) -> Result<SubscriptionKey, VaultError> {
        let env = rec.environment;
        let Some(version) = rec.version_of(slot) else {
            return Err(
                InvalidInput::new("slot", format!("the {env} integration has no {slot} subscription key")).into()
            );
        };
        let r = SecretRef { purpose: Purpose::SubscriptionKey, owner: secret_owner(env, slot), version };
        let what = format!("{env} integration's {slot} key (edited outside pogo-vault?)");
        // The application key and base URL are sealed with the subscription key: a row
        // edited to send keys to another host or application does not open.
        let (app, url) = (rec.application_key.as_str(), rec.base_url.as_str());
        self.open_in(conn, &r, &what, &|kek, ctx, sealed| SubscriptionKey::open_bound(kek, ctx, sealed, app, url))
    }

    fn seal_subscription_key(
        &self,
        conn: &mut dyn crate::store::Sql,
        r: &SecretRef,
        application_key: &str,
        base_url: &str,
        key: &SubscriptionKey,
    ) -> Result<(), VaultError> {
        let kek = self.kek();
        super::keys::check_kek_current(conn, &kek)?;
        let sealed = key
            .seal_bound(&kek, &SealContext::new(r.purpose, &r.owner, r.version), application_key, base_url)
            .map_err(VaultError::sealing)?;
        secrets::put(conn, r, &sealed, kek.id())?;
        Ok(())
    }
}

/// Go application keys are GUIDs.
fn validate_application_key(s: &str) -> Result<(), InvalidInput> {
    // Reuse the GUID rule of client keys; an application key is not secret, but the
    // error must still not echo it (it may be a pasted client key by mistake).
    ClientKey::parse_field("application_key", s).map(|_| ())
}

pub use crate::domain::base_url::GO_HOST;

/// True for Go's production or demo base URL (see [`BaseUrl::is_go`]).
pub fn is_go_base_url(base_url: &str) -> bool {
    crate::domain::base_url::is_go(base_url)
}

/// The scheme, host and port of a base URL, for audit records and warnings.
pub fn base_url_origin(base_url: &str) -> String {
    crate::domain::base_url::origin(base_url)
}

/// A base URL checked by [`BaseUrl::parse_field`], as the text stored.
pub fn validate_base_url(s: &str) -> Result<String, InvalidInput> {
    BaseUrl::parse_field("base_url", s).map(BaseUrl::into_string)
}
