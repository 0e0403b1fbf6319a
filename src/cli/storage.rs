//! `pogo-vault storage`: moving a vault between its SQLite files and PostgreSQL
//! (`usecase::storage_move`). Both run with the server stopped on the source: `migrate`
//! holds the files' lock; `export` reads one snapshot per database and records itself
//! first.

use std::path::PathBuf;

use clap::Subcommand;

use super::args::{ChangeDbArgs, GlobalArgs};
use super::operator::Operator;
use super::pg_args::PostgresArgs;
use super::{CliError, db::lock_for_change};
use crate::audit::{Action, Outcome};
use crate::usecase::storage_move::{MoveReport, export_to_sqlite, migrate_to_postgres};

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copy the vault (--db) and its audit log (--audit-db) into an empty PostgreSQL
    /// database, in one transaction: sealed blobs and the hash chain byte for byte, the
    /// copy compared table by table and the audit log verified there at the end. The move
    /// is recorded in the audit log first (so the copy holds it); the files are left as
    /// they were. Stop the server on the files first. Needs the master key (to sign that
    /// record and to prove the key opens the vault).
    Migrate {
        /// The PostgreSQL database: `postgresql://user@host[:port]/dbname` (no password).
        #[arg(long, value_name = "URL")]
        to_postgres: String,
        /// A file holding the database password.
        #[arg(long, value_name = "FILE")]
        postgres_password_file: Option<PathBuf>,
        /// The CA (PEM) of the database server's certificate; TLS (verify-full) exactly when
        /// given, plaintext only to loopback.
        #[arg(long, value_name = "FILE")]
        postgres_ca_file: Option<PathBuf>,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// Copy a vault in PostgreSQL (--postgres-url) and its audit log into new SQLite files
    /// (--db, --audit-db; neither may exist), for a drill or to leave PostgreSQL. Recorded
    /// in the PostgreSQL audit log first; the copied log is verified at the end.
    Export {
        #[command(flatten)]
        postgres: PostgresArgs,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
}

pub fn run(g: &GlobalArgs, c: StorageCommand) -> Result<(), CliError> {
    let op = Operator::current();
    let source = g.master.source()?;
    let audit_db = g.audit_db();
    let fail = |e: crate::usecase::storage_move::MoveError| CliError::new(e.to_string());
    match c {
        StorageCommand::Migrate { to_postgres, postgres_password_file, postgres_ca_file, .. } => {
            let args = PostgresArgs { postgres_url: Some(to_postgres), postgres_password_file, postgres_ca_file };
            let target = args
                .options()
                .map_err(|e| CliError::new(e.message.replace("--postgres-url", "--to-postgres")))?
                .ok_or_else(|| CliError::usage("--to-postgres: required"))?;
            let _lock = lock_for_change(&g.db)?;
            let detail = format!(
                "storage migrate: {} and {} copied into PostgreSQL {}",
                g.db.display(),
                audit_db.display(),
                target.describe()
            );
            let rec = op.record(Action::StorageMoved, Outcome::Ok, detail);
            let r = migrate_to_postgres(&g.db, &audit_db, &source, &target, rec).map_err(fail)?;
            say("migrated", &target.describe(), &r)?;
            outln!(
                "the files are left as they were: serve the vault from PostgreSQL from now on ([storage] backend = \
                 \"postgres\"); a server started on the files again would fork the vault and its log"
            )?;
            Ok(())
        }
        StorageCommand::Export { postgres, .. } => {
            let from = postgres.options()?.ok_or_else(|| CliError::usage("--postgres-url: required"))?;
            let detail = format!(
                "storage export: the vault in PostgreSQL {} copied into {} and {}",
                from.describe(),
                g.db.display(),
                audit_db.display()
            );
            let rec = op.record(Action::StorageMoved, Outcome::Ok, detail);
            let r = export_to_sqlite(&from, &source, &g.db, &audit_db, rec).map_err(fail)?;
            say("exported", &format!("{} and {}", g.db.display(), audit_db.display()), &r)
        }
    }
}

fn say(what: &str, to: &str, r: &MoveReport) -> Result<(), CliError> {
    outln!(
        "{what} to {to}: {} tenants, {} sealed secrets, {} audit events, {} checkpoints (every table compared: rows \
         and SHA-256); the audit log there verifies: {} events, head {} at {}",
        r.vault.rows("tenants"),
        r.vault.rows("sealed_secrets"),
        r.audit.rows("events"),
        r.audit.rows("checkpoints"),
        r.verified.events_checked,
        crate::crypto::secret::hex(&r.verified.head_hash),
        r.verified.head_sequence
    )?;
    Ok(())
}
