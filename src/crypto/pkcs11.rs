//! PKCS#11 below the HSM master key (`hsm`): loading a module once per process, logging in,
//! finding and checking the key, and the three operations made with it (encrypt, decrypt
//! and the probe). The only other file that speaks PKCS#11; `tests/architecture.rs` checks
//! that neither reads a key's value or calls wrap, unwrap, derive, digest-key or copy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::secret::hex;

pub(super) const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;
/// Associated data of the probe: never that of a stored blob.
const PROBE_AAD: &[u8] = b"pogo-vault/v1 hsm-probe";

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
    pub(super) fn describe(&self) -> String {
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
    #[error("token {token:?} refused the PIN from {pin_file} ({})", if *locked { "the PIN is locked: a security officer must unlock it" } else { "wrong PIN" })]
    Pin { token: String, pin_file: String, locked: bool },
    #[error(
        "no AES key labelled {key:?} on token {token:?}; create one with `pogo-vault init --pkcs11-...` (without --existing-key)"
    )]
    NoKey { key: String, token: String },
    #[error("{count} keys are labelled {key:?} on token {token:?}: the master key must be exactly one")]
    ManyKeys { count: usize, key: String, token: String },
    #[error(
        "a key labelled {key:?} already exists on token {token:?}: use it with --existing-key (init) or \
         --new-existing-key (rotate-kek), or choose another label"
    )]
    KeyExists { key: String, token: String },
    #[error(
        "the key {key:?} on token {token:?} is not an AES-256 key that was always sensitive and never extractable \
         ({why}): refusing it as a master key, since its bytes could be or could have been outside the HSM"
    )]
    Exportable { key: String, token: String, why: String },
    #[error("the HSM failed: {0}")]
    Device(String),
}

/// One loaded module. PKCS#11 state is per process (one `C_Initialize` per library), so
/// every key on the same module shares it; see [`module`]. Every call on a session holds
/// `calls` for reading, and [`Module::reset`] (`C_Finalize`) holds it for writing, so a
/// reset never runs under another key's call; `generation` counts resets, so a session of
/// an earlier generation is dropped without `C_CloseSession` (its handle may be reused).
pub(super) struct Module {
    path: PathBuf,
    ctx: Mutex<Option<Pkcs11>>,
    calls: RwLock<()>,
    generation: AtomicU64,
}

/// Proof that the caller holds the module's `calls` lock, and the generation it saw.
pub(super) struct Calls<'m> {
    _guard: std::sync::RwLockReadGuard<'m, ()>,
    generation: u64,
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
        keep_loaded(&self.path, &c);
        match c.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(HsmError::Module { module, reason: e.to_string() }),
        }
        *ctx = Some(c.clone());
        Ok(c)
    }

    /// Held for every PKCS#11 call on the module (see [`Module`]). Never take a second one
    /// on a thread that holds one: a waiting reset would deadlock it.
    pub(super) fn calls(&self) -> Calls<'_> {
        let guard = self.calls.read().unwrap_or_else(|p| p.into_inner());
        Calls { _guard: guard, generation: self.generation.load(Ordering::SeqCst) }
    }

    /// Whether `conn` was opened before the last reset (its handle may now be another's).
    pub(super) fn is_stale(&self, conn: &Conn) -> bool {
        self.generation.load(Ordering::SeqCst) != conn.generation
    }

    /// `C_Finalize`: every session on the module ends; the next [`Module::ctx`] loads it anew.
    /// Waits for every call in progress (it takes `calls` for writing).
    pub(super) fn reset(&self) {
        let _calls = self.calls.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = self.ctx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.finalize();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Keeps the first handle to each library for the life of the process, so a library is
/// never unloaded. Why: during an HSM outage a `C_Initialize` can fail, and the handle of
/// that attempt is dropped; when it was the only one, the library was unmapped and mapped
/// again on the next attempt. SoftHSM left its registrations with OpenSSL pointing into the
/// unmapped copy, and the process crashed at exit (SIGSEGV after "stopping", about 1 run in
/// 6 of `tests/hsm.rs`'s outage test). Nothing else is held: sessions and `C_Finalize` are
/// as before.
fn keep_loaded(path: &Path, ctx: &Pkcs11) {
    static LOADED: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if !loaded.iter().any(|(p, _)| p == path) {
        loaded.push((path.to_owned(), ctx.clone()));
    }
}

/// The process's modules by (canonical) path. PKCS#11 itself is process-global state (a
/// second `C_Initialize` of a library fails, a `C_Finalize` ends every session on it), so the
/// handle to it is too; nothing else is kept here.
pub(super) fn module(path: &Path) -> Arc<Module> {
    static MODULES: Mutex<Vec<Weak<Module>>> = Mutex::new(Vec::new());
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut all = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|m| m.strong_count() > 0);
    if let Some(m) = all.iter().filter_map(Weak::upgrade).find(|m| m.path == path) {
        return m;
    }
    let m = Arc::new(Module { path, ctx: Mutex::new(None), calls: RwLock::new(()), generation: AtomicU64::new(0) });
    all.push(Arc::downgrade(&m));
    m
}

