//! The hash chain and signed checkpoints: canonical encodings, event hashes, checkpoint
//! signatures, and the text forms of checkpoints and public keys.
//!
//! Invariants: the encodings below are versioned by their domain prefixes and never change
//! in place (a new layout gets `v2` and a new prefix); every variable-length field is
//! length-prefixed and every optional field tagged, so two different events never encode to
//! the same bytes. The encodings are spelled out in the [module docs](super).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::AuditRecord;
use super::{AuditError, format_time_ms, parse_time};
use crate::crypto::secret::hex;

/// Domain prefix of an event's canonical encoding.
pub const EVENT_DOMAIN: &[u8] = b"pogo-vault audit v1 event\0";
/// Domain prefix of a checkpoint's signed message.
pub const CHECKPOINT_DOMAIN: &[u8] = b"pogo-vault audit v1 checkpoint\0";
/// The previous hash of event 1, and the head hash of the empty log.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// The prefix of a public key file's single line.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// The fields of an event as stored bytes. Verification builds this straight from the
/// database row, so it hashes exactly what is stored, even values this binary would not
/// write (an unknown action name, say): those then fail as edits, not as read errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventFields<'a> {
    pub caller: &'a [u8],
    pub caller_serial: &'a [u8],
    pub action: &'a [u8],
    pub tenant_id: Option<&'a [u8]>,
    pub key_version: Option<i64>,
    pub outcome: &'a [u8],
    pub upstream_status: Option<i64>,
    pub token_fingerprint: Option<&'a [u8]>,
    pub detail: &'a [u8],
    pub request_id: &'a [u8],
    pub peer: &'a [u8],
}

impl<'a> EventFields<'a> {
    pub fn of(r: &'a AuditRecord) -> Self {
        Self {
            caller: r.caller.as_bytes(),
            caller_serial: r.caller_serial.as_bytes(),
            action: r.action.as_str().as_bytes(),
            tenant_id: r.tenant_id.as_deref().map(str::as_bytes),
            key_version: r.key_version,
            outcome: r.outcome.as_str().as_bytes(),
            upstream_status: r.upstream_status.map(i64::from),
            token_fingerprint: r.token_fingerprint.as_deref().map(str::as_bytes),
            detail: r.detail.as_bytes(),
            request_id: r.request_id.as_bytes(),
            peer: r.peer.as_bytes(),
        }
    }
}

/// Where encoded bytes go: a hasher (the hot path, no allocation) or a buffer (tests, docs).
trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn int(&mut self, v: i64) {
        self.put(&v.to_be_bytes());
    }

    fn text(&mut self, s: &[u8]) {
        // Fields are bounded far below 4 GiB (MAX_FIELD_BYTES); a longer stored value (only
        // possible by editing the file) saturates, and its hash then simply mismatches.
        self.put(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.put(s);
    }

    fn opt_text(&mut self, s: Option<&[u8]>) {
        match s {
            None => self.put(&[0]),
            Some(s) => {
                self.put(&[1]);
                self.text(s);
            }
        }
    }

    fn opt_int(&mut self, v: Option<i64>) {
        match v {
            None => self.put(&[0]),
            Some(v) => {
                self.put(&[1]);
                self.int(v);
            }
        }
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn encode_event(out: &mut impl Sink, sequence: i64, time_ms: i64, f: &EventFields<'_>) {
    out.put(EVENT_DOMAIN);
    out.int(sequence);
    out.int(time_ms);
    out.text(f.caller);
    out.text(f.caller_serial);
    out.text(f.action);
    out.opt_text(f.tenant_id);
    out.opt_int(f.key_version);
    out.text(f.outcome);
    out.opt_int(f.upstream_status);
    out.opt_text(f.token_fingerprint);
    out.text(f.detail);
    out.text(f.request_id);
    out.text(f.peer);
}

/// The canonical encoding of an event without its hashes (see the module docs).
pub fn canonical_encoding(sequence: i64, time_ms: i64, record: &AuditRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    encode_event(&mut v, sequence, time_ms, &EventFields::of(record));
    v
}

/// `SHA-256(prev_hash ‖ canonical_encoding(event))`.
pub(crate) fn event_hash(prev_hash: &[u8; 32], sequence: i64, time_ms: i64, f: &EventFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    encode_event(&mut h, sequence, time_ms, f);
    h.finalize().into()
}

/// The hash of `record` as event `sequence` after `prev_hash`.
pub fn hash_record(prev_hash: &[u8; 32], sequence: i64, time_ms: i64, record: &AuditRecord) -> [u8; 32] {
    event_hash(prev_hash, sequence, time_ms, &EventFields::of(record))
}

/// A signed statement that the log's event `sequence` has hash `head_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The sequence of the last event covered (0: the empty log).
    pub sequence: i64,
    /// The hash of event `sequence` ([`GENESIS_HASH`] for 0).
    pub head_hash: [u8; 32],
    /// When it was signed, Unix milliseconds.
    pub time_ms: i64,
    /// [`crate::crypto::audit_key_id`] of the signing key's public half.
    pub key_id: String,
    /// Ed25519 over [`Checkpoint::signed_message`].
    pub signature: [u8; 64],
}

/// Why a checkpoint does not verify under a given public key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointProblem {
    /// It names a key other than the one supplied.
    #[error("signed by unknown key {found} (the public key given is {expected})")]
    UnknownKey { found: String, expected: String },
    /// It names the supplied key, but the signature does not verify.
    #[error("signature does not verify (forged or altered)")]
    BadSignature,
}

