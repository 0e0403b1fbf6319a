//! One shared upstream rate limiter per subscription key (DESIGN.md, go-api.md: Go allows
//! 10 requests/s per subscription key, shared by every client key and by the callers' own
//! API traffic, so the vault takes only a configured share).
//!
//! A GCRA token bucket: `rate` requests per second with bursts of `burst`. A caller that
//! would have to wait longer than its deadline is refused at once with how long it would
//! have waited, instead of queueing forever. A `429` from Go pauses the whole bucket until
//! its `Retry-After` has passed; reservations made before the pause are re-checked after
//! their wait, so nothing slips through a pause.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::clock::Clock;

#[derive(Debug)]
pub struct Limiter {
    clock: Arc<dyn Clock>,
    interval: Duration,
    burst: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// GCRA's theoretical arrival time of the next request.
    tat: Instant,
    paused_until: Option<Instant>,
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>, rate_per_second: f64, burst: u32) -> Self {
        let rate = if rate_per_second.is_finite() && rate_per_second > 0.0 { rate_per_second } else { 1.0 };
        let now = clock.now();
        Self {
            clock,
            interval: Duration::from_secs_f64(1.0 / rate),
            burst: burst.max(1),
            state: Mutex::new(State { tat: now, paused_until: None }),
        }
    }

    /// Waits for a slot; `Ok(how long it waited)`, or `Err(wait)` when the slot is further
    /// away than `max_wait`.
    pub async fn acquire(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let start = self.clock.now();
        let deadline = start + max_wait;
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = self.clock.now();
                let start = match s.paused_until {
                    Some(p) if p > now => p,
                    _ => now,
                };
                let tat = s.tat.max(start);
                // The request may go at tat - (burst - 1) * interval, but never before `start`.
                let allowed = tat.checked_sub(self.interval * (self.burst - 1)).unwrap_or(start).max(start);
                if allowed > deadline {
                    return Err(allowed - now);
                }
                s.tat = tat + self.interval;
                allowed.saturating_duration_since(now)
            };
            if wait.is_zero() {
                return Ok(self.clock.now().saturating_duration_since(start));
            }
            self.clock.sleep(wait).await;
            if self.paused_for().is_none() {
                return Ok(self.clock.now().saturating_duration_since(start));
            }
        }
    }

    /// Stops every request until `d` from now (a 429's `Retry-After`).
    pub fn pause(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = self.clock.now() + d;
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
    }

    /// How much longer a pause lasts, if one is in force.
    pub fn paused_for(&self) -> Option<Duration> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
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
        assert!(l.acquire(Duration::ZERO).await.is_ok());
        assert!(l.acquire(Duration::ZERO).await.is_ok());
        let wait = l.acquire(Duration::ZERO).await.unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        clock.advance(Duration::from_millis(500));
        assert!(l.acquire(Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn pause_blocks_until_it_passes() {
        let clock = ManualClock::new();
        let l = Limiter::new(clock.clone(), 100.0, 10);
        l.pause(Duration::from_secs(2));
        assert_eq!(l.acquire(Duration::from_secs(1)).await.unwrap_err(), Duration::from_secs(2));
        let l = Arc::new(l);
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(2));
        assert!(waiter.await.unwrap().is_ok());
        assert!(l.paused_for().is_none());
    }
}
