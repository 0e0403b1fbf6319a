//! The operator commands about a whole vault: `init` (a new database and its master key
//! record), `rotate-kek` (on the database files, or through a running vault with
//! `--endpoint`), `backup` and `restore` (both databases, recorded in the audit log before
//! anything is copied or put in place). Tenants are in `tenant.rs`, integrations in
//! `integration.rs`, the simulator in `sim.rs`.

use std::path::PathBuf;

use clap::Args;

use super::args::{GlobalArgs, VaultDbArgs};
use super::connect::{ThroughServer, through_server};
use super::db::{ForChange, change_error, lock_for_change, unlock, unlock_for_change};
use super::error::CliError;
use super::operator::Operator;
use crate::audit::{Action, Outcome};
use crate::crypto::MasterKeySource;
use crate::vault::{Argon2Costs, InitKey, KekRotation, Vault};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Create a new master key file (32 random bytes, mode 0600) and use it. Refuses to
    /// overwrite an existing file.
    #[arg(long, value_name = "FILE")]
    pub generate_master_key_file: Option<PathBuf>,
    /// With the --pkcs11-* options: use the key with that label that already exists in the
    /// token (it must be a sensitive, non-extractable AES key) instead of creating one.
    #[arg(long)]
    pub existing_key: bool,
    #[command(flatten)]
    pub argon2: Argon2Args,
    #[command(flatten)]
    pub db: VaultDbArgs,
    /// Create the vault in this PostgreSQL database (empty) instead of the --db file.
    #[command(flatten)]
    pub postgres: super::pg_args::PostgresArgs,
}

/// Argon2id costs, used when the master key comes from a passphrase.
#[derive(Debug, Args, Clone, Copy)]
pub struct Argon2Args {
    /// Argon2id memory in KiB (default 65536 = 64 MiB).
    #[arg(long, default_value_t = crate::crypto::Argon2Params::DEFAULT_MEMORY_KIB)]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    #[arg(long, default_value_t = crate::crypto::Argon2Params::DEFAULT_ITERATIONS)]
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    #[arg(long, default_value_t = crate::crypto::Argon2Params::DEFAULT_PARALLELISM)]
    pub argon2_parallelism: u32,
}

impl From<Argon2Args> for Argon2Costs {
    fn from(a: Argon2Args) -> Self {
        Argon2Costs {
            memory_kib: a.argon2_memory_kib,
            iterations: a.argon2_iterations,
            parallelism: a.argon2_parallelism,
        }
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NewKeyArgs {
    /// Use this existing master key file as the new key.
    #[arg(long, value_name = "FILE")]
    pub new_master_key_file: Option<PathBuf>,
    /// Create a new master key file (mode 0600) and use it.
    #[arg(long, value_name = "FILE")]
    pub generate_new_master_key_file: Option<PathBuf>,
    /// File holding the new master passphrase.
    #[arg(long, value_name = "FILE")]
    pub new_master_passphrase_file: Option<PathBuf>,
    /// Environment variable holding the new master passphrase.
    #[arg(long, value_name = "VAR")]
    pub new_master_passphrase_env: Option<String>,
    /// A new master key in an HSM, with this label: created as a non-extractable AES-256
    /// key (or, with --new-existing-key, an existing one). Module, token and PIN file come
    /// from --new-pkcs11-module, --new-pkcs11-token-label and --new-pkcs11-pin-file, else
    /// from the current --pkcs11-* options.
    #[arg(long, value_name = "LABEL")]
    pub new_pkcs11_key_label: Option<String>,
}

/// Where the new HSM key of `rotate-kek` lives, when not where the current one does.
#[derive(Debug, Args)]
pub struct NewPkcs11Args {
    /// The new key's PKCS#11 module (default: --pkcs11-module).
    #[arg(long, value_name = "FILE", requires = "new_pkcs11_key_label")]
    pub new_pkcs11_module: Option<PathBuf>,
    /// The new key's token (default: --pkcs11-token-label).
    #[arg(long, value_name = "LABEL", requires = "new_pkcs11_key_label")]
    pub new_pkcs11_token_label: Option<String>,
    /// The new key's token PIN file (default: --pkcs11-pin-file).
    #[arg(long, value_name = "FILE", requires = "new_pkcs11_key_label")]
    pub new_pkcs11_pin_file: Option<PathBuf>,
    /// Use an existing key with --new-pkcs11-key-label rather than creating one.
    #[arg(long, requires = "new_pkcs11_key_label")]
    pub new_existing_key: bool,
}

#[derive(Debug, Args)]
pub struct RotateKekArgs {
    #[command(flatten)]
    pub new: NewKeyArgs,
    #[command(flatten)]
    pub new_pkcs11: NewPkcs11Args,
    #[command(flatten)]
    pub remote: ThroughServer,
    #[command(flatten)]
    pub argon2: Argon2Args,
}

pub fn init(g: &GlobalArgs, a: InitArgs) -> Result<(), CliError> {
    let source = g.master.source_opt()?;
    if a.existing_key && !matches!(source, Some(MasterKeySource::Pkcs11(_))) {
        return Err(CliError::usage("--existing-key goes with the --pkcs11-* options (a key in an HSM)"));
    }
    let init_key = match (a.generate_master_key_file, source) {
        (Some(p), None) => InitKey::GenerateKeyFile(p),
        (None, Some(MasterKeySource::Pkcs11(s))) if !a.existing_key => InitKey::CreateHsmKey(s),
        (None, Some(s)) => InitKey::Existing(s),
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "--generate-master-key-file cannot be combined with another master key option",
            ));
        }
        (None, None) => {
            return Err(CliError::usage(
                "no master key given: pass --generate-master-key-file FILE (new key file), --master-key-file FILE, \
                 --master-passphrase-file FILE, --master-passphrase-env VAR, or the four --pkcs11-* options (a new \
                 key in an HSM; add --existing-key to use one that exists)",
            ));
        }
    };
    if let Some(o) = a.postgres.options()? {
        let vault = Vault::init_postgres(&o, &init_key, a.argon2.into())?;
        outln!("initialised the vault in PostgreSQL {} (master key id {})", o.describe(), vault.kek_id())?;
    } else {
        let _lock = lock_for_change(&g.db)?;
        let vault = Vault::init(&g.db, &init_key, a.argon2.into())?;
        outln!("initialised {} (master key id {})", g.db.display(), vault.kek_id())?;
    }
    match &init_key {
        InitKey::GenerateKeyFile(p) => outln!("master key written to {} (mode 0600)", p.display())?,
        InitKey::CreateHsmKey(s) => outln!(
            "master key created in the HSM: AES-256 key {:?} on token {:?}, sensitive and not extractable (it never \
             leaves the HSM)",
            s.key_label,
            s.token_label
        )?,
        _ => {}
    }
    outln!("keep the master key safe and apart from backups of the database: without it nothing in the vault opens")?;
    Ok(())
}

