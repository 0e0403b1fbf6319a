//! `AuditService`: list, watch, checkpoint, verify. Role `audit`; every read is itself
//! audited (so the log shows who looked at it). `VerifyAuditLog` is strict like
//! `pogo-vault audit verify`: the server signs its head first (`AuditLog::verify`), so
//! only events appended while verifying can be unsigned, and those are reported, not
//! failed; `allow_unsigned_tail` downgrades an unsigned tail to a warning.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::conn::ConnInfo;
use super::{Caller, Extra, ServerState, errors, timestamp_ms};
use crate::audit::{Action, AuditEvent, AuditFilter, Checkpoint, Outcome};
use crate::authz::Role;
use crate::domain::{InvalidInput, quoted};
use crate::proto::v1 as pb;
use crate::proto::v1::audit_service_server::AuditService;

pub struct AuditSvc {
    pub state: Arc<ServerState>,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn unavailable(e: &crate::audit::AuditError) -> Status {
    tracing::warn!(error = %e, "audit read failed");
    errors::audit_unreadable()
}

pub fn event_to_proto(e: &AuditEvent) -> pb::AuditEvent {
    let r = &e.record;
    pb::AuditEvent {
        sequence: e.sequence,
        time: Some(timestamp_ms(e.time_ms)),
        caller: r.caller.clone(),
        action: r.action.as_str().to_owned(),
        tenant_id: r.tenant_id.clone().unwrap_or_default(),
        outcome: r.outcome.as_str().to_owned(),
        detail: r.detail.clone(),
        request_id: r.request_id.clone(),
        peer: r.peer.clone(),
        hash: crate::crypto::secret::hex(&e.hash),
        caller_serial: r.caller_serial.clone(),
        key_version: r.key_version.unwrap_or(0),
        upstream_status: r.upstream_status.map(u32::from).unwrap_or(0),
        token_fingerprint: r.token_fingerprint.clone().unwrap_or_default(),
    }
}

pub fn checkpoint_to_proto(c: &Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        sequence: c.sequence,
        head_hash: crate::crypto::secret::hex(&c.head_hash),
        time: Some(timestamp_ms(c.time_ms)),
        key_id: c.key_id.clone(),
        signature: base64::engine::general_purpose::STANDARD.encode(c.signature),
    }
}

fn checkpoint_from_proto(c: &pb::Checkpoint) -> Result<Checkpoint, InvalidInput> {
    let bad = |why: &str| InvalidInput::new("checkpoint", why.to_owned());
    if c.sequence < 0 {
        // As `Checkpoint::from_json` refuses it: no signed checkpoint has one.
        return Err(bad("sequence must not be negative"));
    }
    let hash = decode_hex32(&c.head_hash).ok_or_else(|| bad("head_hash must be 64 hex digits"))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(c.signature.trim())
        .ok()
        .and_then(|s| <[u8; 64]>::try_from(s).ok())
        .ok_or_else(|| bad("signature must be base64 of 64 bytes"))?;
    let time_ms = ms(&c.time).ok_or_else(|| bad("time is required and must be a valid timestamp"))?;
    Ok(Checkpoint { sequence: c.sequence, head_hash: hash, time_ms, key_id: c.key_id.clone(), signature: sig })
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Milliseconds of a request timestamp; `None` when absent or out of range (no overflow).
fn ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    let t = t.as_ref()?;
    t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos) / 1_000_000)
}

