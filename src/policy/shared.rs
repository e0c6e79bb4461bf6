//! `[redis]`: state shared by replicas (feature `redis`).

use super::*;

/// `[redis]`: state shared by replicas (feature `redis`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(super) struct RedisSpec {
    #[serde(default)]
    pub(super) url_env: Option<String>,
    #[serde(default)]
    pub(super) url_file: Option<String>,
    #[serde(default)]
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
    #[serde(default = "yes")]
    pub(super) rate_limits: bool,
    #[serde(default = "yes")]
    pub(super) abuse: bool,
    #[serde(default = "yes")]
    pub(super) replay: bool,
    #[serde(default = "yes")]
    pub(super) revocations: bool,
    #[serde(default)]
    pub(super) revocation_refresh_ms: Option<u64>,
    #[serde(default)]
    pub(super) fail_open: Vec<SharedUse>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum SharedUse {
    RateLimits,
    Replay,
}

/// The connections a policy's `[redis]` section opened (feature `redis`).
#[cfg(feature = "redis")]
pub(super) struct Shared {
    pub(super) rate_limiter: Option<crate::rate_limit::RedisRateLimiter>,
    pub(super) abuse: Option<AbuseMonitor>,
    pub(super) replay: Option<crate::identity::RedisReplayCache>,
    pub(super) revocations: Option<crate::identity::RedisRevocations>,
}

impl Policy {
    #[cfg(feature = "redis")]
    pub(super) async fn connect_shared(&self, spec: &RedisSpec) -> Result<Shared, PolicyError> {
        let url = secret(
            "redis.url",
            spec.url_env.as_ref(),
            spec.url_file.as_deref().map(|f| self.path(f)),
        )?;
        let url = String::from_utf8(url)
            .map_err(|_| err("redis.url", "not UTF-8"))?
            .trim()
            .to_owned();
        let prefix = spec.prefix.clone().unwrap_or_else(|| "ig".to_owned());
        let timeout = Duration::from_millis(spec.timeout_ms.unwrap_or(250));
        let jwt = !self.identity.jwt.is_empty();
        let keys = !self.identity.api_keys.is_empty();
        let replay = if spec.replay && jwt {
            Some(
                crate::identity::RedisReplayCache::connect(&url, &prefix, timeout)
                    .await
                    .map_err(|e| caused("redis", e))?,
            )
        } else {
            None
        };
        let revocations = if spec.revocations && keys {
            Some(
                crate::identity::RedisRevocations::connect(
                    &url,
                    &prefix,
                    timeout,
                    Duration::from_millis(spec.revocation_refresh_ms.unwrap_or(1000)),
                )
                .await
                .map_err(|e| caused("redis", e))?,
            )
        } else {
            None
        };
        let rate_limiter =
            if spec.rate_limits && (!self.rate_limits.is_empty() || self.concurrency.is_some()) {
                let (limits, concurrency) = self.limits()?;
                let mut rl = crate::rate_limit::RedisRateLimiter::builder();
                rl.prefix(prefix.clone()).timeout(timeout);
                for l in limits {
                    rl.limit(l);
                }
                if let Some(n) = concurrency {
                    // A permit held by a replica that died is released after a minute.
                    rl.concurrency(KeyBy::PRINCIPAL, n, Duration::from_secs(60));
                }
                Some(rl.connect(&url).await.map_err(|e| caused("redis", e))?)
            } else {
                None
            };
        let abuse = match self.abuse_monitor()? {
            Some(m) if spec.abuse => {
                m.share_via_redis(&url, &format!("{prefix}:abuse"), Duration::from_secs(1))
                    .await
                    .map_err(|e| caused("redis", e))?;
                Some(m)
            }
            _ => None,
        };
        Ok(Shared {
            rate_limiter,
            abuse,
            replay,
            revocations,
        })
    }
}
