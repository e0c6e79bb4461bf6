//! An inventory of machine identities: who calls, with which credentials, from
//! where, using what, and which of them are risky (OWASP NHI1, NHI5, NHI7, NHI9,
//! NHI10).
//!
//! A guard built with [`GuardBuilder::inventory`](crate::GuardBuilder::inventory)
//! keeps bounded usage facts per principal: first and last seen, credential kinds and
//! key ids used (with the credential's age at use), models and tools used, denials by
//! reason, client addresses and user agents seen (counted, bounded). Adapters pass
//! the user agent as request metadata `user_agent`.
//!
//! [`Inventory::report`] flags, by an [`InventoryPolicy`]:
//!
//! - **unused keys**: API keys not used for a number of days, or never (offboarding);
//! - **long-lived keys**: keys older than their rotation policy;
//! - **unused grants**: models and tools granted to a principal that it never used
//!   (over-privilege);
//! - **credential reuse**: one key used from many addresses or user agents;
//! - **human use**: a machine credential used from a browser or an interactive
//!   client.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use inference_guard::inventory::{Inventory, InventoryPolicy, FlagKind};
//! use inference_guard::*;
//!
//! let inventory = Inventory::new();
//! let mut b = InferenceGuard::builder();
//! b.identity(verifier_fn(|_req| Ok(Principal::builder("svc-report", CredentialKind::ApiKey).key_id("k1").build())))
//!     .authorize_all().audit_sink(NoopSink).inventory(inventory.clone());
//! let guard = b.build()?;
//! let req = GuardRequest::new("m")
//!     .with_credentials(Credentials::from_api_key("k"))
//!     .with_metadata("user_agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0");
//! guard.check_request(req)?.check_response(GuardResponse::new("ok"))?;
//!
//! let report = inventory.report(&InventoryPolicy::default(), SystemTime::now());
//! assert_eq!(report.principals()[0].requests(), 1);
//! assert!(report.flags().iter().any(|f| f.kind() == FlagKind::HumanUse));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::codec::glob_match;
use crate::decision::Rejection;
use crate::principal::Principal;
use crate::record::Outcome;
use crate::request::GuardRequest;
use crate::stage::Authorizer;

/// A bounded map of counts: at most `max` keys; the rest are counted in `others`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    counts: BTreeMap<String, u64>,
    others: u64,
}

impl Counts {
    fn add(&mut self, key: &str, max: usize) {
        // Caller-supplied strings (models, tools, user agents) are bounded.
        let key = crate::request::cap(key, crate::request::MAX_RECORDED_BYTES);
        if let Some(n) = self.counts.get_mut(key) {
            *n += 1;
        } else if self.counts.len() < max {
            self.counts.insert(key.to_owned(), 1);
        } else {
            self.others += 1;
        }
    }

    /// The counted keys.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// Occurrences of keys beyond the bound.
    pub fn others(&self) -> u64 {
        self.others
    }

    /// Distinct keys seen (at least; more if `others` is not zero).
    pub fn distinct(&self) -> usize {
        self.counts.len() + usize::from(self.others > 0)
    }
}

/// What is known of one key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyUse {
    #[serde(serialize_with = "unix")]
    first_seen: SystemTime,
    #[serde(serialize_with = "unix")]
    last_seen: SystemTime,
    uses: u64,
    /// Seconds between the credential's creation and its last use, when known.
    age_at_last_use_secs: Option<u64>,
    #[serde(skip)]
    created: Option<SystemTime>,
    addresses: Counts,
    user_agents: Counts,
}

impl KeyUse {
    /// First use.
    pub fn first_seen(&self) -> SystemTime {
        self.first_seen
    }
    /// Last use.
    pub fn last_seen(&self) -> SystemTime {
        self.last_seen
    }
    /// Uses.
    pub fn uses(&self) -> u64 {
        self.uses
    }
    /// The credential's age at its last use, when the identity stage told its
    /// creation time (API keys: `credential_created`; JWTs: `iat`).
    pub fn age_at_last_use(&self) -> Option<Duration> {
        self.age_at_last_use_secs.map(Duration::from_secs)
    }
    /// Client addresses it was used from.
    pub fn addresses(&self) -> &Counts {
        &self.addresses
    }
    /// User agents it was used with.
    pub fn user_agents(&self) -> &Counts {
        &self.user_agents
    }
}

