//! Request and event ids: UUIDv7 (time-ordered), generated without a system call.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quanta::Instant;

/// A request's id: a UUIDv7, time-ordered and unique, shown in hyphenated form.
///
/// Ids are unique but not secret: do not use them as credentials.
///
/// ```
/// use inference_guard::RequestId;
///
/// let a = RequestId::generate();
/// let b = RequestId::generate();
/// assert_ne!(a, b);
/// assert_eq!(a.to_string().len(), 36);
/// assert_eq!(a.to_string().as_bytes()[14], b'7'); // version 7
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(uuid::Uuid);

impl RequestId {
    pub(crate) const NIL: Self = Self(uuid::Uuid::nil());

    /// A new id.
    pub fn generate() -> Self {
        Self(new_v7(SystemTime::now()))
    }

    pub(crate) fn at(now: SystemTime) -> Self {
        Self(new_v7(now))
    }

    /// The id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
    static ANCHOR: Cell<Option<(SystemTime, Instant)>> = const { Cell::new(None) };
}

/// The wall-clock time and the monotonic instant of "now", from one monotonic clock
/// read. Wall time is derived from a per-thread anchor that is re-read from the
/// system clock whenever it is more than a second old, so it follows clock
/// adjustments within a second while the request path reads one clock, not two.
pub(crate) fn now() -> (SystemTime, Instant) {
    let instant = Instant::now();
    ANCHOR.with(|a| match a.get() {
        Some((sys, at)) if instant.saturating_duration_since(at) < Duration::from_secs(1) => {
            (sys + instant.saturating_duration_since(at), instant)
        }
        _ => {
            let sys = SystemTime::now();
            a.set(Some((sys, instant)));
            (sys, instant)
        }
    })
}

fn seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    // No OS randomness: fall back on time and the thread's identity. Ids stay
    // unique per thread through the counter-based generator below.
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let tid = format!("{:?}", std::thread::current().id());
    tid.bytes().fold(t ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        h.rotate_left(5) ^ u64::from(b)
    })
}

/// SplitMix64: a full-period generator over the 2^64 states, so two ids from one
/// thread never share random bits before 2^64 draws.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

pub(crate) fn new_v7(now: SystemTime) -> uuid::Uuid {
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let a = next_u64().to_le_bytes();
    let b = next_u64().to_le_bytes();
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&a);
    random[8..].copy_from_slice(&b[..2]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}
