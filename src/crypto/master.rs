//! The master key (KEK): where it comes from, and how a wrong one is caught at open.
//!
//! Two sources (DESIGN.md invariant 3):
//! - a key file of exactly 32 random bytes (or 64 hex digits), refused when group or others
//!   may read it;
//! - a passphrase through Argon2id. Defaults m = 64 MiB, t = 3, p = 1: RFC 9106's second
//!   recommended option for memory-constrained use, about a third of a second here, paid
//!   once at start-up. Salt and parameters live in the database, so the passphrase alone
//!   opens it. The passphrase is read from a file or from an environment variable the
//!   operator names, never from argv (other users can read the process list).
//!
//! A key-check value, `HMAC-SHA256(KEK, "key-check")`, is stored at `init`; opening with
//! another key fails that check before anything is served, with "wrong master key" rather
//! than a decryption failure deep inside.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::aead::{self, CryptoError};
use super::hsm::{HsmError, HsmKek, KekFailure, Pkcs11Settings};
use super::secret::{SymmetricKey, hex};

/// The key-encryption key, with its public id: bytes in memory (a key file or a
/// passphrase), or a key that never leaves an HSM ([`HsmKek`]).
pub struct MasterKey {
    key: Kek,
    id: String,
}

enum Kek {
    Software(SymmetricKey),
    Hsm(Arc<HsmKek>),
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id={}, [redacted])", self.id)
    }
}

/// Associated data of an HSM key's key-check blob (never that of a wrapped DEK).
const HSM_KEY_CHECK_AAD: &[u8] = b"pogo-vault/v1 key-check";

impl MasterKey {
    pub fn from_key(key: SymmetricKey) -> Self {
        // The id is a PRF output under the key: it names the key without revealing it.
        let id = hex(&key.derive(b"pogo-vault/v1 kek-id")[..6]);
        Self { key: Kek::Software(key), id }
    }

    /// A master key held in an HSM.
    pub fn from_hsm(hsm: Arc<HsmKek>) -> Self {
        Self { id: hsm.id().to_owned(), key: Kek::Hsm(hsm) }
    }

    /// A short public name of this key (12 hex digits), stored beside everything it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The HSM holding this key, if it is held in one.
    pub fn hsm(&self) -> Option<&Arc<HsmKek>> {
        match &self.key {
            Kek::Hsm(h) => Some(h),
            Kek::Software(_) => None,
        }
    }

    /// `wrap[KEK](dek, aad)`: XChaCha20-Poly1305 in memory, or AES-256-GCM in the HSM.
    pub(super) fn wrap(&self, aad: &[u8], dek: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.key {
            Kek::Software(k) => aead::encrypt(k.expose_secret(), aad, dek),
            Kek::Hsm(h) => h.encrypt(aad, dek).map_err(hsm_failure),
        }
    }

    /// Opens a blob of [`MasterKey::wrap`].
    pub(super) fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match &self.key {
            Kek::Software(k) => aead::decrypt(k.expose_secret(), aad, wrapped),
            Kek::Hsm(h) => h.decrypt(aad, wrapped).map_err(hsm_failure),
        }
    }

    /// The value stored at `init` (and `rotate-kek`) to recognise this key later: an HMAC
    /// under a key in memory; for an HSM key, a known value wrapped in the HSM.
    pub fn key_check(&self) -> Result<Vec<u8>, CryptoError> {
        match &self.key {
            Kek::Software(k) => Ok(k.derive(b"pogo-vault/v1 key-check").to_vec()),
            Kek::Hsm(_) => self.wrap(HSM_KEY_CHECK_AAD, &[0u8; 32]),
        }
    }

    /// Whether `stored` is this key's key-check value (constant time in memory). `Err` only
    /// when an HSM cannot be asked.
    pub fn matches_check(&self, stored: &[u8]) -> Result<bool, CryptoError> {
        match &self.key {
            Kek::Software(_) => Ok(self.key_check()?.ct_eq(stored).into()),
            Kek::Hsm(_) => match self.unwrap(HSM_KEY_CHECK_AAD, stored) {
                Ok(v) => Ok(v[..].ct_eq(&[0u8; 32][..]).into()),
                Err(CryptoError::DoesNotOpen) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }
}

fn hsm_failure(f: KekFailure) -> CryptoError {
    match f {
        KekFailure::DoesNotOpen => CryptoError::DoesNotOpen,
        KekFailure::Unavailable(reason) => CryptoError::KeyUnavailable(reason),
    }
}

/// Argon2id cost parameters and salt, stored in the database for passphrase-derived keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: Vec<u8>,
}

