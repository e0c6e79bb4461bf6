//! Strict verification of workload tokens (JWS compact serialization).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::keys::{KeySet, Selection, SharedKeys};
use crate::Rejection;
use crate::codec::{self, JsonError, parse_object};
use crate::error::{BuildError, Error, ErrorKind, StageError};
use crate::principal::{CredentialKind, Principal};
use crate::request::GuardRequest;
use crate::stage::IdentityVerifier;
use crate::step::Step;

reason_codes! {
    /// Why a token was rejected. [`code`](Self::code) is stable and documented; it goes to
    /// the audit record and to the `verify_token` example's output, never to the caller.
    ///
    /// | code | meaning |
    /// |---|---|
    /// | `too_large` | longer than the configured maximum (checked before any decoding) |
    /// | `malformed` | not three dot-separated segments |
    /// | `bad_base64` | a segment is not canonical unpadded base64url |
    /// | `bad_json` | header or payload is not exactly one UTF-8 JSON object |
    /// | `duplicate_member` | a member name appears twice in header or payload |
    /// | `alg_none` | `alg` is `none`, in any spelling |
    /// | `unsupported_alg` | `alg` is missing or not a supported algorithm |
    /// | `alg_mismatch` | `alg` differs from the algorithm the key is bound to |
    /// | `bad_typ` | `typ` is not allowed (`JWT`, or `at+jwt` under the access-token profile) |
    /// | `untrusted_key_reference` | the header carries `jku`, `x5u`, `jwk` or `x5c` |
    /// | `unsupported_crit` | the header lists critical extensions |
    /// | `bad_kid` | `kid` is not a short printable string |
    /// | `unknown_kid` | no configured key has this `kid` |
    /// | `ambiguous_key` | no `kid`, and more than one key is configured |
    /// | `bad_signature` | the signature does not verify |
    /// | `missing_claim` | `iss`, `sub`, `aud`, `exp` (or a profile's claim) is missing |
    /// | `bad_claim` | a claim has the wrong type |
    /// | `bad_issuer` | `iss` is not a configured issuer |
    /// | `key_issuer_mismatch` | the key that signed the token belongs to another issuer than its `iss` (or is bound to none while several issuers are configured) |
    /// | `bad_audience` | `aud` does not contain the guard's audience |
    /// | `expired` | `exp` is past (beyond the leeway) |
    /// | `not_yet_valid` | `nbf` is in the future (beyond the leeway) |
    /// | `issued_in_future` | `iat` is in the future (beyond the leeway) |
    /// | `lifetime_too_long` | `exp - iat` or `exp - now` exceeds the maximum lifetime |
    /// | `bad_spiffe_id` | `sub` is not a valid SPIFFE ID (JWT-SVID profile) |
    /// | `untrusted_trust_domain` | the SPIFFE ID's trust domain is not allowed |
    /// | `replayed` | the `jti` was seen before (replay cache) |
    ///
    /// ```
    /// use inference_guard::identity::TokenError;
    /// # fn f(e: TokenError) { println!("rejected {}", e.code()); }
    /// ```
    pub enum TokenError {
        /// `too_large`: longer than the configured maximum (checked before any decoding).
        TooLarge = "too_large": "longer than the configured maximum (checked before any decoding)",
        /// `malformed`: not three dot-separated segments.
        Malformed = "malformed": "not three dot-separated segments",
        /// `bad_base64`: a segment is not canonical unpadded base64url.
        BadBase64 = "bad_base64": "a segment is not canonical unpadded base64url",
        /// `bad_json`: header or payload is not exactly one UTF-8 JSON object.
        BadJson = "bad_json": "header or payload is not exactly one UTF-8 JSON object",
        /// `duplicate_member`: a member name appears twice in header or payload.
        DuplicateMember = "duplicate_member": "a member name appears twice in header or payload",
        /// `alg_none`: alg is none, in any spelling.
        AlgNone = "alg_none": "alg is none, in any spelling",
        /// `unsupported_alg`: alg is missing or not a supported algorithm.
        UnsupportedAlg = "unsupported_alg": "alg is missing or not a supported algorithm",
        /// `alg_mismatch`: alg differs from the algorithm the key is bound to.
        AlgMismatch = "alg_mismatch": "alg differs from the algorithm the key is bound to",
        /// `bad_typ`: typ is not allowed (JWT, or at+jwt under the access-token profile).
        BadTyp = "bad_typ": "typ is not allowed (JWT, or at+jwt under the access-token profile)",
        /// `untrusted_key_reference`: the header carries jku, x5u, jwk or x5c.
        UntrustedKeyReference = "untrusted_key_reference": "the header carries jku, x5u, jwk or x5c",
        /// `unsupported_crit`: the header lists critical extensions.
        UnsupportedCrit = "unsupported_crit": "the header lists critical extensions",
        /// `bad_kid`: kid is not a short printable string.
        BadKid = "bad_kid": "kid is not a short printable string",
        /// `unknown_kid`: no configured key has this kid.
        UnknownKid = "unknown_kid": "no configured key has this kid",
        /// `ambiguous_key`: no kid, and more than one key is configured.
        AmbiguousKey = "ambiguous_key": "no kid, and more than one key is configured",
        /// `bad_signature`: the signature does not verify.
        BadSignature = "bad_signature": "the signature does not verify",
        /// `missing_claim`: iss, sub, aud, exp (or a profile's claim) is missing.
        MissingClaim = "missing_claim": "iss, sub, aud, exp (or a profile's claim) is missing",
        /// `bad_claim`: a claim has the wrong type.
        BadClaim = "bad_claim": "a claim has the wrong type",
        /// `bad_issuer`: iss is not a configured issuer.
        BadIssuer = "bad_issuer": "iss is not a configured issuer",
        /// `bad_audience`: aud does not contain the guard's audience.
        BadAudience = "bad_audience": "aud does not contain the guard's audience",
        /// `expired`: exp is past (beyond the leeway).
        Expired = "expired": "exp is past (beyond the leeway)",
        /// `not_yet_valid`: nbf is in the future (beyond the leeway).
        NotYetValid = "not_yet_valid": "nbf is in the future (beyond the leeway)",
        /// `issued_in_future`: iat is in the future (beyond the leeway).
        IssuedInFuture = "issued_in_future": "iat is in the future (beyond the leeway)",
        /// `lifetime_too_long`: exp - iat or exp - now exceeds the maximum lifetime.
        LifetimeTooLong = "lifetime_too_long": "exp - iat or exp - now exceeds the maximum lifetime",
        /// `key_issuer_mismatch`: the key that signed the token belongs to another issuer than its iss (or is bound to none while several issuers are configured).
        KeyIssuerMismatch = "key_issuer_mismatch": "the key that signed the token belongs to another issuer than its iss (or is bound to none while several issuers are configured)",
        /// `bad_spiffe_id`: sub is not a valid SPIFFE ID (JWT-SVID profile).
        BadSpiffeId = "bad_spiffe_id": "sub is not a valid SPIFFE ID (JWT-SVID profile)",
        /// `untrusted_trust_domain`: the SPIFFE ID's trust domain is not allowed.
        UntrustedTrustDomain = "untrusted_trust_domain": "the SPIFFE ID's trust domain is not allowed",
        /// `replayed`: the jti was seen before (replay cache).
        Replayed = "replayed": "the jti was seen before (replay cache)",
    }
}

