//! `TenantService`: registration (validated against Go unless skipped), rotation, reads,
//! status changes and deletion. Every handler: parse → authorize on the tenant → act →
//! audit → answer. Client keys arrive here and go straight into sealing; they are never
//! logged, echoed or returned.

use std::sync::Arc;

use base64::Engine;
use tonic::{Request, Response, Status};

use super::{Caller, Extra, ServerState, errors, timestamp_ms};
use crate::audit::{Action, Outcome};
use crate::authz::Role;
use crate::crypto::ClientKey;
use crate::domain::{
    DisplayName, Environment, InvalidInput, Labels, OrganizationNumber, TenantId, TenantStatus, quoted,
};
use crate::proto::v1 as pb;
use crate::proto::v1::tenant_service_server::TenantService;
use crate::store::tenants::TenantRecord;
use crate::usecase::RegistryError;
use crate::vault::NewTenant;

pub struct TenantSvc {
    pub state: Arc<ServerState>,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;

impl TenantSvc {
    /// Parses the tenant id and checks the caller may administer it, auditing a refusal
    /// under `action`. Same refusal whether or not the tenant exists.
    async fn admit(&self, caller: &Caller, action: Action, raw: &str) -> Result<TenantId, Status> {
        let st = &self.state;
        let tenant = match TenantId::parse_field("tenant_id", raw) {
            Ok(t) => t,
            Err(e) => {
                st.record(caller, action, None, Outcome::Denied, "invalid tenant_id", Extra::default()).await?;
                return Err(errors::invalid(&e));
            }
        };
        if !st.authz.policy().allows(&caller.identity.id, Role::TenantAdmin, &tenant) {
            st.record(
                caller,
                action,
                Some(&tenant),
                Outcome::Denied,
                "caller not granted tenant-admin on tenant",
                Extra::default(),
            )
            .await?;
            return Err(errors::permission_denied(Role::TenantAdmin));
        }
        Ok(tenant)
    }

    /// Audits a failed action and returns its status. While the audit log is failing (a
    /// refused commit gate turned it unhealthy) nothing can be recorded: `UNAVAILABLE` at
    /// once, rather than a second wait for a record that cannot be written.
    async fn failed(&self, caller: &Caller, action: Action, tenant: &TenantId, status: Status) -> Status {
        self.state.refused(caller, action, Some(tenant), errors::outcome_of(&status), status).await
    }

    /// A registry operation that did not happen: recorded unless no decision was made.
    async fn registry_failed(&self, caller: &Caller, action: Action, tenant: &TenantId, e: RegistryError) -> Status {
        let status = errors::registry(&e);
        if !e.recorded() {
            return status;
        }
        self.failed(caller, action, tenant, status).await
    }

    fn view(&self, t: &TenantRecord) -> pb::Tenant {
        to_proto(t, self.state.registry.last_token_at(t))
    }

    /// Status changes share one shape.
    async fn set_status(
        &self,
        caller: Caller,
        action: Action,
        raw: &str,
        status: TenantStatus,
    ) -> Result<pb::Tenant, Status> {
        let tenant = self.admit(&caller, action, raw).await?;
        self.state.audit_ready()?;
        match self.state.registry.set_status(&self.state.actor(&caller), &tenant, status).await {
            Ok(rec) => Ok(self.view(&rec)),
            Err(e) => Err(self.registry_failed(&caller, action, &tenant, e).await),
        }
    }
}

#[tonic::async_trait]
impl TenantService for TenantSvc {
    async fn register_client_key(
        &self,
        req: Request<pb::RegisterClientKeyRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = Caller::of(&req)?;
        let mut r = req.into_inner();
        let action = Action::KeyRegistered;
        let tenant = self.admit(&caller, action, &r.tenant_id).await?;
        self.state.audit_ready()?;
        let parsed = (|| -> Result<(NewTenant, ClientKey), InvalidInput> {
            let environment = Environment::parse_field("environment", &r.environment)?;
            let key = ClientKey::parse_field("client_key", &r.client_key)?;
            let new = NewTenant {
                tenant_id: tenant.clone(),
                environment,
                display_name: DisplayName::parse_field("display_name", &r.display_name)?,
                organization_number: (!r.organization_number.trim().is_empty())
                    .then(|| OrganizationNumber::parse_field("organization_number", &r.organization_number))
                    .transpose()?,
                go_client_id: None,
                labels: Labels::parse_field("labels", r.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))?,
            };
            Ok((new, key))
        })();
        // The key now lives only in its zeroizing type; wipe the request's copy.
        zeroize::Zeroize::zeroize(&mut r.client_key);
        let (new, key) = match parsed {
            Ok(p) => p,
            Err(e) => return Err(self.failed(&caller, action, &tenant, errors::invalid(&e)).await),
        };
        match self.state.registry.register(&self.state.actor(&caller), new, key, !r.skip_validation).await {
            Ok(rec) => Ok(Response::new(self.view(&rec))),
            Err(e) => Err(self.registry_failed(&caller, action, &tenant, e).await),
        }
    }

