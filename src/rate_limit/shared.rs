//! The same limits, shared by all replicas through Redis.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use smallvec::SmallVec;

use super::{KeyBy, Limit, Unit};
use crate::decision::{RateLimitInfo, Rejection};
use crate::error::{Error, ErrorKind, StageError};
use crate::principal::Principal;
use crate::request::GuardRequest;
use crate::response::Usage;
use crate::stage::{Permit, RateLimiter, Settlement, StageContext};
use crate::step::Step;
use crate::store::{connect, redis_err};

/// One GCRA decision for one key, on the server's clock (microseconds since the
/// epoch fit exactly in Lua's doubles). Returns `{allowed, tat - now, base - now,
/// tat - now - burst}` (the last, when refused, is how long to wait).
///
/// Times ahead are capped where Redis still turns them into integers (9e18 µs,
/// 285,000 years: past `i64`, a reply was garbage, a Retry-After of 1 s for a
/// quota of one request per `Duration::MAX`), and expiries where `SET` takes
/// them (written out as integers, never in exponent form).
const DECIDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now)
local new = base + cost * interval
local cap = 9e18
if new - now > burst then
  return {0, math.min(new - now, cap), math.min(base - now, cap), math.min(new - now - burst, cap)}
end
local ttl = math.min(math.ceil((new - now) / 1000) + 1000, 9e15)
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', string.format('%.0f', ttl))
return {1, math.min(new - now, cap), math.min(base - now, cap), 0}
";

/// Moves a key's TAT: back by a refund (not below now), forward by a debt (carried in
/// full, from now when the key had gone idle).
const ADJUST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local d = tonumber(ARGV[1])
-- ARGV[2] (the burst) is no longer used: debt is not capped.
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new
if d < 0 then
  new = math.max(tat + d, math.min(now, tat))
else
  new = math.max(tat, now) + d
end
if new > now then
  local ttl = math.min(math.ceil((new - now) / 1000) + 1000, 9e15)
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', string.format('%.0f', ttl))
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// Takes a concurrency permit: at most ARGV[1] in flight; the counter expires after
/// ARGV[2] ms so permits held by a replica that died are not held forever.
const ACQUIRE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const RELEASE: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 1
";

struct RLimit {
    limit: Limit,
    interval_us: u64,
    burst_us: u64,
    policy: Arc<str>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    limits: Vec<RLimit>,
    concurrency: Option<(KeyBy, u32, Duration)>,
    max_output: u32,
    default_output: u32,
    decide: Script,
    adjust: Script,
    acquire: Script,
    release: Script,
    pending: AtomicUsize,
}

/// The rate limiter stage shared by all replicas through Redis (feature `redis`).
///
/// The same semantics as [`InMemoryRateLimiter`](super::InMemoryRateLimiter): several
/// limits per request, token budgets that reserve and settle, concurrency limits.
///
/// - Each decision for a key is one atomic Lua script that reads the Redis server's
///   clock (`TIME`), so replicas with skewed clocks agree.
/// - Every key is wrapped in a hash tag (`{...}`) and every script touches one key, so
///   it works on Redis Cluster. The limits of one request are checked in turn; when a
///   later limit refuses, the reservations already made are rolled back, so no limit
///   is ever over-admitted.
/// - Keys hold a SHA-256 of the key parts (principal, tenant, model, route), never the
///   raw ids, and expire once the key is idle.
/// - Settlement runs as a task on the Tokio runtime that made the reservation.
/// - When Redis is unreachable or slower than the response timeout, the stage fails:
///   the guard fails closed (`503`) unless the rate-limit stage is configured
///   fail-open, and the audit record says which.
///
/// Call the guard's `_async` methods: this stage returns futures.
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