/// What can go wrong verifying a token: a rejection, or (replay cache full) a failure.
#[derive(Debug)]
pub(crate) enum VerifyError {
    Token(TokenError),
    Failure(Error),
}

impl From<TokenError> for VerifyError {
    fn from(e: TokenError) -> Self {
        Self::Token(e)
    }
}

#[derive(Clone)]
struct Cached {
    principal: Principal,
    exp: f64,
    nbf: f64,
    generation: u64,
}

type RefreshHook = Arc<dyn Fn() -> Result<KeySet, Error> + Send + Sync>;
type TokenCache = Mutex<HashMap<[u8; 32], Cached>>;

struct Inner {
    keys: RwLock<(SharedKeys, u64)>,
    issuers: Vec<String>,
    audience: String,
    leeway: f64,
    max_lifetime: f64,
    max_token_bytes: usize,
    spiffe_domains: Option<Vec<String>>,
    access_token_profile: bool,
    tenant_claim: String,
    replay: Option<(Mutex<HashMap<String, f64>>, usize)>,
    shared_replay: Option<Arc<dyn ReplayStore>>,
    replay_fail_open: bool,
    cache: Option<(TokenCache, usize)>,
    refresh: Option<(RefreshHook, Duration, Mutex<Option<Instant>>)>,
}

/// A token use still to record in the shared replay cache: its replay id and the
/// time (Unix seconds) until which it must be remembered.
type PendingUse = ([u8; 32], f64);

