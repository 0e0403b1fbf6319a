//! One shared upstream rate limiter per subscription key (DESIGN.md, go-api.md: Go allows
//! 10 requests/s per subscription key, shared by every client key and by the callers' own
//! API traffic, so the vault takes only a configured share).
//!
//! A GCRA token bucket: `rate` requests per second with bursts of `burst`. A request that
//! would have to wait longer than its deadline is refused at once with how long it would
//! have waited, instead of queueing forever. A `429` from Go pauses the whole bucket until
//! its `Retry-After` has passed; nothing is handed a slot while a pause is in force.
//!
//! # Fairness between callers
//!
//! Every request names its caller (the certificate identity) and the caller's *share*
//! (`upstream_share` of its policy grant, default `tokens.default_upstream_share`, 0.5).
//! Slots are handed out when they fall due, not reserved when asked for, so a caller that
//! arrives while another has queued a whole `limiter_max_wait` of requests is not locked
//! out. Among the callers waiting, the next slot goes to the one with the smallest
//! start-time fair-queuing tag: each slot a caller takes costs it `1 / share` of virtual
//! time. So while several callers wait they get slots in proportion to their shares (two
//! callers with the default 0.5 get half each; none gets more than half while another
//! waits), and a caller alone gets every slot: nobody is held back for callers that are
//! not there. A caller's tag never falls behind the virtual clock, so idle time earns no
//! credit. Share 0 takes only slots no caller with a share above 0 is waiting for. Within
//! one caller, requests are served first come, first served.
//!
//! Whether a new request is admitted is decided by playing the queue forward (no new
//! arrivals assumed): if its turn falls after its deadline it is refused at once. A later
//! caller with a better tag can still push it back; then it is refused at its deadline.
//! Either way the caller gets `Err(how long it would have waited)`, which the broker turns
//! into `RateLimited` (gRPC `UNAVAILABLE` with RetryInfo).
//!
//! # One budget across replicas
//!
//! On PostgreSQL several replicas serve one vault, and Go sees one subscription key. A
//! limiter made [`Limiter::shared`] keeps its local fair queue (which of this replica's
//! callers goes next), and then books each slot it hands out in the database's bucket for
//! the environment (`store::shared`): the booking says how long to wait so that all the
//! replicas together keep `rate` and `burst`, and the request waits that long (or is refused
//! if that takes it past its deadline). A pause is written there too, so a 429 seen by one
//! replica pauses all; a pause read back from a booking pauses this limiter as well. A
//! booking that cannot be made (the database unreachable) refuses the request: no request
//! goes to Go outside the shared budget.
//!
//! No background task: every waiter sleeps until the next slot is due (or its deadline),
//! and whichever wakes first hands out the slots that are due. The state is one mutex,
//! taken only by requests that reach the limiter (cache misses), never by a cache hit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::clock::Clock;
use crate::store::shared::{Booking, Shared};

/// Refusal when the shared bucket cannot be reached: the caller is told to come back after
/// this long.
const SHARED_UNREACHABLE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Limiter {
    clock: Arc<dyn Clock>,
    /// The replicas' shared bucket and its name, on PostgreSQL.
    remote: Option<(Arc<Shared>, String)>,
    interval: Duration,
    burst: u32,
    state: Mutex<State>,
    /// Woken whenever slots are handed out, so a waiter given one by another waiter's
    /// hand-out sees it at once.
    handed_out: Notify,
}

