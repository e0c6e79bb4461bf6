//! The generic cell rate algorithm over a bounded, sharded key table.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Quota;

/// Keys are already 64-bit keyed hashes: the table hashes them no further.
#[derive(Default)]
pub(crate) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table = HashMap<u64, AtomicU64, BuildHasherDefault<Identity>>;

const SHARDS: usize = 64;

/// One shard, alone on its cache lines, so threads working on different shards do not
/// contend on each other's lock words.
#[repr(align(128))]
struct Shard(RwLock<Table>);

impl std::ops::Deref for Shard {
    type Target = RwLock<Table>;
    fn deref(&self) -> &RwLock<Table> {
        &self.0
    }
}

/// The outcome of one check. Its figures are computed when asked for, so a check
/// that only needs the verdict pays for none of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    /// The key's TAT after an admission, or the TAT the refused cost would need.
    tat: u64,
    /// The TAT before the check (for `reset` of a refusal).
    base: u64,
    now: u64,
    interval: u64,
    burst: u64,
    burst_ns: u64,
}

impl Decision {
    /// Whether the cost was admitted.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Units left in the burst after this check.
    pub fn remaining(&self) -> u64 {
        if !self.allowed {
            return 0;
        }
        let used = (self.tat - self.now).div_ceil(self.interval.max(1));
        self.burst.saturating_sub(used)
    }

    /// How long until the key is fully replenished.
    pub fn reset(&self) -> Duration {
        let until = if self.allowed { self.tat } else { self.base };
        Duration::from_nanos(until.saturating_sub(self.now))
    }

    /// For a refusal, how long until the cost fits.
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.allowed).then(|| Duration::from_nanos(self.tat - self.now - self.burst_ns))
    }
}

/// Why a check could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFull {
    /// Every tracked key is active and the table is at its capacity.
    Full,
}