fn unix<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Usage facts of one principal.
#[derive(Clone, Debug, Serialize)]
pub struct PrincipalFacts {
    principal: String,
    namespace: String,
    tenant: Option<String>,
    #[serde(serialize_with = "unix")]
    first_seen: SystemTime,
    #[serde(serialize_with = "unix")]
    last_seen: SystemTime,
    requests: u64,
    credential_kinds: Counts,
    keys: BTreeMap<String, KeyUse>,
    models: Counts,
    tools: Counts,
    denials: Counts,
    addresses: Counts,
    user_agents: Counts,
    #[serde(skip)]
    principal_value: Option<Principal>,
}

impl PrincipalFacts {
    /// The principal's id.
    pub fn principal(&self) -> &str {
        &self.principal
    }
    /// The namespace of its id ([`Principal::namespace`]): facts are kept per
    /// namespace and id, so a token subject never shares an API key's facts.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// Its tenant.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
    /// First request.
    pub fn first_seen(&self) -> SystemTime {
        self.first_seen
    }
    /// Last request.
    pub fn last_seen(&self) -> SystemTime {
        self.last_seen
    }
    /// Requests seen.
    pub fn requests(&self) -> u64 {
        self.requests
    }
    /// Credential kinds used.
    pub fn credential_kinds(&self) -> &Counts {
        &self.credential_kinds
    }
    /// Keys used, by key id.
    pub fn keys(&self) -> &BTreeMap<String, KeyUse> {
        &self.keys
    }
    /// Models asked for.
    pub fn models(&self) -> &Counts {
        &self.models
    }
    /// Tools offered to the model in its requests.
    pub fn tools(&self) -> &Counts {
        &self.tools
    }
    /// Denials, by reason code.
    pub fn denials(&self) -> &Counts {
        &self.denials
    }
    /// Client addresses.
    pub fn addresses(&self) -> &Counts {
        &self.addresses
    }
    /// User agents.
    pub fn user_agents(&self) -> &Counts {
        &self.user_agents
    }
}

/// Principals are spread over this many independently locked maps, so requests of
/// different principals rarely wait for each other.
const SHARDS: usize = 32;

struct Inner {
    max_principals: usize,
    max_values: usize,
    shards: Box<[Mutex<HashMap<String, PrincipalFacts>>]>,
    hasher: std::collections::hash_map::RandomState,
    tracked: std::sync::atomic::AtomicUsize,
    dropped: std::sync::atomic::AtomicU64,
}

impl Inner {
    fn shard(
        &self,
        qualified_id: &str,
    ) -> std::sync::MutexGuard<'_, HashMap<String, PrincipalFacts>> {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(qualified_id) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bounded per-principal usage facts; see the [module docs](self). Cheap to clone;
/// clones share state.
#[derive(Clone)]
pub struct Inventory {
    inner: Arc<Inner>,
}

impl fmt::Debug for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inventory")
            .field("max_principals", &self.inner.max_principals)
            .field("max_values", &self.inner.max_values)
            .finish_non_exhaustive()
    }
}

impl Default for Inventory {
    fn default() -> Self {
        Self::new()
    }
}

impl Inventory {
    /// An inventory of up to 100,000 principals, each with up to 64 values per
    /// fact (addresses, models, ...).
    pub fn new() -> Self {
        Self::with_bounds(100_000, 64)
    }

