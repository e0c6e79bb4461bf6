//! Security state shared by all replicas through Redis (feature `redis`): the JWT
//! replay cache and API-key revocation.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::ConnectionManager;

use super::api_key::{ApiKeyRecord, ApiKeyStore};
use super::jwt::ReplayStore;
use crate::error::{Error, ErrorKind};
use crate::step::Step;
use crate::store::{connect, redis_err};

fn check_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(Error::new(
            ErrorKind::Internal,
            "the key prefix must be non-empty and have no braces",
        ));
    }
    Ok(())
}

/// The JWT replay cache shared by all replicas: a token's `jti` is recorded with one
/// `SET key 1 NX PX ttl` (one round trip, atomic), so the second use anywhere is
/// refused ([`JwtVerifierBuilder::shared_replay_cache`](super::JwtVerifierBuilder::shared_replay_cache)).
///
/// Keys are `{prefix}:jti:{sha256(issuer, jti)}` and expire with the token (plus the
/// leeway). When Redis is unreachable or slower than the timeout the check fails and
/// the identity stage fails closed (`503`), unless the verifier is
/// [`replay_fail_open`](super::JwtVerifierBuilder::replay_fail_open), which then
/// checks this replica's own cache.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use inference_guard::identity::{JwtVerifier, RedisReplayCache};
/// let replay = RedisReplayCache::connect("redis://127.0.0.1:6379", "ig", Duration::from_millis(250)).await?;
/// let mut verifier = JwtVerifier::builder();
/// verifier.shared_replay_cache(replay);
/// # let _ = verifier;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisReplayCache {
    conn: ConnectionManager,
    prefix: String,
}

impl fmt::Debug for RedisReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisReplayCache {
    /// Connects to `url` (`redis://host:port/db`); keys start with `prefix`; a call
    /// that takes longer than `timeout` fails.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the prefix is invalid or Redis cannot be reached now.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, Error> {
        check_prefix(prefix)?;
        Ok(Self {
            conn: connect(url, timeout).await?,
            prefix: prefix.to_owned(),
        })
    }
}

impl ReplayStore for RedisReplayCache {
    fn first_use<'a>(
        &'a self,
        id: &'a [u8; 32],
        until: SystemTime,
    ) -> Step<'a, Result<bool, Error>> {
        let ttl_ms = until.duration_since(SystemTime::now()).map_or(1, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let key = format!("{}:jti:{}", self.prefix, crate::codec::hex(id));
        let mut conn = self.conn.clone();
        Step::future(async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("jti replay cache"))?;
            Ok(set.is_some())
        })
    }

    fn name(&self) -> &str {
        "redis_replay_cache"
    }
}

/// API-key revocations shared by all replicas: the revoked key ids are a Redis set
/// (`{prefix}:revoked_keys`); [`revoke`](Self::revoke) adds to it, and each replica
/// reads it again when its copy is older than the refresh interval, before it
/// decides.
///
/// - **Bounded lag**: a key revoked on one replica is refused by every replica from
///   at most `refresh` later (default 1 s); on the replica that revoked it, at once.
///   A request that finds the copy stale waits for one round trip.
/// - **Fail closed**: when the set cannot be read and the copy is stale, the lookup
///   fails and the identity stage answers `503` (a revoked key is never accepted
///   because Redis is down).
/// - Wrap the key store with [`checked`](Self::checked): the records come from the
///   store (a database, the policy file), the revocations from Redis.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use inference_guard::identity::{ApiKeyFormat, ApiKeys, InMemoryKeyStore, RedisRevocations};
/// let revocations = RedisRevocations::connect("redis://127.0.0.1:6379", "ig", Duration::from_millis(250), Duration::from_secs(1)).await?;
/// let keys = ApiKeys::new(&[7u8; 32], ApiKeyFormat::new("igk")?, revocations.checked(InMemoryKeyStore::new()))?;
/// revocations.revoke("key_reporting_01").await?;
/// # let _ = keys;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRevocations {
    inner: Arc<Revocations>,
}