    async fn rotate_client_key(
        &self,
        req: Request<pb::RotateClientKeyRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = Caller::of(&req)?;
        let mut r = req.into_inner();
        let action = Action::KeyRotated;
        let tenant = self.admit(&caller, action, &r.tenant_id).await?;
        self.state.audit_ready()?;
        let parsed = ClientKey::parse_field("client_key", &r.client_key);
        zeroize::Zeroize::zeroize(&mut r.client_key);
        let key = match parsed {
            Ok(k) => k,
            Err(e) => return Err(self.failed(&caller, action, &tenant, errors::invalid(&e)).await),
        };
        match self.state.registry.rotate(&self.state.actor(&caller), &tenant, key).await {
            Ok(rec) => Ok(Response::new(self.view(&rec))),
            Err(e) => Err(self.registry_failed(&caller, action, &tenant, e).await),
        }
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let caller = Caller::of(&req)?;
        let action = Action::TenantRead;
        let tenant = self.admit(&caller, action, &req.get_ref().tenant_id).await?;
        match self.state.registry.get(&tenant).await {
            Ok(rec) => {
                self.state.record(&caller, action, Some(&tenant), Outcome::Ok, "get", Extra::default()).await?;
                Ok(Response::new(self.view(&rec)))
            }
            Err(e) => Err(self.registry_failed(&caller, action, &tenant, e).await),
        }
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let st = &self.state;
        let parsed = (|| -> Result<(Filter, Option<String>, usize), InvalidInput> {
            let filter = Filter::parse(&r.filter)?;
            let after = decode_page_token(&r.page_token)?;
            let size = match r.page_size as usize {
                0 => DEFAULT_PAGE,
                n if n > MAX_PAGE => return Err(InvalidInput::new("page_size", format!("must be at most {MAX_PAGE}"))),
                n => n,
            };
            Ok((filter, after, size))
        })();
        let (filter, after, size) = match parsed {
            Ok(p) => p,
            Err(e) => {
                st.record(&caller, Action::TenantRead, None, Outcome::Denied, &e.to_string(), Extra::default()).await?;
                return Err(errors::invalid(&e));
            }
        };
        let policy = st.authz.policy();
        let who = caller.identity.id.clone();
        // Only the id ranges the caller's grants could cover (`acme-*`: ids from `acme-`
        // up to `acme-` + U+10FFFF), in id order, each read through the primary-key index;
        // a grant like `*` or `a*b` is one range of every id. Each row is still checked
        // against the policy and the filter. The page token is the last id scanned, so
        // hidden tenants never leak through it, and it resumes inside or after any range.
        let ranges = policy.tenant_ranges(&who, Role::TenantAdmin);
        let admits = |t: &TenantRecord| policy.allows(&who, Role::TenantAdmin, &t.tenant_id) && filter.admits(t);
        let page = match st.registry.list(ranges, after, size, admits).await {
            Ok(p) => p,
            Err(e) => return Err(errors::registry(&e)),
        };
        let out: Vec<pb::Tenant> = page.tenants.iter().map(|t| self.view(t)).collect();
        let next = page.next_after.map(|t| encode_page_token(t.as_str())).unwrap_or_default();
        // How many rows the scan read: what a scoped admin costs the store (issue 13).
        let detail = format!("list: {} tenants, {} rows read", out.len(), page.rows_read);
        st.record(&caller, Action::TenantRead, None, Outcome::Ok, &detail, Extra::default()).await?;
        Ok(Response::new(pb::ListTenantsResponse { tenants: out, next_page_token: next }))
    }

    async fn delete_tenant(
        &self,
        req: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let caller = Caller::of(&req)?;
        let action = Action::TenantDeleted;
        let tenant = self.admit(&caller, action, &req.get_ref().tenant_id).await?;
        self.state.audit_ready()?;
        match self.state.registry.delete(&self.state.actor(&caller), &tenant).await {
            Ok(()) => Ok(Response::new(pb::DeleteTenantResponse {})),
            Err(e) => Err(self.registry_failed(&caller, action, &tenant, e).await),
        }
    }

    async fn disable_tenant(&self, req: Request<pb::DisableTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().tenant_id;
        Ok(Response::new(self.set_status(caller, Action::TenantDisabled, &raw, TenantStatus::Disabled).await?))
    }

    async fn enable_tenant(&self, req: Request<pb::EnableTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let caller = Caller::of(&req)?;
        let raw = req.into_inner().tenant_id;
        Ok(Response::new(self.set_status(caller, Action::TenantEnabled, &raw, TenantStatus::Active).await?))
    }
}

