//! The master key in an HSM, through PKCS#11: `wrap[KEK](DEK) = nonce ‖ AES-256-GCM[KEK](DEK, aad)`
//! computed *inside* the module, so the KEK's bytes never enter the vault's memory.
//!
//! Why AES-GCM with `C_Encrypt`/`C_Decrypt` rather than `C_WrapKey` (AES key wrap): the
//! wrapped DEK must stay bound to its associated data (tenant, purpose, version, KEK id:
//! `envelope`), which RFC 5649 key wrap cannot carry, and `C_UnwrapKey` would leave the DEK
//! as an object in the token that we would then have to read back out. The 96-bit nonce is
//! random per wrap (DEKs are wrapped a few times per registration, far below GCM's 2^32
//! random-nonce bound for one key), or the module's own where it insists on making it.
//!
//! Invariants:
//! - **The key never leaves the module, and never did.** `init --pkcs11` creates it
//!   sensitive, not extractable, not modifiable or copyable; an existing key is accepted only
//!   when always sensitive, never extractable, 256 bits and not derivable (`pkcs11`). The
//!   only calls made with it are encrypt and decrypt.
//! - **It stays the same key.** At open the vault encrypts a random value under it and keeps
//!   the blob (an *anchor*); a reconnect accepts a key only if it opens the anchor, so a
//!   look-alike imported under the same label and `CKA_ID` is refused.
//! - **An HSM that goes away fails closed in bounded time, and comes back on its own.** All
//!   PKCS#11 calls run on one worker thread per key; a caller waits at most
//!   [`CALL_TIMEOUT`] (then `Unavailable`), so a hung network HSM never holds a request, or
//!   the store lock a registration holds while it seals, for longer. A failed call is
//!   judged by a probe on the same session: if the probe works, the call is tried once more,
//!   and only a decrypt that fails again is "does not open" (an integrity failure); anything
//!   else drops the session, turns health false with the reason, and fails `Unavailable`.
//!   The worker probes every 5 s while healthy and reconnects at most once a second while
//!   not, re-initialising the module (`C_Finalize`, `C_Initialize`) only for transport
//!   errors: a token that went away and came back is only seen again that way.
//! - **A refused PIN is not tried again** until the PIN file changes, so reconnects never
//!   lock the token's user PIN. The PIN is read from its file (mode 0600) at each connect and
//!   never printed.
//! - **The KEK id** names the key without revealing anything: SHA-256 over `CKA_ID` (16
//!   random bytes set at creation), or the label when an existing key has none. It is part
//!   of every wrapped DEK's associated data, so it must be, and is, stable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::pkcs11::{Calls, Conn, Module, NONCE_LEN, connect, create_key, module};
pub use super::pkcs11::{HsmError, Pkcs11Settings};

/// Associated data of the anchor (see the module docs): never that of a stored blob.
const ANCHOR_AAD: &[u8] = b"pogo-vault/v1 hsm-anchor";
/// How often the worker probes a healthy HSM, and retries an unhealthy one.
const PROBE_HEALTHY: Duration = Duration::from_secs(5);
const PROBE_UNHEALTHY: Duration = Duration::from_secs(1);
/// The longest a caller waits for an HSM call (a reconnect included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a wrap or unwrap did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KekFailure {
    /// The blob does not open (the HSM works: its probe passed, and a second try failed too).
    DoesNotOpen,
    /// The HSM cannot be used now.
    Unavailable(String),
}

/// Work for the worker, with the time after which its caller has given up (then it is
/// skipped: a queue that built up behind a hang is not replayed against the HSM).
type Job = (Instant, Box<dyn FnOnce(&Inner) + Send>);

/// The master key held in a PKCS#11 token. Dropping it stops its worker thread and waits
/// (bounded) until it has closed its session: a PKCS#11 call racing the process's exit (the
/// module's own destructors) crashes some modules, SoftHSM among them.
pub struct HsmKek {
    inner: Arc<Inner>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    stopped: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Drop for HsmKek {
    fn drop(&mut self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(stopped) = self.stopped.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stopped.recv_timeout(CALL_TIMEOUT);
        }
    }
}

