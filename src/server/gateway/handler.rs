//! One gateway request, in the gate's order (`server/layer.rs`): the connection's caller, a
//! request id, the caller's request budget, its certificate still accepted after any
//! reload, its open requests under their bound, the URL parsed, the policy on the exact
//! tenant, method and path (before any lookup: a refusal looks the same whether the tenant
//! exists or not), the body's declared size (a small body read in bounded time); then the
//! use case (`usecase::gateway`) in a task of its own, so a caller that goes away cannot cut
//! it between sending to Go and recording the answer; its answer or error mapped here.
//! Every refusal is recorded (`api_denied`) before it is answered, except budget refusals,
//! which are counted into one record per caller per second as for tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::options::{Gateway, GatewayOptions, Running};
use super::request::{self, Target};
use super::respond::{self, GwBody, Problem};
use crate::audit::{Action, Outcome};
use crate::domain::TenantId;
use crate::server::conn::ConnInfo;
use crate::usecase::gateway::refusal_record;
use crate::usecase::gateway_body::{Meter, Metered, ReadAhead, read_ahead};
use crate::usecase::{Admission, ApiCaller, ApiRequest, Asker, OutgoingBody};

/// Serves one request; never fails (every error is an answer).
pub async fn handle(gw: Arc<Gateway>, conn: ConnInfo, req: http::Request<Incoming>) -> Response<GwBody> {
    let started = Instant::now();
    let request_id = crate::server::layer::new_request_id();
    // The method is the caller's text until checked: only a forwarded one names the span.
    let method = crate::domain::ApiMethod::parse_field("method", req.method().as_str()).map_or("other", |m| m.as_str());
    let span = tracing::info_span!(
        "gateway",
        otel.name = %format!("gateway {method}"),
        otel.kind = "server",
        request_id = %request_id,
        caller = %conn.identity.id,
        http.request.method = method,
    );
    crate::telemetry::continue_trace(&span, req.headers());
    let (response, label) = tracing::Instrument::instrument(serve(&gw, &conn, &request_id, req), span).await;
    let metrics = &gw.state.metrics;
    metrics.gateway_requests.inc(label);
    metrics.gateway_latency.observe(started.elapsed());
    response
}

/// The request's answer and its metric label.
async fn serve(
    gw: &Gateway,
    conn: &ConnInfo,
    request_id: &str,
    req: http::Request<Incoming>,
) -> (Response<GwBody>, &'static str) {
    let st = &gw.state;
    let refuse = |p: Problem| (p.response(request_id), p.label);
    let who = ApiCaller {
        identity: conn.identity.id.clone(),
        serial: conn.identity.serial.clone(),
        peer: conn.peer_text.to_string(),
        request_id: request_id.to_owned(),
        share: None,
    };
    // The caller's request budget, shared with its GetAccessToken requests: a runaway
    // costs a lookup, and its refusals one record a second.
    let (policy, generation) = st.authz.current();
    let asker = Asker { identity: &who.identity, serial: &who.serial, peer: &who.peer, request_id };
    let rate = || policy.requests_per_second(&who.identity).unwrap_or(st.caller_requests_per_second);
    if let Admission::Refused { retry_after } = st.budgets.admit(asker, generation, rate, Instant::now()) {
        return refuse(respond::over_budget(retry_after));
    }
    // A connection made before a certificate/CRL reload is checked again.
    if !st.tls.still_valid(conn) {
        let p = respond::certificate_no_longer_accepted();
        let detail = "certificate no longer accepted (revoked, or its CA removed)".to_owned();
        return refused(gw, &who, None, p, detail, request_id).await;
    }
    let open = match gw.open.open(&who.identity) {
        Ok(open) => open,
        Err((whose, limit)) => {
            let p = respond::too_many_open(whose, limit);
            let detail = p.detail.clone();
            return refused(gw, &who, None, p, detail, request_id).await;
        }
    };
    let (parts, body) = req.into_parts();
    let target = match request::parse_target(&parts.method, &parts.uri) {
        Ok(t) => t,
        Err(e) => {
            let tenant = request::parse_tenant(&parts.uri).ok().map(|(t, _)| t);
            // The path is the caller's text: only the error's own (bounded) quote of it.
            let detail = format!("{}: {e}", parts.method);
            return refused(gw, &who, tenant.as_ref(), respond::invalid(&e), detail, request_id).await;
        }
    };
    let what = format!("{} {}", target.method.as_str(), target.path.as_sent());
    let Some(share) = policy.api_grant(&who.identity, &target.tenant, target.method.as_str(), target.path.lower())
    else {
        let detail = format!("{what}: caller not granted api on tenant for this method and path");
        return refused(gw, &who, Some(&target.tenant), respond::denied(), detail, request_id).await;
    };
    let who = ApiCaller { share, ..who };
    let declared = body.size_hint().exact();
    let limit = gw.opts.max_request_bytes;
    if declared.is_some_and(|n| n > limit) {
        let detail =
            format!("{what}: body of {} bytes above gateway.max_request_bytes ({limit})", declared.unwrap_or(0));
        return refused(gw, &who, Some(&target.tenant), respond::body_too_large(limit), detail, request_id).await;
    }
    let headers = request::forwarded_headers(&parts.headers);
    let (outgoing, sent) = match outgoing_body(body, declared, &gw.opts).await {
        Ok(b) => b,
        Err(p) => {
            let detail = format!("{what}: {}", p.detail);
            return refused(gw, &who, Some(&target.tenant), p, detail, request_id).await;
        }
    };
    let Target { tenant, method, path, query } = target;
    let gone = Arc::new(AtomicBool::new(false));
    let api = ApiRequest { tenant, method, path, query, headers, body: outgoing, sent, caller_gone: gone.clone() };
    // In a task of its own: dropping this future (the caller went away) must not cut the
    // use case between Go's answer and its record. The task holds the request's place among
    // the open ones, and tells the use case if the caller left (it then sends nothing more).
    let mark = MarkGone(Some(gone));
    let use_case = gw.api.clone();
    let running = Running::start(&gw.tasks);
    let asked = who.clone();
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _running = running;
        (use_case.forward(&asked, api).await, open)
    }));
    let joined = task.await;
    mark.disarm();
    let (forwarded, open) = match joined {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "ALARM: a gateway request's task failed; Go may have acted on it unrecorded");
            let mut rec = refusal_record(&who, None, Outcome::Error, "the gateway's task failed (a bug)".into());
            rec.action = Action::ApiAnswered;
            let _ = st.audit.append_receipt(rec).await;
            return refuse(respond::from_error(&crate::usecase::GatewayError::SentUnrecorded));
        }
    };
    match forwarded {
        Ok(answer) => {
            st.metrics.gateway_queue_wait.observe(answer.queue_wait);
            // The request stays counted among the open ones until its answer has streamed.
            let body = answer.body.map_frame(move |f| {
                let _held = &open;
                f
            });
            let mut r = Response::new(body.boxed_unsync());
            *r.status_mut() = answer.status;
            *r.headers_mut() = request::answer_headers(&answer.headers);
            respond::set_request_id(&mut r, request_id);
            (r, respond::status_class(answer.status))
        }
        Err(e) => {
            tracing::info!(error = %e, "gateway request not answered by Go");
            refuse(respond::from_error(&e))
        }
    }
}