fn parse_list(r: &pb::ListAuditEventsRequest) -> Result<(AuditFilter, Option<i64>, usize), InvalidInput> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let time = |field: &'static str, t: &Option<prost_types::Timestamp>| match t {
        None => Ok(None),
        Some(_) => ms(t).map(Some).ok_or_else(|| InvalidInput::new(field, "timestamp out of range")),
    };
    let filter = AuditFilter {
        since_ms: time("since", &r.since)?,
        until_ms: time("until", &r.until)?,
        caller: opt(&r.caller),
        tenant_id: opt(&r.tenant_id),
        action: (!r.action.is_empty())
            .then(|| r.action.parse())
            .transpose()
            .map_err(|_| InvalidInput::new("action", format!("unknown action {}", quoted(&r.action))))?,
        outcome: (!r.outcome.is_empty())
            .then(|| r.outcome.parse())
            .transpose()
            .map_err(|_| InvalidInput::new("outcome", "use ok, denied or error"))?,
    };
    let after = if r.page_token.is_empty() {
        None
    } else {
        let bad = || InvalidInput::new("page_token", "not a page token from this server; start again without it");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&r.page_token).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        Some(text.strip_prefix("a1:").and_then(|n| n.parse::<i64>().ok()).ok_or_else(bad)?)
    };
    let size = match r.page_size as usize {
        0 => DEFAULT_PAGE,
        n if n > MAX_PAGE => return Err(InvalidInput::new("page_size", format!("must be at most {MAX_PAGE}"))),
        n => n,
    };
    Ok((filter, after, size))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditSvc {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = Caller::of(&req)?;
        let st = &self.state;
        let (filter, after, size) = match parse_list(req.get_ref()) {
            Ok(p) => p,
            Err(e) => {
                st.record(&caller, Action::AuditRead, None, Outcome::Denied, &e.to_string(), Extra::default()).await?;
                return Err(super::errors::invalid(&e));
            }
        };
        // One more than asked tells whether another page exists.
        let mut events = st.audit.list(filter, after, size + 1).await.map_err(|e| unavailable(&e))?;
        let more = events.len() > size;
        events.truncate(size);
        let next = match (more, events.last()) {
            (true, Some(last)) => {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("a1:{}", last.sequence))
            }
            _ => String::new(),
        };
        let detail = format!("list: {} events", events.len());
        st.record(&caller, Action::AuditRead, None, Outcome::Ok, &detail, Extra::default()).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.iter().map(event_to_proto).collect(),
            next_page_token: next,
        }))
    }

    type WatchAuditEventsStream = EventStream;

    async fn watch_audit_events(
        &self,
        req: Request<pb::WatchAuditEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&req)?;
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let st = &self.state;
        // Bounded per caller and in total: a stream holds a task and a reader for as long as
        // it lives.
        let slot = match WatchSlot::take(&self.state, &caller.identity.id) {
            Ok(s) => s,
            Err(refusal) => {
                let detail = format!("watch refused: {}", refusal.message());
                st.record(&caller, Action::AuditRead, None, Outcome::Denied, &detail, Extra::default()).await?;
                return Err(refusal);
            }
        };
        let from = match req.get_ref().from_sequence {
            n if n > 0 => n,
            _ => st.audit.head().await.map_err(|e| unavailable(&e))?.0 + 1,
        };
        st.record(
            &caller,
            Action::AuditRead,
            None,
            Outcome::Ok,
            &format!("watch from sequence {from}"),
            Extra::default(),
        )
        .await?;
        let mut watch = st.audit.watch(from);
        let mut stopping = st.stopping.clone();
        let mut reloaded = st.reloaded.subscribe();
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let _slot = slot; // released when the stream ends, however it ends
            loop {
                let next = tokio::select! {
                    // Reload and close first: a revoked watcher gets no further event, and a
                    // gone one frees its slot, even while events keep coming.
                    biased;
                    // The server is stopping: end the stream so shutdown does not wait on it.
                    _ = async { let _ = stopping.wait_for(|s| *s).await; } => break,
                    // The watcher went away: free its slot now, not at the next event.
                    _ = tx.closed() => break,
                    // Certificates or policy reloaded: this caller must still be let in.
                    Ok(()) = reloaded.changed() => {
                        if let Some(refusal) = still_admitted(&state, &caller, conn.as_ref()) {
                            let detail = format!("watch ended after a reload: {}", refusal.message());
                            let _ = state.record(&caller, Action::AuditRead, None, Outcome::Denied, &detail, Extra::default()).await;
                            let _ = tx.try_send(Err(refusal));
                            break;
                        }
                        continue;
                    }
                    n = watch.next() => n,
                };
                let item = match next {
                    Ok(Some(e)) => Ok(event_to_proto(&e)),
                    Ok(None) => break,
                    Err(e) => Err(unavailable(&e)),
                };
                let failed = item.is_err();
                // A watcher that stops reading for a minute is let go (its buffer of 256 is
                // full): it holds a slot and a reader otherwise.
                let sent = tokio::time::timeout(std::time::Duration::from_secs(60), tx.send(item)).await;
                if !matches!(sent, Ok(Ok(()))) || failed {
                    break; // the watcher went away or stalled, or the log cannot be read
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_checkpoint(&self, req: Request<pb::GetCheckpointRequest>) -> Result<Response<pb::Checkpoint>, Status> {
        let caller = Caller::of(&req)?;
        let st = &self.state;
        st.record(&caller, Action::AuditRead, None, Outcome::Ok, "checkpoint", Extra::default()).await?;
        // A fresh checkpoint covers everything up to now, this read included.
        let c = st.audit.checkpoint_now().await.map_err(|e| unavailable(&e))?;
        Ok(Response::new(checkpoint_to_proto(&c)))
    }

    async fn get_public_key(&self, req: Request<pb::GetPublicKeyRequest>) -> Result<Response<pb::PublicKey>, Status> {
        let caller = Caller::of(&req)?;
        let st = &self.state;
        st.record(&caller, Action::AuditRead, None, Outcome::Ok, "public key", Extra::default()).await?;
        let key = st.audit.verifying_key();
        Ok(Response::new(pb::PublicKey {
            key_id: crate::crypto::audit_key_id(&key.to_bytes()),
            public_key: crate::audit::encode_public_key(&key),
        }))
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let caller = Caller::of(&req)?;
        let st = &self.state;
        let kept = match req.get_ref().checkpoint.as_ref().map(checkpoint_from_proto).transpose() {
            Ok(k) => k,
            Err(e) => {
                st.record(&caller, Action::AuditVerified, None, Outcome::Denied, &e.to_string(), Extra::default())
                    .await?;
                return Err(super::errors::invalid(&e));
            }
        };
        let allow_unsigned_tail = req.get_ref().allow_unsigned_tail;
        // Signs a checkpoint of the current head first (see `AuditLog::verify`): strict up to now.
        let root = match req.get_ref().root_public_key.trim() {
            "" => None,
            k => match crate::audit::parse_public_key(k) {
                Ok(k) => Some(k),
                Err(_) => {
                    let e = InvalidInput::new(
                        "root_public_key",
                        "not a public key as `audit public-key` prints it (ed25519:...)",
                    );
                    st.record(&caller, Action::AuditVerified, None, Outcome::Denied, &e.to_string(), Extra::default())
                        .await?;
                    return Err(errors::invalid(&e));
                }
            },
        };
        let report = st.audit.verify(root, kept, allow_unsigned_tail).await.map_err(|e| unavailable(&e))?;
        let outcome = if report.ok { Outcome::Ok } else { Outcome::Error };
        st.record(&caller, Action::AuditVerified, None, outcome, &report.detail, Extra::default()).await?;
        if !report.ok {
            tracing::error!(detail = %report.detail, "ALARM: audit log verification failed");
        }
        Ok(Response::new(pb::VerifyAuditLogResponse {
            ok: report.ok,
            events_checked: report.events_checked as i64,
            first_bad_sequence: report.first_bad_sequence.unwrap_or(0),
            head_hash: crate::crypto::secret::hex(&report.head_hash),
            unsigned_events: report.unsigned_tail.map_or(0, |t| t.count as i64),
            first_unsigned_sequence: report.unsigned_tail.map_or(0, |t| t.first),
            warning: report.warning.unwrap_or_default(),
            detail: report.detail,
        }))
    }
}

/// Issue 13, fuzzing the parsers: the ListAuditEvents filter and page token, and a kept
/// checkpoint given to VerifyAuditLog, never panic, and their errors name the field without
/// repeating the input.
/// One live `WatchAuditEvents` stream, counted per caller and in total; released on drop.
struct WatchSlot {
    state: Arc<ServerState>,
    caller: String,
}

impl WatchSlot {
    fn take(state: &Arc<ServerState>, caller: &str) -> Result<WatchSlot, Status> {
        let (per_caller, total) = state.watch_limits;
        let mut w = state.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if w.values().sum::<usize>() >= total {
            return Err(errors::too_many_streams("the vault", total));
        }
        let n = w.entry(caller.to_owned()).or_default();
        if *n >= per_caller {
            return Err(errors::too_many_streams("this caller", per_caller));
        }
        *n += 1;
        Ok(WatchSlot { state: state.clone(), caller: caller.to_owned() })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut w = self.state.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.caller);
            }
        }
    }
}

