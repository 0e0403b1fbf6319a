//! `pogo-vault audit ...`: the security team's commands. `list`, `tail`, `export`,
//! `checkpoint` and `public-key` ask a running server (role `audit`); `verify` reads an
//! audit database file offline and needs only the public key: no vault secret.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use super::serve::{ConnectArgs, code_name, runtime};
use crate::proto::v1 as pb;
use crate::proto::v1::audit_service_client::AuditServiceClient;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List events (newest filters first applied server-side), one JSON object per line.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Stream events as they are committed (from a sequence, or only new ones), as JSON lines.
    Tail {
        /// First sequence to print; 0 = only new events.
        #[arg(long, default_value_t = 0)]
        from_sequence: i64,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Export every matching event.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Fetch a fresh signed checkpoint as JSON: keep it outside the vault.
    Checkpoint {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Fetch the public key that verifies checkpoints (`ed25519:<base64>`).
    PublicKey {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Verify an audit database file offline: the hash chain, every checkpoint signature,
    /// and (with --checkpoint) that no event up to a kept checkpoint was removed. Here
    /// `--db` names the *audit* database. Exit code 0 only when the log verifies.
    Verify {
        /// The public key file (`ed25519:<base64>`, from `audit public-key`).
        #[arg(long)]
        public_key: PathBuf,
        /// A checkpoint kept outside the vault (JSON from `audit checkpoint`).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Events before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub caller: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    /// e.g. token_minted, token_denied, key_registered.
    #[arg(long)]
    pub action: Option<String>,
    /// ok, denied or error.
    #[arg(long)]
    pub outcome: Option<String>,
}

fn timestamp(field: &str, s: &Option<String>) -> Result<Option<prost_types::Timestamp>, CliError> {
    let Some(s) = s else { return Ok(None) };
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| CliError::usage(format!("--{field}: {s:?} is not an RFC 3339 time like 2026-11-30T08:00:00Z")))?;
    Ok(Some(prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }))
}

impl FilterArgs {
    fn request(&self, page_size: u32, page_token: String) -> Result<pb::ListAuditEventsRequest, CliError> {
        Ok(pb::ListAuditEventsRequest {
            since: timestamp("since", &self.since)?,
            until: timestamp("until", &self.until)?,
            caller: self.caller.clone().unwrap_or_default(),
            tenant_id: self.tenant.clone().unwrap_or_default(),
            action: self.action.clone().unwrap_or_default(),
            outcome: self.outcome.clone().unwrap_or_default(),
            page_size,
            page_token,
        })
    }
}

fn status(s: tonic::Status) -> CliError {
    CliError::new(format!("{}: {}", code_name(s.code()), s.message()))
}

fn time_str(t: &Option<prost_types::Timestamp>) -> String {
    let ms = t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0);
    super::output::format_time(ms)
}

fn event_json(e: &pb::AuditEvent) -> serde_json::Value {
    serde_json::json!({
        "sequence": e.sequence, "time": time_str(&e.time), "caller": e.caller, "caller_serial": e.caller_serial,
        "action": e.action, "tenant_id": e.tenant_id, "key_version": e.key_version, "outcome": e.outcome,
        "upstream_status": e.upstream_status, "token_fingerprint": e.token_fingerprint, "detail": e.detail,
        "request_id": e.request_id, "peer": e.peer, "hash": e.hash,
    })
}

const CSV_HEADER: &str = "sequence,time,caller,caller_serial,action,tenant_id,key_version,outcome,upstream_status,token_fingerprint,detail,request_id,peer,hash";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