/// Where replicas record the `jti` of the tokens they accept, so that a token is
/// used once across all of them ([`JwtVerifierBuilder::shared_replay_cache`]). One
/// required method.
///
/// ```
/// use std::collections::HashSet;
/// use std::sync::Mutex;
/// use std::time::SystemTime;
/// use inference_guard::identity::ReplayStore;
/// use inference_guard::{Error, Step};
///
/// /// One process's store (a shared one is a database or Redis).
/// #[derive(Default)]
/// struct Seen(Mutex<HashSet<[u8; 32]>>);
///
/// impl ReplayStore for Seen {
///     fn first_use<'a>(&'a self, id: &'a [u8; 32], _until: SystemTime) -> Step<'a, Result<bool, Error>> {
///         Step::ready(Ok(self.0.lock().unwrap().insert(*id)))
///     }
/// }
/// ```
pub trait ReplayStore: Send + Sync + 'static {
    /// Records a use of the token whose replay id is `id` (SHA-256 of its issuer and
    /// `jti`), remembered until `until` (its expiry plus the leeway). `true` if no
    /// use was recorded before.
    fn first_use<'a>(
        &'a self,
        id: &'a [u8; 32],
        until: SystemTime,
    ) -> Step<'a, Result<bool, Error>>;

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// Verifies workload tokens (JWTs) strictly: RFC 7515, 7519 and the JWT best current
/// practice, RFC 8725.
///
/// - **Algorithms**: RS256/384/512, PS256/384/512, ES256, ES384, EdDSA, HS256/384/512,
///   each key bound to one; `none` is never accepted; the token's `alg` must equal the
///   key's (no algorithm confusion).
/// - **Keys** only from configuration ([`KeySet`]), selected by `kid`; `jku`, `x5u`,
///   `jwk` and `x5c` headers are rejected, never followed; unknown `crit` is rejected.
///   Keys can be replaced while traffic flows ([`replace_keys`](Self::replace_keys)) and
///   a refresh hook can fetch them when an unknown `kid` appears.
/// - **Claims**: `iss` must be a configured issuer; `aud` must contain the audience;
///   `exp` and `sub` are required; `nbf` and `iat` are honoured with a small leeway
///   (30 s by default). **Short-lived only**: `exp - iat` and `exp - now` may not
///   exceed the maximum lifetime (one hour by default).
/// - **Strict parsing**: a size cap before any decoding (8 KiB), exactly three
///   segments, canonical unpadded base64url, one JSON object per segment with nothing
///   around it and no duplicate member names.
/// - **Profiles**: SPIFFE JWT-SVID ([`spiffe_trust_domain`](JwtVerifierBuilder::spiffe_trust_domain))
///   and RFC 9068 access tokens ([`access_token_profile`](JwtVerifierBuilder::access_token_profile)).
/// - **Caches**: an optional `jti` replay cache (this replica's, or shared by all
///   through a [`ReplayStore`]), and a verified-token cache keyed by
///   the SHA-256 of the token (never the token) whose entries end no later than the
///   token's `exp`.
///
/// ```
/// use inference_guard::identity::{Algorithm, JwtVerifier, KeySet};
///
/// let mut keys = KeySet::new();
/// keys.add_hmac("k1", Algorithm::HS256, &[42u8; 32])?;
/// let verifier = JwtVerifier::builder()
///     .issuer("https://issuer.example")
///     .audience("inference-api")
///     .keys(keys)
///     .build()?;
/// assert_eq!(verifier.verify_token("not.a.token").unwrap_err().code(), "bad_base64");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.inner.issuers)
            .field("audience", &self.inner.audience)
            .field("keys", &self.keys().len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`JwtVerifier`]; see [`JwtVerifier::builder`].
#[derive(Clone, Default)]
pub struct JwtVerifierBuilder {
    keys: Option<KeySet>,
    issuers: Vec<String>,
    audience: Option<String>,
    leeway: Option<Duration>,
    max_lifetime: Option<Duration>,
    max_token_bytes: Option<usize>,
    spiffe_domains: Vec<String>,
    access_token_profile: bool,
    tenant_claim: Option<String>,
    replay_capacity: Option<usize>,
    shared_replay: Option<Arc<dyn ReplayStore>>,
    replay_fail_open: bool,
    cache_capacity: Option<usize>,
    refresh: Option<(RefreshHook, Duration)>,
}