pub fn to_proto(t: &TenantRecord, last_token_ms: Option<i64>) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.tenant_id.to_string(),
        environment: t.environment.to_string(),
        display_name: t.display_name.to_string(),
        organization_number: t.organization_number.as_ref().map(|o| o.to_string()).unwrap_or_default(),
        status: match t.status {
            TenantStatus::Active => pb::TenantStatus::Active,
            TenantStatus::Disabled => pb::TenantStatus::Disabled,
            TenantStatus::KeyRejected => pb::TenantStatus::KeyRejected,
        } as i32,
        client_key_hint: t.key_hint.to_string(),
        key_version: t.key_version,
        labels: t.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        created_at: Some(timestamp_ms(t.created_at)),
        updated_at: Some(timestamp_ms(t.updated_at)),
        last_token_at: last_token_ms.map(timestamp_ms),
        go_client_id: t.go_client_id.clone().unwrap_or_default(),
        client_key_fingerprint: t.key_fingerprint.to_string(),
    }
}

/// `environment=demo status=ACTIVE label.team=ap prefix=acme-`: all terms must match.
#[derive(Debug, Default)]
struct Filter {
    environment: Option<Environment>,
    status: Option<TenantStatus>,
    labels: Vec<(String, String)>,
    prefix: Option<String>,
}

impl Filter {
    fn parse(s: &str) -> Result<Filter, InvalidInput> {
        let mut f = Filter::default();
        for term in s.split_whitespace() {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| InvalidInput::new("filter", format!("term {} is not key=value", quoted(term))))?;
            match k {
                "environment" => f.environment = Some(Environment::parse_field("filter", v)?),
                "status" => {
                    f.status = Some(
                        v.parse().map_err(|_| InvalidInput::new("filter", format!("unknown status {}", quoted(v))))?,
                    )
                }
                "prefix" => f.prefix = Some(v.to_owned()),
                k if k.starts_with("label.") => f.labels.push((k["label.".len()..].to_owned(), v.to_owned())),
                _ => {
                    return Err(InvalidInput::new(
                        "filter",
                        format!("unknown key {}; use environment, status, prefix or label.<key>", quoted(k)),
                    ));
                }
            }
        }
        Ok(f)
    }

    fn admits(&self, t: &TenantRecord) -> bool {
        self.environment.is_none_or(|e| e == t.environment)
            && self.status.is_none_or(|s| s == t.status)
            && self.prefix.as_deref().is_none_or(|p| t.tenant_id.as_str().starts_with(p))
            && self.labels.iter().all(|(k, v)| t.labels.as_map().get(k) == Some(v))
    }
}

fn encode_page_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{last}"))
}

fn decode_page_token(s: &str) -> Result<Option<String>, InvalidInput> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || InvalidInput::new("page_token", "not a page token from this server; start again without it");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let last = text.strip_prefix("v1:").ok_or_else(bad)?;
    TenantId::parse_field("page_token", last).map_err(|_| bad())?;
    Ok(Some(last.to_owned()))
}

/// Issue 13, fuzzing the parsers: the ListTenants page token and filter never panic, and
/// their errors name the field without repeating the input.
#[cfg(test)]
mod fuzz {
    use base64::Engine;
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz_support::{check_named, config, text};

    fn filter_text() -> BoxedStrategy<String> {
        let term = prop_oneof![
            "(environment|status|prefix|label\\.[a-z]{1,6}|[a-z.]{1,12})=[A-Za-z0-9_-]{0,30}",
            "environment=(demo|production|prod|staging)|status=(ACTIVE|DISABLED|KEY_REJECTED|gone)",
            "[0-9a-f-]{36}",
            text(),
        ];
        proptest::collection::vec(term, 0..5).prop_map(|ts| ts.join(" ")).boxed()
    }

    fn page_token() -> BoxedStrategy<String> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        prop_oneof![
            "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|id| encode_page_token(&id)),
            text().prop_map(move |t| b64(format!("v1:{t}").as_bytes())),
            proptest::collection::vec(any::<u8>(), 0..80).prop_map(move |b| b64(&b)),
            text(),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn list_filter(s in filter_text()) {
            if let Err(e) = Filter::parse(&s) {
                check_named(&e.to_string(), e.field, "filter", &s)?;
            }
        }

        #[test]
        fn list_page_token(s in page_token()) {
            match decode_page_token(&s) {
                Ok(None) => prop_assert!(s.is_empty()),
                Ok(Some(last)) => {
                    prop_assert!(last.parse::<TenantId>().is_ok());
                    prop_assert_eq!(decode_page_token(&encode_page_token(&last)), Ok(Some(last)));
                }
                Err(e) => check_named(&e.to_string(), e.field, "page_token", &s)?,
            }
        }
    }
}
