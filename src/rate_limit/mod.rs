//! Rate limits, token budgets and concurrency limits (OWASP LLM10, unbounded
//! consumption).
//!
//! [`InMemoryRateLimiter`] enforces several [`Limit`]s per request, each keyed by any
//! combination of principal, tenant, model and route ([`KeyBy`]):
//!
//! - **Request limits** count requests (optionally weighted).
//! - **Token budgets** reserve tokens at admission (the input estimate plus the
//!   request's maximum output tokens, capped by policy) and settle after the call:
//!   unused tokens are refunded, an overrun is carried as debt into the next
//!   decisions, a failed call (no output) is refunded whole, and an aborted stream is
//!   charged what was streamed. Reservations are atomic, so concurrent requests never
//!   overshoot a budget.
//! - **Concurrency limits** allow at most N requests in flight per key; the permit is
//!   released when the admission ends, on every path including drop.
//!
//! A rejection is `429` with `Retry-After` (seconds, rounded up) and the limit, what
//! remains and when it resets, for `x-ratelimit-*` and IETF `RateLimit` headers.
//!
//! Every limit is a [`KeyedGcra`]: one atomic per key, no background thread, bounded
//! memory. Time comes from a [`Clock`]; tests drive a [`ManualClock`].
//!
//! With the `redis` feature, `RedisRateLimiter` enforces the same limits for all
//! replicas of a service through Redis.
//!
//! ```
//! use std::time::Duration;
//! use inference_guard::rate_limit::{InMemoryRateLimiter, KeyBy, Limit, Quota};
//!
//! let limiter = InMemoryRateLimiter::builder()
//!     .limit(Limit::requests("requests-per-principal", Quota::per_minute(60)).key_by(KeyBy::PRINCIPAL))
//!     .limit(Limit::requests("requests-per-tenant", Quota::per_minute(1000)).key_by(KeyBy::TENANT))
//!     .limit(Limit::tokens("tokens-per-tenant", Quota::per_minute(200_000)).key_by(KeyBy::TENANT))
//!     .concurrency(KeyBy::PRINCIPAL, 8)
//!     .max_output_reservation(4096)
//!     .build()?;
//! # let _ = limiter;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod gcra;
#[cfg(feature = "redis")]
pub(crate) mod shared;

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use gcra::{Decision, KeyedGcra, TableFull};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use shared::{RedisRateLimiter, RedisRateLimiterBuilder};

use smallvec::SmallVec;

pub use crate::clock::{Clock, ManualClock, SystemClock};
use crate::decision::{RateLimitInfo, Rejection};
use crate::error::{BuildError, Error, ErrorKind, StageError};
use crate::principal::Principal;
use crate::request::GuardRequest;
use crate::response::Usage;
use crate::stage::{Permit, RateLimiter, Settlement, StageContext};
use crate::step::Step;

/// A rate: `burst` units per `period`, refilled evenly.
///
/// ```
/// use std::time::Duration;
/// use inference_guard::rate_limit::Quota;
/// let q = Quota::per_minute(60);
/// assert_eq!(q.burst(), 60);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(Quota::per(Duration::from_secs(10), 5).burst(), 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    burst: u32,
    period: Duration,
}

impl Quota {
    /// `n` units per second (at least 1).
    pub const fn per_second(n: u32) -> Self {
        Self::per(Duration::from_secs(1), n)
    }

    /// `n` units per minute (at least 1).
    pub const fn per_minute(n: u32) -> Self {
        Self::per(Duration::from_secs(60), n)
    }

    /// `n` units per hour (at least 1).
    pub const fn per_hour(n: u32) -> Self {
        Self::per(Duration::from_secs(3600), n)
    }

    /// `n` units per `period` (at least 1 unit and 1 µs).
    pub const fn per(period: Duration, n: u32) -> Self {
        let n = if n == 0 { 1 } else { n };
        let period = if period.as_nanos() < 1000 {
            Duration::from_micros(1)
        } else {
            period
        };
        Self { burst: n, period }
    }