impl fmt::Debug for JwtVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifierBuilder")
            .field("issuers", &self.issuers)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl JwtVerifierBuilder {
    /// The trusted keys. With one issuer they sign for it; with several, bind
    /// each key to its issuer ([`issuer_keys`](Self::issuer_keys) or
    /// [`KeySet::bound_to`]), or the verifier does not build.
    pub fn keys(&mut self, keys: KeySet) -> &mut Self {
        match &mut self.keys {
            Some(existing) => existing.keys.extend(keys.keys),
            None => self.keys = Some(keys),
        }
        self
    }

    /// Adds an accepted issuer and the keys that sign for it, and for it only: a
    /// token that claims another issuer is refused (`key_issuer_mismatch`) even when
    /// one of these keys signed it.
    ///
    /// ```
    /// use inference_guard::identity::{Algorithm, JwtVerifier, KeySet};
    /// let mut a = KeySet::new();
    /// a.add_hmac("a1", Algorithm::HS256, &[1u8; 32])?;
    /// let mut b = KeySet::new();
    /// b.add_hmac("b1", Algorithm::HS256, &[2u8; 32])?;
    /// let v = JwtVerifier::builder()
    ///     .issuer_keys("https://a.example", a)
    ///     .issuer_keys("https://b.example", b)
    ///     .audience("inference")
    ///     .build()?;
    /// # let _ = v;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn issuer_keys(&mut self, issuer: impl Into<String>, keys: KeySet) -> &mut Self {
        let issuer = issuer.into();
        let keys = keys.bound_to(&issuer);
        let b = self.keys(keys);
        if !b.issuers.contains(&issuer) {
            b.issuers.push(issuer);
        }
        b
    }
    /// Adds an accepted issuer (`iss`). At least one is required.
    pub fn issuer(&mut self, issuer: impl Into<String>) -> &mut Self {
        self.issuers.push(issuer.into());
        self
    }
    /// The guard's audience; `aud` must contain it. Required.
    pub fn audience(&mut self, audience: impl Into<String>) -> &mut Self {
        self.audience = Some(audience.into());
        self
    }
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 30 s, at most 5 min).
    pub fn leeway(&mut self, leeway: Duration) -> &mut Self {
        self.leeway = Some(leeway);
        self
    }
    /// The longest lifetime accepted (`exp - iat`, `exp - now`); default one hour.
    pub fn max_lifetime(&mut self, max: Duration) -> &mut Self {
        self.max_lifetime = Some(max);
        self
    }
    /// The longest token accepted, checked before decoding (default 8 KiB).
    pub fn max_token_bytes(&mut self, max: usize) -> &mut Self {
        self.max_token_bytes = Some(max);
        self
    }
    /// Requires SPIFFE JWT-SVIDs: `sub` must be a valid SPIFFE ID in one of the
    /// allowed trust domains. Call once per trust domain.
    pub fn spiffe_trust_domain(&mut self, domain: impl Into<String>) -> &mut Self {
        self.spiffe_domains.push(domain.into());
        self
    }
    /// Requires RFC 9068 access tokens: `typ` `at+jwt`, and `client_id`, `iat` and
    /// `jti` present.
    pub fn access_token_profile(&mut self) -> &mut Self {
        self.access_token_profile = true;
        self
    }
    /// The claim that names the tenant (default `tenant`).
    pub fn tenant_claim(&mut self, claim: impl Into<String>) -> &mut Self {
        self.tenant_claim = Some(claim.into());
        self
    }
    /// Rejects a token whose `jti` was seen before (tokens without `jti` are then
    /// rejected). Keeps at most `capacity` ids until their tokens expire; when it is
    /// full of unexpired ids, verification fails closed.
    pub fn replay_cache(&mut self, capacity: usize) -> &mut Self {
        self.replay_capacity = Some(capacity);
        self
    }
    /// Rejects a token whose `jti` any replica has seen, through a store they share
    /// (for example `RedisReplayCache`, feature `redis`): one round trip per token.
    /// Tokens without `jti` are then rejected. When the store fails, verification
    /// fails closed (`503`) unless [`replay_fail_open`](Self::replay_fail_open).
    /// [`JwtVerifier::verify_token`] (synchronous, offline) does not consult it; the
    /// identity stage does.
    pub fn shared_replay_cache(&mut self, store: impl ReplayStore) -> &mut Self {
        self.shared_replay = Some(Arc::new(store));
        self
    }
    /// When the shared replay cache fails, checks the token against this replica's
    /// own replay cache instead of failing closed: a replay to the same replica is
    /// still refused, a replay to another one is not. Default off.
    pub fn replay_fail_open(&mut self, on: bool) -> &mut Self {
        self.replay_fail_open = on;
        self
    }
    /// Caches verified tokens (by SHA-256 digest) so a repeated token skips the
    /// signature check; at most `capacity` entries. Default 10,000; 0 disables it. Not
    /// used with the replay cache, which must see every use.
    pub fn verified_cache(&mut self, capacity: usize) -> &mut Self {
        self.cache_capacity = Some(capacity);
        self
    }
    /// Calls `hook` to fetch a fresh key set when a token names an unknown `kid`, at
    /// most once per `cooldown`. The hook runs on the request path: make it fast (for
    /// example, return a key set your service refreshes in the background).
    pub fn refresh_hook(
        &mut self,
        hook: impl Fn() -> Result<KeySet, Error> + Send + Sync + 'static,
        cooldown: Duration,
    ) -> &mut Self {
        self.refresh = Some((Arc::new(hook), cooldown));
        self
    }

    /// Validates the configuration and builds the verifier.
    ///
    /// # Errors
    ///
    /// A [`BuildError`]: no issuer, no audience, no keys and no refresh hook, a leeway
    /// over five minutes, a zero lifetime or size, an invalid SPIFFE trust domain.
    pub fn build(&self) -> Result<JwtVerifier, BuildError> {
        if self.issuers.is_empty() || self.issuers.iter().any(String::is_empty) {
            return Err(BuildError::invalid(
                "jwt.issuer",
                "at least one non-empty issuer is required",
            ));
        }
        let audience = self
            .audience
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| BuildError::invalid("jwt.audience", "an audience is required"))?;
        let keys = self.keys.clone().unwrap_or_default();
        if keys.is_empty() && self.refresh.is_none() {
            return Err(BuildError::invalid(
                "jwt.keys",
                "no keys and no refresh hook",
            ));
        }
        if self.issuers.len() > 1 && keys.keys.iter().any(|k| k.issuer.is_none()) {
            return Err(BuildError::invalid(
                "jwt.issuer_keys",
                "with several issuers every key must be bound to one (issuer_keys)",
            ));
        }
        let leeway = self.leeway.unwrap_or(Duration::from_secs(30));
        if leeway > Duration::from_secs(300) {
            return Err(BuildError::invalid("jwt.leeway", "leeway over 5 minutes"));
        }
        let max_lifetime = self.max_lifetime.unwrap_or(Duration::from_secs(3600));
        let max_token_bytes = self.max_token_bytes.unwrap_or(8 * 1024);
        if max_lifetime.is_zero() || max_token_bytes == 0 {
            return Err(BuildError::invalid(
                "jwt.max_lifetime",
                "lifetime and size limits must be positive",
            ));
        }
        for d in &self.spiffe_domains {
            if !valid_trust_domain(d) {
                return Err(BuildError::invalid(
                    "jwt.spiffe_trust_domains",
                    format!("invalid SPIFFE trust domain {d:?}"),
                ));
            }
        }
        let cache_capacity = self.cache_capacity.unwrap_or(10_000);
        Ok(JwtVerifier {
            inner: Arc::new(Inner {
                keys: RwLock::new((Arc::new(keys), 0)),
                issuers: self.issuers.clone(),
                audience,
                leeway: leeway.as_secs_f64(),
                max_lifetime: max_lifetime.as_secs_f64(),
                max_token_bytes,
                spiffe_domains: (!self.spiffe_domains.is_empty())
                    .then_some(self.spiffe_domains.clone()),
                access_token_profile: self.access_token_profile,
                tenant_claim: self
                    .tenant_claim
                    .clone()
                    .unwrap_or_else(|| "tenant".to_owned()),
                replay: self
                    .replay_capacity
                    .or((self.shared_replay.is_some() && self.replay_fail_open).then_some(100_000))
                    .map(|c| (Mutex::new(HashMap::new()), c.max(1))),
                cache: (cache_capacity > 0
                    && self.replay_capacity.is_none()
                    && self.shared_replay.is_none())
                .then(|| (Mutex::new(HashMap::new()), cache_capacity)),
                shared_replay: self.shared_replay.clone(),
                replay_fail_open: self.replay_fail_open,
                refresh: self.refresh.clone().map(|(h, c)| (h, c, Mutex::new(None))),
            }),
        })
    }
}