impl Clone for RedisRateLimiter {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.inner.prefix)
            .field(
                "limits",
                &self
                    .inner
                    .limits
                    .iter()
                    .map(|l| &l.limit.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisRateLimiter`].
#[derive(Clone, Debug)]
pub struct RedisRateLimiterBuilder {
    limits: Vec<Limit>,
    concurrency: Option<(KeyBy, u32, Duration)>,
    prefix: String,
    max_output: u32,
    default_output: u32,
    timeout: Duration,
}

impl RedisRateLimiterBuilder {
    /// Adds a limit.
    pub fn limit(&mut self, limit: Limit) -> &mut Self {
        self.limits.push(limit);
        self
    }

    /// At most `n` requests in flight per key. A permit's counter expires after
    /// `lease` (so a replica that dies cannot hold permits forever).
    pub fn concurrency(&mut self, key: KeyBy, n: u32, lease: Duration) -> &mut Self {
        self.concurrency = Some((key, n, lease));
        self
    }

    /// The prefix of every key (default `ig`), to share one Redis between services.
    pub fn prefix(&mut self, prefix: impl Into<String>) -> &mut Self {
        self.prefix = prefix.into();
        self
    }

    /// The most output tokens a token budget reserves for one request (default 4,096).
    pub fn max_output_reservation(&mut self, n: u32) -> &mut Self {
        self.max_output = n;
        self
    }

    /// How long to wait for Redis before the stage fails (default 250 ms).
    pub fn timeout(&mut self, t: Duration) -> &mut Self {
        self.timeout = t;
        self
    }

    /// Connects to `url` (`redis://host:port/db`) and builds the limiter.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the configuration is invalid or Redis cannot be reached now.
    pub async fn connect(&self, url: &str) -> Result<RedisRateLimiter, Error> {
        if self.limits.is_empty() && self.concurrency.is_none() {
            return Err(Error::new(ErrorKind::Internal, "rate limiter: no limits"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::new(
                ErrorKind::Internal,
                "rate limiter: the prefix must be non-empty and have no braces",
            ));
        }
        let conn = connect(url, self.timeout).await?;
        let limits = self
            .limits
            .clone()
            .into_iter()
            .map(|limit| {
                let interval_us = u64::try_from(
                    limit.quota.period().as_micros() / u128::from(limit.quota.burst()),
                )
                .unwrap_or(u64::MAX)
                .max(1);
                RLimit {
                    burst_us: interval_us.saturating_mul(u64::from(limit.quota.burst())),
                    interval_us,
                    policy: limit.quota.policy(&limit.name).into(),
                    limit,
                }
            })
            .collect();
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix.clone(),
                limits,
                concurrency: self.concurrency,
                max_output: self.max_output,
                default_output: self.default_output,
                decide: Script::new(DECIDE),
                adjust: Script::new(ADJUST),
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                pending: AtomicUsize::new(0),
            }),
        })
    }
}

/// A stable key: the same on every replica (unlike a seeded hash).
fn redis_key(prefix: &str, name: &str, key: KeyBy, p: &Principal, r: &GuardRequest) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut feed = |s: &str| {
        ctx.update(&(s.len() as u64).to_le_bytes());
        ctx.update(s.as_bytes());
    };
    if key.contains(KeyBy::PRINCIPAL) {
        feed(p.qualified_id());
    }
    if key.contains(KeyBy::TENANT) {
        feed(p.tenant().unwrap_or(p.qualified_id()));
    }
    if key.contains(KeyBy::MODEL) {
        feed(r.model());
    }
    if key.contains(KeyBy::ROUTE) {
        feed(r.route());
    }
    let d = ctx.finish();
    format!(
        "{{{prefix}:{name}:{}}}",
        crate::codec::hex(&d.as_ref()[..16])
    )
}

struct Held {
    limit: usize,
    key: String,
    units: u64,
}

struct Settle {
    inner: Arc<Inner>,
    handle: Option<tokio::runtime::Handle>,
    held: SmallVec<[Held; 2]>,
    concurrency: Option<String>,
}

