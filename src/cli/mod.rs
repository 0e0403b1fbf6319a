//! The `pogo-vault` command line: argument parsing and dispatch. Each command's work lives
//! in a submodule; this file only maps arguments to calls and errors to exit codes.
//!
//! Secrets never come from argv (other users can read the process list): client and
//! subscription keys are read from standard input (without echo on a terminal), the master
//! key from a file, a passphrase from a file or an environment variable the operator names.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::crypto::MasterKeySource;
use crate::domain::InvalidInput;
use crate::vault::VaultError;

mod admin;
mod audit;
mod onboard;
pub mod operator;
mod output;
mod serve;

#[derive(Debug, Parser)]
#[command(name = "pogo-vault", version, about = "The one holder of PowerOffice Go client keys", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// The vault database file.
    #[arg(long, global = true, env = "POGO_VAULT_DB", default_value = "pogo-vault.db")]
    pub db: PathBuf,
    /// The audit database (default: `<db stem>-audit.db` beside the vault database).
    /// Commands that change the vault append their audit record here.
    #[arg(long, global = true, env = "POGO_VAULT_AUDIT_DB")]
    pub audit_db: Option<PathBuf>,
    #[command(flatten)]
    pub master: MasterKeyArgs,
}

/// How to obtain the master key (exactly one, except for `init --generate-master-key-file`).
#[derive(Debug, Args, Clone, Default)]
pub struct MasterKeyArgs {
    /// Master key file: 32 random bytes, mode 0600.
    #[arg(long, global = true, env = "POGO_VAULT_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// File holding the master passphrase (mode 0600).
    #[arg(long, global = true, env = "POGO_VAULT_MASTER_PASSPHRASE_FILE", value_name = "FILE")]
    pub master_passphrase_file: Option<PathBuf>,
    /// Name of an environment variable holding the master passphrase (the name, not the value).
    #[arg(long, global = true, env = "POGO_VAULT_MASTER_PASSPHRASE_ENV", value_name = "VAR")]
    pub master_passphrase_env: Option<String>,
}

impl GlobalArgs {
    pub fn audit_db(&self) -> PathBuf {
        self.audit_db.clone().unwrap_or_else(|| crate::config::default_audit_db(&self.db))
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
    /// Run a simulated PowerOffice Go on a local address (for development and tests).
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
    /// Check a configuration file.
    #[command(subcommand)]
    Config(serve::CheckCommand),
    /// Check a policy file.
    #[command(subcommand)]
    Policy(serve::CheckCommand),
    /// Read, stream, export and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Go's onboarding flow from the command line (begin prints the URL to open).
    #[command(subcommand)]
    Onboard(onboard::OnboardCommand),
    /// Show a running vault's health, version, schema, tenant counts, master key id and last checkpoint.
    Status(serve::ConnectArgs),
    /// Copy the vault and audit databases consistently, even while the server serves.
    /// Writes FILE and FILE.audit; the master key is never inside.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup (FILE and FILE.audit) into --db and --audit-db, which must not exist.
    Restore {
        #[arg(long)]
        from: PathBuf,
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
    let cli = Cli::parse();
    init_logging(&cli.command);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    match cli.command {
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
        Command::Backup { out } => admin::backup(g, &out),
        Command::Restore { from } => admin::restore(g, &from),
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("POGO_VAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
