//! The `pogo-vault` command line: argument parsing and dispatch. Each command's work lives
//! in a submodule; this file only maps arguments to calls and errors to exit codes.
//!
//! Secrets never come from argv (other users can read the process list): client and
//! subscription keys are read from standard input (without echo on a terminal), the master
//! key from a file, a passphrase from a file or an environment variable the operator names.
//!
//! Database options (`--db`, `--audit-db`, the master key options) belong to the commands
//! that open a database, and each lists only those it uses. They are also accepted before
//! the command (`pogo-vault --db vault.db tenant list`, as scripts have always written
//! them); [`GlobalArgs::from_matches`] merges both places, the one after the command
//! winning. Given before a command that opens no database, they are refused, so a
//! misplaced option never goes unnoticed.
//!
//! Standard output is written only through [`outln!`]: a reader that went away (`| head`,
//! a closed pipe) ends the command quietly with exit code 141, where `println!` would panic.
//!
//! The files depend one way. The leaves import no other file of the CLI above them:
//! `error.rs` (the error type), `args.rs` (the database options), `out.rs` and `output.rs`
//! (standard output), `logging.rs`, `runtime.rs` (async runtime, stop signals),
//! `connect.rs` (reaching a running vault), `db.rs` (opening the database files for a read
//! or a change) and `operator.rs` (who runs a command, its commit gate). The command files
//! (`admin.rs`, `tenant.rs`, `integration.rs`, `sim.rs`, `serve.rs`, `audit.rs`,
//! `onboard.rs`) import only leaves, never each other. This file wires them to clap and is
//! imported by none of them; its `pub use` lines keep `CliError` and the database options
//! at their old paths. `tests/architecture.rs` fails on any import circle.
#![deny(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Writes one line to standard output (`println!` syntax) and returns `Result<(), CliError>`:
/// a closed standard output becomes [`CliError::closed_stdout`], never a panic.
macro_rules! outln {
    () => {
        $crate::cli::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

mod admin;
mod args;
mod audit;
mod audit_archive;
mod connect;
mod db;
mod error;
mod integration;
mod logging;
mod onboard;
pub mod operator;
pub(crate) mod out;
mod output;
mod pg_args;
mod runtime;
mod serve;
mod sim;
mod storage;
mod tenant;

pub use args::{AuditDbArgs, ChangeDbArgs, GlobalArgs, MasterKeyArgs, VaultDbArgs};
pub use error::CliError;
pub(crate) use logging::ansi_stderr;

#[cfg(test)]
use args::DB_OPTION_IDS;

#[derive(Debug, Parser)]
#[command(
    name = "pogo-vault",
    version,
    about = "The one holder of PowerOffice Go client keys",
    long_about = None,
    after_help = "The database and master key options belong to the commands that open a database (each \
                  command's --help lists the ones it uses); they may also be given before the command."
)]
pub struct Cli {
    /// Database options may also come before the command; see the module docs.
    #[command(flatten)]
    pub db: ChangeDbArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new vault database and its master key record.
    Init(admin::InitArgs),
    /// Manage the integration (application key, subscription key, Go base URL) per environment.
    #[command(subcommand)]
    Integration(integration::IntegrationCommand),
    /// Register and manage tenants and their client keys.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Rewrap every data key under a new master key; the old master key stops working.
    RotateKek(admin::RotateKekArgs),
    /// Run a simulated PowerOffice Go with demo clients (prints its demo keys; for trying
    /// a vault and for tests).
    Sim(sim::SimArgs),
    /// Serve the gRPC API over mutual TLS (configuration from a TOML file).
    Serve(serve::ServeArgs),
    /// The embedded default: simulator, dev certificates, demo tenants, a real token over mTLS.
    Dev(serve::DevArgs),
    /// Ask a running vault for an access token, as a caller would (masked unless --raw).
    Token(serve::TokenArgs),
    /// Certificates for development.
    #[command(subcommand)]
    Certs(serve::CertsCommand),
    /// Check a configuration file as `serve` would, without starting.
    #[command(subcommand)]
    Config(serve::ConfigCommand),
    /// Check a policy file.
    #[command(subcommand)]
    Policy(serve::CheckCommand),
    /// Read, stream, export and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Go's onboarding flow from the command line (begin prints the URL to open).
    #[command(subcommand)]
    Onboard(onboard::OnboardCommand),
    /// Show a running vault's health, version, schema, tenant counts, master key id and last
    /// checkpoint (role `audit`).
    Status(connect::ConnectArgs),
    /// Copy the vault and audit databases consistently, even while the server serves.
    /// Writes FILE and FILE.audit; the master key is never inside.
    Backup {
        /// Where to write the copy of the vault database (the audit copy goes to FILE.audit);
        /// neither may exist. A missing directory is created (mode 0700).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// Restore a backup (FILE and FILE.audit) into --db and --audit-db, which must not exist
    /// (a missing directory is created, mode 0700).
    Restore {
        /// The backup's vault file (its audit file is FILE.audit beside it).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        #[command(flatten)]
        db: ChangeDbArgs,
    },
    /// Move the vault and its audit log between SQLite files and PostgreSQL.
    #[command(subcommand)]
    Storage(storage::StorageCommand),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        // Help and version go to standard output like every other line (a closed pipe
        // ends quietly); usage errors go to stderr as clap formats them.
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            let text = e.render().to_string();
            return match outln!("{}", text.trim_end()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => ExitCode::from(e.code),
            };
        }
        Err(e) => e.exit(),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = GlobalArgs::from_matches(&matches).and_then(|g| {
        init_logging(&cli.command);
        run(&g, cli.command)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

pub fn run(g: &GlobalArgs, command: Command) -> Result<(), CliError> {
    match command {
        Command::Init(a) => admin::init(g, a),
        Command::Integration(c) => integration::integration(g, c),
        Command::Tenant(c) => tenant::tenant(g, c),
        Command::RotateKek(a) => admin::rotate_kek(g, a),
        Command::Sim(a) => sim::sim(a),
        Command::Serve(a) => serve::serve(a),
        Command::Dev(a) => serve::dev(a),
        Command::Token(a) => serve::token(a),
        Command::Certs(c) => serve::certs(c),
        Command::Config(c) => serve::config_check(c),
        Command::Policy(c) => serve::policy_check(c),
        Command::Audit(c) => audit::run(g, c),
        Command::Onboard(c) => onboard::run(c),
        Command::Status(c) => serve::status(c),
        Command::Backup { out, .. } => admin::backup(g, &out),
        Command::Restore { from, .. } => admin::restore(g, &from),
        Command::Storage(c) => storage::run(g, c),
    }
}

fn init_logging(command: &Command) {
    // Long-running commands log at info; one-shot admin commands only warn, so their
    // standard output stays clean for scripts. `POGO_VAULT_LOG` overrides (EnvFilter syntax).
    let default = match command {
        // These set up logging themselves (format and level from their configuration).
        Command::Serve(_) | Command::Dev(_) => return,
        Command::Sim(_) => "info",
        _ => "warn",
    };
    let filter = crate::config::env_log_filter(default);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi_stderr())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every leaf command with its path (`tenant list`), after clap's own consistency checks.
    fn leaves() -> Vec<(String, clap::Command)> {
        let mut cmd = Cli::command();
        cmd.build();
        let mut out = Vec::new();
        let mut pending: Vec<(String, clap::Command)> =
            cmd.get_subcommands().map(|c| (c.get_name().to_owned(), c.clone())).collect();
        while let Some((path, c)) = pending.pop() {
            if c.has_subcommands() {
                pending.extend(
                    c.get_subcommands()
                        .filter(|s| s.get_name() != "help")
                        .map(|s| (format!("{path} {}", s.get_name()), s.clone())),
                );
            } else {
                out.push((path, c));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn every_option_of_every_command_is_described() {
        for (path, c) in leaves() {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(!help.trim().is_empty(), "`pogo-vault {path}`: --{id} has no description");
            }
        }
    }

    /// Issue 21: `token --help` listed --db and the master key options although `token`
    /// opens no database. Each command lists exactly the database options it uses.
    #[test]
    fn database_options_appear_only_on_commands_that_use_them() {
        const MASTER: [&str; 7] = [
            "master_key_file",
            "master_passphrase_file",
            "master_passphrase_env",
            "pkcs11_module",
            "pkcs11_token_label",
            "pkcs11_key_label",
            "pkcs11_pin_file",
        ];
        let change = [&["db", "audit_db"][..], &MASTER[..]].concat();
        let read = [&["db"][..], &MASTER[..]].concat();
        let expected: &[(&str, &[&str])] = &[
            ("init", &read),
            ("integration set", &change),
            ("integration use", &change),
            ("integration list", &read),
            ("tenant add", &change),
            ("tenant list", &read),
            ("tenant show", &read),
            ("tenant rotate-key", &change),
            ("tenant disable", &change),
            ("tenant enable", &change),
            ("tenant delete", &change),
            ("rotate-kek", &change),
            ("backup", &change),
            ("restore", &change),
            ("storage migrate", &change),
            ("storage export", &change),
            ("audit rotate-signing-key", &change),
            ("audit archive", &change),
            ("audit verify", &["db", "audit_db"]),
        ];
        for (path, c) in leaves() {
            let mut has: Vec<&str> =
                c.get_arguments().map(|a| a.get_id().as_str()).filter(|id| DB_OPTION_IDS.contains(id)).collect();
            has.sort_unstable();
            let mut want: Vec<&str> =
                expected.iter().find(|(p, _)| *p == path).map(|(_, ids)| ids.to_vec()).unwrap_or_default();
            want.sort_unstable();
            assert_eq!(has, want, "`pogo-vault {path}` database options");
        }
    }

    #[test]
    fn database_options_before_the_command_are_merged_or_refused() {
        let parse = |args: &[&str]| {
            let m = Cli::command().try_get_matches_from(args).expect("parses");
            GlobalArgs::from_matches(&m)
        };
        let g = parse(&["pogo-vault", "--db", "a.db", "tenant", "list"]).expect("merged");
        assert_eq!(g.db, PathBuf::from("a.db"));
        let g = parse(&["pogo-vault", "--db", "a.db", "tenant", "list", "--db", "b.db"]).expect("merged");
        assert_eq!(g.db, PathBuf::from("b.db"), "the one after the command wins");
        let g =
            parse(&["pogo-vault", "tenant", "add", "--tenant-id", "x", "--environment", "demo", "--audit-db", "c.db"])
                .expect("merged");
        assert_eq!(g.audit_db(), PathBuf::from("c.db"));
        let e = parse(&["pogo-vault", "--db", "a.db", "certs", "dev"]).expect_err("refused");
        assert!(e.message.contains("--db") && e.message.contains("certs dev"), "{}", e.message);
        let e = parse(&["pogo-vault", "--audit-db", "a.db", "tenant", "list"]).expect_err("refused");
        assert!(e.message.contains("--audit-db") && e.message.contains("tenant list"), "{}", e.message);
    }
}
