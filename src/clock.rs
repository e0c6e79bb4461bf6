//! The floor: monotonic time for every stage that counts it (rate limits, abuse
//! scores). Re-exported as `rate_limit::{Clock, SystemClock, ManualClock}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// 9999-12-31T23:59:59Z after the Unix epoch: the latest wall-clock time the
/// crate hands on (in an audit record, an abuse action, to a replay store). RFC
/// 3339 writes no later year; a time past it (a suspension or a token lifetime
/// "for ever") is clamped to it rather than overflowing a `SystemTime` or `time`'s
/// dates.
pub(crate) const LAST_SECOND: Duration = Duration::from_secs(253_402_300_799);

/// `base + after`, or [`LAST_SECOND`] when that is later (or past what a
/// `SystemTime` holds).
pub(crate) fn wall_time(base: std::time::SystemTime, after: Duration) -> std::time::SystemTime {
    let last = std::time::UNIX_EPOCH + LAST_SECOND;
    base.checked_add(after)
        .filter(|t| *t < last)
        .unwrap_or(last)
}

/// A monotonic clock for limiters, abuse monitors and anything else that counts
/// time. Implement it to drive time in tests, or use [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// Time since an arbitrary, fixed origin.
    fn now(&self) -> Duration;
}

/// The system's monotonic clock, read through the CPU's time-stamp counter where it
/// is reliable (the `quanta` crate, as `governor` does): a few nanoseconds a read
/// instead of a system-clock call.
#[derive(Clone, Debug)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin: u64,
}

impl Default for SystemClock {
    fn default() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.clock.delta_as_nanos(self.origin, self.clock.raw()))
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use inference_guard::rate_limit::{Clock, ManualClock};
/// let c = ManualClock::new();
/// c.advance(Duration::from_secs(2));
/// assert_eq!(c.now(), Duration::from_secs(2));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_nanos()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// The time-stamp counter read directly, for timing the guard's own work where it
/// is counted many times per request (each chunk of a stream): a read of the
/// counter without the global clock's per-thread lookup (about 9 ns instead of 14
/// on the machines we measure on).
static TICKS: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();

/// The counter now (see [`since`]).
pub(crate) fn ticks() -> u64 {
    TICKS.get_or_init(quanta::Clock::new).raw()
}

/// The time since `start`, a reading of [`ticks`].
pub(crate) fn since(start: u64) -> Duration {
    let c = TICKS.get_or_init(quanta::Clock::new);
    Duration::from_nanos(c.delta_as_nanos(start, c.raw()))
}