    /// The burst (and the units per period).
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    fn interval_ns(&self) -> u64 {
        let ns = self.period.as_nanos() / u128::from(self.burst);
        u64::try_from(ns).unwrap_or(u64::MAX).max(1)
    }

    fn policy(&self, name: &str) -> String {
        format!(
            "\"{name}\";q={};w={}",
            self.burst,
            self.period.as_secs().max(1)
        )
    }
}

/// Which parts of a request key a limit: any combination of principal, tenant, model
/// and route.
///
/// ```
/// use inference_guard::rate_limit::KeyBy;
/// let k = KeyBy::TENANT | KeyBy::MODEL;
/// assert!(k.contains(KeyBy::MODEL));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyBy(u8);

impl KeyBy {
    /// One key for everyone.
    pub const GLOBAL: Self = Self(0);
    /// The principal's id.
    pub const PRINCIPAL: Self = Self(1);
    /// The principal's tenant (the principal's id when it has no tenant).
    pub const TENANT: Self = Self(2);
    /// The model asked for.
    pub const MODEL: Self = Self(4);
    /// The route.
    pub const ROUTE: Self = Self(8);

    /// Whether `other`'s parts are all in this key.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// In a policy file (feature `policy`): a list of parts, `["principal", "model"]`;
/// `[]` for one key for everyone.
#[cfg(feature = "policy")]
impl<'de> serde::Deserialize<'de> for KeyBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parts = <Vec<String>>::deserialize(d)?;
        parts.iter().try_fold(Self::GLOBAL, |key, part| {
            let p = match part.as_str() {
                "principal" => Self::PRINCIPAL,
                "tenant" => Self::TENANT,
                "model" => Self::MODEL,
                "route" => Self::ROUTE,
                other => {
                    return Err(serde::de::Error::unknown_variant(
                        other,
                        &["principal", "tenant", "model", "route"],
                    ));
                }
            };
            Ok(key | p)
        })
    }
}

impl std::ops::BitOr for KeyBy {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Requests(u32),
    Tokens,
}

/// One limit: a name, a quota, what it counts, and what keys it.
///
/// ```
/// use inference_guard::rate_limit::{KeyBy, Limit, Quota};
/// let l = Limit::requests("gpt4-per-tenant", Quota::per_minute(100))
///     .key_by(KeyBy::TENANT | KeyBy::MODEL)
///     .weight(2);
/// # let _ = l;
/// ```
#[derive(Clone, Debug)]
pub struct Limit {
    name: String,
    quota: Quota,
    unit: Unit,
    key: KeyBy,
}

impl Limit {
    /// Counts requests (cost 1 each unless [`weight`](Self::weight) is set), keyed by
    /// principal unless [`key_by`](Self::key_by) says otherwise.
    pub fn requests(name: impl Into<String>, quota: Quota) -> Self {
        Self {
            name: name.into(),
            quota,
            unit: Unit::Requests(1),
            key: KeyBy::PRINCIPAL,
        }
    }

    /// Counts tokens: reserves the estimate at admission and settles with the real
    /// usage after the call.
    pub fn tokens(name: impl Into<String>, quota: Quota) -> Self {
        Self {
            name: name.into(),
            quota,
            unit: Unit::Tokens,
            key: KeyBy::PRINCIPAL,
        }
    }

    /// What keys the limit.
    #[must_use]
    pub fn key_by(mut self, key: KeyBy) -> Self {
        self.key = key;
        self
    }

    /// The cost of one request (request limits only; default 1).
    #[must_use]
    pub fn weight(mut self, w: u32) -> Self {
        if let Unit::Requests(_) = self.unit {
            self.unit = Unit::Requests(w.max(1));
        }
        self
    }
}

/// The tokens a request reserves in a token budget: its input estimate plus its
/// maximum output (`default_output` when it names none), capped at `max_output`,
/// once per choice it asks for.
pub(crate) fn reserve_tokens(request: &GuardRequest, default_output: u32, max_output: u32) -> u64 {
    let out = request
        .max_output_tokens()
        .unwrap_or(default_output)
        .min(max_output);
    request.estimated_input_tokens() + u64::from(out) * u64::from(request.choices())
}

