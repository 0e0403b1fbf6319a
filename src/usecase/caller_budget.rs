//! A request budget per caller for GetAccessToken (and for requests refused at the gate):
//! a token bucket per caller identity.
//!
//! Go allows about 10 requests a second for a whole integration, so a caller asking the
//! vault thousands of times a second is broken; without a budget it would also grow the
//! audit log by a record per request until the disk is full. Each caller identity gets
//! `rate` requests a second (its token grant's `requests_per_second`, else the server's
//! default), with a burst of one second's worth. Beyond it a request is refused before
//! anything else is done for it, and refusals are not recorded one by one: they are
//! counted per caller in windows of one second, and each window becomes one audit record
//! (count, first and last request id) when it closes ([`CallerBudgets::due`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one window of refusals lasts (one audit record per caller per window).
pub const WINDOW: Duration = Duration::from_secs(1);

/// Above this many callers kept, idle callers (full bucket, nothing to record) are dropped.
const PRUNE_ABOVE: usize = 4096;

/// Who a request came from, as a refusal record names it.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub identity: &'a str,
    pub serial: &'a str,
    pub peer: &'a str,
    pub request_id: &'a str,
}

/// Whether a request is within its caller's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Admitted,
    /// Over budget: the next request would be admitted after `retry_after`.
    Refused {
        retry_after: Duration,
    },
}

/// The refusals of one caller in one window: what its audit record says.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusals {
    pub caller: String,
    /// The certificate serial and peer of the window's first refused request.
    pub serial: String,
    pub peer: String,
    pub count: u64,
    pub first_request_id: String,
    pub last_request_id: String,
    /// The caller's budget (requests a second) when the window opened.
    pub rate: f64,
    /// When the first and the last refusal happened.
    pub started: Instant,
    pub ended: Instant,
}

impl Refusals {
    /// The audit record's detail.
    pub fn detail(&self) -> String {
        format!(
            "{} requests refused over the caller's budget of {} a second, in {} ms from request {} to request {}",
            self.count,
            self.rate,
            self.ended.saturating_duration_since(self.started).as_millis(),
            self.first_request_id,
            self.last_request_id,
        )
    }

    /// Adds `later`'s refusals to these (a window whose record could not be written yet).
    fn absorb(&mut self, other: Refusals) {
        self.count += other.count;
        if other.started < self.started {
            self.started = other.started;
            self.first_request_id = other.first_request_id;
            self.serial = other.serial;
            self.peer = other.peer;
        }
        if other.ended >= self.ended {
            self.ended = other.ended;
            self.last_request_id = other.last_request_id;
        }
    }
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    /// The policy the rate was read from (a reload re-reads it).
    policy: u64,
    tokens: f64,
    last: Instant,
    /// The open window.
    window: Option<Refusals>,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let burst = self.rate.max(1.0);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(burst);
        self.last = now;
    }
}

/// Every caller's bucket and open window of refusals. One short lock per request.
#[derive(Debug, Default)]
pub struct CallerBudgets {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    buckets: HashMap<String, Bucket>,
    /// Windows closed and not yet taken by [`CallerBudgets::due`].
    closed: Vec<Refusals>,
}

impl CallerBudgets {
    /// Takes one request from `who`'s budget. `rate` gives the caller's budget (requests a
    /// second) under the policy tagged `policy`; it is called only for a new caller or
    /// after the policy changed.
    pub fn admit(&self, who: Asker<'_>, policy: u64, rate: impl FnOnce() -> f64, now: Instant) -> Admission {
        let mut inner = self.lock();
        if !inner.buckets.contains_key(who.identity) {
            if inner.buckets.len() >= PRUNE_ABOVE {
                inner.buckets.retain(|_, b| {
                    b.refill(now);
                    b.window.is_some() || b.tokens < b.rate.max(1.0)
                });
            }
            let rate = rate();
            let bucket = Bucket { rate, policy, tokens: rate.max(1.0), last: now, window: None };
            inner.buckets.insert(who.identity.to_owned(), bucket);
        } else if let Some(b) = inner.buckets.get_mut(who.identity)
            && b.policy != policy
        {
            b.refill(now);
            b.policy = policy;
            b.rate = rate();
        }
        let Inner { buckets, closed } = &mut *inner;
        let Some(b) = buckets.get_mut(who.identity) else { unreachable!("inserted above") };
        b.refill(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admission::Admitted;
        }
        let retry_after = if b.rate > 0.0 {
            Duration::from_secs_f64(((1.0 - b.tokens) / b.rate).min(3600.0))
        } else {
            Duration::from_secs(3600)
        };
        if b.window.as_ref().is_some_and(|w| now.saturating_duration_since(w.started) >= WINDOW) {
            closed.extend(b.window.take());
        }
        match &mut b.window {
            Some(w) => {
                w.count += 1;
                w.ended = now;
                who.request_id.clone_into(&mut w.last_request_id);
            }
            None => {
                b.window = Some(Refusals {
                    caller: who.identity.to_owned(),
                    serial: who.serial.to_owned(),
                    peer: who.peer.to_owned(),
                    count: 1,
                    first_request_id: who.request_id.to_owned(),
                    last_request_id: who.request_id.to_owned(),
                    rate: b.rate,
                    started: now,
                    ended: now,
                })
            }
        }
        Admission::Refused { retry_after }
    }

