//! Secret types and the public values derived from them.
//!
//! Zeroize contract: every type here that holds secret bytes keeps them in a
//! `secrecy::SecretBox` or `zeroize::Zeroizing`, so they are wiped when dropped, and its
//! `Debug` prints a fixed redaction. None implements `Display`. The only ways to read the
//! plaintext are the `expose_*` methods, whose callers are listed on each.
//!
//! Public values: [`KeyHint`] (last four characters) and [`Fingerprint`] (a keyed HMAC).
//! They are the only forms of a secret that may be shown, logged or audited.

use std::fmt;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::domain::InvalidInput;

macro_rules! redacted_debug {
    ($ty:ident) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($ty), "([redacted])"))
            }
        }
    };
}

/// A PowerOffice Go client key: the per-customer OAuth client secret. A GUID.
///
/// Exposed only to `crypto::envelope` (sealing) and `upstream` (the Basic header).
pub struct ClientKey(SecretString);
redacted_debug!(ClientKey);

impl ClientKey {
    /// Parses a pasted key: surrounding white space is dropped; the rest must be a GUID
    /// (`8-4-4-4-12` hex digits). Case is kept, because Go hashes what it issued and we
    /// must send back exactly that. The error never echoes the input.
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let t = s.trim();
        if !is_guid(t) {
            let n = t.chars().count();
            return Err(InvalidInput::new(
                field,
                format!(
                    "a PowerOffice Go client key is a GUID of 36 characters like \
                     xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits and dashes); \
                     the value given has {n} characters{}: copy the whole key again",
                    if n == 36 { " but is not in that form" } else { "" }
                ),
            ));
        }
        Ok(Self(SecretString::from(t)))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::parse_field("client_key", s)
    }

    /// The plaintext key. Callers: sealing, and the upstream token request.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hint(&self) -> KeyHint {
        KeyHint::of(self.expose_secret())
    }
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The integration-wide subscription key sent as `Ocp-Apim-Subscription-Key`.
///
/// Exposed to sealing, the upstream client, and `GetAccessToken` responses when the
/// configuration allows handing it to callers (DESIGN.md section 5).
pub struct SubscriptionKey(SecretString);
redacted_debug!(SubscriptionKey);

impl SubscriptionKey {
    /// 8 to 256 printable ASCII characters without white space, after trimming.
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let t = s.trim();
        let len = t.len();
        if !(8..=256).contains(&len) || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidInput::new(
                field,
                format!(
                    "a subscription key is 8 to 256 printable characters without spaces \
                     (the value given has {} characters): copy it again from the PowerOffice developer portal",
                    t.chars().count()
                ),
            ));
        }
        Ok(Self(SecretString::from(t)))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::parse_field("subscription_key", s)
    }

    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hint(&self) -> KeyHint {
        KeyHint::of(self.expose_secret())
    }
}

impl Clone for SubscriptionKey {
    fn clone(&self) -> Self {
        Self(SecretString::from(self.expose_secret()))
    }
}

/// A Go bearer access token. Lives in the broker's cache until it expires.
///
/// Exposed to the `GetAccessToken` response and the upstream client's API calls.
pub struct AccessToken(SecretString);
redacted_debug!(AccessToken);

impl AccessToken {
    pub fn new(s: String) -> Self {
        Self(SecretString::from(s))
    }

    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl Clone for AccessToken {
    fn clone(&self) -> Self {
        Self(SecretString::from(self.expose_secret()))
    }
}

/// A 256-bit symmetric key: the master key (KEK), a data key (DEK) or a derived key.
pub struct SymmetricKey(SecretBox<[u8; 32]>);
redacted_debug!(SymmetricKey);

impl SymmetricKey {
    pub const LEN: usize = 32;

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = Box::new([0u8; 32]);
        getrandom::fill(&mut k[..])?;
        Ok(Self(SecretBox::new(k)))
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        let arr = Zeroizing::new(arr);
        Some(Self(SecretBox::new(Box::new(*arr))))
    }