/// The rate-limit state of the limit with the least room left (by share of its
/// burst), reported with the permit for response headers.
#[derive(Default)]
pub(crate) struct Tightest(Option<(u64, RateLimitInfo)>);

impl Tightest {
    pub(crate) fn consider(
        &mut self,
        burst: u64,
        remaining: u64,
        reset: Duration,
        policy: &Arc<str>,
    ) {
        let ratio = remaining.saturating_mul(1000) / burst.max(1);
        if self.0.as_ref().is_none_or(|(r, _)| ratio < *r) {
            self.0 = Some((
                ratio,
                RateLimitInfo::new(burst, remaining, reset).with_policy(policy.clone()),
            ));
        }
    }

    pub(crate) fn attach(self, permit: Permit) -> Permit {
        match self.0 {
            Some((_, info)) => permit.with_info(info),
            None => permit,
        }
    }
}

/// Requests in flight per concurrency key.
type InFlight = Mutex<std::collections::HashMap<u64, u32>>;

struct LimitState {
    limit: Limit,
    table: KeyedGcra,
    policy: Arc<str>,
}

struct Inner {
    limits: Vec<LimitState>,
    concurrency: Option<(KeyBy, u32, InFlight)>,
    concurrency_hasher: std::collections::hash_map::RandomState,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    max_output: u32,
    default_output: u32,
}

/// The in-memory rate limiter stage; see the [module docs](self).
#[derive(Clone)]
pub struct InMemoryRateLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for InMemoryRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryRateLimiter")
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

/// Builds an [`InMemoryRateLimiter`].
#[derive(Clone)]
pub struct InMemoryRateLimiterBuilder {
    limits: Vec<Limit>,
    concurrency: Option<(KeyBy, u32)>,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    max_output: u32,
    default_output: u32,
}

impl fmt::Debug for InMemoryRateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryRateLimiterBuilder")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl InMemoryRateLimiterBuilder {
    /// Adds a limit. A request must fit every limit.
    pub fn limit(&mut self, limit: Limit) -> &mut Self {
        self.limits.push(limit);
        self
    }

    /// At most `n` requests in flight per key.
    pub fn concurrency(&mut self, key: KeyBy, n: u32) -> &mut Self {
        self.concurrency = Some((key, n));
        self
    }

    /// Keys tracked per limit (default 1,000,000). When a limit's table is full of
    /// active keys, a request with a new key fails closed (`503`).
    pub fn max_keys(&mut self, n: usize) -> &mut Self {
        self.max_keys = n.max(1);
        self
    }

    /// The most output tokens a token budget reserves for one request, whatever the
    /// request asks for (default 4,096).
    pub fn max_output_reservation(&mut self, n: u32) -> &mut Self {
        self.max_output = n;
        self
    }

    /// The output tokens reserved for a request that does not say (default 1,024).
    pub fn default_output_reservation(&mut self, n: u32) -> &mut Self {
        self.default_output = n;
        self
    }

    /// The clock (default: the system's monotonic clock).
    pub fn clock(&mut self, clock: impl Clock) -> &mut Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the limiter.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if there is no limit and no concurrency limit, a limit name is
    /// empty or repeated, or a concurrency limit is zero.
    pub fn build(&self) -> Result<InMemoryRateLimiter, BuildError> {
        if self.limits.is_empty() && self.concurrency.is_none() {
            return Err(BuildError::invalid("rate_limit.limits", "no limits"));
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.limits {
            if l.name.is_empty() || !names.insert(l.name.as_str()) {
                return Err(BuildError::invalid(
                    "rate_limit.limits.name",
                    format!("limit names must be unique and non-empty ({:?})", l.name),
                ));
            }
            if l.name.contains('"') || l.name.contains('\\') {
                return Err(BuildError::invalid(
                    "rate_limit.limits.name",
                    "limit names may not contain quotes or backslashes",
                ));
            }
        }
        if self.concurrency.is_some_and(|(_, n)| n == 0) {
            return Err(BuildError::invalid(
                "rate_limit.concurrency",
                "a concurrency limit of 0 admits nothing",
            ));
        }
        Ok(InMemoryRateLimiter {
            inner: Arc::new(Inner {
                limits: self
                    .limits
                    .clone()
                    .into_iter()
                    .map(|limit| LimitState {
                        table: KeyedGcra::new(limit.quota, self.max_keys),
                        policy: limit.quota.policy(&limit.name).into(),
                        limit,
                    })
                    .collect(),
                concurrency: self
                    .concurrency
                    .map(|(k, n)| (k, n, Mutex::new(std::collections::HashMap::new()))),
                concurrency_hasher: std::collections::hash_map::RandomState::new(),
                max_keys: self.max_keys,
                clock: self.clock.clone(),
                max_output: self.max_output,
                default_output: self.default_output,
            }),
        })
    }
}