fn unix(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn b64(segment: &str) -> Result<Vec<u8>, TokenError> {
    codec::b64url(segment).ok_or(TokenError::BadBase64)
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, TokenError> {
    parse_object(bytes).map_err(|e| match e {
        JsonError::Duplicate => TokenError::DuplicateMember,
        JsonError::Invalid | JsonError::NotAnObject => TokenError::BadJson,
    })
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(TokenError::BadClaim),
        },
        Some(_) => Err(TokenError::BadClaim),
    }
}

fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::BadClaim),
    }
}

fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// Parses a SPIFFE ID; returns its trust domain.
pub(crate) fn spiffe_trust_domain(id: &str) -> Option<&str> {
    if id.len() > 2048 {
        return None;
    }
    let rest = id.strip_prefix("spiffe://")?;
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !valid_trust_domain(td) {
        return None;
    }
    if !path.is_empty() {
        for seg in path[1..].split('/') {
            let ok = !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return None;
            }
        }
    }
    Some(td)
}

impl JwtVerifier {
    /// A builder.
    pub fn builder() -> JwtVerifierBuilder {
        JwtVerifierBuilder::default()
    }

    /// The current key set.
    pub fn keys(&self) -> SharedKeys {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Replaces the key set while traffic flows (rotation). Tokens verified under the
    /// old keys are dropped from the verified cache.
    pub fn replace_keys(&self, keys: KeySet) {
        let mut guard = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
        guard.0 = Arc::new(keys);
        guard.1 += 1;
        drop(guard);
        if let Some((cache, _)) = &self.inner.cache {
            cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Whether `issuer` is one of this verifier's issuers.
    pub(crate) fn accepts_issuer(&self, issuer: &str) -> bool {
        self.inner.issuers.iter().any(|i| i == issuer)
    }

    /// Verifies a token now.
    ///
    /// # Errors
    ///
    /// A [`TokenError`] saying why the token was rejected. (A full replay cache is
    /// reported as `replayed`; the [`IdentityVerifier`] impl fails closed with `503`.)
    pub fn verify_token(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_token_at(token, SystemTime::now())
    }

    /// Verifies a token as of `now` (for tests and offline checks).
    ///
    /// # Errors
    ///
    /// As [`verify_token`](Self::verify_token).
    pub fn verify_token_at(&self, token: &str, now: SystemTime) -> Result<Principal, TokenError> {
        self.check_token(token, unix(now)).map_err(|e| match e {
            VerifyError::Token(t) => t,
            VerifyError::Failure(_) => TokenError::Replayed,
        })
    }

    pub(crate) fn check_token(&self, token: &str, now: f64) -> Result<Principal, VerifyError> {
        self.check_token_shared(token, now).map(|(p, _)| p)
    }

    /// Verifies a token; with a shared replay cache, also returns the use still to
    /// record there (the token's replay id and expiry) instead of checking locally.
    fn check_token_shared(
        &self,
        token: &str,
        now: f64,
    ) -> Result<(Principal, Option<PendingUse>), VerifyError> {
        let g = &*self.inner;
        if token.len() > g.max_token_bytes {
            return Err(TokenError::TooLarge.into());
        }
        let digest = g.cache.as_ref().map(|_| {
            let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        });
        let (keys, generation) = {
            let k = g.keys.read().unwrap_or_else(|p| p.into_inner());
            (k.0.clone(), k.1)
        };
        if let (Some((cache, _)), Some(d)) = (&g.cache, &digest) {
            let hit = cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(d)
                .filter(|c| c.generation == generation)
                .cloned();
            if let Some(c) = hit {
                // Entries end no later than the token itself.
                if now <= c.exp && now + g.leeway >= c.nbf {
                    return Ok((c.principal, None));
                }
            }
        }

        let Some((h, p, s)) = codec::jws_segments(token) else {
            return Err(TokenError::Malformed.into());
        };
        let header = object(&b64(h)?)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => {
                return Err(TokenError::AlgNone.into());
            }
            Some(Value::String(a)) => {
                super::Algorithm::from_name(a).ok_or(TokenError::UnsupportedAlg)?
            }
            _ => return Err(TokenError::UnsupportedAlg.into()),
        };
        for reference in ["jku", "x5u", "jwk", "x5c"] {
            if header.contains_key(reference) {
                return Err(TokenError::UntrustedKeyReference.into());
            }
        }
        if header.contains_key("crit") {
            // No critical extension is understood here (RFC 7515 §4.1.11).
            return Err(TokenError::UnsupportedCrit.into());
        }
        match (
            string(&header, "typ").map_err(|_| TokenError::BadTyp)?,
            g.access_token_profile,
        ) {
            (None, false) => {}
            (Some(t), false) if t.eq_ignore_ascii_case("JWT") => {}
            (Some(t), true)
                if t.eq_ignore_ascii_case("at+jwt")
                    || t.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(TokenError::BadTyp.into()),
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k))
                if !k.is_empty() && k.len() <= 256 && k.chars().all(|c| !c.is_control()) =>
            {
                Some(k.as_str())
            }
            Some(_) => return Err(TokenError::BadKid.into()),
        };

        let mut keys = keys;
        let mut generation = generation;
        if matches!(keys.select(kid), Selection::Unknown) && self.try_refresh() {
            let k = g.keys.read().unwrap_or_else(|p| p.into_inner());
            keys = k.0.clone();
            generation = k.1;
        }
        let key = match keys.select(kid) {
            Selection::Found(k) => k,
            Selection::Unknown => return Err(TokenError::UnknownKid.into()),
            Selection::Ambiguous => return Err(TokenError::AmbiguousKey.into()),
        };
        if key.alg != alg {
            return Err(TokenError::AlgMismatch.into());
        }
        let signature = b64(s)?;
        let signed = &token[..h.len() + 1 + p.len()];
        if !key.verify(signed.as_bytes(), &signature) {
            return Err(TokenError::BadSignature.into());
        }

        let claims = object(&b64(p)?)?;
        let iss = string(&claims, "iss")?.ok_or(TokenError::MissingClaim)?;
        if !g.issuers.iter().any(|i| i == iss) {
            return Err(TokenError::BadIssuer.into());
        }
        // Each key signs for one issuer: bound keys for theirs, unbound keys only
        // when the verifier has a single issuer.
        let key_ok = match &key.issuer {
            Some(bound) => **bound == *iss,
            None => g.issuers.len() == 1,
        };
        if !key_ok {
            return Err(TokenError::KeyIssuerMismatch.into());
        }
        match claims.get("aud") {
            None => return Err(TokenError::MissingClaim.into()),
            Some(Value::String(a)) if *a == g.audience => {}
            Some(Value::String(_)) => return Err(TokenError::BadAudience.into()),
            Some(Value::Array(list)) => {
                if !list.iter().all(Value::is_string) {
                    return Err(TokenError::BadClaim.into());
                }
                if !list.iter().any(|a| *a == g.audience) {
                    return Err(TokenError::BadAudience.into());
                }
            }
            Some(_) => return Err(TokenError::BadClaim.into()),
        }
        let exp = numeric(&claims, "exp")?.ok_or(TokenError::MissingClaim)?;
        let nbf = numeric(&claims, "nbf")?;
        let iat = numeric(&claims, "iat")?;
        if now > exp + g.leeway {
            return Err(TokenError::Expired.into());
        }
        if nbf.is_some_and(|nbf| now + g.leeway < nbf) {
            return Err(TokenError::NotYetValid.into());
        }
        if iat.is_some_and(|iat| iat > now + g.leeway) {
            return Err(TokenError::IssuedInFuture.into());
        }
        if iat.is_some_and(|iat| exp - iat > g.max_lifetime)
            || exp - now > g.max_lifetime + g.leeway
        {
            return Err(TokenError::LifetimeTooLong.into());
        }
        let sub = string(&claims, "sub")?
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::MissingClaim)?;
        if let Some(domains) = &g.spiffe_domains {
            let td = spiffe_trust_domain(sub).ok_or(TokenError::BadSpiffeId)?;
            if !domains.iter().any(|d| d == td) {
                return Err(TokenError::UntrustedTrustDomain.into());
            }
        }
        let client_id = string(&claims, "client_id")?;
        let jti = string(&claims, "jti")?;
        if g.access_token_profile && (client_id.is_none() || iat.is_none() || jti.is_none()) {
            return Err(TokenError::MissingClaim.into());
        }
        let mut pending = None;
        if g.shared_replay.is_some() {
            let jti = jti.ok_or(TokenError::MissingClaim)?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(iss.as_bytes());
            ctx.update(b"\n");
            ctx.update(jti.as_bytes());
            let mut id = [0u8; 32];
            id.copy_from_slice(ctx.finish().as_ref());
            pending = Some((id, exp + g.leeway));
        } else if g.replay.is_some() {
            self.local_replay(jti.ok_or(TokenError::MissingClaim)?, exp, now)?;
        }