pub fn rotate_kek(g: &GlobalArgs, a: RotateKekArgs) -> Result<(), CliError> {
    let n = a.new;
    if let Some(conn) = a.remote.connect_args()? {
        if n.new_pkcs11_key_label.is_some() {
            return Err(CliError::usage(
                "through --endpoint the new key is a key file on the server's host; rotate to an HSM key with the \
                 server stopped (without --endpoint)",
            ));
        }
        // The key file is on the server's host: absolute paths only.
        let (path, generate) = match (n.new_master_key_file, n.generate_new_master_key_file) {
            (Some(p), None) => (p, false),
            (None, Some(p)) => (p, true),
            _ => {
                return Err(CliError::usage(
                    "through --endpoint the new key is a key file on the server's host: \
                     --new-master-key-file or --generate-new-master-key-file",
                ));
            }
        };
        if generate {
            return Err(CliError::usage(
                "through --endpoint the new key must already be on the server's host: provision it there \
                 (32 random bytes, mode 0600) and pass --new-master-key-file with its absolute path",
            ));
        }
        if !path.is_absolute() {
            return Err(CliError::usage(
                "--new-master-key-file: through --endpoint the path is on the server's host; give it absolute",
            ));
        }
        let req = crate::proto::v1::RotateKekRequest { new_master_key_file: path.display().to_string(), generate };
        let r = through_server(conn, async move |mut c| c.rotate_kek(req).await)?;
        outln!(
            "master key rotated through {}: {} -> {}; {} data keys rewrapped; the server uses the new key now. \
             Before its next restart point its master key source (vault.master_key_file, POGO_VAULT_MASTER_KEY_FILE \
             or the systemd credential) at {}: the old key no longer opens the database",
            a.remote.endpoint.as_deref().unwrap_or_default(),
            r.old_kek_id,
            r.new_kek_id,
            r.rewrapped,
            path.display()
        )?;
        return Ok(());
    }
    let new = if let Some(p) = n.new_master_key_file {
        InitKey::Existing(MasterKeySource::KeyFile(p))
    } else if let Some(p) = n.generate_new_master_key_file {
        InitKey::GenerateKeyFile(p)
    } else if let Some(p) = n.new_master_passphrase_file {
        InitKey::Existing(MasterKeySource::PassphraseFile(p))
    } else if let Some(v) = n.new_master_passphrase_env {
        InitKey::Existing(MasterKeySource::PassphraseEnv(v))
    } else if let Some(label) = n.new_pkcs11_key_label {
        let p = a.new_pkcs11;
        let current = g.master.pkcs11()?;
        let missing = |what: &str| {
            CliError::usage(format!(
                "--new-pkcs11-{what}: not given, and the current master key is not in an HSM to take it from"
            ))
        };
        let settings = crate::crypto::Pkcs11Settings {
            module: p
                .new_pkcs11_module
                .or_else(|| current.as_ref().map(|c| c.module.clone()))
                .ok_or_else(|| missing("module"))?,
            token_label: p
                .new_pkcs11_token_label
                .or_else(|| current.as_ref().map(|c| c.token_label.clone()))
                .ok_or_else(|| missing("token-label"))?,
            key_label: label,
            pin_file: p
                .new_pkcs11_pin_file
                .or_else(|| current.as_ref().map(|c| c.pin_file.clone()))
                .ok_or_else(|| missing("pin-file"))?,
        };
        if settings.key_label.trim().is_empty() {
            return Err(CliError::usage("--new-pkcs11-key-label: must not be empty"));
        }
        if p.new_existing_key {
            InitKey::Existing(MasterKeySource::Pkcs11(settings))
        } else {
            InitKey::CreateHsmKey(settings)
        }
    } else {
        return Err(CliError::usage("give the new master key"));
    };
    let ForChange { _lock, vault, key: akey, op } = unlock_for_change(g)?;
    let gate = op.gate(g.audit_db(), &akey, |op, r: &KekRotation| {
        let detail = format!("master key {} -> {}: {} data keys rewrapped", r.old_kek_id, r.new_kek_id, r.rewrapped);
        vec![op.record(Action::KekRotated, Outcome::Ok, detail)]
    });
    let r = vault.rotate_kek(&new, a.argon2.into(), &gate).map_err(|e| change_error(g, e))?;
    outln!(
        "master key rotated: {} -> {}; {} data keys rewrapped; the old master key no longer opens this database",
        r.old_kek_id,
        r.new_kek_id,
        r.rewrapped
    )?;
    Ok(())
}

