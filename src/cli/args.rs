//! The database options shared by the commands: which files a command opens (`--db`,
//! `--audit-db`) and where its master key comes from, as clap arguments, and
//! [`GlobalArgs`], the options in force for a command wherever they were given (before the
//! command or after it; see the `cli` module docs).

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use super::error::CliError;
use crate::crypto::MasterKeySource;

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
    /// A master key in an HSM: the PKCS#11 module (shared library). With the three
    /// --pkcs11-* options below.
    #[arg(long, env = "POGO_VAULT_PKCS11_MODULE", value_name = "FILE")]
    pub pkcs11_module: Option<PathBuf>,
    /// The HSM token's label.
    #[arg(long, env = "POGO_VAULT_PKCS11_TOKEN_LABEL", value_name = "LABEL")]
    pub pkcs11_token_label: Option<String>,
    /// The master key's label in the token.
    #[arg(long, env = "POGO_VAULT_PKCS11_KEY_LABEL", value_name = "LABEL")]
    pub pkcs11_key_label: Option<String>,
    /// File holding the token's user PIN (mode 0600).
    #[arg(long, env = "POGO_VAULT_PKCS11_PIN_FILE", value_name = "FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

/// The ids of the database options, as clap names them.
pub(super) const DB_OPTION_IDS: [&str; 9] = [
    "db",
    "audit_db",
    "master_key_file",
    "master_passphrase_file",
    "master_passphrase_env",
    "pkcs11_module",
    "pkcs11_token_label",
    "pkcs11_key_label",
    "pkcs11_pin_file",
];

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
                pkcs11_module: path_of("pkcs11_module"),
                pkcs11_token_label: string_of("pkcs11_token_label"),
                pkcs11_key_label: string_of("pkcs11_key_label"),
                pkcs11_pin_file: path_of("pkcs11_pin_file"),
            },
        })
    }
}

impl MasterKeyArgs {
    /// The one configured source, or a clear error when none or several are given.
    pub fn source(&self) -> Result<MasterKeySource, CliError> {
        self.source_opt()?.ok_or_else(|| {
            CliError::usage(
                "no master key given: pass --master-key-file FILE, --master-passphrase-file FILE, \
                 --master-passphrase-env VAR, or the four --pkcs11-* options",
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
        if let Some(s) = self.pkcs11()? {
            sources.push(MasterKeySource::Pkcs11(s));
        }
        if sources.len() > 1 {
            return Err(CliError::usage(
                "give only one of --master-key-file, --master-passphrase-file, --master-passphrase-env and the \
                 --pkcs11-* options",
            ));
        }
        Ok(sources.pop())
    }

    /// The HSM key the four `--pkcs11-*` options name: all four or none.
    pub fn pkcs11(&self) -> Result<Option<crate::crypto::Pkcs11Settings>, CliError> {
        match (&self.pkcs11_module, &self.pkcs11_token_label, &self.pkcs11_key_label, &self.pkcs11_pin_file) {
            (None, None, None, None) => Ok(None),
            (Some(module), Some(token), Some(key), Some(pin)) => {
                for (option, value) in [("--pkcs11-token-label", token), ("--pkcs11-key-label", key)] {
                    if value.trim().is_empty() {
                        return Err(CliError::usage(format!("{option}: must not be empty")));
                    }
                }
                Ok(Some(crate::crypto::Pkcs11Settings {
                    module: module.clone(),
                    token_label: token.clone(),
                    key_label: key.clone(),
                    pin_file: pin.clone(),
                }))
            }
            _ => {
                let missing: Vec<&str> = [
                    ("--pkcs11-module", self.pkcs11_module.is_none()),
                    ("--pkcs11-token-label", self.pkcs11_token_label.is_none()),
                    ("--pkcs11-key-label", self.pkcs11_key_label.is_none()),
                    ("--pkcs11-pin-file", self.pkcs11_pin_file.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(o, _)| *o)
                .collect();
                Err(CliError::usage(format!(
                    "a master key in an HSM needs all four --pkcs11-* options; missing: {}",
                    missing.join(", ")
                )))
            }
        }
    }
}