        let mut builder = Principal::builder(sub, CredentialKind::BearerToken)
            .namespace(format!("jwt:{iss}"))
            .attribute("iss", iss);
        if let Some(k) = kid {
            builder = builder.key_id(k);
        }
        if let Some(c) = client_id {
            builder = builder.attribute("client_id", c);
        }
        if let Some(iat) = iat.filter(|t| t.is_finite() && *t >= 0.0) {
            // The credential's creation time, for the machine-identity inventory.
            builder = builder.attribute("iat", format!("{}", iat as u64));
        }
        if let Some(t) = string(&claims, &g.tenant_claim).map_err(|_| TokenError::BadClaim)? {
            builder = builder.tenant(t);
        }
        match claims.get("scope") {
            Some(Value::String(s)) => {
                for scope in s.split(' ').filter(|s| !s.is_empty()) {
                    builder = builder.scope(scope);
                }
            }
            Some(_) => return Err(TokenError::BadClaim.into()),
            None => {}
        }
        if let Some(scp) = claims.get("scp") {
            let list = scp.as_array().ok_or(TokenError::BadClaim)?;
            for s in list {
                builder = builder.scope(s.as_str().ok_or(TokenError::BadClaim)?);
            }
        }
        let principal = builder.build();

        if let (Some((cache, capacity)), Some(d)) = (&g.cache, digest) {
            let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
            if c.len() >= *capacity {
                c.retain(|_, e| e.exp >= now);
                if c.len() >= *capacity {
                    c.clear();
                }
            }
            c.insert(
                d,
                Cached {
                    principal: principal.clone(),
                    exp,
                    nbf: nbf.unwrap_or(f64::MIN),
                    generation,
                },
            );
        }
        Ok((principal, pending))
    }

    /// This replica's replay cache: refuses a `jti` seen before (until its token
    /// expires), fails closed when full of unexpired ids.
    fn local_replay(&self, jti: &str, exp: f64, now: f64) -> Result<(), VerifyError> {
        let g = &*self.inner;
        let Some((replay, capacity)) = &g.replay else {
            return Ok(());
        };
        let mut seen = replay.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(jti).is_some_and(|&e| e + g.leeway >= now) {
            return Err(TokenError::Replayed.into());
        }
        if seen.len() >= *capacity {
            seen.retain(|_, e| *e + g.leeway >= now);
            if seen.len() >= *capacity {
                return Err(VerifyError::Failure(Error::new(
                    ErrorKind::Backend,
                    "jti replay cache is full of unexpired tokens",
                )));
            }
        }
        seen.insert(jti.to_owned(), exp);
        Ok(())
    }

    fn try_refresh(&self) -> bool {
        let Some((hook, cooldown, last)) = &self.inner.refresh else {
            return false;
        };
        {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < *cooldown) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match hook() {
            Ok(keys) => {
                self.replace_keys(keys);
                true
            }
            Err(_) => false,
        }
    }
}

