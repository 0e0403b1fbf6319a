//! The master key in an HSM, through PKCS#11: `wrap[KEK](DEK) = nonce ‖ AES-256-GCM[KEK](DEK, aad)`
//! computed *inside* the module, so the KEK's bytes never enter the vault's memory.
//!
//! Why AES-GCM with `C_Encrypt`/`C_Decrypt` rather than `C_WrapKey` (AES key wrap): the
//! wrapped DEK must stay bound to its associated data (tenant, purpose, version, KEK id:
//! `envelope`), which RFC 5649 key wrap cannot carry, and `C_UnwrapKey` would leave the DEK
//! as an object in the token that we would then have to read back out. Every module we
//! target (SoftHSM2, network HSMs, CloudHSM, Cloud KMS's library) has `CKM_AES_GCM`. The
//! 96-bit nonce is random per wrap: DEKs are wrapped a few times per registration, far
//! below GCM's 2^32 random-nonce bound for one key.
//!
//! Invariants:
//! - **The key never leaves the module.** `init --pkcs11` creates it with `CKA_SENSITIVE`
//!   true and `CKA_EXTRACTABLE` false; an existing key that is extractable or not
//!   sensitive is refused. The only calls made with it are encrypt and decrypt (wrap and
//!   unwrap of DEKs), and the only attributes read are `CKA_ID`, `CKA_EXTRACTABLE`,
//!   `CKA_SENSITIVE` and `CKA_KEY_TYPE`: never `CKA_VALUE` (a test reads the source for it).
//! - **An HSM that goes away fails closed and comes back on its own.** A failed operation is
//!   followed by a probe (encrypt and decrypt of a random value): if the probe works the
//!   failure was the data's (a blob that does not open); if not, the session is dropped,
//!   health turns false with the reason, and every unwrap fails `Unavailable` until a
//!   reconnect (the next operation, or the monitor thread every second) succeeds. A
//!   reconnect that fails re-initialises the module (`C_Finalize`, `C_Initialize`): a token
//!   that went away and came back is only seen again that way.
//! - **The PIN** is read from its file (mode 0600) at each connect, so a rotated PIN file is
//!   picked up without a restart, and is never printed.
//! - **The KEK id** names the key without revealing anything: SHA-256 over `CKA_ID` (set to
//!   16 random bytes at creation), or the label when an existing key has no `CKA_ID`. It is
//!   stable across restarts and clones of the token, as it must be: it is part of every
//!   wrapped DEK's associated data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::secret::hex;

const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;
/// Associated data of the monitor's probe: never that of a stored blob.
const PROBE_AAD: &[u8] = b"pogo-vault/v1 hsm-probe";
/// How often the monitor probes a healthy HSM, and retries an unhealthy one.
const PROBE_HEALTHY: Duration = Duration::from_secs(5);
const PROBE_UNHEALTHY: Duration = Duration::from_secs(1);

/// Where the master key lives in a PKCS#11 module (`[vault] master_key = { pkcs11 = {...} }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The AES-256 key's label (`CKA_LABEL`).
    pub key_label: String,
    /// A file (mode 0600) holding the user PIN.
    pub pin_file: PathBuf,
}

impl Pkcs11Settings {
    fn describe(&self) -> String {
        format!("key {:?} on token {:?} ({})", self.key_label, self.token_label, self.module.display())
    }
}

/// Why the HSM could not be used. Messages name the module, token and key, never the PIN.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum HsmError {
    #[error("cannot load the PKCS#11 module {module}: {reason}")]
    Module { module: String, reason: String },
    #[error("no token labelled {token:?} in the PKCS#11 module {module} (tokens present: {present})")]
    NoToken { token: String, module: String, present: String },
    #[error("cannot read the PIN file: {0}")]
    PinFile(String),
    #[error("token {token:?} refused the PIN from {pin_file} (wrong PIN, or the PIN is locked)")]
    Pin { token: String, pin_file: String },
    #[error(
        "no AES key labelled {key:?} on token {token:?}; create one with `pogo-vault init --pkcs11-...` (without --existing-key)"
    )]
    NoKey { key: String, token: String },
    #[error("{count} keys are labelled {key:?} on token {token:?}: the master key must be exactly one")]
    ManyKeys { count: usize, key: String, token: String },
    #[error(
        "a key labelled {key:?} already exists on token {token:?}: pass --existing-key to use it, or choose another label"
    )]
    KeyExists { key: String, token: String },
    #[error(
        "the key {key:?} on token {token:?} is not a non-extractable, sensitive AES key ({why}): refusing it as a \
         master key, since its bytes could leave the HSM"
    )]
    Exportable { key: String, token: String, why: String },
    #[error("the HSM failed: {0}")]
    Device(String),
}