    /// An inventory of up to `principals` principals and `values` values per fact.
    /// Principals beyond the bound are not tracked (counted in
    /// [`untracked`](Self::untracked)).
    pub fn with_bounds(principals: usize, values: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_principals: principals.max(1),
                max_values: values.max(1),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: std::collections::hash_map::RandomState::new(),
                tracked: std::sync::atomic::AtomicUsize::new(0),
                dropped: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Requests of principals that were not tracked because the inventory was full.
    pub fn untracked(&self) -> u64 {
        self.inner
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records one request with a principal.
    fn record_request(
        &self,
        principal: &Principal,
        request: &GuardRequest,
        outcome: Outcome,
        rejection: Option<&Rejection>,
        now: SystemTime,
    ) {
        if principal.is_anonymous() {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.inner.max_values;
        let mut map = self.inner.shard(principal.qualified_id());
        if !map.contains_key(principal.qualified_id())
            && self
                .inner
                .tracked
                .fetch_update(Relaxed, Relaxed, |n| {
                    (n < self.inner.max_principals).then_some(n + 1)
                })
                .is_err()
        {
            self.inner.dropped.fetch_add(1, Relaxed);
            return;
        }
        let f = map
            .entry(principal.qualified_id().to_owned())
            .or_insert_with(|| PrincipalFacts {
                principal: principal.id().to_owned(),
                namespace: principal.namespace().to_owned(),
                tenant: principal.tenant().map(str::to_owned),
                first_seen: now,
                last_seen: now,
                requests: 0,
                credential_kinds: Counts::default(),
                keys: BTreeMap::new(),
                models: Counts::default(),
                tools: Counts::default(),
                denials: Counts::default(),
                addresses: Counts::default(),
                user_agents: Counts::default(),
                principal_value: None,
            });
        f.last_seen = now;
        f.requests += 1;
        f.principal_value = Some(principal.clone());
        f.credential_kinds.add(principal.kind().as_str(), max);
        f.models.add(request.model(), max);
        for t in request.tools() {
            f.tools.add(t.name(), max);
        }
        if outcome != Outcome::Completed {
            if let Some(r) = rejection {
                f.denials.add(r.code(), max);
            }
        }
        let addr = request.client_addr().map(|a: IpAddr| a.to_string());
        let agent = request.metadata().get("user_agent").map(String::as_str);
        if let Some(a) = &addr {
            f.addresses.add(a, max);
        }
        if let Some(a) = agent {
            f.user_agents.add(a, max);
        }
        if let Some(kid) = principal.key_id() {
            if f.keys.len() < max || f.keys.contains_key(kid) {
                let created = ["credential_created", "iat"]
                    .iter()
                    .find_map(|k| principal.attributes().get(*k))
                    .and_then(|v| v.parse::<u64>().ok())
                    // Past what a clock holds: the last second of 9999.
                    .map(|s| crate::clock::wall_time(UNIX_EPOCH, Duration::from_secs(s)));
                let k = f.keys.entry(kid.to_owned()).or_insert_with(|| KeyUse {
                    first_seen: now,
                    last_seen: now,
                    uses: 0,
                    age_at_last_use_secs: None,
                    created,
                    addresses: Counts::default(),
                    user_agents: Counts::default(),
                });
                k.last_seen = now;
                k.uses += 1;
                k.created = created.or(k.created);
                k.age_at_last_use_secs = k
                    .created
                    .and_then(|c| now.duration_since(c).ok())
                    .map(|d| d.as_secs());
                if let Some(a) = &addr {
                    k.addresses.add(a, max);
                }
                if let Some(a) = agent {
                    k.user_agents.add(a, max);
                }
            }
        }
    }

    /// The facts of one principal, by [qualified id](Principal::qualified_id)
    /// (`jwt:https://idp.example|svc-a`), or by plain id for an API key's principal.
    pub fn facts(&self, principal: &str) -> Option<PrincipalFacts> {
        if let Some(f) = self.inner.shard(principal).get(principal) {
            return Some(f.clone());
        }
        let qualified = format!("api_key|{principal}");
        self.inner.shard(&qualified).get(&qualified).cloned()
    }

    /// The report: every principal's facts, and the flags `policy` raises, at `now`.
    pub fn report(&self, policy: &InventoryPolicy, now: SystemTime) -> InventoryReport {
        let mut principals: Vec<PrincipalFacts> = self
            .inner
            .shards
            .iter()
            .flat_map(|shard| {
                let map = shard.lock().unwrap_or_else(|e| e.into_inner());
                map.values().cloned().collect::<Vec<_>>()
            })
            .collect();
        principals.sort_by(|a, b| a.principal.cmp(&b.principal));
        let mut flags = Vec::new();
        let flag = |flags: &mut Vec<Flag>, kind, p: &str, key: Option<&str>, detail: String| {
            flags.push(Flag {
                kind,
                principal: p.to_owned(),
                key_id: key.map(str::to_owned),
                detail,
            });
        };
        let days = |d: Duration| d.as_secs() / 86_400;
        // Keys the service issued: never used, or not for too long.
        for k in &policy.known_keys {
            let used = principals
                .iter()
                .find(|p| p.namespace == "api_key" && p.principal == k.principal)
                .and_then(|p| p.keys.get(&k.key_id));
            let idle = match used {
                None => now.duration_since(k.created).ok(),
                Some(u) => now.duration_since(u.last_seen).ok(),
            };
            if idle.is_some_and(|d| d >= policy.unused_after) {
                let n = days(idle.unwrap_or_default());
                let detail = if used.is_none() {
                    format!("never used since it was issued {n} days ago")
                } else {
                    format!("not used for {n} days")
                };
                flag(
                    &mut flags,
                    FlagKind::UnusedKey,
                    &k.principal,
                    Some(&k.key_id),
                    detail,
                );
            }
            if now
                .duration_since(k.created)
                .is_ok_and(|age| age >= policy.rotate_after)
            {
                flag(
                    &mut flags,
                    FlagKind::LongLivedKey,
                    &k.principal,
                    Some(&k.key_id),
                    format!(
                        "{} days old, rotation policy {} days",
                        days(now.duration_since(k.created).unwrap_or_default()),
                        days(policy.rotate_after)
                    ),
                );
            }
        }
        for p in &principals {
            for (kid, k) in &p.keys {
                let known = policy
                    .known_keys
                    .iter()
                    .any(|x| x.key_id == *kid && x.principal == p.principal);
                if !known {
                    if let Ok(idle) = now.duration_since(k.last_seen) {
                        if idle >= policy.unused_after {
                            flag(
                                &mut flags,
                                FlagKind::UnusedKey,
                                &p.principal,
                                Some(kid),
                                format!("not used for {} days", days(idle)),
                            );
                        }
                    }
                    // Its age now when its creation is known, else at its last use.
                    let age = k
                        .created
                        .and_then(|c| now.duration_since(c).ok())
                        .or_else(|| k.age_at_last_use());
                    if let Some(age) = age.filter(|a| *a >= policy.rotate_after) {
                        flag(
                            &mut flags,
                            FlagKind::LongLivedKey,
                            &p.principal,
                            Some(kid),
                            format!(
                                "{} days old, rotation policy {} days",
                                days(age),
                                days(policy.rotate_after)
                            ),
                        );
                    }
                }
                if k.addresses.distinct() > policy.max_addresses {
                    flag(
                        &mut flags,
                        FlagKind::CredentialReuse,
                        &p.principal,
                        Some(kid),
                        format!("used from {} addresses", k.addresses.distinct()),
                    );
                }
                if k.user_agents.distinct() > policy.max_user_agents {
                    flag(
                        &mut flags,
                        FlagKind::CredentialReuse,
                        &p.principal,
                        Some(kid),
                        format!("used with {} user agents", k.user_agents.distinct()),
                    );
                }
            }
            if let Some(ua) = p.user_agents.counts.keys().find(|ua| interactive(ua)) {
                flag(
                    &mut flags,
                    FlagKind::HumanUse,
                    &p.principal,
                    None,
                    format!("used from an interactive client ({})", truncate(ua, 60)),
                );
            }
            if let (Some(authz), Some(principal)) = (&policy.authorizer, &p.principal_value) {
                let Some(grants) = authz.grants(principal) else {
                    continue;
                };
                let (models, tools) = (grants.models(), grants.tools());
                let unused = |patterns: &[String], used: &Counts| -> Vec<String> {
                    patterns
                        .iter()
                        .filter(|g| !used.counts.keys().any(|u| glob_match(g, u)))
                        .cloned()
                        .collect()
                };
                let (um, ut) = (unused(models, &p.models), unused(tools, &p.tools));
                if !um.is_empty() || !ut.is_empty() {
                    let mut parts = Vec::new();
                    if !um.is_empty() {
                        parts.push(format!("models {}", um.join(", ")));
                    }
                    if !ut.is_empty() {
                        parts.push(format!("tools {}", ut.join(", ")));
                    }
                    flag(
                        &mut flags,
                        FlagKind::UnusedGrant,
                        &p.principal,
                        None,
                        format!("granted but never used: {}", parts.join("; ")),
                    );
                }
            }
        }
        InventoryReport {
            generated_at: now,
            principals,
            flags,
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether a user agent is a browser or an interactive HTTP client.
fn interactive(ua: &str) -> bool {
    let l = ua.to_ascii_lowercase();
    [
        "mozilla/",
        "chrome/",
        "safari/",
        "firefox/",
        "edg/",
        "curl/",
        "httpie/",
        "postmanruntime/",
        "insomnia/",
        "wget/",
    ]
    .iter()
    .any(|m| l.contains(m))
}

/// A key the service issued, for unused-key and rotation flags.
#[derive(Clone, Debug)]
pub struct KnownKey {
    key_id: String,
    principal: String,
    created: SystemTime,
}

/// What the inventory report flags.
#[derive(Clone)]
pub struct InventoryPolicy {
    unused_after: Duration,
    rotate_after: Duration,
    max_addresses: usize,
    max_user_agents: usize,
    known_keys: Vec<KnownKey>,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl fmt::Debug for InventoryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InventoryPolicy")
            .field("unused_after", &self.unused_after)
            .field("rotate_after", &self.rotate_after)
            .field("max_addresses", &self.max_addresses)
            .field("max_user_agents", &self.max_user_agents)
            .field("known_keys", &self.known_keys)
            .field("authorizer", &self.authorizer.as_ref().map(|a| a.name()))
            .finish()
    }
}

impl Default for InventoryPolicy {
    /// Keys unused for 30 days, keys older than 90 days, more than 5 addresses or 3
    /// user agents per key.
    fn default() -> Self {
        Self {
            unused_after: Duration::from_secs(30 * 86_400),
            rotate_after: Duration::from_secs(90 * 86_400),
            max_addresses: 5,
            max_user_agents: 3,
            known_keys: Vec::new(),
            authorizer: None,
        }
    }
}

impl InventoryPolicy {
    /// Flags keys not used for this long.
    #[must_use]
    pub fn unused_after(mut self, d: Duration) -> Self {
        self.unused_after = d;
        self
    }

    /// Flags keys older than this.
    #[must_use]
    pub fn rotate_after(mut self, d: Duration) -> Self {
        self.rotate_after = d;
        self
    }

    /// Flags a key used from more than `addresses` addresses or `user_agents` user
    /// agents.
    #[must_use]
    pub fn reuse_over(mut self, addresses: usize, user_agents: usize) -> Self {
        self.max_addresses = addresses;
        self.max_user_agents = user_agents;
        self
    }

    /// A key the service issued (so a key that was never used is flagged too).
    #[must_use]
    pub fn known_key(
        mut self,
        key_id: impl Into<String>,
        principal: impl Into<String>,
        created: SystemTime,
    ) -> Self {
        self.known_keys.push(KnownKey {
            key_id: key_id.into(),
            principal: principal.into(),
            created,
        });
        self
    }

    /// The authorizer whose grants are compared with what principals used: any
    /// [`Authorizer`] that reports [`grants`](Authorizer::grants) (the built-in
    /// [`PolicyAuthorizer`](crate::authz::PolicyAuthorizer) does).
    #[must_use]
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }
}

names! {
    /// A kind of flag.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
    #[serde(rename_all = "snake_case")]
    #[non_exhaustive]
    pub enum FlagKind {
        /// A key not used for the configured number of days, or never (offboarding).
        UnusedKey = "unused_key",
        /// A key older than its rotation policy.
        LongLivedKey = "long_lived_key",
        /// Models or tools granted but never used (over-privilege).
        UnusedGrant = "unused_grant",
        /// One key used from many addresses or user agents.
        CredentialReuse = "credential_reuse",
        /// A machine credential used from a browser or an interactive client.
        HumanUse = "human_use",
    }
}

/// One risk the report found.
#[derive(Clone, Debug, Serialize)]
pub struct Flag {
    kind: FlagKind,
    principal: String,
    key_id: Option<String>,
    detail: String,
}

impl Flag {
    /// What kind.
    pub fn kind(&self) -> FlagKind {
        self.kind
    }
    /// Whose.
    pub fn principal(&self) -> &str {
        &self.principal
    }
    /// Which key, when the flag is about a key.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
    /// A readable explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// The inventory report.
#[derive(Clone, Debug, Serialize)]
pub struct InventoryReport {
    #[serde(serialize_with = "unix")]
    generated_at: SystemTime,
    principals: Vec<PrincipalFacts>,
    flags: Vec<Flag>,
}

impl InventoryReport {
    /// Every principal's facts, by id.
    pub fn principals(&self) -> &[PrincipalFacts] {
        &self.principals
    }
    /// The flags.
    pub fn flags(&self) -> &[Flag] {
        &self.flags
    }
    /// The report as JSON (times in Unix seconds).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The inventory observes every request's event: the principal's credential, model,
/// tools, address, user agent and denials, at the time the request ended.
impl crate::stage::AuditObserver for Inventory {
    fn observe(&self, o: &mut crate::record::Observation<'_>) {
        let e = o.event();
        if let Some(p) = e.principal() {
            self.record_request(p, o.request(), e.outcome(), e.rejection(), e.ended());
        }
    }

    fn name(&self) -> &str {
        "inventory"
    }
}