    /// The windows that have closed by `now` (one record each), oldest first.
    pub fn due(&self, now: Instant) -> Vec<Refusals> {
        let mut inner = self.lock();
        let Inner { buckets, closed } = &mut *inner;
        for b in buckets.values_mut() {
            if b.window.as_ref().is_some_and(|w| now.saturating_duration_since(w.started) >= WINDOW) {
                closed.extend(b.window.take());
            }
        }
        let mut due = std::mem::take(closed);
        due.sort_by_key(|r| r.started);
        due
    }

    /// Every window, closed or not (at shutdown).
    pub fn drain(&self) -> Vec<Refusals> {
        let mut inner = self.lock();
        let Inner { buckets, closed } = &mut *inner;
        let mut all = std::mem::take(closed);
        all.extend(buckets.values_mut().filter_map(|b| b.window.take()));
        all.sort_by_key(|r| r.started);
        all
    }

    /// Gives back windows whose record could not be written, to be recorded with the
    /// next ones (merged per caller, so their number stays bounded).
    pub fn restore(&self, unrecorded: Vec<Refusals>) {
        let mut inner = self.lock();
        for r in unrecorded {
            match inner.closed.iter_mut().find(|c| c.caller == r.caller) {
                Some(c) => c.absorb(r),
                None => inner.closed.push(r),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is a few field writes on one bucket: a panic cannot break the map.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asker<'a>(id: &'a str, request_id: &'a str) -> Asker<'a> {
        Asker { identity: id, serial: "0a", peer: "127.0.0.1:1", request_id }
    }

    #[test]
    fn a_caller_gets_its_rate_with_a_burst_of_one_second_and_then_a_retry_delay() {
        let b = CallerBudgets::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(b.admit(asker("a", &i.to_string()), 1, || 5.0, t0), Admission::Admitted);
        }
        let Admission::Refused { retry_after } = b.admit(asker("a", "5"), 1, || 5.0, t0) else { panic!() };
        assert!(
            retry_after > Duration::from_millis(150) && retry_after <= Duration::from_millis(200),
            "{retry_after:?}"
        );
        // Another caller has its own bucket.
        assert_eq!(b.admit(asker("b", "x"), 1, || 5.0, t0), Admission::Admitted);
        // 200 ms later one more request fits.
        assert_eq!(b.admit(asker("a", "6"), 1, || 5.0, t0 + Duration::from_millis(201)), Admission::Admitted);
    }

    #[test]
    fn refusals_become_one_record_per_caller_per_second() {
        let b = CallerBudgets::default();
        let t0 = Instant::now();
        assert_eq!(b.admit(asker("a", "r0"), 1, || 1.0, t0), Admission::Admitted);
        for i in 1..=1000 {
            let now = t0 + Duration::from_micros(i * 500);
            assert!(matches!(b.admit(asker("a", &format!("r{i}")), 1, || 1.0, now), Admission::Refused { .. }));
        }
        assert!(b.due(t0 + Duration::from_millis(900)).is_empty(), "the window is still open");
        let due = b.due(t0 + Duration::from_millis(1600));
        assert_eq!(due.len(), 1);
        let r = &due[0];
        assert_eq!((r.count, r.first_request_id.as_str(), r.last_request_id.as_str()), (1000, "r1", "r1000"));
        assert!(r.detail().contains("1000 requests refused") && r.detail().contains("r1000"));
        assert!(b.due(t0 + Duration::from_secs(5)).is_empty(), "taken once");
    }

    #[test]
    fn a_refusal_after_the_window_closes_opens_the_next_one() {
        let b = CallerBudgets::default();
        let t0 = Instant::now();
        b.admit(asker("a", "r0"), 1, || 0.5, t0);
        b.admit(asker("a", "r1"), 1, || 0.5, t0);
        b.admit(asker("a", "r2"), 1, || 0.5, t0 + Duration::from_millis(1100));
        let due = b.due(t0 + Duration::from_millis(1200));
        assert_eq!(due.len(), 1, "the second window is still open");
        assert_eq!(due[0].last_request_id, "r1");
        let rest = b.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].first_request_id, "r2");
    }

    #[test]
    fn unrecorded_windows_come_back_merged_per_caller() {
        let b = CallerBudgets::default();
        let t0 = Instant::now();
        b.admit(asker("a", "r0"), 1, || 0.5, t0);
        b.admit(asker("a", "r1"), 1, || 0.5, t0);
        let first = b.due(t0 + Duration::from_millis(1200));
        assert!(matches!(
            b.admit(asker("a", "r2"), 1, || 0.5, t0 + Duration::from_millis(1500)),
            Admission::Refused { .. }
        ));
        b.restore(first);
        let second = b.due(t0 + Duration::from_secs(3));
        assert_eq!(second.len(), 2, "two windows: {second:?}");
        // The log is still down: given back again, they become one.
        b.restore(second);
        let again = b.due(t0 + Duration::from_secs(4));
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(
            (again[0].count, again[0].first_request_id.as_str(), again[0].last_request_id.as_str()),
            (2, "r1", "r2")
        );
    }

    #[test]
    fn a_new_policy_rereads_the_rate() {
        let b = CallerBudgets::default();
        let t0 = Instant::now();
        assert_eq!(b.admit(asker("a", "1"), 1, || 1.0, t0), Admission::Admitted);
        assert!(matches!(b.admit(asker("a", "2"), 1, || 1.0, t0), Admission::Refused { .. }));
        // Until the new policy is seen, the old rate refills: 0.1 after 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(matches!(b.admit(asker("a", "3"), 2, || 100.0, t1), Admission::Refused { .. }));
        // From then on the new one: 10 ms at 100/s is one more request.
        assert_eq!(b.admit(asker("a", "4"), 2, || 100.0, t1 + Duration::from_millis(10)), Admission::Admitted);
    }
}