impl Argon2Params {
    pub const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
    pub const DEFAULT_ITERATIONS: u32 = 3;
    pub const DEFAULT_PARALLELISM: u32 = 1;

    /// Fresh 16-byte random salt with the given costs.
    pub fn with_costs(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, MasterKeyError> {
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| MasterKeyError::Random)?;
        let p = Self { memory_kib, iterations, parallelism, salt };
        p.argon2()?;
        Ok(p)
    }

    fn argon2(&self) -> Result<argon2::Argon2<'static>, MasterKeyError> {
        // Bounds on what is accepted (also from the database, which an attacker might edit
        // to make start-up hang or exhaust memory): 1 MiB to 4 GiB, 1 to 64 passes, 1 to 16 lanes.
        if !(1024..=4 * 1024 * 1024).contains(&self.memory_kib)
            || !(1..=64).contains(&self.iterations)
            || !(1..=16).contains(&self.parallelism)
        {
            return Err(MasterKeyError::Argon2Params(format!(
                "m={} KiB, t={}, p={} are outside 1024..=4194304 KiB, 1..=64, 1..=16",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| MasterKeyError::Argon2Params(e.to_string()))?;
        Ok(argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params))
    }
}

/// An operator's passphrase. Zeroized on drop; never printed.
pub struct Passphrase(SecretString);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}

impl Passphrase {
    /// Minimum length in characters. Argon2 slows guessing; it cannot save a short word.
    pub const MIN_CHARS: usize = 12;

    pub fn new(s: &str, origin: &str) -> Result<Self, MasterKeyError> {
        // One trailing newline (from `echo` or an editor) is not part of the passphrase.
        let s = s.strip_suffix('\n').unwrap_or(s);
        let s = s.strip_suffix('\r').unwrap_or(s);
        if s.chars().count() < Self::MIN_CHARS {
            return Err(MasterKeyError::PassphraseTooShort { origin: origin.to_owned() });
        }
        Ok(Self(SecretString::from(s)))
    }