impl IdentityVerifier for JwtVerifier {
    fn verify<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>> {
        let Some(token) = request.credentials().bearer_token() else {
            return Step::ready(Err(Rejection::unauthenticated("no bearer token").into()));
        };
        let reject = |e: TokenError| -> StageError {
            Rejection::unauthenticated(format!("jwt: {}", e.code())).into()
        };
        let now = unix(SystemTime::now());
        match self.check_token_shared(token.expose(), now) {
            Ok((p, None)) => Step::ready(Ok(p)),
            Ok((p, Some((id, until)))) => {
                let Some(store) = self.inner.shared_replay.as_deref() else {
                    return Step::ready(Ok(p));
                };
                // An expiry past what a `SystemTime` holds (a verifier that allows
                // any lifetime) is kept until the last second of 9999.
                let until = crate::clock::wall_time(
                    UNIX_EPOCH,
                    Duration::try_from_secs_f64(until.max(0.0)).unwrap_or(Duration::MAX),
                );
                Step::future(async move {
                    match store.first_use(&id, until).await {
                        Ok(true) => Ok(p),
                        Ok(false) => Err(reject(TokenError::Replayed)),
                        Err(e) if self.inner.replay_fail_open => {
                            // This replica's own cache stands in, keyed by the same id.
                            let key = codec::hex(&id);
                            match self.local_replay(&key, unix(until), now) {
                                Ok(()) => Ok(p),
                                Err(VerifyError::Token(t)) => Err(reject(t)),
                                Err(VerifyError::Failure(_)) => Err(e.into()),
                            }
                        }
                        Err(e) => Err(e.into()),
                    }
                })
            }
            Err(VerifyError::Token(e)) => Step::ready(Err(reject(e))),
            Err(VerifyError::Failure(e)) => Step::ready(Err(e.into())),
        }
    }

    fn name(&self) -> &str {
        "jwt"
    }
}

/// The `iss` claim of a token, read without verifying anything (to pick the
/// verifier that then verifies it). `None` for anything malformed.
pub(crate) fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = b64(payload).ok()?;
    let claims = object(&bytes).ok()?;
    string(&claims, "iss").ok().flatten().map(str::to_owned)
}