/// What the worker thread and the callers share.
struct Inner {
    settings: Pkcs11Settings,
    module: Arc<Module>,
    id: String,
    /// The anchor blob and the SHA-256 of the value it holds.
    anchor: (Vec<u8>, [u8; 32]),
    conn: Mutex<Option<Conn>>,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// When the call in progress started, for [`Inner::hung`].
    busy_since: Mutex<Option<Instant>>,
    /// The last reconnect attempt, and the SHA-256 of a PIN file's content the token refused.
    last_attempt: Mutex<Option<Instant>>,
    pin_refused: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for HsmKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HsmKek({}, id={})", self.inner.settings.describe(), self.inner.id)
    }
}

impl HsmKek {
    /// Connects to the key `settings` names and checks it (see the module docs); starts the
    /// worker thread.
    pub fn open(settings: &Pkcs11Settings) -> Result<Arc<HsmKek>, HsmError> {
        let module = module(&settings.module);
        let (conn, id) = connect(&module, settings)?;
        let mut value = Zeroizing::new([0u8; 32]);
        let random = getrandom::fill(&mut value[..]);
        let calls = module.calls();
        let anchor = random
            .map_err(|_| HsmError::Device("the system random number generator failed".into()))
            .and_then(|()| conn.encrypt(&calls, ANCHOR_AAD, &value[..]).map_err(|e| HsmError::Device(e.to_string())));
        let anchor = match anchor {
            Ok(blob) => (blob, Sha256::digest(&value[..]).into()),
            Err(e) => {
                conn.retire(&calls);
                return Err(e);
            }
        };
        drop(calls);
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            module,
            id,
            anchor,
            conn: Mutex::new(Some(conn)),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            busy_since: Mutex::new(None),
            last_attempt: Mutex::new(None),
            pin_refused: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let (stopped_tx, stopped_rx) = mpsc::channel::<()>();
        let worker = inner.clone();
        std::thread::Builder::new()
            .name("pogo-hsm".into())
            .spawn(move || {
                worker.run(&rx);
                let _ = stopped_tx.send(());
            })
            .map_err(|e| HsmError::Device(format!("cannot start the HSM thread: {e}")))?;
        Ok(Arc::new(HsmKek { inner, jobs: Mutex::new(Some(tx)), stopped: Mutex::new(Some(stopped_rx)) }))
    }

    /// Creates a new master key in the token (see `pkcs11::create_key`) and opens it.
    pub fn create(settings: &Pkcs11Settings) -> Result<Arc<HsmKek>, HsmError> {
        create_key(&module(&settings.module), settings)?;
        Self::open(settings)
    }

    /// The key's public id (see the module docs).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn settings(&self) -> &Pkcs11Settings {
        &self.inner.settings
    }

    /// `Ok` while the HSM answers; the reason it does not, otherwise.
    pub fn health(&self) -> Result<(), String> {
        if let Some(why) = self.inner.hung() {
            return Err(why);
        }
        if self.inner.healthy.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(self.inner.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default())
    }

    /// `nonce ‖ AES-256-GCM[KEK](plaintext, aad)`, computed in the HSM.
    pub(crate) fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KekFailure> {
        let (aad, plaintext) = (aad.to_vec(), Zeroizing::new(plaintext.to_vec()));
        self.call(move |i| i.with(false, |c, g| c.encrypt(g, &aad, &plaintext)))
    }

    /// Opens a blob of [`HsmKek::encrypt`] in the HSM.
    pub(crate) fn decrypt(&self, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekFailure> {
        if blob.len() < NONCE_LEN + 16 {
            return Err(KekFailure::DoesNotOpen);
        }
        let (aad, blob) = (aad.to_vec(), blob.to_vec());
        self.call(move |i| i.with(true, |c, g| c.decrypt(g, &aad, &blob)))
    }

    /// Runs `f` on the worker and waits for it at most [`CALL_TIMEOUT`]; fails at once while
    /// a call hangs (nobody queues behind it).
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, KekFailure> + Send + 'static,
    ) -> Result<T, KekFailure> {
        if let Some(why) = self.inner.hung() {
            return Err(KekFailure::Unavailable(why));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = (
            Instant::now() + CALL_TIMEOUT,
            Box::new(move |i| {
                let _ = tx.send(f(i));
            }),
        );
        let sent = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|j| j.send(job).is_ok());
        if sent != Some(true) {
            return Err(KekFailure::Unavailable("the HSM thread has stopped".into()));
        }
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                let why = format!(
                    "an HSM call did not return within {} s ({})",
                    CALL_TIMEOUT.as_secs(),
                    self.inner.settings.describe()
                );
                Err(KekFailure::Unavailable(self.inner.mark_unhealthy(why)))
            }
            Err(RecvTimeoutError::Disconnected) => Err(KekFailure::Unavailable("the HSM thread has stopped".into())),
        }
    }
}

