//! `OperatorService`: the operator changes that have no other way in while a server runs
//! (a writing CLI command is refused then, `store::lock`): master-key rotation and the
//! integrations. Role `operator`, checked by the gate layer (not tenant-scoped). Each change
//! passes the vault's commit gate: its record is durable before it commits.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Caller, Extra, ServerState, errors};
use crate::audit::{Action, Outcome};
use crate::crypto::{MasterKeySource, SubscriptionKey};
use crate::domain::{BaseUrl, Environment, InvalidInput, SubscriptionKeySlot};
use crate::proto::v1 as pb;
use crate::proto::v1::operator_service_server::OperatorService;
use crate::store::integrations::IntegrationRecord;
use crate::usecase::{Entry, IntegrationError};
use crate::vault::{Argon2Costs, InitKey, IntegrationInput, KekRotation};

pub struct OperatorSvc {
    pub state: Arc<ServerState>,
    /// Where this server's master key came from (named in the rotation's advice).
    pub master_key: MasterKeySource,
}

impl OperatorSvc {
    /// `SetIntegration` for the secondary slot: the other key of the integration's
    /// subscription, bound to its application key and base URL.
    async fn set_secondary(
        &self,
        caller: Caller,
        mut r: pb::SetIntegrationRequest,
    ) -> Result<Response<pb::Integration>, Status> {
        let action = Action::IntegrationSet;
        let parsed = (|| -> Result<(Environment, SubscriptionKey), InvalidInput> {
            let environment = Environment::parse_field("environment", &r.environment)?;
            let key = SubscriptionKey::parse_field("subscription_key", &r.subscription_key)?;
            Ok((environment, key))
        })();
        zeroize::Zeroize::zeroize(&mut r.subscription_key);
        let (env, key) = match parsed {
            Ok(p) => p,
            Err(e) => return Err(self.failed(&caller, action, errors::invalid(&e)).await),
        };
        // The secondary belongs to the integration's subscription: naming another
        // application key or host is a mistake, refused before anything is sealed.
        let actor = self.state.actor(&caller);
        match self.state.integrations.set_secondary(&actor, env, key, &r.application_key, &r.base_url).await {
            Ok(rec) => Ok(Response::new(view(&rec))),
            Err(e) => Err(self.integration_failed(&caller, action, e).await),
        }
    }

    /// An integration change that did not happen: recorded unless no decision was made
    /// (or its record is what failed).
    async fn integration_failed(&self, caller: &Caller, action: Action, e: IntegrationError) -> Status {
        let status = errors::integration(&e);
        if !e.recorded() {
            return status;
        }
        self.failed(caller, action, status).await
    }

    async fn failed(&self, caller: &Caller, action: Action, status: Status) -> Status {
        self.state.refused(caller, action, None, errors::outcome_of(&status), status).await
    }
}

/// The base URL receives every client key of the environment. Over the API (one `operator`
/// certificate) only PowerOffice Go's own hosts, or a loopback simulator, are accepted; any
/// other host is an action for the CLI on the vault's host with the server stopped
/// (`integration set --allow-custom-base-url`), so a stolen operator certificate cannot
/// send the keys elsewhere.
fn custom_base_url_allowed_over_api(i: &IntegrationInput) -> Result<(), InvalidInput> {
    let url = BaseUrl::parse_field("base_url", &i.base_url)?;
    if url.is_go() {
        return Ok(());
    }
    if i.allow_custom_base_url && url.is_loopback() {
        return Ok(());
    }
    Err(InvalidInput::new(
        "base_url",
        if i.allow_custom_base_url {
            "over the API a custom base URL may only be a loopback simulator; another host receives every client key, \
             so set it with `integration set --allow-custom-base-url` on the vault's host"
        } else {
            "is not PowerOffice Go's (https://goapi.poweroffice.net, or .../Demo); another host receives every client key"
        },
    ))
}