/// A logged-in session on the master key.
pub(super) struct Conn {
    session: Session,
    key: ObjectHandle,
    generation: u64,
}

/// The error of a call on a session opened before the module was reset.
fn stale() -> P11Error {
    P11Error::Pkcs11(RvError::SessionHandleInvalid, Function::Encrypt)
}

impl Conn {
    /// Closes the session, unless the module was reset since it was opened (then its handle
    /// may be another key's session: it is only forgotten).
    pub(super) fn retire(self, calls: &Calls<'_>) {
        if calls.generation == self.generation {
            let _ = self.session.close();
        }
    }

    fn check(&self, calls: &Calls<'_>) -> cryptoki::error::Result<()> {
        if calls.generation == self.generation { Ok(()) } else { Err(stale()) }
    }

    /// `(nonce, AES-256-GCM[key](plaintext, aad))`. The nonce is ours, unless the module
    /// generates its own (FIPS-mode modules do): it is read back from the parameters.
    pub(super) fn encrypt(&self, calls: &Calls<'_>, aad: &[u8], plaintext: &[u8]) -> cryptoki::error::Result<Vec<u8>> {
        self.check(calls)?;
        let mut iv = [0u8; NONCE_LEN];
        getrandom::fill(&mut iv).map_err(|_| P11Error::Pkcs11(RvError::GeneralError, Function::Encrypt))?;
        let ct = self.session.encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, TAG_BITS.into())?),
            self.key,
            plaintext,
        )?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a blob of [`Conn::encrypt`].
    pub(super) fn decrypt(
        &self,
        calls: &Calls<'_>,
        aad: &[u8],
        blob: &[u8],
    ) -> cryptoki::error::Result<Zeroizing<Vec<u8>>> {
        self.check(calls)?;
        let (nonce, ct) = blob.split_at(NONCE_LEN.min(blob.len()));
        let mut iv = [0u8; NONCE_LEN];
        iv[..nonce.len()].copy_from_slice(nonce);
        self.session
            .decrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, aad, TAG_BITS.into())?), self.key, ct)
            .map(Zeroizing::new)
    }

    /// Encrypts and decrypts a random value: does the HSM work with this session and key?
    pub(super) fn probe(&self, calls: &Calls<'_>) -> Result<(), String> {
        let mut value = [0u8; 16];
        getrandom::fill(&mut value).map_err(|_| "the system random source failed".to_owned())?;
        let blob = self.encrypt(calls, PROBE_AAD, &value).map_err(|e| e.to_string())?;
        let back = self.decrypt(calls, PROBE_AAD, &blob).map_err(|e| e.to_string())?;
        if back[..] == value[..] { Ok(()) } else { Err("the probe came back different".into()) }
    }
}