impl Checkpoint {
    /// A checkpoint from its stored columns; a hash or signature of the wrong length is an
    /// edit of the database.
    pub(crate) fn from_parts(
        sequence: i64,
        head_hash: Vec<u8>,
        time_ms: i64,
        key_id: String,
        signature: Vec<u8>,
    ) -> Result<Checkpoint, AuditError> {
        let (Ok(head_hash), Ok(signature)) = (<[u8; 32]>::try_from(head_hash), <[u8; 64]>::try_from(signature)) else {
            return Err(AuditError::Corrupt(format!(
                "checkpoint at {sequence}: hash or signature has the wrong length"
            )));
        };
        Ok(Checkpoint { sequence, head_hash, time_ms, key_id, signature })
    }

    /// Signs `(sequence, head_hash, time_ms)` with `key`.
    pub fn sign(sequence: i64, head_hash: [u8; 32], time_ms: i64, key: &SigningKey) -> Checkpoint {
        let key_id = crate::crypto::audit_key_id(key.verifying_key().as_bytes());
        let mut cp = Checkpoint { sequence, head_hash, time_ms, key_id, signature: [0; 64] };
        cp.signature = key.sign(&cp.signed_message()).to_bytes();
        cp
    }

    /// `CHECKPOINT_DOMAIN ‖ i64be(sequence) ‖ head_hash ‖ i64be(time_ms) ‖ u32be(len) ‖ key_id`.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 56 + self.key_id.len());
        m.put(CHECKPOINT_DOMAIN);
        m.int(self.sequence);
        m.put(&self.head_hash);
        m.int(self.time_ms);
        m.text(self.key_id.as_bytes());
        m
    }

    /// Checks the signature with the verifier's own public key (never a key from the log).
    pub fn verify(&self, public_key: &VerifyingKey) -> Result<(), CheckpointProblem> {
        let expected = crate::crypto::audit_key_id(public_key.as_bytes());
        if self.key_id != expected {
            return Err(CheckpointProblem::UnknownKey { found: self.key_id.clone(), expected });
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        // Strict verification rejects malleable (non-canonical) signatures and weak keys.
        public_key.verify_strict(&self.signed_message(), &sig).map_err(|_| CheckpointProblem::BadSignature)
    }

    /// `{"sequence":N,"head_hash":"hex","time":"RFC3339","time_ms":N,"key_id":"...","signature":"base64"}`
    pub fn to_json(&self) -> String {
        let j = CheckpointJson {
            sequence: self.sequence,
            head_hash: hex(&self.head_hash),
            time: format_time_ms(self.time_ms),
            time_ms: self.time_ms,
            key_id: self.key_id.clone(),
            signature: BASE64.encode(self.signature),
        };
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_string(&j).unwrap_or_default()
    }

    /// Parses [`Checkpoint::to_json`]'s form. `time_ms` is authoritative; `time`, when
    /// present, must name the same instant (a hand-edited file is refused, not guessed at).
    pub fn from_json(s: &str) -> Result<Checkpoint, AuditError> {
        let bad = |reason: String| AuditError::Malformed { what: "checkpoint", reason };
        let j: CheckpointJson = serde_json::from_str(s.trim()).map_err(|e| bad(crate::domain::json_error(&e)))?;
        let head_hash = unhex32(&j.head_hash).ok_or_else(|| bad("head_hash is not 64 hex digits".into()))?;
        let signature: [u8; 64] = BASE64
            .decode(j.signature.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("signature is not base64 of 64 bytes".into()))?;
        if j.sequence < 0 {
            return Err(bad("sequence is negative".into()));
        }
        if !j.time.is_empty() && parse_time(&j.time) != Some(j.time_ms) {
            return Err(bad(format!("time {} and time_ms {} disagree", crate::domain::quoted(&j.time), j.time_ms)));
        }
        Ok(Checkpoint { sequence: j.sequence, head_hash, time_ms: j.time_ms, key_id: j.key_id, signature })
    }
}

#[derive(Serialize, Deserialize)]
struct CheckpointJson {
    sequence: i64,
    head_hash: String,
    #[serde(default)]
    time: String,
    time_ms: i64,
    key_id: String,
    signature: String,
}

/// `ed25519:<base64 of the 32-byte public key>`: the public key file's one line.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", BASE64.encode(key.as_bytes()))
}