fn key_hash(
    hasher: &impl BuildHasher,
    salt: usize,
    key: KeyBy,
    p: &Principal,
    r: &GuardRequest,
) -> u64 {
    let mut h = hasher.build_hasher();
    salt.hash(&mut h);
    if key.contains(KeyBy::PRINCIPAL) {
        p.qualified_id().hash(&mut h);
    }
    if key.contains(KeyBy::TENANT) {
        p.tenant().unwrap_or(p.qualified_id()).hash(&mut h);
    }
    if key.contains(KeyBy::MODEL) {
        r.model().hash(&mut h);
    }
    if key.contains(KeyBy::ROUTE) {
        r.route().hash(&mut h);
    }
    h.finish()
}

/// A reservation in one limit, to settle.
#[derive(Clone, Copy)]
struct Held {
    limit: usize,
    key: u64,
    units: u64,
    tokens: bool,
}

struct Settle {
    inner: Arc<Inner>,
    held: SmallVec<[Held; 4]>,
    concurrency_key: Option<u64>,
}

impl Settlement for Settle {
    fn settle(self: Box<Self>, usage: Option<Usage>) {
        let now = self.inner.clock.now();
        for h in &self.held {
            if !h.tokens {
                continue; // request counts stand, even for failed calls
            }
            let actual = usage.map_or(0, |u| u.total());
            let table = &self.inner.limits[h.limit].table;
            if actual < h.units {
                table.adjust_hashed(h.key, h.units - actual, 0, now);
            } else if actual > h.units {
                table.adjust_hashed(h.key, 0, actual - h.units, now);
            }
        }
        if let (Some(key), Some((_, _, counts))) = (self.concurrency_key, &self.inner.concurrency) {
            release(counts, key);
        }
    }
}

fn release(counts: &InFlight, key: u64) {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = c.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            c.remove(&key);
        }
    }
}

impl InMemoryRateLimiter {
    /// A builder.
    pub fn builder() -> InMemoryRateLimiterBuilder {
        InMemoryRateLimiterBuilder {
            limits: Vec::new(),
            concurrency: None,
            max_keys: 1_000_000,
            clock: Arc::new(SystemClock::default()),
            max_output: 4096,
            default_output: 1024,
        }
    }

    /// A limiter with one request limit per principal: the common case.
    ///
    /// ```
    /// use inference_guard::rate_limit::{InMemoryRateLimiter, Quota};
    /// let limiter = InMemoryRateLimiter::per_principal(Quota::per_minute(60));
    /// # let _ = limiter;
    /// ```
    pub fn per_principal(quota: Quota) -> Self {
        Self::builder()
            .limit(Limit::requests("requests", quota).key_by(KeyBy::PRINCIPAL))
            .build()
            .unwrap_or_else(|_| unreachable!("one named limit always builds"))
    }

    /// The tokens a request reserves: its input estimate plus its maximum output
    /// (the default when it names none), capped by policy.
    pub fn reservation(&self, request: &GuardRequest) -> u64 {
        reserve_tokens(request, self.inner.default_output, self.inner.max_output)
    }

    /// Keys tracked by each limit, by name.
    pub fn keys(&self) -> Vec<(&str, usize)> {
        self.inner
            .limits
            .iter()
            .map(|l| (l.limit.name.as_str(), l.table.len()))
            .collect()
    }