/// A logged-in session on the token `settings` names, and the token's label as found.
/// Called with the module's `calls` held (see [`connect`], [`create_key`]).
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
    let pin = read_pin(&settings.pin_file)?;
    // Opened without close-on-drop (see `Conn::retire`): closed here on every failure.
    let session = ctx.open_rw_session_no_drop(slot).map_err(device)?;
    let refused = match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => None,
        Err(P11Error::Pkcs11(
            rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinInvalid | RvError::PinLenRange),
            _,
        )) => Some(HsmError::Pin {
            token: settings.token_label.clone(),
            pin_file: settings.pin_file.display().to_string(),
            locked: rv == RvError::PinLocked,
        }),
        Err(e) => Some(device(e)),
    };
    if let Some(e) = refused {
        let _ = session.close();
        return Err(e);
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

/// A session on the master key, checked (see [`check_key`]), and the key's id.
pub(super) fn connect(module: &Module, settings: &Pkcs11Settings) -> Result<(Conn, String), HsmError> {
    let calls = module.calls();
    let generation = calls.generation;
    let (session, token) = login(module, settings)?;
    let keys = match find_keys(&session, settings) {
        Ok(k) if k.len() == 1 => k,
        found => {
            let _ = session.close();
            let keys = found?;
            return Err(if keys.is_empty() {
                HsmError::NoKey { key: settings.key_label.clone(), token }
            } else {
                HsmError::ManyKeys { count: keys.len(), key: settings.key_label.clone(), token }
            });
        }
    };
    let key = keys[0];
    let cka_id = match check_key(&session, key) {
        Ok(id) => id,
        Err(why) => {
            let _ = session.close();
            return Err(HsmError::Exportable { key: settings.key_label.clone(), token, why });
        }
    };
    let conn = Conn { session, key, generation };
    if let Err(e) = conn.probe(&calls) {
        conn.retire(&calls);
        return Err(HsmError::Device(format!("the key does not encrypt and decrypt with AES-GCM: {e}")));
    }
    Ok((conn, kek_id(&cka_id, &settings.key_label)))
}

/// The key may serve as a master key only if its bytes cannot be, and never could have
/// been, outside the HSM: AES, 32 bytes, sensitive and always so, not extractable and never
/// so, and no derivation from it (a derived key could be extractable). Reads attributes
/// that say what the key is, never its value. Returns its `CKA_ID`.
fn check_key(session: &Session, key: ObjectHandle) -> Result<Vec<u8>, String> {
    let wanted = [
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Sensitive,
        AttributeType::AlwaysSensitive,
        AttributeType::Extractable,
        AttributeType::NeverExtractable,
        AttributeType::Derive,
        AttributeType::Id,
    ];
    let attrs = session.get_attributes(key, &wanted).map_err(|e| e.to_string())?;
    let (mut aes, mut len, mut id) = (false, 0u64, Vec::new());
    let (mut sensitive, mut always_sensitive, mut extractable, mut never_extractable, mut derive) =
        (false, false, true, false, true);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => aes = t == KeyType::AES,
            Attribute::ValueLen(l) => len = u64::from(l),
            Attribute::Sensitive(v) => sensitive = v,
            Attribute::AlwaysSensitive(v) => always_sensitive = v,
            Attribute::Extractable(v) => extractable = v,
            Attribute::NeverExtractable(v) => never_extractable = v,
            Attribute::Derive(v) => derive = v,
            Attribute::Id(v) => id = v,
            _ => {}
        }
    }
    let why: Vec<&str> = [
        (!aes, "not AES"),
        (len != 32, "not 256 bits"),
        (!sensitive, "CKA_SENSITIVE is false"),
        (!always_sensitive, "CKA_ALWAYS_SENSITIVE is false"),
        (extractable, "CKA_EXTRACTABLE is true"),
        (!never_extractable, "CKA_NEVER_EXTRACTABLE is false"),
        (derive, "CKA_DERIVE is true"),
    ]
    .iter()
    .filter(|(bad, _)| *bad)
    .map(|(_, w)| *w)
    .collect();
    if why.is_empty() { Ok(id) } else { Err(why.join(", ")) }
}

/// Creates a new master key: AES-256 in the token, private, sensitive, not extractable,
/// not modifiable or copyable, usable only to encrypt and decrypt. Refused when a key with
/// the label exists.
pub(super) fn create_key(module: &Module, settings: &Pkcs11Settings) -> Result<(), HsmError> {
    let _calls = module.calls();
    let (session, token) = login(module, settings)?;
    let result = (|| {
        if !find_keys(&session, settings)?.is_empty() {
            return Err(HsmError::KeyExists { key: settings.key_label.clone(), token: token.clone() });
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
                    Attribute::Modifiable(false),
                    Attribute::Copyable(false),
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
            .map(|_| ())
            .map_err(|e| HsmError::Device(format!("generating the key failed: {e}")))
    })();
    let _ = session.close();
    result
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
