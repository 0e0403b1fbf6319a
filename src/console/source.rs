//! The console's one way to the log: the vault's `AuditService` and `StatusService` over
//! the auditor's mutual-TLS channel. The console keeps no copy of the log; every page asks
//! the vault, so every look is itself an audited read (`audit_read` records name the
//! auditor), and the console can show nothing the auditor's role may not read.

use std::sync::Mutex;

use time::OffsetDateTime;
use tonic::transport::Channel;

use super::filter::Filter;
use crate::proto::v1 as pb;
use crate::proto::v1::audit_service_client::AuditServiceClient;
use crate::proto::v1::status_service_client::StatusServiceClient;

/// The largest page the vault serves.
pub const MAX_PAGE: u32 = 1000;
/// The largest answer the console reads.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The vault did not answer, or answered with an error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the vault answered {code:?}: {message}")]
pub struct VaultError {
    pub code: tonic::Code,
    pub message: String,
}

impl From<tonic::Status> for VaultError {
    fn from(s: tonic::Status) -> Self {
        // The vault's messages name no secret (DESIGN.md §3.1); they are shown as text.
        VaultError { code: s.code(), message: s.message().to_owned() }
    }
}

/// The newest events of a filter.
#[derive(Debug, Default)]
pub struct Newest {
    /// Newest first.
    pub events: Vec<pb::AuditEvent>,
    /// Fewer than asked although more exist: a wider window was too big to read.
    pub short: bool,
    /// The first window was too big to read: these are not the newest.
    pub truncated: bool,
}

/// One run of the verification button.
#[derive(Debug, Clone)]
pub struct Verification {
    pub at: OffsetDateTime,
    /// A fresh checkpoint taken just before: the head this run covers.
    pub through: Option<pb::Checkpoint>,
    /// The checkpoint of this console's last run that verified, and when that was: handed
    /// to the vault as a kept checkpoint, so an event up to it that has gone since fails.
    pub kept: Option<(pb::Checkpoint, OffsetDateTime)>,
    pub result: Result<pb::VerifyAuditLogResponse, VaultError>,
}

/// The vault as the console sees it.
pub struct Source {
    channel: Channel,
    endpoint: String,
    /// The auditor's own copy of the vault's first audit public key (`ed25519:...`), sent
    /// as `root_public_key`: the vault then verifies from a key the auditor holds, not from
    /// the first key its log names.
    root_key: Option<String>,
    last: Mutex<Option<Verification>>,
}

impl Source {
    pub fn new(channel: Channel, endpoint: String, root_key: Option<String>) -> Source {
        Source { channel, endpoint, root_key, last: Mutex::new(None) }
    }