    /// Memory held by the key tables of all limits, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.inner
            .limits
            .iter()
            .map(|l| l.table.memory_bytes())
            .sum()
    }

    /// Forgets idle keys in every limit now (they are also forgotten as tables fill).
    pub fn retain_recent(&self) {
        let now = self.inner.clock.now();
        for l in &self.inner.limits {
            l.table.retain_recent(now);
        }
    }

    /// The number of requests in flight for the concurrency limit, over all keys.
    pub fn in_flight(&self) -> u64 {
        self.inner.concurrency.as_ref().map_or(0, |(_, _, c)| {
            c.lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|&n| u64::from(n))
                .sum()
        })
    }

    fn decide(&self, p: &Principal, r: &GuardRequest) -> Result<Permit, StageError> {
        let g = &*self.inner;
        let now = g.clock.now();
        let mut held: SmallVec<[Held; 4]> = SmallVec::new();
        let mut tightest = Tightest::default();
        let tokens = self.reservation(r);
        let rollback = |held: &[Held]| {
            for h in held {
                g.limits[h.limit]
                    .table
                    .adjust_hashed(h.key, h.units, 0, now);
            }
        };
        for (i, l) in g.limits.iter().enumerate() {
            let key = key_hash(l.table.hasher(), i, l.limit.key, p, r);
            let (units, is_tokens) = match l.limit.unit {
                Unit::Requests(w) => (u64::from(w), false),
                Unit::Tokens => (tokens, true),
            };
            let burst = u64::from(l.limit.quota.burst());
            match l.table.check_hashed(key, units, now) {
                Ok(d) if d.is_allowed() => {
                    let (remaining, reset) = (d.remaining(), d.reset());
                    held.push(Held {
                        limit: i,
                        key,
                        units,
                        tokens: is_tokens,
                    });
                    tightest.consider(burst, remaining, reset, &l.policy);
                }
                Ok(d) => {
                    let (retry_after, reset) = (d.retry_after().unwrap_or_default(), d.reset());
                    rollback(&held);
                    let detail = if units > burst {
                        format!(
                            "limit {}: cost {units} exceeds the whole quota of {burst}",
                            l.limit.name
                        )
                    } else {
                        format!("limit {}", l.limit.name)
                    };
                    return Err(Rejection::new(crate::RejectReason::RateLimited, detail)
                        .with_retry_after(retry_after)
                        .with_rate_limit(
                            RateLimitInfo::new(burst, 0, reset).with_policy(l.policy.clone()),
                        )
                        .into());
                }
                Err(TableFull::Full) => {
                    rollback(&held);
                    return Err(Error::new(
                        ErrorKind::Backend,
                        format!(
                            "rate limit {}: key table full ({} keys)",
                            l.limit.name, g.max_keys
                        ),
                    )
                    .into());
                }
            }
        }
        let mut concurrency_key = None;
        if let Some((key_by, max, counts)) = &g.concurrency {
            let key = key_hash(&g.concurrency_hasher, usize::MAX, *key_by, p, r);
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = c.entry(key).or_insert(0);
            if *n >= *max {
                drop(c);
                rollback(&held);
                return Err(Rejection::new(
                    crate::RejectReason::RateLimited,
                    format!("concurrency limit of {max}"),
                )
                .with_retry_after(Duration::from_secs(1))
                .into());
            }
            *n += 1;
            concurrency_key = Some(key);
        }
        let reserved: u64 = held
            .iter()
            .filter(|h| h.tokens)
            .map(|h| h.units)
            .max()
            .unwrap_or(0);
        Ok(tightest.attach(
            Permit::new()
                .with_reserved_tokens(reserved)
                .with_settlement(Settle {
                    inner: self.inner.clone(),
                    held,
                    concurrency_key,
                }),
        ))
    }
}

impl RateLimiter for InMemoryRateLimiter {
    fn acquire<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Permit, StageError>> {
        Step::ready(self.decide(cx.principal(), cx.request()))
    }

    fn name(&self) -> &str {
        "in_memory_rate_limiter"
    }
}