/// Parses [`encode_public_key`]'s form (surrounding white space allowed).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, AuditError> {
    let bad = |reason: &str| AuditError::Malformed { what: "public key", reason: reason.to_owned() };
    let b64 = s
        .trim()
        .strip_prefix(PUBLIC_KEY_PREFIX)
        .ok_or_else(|| bad("expected one line `ed25519:<base64>` (as printed by `pogo-vault audit public-key`)"))?;
    let bytes: [u8; 32] =
        BASE64.decode(b64.trim()).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| bad("not base64 of 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid Ed25519 public key"))
}

/// Lowercase or uppercase hex of exactly 32 bytes.
pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)
}

/// Lowercase or uppercase hex of exactly `N` bytes.
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim().as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let d = |c: u8| (c as char).to_digit(16);
        *o = u8::try_from(d(pair[0])? * 16 + d(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::record::{Action, Outcome};
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn rec() -> AuditRecord {
        AuditRecord::new(Action::TokenMinted, Outcome::Ok)
            .caller("spiffe://example.org/billing", "01ab")
            .tenant("acme")
            .key_version(2)
            .upstream_status(200)
            .token_fingerprint("a1b2c3d4e5f6:00112233445566778899aabbccddeeff")
            .detail("cache miss")
            .request("req-1", "127.0.0.1:5000")
    }

    #[test]
    fn event_hash_fixed_vector() {
        // Regression vector, computed independently from the documented encoding (a few
        // lines of Python's hashlib): a change here breaks every existing log. Never update
        // it without a new encoding version.
        let h = hash_record(&GENESIS_HASH, 1, 1_700_000_000_000, &rec());
        assert_eq!(hex(&h), "68a448c96772b1cc914cf55a0822d03538f44f4ac0045e0d50d04d1597e58311");
        let enc = canonical_encoding(1, 1_700_000_000_000, &rec());
        assert!(enc.starts_with(EVENT_DOMAIN));
        let mut direct = Sha256::new();
        direct.update(GENESIS_HASH);
        direct.update(&enc);
        assert_eq!(<[u8; 32]>::from(direct.finalize()), h);
    }

    #[test]
    fn encoding_is_unambiguous() {
        let a = AuditRecord::new(Action::TokenMinted, Outcome::Ok).caller("ab", "c");
        let b = AuditRecord::new(Action::TokenMinted, Outcome::Ok).caller("a", "bc");
        assert_ne!(canonical_encoding(1, 0, &a), canonical_encoding(1, 0, &b));
        let none = AuditRecord::new(Action::TokenMinted, Outcome::Ok);
        let empty = AuditRecord::new(Action::TokenMinted, Outcome::Ok).tenant("");
        assert_ne!(canonical_encoding(1, 0, &none), canonical_encoding(1, 0, &empty));
        assert_ne!(canonical_encoding(1, 0, &none), canonical_encoding(2, 0, &none));
        assert_ne!(canonical_encoding(1, 0, &none), canonical_encoding(1, 1, &none));
    }

    #[test]
    fn checkpoint_signs_verifies_and_round_trips_json() {
        let cp = Checkpoint::sign(42, [9; 32], 1_700_000_000_123, &key());
        cp.verify(&key().verifying_key()).unwrap();
        let back = Checkpoint::from_json(&cp.to_json()).unwrap();
        assert_eq!(back, cp);
        assert!(cp.to_json().contains("\"time\":\"2023-11-14T22:13:20.123Z\""), "{}", cp.to_json());

        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(cp.verify(&other), Err(CheckpointProblem::UnknownKey { .. })));
        let mut forged = cp.clone();
        forged.sequence = 43;
        assert_eq!(forged.verify(&key().verifying_key()), Err(CheckpointProblem::BadSignature));
    }

    #[test]
    fn checkpoint_json_rejects_malformed() {
        let good = Checkpoint::sign(1, [1; 32], 1000, &key()).to_json();
        for bad in [
            good.replace("\"time_ms\":1000", "\"time_ms\":2000"),
            good.replace(&hex(&[1; 32]), "zz"),
            "{}".to_owned(),
            "not json".to_owned(),
        ] {
            assert!(matches!(Checkpoint::from_json(&bad), Err(AuditError::Malformed { .. })), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn checkpoint_json_round_trips(seq in 0i64..i64::MAX, hash in proptest::array::uniform32(0u8..),
                                       time_ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let cp = Checkpoint::sign(seq, hash, time_ms, &key());
            proptest::prop_assert_eq!(Checkpoint::from_json(&cp.to_json()).unwrap(), cp);
        }

        #[test]
        fn from_json_never_panics(s in ".{0,200}") {
            let _ = Checkpoint::from_json(&s);
            let _ = parse_public_key(&s);
        }
    }

    #[test]
    fn public_key_round_trips() {
        let pk = key().verifying_key();
        let line = encode_public_key(&pk);
        assert!(line.starts_with("ed25519:"));
        assert_eq!(parse_public_key(&format!("{line}\n")).unwrap(), pk);
        assert!(parse_public_key("ed25519:AAAA").is_err());
        assert!(parse_public_key(&line.replace("ed25519:", "rsa:")).is_err());
    }
}