/// The request body as the use case sends it: read whole when it is declared small enough
/// to keep for a retry (or empty), else streamed through a [`Metered`] body.
async fn outgoing_body(
    body: Incoming,
    declared: Option<u64>,
    opts: &GatewayOptions,
) -> Result<(OutgoingBody, Arc<Meter>), Problem> {
    let meter = Arc::new(Meter::default());
    let metered = Metered::new(body, meter.clone(), opts.max_request_bytes);
    if metered.is_end_stream() {
        return Ok((OutgoingBody::Kept(Bytes::new()), meter));
    }
    if declared.is_some_and(|n| n <= opts.replay_body_bytes) {
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, read_ahead(metered, opts.replay_body_bytes as usize));
        let Ok(read) = read.await else {
            return Err(respond::body_too_slow());
        };
        return match read {
            Ok(ReadAhead::Complete(b)) => Ok((OutgoingBody::Kept(b), meter)),
            // More than it declared: hyper refuses that before we see it; be safe anyway.
            Ok(ReadAhead::Partial { .. }) | Err(_) if meter.over_limit() => {
                Err(respond::body_too_large(opts.max_request_bytes))
            }
            Ok(ReadAhead::Partial { .. }) | Err(_) => Err(respond::invalid(&crate::domain::InvalidInput::new(
                "body",
                "ended early or was longer than its Content-Length",
            ))),
        };
    }
    Ok((OutgoingBody::Streamed(reqwest::Body::wrap(metered)), meter))
}

/// How long a small (kept) request body may take to arrive: it is at most
/// `gateway.replay_body_bytes`, and a caller that trickles it holds an open request.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sets the flag when dropped armed: the handler's future was dropped (the caller went
/// away) before the use case's task came back.
struct MarkGone(Option<Arc<AtomicBool>>);

impl MarkGone {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for MarkGone {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Records a refusal (`api_denied`) and answers it; 503 if it cannot be recorded.
async fn refused(
    gw: &Gateway,
    who: &ApiCaller,
    tenant: Option<&TenantId>,
    problem: Problem,
    detail: String,
    request_id: &str,
) -> (Response<GwBody>, &'static str) {
    tracing::info!(reason = %problem.detail, "gateway request refused");
    let rec = refusal_record(who, tenant, Outcome::Denied, detail);
    let answer = match gw.state.audit.append_receipt(rec).await {
        Ok(_) => problem,
        Err(e) => {
            tracing::error!(error = %e, "audit record not committed: gateway request refused (fail closed)");
            respond::audit_unavailable()
        }
    };
    (answer.response(request_id), answer.label)
}