    /// Reads the passphrase from a file; the same permission rule as key files applies.
    pub fn from_file(path: &Path) -> Result<Self, MasterKeyError> {
        check_private(path)?;
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| MasterKeyError::read(path, e))?);
        let s = std::str::from_utf8(&bytes)
            .map_err(|_| MasterKeyError::PassphraseNotUtf8 { origin: path.display().to_string() })?;
        Self::new(s, &path.display().to_string())
    }

    /// Reads the passphrase from the environment variable the operator named. The name is
    /// never repeated in an error: an operator who typed the passphrase itself where its
    /// variable's name belongs must not see it echoed into a terminal, a log or CI output.
    pub fn from_env(var: &str) -> Result<Self, MasterKeyError> {
        let is_name = !var.is_empty()
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_name {
            return Err(MasterKeyError::PassphraseEnvNotAName { chars: var.chars().count() });
        }
        let value = Zeroizing::new(std::env::var(var).map_err(|_| MasterKeyError::PassphraseEnvMissing)?);
        Self::new(&value, "the environment variable named by --master-passphrase-env")
    }

    /// Argon2id(passphrase, salt) → master key.
    pub fn derive(&self, params: &Argon2Params) -> Result<MasterKey, MasterKeyError> {
        let mut out = Zeroizing::new([0u8; 32]);
        params
            .argon2()?
            .hash_password_into(self.0.expose_secret().as_bytes(), &params.salt, &mut out[..])
            .map_err(|e| MasterKeyError::Argon2Params(e.to_string()))?;
        let key = SymmetricKey::from_bytes(&out[..]).ok_or(MasterKeyError::Random)?;
        Ok(MasterKey::from_key(key))
    }
}

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key or passphrase file may be read by group or others.
    #[error("{path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    LoosePermissions { path: String, mode: u32 },
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    /// The key file is not 32 bytes (or 64 hex digits).
    #[error(
        "{path} is not a master key file: it must hold exactly 32 random bytes (or 64 hex digits); create one with `pogo-vault init --generate-master-key-file FILE`"
    )]
    KeyFileFormat { path: String },
    /// `--generate-master-key-file` would overwrite an existing file.
    #[error("{path} already exists; refusing to overwrite a master key file (move it away or choose another path)")]
    KeyFileExists { path: String },
    /// The key file could not be written.
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    /// The passphrase is shorter than [`Passphrase::MIN_CHARS`].
    #[error("the passphrase from {origin} is too short: use at least 12 characters")]
    PassphraseTooShort { origin: String },
    /// The passphrase file is not UTF-8.
    #[error("the passphrase in {origin} is not UTF-8 text")]
    PassphraseNotUtf8 { origin: String },
    /// The named environment variable is not set (its name is not repeated: see
    /// [`Passphrase::from_env`]).
    #[error(
        "the environment variable named by --master-passphrase-env (or master_passphrase_env) is not set; \
         export it first (its name is not repeated here, in case it is the passphrase itself)"
    )]
    PassphraseEnvMissing,
    /// `--master-passphrase-env` holds something that is not a variable name (likely the
    /// passphrase itself): refused without repeating it.
    #[error(
        "--master-passphrase-env (or master_passphrase_env) takes the NAME of an environment variable \
         (letters, digits and _), not the passphrase: the {chars}-character value given is not a name and is not \
         repeated here; if it was the passphrase, it is now in your shell history: consider it exposed"
    )]
    PassphraseEnvNotAName { chars: usize },
    /// Argon2 refused the parameters.
    #[error("bad Argon2 parameters: {0}")]
    Argon2Params(String),
    /// The key-check value does not match: another key than the one the database holds.
    /// Key ids are public (a PRF output under the key), so both may be named; after a
    /// `rotate-kek` the message says so, since a stale key file is then the likely cause.
    #[error(
        "wrong master key: the key given has id {given}, but this database expects master key {expected}{}",
        match rotated_at {
            Some(when) => format!(
                " (the master key was rotated with rotate-kek at {when}: point --master-key-file, \
                 POGO_VAULT_MASTER_KEY_FILE or vault.master_key_file at the new key, or give the new passphrase)"
            ),
            None => " (the key it was initialised with)".to_owned(),
        }
    )]
    WrongMasterKey { given: String, expected: String, rotated_at: Option<String> },
    /// The system random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// The HSM holding (or to hold) the master key refused or failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The HSM went away while the key was being checked.
    #[error("the master key's HSM is unavailable: {0}")]
    HsmUnavailable(String),
}

impl MasterKeyError {
    fn read(path: &Path, e: std::io::Error) -> Self {
        MasterKeyError::Read { path: path.display().to_string(), reason: e.kind().to_string() }
    }
}

/// Refuses a file that group or others may read or write.
pub fn check_private(path: &Path) -> Result<(), MasterKeyError> {
    let meta = fs::metadata(path).map_err(|e| MasterKeyError::read(path, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(MasterKeyError::LoosePermissions { path: path.display().to_string(), mode });
    }
    Ok(())
}

/// Reads a master key file: 32 raw bytes, or 64 hex digits (one trailing newline allowed).
pub fn read_key_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
    check_private(path)?;
    let bytes = Zeroizing::new(fs::read(path).map_err(|e| MasterKeyError::read(path, e))?);
    let format_err = || MasterKeyError::KeyFileFormat { path: path.display().to_string() };
    let key = if bytes.len() == 32 {
        SymmetricKey::from_bytes(&bytes)
    } else {
        let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        decode_hex32(text).and_then(|k| SymmetricKey::from_bytes(&k[..]))
    };
    key.map(MasterKey::from_key).ok_or_else(format_err)
}