    pub fn expose_secret(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    /// `HMAC-SHA256(key, label)`: a one-block key derivation for fixed labels (the label
    /// never repeats across uses, and HMAC is a PRF keyed by a uniformly random key).
    pub fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(hmac_sha256(self.expose_secret(), &[label]))
    }
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The last four characters of a secret, for people to tell keys apart (`…3f9a`).
///
/// Why this is safe to show: four hex digits of a 122-bit random GUID leave 106 bits
/// unknown, and Go shows the same kind of hint. A secret shorter than 12 characters gets
/// no characters in its hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHint(String);

impl KeyHint {
    pub fn of(secret: &str) -> Self {
        let chars: Vec<char> = secret.chars().collect();
        if chars.len() < 12 {
            return Self("…".to_owned());
        }
        let tail: String = chars[chars.len() - 4..].iter().collect();
        Self(format!("…{tail}"))
    }

    /// Reads a hint back from the store.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key behind [`Fingerprint`]s: random, generated at `init`, sealed under the master
/// key. Its id is stored with every fingerprint, so a fingerprint made under another key
/// reads as "unverifiable", never as a mismatch.
pub struct FingerprintKey {
    key: SymmetricKey,
    id: String,
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FingerprintKey(id={}, [redacted])", self.id)
    }
}

impl FingerprintKey {
    pub fn new(key: SymmetricKey) -> Self {
        let id = Self::id_for(&key);
        Self { key, id }
    }

    /// The public id of a fingerprint key: a PRF output under it, so it names the key
    /// without revealing it.
    pub fn id_for(key: &SymmetricKey) -> String {
        hex(&key.derive(b"pogo-vault/v1 fingerprint-key-id")[..6])
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `HMAC-SHA256(fingerprint key, purpose ‖ 0 ‖ secret)`, truncated to 128 bits.
    ///
    /// Why this is safe to show: without the fingerprint key nobody can test guesses
    /// against it, and the purpose label keeps fingerprints of different kinds of secret
    /// apart. It lets the security team match an audit row to a token a service logged
    /// (by fingerprinting it with the vault) without the token itself being stored.
    pub fn fingerprint(&self, purpose: &str, secret: &[u8]) -> Fingerprint {
        let tag = hmac_sha256(self.key.expose_secret(), &[purpose.as_bytes(), &[0], secret]);
        Fingerprint { key_id: self.id.clone(), tag: hex(&tag[..16]) }
    }
}

/// A keyed fingerprint of a secret, with the id of the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub key_id: String,
    /// Lowercase hex of the first 16 bytes of the HMAC.
    pub tag: String,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_id, self.tag)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "123e4567-e89b-12d3-a456-426614173f9a";

    #[test]
    fn client_key_accepts_guid_with_white_space() {
        let k = ClientKey::parse(&format!("  {KEY}\n")).unwrap();
        assert_eq!(k.expose_secret(), KEY);
        assert_eq!(k.hint().as_str(), "…3f9a");
    }

    #[test]
    fn client_key_errors_name_the_field_and_never_echo() {
        for bad in ["", "123e4567e89b12d3a456426614173f9a", "123e4567-e89b-12d3-a456-426614173f9g", "x y"] {
            let err = ClientKey::parse(bad).unwrap_err();
            assert_eq!(err.field, "client_key");
            assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let k = ClientKey::parse(KEY).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("3f9a"), "{s}");
        let t = AccessToken::new("eyJsecret".into());
        assert!(!format!("{t:?}").contains("eyJ"));
    }

    #[test]
    fn short_secrets_have_an_empty_hint() {
        assert_eq!(KeyHint::of("abcdefgh").as_str(), "…");
    }

    #[test]
    fn fingerprints_depend_on_key_and_purpose() {
        let a = FingerprintKey::new(SymmetricKey::from_bytes(&[1; 32]).unwrap());
        let b = FingerprintKey::new(SymmetricKey::from_bytes(&[2; 32]).unwrap());
        assert_ne!(a.fingerprint("x", b"s"), b.fingerprint("x", b"s"));
        assert_ne!(a.fingerprint("x", b"s"), a.fingerprint("y", b"s"));
        assert_eq!(a.fingerprint("x", b"s"), a.fingerprint("x", b"s"));
        assert_ne!(a.id(), b.id());
    }
}