/// `backup`: its record is durable in the audit database before anything is copied (so the
/// audit copy holds it); a record that cannot be written means no backup.
pub fn backup(g: &GlobalArgs, out: &std::path::Path) -> Result<(), CliError> {
    // No database lock: a backup reads, so it runs beside a server (its record is an
    // append to the audit log, which serialises with the server's writer).
    let akey = unlock(g)?.audit_signing_key()?;
    let op = Operator::current();
    let audit_db = g.audit_db();
    let record = || {
        let rec = op.record(Action::BackupTaken, Outcome::Ok, format!("backup to {}", out.display()));
        crate::audit::AuditLog::append_blocking_once(&audit_db, &akey, rec).map(|_| ()).map_err(|e| e.to_string())
    };
    let r = crate::backup::backup(&g.db, &audit_db, out, record).map_err(|e| CliError::new(e.to_string()))?;
    outln!(
        "backup written: {} (vault: {} tenants) and {} (audit: {} events); the master key is not inside: keep it apart",
        r.files.vault.display(),
        r.tenants,
        r.files.audit.display(),
        r.audit_events
    )?;
    Ok(())
}

/// `restore`: the restored audit database receives the restore's record (signed with the
/// restored vault's key, so the master key is needed) before either file is put in place.
pub fn restore(g: &GlobalArgs, from: &std::path::Path) -> Result<(), CliError> {
    let source = g.master.source()?;
    // The lock file lives beside the database: a new place is made (0700) first.
    crate::backup::create_missing_dirs(&[&g.db, &g.audit_db()]).map_err(|e| CliError::new(e.to_string()))?;
    let _lock = lock_for_change(&g.db)?;
    let op = Operator::current();
    let record = |staged_db: &std::path::Path, staged_audit: &std::path::Path| {
        let vault = Vault::unlock(staged_db, &source).map_err(|e| e.to_string())?;
        let akey = vault.audit_signing_key().map_err(|e| e.to_string())?;
        let detail = format!("restored from {} into {}", from.display(), g.db.display());
        let rec = op.record(Action::Restored, Outcome::Ok, detail);
        crate::audit::AuditLog::append_blocking_once(staged_audit, &akey, rec).map(|_| ()).map_err(|e| e.to_string())
    };
    let r = crate::backup::restore(from, &g.db, &g.audit_db(), record).map_err(|e| CliError::new(e.to_string()))?;
    outln!(
        "restored {} tenants into {} and {} audit events into {}; start with the same master key, then run `audit verify`",
        r.tenants,
        g.db.display(),
        r.audit_events,
        g.audit_db().display()
    )?;
    Ok(())
}