/// One loaded module. PKCS#11 state is per process (one `C_Initialize` per library), so
/// every key on the same module shares it; see [`module`].
struct Module {
    path: PathBuf,
    ctx: Mutex<Option<Pkcs11>>,
}

impl Module {
    fn ctx(&self) -> Result<Pkcs11, HsmError> {
        let mut ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = ctx.as_ref() {
            return Ok(c.clone());
        }
        let module = self.path.display().to_string();
        let c =
            Pkcs11::new(&self.path).map_err(|e| HsmError::Module { module: module.clone(), reason: e.to_string() })?;
        match c.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(HsmError::Module { module, reason: e.to_string() }),
        }
        *ctx = Some(c.clone());
        Ok(c)
    }

    /// `C_Finalize`: every session on the module ends; the next [`Module::ctx`] loads it anew.
    fn reset(&self) {
        if let Some(c) = self.ctx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.finalize();
        }
    }
}

/// The process's modules by path. PKCS#11 itself is process-global state (a second
/// `C_Initialize` of a library fails, a `C_Finalize` ends every session on it), so the
/// handle to it is too; nothing else is kept here.
fn module(path: &Path) -> Arc<Module> {
    static MODULES: Mutex<Vec<Weak<Module>>> = Mutex::new(Vec::new());
    let mut all = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|m| m.strong_count() > 0);
    if let Some(m) = all.iter().filter_map(Weak::upgrade).find(|m| m.path == path) {
        return m;
    }
    let m = Arc::new(Module { path: path.to_owned(), ctx: Mutex::new(None) });
    all.push(Arc::downgrade(&m));
    m
}

struct Conn {
    session: Session,
    key: ObjectHandle,
}

/// Why a wrap or unwrap did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KekFailure {
    /// The blob does not open (the HSM works: its probe passed).
    DoesNotOpen,
    /// The HSM cannot be used now.
    Unavailable(String),
}

/// The master key held in a PKCS#11 token.
pub struct HsmKek {
    settings: Pkcs11Settings,
    module: Arc<Module>,
    conn: Mutex<Option<Conn>>,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    id: String,
}

impl std::fmt::Debug for HsmKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HsmKek({}, id={})", self.settings.describe(), self.id)
    }
}

impl HsmKek {
    /// Connects to the key `settings` names and checks that it cannot leave the HSM. Starts
    /// the monitor thread (see the module docs).
    pub fn open(settings: &Pkcs11Settings) -> Result<Arc<HsmKek>, HsmError> {
        let module = module(&settings.module);
        let (conn, id) = connect(&module, settings)?;
        Ok(Self::start(settings, module, conn, id))
    }

