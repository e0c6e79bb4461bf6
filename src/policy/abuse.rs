//! `[abuse]`: the abuse monitor.

use super::*;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Abuse {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) shadow: bool,
}

impl Policy {
    /// `[abuse]`: the abuse monitor, shared through Redis when `[redis]` says so.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn abuse(
        &self,
        b: &mut GuardBuilder,
        shared: Option<&Shared>,
    ) -> Result<(), PolicyError> {
        #[cfg(feature = "redis")]
        let shared_abuse = shared.and_then(|s| s.abuse.clone());
        #[cfg(not(feature = "redis"))]
        let shared_abuse: Option<AbuseMonitor> = None;
        if let Some(m) = shared_abuse {
            b.abuse_monitor(m);
        } else if let Some(m) = self.abuse_monitor()? {
            b.abuse_monitor(m);
        }
        Ok(())
    }

    /// The `[abuse]` section's monitor, if enabled.
    pub(super) fn abuse_monitor(&self) -> Result<Option<AbuseMonitor>, PolicyError> {
        let Some(a) = self.abuse.as_ref().filter(|a| a.enabled) else {
            return Ok(None);
        };
        AbuseMonitor::builder()
            .shadow(a.shadow)
            .build()
            .map(Some)
            .map_err(|e| caused("abuse", e))
    }
}
