//! Strikes and responses shared by all replicas through Redis (feature `redis`).
//!
//! Each replica keeps deciding on its own state, on the request path, without a
//! network call. A background task sends every strike and operator action to Redis,
//! where one Lua script per strike keeps the subject's decayed score on the server's
//! clock and starts suspensions; the task writes what the server knows back into the
//! local state, and every `sync_every` it pulls the set of active suspensions (and
//! drops the ones an operator lifted elsewhere). A suspension reached on one replica
//! is enforced by all of them within `sync_every`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::{AbuseMonitor, Level, Subject};
use crate::error::Error;

pub(crate) enum Op {
    Strike(Subject, f64),
    Lift(Subject),
    Suspend(Subject, Duration),
}

pub(crate) struct Outbox {
    tx: tokio::sync::mpsc::Sender<Op>,
    dropped: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

impl Outbox {
    /// Queues `op` (called before the monitor changes its own state for it).
    pub(crate) fn send(&self, op: Op) {
        self.progress.started.fetch_add(1, Ordering::SeqCst);
        if self.tx.try_send(op).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.progress.finished.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Operations queued (or dropped) and operations done with (written to Redis,
/// failed, or dropped), counted: a sync takes a suspension missing from Redis's
/// answer for one lifted elsewhere only when every operation started before it
/// asked is done and none started since.
#[derive(Default)]
struct Progress {
    started: AtomicU64,
    finished: AtomicU64,
}

/// Adds a strike on the server's clock; starts a suspension at the threshold.
/// Returns `{score, microseconds of suspension left}` as strings.
/// Expiries are written as integers (a number past 17 digits is passed to Redis
/// in exponent form, which `PEXPIRE` refuses: a half-life of 150,000 years made
/// every strike fail).
const STRIKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local w = tonumber(ARGV[1])
local half = tonumber(ARGV[2])
local suspend_at = tonumber(ARGV[3])
local suspend_for = tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'score', 'at', 'until')
local score = tonumber(v[1] or '0')
local at = tonumber(v[2] or '0')
local untl = tonumber(v[3] or '0')
if at > 0 then score = score * math.pow(0.5, (now - at) / half) end
score = score + w
if score >= suspend_at and untl <= now then
  untl = now + suspend_for
  redis.call('ZADD', KEYS[2], untl, ARGV[5])
end
redis.call('HSET', KEYS[1], 'score', tostring(score), 'at', string.format('%.0f', now), 'until', string.format('%.0f', untl))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.min(math.ceil(math.max(untl - now, 20 * half) / 1000), 9e15)))
return {tostring(score), string.format('%.0f', math.max(untl - now, 0))}
";

/// An operator's suspension.
const SUSPEND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'until', string.format('%.0f', untl))
redis.call('HSETNX', KEYS[1], 'score', '0')
redis.call('HSETNX', KEYS[1], 'at', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.min(math.ceil((untl - now) / 1000) + 1000, 9e15)))
redis.call('ZADD', KEYS[2], untl, ARGV[2])
return 1
";