    /// Creates a new AES-256 master key in the token (`CKA_TOKEN`, `CKA_SENSITIVE`, not
    /// extractable, usable only to encrypt and decrypt) and connects to it. Refused when a
    /// key with that label exists.
    pub fn create(settings: &Pkcs11Settings) -> Result<Arc<HsmKek>, HsmError> {
        let module = module(&settings.module);
        let (session, _) = login(&module, settings)?;
        let existing = find_keys(&session, settings)?;
        if !existing.is_empty() {
            return Err(HsmError::KeyExists { key: settings.key_label.clone(), token: settings.token_label.clone() });
        }
        let mut cka_id = [0u8; 16];
        getrandom::fill(&mut cka_id)
            .map_err(|_| HsmError::Device("the system random number generator failed".into()))?;
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                    Attribute::Derive(false),
                    Attribute::Label(settings.key_label.as_bytes().to_vec()),
                    Attribute::Id(cka_id.to_vec()),
                ],
            )
            .map_err(|e| HsmError::Device(format!("generating the key failed: {e}")))?;
        drop(session);
        Self::open(settings)
    }

    fn start(settings: &Pkcs11Settings, module: Arc<Module>, conn: Conn, id: String) -> Arc<HsmKek> {
        let kek = Arc::new(HsmKek {
            settings: settings.clone(),
            module,
            conn: Mutex::new(Some(conn)),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            id,
        });
        let weak = Arc::downgrade(&kek);
        // Best effort: without the monitor, health recovers at the next unwrap instead.
        let _ = std::thread::Builder::new().name("pogo-hsm-monitor".into()).spawn(move || monitor(&weak));
        kek
    }

    /// The key's public id (see the module docs).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn settings(&self) -> &Pkcs11Settings {
        &self.settings
    }

    /// `Ok` while the HSM answers; the reason it does not, otherwise.
    pub fn health(&self) -> Result<(), String> {
        if self.healthy.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default())
    }

    /// `nonce ‖ AES-256-GCM[KEK](plaintext, aad)`, computed in the HSM.
    pub(crate) fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KekFailure> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| KekFailure::Unavailable("the system random source failed".into()))?;
        let ct = self.with(|s, key| {
            let mut iv = nonce;
            s.encrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, aad, TAG_BITS.into())?), key, plaintext)
        })?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a blob of [`HsmKek::encrypt`] in the HSM.
    pub(crate) fn decrypt(&self, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekFailure> {
        if blob.len() < NONCE_LEN + 16 {
            return Err(KekFailure::DoesNotOpen);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        self.with(|s, key| {
            let mut iv = [0u8; NONCE_LEN];
            iv.copy_from_slice(nonce);
            s.decrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, aad, TAG_BITS.into())?), key, ct)
        })
        .map(Zeroizing::new)
    }

    /// Runs `op` on the session, connecting first when there is none. A failure is judged
    /// by a probe on the same session (see the module docs).
    fn with<T>(&self, op: impl Fn(&Session, ObjectHandle) -> cryptoki::error::Result<T>) -> Result<T, KekFailure> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_none() {
            *conn = Some(self.reconnect()?);
        }
        let Some(c) = conn.as_ref() else { return Err(KekFailure::Unavailable("no session".into())) };
        match op(&c.session, c.key) {
            Ok(t) => {
                self.mark_healthy();
                Ok(t)
            }
            Err(e) => match probe(c) {
                Ok(()) => {
                    self.mark_healthy();
                    Err(KekFailure::DoesNotOpen)
                }
                Err(p) => {
                    *conn = None;
                    let reason = format!("the HSM failed ({e}; probe: {p}) for {}", self.settings.describe());
                    Err(KekFailure::Unavailable(self.mark_unhealthy(reason)))
                }
            },
        }
    }

    /// A new session on the key; on failure the module is re-initialised and tried once more.
    fn reconnect(&self) -> Result<Conn, KekFailure> {
        let attempt = || {
            connect(&self.module, &self.settings).and_then(|(c, id)| {
                if id == self.id {
                    Ok(c)
                } else {
                    Err(HsmError::Device(format!("the key found has id {id}, not the master key's {}", self.id)))
                }
            })
        };
        match attempt().or_else(|_| {
            self.module.reset();
            attempt()
        }) {
            Ok(c) => {
                self.mark_healthy();
                Ok(c)
            }
            Err(e) => Err(KekFailure::Unavailable(self.mark_unhealthy(e.to_string()))),
        }
    }

    fn mark_healthy(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(key = %self.settings.describe(), "the master key's HSM answers again");
        }
    }

    fn mark_unhealthy(&self, reason: String) -> String {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(reason = %reason, "the master key's HSM is unavailable: unwraps fail until it returns");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        reason
    }

    /// One probe now (reconnecting first when needed): what the monitor runs.
    fn check(&self) {
        let _ = self.with(probe_op);
    }
}

/// Encrypts and decrypts a random value: does the HSM work with this session and key?
fn probe_op(s: &Session, key: ObjectHandle) -> cryptoki::error::Result<()> {
    let mut value = [0u8; 16];
    let _ = getrandom::fill(&mut value);
    let mut iv = [0u8; NONCE_LEN];
    let _ = getrandom::fill(&mut iv);
    let ct =
        s.encrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv.clone(), PROBE_AAD, TAG_BITS.into())?), key, &value)?;
    let back = s.decrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, PROBE_AAD, TAG_BITS.into())?), key, &ct)?;
    if back[..] == value[..] {
        Ok(())
    } else {
        Err(P11Error::Pkcs11(RvError::GeneralError, cryptoki::context::Function::Decrypt))
    }
}

fn probe(c: &Conn) -> Result<(), String> {
    probe_op(&c.session, c.key).map_err(|e| e.to_string())
}