/// A keyed GCRA limiter: a quota per key, one atomic per key, no background thread.
///
/// Each key's state is its theoretical arrival time (TAT, nanoseconds on the limiter's
/// clock). A check of cost `n` admits if `max(TAT, now) + n·T - now ≤ burst·T` (`T` is
/// the emission interval) and moves the TAT forward with one compare-and-swap. A key
/// whose TAT has passed is exactly as a key never seen, so it is evicted for free.
/// The table holds about `max_keys` keys (64 shards of `max_keys / 64` plus 5%), and
/// when a shard is full of active keys a new key is refused ([`TableFull`]) rather
/// than an active key being forgotten.
///
/// Memory: entries of 16 bytes plus one control byte each, in hash tables that keep a
/// load of at most 7/8 and grow by doubling: under `42 · max_keys + 64 KiB` bytes in
/// all ([`memory_bytes`](Self::memory_bytes) reports the current figure). For
/// 1,000,000 keys: 36 MB measured, 42 MB bound.
///
/// ```
/// use std::time::Duration;
/// use inference_guard::rate_limit::{Decision, KeyedGcra, Quota};
///
/// let limiter = KeyedGcra::new(Quota::per_second(2), 1000);
/// let now = Duration::from_secs(10);
/// assert_eq!(limiter.check("alice", 1, now)?.remaining(), 1);
/// assert!(limiter.check("alice", 1, now)?.is_allowed());
/// let refused = limiter.check("alice", 1, now)?;
/// assert_eq!(refused.retry_after(), Some(Duration::from_millis(500)));
/// assert!(limiter.check("bob", 1, now)?.is_allowed());
/// # Ok::<(), inference_guard::rate_limit::TableFull>(())
/// ```
pub struct KeyedGcra {
    interval: u64,
    burst_ns: u64,
    burst: u64,
    max_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for KeyedGcra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedGcra")
            .field("burst", &self.burst)
            .field("interval_ns", &self.interval)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl KeyedGcra {
    /// A limiter enforcing `quota` per key, tracking at most `max_keys` keys.
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        let burst = u64::from(quota.burst());
        let interval = quota.interval_ns();
        Self {
            interval,
            burst_ns: interval.saturating_mul(burst),
            burst,
            // Keys spread over the shards by hash; 5% slack per shard keeps a table of
            // `max_keys` random keys from filling one shard early (about six standard
            // deviations at a million keys).
            max_per_shard: (max_keys.div_ceil(SHARDS) * 105 / 100).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Shard(RwLock::new(Table::default())))
                .collect(),
        }
    }

    /// The keyed hash of a string key (stable for this limiter's lifetime).
    pub fn hash_key(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn hasher(&self) -> &std::collections::hash_map::RandomState {
        &self.hasher
    }

    /// Checks `cost` units for `key` at time `now` (on the limiter's clock).
    ///
    /// # Errors
    ///
    /// [`TableFull`] when the key is new and the table is full of active keys.
    pub fn check(&self, key: &str, cost: u32, now: Duration) -> Result<Decision, TableFull> {
        self.check_hashed(self.hash_key(key), u64::from(cost), now)
    }

    pub(crate) fn check_hashed(
        &self,
        key: u64,
        cost: u64,
        now: Duration,
    ) -> Result<Decision, TableFull> {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[(key >> 32) as usize % SHARDS];
        {
            let table = shard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(tat) = table.get(&key) {
                return Ok(self.update(tat, cost, now));
            }
        }
        let mut table = shard.write().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= self.max_per_shard {
            table.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
            if table.len() >= self.max_per_shard {
                return Err(TableFull::Full);
            }
        }
        let tat = table.entry(key).or_insert_with(|| AtomicU64::new(0));
        Ok(self.update(tat, cost, now))
    }

    fn update(&self, tat: &AtomicU64, cost: u64, now: u64) -> Decision {
        let inc = cost.saturating_mul(self.interval);
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let base = current.max(now);
            let new = base.saturating_add(inc);
            let decision = |allowed| Decision {
                allowed,
                tat: new,
                base,
                now,
                interval: self.interval,
                burst: self.burst,
                burst_ns: self.burst_ns,
            };
            if new - now > self.burst_ns {
                return decision(false);
            }
            match tat.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return decision(true),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back `cost` units (a refund) or takes `extra` more (a debt, which the next
    /// decisions for the key have to wait out in full: debt is carried, never
    /// forgiven). A debt on a key that went idle and was evicted starts it again.
    pub(crate) fn adjust_hashed(&self, key: u64, refund: u64, extra: u64, now: Duration) {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[(key >> 32) as usize % SHARDS];
        let down = refund.saturating_mul(self.interval);
        let up = extra.saturating_mul(self.interval);
        let apply = |tat: &AtomicU64| {
            let mut current = tat.load(Ordering::Acquire);
            loop {
                let new = current
                    .saturating_sub(down)
                    .max(now.min(current))
                    .max(if up > 0 { now } else { 0 })
                    .saturating_add(up);
                match tat.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return,
                    Err(actual) => current = actual,
                }
            }
        };
        {
            let table = shard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(tat) = table.get(&key) {
                apply(tat);
                return;
            }
        }
        if up == 0 {
            return; // already idle and evicted: nothing to refund
        }
        // A debt outlives eviction (a full table still takes it: the key was
        // admitted a moment ago, so its slot is owed).
        let mut table = shard.write().unwrap_or_else(|p| p.into_inner());
        apply(table.entry(key).or_insert_with(|| AtomicU64::new(0)));
    }

    /// Forgets every key that is fully replenished at `now` (such keys behave exactly
    /// as new ones). The table also does this by itself when a shard fills up.
    pub fn retain_recent(&self, now: Duration) {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        for shard in self.shards.iter() {
            shard
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        }
    }

    /// The number of keys tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory the key tables hold now, in bytes (entries, control bytes, and the
    /// shard headers).
    pub fn memory_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<(u64, AtomicU64)>() + 1;
        self.shards
            .iter()
            .map(|s| {
                // hashbrown keeps capacity at 7/8 of its (power-of-two) buckets.
                let cap = s.read().unwrap_or_else(|p| p.into_inner()).capacity();
                let buckets = if cap == 0 {
                    0
                } else {
                    (cap * 8).div_ceil(7).next_power_of_two()
                };
                buckets * per_bucket + 16
            })
            .sum::<usize>()
            + std::mem::size_of::<Shard>() * SHARDS
    }
}