impl Settlement for Settle {
    fn settle(self: Box<Self>, usage: Option<Usage>) {
        let Self {
            inner,
            handle,
            held,
            concurrency,
        } = *self;
        let Some(handle) = handle else {
            return;
        };
        let actual = usage.map_or(0, |u| u.total());
        let adjustments: Vec<(String, i64, u64)> = held
            .into_iter()
            .filter(|h| inner.limits[h.limit].limit.unit == Unit::Tokens && actual != h.units)
            .map(|h| {
                let l = &inner.limits[h.limit];
                let delta = i64::try_from(actual).unwrap_or(i64::MAX)
                    - i64::try_from(h.units).unwrap_or(i64::MAX);
                let us = delta.saturating_mul(i64::try_from(l.interval_us).unwrap_or(i64::MAX));
                (h.key, us, l.burst_us)
            })
            .collect();
        if adjustments.is_empty() && concurrency.is_none() {
            return;
        }
        inner.pending.fetch_add(1, Ordering::SeqCst);
        handle.spawn(async move {
            let mut conn = inner.conn.clone();
            for (key, us, burst) in adjustments {
                let _: Result<i64, _> = inner
                    .adjust
                    .key(key)
                    .arg(us)
                    .arg(burst)
                    .invoke_async(&mut conn)
                    .await;
            }
            if let Some(key) = concurrency {
                let _: Result<i64, _> = inner.release.key(key).invoke_async(&mut conn).await;
            }
            inner.pending.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

impl RedisRateLimiter {
    /// A builder.
    pub fn builder() -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder {
            limits: Vec::new(),
            concurrency: None,
            prefix: "ig".into(),
            max_output: 4096,
            default_output: 1024,
            timeout: Duration::from_millis(250),
        }
    }

    /// Settlements still being written to Redis.
    pub fn pending_settlements(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// Waits until every settlement started so far is written.
    pub async fn settled(&self) {
        while self.pending_settlements() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn reservation(&self, request: &GuardRequest) -> u64 {
        super::reserve_tokens(request, self.inner.default_output, self.inner.max_output)
    }

    async fn rollback(&self, held: &[Held]) {
        let g = &*self.inner;
        let mut conn = g.conn.clone();
        for h in held {
            let l = &g.limits[h.limit];
            let us = i64::try_from(h.units.saturating_mul(l.interval_us)).unwrap_or(i64::MAX);
            let _: Result<i64, _> = g
                .adjust
                .key(&h.key)
                .arg(-us)
                .arg(l.burst_us)
                .invoke_async(&mut conn)
                .await;
        }
    }

    async fn decide(&self, p: &Principal, r: &GuardRequest) -> Result<Permit, StageError> {
        let g = &*self.inner;
        let mut conn = g.conn.clone();
        let tokens = self.reservation(r);
        let mut held: SmallVec<[Held; 2]> = SmallVec::new();
        let mut tightest = super::Tightest::default();
        for (i, l) in g.limits.iter().enumerate() {
            let key = redis_key(&g.prefix, &l.limit.name, l.limit.key, p, r);
            let units = match l.limit.unit {
                Unit::Requests(w) => u64::from(w),
                Unit::Tokens => tokens,
            };
            let burst = u64::from(l.limit.quota.burst());
            let answer: Result<(i64, i64, i64, i64), _> = g
                .decide
                .key(&key)
                .arg(l.interval_us)
                .arg(l.burst_us)
                .arg(units)
                .invoke_async(&mut conn)
                .await;
            let (allowed, ahead, base_ahead, wait) = match answer {
                Ok(a) => a,
                Err(e) => {
                    self.rollback(&held).await;
                    return Err(redis_err("rate limit decision")(e).into());
                }
            };
            let ahead = u64::try_from(ahead).unwrap_or(0);
            if allowed == 1 {
                let used = ahead.div_ceil(l.interval_us);
                let remaining = burst.saturating_sub(used);
                tightest.consider(burst, remaining, Duration::from_micros(ahead), &l.policy);
                held.push(Held {
                    limit: i,
                    key,
                    units,
                });
            } else {
                self.rollback(&held).await;
                let retry = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
                let reset = Duration::from_micros(u64::try_from(base_ahead).unwrap_or(0));
                return Err(Rejection::new(
                    crate::RejectReason::RateLimited,
                    format!("limit {}", l.limit.name),
                )
                .with_retry_after(retry)
                .with_rate_limit(RateLimitInfo::new(burst, 0, reset).with_policy(l.policy.clone()))
                .into());
            }
        }
        let mut concurrency = None;
        if let Some((key_by, max, lease)) = g.concurrency {
            let key = redis_key(&g.prefix, "concurrency", key_by, p, r);
            // `PEXPIRE` takes what fits its integers once added to the clock:
            // a lease of `Duration::MAX` failed every request.
            let lease_ms = u64::try_from(lease.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, 9_000_000_000_000_000);
            let answer: Result<i64, _> = g
                .acquire
                .key(&key)
                .arg(max)
                .arg(lease_ms)
                .invoke_async(&mut conn)
                .await;
            match answer {
                Ok(1) => concurrency = Some(key),
                Ok(_) => {
                    self.rollback(&held).await;
                    return Err(Rejection::new(
                        crate::RejectReason::RateLimited,
                        format!("concurrency limit of {max}"),
                    )
                    .with_retry_after(Duration::from_secs(1))
                    .into());
                }
                Err(e) => {
                    self.rollback(&held).await;
                    return Err(redis_err("concurrency permit")(e).into());
                }
            }
        }
        let reserved = held
            .iter()
            .filter(|h| g.limits[h.limit].limit.unit == Unit::Tokens)
            .map(|h| h.units)
            .max()
            .unwrap_or(0);
        Ok(tightest.attach(
            Permit::new()
                .with_reserved_tokens(reserved)
                .with_settlement(Settle {
                    inner: self.inner.clone(),
                    handle: tokio::runtime::Handle::try_current().ok(),
                    held,
                    concurrency,
                }),
        ))
    }
}

impl RateLimiter for RedisRateLimiter {
    fn acquire<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Permit, StageError>> {
        Step::future(self.decide(cx.principal(), cx.request()))
    }

    fn name(&self) -> &str {
        "redis_rate_limiter"
    }
}
