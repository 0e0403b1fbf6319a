//! `pogo-vault audit ...`: the security team's commands. `list`, `tail`, `export`,
//! `checkpoint` and `public-key` ask a running server (role `audit`); `verify` reads an
//! audit database file offline and needs only the public key: no vault secret.
//! `rotate-signing-key` is the operator's: it works on the database files, like
//! `rotate-kek`, and needs the master key.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{ChangeDbArgs, GlobalArgs};
use super::connect::{ConnectArgs, code_name};
use super::error::CliError;
use super::runtime::runtime;
use crate::console::export::{CSV_HEADER, event_csv, event_json, time_str};
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
        /// JSON lines or CSV (with a header line).
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
    /// signing-key hand-overs from the key you hold, and (with --checkpoint / --witness)
    /// that no event up to a kept or witnessed checkpoint was removed. Strict: events not
    /// covered by a signed checkpoint fail it. Needs no vault secret. Exit code 0 only when
    /// the log verifies.
    Verify {
        /// The audit database file to verify (read-only) [default: the one beside --db].
        #[arg(long, env = "POGO_VAULT_AUDIT_DB", value_name = "FILE")]
        audit_db: Option<PathBuf>,
        /// Without --audit-db: the vault database whose audit database (`<db stem>-audit.db`
        /// beside it) to verify; an audit database given here is verified itself.
        #[arg(long, env = "POGO_VAULT_DB", value_name = "FILE")]
        db: Option<PathBuf>,
        /// The public key file (`ed25519:<base64>`, from `audit public-key`): the first key
        /// you hold; later keys count only after a valid hand-over from their predecessor.
        #[arg(long)]
        public_key: PathBuf,
        /// A checkpoint kept outside the vault (JSON from `audit checkpoint`).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// A witness file (JSON lines, from `[audit.witness.file]` or a syslog receiver's
        /// messages): the log must contain every checkpoint in it. Repeat for more.
        #[arg(long)]
        witness: Vec<PathBuf>,
        /// Report events after the last signed checkpoint as a warning instead of failing
        /// (for a log copied from a crashed server). Nothing proves those events were not
        /// cut or rewritten.
        #[arg(long)]
        allow_unsigned_tail: bool,
        /// An archive file written by `audit archive` (repeat for more, in any order): the
        /// archives and the live log are verified as one chain from sequence 1, each
        /// starting exactly where the one before it ended.
        #[arg(long, value_name = "FILE")]
        archive: Vec<PathBuf>,
        /// With --archive: verify only the archives (no live audit database).
        #[arg(long, requires = "archive")]
        archives_only: bool,
        /// The public key file of the vault's *current* signing key (from `audit
        /// public-key`, fetched over mTLS): the key chain must end there. Without it, a
        /// leaked old key could sign a forged hand-over that a chain alone accepts.
        #[arg(long)]
        expect_key: Option<PathBuf>,
        /// Verify the audit log in a PostgreSQL database (one snapshot of it) instead of a
        /// file; nothing is written there.
        #[command(flatten)]
        postgres: super::pg_args::PostgresArgs,
    },
    /// Replace the audit signing key. The old key signs the hand-over to the new one in
    /// the audit log first (so the rotation is audited before it takes effect), then the
    /// vault database stores the new key. Works on the database files (`--db`, `--audit-db`,
    /// master key options); restart a running server afterwards (it stops signing with the
    /// retired key and fails closed until restarted).
    RotateSigningKey {
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// Move the events up to a signed checkpoint into a self-contained archive file and
    /// shrink the live audit database (retention). The live log keeps a signed anchor, so
    /// it still verifies alone; `audit verify --archive` proves archives and live log one
    /// chain. Runs beside a running server; needs the master key (the record is signed).
    Archive(super::audit_archive::ArchiveArgs),
    /// A web page over the audit log for the security team, served on this machine only:
    /// the event table with filters and exports, a live view, tenant and caller views,
    /// charts, and the verification panel. It asks the vault over mutual TLS with your
    /// certificate (role `audit`) and prints a one-time login link; stop it with Ctrl-C.
    Console {
        /// Where to serve the page: a loopback address (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Your copy of the vault's audit public key (`ed25519:...`, from `audit public-key`
        /// when you first set up): the verification button then verifies from a key you
        /// hold, not from the first key the log names.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        #[command(flatten)]
        conn: ConnectArgs,
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
    /// Events of this caller (its certificate identity, e.g. spiffe://example.org/service/billing).
    #[arg(long)]
    pub caller: Option<String>,
    /// Events about this tenant.
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

pub fn run(g: &GlobalArgs, c: AuditCommand) -> Result<(), CliError> {
    match &c {
        AuditCommand::Verify {
            public_key,
            checkpoint,
            witness,
            allow_unsigned_tail,
            expect_key,
            archive,
            archives_only,
            postgres,
            ..
        } => {
            let given = Given { public_key, checkpoint: checkpoint.as_ref(), witnesses: witness, archives: archive };
            if let Some(options) = postgres.options()? {
                if *archives_only || g.audit_db.is_some() {
                    return Err(CliError::usage(
                        "--postgres-url verifies the log in that database: not with --archives-only or --audit-db",
                    ));
                }
                if !archive.is_empty() {
                    return Err(CliError::new("--archive: not with --postgres-url (archives are files)"));
                }
                let at = crate::audit::AuditLocation::Postgres(options);
                return verify(Some(&at), &given, *allow_unsigned_tail, expect_key.as_ref());
            }
            let file = if *archives_only { None } else { Some(audit_file(g)?) };
            let at = file.map(crate::audit::AuditLocation::File);
            return verify(at.as_ref(), &given, *allow_unsigned_tail, expect_key.as_ref());
        }
        AuditCommand::RotateSigningKey { .. } => return rotate_signing_key(g),
        AuditCommand::Archive(_) => {
            let AuditCommand::Archive(a) = c else { unreachable!("matched above") };
            return super::audit_archive::run(g, a);
        }
        _ => {}
    }
    runtime()?.block_on(async move {
        let out = std::io::stdout();
        let mut out = out.lock();
        let io = |e: std::io::Error| super::out::write_error(&e);
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
            AuditCommand::Console { listen, public_key, conn } => {
                let root_key = match &public_key {
                    None => None,
                    Some(p) => {
                        let text = std::fs::read_to_string(p)
                            .map_err(|e| CliError::usage(format!("--public-key: cannot read {}: {e}", p.display())))?;
                        crate::audit::parse_public_key(text.trim()).map_err(|_| {
                            CliError::usage(format!(
                                "--public-key: {} is not a public key as `audit public-key` prints it (ed25519:...)",
                                p.display()
                            ))
                        })?;
                        Some(text.trim().to_owned())
                    }
                };
                let channel = conn.channel().await?;
                let bound = crate::console::bind(listen, channel, &conn.endpoint, root_key)
                    .await
                    .map_err(|e| CliError::usage(e.to_string()))?;
                // The login link goes to the auditor's terminal only (never a log or a file).
                writeln!(out, "pogo-vault audit console for {}", conn.endpoint).map_err(io)?;
                writeln!(out, "open this link in your browser (it works once): {}", bound.login_url()).map_err(io)?;
                out.flush().map_err(io)?;
                drop(out);
                bound
                    .serve(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await
                    .map_err(|e| CliError::new(format!("the audit console stopped: {e}")))?;
            }
            AuditCommand::Verify { .. } | AuditCommand::RotateSigningKey { .. } | AuditCommand::Archive(_) => {
                unreachable!("handled above")
            }
        }
        Ok(())
    })
}

/// The file `audit verify` reads: `--audit-db`; else the audit database beside `--db` when
/// that is a vault database; else `--db` itself (an audit database, as this command was
/// once documented).
fn audit_file(g: &GlobalArgs) -> Result<PathBuf, CliError> {
    if let Some(p) = &g.audit_db {
        return Ok(p.clone());
    }
    if !g.db.exists() {
        return Err(CliError::usage(format!(
            "--audit-db: no audit database given, and {} (from --db) does not exist",
            g.db.display()
        )));
    }
    // A vault database has `vault_meta`; anything else (an audit database, or a file that is
    // neither) is verified as given, so its own error names it.
    let is_vault_db = rusqlite::Connection::open_with_flags(&g.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'vault_meta'", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .is_ok_and(|n| n > 0);
    Ok(if is_vault_db { g.audit_db() } else { g.db.clone() })
}

/// What `audit verify` was given besides the live file.
struct Given<'a> {
    public_key: &'a PathBuf,
    checkpoint: Option<&'a PathBuf>,
    witnesses: &'a [PathBuf],
    archives: &'a [PathBuf],
}

fn verify(
    db: Option<&crate::audit::AuditLocation>,
    given: &Given<'_>,
    allow_unsigned_tail: bool,
    expect_key: Option<&PathBuf>,
) -> Result<(), CliError> {
    let Given { public_key, checkpoint, witnesses, archives } = *given;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))
    };
    let key = crate::audit::parse_public_key(&read(public_key)?)
        .map_err(|e| CliError::new(format!("{}: {e}", public_key.display())))?;
    let mut opts = crate::audit::VerifyOptions { allow_unsigned_tail, ..Default::default() };
    if let Some(p) = checkpoint {
        let checkpoint = crate::audit::Checkpoint::from_json(&read(p)?)
            .map_err(|e| CliError::new(format!("{}: {e}", p.display())))?;
        opts.external.push(crate::audit::External { checkpoint, source: crate::audit::ExternalSource::Kept });
    }
    let mut witnessed = 0;
    for w in witnesses {
        let lines = crate::audit::read_witness_file(w).map_err(|e| CliError::new(e.to_string()))?;
        witnessed += lines.len();
        opts.external.extend(lines);
    }
    let report = match (archives.is_empty(), db) {
        (true, Some(at)) => crate::audit::verify_at(at, &key, &opts),
        (_, Some(crate::audit::AuditLocation::File(f))) => crate::audit::verify_chain(archives, Some(f), &key, &opts),
        (_, Some(crate::audit::AuditLocation::Postgres(_))) => {
            return Err(CliError::new("--archive: not with --postgres-url (archives are files)"));
        }
        (_, None) => crate::audit::verify_chain(archives, None, &key, &opts),
    }
    .map_err(|e| CliError::new(if archives.is_empty() { e.to_string() } else { format!("--archive: {e}") }))?;
    if !report.ok {
        let first = report.first_bad_sequence.map(|s| format!("first bad sequence {s}: ")).unwrap_or_default();
        return Err(CliError::new(format!("audit log does NOT verify: {first}{}", report.detail)));
    }
    if let Some(p) = expect_key {
        let expected =
            crate::audit::parse_public_key(&read(p)?).map_err(|e| CliError::new(format!("{}: {e}", p.display())))?;
        let expected_id = crate::crypto::audit_key_id(expected.as_bytes());
        let last = report.key_ids.last().cloned().unwrap_or_default();
        if last != expected_id {
            return Err(CliError::new(format!(
                "audit log does NOT verify: its key chain ends at key {last}, not at the expected key {expected_id} \
                 (a hand-over this vault did not make, or an old log)"
            )));
        }
    }
    if let Some(w) = &report.warning {
        eprintln!("warning: {w}");
    }
    let witness_note =
        if witnesses.is_empty() { String::new() } else { format!(", {witnessed} witnessed checkpoints checked") };
    outln!(
        "ok: {} events verified, head {} at sequence {}, {} checkpoints verified{witness_note}; {}",
        report.events_checked,
        crate::crypto::secret::hex(&report.head_hash),
        report.head_sequence,
        report.checkpoints_checked,
        report.detail
    )?;
    Ok(())
}

