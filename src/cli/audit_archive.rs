//! `pogo-vault audit archive`: the operator's retention command. Moves the audit events up
//! to a signed checkpoint into an archive file and shrinks the live audit database
//! (`audit::archive_blocking` has the order of steps and why). Runs beside a running
//! server (operators schedule it): it needs the master key only to open the audit signing
//! key its record is signed with, and takes no database lock, except with `--vacuum`,
//! which rewrites the whole file and is refused while a server holds the vault.

use std::path::PathBuf;

use clap::Args;

use super::args::{ChangeDbArgs, GlobalArgs};
use super::db::{lock_for_change, unlock};
use super::error::CliError;
use super::operator::Operator;
use crate::audit::{AuditError, Cut, Shrink};

/// `audit archive` options: exactly one of `--through` and `--before`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("cut").required(true).multiple(false)))]
pub struct ArchiveArgs {
    /// Archive up to the newest signed checkpoint at or below this sequence.
    #[arg(long, value_name = "SEQUENCE", group = "cut")]
    pub through: Option<i64>,
    /// Archive up to the newest checkpoint signed before this time: RFC 3339
    /// (2026-09-01T00:00:00Z) or an age such as 90d, 36h or 45m (before now minus that).
    #[arg(long, value_name = "TIME", group = "cut")]
    pub before: Option<String>,
    /// The archive file to write (mode 0600; never replaces an existing file).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Rewrite the whole audit database (`VACUUM`) so a file created before incremental
    /// auto-vacuum shrinks, and shrinks in steps from then on. Refused while a server runs.
    #[arg(long)]
    pub vacuum: bool,
    #[command(flatten)]
    pub db: ChangeDbArgs,
}

/// The cut `--through` or `--before` names, checked.
fn cut(a: &ArchiveArgs, now_ms: i64) -> Result<Cut, CliError> {
    match (a.through, &a.before) {
        (Some(n), None) if n >= 1 => Ok(Cut::Through(n)),
        (Some(n), None) => Err(CliError::usage(format!("--through: {n} is not a sequence (1 or more)"))),
        (None, Some(t)) => parse_before(t, now_ms).map(Cut::Before),
        _ => Err(CliError::usage("give exactly one of --through SEQUENCE and --before TIME")),
    }
}

/// RFC 3339, or `<N>d`, `<N>h`, `<N>m` before `now_ms`.
fn parse_before(s: &str, now_ms: i64) -> Result<i64, CliError> {
    let t = s.trim();
    if let Some(ms) = crate::audit::parse_time(t) {
        return Ok(ms);
    }
    let unit = |c: char| match c {
        'd' => Some(86_400_000i64),
        'h' => Some(3_600_000),
        'm' => Some(60_000),
        _ => None,
    };
    let age = t
        .char_indices()
        .last()
        .and_then(|(i, c)| Some((t[..i].parse::<i64>().ok()?, unit(c)?)))
        .filter(|(n, _)| *n >= 0)
        .and_then(|(n, u)| n.checked_mul(u));
    match age {
        Some(age) => Ok(now_ms.saturating_sub(age)),
        None => Err(CliError::usage(format!(
            "--before: {} is neither an RFC 3339 time like 2026-09-01T00:00:00Z nor an age like 90d, 36h or 45m",
            crate::domain::quoted(t)
        ))),
    }
}

pub fn run(g: &GlobalArgs, a: ArchiveArgs) -> Result<(), CliError> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let cut = cut(&a, now)?;
    // --vacuum rewrites the file: never under a running server.
    let _lock = if a.vacuum { Some(lock_for_change(&g.db)?) } else { None };
    let key = unlock(g)?.audit_signing_key()?;
    let op = Operator::current();
    let audit_db = g.audit_db();
    let request_id = crate::server::new_request_id();
    let r = crate::audit::archive_blocking(&audit_db, &key, cut, &a.out, a.vacuum, &op.caller, &request_id).map_err(
        |e| match e {
            AuditError::Refused { field, reason } => CliError::new(format!("{field}: {reason}; nothing was changed")),
            e => CliError::new(format!(
                "the audit database {} was not archived ({e}); nothing was changed",
                audit_db.display()
            )),
        },
    )?;
    let shrink = match r.shrink {
        Shrink::Incremental => "freed pages returned to the file system",
        Shrink::Vacuumed => "the file was rewritten (VACUUM) and shrinks in steps from now on",
        Shrink::Reused => {
            "this file predates incremental auto-vacuum: new events reuse the freed pages, run once with --vacuum \
             (server stopped) to shrink it"
        }
    };
    outln!(
        "archived events {}..={} ({} events) to {} (sha256 {}); recorded as event {}; the live log continues from \
         event {}; audit database {} -> {} bytes ({shrink}). Keep the archive (WORM storage) and verify it with \
         `audit verify --archive FILE`.",
        r.from_sequence,
        r.through_sequence,
        r.events,
        r.out.display(),
        crate::crypto::secret::hex(&r.sha256),
        r.record_sequence,
        r.through_sequence,
        r.bytes_before,
        r.bytes_after
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_takes_rfc3339_or_an_age() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_before("1970-01-02T00:00:00Z", now).unwrap(), 86_400_000);
        assert_eq!(parse_before("9d", now).unwrap(), 86_400_000);
        assert_eq!(parse_before("24h", now).unwrap(), 9 * 86_400_000);
        assert_eq!(parse_before("60m", now).unwrap(), now - 3_600_000);
        for bad in ["", "d", "-1d", "9x", "yesterday", "99999999999999999999d"] {
            let e = parse_before(bad, now).unwrap_err().message;
            assert!(e.contains("--before"), "{bad}: {e}");
        }
    }
}
