//! Which callers already hold which token: the disclosure rule of DESIGN.md invariant 6.
//!
//! The first time a token reaches a caller, meaning its identity, certificate serial and
//! peer IP address, the record of that disclosure must be durable before the token
//! leaves. A caller asking again for a token it already holds learns nothing new: the repeat
//! is recorded in the next group commit but not awaited. [`Disclosures`] is the set of
//! (caller, serial, peer IP, token) whose disclosure is durable, so a transport can tell a
//! first disclosure from a repeat.
//!
//! A pair enters the set only after its record is durable ([`Disclosures::disclosed`]), so
//! a repeat can never be answered before the disclosure it repeats is on disk; a crash
//! empties the set, and the next request of every pair waits again. The set keeps only
//! tokens still valid and at most `capacity` pairs. When it is full, new pairs are not
//! kept, so their repeats stay awaited: slower, never less safe.
//!
//! Pairs are kept as a SHA-256 digest of their parts (with the token's keyed fingerprint,
//! never the token), so the set holds no secret and costs 40 bytes of key and expiry each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How many pairs the set keeps by default (about 6 MB at most).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How often at most the set drops pairs whose token has expired.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One (caller identity, certificate serial, peer IP, token) as the set keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pair([u8; 32]);

impl Pair {
    /// `token_fingerprint` is the keyed fingerprint the audit record carries.
    pub fn new(caller: &str, serial: &str, peer: IpAddr, token_fingerprint: &str) -> Pair {
        let mut h = Sha256::new();
        // Length-prefixed, so no two different tuples hash the same input.
        for part in [caller.as_bytes(), serial.as_bytes(), token_fingerprint.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        match peer {
            IpAddr::V4(a) => h.update(a.to_ipv6_mapped().octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        Pair(h.finalize().into())
    }
}

/// Whether a token handed to a caller is its first disclosure there or a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disclosure {
    /// Not known to be held by this caller, serial and peer: record durably before answering.
    First,
    /// Held already (its disclosure is durable): record without waiting.
    Repeat,
}

/// The set of pairs whose disclosure record is durable. Cheap to query: one short lock.
#[derive(Debug)]
pub struct Disclosures {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Pair → when its token expires.
    pairs: HashMap<Pair, Instant>,
    next_sweep: Instant,
}

impl Disclosures {
    pub fn new(capacity: usize) -> Disclosures {
        let inner = Inner { pairs: HashMap::new(), next_sweep: Instant::now() + SWEEP_EVERY };
        Disclosures { capacity, inner: Mutex::new(inner) }
    }

    /// Whether handing the token of `pair` out now is a first disclosure or a repeat.
    pub fn classify(&self, pair: &Pair, now: Instant) -> Disclosure {
        match self.lock().pairs.get(pair) {
            Some(&expires) if expires > now => Disclosure::Repeat,
            _ => Disclosure::First,
        }
    }

    /// Notes that the disclosure of `pair` is durable; its token expires at `expires`. Call
    /// only after the record is durable. Returns false when the pair was not kept (the set
    /// is full of valid tokens).
    pub fn disclosed(&self, pair: Pair, expires: Instant, now: Instant) -> bool {
        if expires <= now {
            return false;
        }
        let mut inner = self.lock();
        // At most one sweep per SWEEP_EVERY, full or not: a set kept full by one busy caller
        // costs its first disclosures a lookup, never a scan each.
        if now >= inner.next_sweep {
            inner.pairs.retain(|_, e| *e > now);
            inner.next_sweep = now + SWEEP_EVERY;
        }
        if inner.pairs.len() >= self.capacity && !inner.pairs.contains_key(&pair) {
            return false;
        }
        inner.pairs.insert(pair, expires);
        true
    }

    /// Pairs kept (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.lock().pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is a single insert or retain: a panic cannot leave one half done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Disclosures {
    fn default() -> Self {
        Disclosures::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pair_is_a_repeat_only_after_its_disclosure_and_until_its_token_expires() {
        let d = Disclosures::new(10);
        let now = Instant::now();
        let p = Pair::new("svc", "01", ip("127.0.0.1"), "k1:abc");
        assert_eq!(d.classify(&p, now), Disclosure::First);
        assert!(d.disclosed(p, now + Duration::from_secs(60), now));
        assert_eq!(d.classify(&p, now), Disclosure::Repeat);
        assert_eq!(d.classify(&p, now + Duration::from_secs(60)), Disclosure::First, "expired token");
    }

    #[test]
    fn every_part_of_the_pair_counts() {
        let d = Disclosures::new(10);
        let now = Instant::now();
        let p = Pair::new("svc", "01", ip("127.0.0.1"), "k1:abc");
        d.disclosed(p, now + Duration::from_secs(60), now);
        for other in [
            Pair::new("svc2", "01", ip("127.0.0.1"), "k1:abc"),
            Pair::new("svc", "02", ip("127.0.0.1"), "k1:abc"),
            Pair::new("svc", "01", ip("127.0.0.2"), "k1:abc"),
            Pair::new("svc", "01", ip("::1"), "k1:abc"),
            Pair::new("svc", "01", ip("127.0.0.1"), "k1:abd"),
            // Length prefixes: moving a character between parts is another pair.
            Pair::new("svc0", "1", ip("127.0.0.1"), "k1:abc"),
        ] {
            assert_eq!(d.classify(&other, now), Disclosure::First);
        }
        // The same IPv4 address written as IPv4-mapped IPv6 is the same peer.
        assert_eq!(d.classify(&Pair::new("svc", "01", ip("::ffff:127.0.0.1"), "k1:abc"), now), Disclosure::Repeat);
    }

    #[test]
    fn the_set_stays_within_its_capacity_and_makes_room_from_expired_tokens() {
        let d = Disclosures::new(3);
        let now = Instant::now();
        let pair = |i: u32| Pair::new("svc", "01", ip("10.0.0.1"), &format!("k1:{i}"));
        for i in 0..3 {
            assert!(d.disclosed(pair(i), now + Duration::from_secs(1 + u64::from(i)), now));
        }
        assert!(!d.disclosed(pair(9), now + Duration::from_secs(60), now), "full of valid tokens");
        assert_eq!(d.len(), 3);
        assert_eq!(d.classify(&pair(9), now), Disclosure::First, "not kept: its repeats stay awaited");
        // Once the first token expired, its place is taken at the next sweep.
        let later = now + Duration::from_millis(1500);
        assert!(!d.disclosed(pair(9), later + Duration::from_secs(60), later), "no sweep before its time");
        let later = now + SWEEP_EVERY;
        assert!(d.disclosed(pair(9), later + Duration::from_secs(60), later));
        assert_eq!(d.len(), 1, "every token but the new one had expired");
        assert_eq!(d.classify(&pair(0), later), Disclosure::First);
        assert_eq!(d.classify(&pair(9), later), Disclosure::Repeat);
        assert!(!d.disclosed(pair(10), now, now), "an expired token is never kept");
    }
}