/// The active suspensions: `{member, microseconds left, ...}`.
const ACTIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #r, 2 do
  out[#out + 1] = r[i]
  out[#out + 1] = string.format('%.0f', tonumber(r[i + 1]) - now)
end
return out
";

fn member(s: &Subject) -> String {
    match s {
        Subject::Principal(p) => format!("p:{p}"),
        Subject::Address(a) => format!("a:{a}"),
    }
}

fn subject(m: &str) -> Option<Subject> {
    if let Some(p) = m.strip_prefix("p:") {
        Some(Subject::Principal(p.to_owned()))
    } else {
        m.strip_prefix("a:")
            .and_then(|a| a.parse().ok())
            .map(Subject::Address)
    }
}

/// The handle of a monitor shared through Redis; see
/// [`AbuseMonitor::share_via_redis`].
#[derive(Clone)]
pub struct SharedAbuse {
    monitor: AbuseMonitor,
    conn: ConnectionManager,
    prefix: Arc<str>,
    tx: tokio::sync::mpsc::Sender<Op>,
    dropped: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for SharedAbuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAbuse")
            .field("prefix", &self.prefix)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl SharedAbuse {
    /// Operations waiting to be sent to Redis.
    pub fn pending(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Operations dropped because the queue was full (Redis slow or unreachable).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Redis errors so far (the local state keeps deciding meanwhile).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Pulls the active suspensions now (the background task does it every
    /// `sync_every`). A suspension this replica holds that Redis no longer has
    /// was lifted elsewhere and is dropped here, but only when every operation
    /// this replica queued before asking has been written to Redis (or failed)
    /// and none was queued while the answer was on its way.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind `Backend` when Redis cannot be reached.
    pub async fn sync(&self) -> Result<(), Error> {
        // A suspension missing from the answer was lifted elsewhere, if this
        // replica held it before asking and had written it: one whose operation
        // is queued, or taken off the queue but not written yet (the task waits on
        // Redis), or made while the answer is on its way, is not in Redis yet (it
        // was dropped, and the subject went free here until the next sync). The
        // monitor queues an operation before it changes its own state: a
        // suspension held here whose operation started after `before` shows in
        // `started` once the answer is in.
        let p = &self.progress;
        let before = p.started.load(Ordering::SeqCst);
        let mut held: Vec<Subject> = if p.finished.load(Ordering::SeqCst) == before {
            self.monitor
                .responding()
                .into_iter()
                .filter(|(_, st)| st.level() == Level::Suspended)
                .map(|(s, _)| s)
                .collect()
        } else {
            Vec::new()
        };
        let mut conn = self.conn.clone();
        let reply: Vec<String> = Script::new(ACTIVE)
            .key(format!("{{{}}}:active", self.prefix))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut active = std::collections::HashSet::new();
        for pair in reply.chunks(2) {
            let (Some(m), Some(left)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let (Some(s), Some(left)) = (subject(m), micros_left(left)) else {
                continue;
            };
            self.monitor
                .merge(&s, 0.0, Some(Duration::from_micros(left)));
            active.insert(s);
        }
        if p.started.load(Ordering::SeqCst) != before {
            held.clear();
        }
        // Suspensions lifted elsewhere.
        for s in held {
            if !active.contains(&s) {
                self.monitor.forget(&s);
            }
        }
        Ok(())
    }

    async fn apply(&self, op: Op) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let (half, suspend_at, suspend_for) = self.monitor.settings();
        let key = |s: &Subject| format!("{{{}}}:s:{}", self.prefix, member(s));
        let active = format!("{{{}}}:active", self.prefix);
        match op {
            Op::Strike(s, w) => {
                let (score, left): (String, String) = Script::new(STRIKE)
                    .key(key(&s))
                    .key(&active)
                    .arg(w)
                    .arg(micros(half))
                    .arg(suspend_at)
                    .arg(micros(suspend_for))
                    .arg(member(&s))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let score = score.parse::<f64>().unwrap_or(0.0);
                let left = micros_left(&left).unwrap_or(0);
                self.monitor
                    .merge(&s, score, (left > 0).then(|| Duration::from_micros(left)));
            }
            Op::Lift(s) => {
                redis::pipe()
                    .del(key(&s))
                    .zrem(&active, member(&s))
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
            }
            Op::Suspend(s, d) => {
                Script::new(SUSPEND)
                    .key(key(&s))
                    .key(&active)
                    .arg(micros(d))
                    .arg(member(&s))
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

/// A duration in microseconds as the scripts are given it: at most 9e18 (285,000
/// years), so that the times they compute from it in doubles read back as
/// integers (`Duration::MAX` made the time left of a suspension 2^64 or just
/// under, depending on the rounding).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(9_000_000_000_000_000_000)
}

/// The microseconds left that a script wrote (`%.0f`): an integer, or past
/// `u64::MAX` (a suspension made before this cap), which saturates. A time left
/// that did not read was skipped, and the replica that made the suspension
/// then dropped it as lifted elsewhere.
fn micros_left(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(|v| v as u64)
    })
}

/// The shortest `sync_every` [`AbuseMonitor::share_via_redis`] takes.
const MIN_SYNC: Duration = Duration::from_millis(10);

/// How long one call to Redis may take before it fails (and is retried once).
const TIMEOUT: Duration = Duration::from_secs(1);

fn unavailable(e: redis::RedisError) -> Error {
    crate::store::redis_err("abuse monitor")(e)
}

impl AbuseMonitor {
    /// Shares strikes and responses with every replica that uses the same Redis
    /// and `prefix` (feature `redis`); see the `shared` notes in the
    /// [module docs](crate::respond). Spawns a task on the current Tokio runtime;
    /// call it once per monitor, at start-up. A call to Redis that takes more than a
    /// second fails (and is retried once).
    ///
    /// # Errors
    ///
    /// An [`Error`] when the URL is invalid or Redis cannot be reached; its message
    /// names the kind of failure, never the URL (which may carry a password). An
    /// [`ErrorKind::Internal`](crate::ErrorKind::Internal) error when `sync_every`
    /// is under 10 ms (zero would make every replica ask Redis in a loop).
    /// `Duration::MAX` syncs only when asked ([`SharedAbuse::sync`]; in fact
    /// yearly).
    pub async fn share_via_redis(
        &self,
        url: &str,
        prefix: &str,
        sync_every: Duration,
    ) -> Result<SharedAbuse, Error> {
        if sync_every < MIN_SYNC {
            return Err(Error::new(
                crate::ErrorKind::Internal,
                "abuse monitor: sync_every must be at least 10 ms",
            ));
        }
        let conn = crate::store::connect(url, TIMEOUT).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let dropped = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Progress::default());
        let shared = SharedAbuse {
            monitor: self.clone(),
            conn,
            prefix: prefix.into(),
            tx: tx.clone(),
            dropped: dropped.clone(),
            errors: Arc::new(AtomicU64::new(0)),
            progress: progress.clone(),
        };
        *self.inner.share.lock().unwrap_or_else(|e| e.into_inner()) = Some(Outbox {
            tx,
            dropped,
            progress,
        });
        let worker = shared.clone();
        tokio::spawn(async move {
            let mut next_sync = tokio::time::Instant::now();
            loop {
                let wait = next_sync.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(op)) => {
                        if worker.apply(op).await.is_err() {
                            worker.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        worker.progress.finished.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        if worker.sync().await.is_err() {
                            worker.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        // `Duration::MAX` ("only when asked"): past what an
                        // `Instant` holds, a year from now (it panicked, and the
                        // task that shares every strike ended with it).
                        let now = tokio::time::Instant::now();
                        next_sync = now
                            .checked_add(sync_every)
                            .unwrap_or(now + Duration::from_secs(365 * 86_400));
                    }
                }
            }
        });
        Ok(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_left_read_back_whatever_their_size() {
        assert_eq!(micros_left("1500"), Some(1500));
        assert_eq!(micros_left("0"), Some(0));
        // 2^64: what `%.0f` wrote for a suspension of `Duration::MAX`.
        assert_eq!(micros_left("18446744073709551616"), Some(u64::MAX));
        assert_eq!(micros_left("1e300"), Some(u64::MAX));
        assert_eq!(micros_left("-5"), None);
        assert_eq!(micros_left("soon"), None);
        assert_eq!(micros(Duration::MAX), 9_000_000_000_000_000_000);
        assert_eq!(micros(Duration::from_secs(2)), 2_000_000);
        // The cap plus any time since the epoch in microseconds, minus a later
        // now, stays an integer below u64::MAX in a double.
        let now = 4.0e15_f64;
        let untl = now + micros(Duration::MAX) as f64;
        assert!(untl - (now - 1.0) < u64::MAX as f64);
    }
}