    /// Whether verifications start from a key the auditor gave.
    pub fn pinned(&self) -> bool {
        self.root_key.is_some()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn audit(&self) -> AuditServiceClient<Channel> {
        // A page of 1000 events whose fields are all at their longest is more than
        // tonic's default 4 MiB.
        AuditServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// One page of events (`ListAuditEvents`).
    pub async fn page(&self, f: &Filter, size: u32, token: String) -> Result<pb::ListAuditEventsResponse, VaultError> {
        Ok(self.audit().list_audit_events(f.request(size, token)).await?.into_inner())
    }

    /// Hands every event of `f` to `each` in sequence order, at most `max` of them; true
    /// when more matched. For views that keep a summary, not the events.
    pub async fn scan(&self, f: &Filter, max: usize, mut each: impl FnMut(pb::AuditEvent)) -> Result<bool, VaultError> {
        let mut seen = 0;
        let mut token = String::new();
        loop {
            let want = (max - seen).min(MAX_PAGE as usize) as u32;
            let page = self.page(f, want, token).await?;
            seen += page.events.len();
            page.events.into_iter().for_each(&mut each);
            if page.next_page_token.is_empty() {
                return Ok(false);
            }
            if seen >= max {
                return Ok(true);
            }
            token = page.next_page_token;
        }
    }

    /// The newest `n` events of `f`, newest first. `ListAuditEvents` pages oldest first,
    /// so this reads the events of a short window back from the filter's end (`until`, or
    /// now: a minute, then an hour, a day, thirty days, then the whole filter) and keeps
    /// the last `n`, widening until the window holds `n`. A window is read whole, up to
    /// `max_read` events. When a wider window is too big to read, the narrower one's
    /// events are the answer (the true newest, fewer than `n`: `short`); when even the
    /// first is too big, `truncated` says the newest could not be reached.
    pub async fn newest(&self, f: &Filter, n: usize, max_read: usize) -> Result<Newest, VaultError> {
        const WINDOWS: &[i64] = &[60, 3600, 86_400, 30 * 86_400];
        let now = OffsetDateTime::now_utc();
        let end = f.until.map_or(now, |u| u.min(now));
        let mut windows: Vec<Filter> = WINDOWS
            .iter()
            .map(|w| end - time::Duration::seconds(*w))
            .filter(|start| f.since.is_none_or(|s| *start > s))
            .map(|start| Filter { since: Some(start), ..f.clone() })
            .collect();
        windows.push(f.clone());
        let mut answer: Option<Vec<pb::AuditEvent>> = None;
        for w in &windows {
            let mut kept = std::collections::VecDeque::with_capacity(n + 1);
            let truncated = self
                .scan(w, max_read, |e| {
                    if kept.len() == n {
                        kept.pop_front();
                    }
                    kept.push_back(e);
                })
                .await?;
            if truncated {
                return Ok(match answer {
                    Some(events) => Newest { events, short: true, truncated: false },
                    None => Newest { events: kept.into_iter().rev().collect(), short: false, truncated: true },
                });
            }
            let full = kept.len() >= n;
            answer = Some(kept.into_iter().rev().collect());
            if full {
                break;
            }
        }
        Ok(Newest { events: answer.unwrap_or_default(), short: false, truncated: false })
    }

    /// The vault's status: health, the newest checkpoint, the witnesses.
    pub async fn status(&self) -> Result<pb::VaultStatus, VaultError> {
        Ok(StatusServiceClient::new(self.channel.clone()).get_status(pb::GetStatusRequest {}).await?.into_inner())
    }

    /// Events from sequence `from` on, as the vault commits them (`0`: only new ones).
    pub async fn watch(&self, from: i64) -> Result<tonic::Streaming<pb::AuditEvent>, VaultError> {
        Ok(self.audit().watch_audit_events(pb::WatchAuditEventsRequest { from_sequence: from }).await?.into_inner())
    }

    /// Runs the verification: a fresh signed checkpoint first (the head this run covers),
    /// then `VerifyAuditLog` (strict, from the auditor's key when given) with the
    /// checkpoint of this console's last run that verified kept: the vault must still hold
    /// every event up to it. A checkpoint the vault just made proves nothing of the kind,
    /// so it is not the one handed back. Remembered for the panel.
    pub async fn verify(&self) -> Verification {
        let mut audit = self.audit();
        let kept = self.last_verification().and_then(|v| match (&v.result, v.through) {
            (Ok(r), Some(c)) if r.ok => Some((c, v.at)),
            _ => v.kept,
        });
        let through = audit.get_checkpoint(pb::GetCheckpointRequest {}).await.map(tonic::Response::into_inner);
        let result = match &through {
            Ok(_) => {
                let req = pb::VerifyAuditLogRequest {
                    checkpoint: kept.as_ref().map(|(c, _)| c.clone()),
                    allow_unsigned_tail: false,
                    root_public_key: self.root_key.clone().unwrap_or_default(),
                };
                audit.verify_audit_log(req).await.map(tonic::Response::into_inner).map_err(VaultError::from)
            }
            Err(s) => Err(VaultError::from(s.clone())),
        };
        let v = Verification { at: OffsetDateTime::now_utc(), through: through.ok(), kept, result };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.clone());
        v
    }

    /// The last verification run from this console, if any.
    pub fn last_verification(&self) -> Option<Verification> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