#[derive(Debug)]
struct State {
    /// GCRA's theoretical arrival time of the next request.
    tat: Instant,
    paused_until: Option<Instant>,
    /// The fair queue's virtual clock: the start tag of the last slot handed out. Kept
    /// near zero: when nobody waits, every tag is shifted down by it (only differences
    /// between tags matter), so tags never grow with the process's age.
    vtime: f64,
    /// One entry per caller that waits or took a slot recently (its finish tag is ahead of
    /// the virtual clock); others are dropped, so this stays as small as the set of
    /// callers active at once.
    flows: Vec<Flow>,
    /// Tickets handed a slot whose waiter has not picked it up yet.
    granted: Vec<u64>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Flow {
    caller: Arc<str>,
    /// The share its latest request named, in [0, 1].
    share: f64,
    /// Virtual finish tag of its latest slot.
    finish: f64,
    /// Its waiting tickets, first come first served.
    waiting: VecDeque<u64>,
}

/// The order the fair queue serves flows in: positive shares by start tag, then share 0;
/// ties go to the earlier ticket.
fn tag(share: f64, finish: f64, vtime: f64, ticket: u64) -> (bool, f64, u64) {
    if share > 0.0 { (false, finish.max(vtime), ticket) } else { (true, 0.0, ticket) }
}

fn before(a: (bool, f64, u64), b: (bool, f64, u64)) -> bool {
    (a.0, a.1, a.2).partial_cmp(&(b.0, b.1, b.2)).is_some_and(|o| o.is_lt())
}

/// Charges one slot to a flow: its start tag becomes the virtual clock, and its finish
/// moves `1 / share` ahead. Share 0 is never charged (it only takes leftovers).
fn charge(vtime: &mut f64, finish: &mut f64, share: f64) {
    if share > 0.0 {
        let start = finish.max(*vtime);
        *vtime = start;
        *finish = start + 1.0 / share;
    }
}

impl State {
    fn flow_of(&mut self, caller: &str, share: f64) -> usize {
        let i = match self.flows.iter().position(|f| &*f.caller == caller) {
            Some(i) => i,
            None => {
                self.flows.push(Flow { caller: caller.into(), share, finish: self.vtime, waiting: VecDeque::new() });
                self.flows.len() - 1
            }
        };
        self.flows[i].share = share;
        i
    }