fn view(i: &IntegrationRecord) -> pb::Integration {
    pb::Integration {
        environment: i.environment.to_string(),
        application_key: i.application_key.clone(),
        base_url: i.base_url.clone(),
        subscription_key_hint: i.subscription_key_hint.to_string(),
        subscription_key_version: i.subscription_key_version,
        secondary_key_hint: i.secondary_key_hint.as_ref().map(ToString::to_string).unwrap_or_default(),
        secondary_key_version: i.secondary_key_version.unwrap_or(0),
        active_slot: i.active_slot.to_string(),
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorSvc {
    async fn rotate_kek(&self, req: Request<pb::RotateKekRequest>) -> Result<Response<pb::RotateKekResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let action = Action::KekRotated;
        self.state.audit_ready()?;
        let path = r.new_master_key_file.trim();
        if path.is_empty() || !path.starts_with('/') {
            let e =
                InvalidInput::new("new_master_key_file", "give the absolute path of a key file on the server's host");
            return Err(self.failed(&caller, action, errors::invalid(&e)).await);
        }
        // Over the API the new key must already be provisioned on the server's host (by whoever
        // deploys it, e.g. a second systemd credential): a key generated into a path of the
        // caller's choosing could land where the service cannot keep it (a private /tmp
        // removed at stop), and then nothing opens the vault.
        if r.generate {
            let e = InvalidInput::new(
                "generate",
                "not over the API: provision the new key file on the server's host first (32 random bytes, mode 0600) and name it",
            );
            return Err(self.failed(&caller, action, errors::invalid(&e)).await);
        }
        let path = PathBuf::from(path);
        let new = InitKey::Existing(MasterKeySource::KeyFile(path.clone()));
        let gate = crate::usecase::actor::gate(&self.state.actor(&caller), |k: &KekRotation| {
            let detail = format!(
                "master key {} -> {}: {} data keys rewrapped, through the API; the server uses the new key now",
                k.old_kek_id, k.new_kek_id, k.rewrapped
            );
            vec![Entry::ok(Action::KekRotated, detail)]
        });
        match self.state.vault_op(move |v| v.rotate_kek(&new, Argon2Costs::default(), &gate)).await {
            Ok(k) => {
                let was = match &self.master_key {
                    MasterKeySource::KeyFile(p) => format!("the key file {}", p.display()),
                    _ => "the passphrase".to_owned(),
                };
                tracing::warn!(
                    old_kek_id = %k.old_kek_id,
                    new_kek_id = %k.new_kek_id,
                    "master key rotated through the API: before the next restart point the server's master key source (vault.master_key_file, POGO_VAULT_MASTER_KEY_FILE, or the systemd credential) at {} ({was} no longer opens the database)",
                    path.display()
                );
                Ok(Response::new(pb::RotateKekResponse {
                    old_kek_id: k.old_kek_id,
                    new_kek_id: k.new_kek_id,
                    rewrapped: k.rewrapped as u64,
                }))
            }
            Err(s) => Err(self.failed(&caller, action, s).await),
        }
    }

    async fn set_integration(
        &self,
        req: Request<pb::SetIntegrationRequest>,
    ) -> Result<Response<pb::Integration>, Status> {
        let caller = Caller::of(&req)?;
        let mut r = req.into_inner();
        let action = Action::IntegrationSet;
        self.state.audit_ready()?;
        let slot = match r.slot.trim() {
            "" => Ok(SubscriptionKeySlot::Primary),
            s => SubscriptionKeySlot::parse_field("slot", s),
        };
        if let Ok(SubscriptionKeySlot::Secondary) = slot {
            return self.set_secondary(caller, r).await;
        }
        let parsed = (|| -> Result<IntegrationInput, InvalidInput> {
            slot?;
            let environment = Environment::parse_field("environment", &r.environment)?;
            let base_url = match r.base_url.trim() {
                "" => environment.default_base_url().to_owned(),
                u => u.to_owned(),
            };
            Ok(IntegrationInput {
                environment,
                application_key: r.application_key.trim().to_owned(),
                base_url,
                subscription_key: SubscriptionKey::parse_field("subscription_key", &r.subscription_key)?,
                allow_custom_base_url: r.allow_custom_base_url,
            })
        })();
        // The key now lives only in its zeroizing type; wipe the request's copy.
        zeroize::Zeroize::zeroize(&mut r.subscription_key);
        let input = match parsed.and_then(|i| custom_base_url_allowed_over_api(&i).map(|()| i)) {
            Ok(i) => i,
            Err(e) => return Err(self.failed(&caller, action, errors::invalid(&e)).await),
        };
        match self.state.integrations.set(&self.state.actor(&caller), input, "through the API").await {
            Ok(rec) => Ok(Response::new(view(&rec))),
            Err(e) => Err(self.integration_failed(&caller, action, e).await),
        }
    }

    async fn use_subscription_key(
        &self,
        req: Request<pb::UseSubscriptionKeyRequest>,
    ) -> Result<Response<pb::Integration>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let action = Action::SubscriptionKeySwitched;
        self.state.audit_ready()?;
        let parsed = Environment::parse_field("environment", &r.environment)
            .and_then(|e| Ok((e, SubscriptionKeySlot::parse_field("slot", &r.slot)?)));
        let (env, slot) = match parsed {
            Ok(p) => p,
            Err(e) => return Err(self.failed(&caller, action, errors::invalid(&e)).await),
        };
        // The key to be sent must be one Go's gateway accepts now: otherwise the vault would
        // switch back by itself at the first refusal, and the operator, believing the other
        // key idle, might regenerate the only one that works.
        match self.state.integrations.use_slot(&self.state.actor(&caller), env, slot).await {
            Ok(used) => Ok(Response::new(view(&used.record))),
            Err(e) => Err(self.integration_failed(&caller, action, e).await),
        }
    }

    async fn list_integrations(
        &self,
        req: Request<pb::ListIntegrationsRequest>,
    ) -> Result<Response<pb::ListIntegrationsResponse>, Status> {
        let caller = Caller::of(&req)?;
        let list = self.state.vault_op(|v| v.integrations()).await?;
        let detail = format!("list: {} integrations", list.len());
        self.state.record(&caller, Action::IntegrationRead, None, Outcome::Ok, &detail, Extra::default()).await?;
        Ok(Response::new(pb::ListIntegrationsResponse { integrations: list.iter().map(view).collect() }))
    }
}