/// Clears [`Inner::busy_since`] when the call ends, however it ends.
struct Busy<'a>(&'a Mutex<Option<Instant>>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Inner {
    /// The worker: jobs as they come; a probe when none came for a while. Ends when the
    /// [`HsmKek`] is dropped.
    fn run(&self, jobs: &mpsc::Receiver<Job>) {
        loop {
            let pause = if self.healthy.load(Ordering::Relaxed) { PROBE_HEALTHY } else { PROBE_UNHEALTHY };
            // A panic in one job must not stop the thread (every later call would fail): its
            // caller hears "stopped" (its reply is never sent) and the next job runs.
            let step = |f: &mut dyn FnMut()| {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            };
            match jobs.recv_timeout(pause) {
                Ok((deadline, job)) if Instant::now() < deadline => {
                    let mut job = Some(job);
                    step(&mut || {
                        if let Some(j) = job.take() {
                            j(self);
                        }
                    });
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    step(&mut || {
                        let _ = self.with(false, |c, g| c.probe(g).map_err(|_| cryptoki_error()));
                    });
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.retire(&self.module.calls());
        }
    }

    /// Runs `op` on the session (connecting first when there is none) and judges a failure
    /// (see the module docs); `decrypting` says whether a failure may mean "does not open".
    fn with<T>(
        &self,
        decrypting: bool,
        op: impl Fn(&Conn, &Calls<'_>) -> cryptoki::error::Result<T>,
    ) -> Result<T, KekFailure> {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let _busy = Busy(&self.busy_since);
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // A session from before another key's reset of the module: its handle may now be
        // that key's session, so it is forgotten (never used, never closed).
        if conn.as_ref().is_some_and(|c| self.module.is_stale(c)) {
            *conn = None;
        }
        if conn.is_none() {
            *conn = Some(self.reconnect()?);
        }
        let Some(c) = conn.as_ref() else { return Err(KekFailure::Unavailable("no session".into())) };
        let calls = self.module.calls();
        let e = match op(c, &calls) {
            Ok(t) => {
                self.mark_healthy();
                return Ok(t);
            }
            Err(e) => e,
        };
        if let Err(p) = c.probe(&calls) {
            if let Some(c) = conn.take() {
                c.retire(&calls);
            }
            let reason = format!("the HSM failed ({e}; probe: {p}) for {}", self.settings.describe());
            return Err(KekFailure::Unavailable(self.mark_unhealthy(reason)));
        }
        self.mark_healthy();
        match op(c, &calls) {
            Ok(t) => Ok(t),
            // Only what a module says of a ciphertext that does not authenticate (SoftHSM says
            // CKR_GENERAL_ERROR for a failed GCM tag) means "does not open"; anything else,
            // with a working probe, is the HSM's trouble, not the data's.
            Err(cryptoki::error::Error::Pkcs11(rv, _)) if decrypting && does_not_open(rv) => {
                Err(KekFailure::DoesNotOpen)
            }
            Err(e) => Err(KekFailure::Unavailable(format!("the HSM refuses the operation: {e}"))),
        }
    }

    /// A new session on the same key (it must open the anchor), at most once a second; the
    /// module is re-initialised and tried once more only after a transport error, and a PIN
    /// the token refused is not tried again until the PIN file changes.
    fn reconnect(&self) -> Result<Conn, KekFailure> {
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < PROBE_UNHEALTHY) && !self.healthy.load(Ordering::Relaxed) {
                let why = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
                return Err(KekFailure::Unavailable(why));
            }
            *last = Some(Instant::now());
        }
        let pin =
            std::fs::read(&self.settings.pin_file).map(|b| -> [u8; 32] { Sha256::digest(Zeroizing::new(b)).into() });
        if let Ok(h) = &pin
            && *self.pin_refused.lock().unwrap_or_else(|p| p.into_inner()) == Some(*h)
        {
            let why = format!(
                "token {:?} refused the PIN in {}; it is not tried again until that file changes (so the user PIN is \
                 not locked)",
                self.settings.token_label,
                self.settings.pin_file.display()
            );
            return Err(KekFailure::Unavailable(self.mark_unhealthy(why)));
        }
        let attempt = || -> Result<Conn, HsmError> {
            let (c, id) = connect(&self.module, &self.settings)?;
            let calls = self.module.calls();
            let same = id == self.id
                && c.decrypt(&calls, ANCHOR_AAD, &self.anchor.0)
                    .is_ok_and(|v| <[u8; 32]>::from(Sha256::digest(&v[..])) == self.anchor.1);
            if same {
                return Ok(c);
            }
            c.retire(&calls);
            Err(HsmError::Device(format!(
                "the key found as {} is not the master key this vault opened (it does not open the vault's anchor); \
                 refusing it",
                self.settings.describe()
            )))
        };
        let result = attempt().or_else(|e| match e {
            HsmError::Module { .. } | HsmError::NoToken { .. } => {
                self.module.reset();
                attempt()
            }
            HsmError::Device(ref why) if !why.contains("not the master key") => {
                self.module.reset();
                attempt()
            }
            e => Err(e),
        });
        match result {
            Ok(c) => {
                *self.pin_refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.mark_healthy();
                Ok(c)
            }
            Err(e) => {
                // A locked PIN is not latched: trying it adds no failed attempt, and once a
                // security officer unlocks the token the same PIN works again.
                if let (HsmError::Pin { locked: false, .. }, Ok(h)) = (&e, pin) {
                    *self.pin_refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
                }
                Err(KekFailure::Unavailable(self.mark_unhealthy(e.to_string())))
            }
        }
    }

    /// Why the HSM counts as away while a call hangs: once the call in progress has run
    /// longer than [`CALL_TIMEOUT`].
    fn hung(&self) -> Option<String> {
        let since = (*self.busy_since.lock().unwrap_or_else(|p| p.into_inner()))?;
        let running = since.elapsed();
        (running > CALL_TIMEOUT)
            .then(|| format!("an HSM call has not returned for {} s ({})", running.as_secs(), self.settings.describe()))
    }

    fn mark_healthy(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(key = %self.settings.describe(), "the master key's HSM answers again");
        }
    }

    fn mark_unhealthy(&self, reason: String) -> String {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(reason = %reason, "the master key's HSM is unavailable: unwraps fail until it returns");
        } else if last.as_deref() != Some(reason.as_str()) {
            // Still away, for another reason now (the token is back but refuses the PIN, say).
            tracing::warn!(reason = %reason, "the master key's HSM is still unavailable");
        }
        *last = Some(reason.clone());
        reason
    }
}

/// What a module answers for a ciphertext that does not authenticate.
fn does_not_open(rv: cryptoki::error::RvError) -> bool {
    use cryptoki::error::RvError;
    matches!(
        rv,
        RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::GeneralError | RvError::DataLenRange
    )
}

fn cryptoki_error() -> cryptoki::error::Error {
    cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::GeneralError, cryptoki::context::Function::Encrypt)
}