fn decode_hex32(text: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    if text.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, pair) in text.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Generates 32 random bytes into a new file with mode 0600. Never overwrites.
pub fn generate_key_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
    let key = SymmetricKey::generate().map_err(|_| MasterKeyError::Random)?;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            MasterKeyError::KeyFileExists { path: path.display().to_string() }
        } else {
            MasterKeyError::Write { path: path.display().to_string(), reason: e.kind().to_string() }
        }
    })?;
    f.write_all(key.expose_secret())
        .and_then(|()| f.sync_all())
        // The file's directory entry must survive a power loss too: fsync the directory.
        .and_then(|()| sync_parent_dir(path))
        .map_err(|e| MasterKeyError::Write { path: path.display().to_string(), reason: e.kind().to_string() })?;
    Ok(MasterKey::from_key(key))
}

/// fsyncs the directory holding `path`, so a newly created file's name is durable.
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

/// How the operator supplies the master key.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    KeyFile(PathBuf),
    PassphraseFile(PathBuf),
    PassphraseEnv(String),
    /// A key in an HSM (PKCS#11).
    Pkcs11(Pkcs11Settings),
}

impl MasterKeySource {
    pub fn is_passphrase(&self) -> bool {
        matches!(self, MasterKeySource::PassphraseFile(_) | MasterKeySource::PassphraseEnv(_))
    }

    pub fn passphrase(&self) -> Result<Passphrase, MasterKeyError> {
        match self {
            MasterKeySource::PassphraseFile(p) => Passphrase::from_file(p),
            MasterKeySource::PassphraseEnv(v) => Passphrase::from_env(v),
            MasterKeySource::KeyFile(p) => Err(MasterKeyError::KeyFileFormat { path: p.display().to_string() }),
            MasterKeySource::Pkcs11(s) => Err(MasterKeyError::Hsm(HsmError::Device(format!(
                "{} is a key in an HSM, not a passphrase",
                s.key_label
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_check_tells_keys_apart() {
        let a = MasterKey::from_key(SymmetricKey::from_bytes(&[1; 32]).unwrap());
        let b = MasterKey::from_key(SymmetricKey::from_bytes(&[2; 32]).unwrap());
        assert!(a.matches_check(&a.key_check().unwrap()).unwrap());
        assert!(!b.matches_check(&a.key_check().unwrap()).unwrap());
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn key_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek");
        let k = generate_key_file(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_key_file(&p).unwrap().id(), k.id());
        assert!(matches!(generate_key_file(&p), Err(MasterKeyError::KeyFileExists { .. })));

        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key_file(&p).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let hexfile = dir.path().join("hex");
        fs::write(&hexfile, format!("{}\n", "ab".repeat(32))).unwrap();
        fs::set_permissions(&hexfile, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key_file(&hexfile).is_ok());

        let short = dir.path().join("short");
        fs::write(&short, b"too short").unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(matches!(read_key_file(&short), Err(MasterKeyError::KeyFileFormat { .. })));
    }

    #[test]
    fn passphrase_derivation_is_deterministic_per_salt() {
        let pass = Passphrase::new("correct horse battery staple\n", "test").unwrap();
        let params = Argon2Params::with_costs(1024, 1, 1).unwrap();
        let a = pass.derive(&params).unwrap();
        let b = pass.derive(&params).unwrap();
        assert_eq!(a.id(), b.id());
        let other = Argon2Params::with_costs(1024, 1, 1).unwrap();
        assert_ne!(pass.derive(&other).unwrap().id(), a.id());
        assert!(matches!(Passphrase::new("short", "t"), Err(MasterKeyError::PassphraseTooShort { .. })));
    }
}