/// After a reload: `None` if the caller is still let in (its certificate chain verifies
/// against the CAs and CRLs now in force, and it still holds `audit`), else why not.
fn still_admitted(state: &ServerState, caller: &Caller, conn: Option<&ConnInfo>) -> Option<Status> {
    if let Some(c) = conn
        && !state.tls.still_valid(c)
    {
        return Some(errors::certificate_no_longer_accepted());
    }
    if !state.authz.policy().has_role(&caller.identity.id, Role::Audit) {
        return Some(errors::permission_denied(Role::Audit));
    }
    None
}

#[cfg(test)]
mod fuzz {
    use base64::Engine;
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz_support::{check_named, config, text};

    fn timestamp() -> BoxedStrategy<Option<prost_types::Timestamp>> {
        proptest::option::of(
            (prop_oneof![0i64..4_000_000_000, any::<i64>()], any::<i32>())
                .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        )
        .boxed()
    }

    fn name(valid: &'static [&'static str]) -> BoxedStrategy<String> {
        prop_oneof![Just(String::new()), proptest::sample::select(valid).prop_map(str::to_owned), text()].boxed()
    }

    fn request() -> BoxedStrategy<pb::ListAuditEventsRequest> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let token = prop_oneof![
            Just(String::new()),
            any::<i64>().prop_map(move |n| b64(format!("a1:{n}").as_bytes())),
            text().prop_map(move |t| b64(t.as_bytes())),
            text(),
        ];
        (
            (timestamp(), timestamp(), text(), text()),
            name(&["token_minted", "token_denied", "key_registered"]),
            name(&["ok", "denied", "error"]),
            prop_oneof![0u32..2000, any::<u32>()],
            token,
        )
            .prop_map(|((since, until, caller, tenant_id), action, outcome, page_size, page_token)| {
                pb::ListAuditEventsRequest { since, until, caller, tenant_id, action, outcome, page_size, page_token }
            })
            .boxed()
    }

    fn checkpoint() -> BoxedStrategy<pb::Checkpoint> {
        let hex = prop_oneof![
            proptest::array::uniform32(any::<u8>()).prop_map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
            "[0-9a-fA-F ]{62,66}",
            text(),
        ];
        let sig = prop_oneof![
            proptest::collection::vec(any::<u8>(), 62..66)
                .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            text(),
        ];
        (any::<i64>(), hex, timestamp(), text(), sig)
            .prop_map(|(sequence, head_hash, time, key_id, signature)| pb::Checkpoint {
                sequence,
                head_hash,
                time,
                key_id,
                signature,
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn list_request(r in request()) {
            if let Err(e) = parse_list(&r) {
                let msg = e.to_string();
                let input = match e.field {
                    "action" => &r.action,
                    "outcome" => &r.outcome,
                    "page_token" => &r.page_token,
                    "since" | "until" | "page_size" => "",
                    other => return Err(TestCaseError::fail(format!("unexpected field {other}: {msg}"))),
                };
                check_named(&msg, e.field, e.field, input)?;
                // No request text at all is repeated beyond the bound.
                for t in [&r.caller, &r.tenant_id, &r.action, &r.outcome, &r.page_token] {
                    check_named(&msg, e.field, e.field, t)?;
                }
            }
        }

        #[test]
        fn kept_checkpoint(c in checkpoint()) {
            if let Err(e) = checkpoint_from_proto(&c) {
                let msg = e.to_string();
                for t in [&c.head_hash, &c.key_id, &c.signature] {
                    check_named(&msg, e.field, "checkpoint", t)?;
                }
            }
        }
    }
}