/// A logged-in session on the token `settings` names, and the token's label as found.
fn login(module: &Module, settings: &Pkcs11Settings) -> Result<(Session, String), HsmError> {
    let ctx = module.ctx()?;
    let device = |e: P11Error| HsmError::Device(e.to_string());
    let mut present = Vec::new();
    let mut slot = None;
    for s in ctx.get_slots_with_token().map_err(device)? {
        let label = ctx.get_token_info(s).map_err(device)?.label().trim_end().to_owned();
        if label == settings.token_label {
            slot = Some(s);
            break;
        }
        present.push(format!("{label:?}"));
    }
    let Some(slot) = slot else {
        return Err(HsmError::NoToken {
            token: settings.token_label.clone(),
            module: settings.module.display().to_string(),
            present: if present.is_empty() { "none".into() } else { present.join(", ") },
        });
    };
    let session = ctx.open_rw_session(slot).map_err(device)?;
    let pin = read_pin(&settings.pin_file)?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(P11Error::Pkcs11(
            RvError::PinIncorrect | RvError::PinLocked | RvError::PinInvalid | RvError::PinLenRange,
            _,
        )) => {
            return Err(HsmError::Pin {
                token: settings.token_label.clone(),
                pin_file: settings.pin_file.display().to_string(),
            });
        }
        Err(e) => return Err(device(e)),
    }
    Ok((session, settings.token_label.clone()))
}

/// The PIN from its file: mode 0600 like every secret file; one trailing newline dropped.
fn read_pin(path: &Path) -> Result<AuthPin, HsmError> {
    let bad = |why: String| HsmError::PinFile(format!("{}: {why}", path.display()));
    // The rule of every secret file here (`master::check_private`), kept local so this
    // module stays below `master` (which holds an `HsmKek`).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| bad(e.kind().to_string()))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(format!("readable by group or others (mode {mode:04o}); run `chmod 600 {}`", path.display())));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.kind().to_string()))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(AuthPin::new(text.into()))
}

/// The secret keys labelled `settings.key_label` on the session's token.
fn find_keys(session: &Session, settings: &Pkcs11Settings) -> Result<Vec<ObjectHandle>, HsmError> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(settings.key_label.as_bytes().to_vec()),
        ])
        .map_err(|e| HsmError::Device(e.to_string()))
}

/// A session on the master key, checked (AES, sensitive, not extractable), and its id.
fn connect(module: &Module, settings: &Pkcs11Settings) -> Result<(Conn, String), HsmError> {
    let (session, token) = login(module, settings)?;
    let keys = find_keys(&session, settings)?;
    let key = match keys[..] {
        [k] => k,
        [] => return Err(HsmError::NoKey { key: settings.key_label.clone(), token }),
        _ => return Err(HsmError::ManyKeys { count: keys.len(), key: settings.key_label.clone(), token }),
    };
    // Attributes that say what the key is; never its value.
    let attrs = session
        .get_attributes(
            key,
            &[AttributeType::KeyType, AttributeType::Sensitive, AttributeType::Extractable, AttributeType::Id],
        )
        .map_err(|e| HsmError::Device(e.to_string()))?;
    let (mut aes, mut sensitive, mut extractable, mut cka_id) = (false, false, true, Vec::new());
    for a in attrs {
        match a {
            Attribute::KeyType(t) => aes = t == KeyType::AES,
            Attribute::Sensitive(s) => sensitive = s,
            Attribute::Extractable(e) => extractable = e,
            Attribute::Id(id) => cka_id = id,
            _ => {}
        }
    }
    let why = [(!aes, "not AES"), (!sensitive, "CKA_SENSITIVE is false"), (extractable, "CKA_EXTRACTABLE is true")]
        .iter()
        .filter(|(bad, _)| *bad)
        .map(|(_, w)| *w)
        .collect::<Vec<_>>();
    if !why.is_empty() {
        return Err(HsmError::Exportable { key: settings.key_label.clone(), token, why: why.join(", ") });
    }
    let conn = Conn { session, key };
    probe(&conn).map_err(|e| HsmError::Device(format!("the key does not encrypt and decrypt with AES-GCM: {e}")))?;
    Ok((conn, kek_id(&cka_id, &settings.key_label)))
}

/// See the module docs: SHA-256 over `CKA_ID`, or over the label when the key has none.
fn kek_id(cka_id: &[u8], label: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"pogo-vault/v1 kek-id pkcs11\0");
    if cka_id.is_empty() {
        h.update(b"label\0");
        h.update(label.as_bytes());
    } else {
        h.update(b"id\0");
        h.update(cka_id);
    }
    hex(&h.finalize()[..6])
}

/// The monitor thread: probes while the key lives (see the module docs).
fn monitor(kek: &Weak<HsmKek>) {
    loop {
        let pause = match kek.upgrade() {
            Some(k) if k.healthy.load(Ordering::Relaxed) => PROBE_HEALTHY,
            Some(_) => PROBE_UNHEALTHY,
            None => return,
        };
        std::thread::sleep(pause);
        let Some(k) = kek.upgrade() else { return };
        k.check();
    }
}
