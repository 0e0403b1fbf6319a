//! The gate every request passes, in this order (STYLE.md "one layered stack"):
//! 1. TLS identity: the connection's verified caller (set by `conn`), or refuse;
//! 2. request id: always a fresh one of ours, echoed on the response (`x-request-id`) and
//!    carried into every log line and audit record of the request. A caller's own
//!    `x-request-id`, when well-formed, is kept as `client_request_id` (in the log span and
//!    the audit record's detail) for correlation, never as the id we key on: a caller must
//!    not be able to make its requests collide with, or impersonate, another's;
//! 3. authorization, coarse: the method must be in the method→role map and the caller must
//!    hold its role on at least one tenant. Handlers then check the exact tenant, before
//!    any lookup, so a refusal never reveals whether a tenant exists.
//!
//! Refusals here are audited like any other decision.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::conn::ConnInfo;
use super::{Caller, ServerState, errors};
use crate::audit::Outcome;
use crate::authz::{Requirement, methods};
use crate::usecase::{Admission, Asker};

#[derive(Clone)]
pub struct GateLayer {
    pub state: Arc<ServerState>,
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, state: self.state.clone() }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    state: Arc<ServerState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The ready service is the one we were polled with; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let Some(conn) = req.extensions().get::<ConnInfo>().cloned() else {
                return Ok(errors::no_verified_caller().into_http());
            };
            let client_request_id: Option<Arc<str>> = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|s| {
                    (1..=64).contains(&s.len())
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
                .map(Arc::from);
            let request_id = new_request_id();
            let caller = Caller {
                identity: conn.identity.clone(),
                peer: conn.peer,
                peer_text: conn.peer_text.clone(),
                request_id: request_id.clone(),
                client_request_id: client_request_id.clone(),
            };
            let client_id = client_request_id.as_deref().unwrap_or("");
            let path = req.uri().path().to_owned();
            let method = methods::method(&path);
            // The request's span: every log line of the request carries its id, the caller and
            // the method; exported as the RPC's server span (`telemetry`), in the caller's
            // trace when it sent a `traceparent`.
            // A path that names no method of ours is the caller's text: not a span's name.
            let named = if method.is_some() { path.as_str() } else { "unknown" };
            let span = tracing::info_span!(
                "rpc",
                otel.name = %named.trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
                request_id = %request_id,
                client_request_id = %client_id,
                caller = %caller.identity.id,
                method = %named,
            );
            crate::telemetry::continue_trace(&span, req.headers());
            let gate = tracing::debug_span!(parent: &span, "gate", allowed = tracing::field::Empty);
            let denied = gate.in_scope(|| match method.map(|m| m.requirement) {
                // A connection made before a certificate/CRL reload is checked again: a
                // revoked caller must not keep using an open channel.
                _ if !state.tls.still_valid(&conn) => Some(errors::connection_no_longer_accepted()),
                None => Some(errors::method_not_served(&path)),
                Some(Requirement::Role(role)) if !state.authz.policy().has_role(&caller.identity.id, role) => {
                    Some(errors::permission_denied(role))
                }
                Some(_) => None,
            });
            gate.record("allowed", denied.is_none());
            if let Some(status) = denied {
                // A caller refused here in a loop (its grant gone, a wrong method) spends the
                // same per-caller budget as its GetAccessToken requests: beyond it, refusals
                // are counted into one record a second rather than one each.
                let (policy, generation) = state.authz.current();
                let asker = Asker {
                    identity: &caller.identity.id,
                    serial: &caller.identity.serial,
                    peer: &caller.peer_text,
                    request_id: &caller.request_id,
                };
                let rate =
                    || policy.requests_per_second(&caller.identity.id).unwrap_or(state.caller_requests_per_second);
                if let Admission::Refused { retry_after } =
                    state.budgets.admit(asker, generation, rate, std::time::Instant::now())
                {
                    let mut resp = errors::over_budget(retry_after).into_http();
                    set_request_id(&mut resp, &request_id);
                    return Ok(resp);
                }
                span.in_scope(|| tracing::info!(reason = %status.message(), "refused at the gate"));
                // Unknown methods are audited too, under the closest action there is.
                let action = method.and_then(|m| m.action).unwrap_or(crate::audit::Action::TenantRead);
                let detail = format!("{path}: {}", status.message());
                let record = state.record(&caller, action, None, Outcome::Denied, &detail, Default::default());
                let status = match tracing::Instrument::instrument(record, span).await {
                    Ok(()) => status,
                    Err(s) => s,
                };
                let mut resp = status.into_http();
                set_request_id(&mut resp, &request_id);
                return Ok(resp);
            }
            req.extensions_mut().insert(caller);
            let mut resp = tracing::Instrument::instrument(inner.call(req), span).await?;
            set_request_id(&mut resp, &request_id);
            Ok(resp)
        })
    }
}

fn set_request_id<B>(resp: &mut http::Response<B>, id: &str) {
    if let Ok(v) = http::HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

/// A request id: 32 hex digits, unique within the process and (by a random per-process
/// prefix) across restarts, without a system call per request. The low half is a counter
/// passed through a keyed bijection (the splitmix64 finaliser), so ids stay unique and do not
/// show the request count at a glance. Unique, not unpredictable: never use one where
/// guessing must be hard (the onboarding `state` is random bytes, see `onboarding_svc`).
pub fn new_request_id() -> String {
    static SEED: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let [prefix, key] = *SEED.get_or_init(|| {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            // Uniqueness across restarts is all that is needed: time and pid will do.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            b[..8].copy_from_slice(&(nanos.as_nanos() as u64).to_le_bytes());
            b[8..].copy_from_slice(
                &(u64::from(std::process::id()) << 32 | u64::from(nanos.subsec_nanos())).to_le_bytes(),
            );
        }
        let (p, k) = b.split_at(8);
        [u64::from_le_bytes(p.try_into().unwrap_or_default()), u64::from_le_bytes(k.try_into().unwrap_or_default())]
    });
    let mut z = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&prefix.to_be_bytes());
    b[8..].copy_from_slice(&z.to_be_bytes());
    crate::crypto::secret::hex(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_hex_and_share_the_process_prefix() {
        let ids: Vec<String> = (0..200_000).map(|_| new_request_id()).collect();
        let distinct: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        assert!(ids.iter().all(|id| id[..16] == ids[0][..16]), "one prefix per process");
        // Consecutive ids do not look consecutive: about half go up, half go down.
        let up = ids.windows(2).filter(|w| w[1] > w[0]).count() as f64 / (ids.len() - 1) as f64;
        assert!((0.45..0.55).contains(&up), "{up}");
    }
}
