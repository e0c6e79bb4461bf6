//! `[[rate_limits]]`, `[concurrency]` and `[limits]`: quotas, budgets and sizes.

use super::*;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum UnitSpec {
    Requests,
    Tokens,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Per {
    Second,
    Minute,
    Hour,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitSpec {
    pub(super) name: String,
    pub(super) unit: UnitSpec,
    pub(super) amount: u32,
    pub(super) per: Per,
    #[serde(default = "global")]
    pub(super) key_by: KeyBy,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Concurrency {
    pub(super) per_principal: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Limits {
    pub(super) max_message_bytes: Option<usize>,
    pub(super) max_request_bytes: Option<usize>,
    pub(super) max_messages: Option<usize>,
    pub(super) max_output_bytes: Option<usize>,
}

impl Policy {
    /// `[[rate_limits]]` and `[concurrency]`: in memory, or on the shared store.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn rate_limits(
        &self,
        b: &mut GuardBuilder,
        shared: Option<&Shared>,
    ) -> Result<(), PolicyError> {
        if !self.rate_limits.is_empty() || self.concurrency.is_some() {
            let (limits, concurrency) = self.limits()?;
            #[cfg(feature = "redis")]
            if let Some(shared_limiter) = shared.and_then(|s| s.rate_limiter.clone()) {
                // The same limits on the shared store (connected by build_async).
                b.rate_limiter(shared_limiter);
                if self
                    .redis
                    .as_ref()
                    .is_some_and(|r| r.fail_open.contains(&SharedUse::RateLimits))
                {
                    b.fail_open(crate::FailOpenStage::RateLimit);
                }
            }
            #[cfg(feature = "redis")]
            let local = shared.and_then(|s| s.rate_limiter.as_ref()).is_none();
            #[cfg(not(feature = "redis"))]
            let local = true;
            if local {
                let mut rl = InMemoryRateLimiter::builder();
                for limit in limits {
                    rl.limit(limit);
                }
                if let Some(n) = concurrency {
                    rl.concurrency(KeyBy::PRINCIPAL, n);
                }
                b.rate_limiter(rl.build().map_err(|e| caused("rate_limits", e))?);
            }
        }
        Ok(())
    }

    /// `[limits]`: request size limits.
    pub(super) fn request_limits(&self, b: &mut GuardBuilder) {
        if let Some(l) = &self.limits {
            let mut limits = RequestLimits::default();
            if let Some(n) = l.max_message_bytes {
                limits = limits.max_message_bytes(n);
            }
            if let Some(n) = l.max_request_bytes {
                limits = limits.max_request_bytes(n);
            }
            if let Some(n) = l.max_messages {
                limits = limits.max_messages(n);
            }
            if let Some(n) = l.max_output_bytes {
                limits = limits.max_output_bytes(n);
            }
            b.limits(limits);
        }
    }

    /// The `[[rate_limits]]` and the per-principal concurrency.
    pub(super) fn limits(&self) -> Result<(Vec<Limit>, Option<u32>), PolicyError> {
        let mut out = Vec::new();
        for (i, r) in self.rate_limits.iter().enumerate() {
            if r.amount == 0 {
                return Err(err(
                    &format!("rate_limits[{i}].amount"),
                    "must be at least 1",
                ));
            }
            let quota = match r.per {
                Per::Second => Quota::per_second(r.amount),
                Per::Minute => Quota::per_minute(r.amount),
                Per::Hour => Quota::per_hour(r.amount),
            };
            let key = r.key_by;
            let limit = match r.unit {
                UnitSpec::Requests => Limit::requests(r.name.clone(), quota),
                UnitSpec::Tokens => Limit::tokens(r.name.clone(), quota),
            };
            out.push(limit.key_by(key));
        }
        Ok((out, self.concurrency.as_ref().map(|c| c.per_principal)))
    }
}

fn global() -> KeyBy {
    KeyBy::GLOBAL
}
