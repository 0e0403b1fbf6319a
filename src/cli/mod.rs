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
#![deny(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::crypto::MasterKeySource;
use crate::domain::InvalidInput;
use crate::vault::VaultError;

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
mod audit;
mod onboard;
pub mod operator;
pub(crate) mod out;
mod output;
mod serve;

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

/// The vault database and its master key: for the commands that open the vault.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Database")]
pub struct VaultDbArgs {
    /// The vault database file [default: pogo-vault.db].
    #[arg(long, env = "POGO_VAULT_DB", value_name = "FILE")]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub master: MasterKeyArgs,
}

/// The audit database: for the commands that record a change (or read the log offline).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Database")]
pub struct AuditDbArgs {
    /// The audit database, where a change's record is made durable before the change
    /// commits [default: `<db stem>-audit.db` beside the vault database].
    #[arg(long, env = "POGO_VAULT_AUDIT_DB", value_name = "FILE")]
    pub audit_db: Option<PathBuf>,
}

/// Both databases and the master key: for the commands that change the vault.
#[derive(Debug, Args, Clone, Default)]
pub struct ChangeDbArgs {
    #[command(flatten)]
    pub vault: VaultDbArgs,
    #[command(flatten)]
    pub audit: AuditDbArgs,
}

/// The database options in force for a command, wherever they were given.
#[derive(Debug, Clone)]
pub struct GlobalArgs {
    pub db: PathBuf,
    pub audit_db: Option<PathBuf>,
    pub master: MasterKeyArgs,
}

/// How to obtain the master key (exactly one, except for `init --generate-master-key-file`).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Master key (exactly one)")]
pub struct MasterKeyArgs {
    /// Master key file: 32 random bytes, mode 0600.
    #[arg(long, env = "POGO_VAULT_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// File holding the master passphrase (mode 0600).
    #[arg(long, env = "POGO_VAULT_MASTER_PASSPHRASE_FILE", value_name = "FILE")]
    pub master_passphrase_file: Option<PathBuf>,
    /// Name of an environment variable holding the master passphrase (the name, not the value).
    // The value is never shown in help: a passphrase put there by mistake must not be echoed.
    #[arg(long, env = "POGO_VAULT_MASTER_PASSPHRASE_ENV", value_name = "VAR", hide_env_values = true)]
    pub master_passphrase_env: Option<String>,
}

/// The ids of the database options, as clap names them.
const DB_OPTION_IDS: [&str; 5] =
    ["db", "audit_db", "master_key_file", "master_passphrase_file", "master_passphrase_env"];

impl GlobalArgs {
    pub fn audit_db(&self) -> PathBuf {
        self.audit_db.clone().unwrap_or_else(|| crate::config::default_audit_db(&self.db))
    }

    /// The database options from the top level and from every subcommand level that
    /// defines them (the deepest given wins). Refuses an option given on the command line
    /// before a command that does not take it.
    pub fn from_matches(top: &ArgMatches) -> Result<GlobalArgs, CliError> {
        let mut levels = vec![top];
        let mut path = Vec::new();
        while let Some((name, sub)) = levels.last().and_then(|m| m.subcommand()) {
            path.push(name.to_owned());
            levels.push(sub);
        }
        let leaf = levels.last().copied().unwrap_or(top);
        for id in DB_OPTION_IDS {
            let given_on_top = top.value_source(id) == Some(ValueSource::CommandLine);
            let leaf_takes_it = !std::ptr::eq(leaf, top) && leaf.try_contains_id(id).is_ok();
            if given_on_top && !leaf_takes_it {
                return Err(CliError::usage(format!(
                    "--{} is not an option of `pogo-vault {}`, which opens no {}",
                    id.replace('_', "-"),
                    path.join(" "),
                    if id == "audit_db" { "audit database" } else { "vault database" }
                )));
            }
        }
        let path_of = |id: &str| -> Option<PathBuf> {
            levels.iter().rev().find_map(|m| m.try_get_one::<PathBuf>(id).ok().flatten().cloned())
        };
        let string_of = |id: &str| -> Option<String> {
            levels.iter().rev().find_map(|m| m.try_get_one::<String>(id).ok().flatten().cloned())
        };
        Ok(GlobalArgs {
            db: path_of("db").unwrap_or_else(|| PathBuf::from("pogo-vault.db")),
            audit_db: path_of("audit_db"),
            master: MasterKeyArgs {
                master_key_file: path_of("master_key_file"),
                master_passphrase_file: path_of("master_passphrase_file"),
                master_passphrase_env: string_of("master_passphrase_env"),
            },
        })
    }
}

impl MasterKeyArgs {
    /// The one configured source, or a clear error when none or several are given.
    pub fn source(&self) -> Result<MasterKeySource, CliError> {
        self.source_opt()?.ok_or_else(|| {
            CliError::usage(
                "no master key given: pass --master-key-file FILE, --master-passphrase-file FILE or --master-passphrase-env VAR",
            )
        })
    }

    pub fn source_opt(&self) -> Result<Option<MasterKeySource>, CliError> {
        let mut sources = Vec::new();
        if let Some(p) = &self.master_key_file {
            sources.push(MasterKeySource::KeyFile(p.clone()));
        }
        if let Some(p) = &self.master_passphrase_file {
            sources.push(MasterKeySource::PassphraseFile(p.clone()));
        }
        if let Some(v) = &self.master_passphrase_env {
            sources.push(MasterKeySource::PassphraseEnv(v.clone()));
        }
        if sources.len() > 1 {
            return Err(CliError::usage(
                "give only one of --master-key-file, --master-passphrase-file and --master-passphrase-env",
            ));
        }
        Ok(sources.pop())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new vault database and its master key record.
    Init(admin::InitArgs),
    /// Manage the integration (application key, subscription key, Go base URL) per environment.
    #[command(subcommand)]
    Integration(admin::IntegrationCommand),
    /// Register and manage tenants and their client keys.
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// Rewrap every data key under a new master key; the old master key stops working.
    RotateKek(admin::RotateKekArgs),
    /// Run a simulated PowerOffice Go with demo clients (prints its demo keys; for trying
    /// a vault and for tests).
    Sim(admin::SimArgs),
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
    Status(serve::ConnectArgs),
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
}

/// A command failed: the one line to print, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1 }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }

    /// Standard output was closed by its reader (`| head`): nothing more to say, and nobody
    /// to say it to. Exit code 141, as a shell reports a process ended by SIGPIPE.
    pub fn closed_stdout() -> Self {
        Self { message: String::new(), code: 141 }
    }
}

impl From<VaultError> for CliError {
    fn from(e: VaultError) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<InvalidInput> for CliError {
    fn from(e: InvalidInput) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        CliError::new(e.to_string())
    }
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
        Command::Integration(c) => admin::integration(g, c),
        Command::Tenant(c) => admin::tenant(g, c),
        Command::RotateKek(a) => admin::rotate_kek(g, a),
        Command::Sim(a) => admin::sim(a),
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
    }
}

/// Colours only for a person: not when standard error is a file, a pipe or a log collector.
pub(crate) fn ansi_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("POGO_VAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
        const MASTER: [&str; 3] = ["master_key_file", "master_passphrase_file", "master_passphrase_env"];
        let change = ["db", "audit_db", MASTER[0], MASTER[1], MASTER[2]];
        let read = ["db", MASTER[0], MASTER[1], MASTER[2]];
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
            ("audit rotate-signing-key", &change),
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
