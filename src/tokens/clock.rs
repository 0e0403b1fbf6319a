//! Time as the broker sees it, so tests can drive expiry, refresh-ahead, backoff and
//! `Retry-After` pauses without sleeping.
//!
//! [`SystemClock`] is the real one. [`ManualClock`] only moves when a test calls
//! [`ManualClock::advance`]; its `sleep` returns once the clock has been advanced far
//! enough, so code that waits (the limiter, the refresher) is driven by the test too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Monotonic now, for every deadline and expiry decision.
    fn now(&self) -> Instant;
    /// Wall-clock now, for the `expires_at` callers see.
    fn system_now(&self) -> SystemTime;
    /// Waits until `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// Milliseconds since the Unix epoch of a wall-clock time (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn system_now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that stands still until advanced.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    base_system: SystemTime,
    offset_nanos: AtomicU64,
    advanced: Notify,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            base_system: SystemTime::now(),
            offset_nanos: AtomicU64::new(0),
            advanced: Notify::new(),
        })
    }

    pub fn advance(&self, d: Duration) {
        self.offset_nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        self.advanced.notify_waiters();
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.offset()
    }
    fn system_now(&self) -> SystemTime {
        self.base_system + self.offset()
    }
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let target = self.now() + d;
        Box::pin(async move {
            loop {
                // Register before checking, so an advance between the check and the wait
                // is not missed.
                let notified = self.advanced.notified();
                if self.now() >= target {
                    return;
                }
                notified.await;
            }
        })
    }
}