fn event_csv(e: &pb::AuditEvent) -> String {
    [
        e.sequence.to_string(),
        time_str(&e.time),
        e.caller.clone(),
        e.caller_serial.clone(),
        e.action.clone(),
        e.tenant_id.clone(),
        e.key_version.to_string(),
        e.outcome.clone(),
        e.upstream_status.to_string(),
        e.token_fingerprint.clone(),
        e.detail.clone(),
        e.request_id.clone(),
        e.peer.clone(),
        e.hash.clone(),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

pub fn run(db: &std::path::Path, c: AuditCommand) -> Result<(), CliError> {
    if let AuditCommand::Verify { public_key, checkpoint } = &c {
        return verify(db, public_key, checkpoint.as_ref());
    }
    runtime()?.block_on(async move {
        let out = std::io::stdout();
        let mut out = out.lock();
        let io = |e: std::io::Error| CliError::new(format!("cannot write output: {e}"));
        match c {
            AuditCommand::List { filter, limit, conn } => {
                let mut client = AuditServiceClient::new(conn.channel().await?);
                let mut token = String::new();
                let mut n = 0;
                loop {
                    let page = (limit - n).min(1000) as u32;
                    let r = client.list_audit_events(filter.request(page, token)?).await.map_err(status)?.into_inner();
                    for e in &r.events {
                        writeln!(out, "{}", event_json(e)).map_err(io)?;
                    }
                    n += r.events.len();
                    if r.next_page_token.is_empty() || n >= limit {
                        break;
                    }
                    token = r.next_page_token;
                }
            }
            AuditCommand::Export { format, filter, conn } => {
                let mut client = AuditServiceClient::new(conn.channel().await?);
                if matches!(format, Format::Csv) {
                    writeln!(out, "{CSV_HEADER}").map_err(io)?;
                }
                let mut token = String::new();
                loop {
                    let r = client.list_audit_events(filter.request(1000, token)?).await.map_err(status)?.into_inner();
                    for e in &r.events {
                        match format {
                            Format::Jsonl => writeln!(out, "{}", event_json(e)),
                            Format::Csv => writeln!(out, "{}", event_csv(e)),
                        }
                        .map_err(io)?;
                    }
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    token = r.next_page_token;
                }
            }
            AuditCommand::Tail { from_sequence, conn } => {
                let mut client = AuditServiceClient::new(conn.channel().await?);
                let mut stream = client
                    .watch_audit_events(pb::WatchAuditEventsRequest { from_sequence })
                    .await
                    .map_err(status)?
                    .into_inner();
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        m = stream.message() => match m.map_err(status)? {
                            Some(e) => {
                                writeln!(out, "{}", event_json(&e)).map_err(io)?;
                                out.flush().map_err(io)?;
                            }
                            None => break,
                        }
                    }
                }
            }
            AuditCommand::Checkpoint { conn } => {
                let mut client = AuditServiceClient::new(conn.channel().await?);
                let c = client.get_checkpoint(pb::GetCheckpointRequest {}).await.map_err(status)?.into_inner();
                let ms = c.time.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0);
                let json = serde_json::json!({
                    "sequence": c.sequence, "head_hash": c.head_hash, "time": time_str(&c.time), "time_ms": ms,
                    "key_id": c.key_id, "signature": c.signature,
                });
                writeln!(out, "{json}").map_err(io)?;
            }
            AuditCommand::PublicKey { conn } => {
                let mut client = AuditServiceClient::new(conn.channel().await?);
                let k = client.get_public_key(pb::GetPublicKeyRequest {}).await.map_err(status)?.into_inner();
                writeln!(out, "{}", k.public_key).map_err(io)?;
            }
            AuditCommand::Verify { .. } => unreachable!("handled above"),
        }
        Ok(())
    })
}

fn verify(db: &std::path::Path, public_key: &PathBuf, checkpoint: Option<&PathBuf>) -> Result<(), CliError> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))
    };
    let key = crate::audit::parse_public_key(&read(public_key)?)
        .map_err(|e| CliError::new(format!("{}: {e}", public_key.display())))?;
    let kept = match checkpoint {
        Some(p) => Some(
            crate::audit::Checkpoint::from_json(&read(p)?)
                .map_err(|e| CliError::new(format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let report = crate::audit::verify(db, &key, kept.as_ref()).map_err(|e| CliError::new(e.to_string()))?;
    if report.ok {
        println!(
            "ok: {} events verified, head {} at sequence {}, {} checkpoints verified; {}",
            report.events_checked,
            crate::crypto::secret::hex(&report.head_hash),
            report.head_sequence,
            report.checkpoints_checked,
            report.detail
        );
        Ok(())
    } else {
        let first = report.first_bad_sequence.map(|s| format!("first bad sequence {s}: ")).unwrap_or_default();
        Err(CliError::new(format!("audit log does NOT verify: {first}{}", report.detail)))
    }
}