/// `audit rotate-signing-key`: audited hand-over first, then the vault's new key.
fn rotate_signing_key(g: &GlobalArgs) -> Result<(), CliError> {
    // A running server holds the database: refused (it would sign with a retired key).
    let _lock = super::db::lock_for_change(&g.db)?;
    let vault = crate::vault::Vault::unlock(&g.db, &g.master.source()?)?;
    let old = vault.audit_signing_key()?;
    let new = crate::crypto::SigningSeed::generate()
        .map_err(|_| CliError::new("the system random number generator failed; nothing was changed"))?
        .signing_key();
    let audit_db = g.audit_db();
    let caller = super::operator::Operator::current().caller;
    let request_id = crate::server::new_request_id();
    let h =
        crate::audit::hand_over_blocking(&audit_db, &old, &new.verifying_key(), &caller, &request_id).map_err(|e| {
            CliError::new(format!(
                "the audit database {} cannot record the rotation ({e}); nothing was changed",
                audit_db.display()
            ))
        })?;
    if let Err(e) = vault.replace_audit_signing_key(&new) {
        // The new key exists only here: hand back to the old one, so the log's key chain ends
        // at the key the vault still holds.
        let back = crate::audit::hand_over_blocking(&audit_db, &new, &old.verifying_key(), &caller, &request_id);
        let undo = match back {
            Ok(b) => format!("the hand-over was reversed at sequence {}", b.sequence),
            Err(b) => format!(
                "reversing the hand-over failed too ({b}): the server will refuse to start until this is resolved"
            ),
        };
        return Err(CliError::new(format!(
            "the vault database did not store the new audit signing key ({e}); {undo}; the old key stays in use"
        )));
    }
    outln!(
        "audit signing key rotated: {} -> {}; the old key signed the hand-over at sequence {}; new public key {}. \
         Restart a running server. Auditors keep verifying from the first public key they hold.",
        h.old_key_id,
        h.new_key_id,
        h.sequence,
        crate::audit::encode_public_key(&new.verifying_key())
    )?;
    Ok(())
}