struct Revocations {
    conn: ConnectionManager,
    key: String,
    refresh: Duration,
    state: Mutex<(HashSet<String>, Option<Instant>)>,
}

impl fmt::Debug for RedisRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRevocations")
            .field("key", &self.inner.key)
            .field("refresh", &self.inner.refresh)
            .finish_non_exhaustive()
    }
}

impl RedisRevocations {
    /// Connects to `url`; the set is `{prefix}:revoked_keys`; a call that takes
    /// longer than `timeout` fails; each replica reads the set again when its copy
    /// is older than `refresh`.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the prefix is invalid or Redis cannot be reached now.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        refresh: Duration,
    ) -> Result<Self, Error> {
        check_prefix(prefix)?;
        Ok(Self {
            inner: Arc::new(Revocations {
                conn: connect(url, timeout).await?,
                key: format!("{prefix}:revoked_keys"),
                refresh,
                state: Mutex::new((HashSet::new(), None)),
            }),
        })
    }

    /// Revokes the key with id `key_id` on every replica (at once on this one).
    ///
    /// # Errors
    ///
    /// An [`Error`] if Redis cannot be written.
    pub async fn revoke(&self, key_id: &str) -> Result<(), Error> {
        let mut conn = self.inner.conn.clone();
        let _: i64 = redis::cmd("SADD")
            .arg(&self.inner.key)
            .arg(key_id)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("revoke key"))?;
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert(key_id.to_owned());
        Ok(())
    }

    /// Whether `key_id` is revoked: from this replica's copy when it is fresh,
    /// otherwise after reading the set again (one round trip).
    ///
    /// # Errors
    ///
    /// An [`Error`] when the copy is stale and the set cannot be read.
    pub async fn is_revoked(&self, key_id: &str) -> Result<bool, Error> {
        if let Some(answer) = self.fresh(key_id) {
            return Ok(answer);
        }
        let mut conn = self.inner.conn.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.inner.key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("read revoked keys"))?;
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = members.into_iter().collect();
        st.1 = Some(Instant::now());
        Ok(st.0.contains(key_id))
    }

    /// The answer from this replica's copy, if it is fresh.
    fn fresh(&self, key_id: &str) -> Option<bool> {
        let st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let fetched = st.1?;
        (fetched.elapsed() < self.inner.refresh).then(|| st.0.contains(key_id))
    }

    /// `store` with these revocations applied to the records it finds.
    pub fn checked<S: ApiKeyStore>(&self, store: S) -> RevocationCheckedStore<S> {
        RevocationCheckedStore {
            store,
            revocations: self.clone(),
        }
    }
}

/// An [`ApiKeyStore`] whose records are marked revoked when [`RedisRevocations`]
/// says so; see [`RedisRevocations::checked`].
#[derive(Clone, Debug)]
pub struct RevocationCheckedStore<S> {
    store: S,
    revocations: RedisRevocations,
}

impl<S> RevocationCheckedStore<S> {
    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S: ApiKeyStore> ApiKeyStore for RevocationCheckedStore<S> {
    fn find<'a>(
        &'a self,
        digest: &'a [u8; 32],
    ) -> Step<'a, Result<Option<Arc<ApiKeyRecord>>, Error>> {
        let mark = |rec: Arc<ApiKeyRecord>, revoked: bool| {
            if revoked && !rec.is_revoked() {
                Arc::new(rec.to_revoked())
            } else {
                rec
            }
        };
        let found = self.store.find(digest);
        // The fast path: the store answers now and the copy is fresh.
        let found = match found.into_ready() {
            Ok(Ok(Some(rec))) => match self.revocations.fresh(rec.id()) {
                Some(revoked) => return Step::ready(Ok(Some(mark(rec, revoked)))),
                None => Step::ready(Ok(Some(rec))),
            },
            Ok(other) => return Step::ready(other),
            Err(pending) => pending,
        };
        Step::future(async move {
            let Some(rec) = found.await? else {
                return Ok(None);
            };
            let revoked = self.revocations.is_revoked(rec.id()).await?;
            Ok(Some(mark(rec, revoked)))
        })
    }
}