    /// The flow whose head ticket is served next.
    fn next_flow(&self) -> Option<usize> {
        let mut best: Option<(usize, (bool, f64, u64))> = None;
        for (i, f) in self.flows.iter().enumerate() {
            if let Some(&t) = f.waiting.front() {
                let k = tag(f.share, f.finish, self.vtime, t);
                if best.is_none_or(|(_, b)| before(k, b)) {
                    best = Some((i, k));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// How many slots are handed out before `ticket`'s, if nobody else arrived.
    fn position(&self, ticket: u64) -> u32 {
        let mut finish: Vec<f64> = self.flows.iter().map(|f| f.finish).collect();
        let mut pos = vec![0usize; self.flows.len()];
        let mut vtime = self.vtime;
        let mut served = 0u32;
        loop {
            let mut best: Option<(usize, (bool, f64, u64))> = None;
            for (i, f) in self.flows.iter().enumerate() {
                if let Some(&t) = f.waiting.get(pos[i]) {
                    let k = tag(f.share, finish[i], vtime, t);
                    if best.is_none_or(|(_, b)| before(k, b)) {
                        best = Some((i, k));
                    }
                }
            }
            let Some((i, (_, _, t))) = best else { return served };
            if t == ticket {
                return served;
            }
            charge(&mut vtime, &mut finish[i], self.flows[i].share);
            pos[i] += 1;
            served = served.saturating_add(1);
        }
    }

    /// Takes `ticket` out of the queue (its waiter gave up or was refused).
    fn withdraw(&mut self, ticket: u64) {
        self.granted.retain(|&t| t != ticket);
        for f in &mut self.flows {
            f.waiting.retain(|&t| t != ticket);
        }
        self.tidy();
    }

    /// True (and forgotten) if `ticket` was handed a slot.
    fn take_granted(&mut self, ticket: u64) -> bool {
        match self.granted.iter().position(|&t| t == ticket) {
            Some(i) => {
                self.granted.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Drops flows that carry no information and, when nobody waits, shifts the tags
    /// down to the virtual clock.
    fn tidy(&mut self) {
        let vtime = self.vtime;
        self.flows.retain(|f| !f.waiting.is_empty() || f.finish > vtime);
        if self.flows.iter().all(|f| f.waiting.is_empty()) {
            for f in &mut self.flows {
                f.finish -= vtime;
            }
            self.vtime = 0.0;
        }
    }
}

/// Removes a waiter's ticket if its future is dropped before it got an answer.
struct Waiting<'a> {
    limiter: &'a Limiter,
    ticket: Option<u64>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.limiter.lock().withdraw(t);
        }
    }
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>, rate_per_second: f64, burst: u32) -> Self {
        let rate = if rate_per_second.is_finite() && rate_per_second > 0.0 { rate_per_second } else { 1.0 };
        let now = clock.now();
        Self {
            clock,
            remote: None,
            interval: Duration::from_secs_f64(1.0 / rate),
            burst: burst.max(1),
            state: Mutex::new(State {
                tat: now,
                paused_until: None,
                vtime: 0.0,
                flows: Vec::new(),
                granted: Vec::new(),
                next_ticket: 0,
            }),
            handed_out: Notify::new(),
        }
    }

    /// A limiter whose slots are also booked in the replicas' shared bucket `bucket`
    /// (module docs, "One budget across replicas").
    pub fn shared(clock: Arc<dyn Clock>, rate_per_second: f64, burst: u32, shared: Arc<Shared>, bucket: &str) -> Self {
        Self { remote: Some((shared, bucket.to_owned())), ..Self::new(clock, rate_per_second, burst) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the slot `n` places after the next one falls due (n = 0: the next slot).
    fn slot_time(&self, s: &State, now: Instant, n: u32) -> Instant {
        let start = match s.paused_until {
            Some(p) if p > now => p,
            _ => now,
        };
        let tat = s.tat.max(start) + self.interval * n;
        // A slot may go at tat - (burst - 1) * interval, but never before `start`.
        tat.checked_sub(self.interval * (self.burst - 1)).unwrap_or(start).max(start)
    }

    /// Hands every slot that is due to the waiters, in fair order. True if any was.
    fn hand_out(&self, s: &mut State, now: Instant) -> bool {
        let mut any = false;
        while self.slot_time(s, now, 0) <= now {
            let Some(i) = s.next_flow() else { break };
            let Some(ticket) = s.flows[i].waiting.pop_front() else { break };
            let State { vtime, flows, .. } = &mut *s;
            let share = flows[i].share;
            charge(vtime, &mut flows[i].finish, share);
            s.granted.push(ticket);
            s.tat = s.tat.max(now) + self.interval;
            any = true;
        }
        s.tidy();
        any
    }

    /// Waits for a slot for `caller` (its `share` in [0, 1], see the module docs);
    /// `Ok(how long it waited)`, or `Err(how long it would have waited)` when its turn
    /// comes later than `max_wait` from now.
    pub async fn acquire(&self, caller: &str, share: f64, max_wait: Duration) -> Result<Duration, Duration> {
        let waited = self.acquire_local(caller, share, max_wait).await?;
        let Some((shared, bucket)) = &self.remote else { return Ok(waited) };
        let left = max_wait.saturating_sub(waited);
        let booking = {
            let (shared, bucket, interval, burst) = (shared.clone(), bucket.clone(), self.interval, self.burst);
            tokio::task::spawn_blocking(move || shared.reserve(&bucket, interval, burst, left)).await
        };
        match booking {
            Ok(Ok(Booking::Booked { wait, paused_for })) => {
                if let Some(p) = paused_for {
                    self.pause_local(p);
                }
                if !wait.is_zero() {
                    self.clock.sleep(wait).await;
                }
                Ok(waited + wait)
            }
            Ok(Ok(Booking::Refused { wait, paused_for })) => {
                if let Some(p) = paused_for {
                    self.pause_local(p);
                }
                Err(waited + wait)
            }
            Ok(Err(e)) => {
                tracing::warn!(bucket = %bucket, error = %e, "could not book an upstream slot in the shared budget; request refused");
                Err(SHARED_UNREACHABLE_RETRY)
            }
            Err(_) => Err(SHARED_UNREACHABLE_RETRY),
        }
    }

    /// [`Limiter::acquire`] in this replica's fair queue only.
    async fn acquire_local(&self, caller: &str, share: f64, max_wait: Duration) -> Result<Duration, Duration> {
        // A positive share is at least 1e-6, so `1 / share` stays finite.
        let share = match share {
            s if !s.is_finite() => 0.5,
            s if s <= 0.0 => 0.0,
            s => s.clamp(1e-6, 1.0),
        };
        let start = self.clock.now();
        let deadline = start + max_wait;
        let mut waiting = Waiting { limiter: self, ticket: None };
        let ticket = {
            let mut s = self.lock();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            let i = s.flow_of(caller, share);
            s.flows[i].waiting.push_back(ticket);
            waiting.ticket = Some(ticket);
            if self.hand_out(&mut s, start) {
                self.handed_out.notify_waiters();
            }
            if s.take_granted(ticket) {
                waiting.ticket = None;
                return Ok(Duration::ZERO);
            }
            let turn = self.slot_time(&s, start, s.position(ticket));
            if turn > deadline {
                waiting.ticket = None;
                s.withdraw(ticket);
                return Err(turn - start);
            }
            ticket
        };
        loop {
            // Registered before looking, so a hand-out in between is not missed.
            let notified = self.handed_out.notified();
            let (now, wake_at) = {
                let mut s = self.lock();
                let now = self.clock.now();
                if self.hand_out(&mut s, now) {
                    self.handed_out.notify_waiters();
                }
                if s.take_granted(ticket) {
                    waiting.ticket = None;
                    return Ok(now.saturating_duration_since(start));
                }
                if now >= deadline {
                    // Pushed back by callers with a better claim since it was admitted.
                    let turn = self.slot_time(&s, now, s.position(ticket));
                    waiting.ticket = None;
                    s.withdraw(ticket);
                    return Err(turn.saturating_duration_since(now));
                }
                (now, self.slot_time(&s, now, 0).min(deadline))
            };
            tokio::select! {
                _ = notified => {}
                _ = self.clock.sleep(wake_at.saturating_duration_since(now)) => {}
            }
        }
    }

    /// Stops every request until `d` from now (a 429's `Retry-After`), on every replica
    /// when the budget is shared (written there in the background, at once).
    pub fn pause(&self, d: Duration) {
        self.pause_local(d);
        if let Some((shared, bucket)) = &self.remote
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (shared, bucket) = (shared.clone(), bucket.clone());
            rt.spawn_blocking(move || {
                if let Err(e) = shared.pause(&bucket, d) {
                    tracing::warn!(bucket = %bucket, error = %e, "could not pause the shared upstream budget");
                }
            });
        }
    }

    fn pause_local(&self, d: Duration) {
        let mut s = self.lock();
        let until = self.clock.now() + d;
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
    }

    /// How much longer a pause lasts, if one is in force.
    pub fn paused_for(&self) -> Option<Duration> {
        let s = self.lock();
        let now = self.clock.now();
        s.paused_until.filter(|p| *p > now).map(|p| p - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::clock::ManualClock;

    #[tokio::test]
    async fn burst_then_rate_then_refusal() {
        let clock = ManualClock::new();
        let l = Limiter::new(clock.clone(), 2.0, 2);
        // Two at once (the burst), the third would wait 0.5 s: refused with a zero deadline.
        assert!(l.acquire("a", 0.5, Duration::ZERO).await.is_ok());
        assert!(l.acquire("a", 0.5, Duration::ZERO).await.is_ok());
        let wait = l.acquire("a", 0.5, Duration::ZERO).await.unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        clock.advance(Duration::from_millis(500));
        assert!(l.acquire("a", 0.5, Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn pause_blocks_until_it_passes() {
        let clock = ManualClock::new();
        let l = Limiter::new(clock.clone(), 100.0, 10);
        l.pause(Duration::from_secs(2));
        assert_eq!(l.acquire("a", 0.5, Duration::from_secs(1)).await.unwrap_err(), Duration::from_secs(2));
        let l = Arc::new(l);
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire("a", 0.5, Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(2));
        assert!(waiter.await.unwrap().is_ok());
        assert!(l.paused_for().is_none());
    }

    /// Queues `n` requests for `caller` (each in its own task) and lets them register.
    async fn queue(
        l: &Arc<Limiter>,
        caller: &'static str,
        share: f64,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<(&'static str, Result<Duration, Duration>)>> {
        let mut v = Vec::new();
        for _ in 0..n {
            let l = l.clone();
            v.push(tokio::spawn(async move { (caller, l.acquire(caller, share, Duration::from_secs(60)).await) }));
            tokio::task::yield_now().await;
        }
        v
    }

    /// Advances one slot at a time and returns who got each of the next `n` slots.
    async fn serve_order(
        clock: &ManualClock,
        tasks: &mut Vec<tokio::task::JoinHandle<(&'static str, Result<Duration, Duration>)>>,
        step: Duration,
        n: usize,
    ) -> Vec<&'static str> {
        let mut order = Vec::new();
        for _ in 0..n {
            clock.advance(step);
            // Bounded: every step hands out exactly one slot to a waiting task.
            for _ in 0..1000 {
                tokio::task::yield_now().await;
                if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
                    let (who, r) = tasks.swap_remove(i).await.unwrap();
                    assert!(r.is_ok());
                    order.push(who);
                    break;
                }
            }
        }
        order
    }

    #[tokio::test]
    async fn a_second_caller_gets_half_although_the_first_queued_everything() {
        let clock = ManualClock::new();
        let l = Arc::new(Limiter::new(clock.clone(), 1.0, 1));
        assert!(l.acquire("a", 0.5, Duration::ZERO).await.is_ok()); // the burst
        let mut tasks = queue(&l, "a", 0.5, 10).await;
        tasks.extend(queue(&l, "b", 0.5, 4).await);
        let order = serve_order(&clock, &mut tasks, Duration::from_secs(1), 8).await;
        assert_eq!(order, ["b", "a", "b", "a", "b", "a", "b", "a"], "alternating while both wait");
        let order = serve_order(&clock, &mut tasks, Duration::from_secs(1), 3).await;
        assert_eq!(order, ["a", "a", "a"], "alone again: every slot");
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test]
    async fn shares_weigh_the_slots_and_zero_takes_only_leftovers() {
        let clock = ManualClock::new();
        let l = Arc::new(Limiter::new(clock.clone(), 1.0, 1));
        assert!(l.acquire("x", 0.5, Duration::ZERO).await.is_ok());
        let mut tasks = queue(&l, "zero", 0.0, 2).await;
        tasks.extend(queue(&l, "big", 0.75, 12).await);
        tasks.extend(queue(&l, "small", 0.25, 4).await);
        let order = serve_order(&clock, &mut tasks, Duration::from_secs(1), 16).await;
        let big = order.iter().filter(|w| **w == "big").count();
        let small = order.iter().filter(|w| **w == "small").count();
        assert_eq!((big, small), (12, 4), "{order:?}");
        assert!(order[..8].iter().filter(|w| **w == "small").count() == 2, "3:1 while both wait: {order:?}");
        let order = serve_order(&clock, &mut tasks, Duration::from_secs(1), 2).await;
        assert_eq!(order, ["zero", "zero"]);
    }

    #[tokio::test]
    async fn a_request_pushed_past_its_deadline_is_refused_with_its_wait() {
        let clock = ManualClock::new();
        let l = Arc::new(Limiter::new(clock.clone(), 1.0, 1));
        assert!(l.acquire("a", 0.5, Duration::ZERO).await.is_ok());
        // a's request fits its 2 s deadline (slot at 1 s) ...
        let a1 = tokio::spawn({
            let l = l.clone();
            async move { l.acquire("a", 0.5, Duration::from_secs(1)).await }
        });
        tokio::task::yield_now().await;
        let a2 = tokio::spawn({
            let l = l.clone();
            async move { l.acquire("a", 0.5, Duration::from_secs(2)).await }
        });
        tokio::task::yield_now().await;
        // ... until b arrives with a better claim and takes the slot at 1 s.
        let b = tokio::spawn({
            let l = l.clone();
            async move { l.acquire("b", 0.5, Duration::from_secs(2)).await }
        });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.await.unwrap(), Ok(Duration::from_secs(1)));
        let refused = a1.await.unwrap().unwrap_err();
        assert!(refused <= Duration::from_secs(1), "{refused:?}");
        clock.advance(Duration::from_secs(1));
        assert_eq!(a2.await.unwrap(), Ok(Duration::from_secs(2)));
    }
}
