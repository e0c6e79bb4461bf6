//! Checksummed API keys, stored only as keyed digests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ring::rand::SecureRandom;

use crate::Rejection;
use crate::codec::{self, crc32};
use crate::error::{BuildError, Error, ErrorKind, StageError};
use crate::principal::Principal;
use crate::request::{GuardRequest, Secret};
use crate::stage::IdentityVerifier;
use crate::step::Step;

const RANDOM_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;

fn base62_fixed(v: u32) -> [u8; CHECKSUM_LEN] {
    codec::base62_fixed(v)
}

/// The format of this guard's API keys: `<prefix>_<30 random base62><6 base62 CRC32>`,
/// as GitHub's tokens are built. The checksum (over everything before it) lets the
/// verifier reject typos and random strings before any lookup, and lets secret
/// scanners (ours included) recognise a leaked key with few false positives.
///
/// ```
/// use inference_guard::identity::ApiKeyFormat;
///
/// let format = ApiKeyFormat::new("igk")?;
/// let key = format.generate()?;
/// assert!(key.expose().starts_with("igk_"));
/// assert_eq!(key.len(), 4 + 36);
/// assert!(format.check(key.expose()).is_ok());
/// let mut typo = key.expose().to_owned();
/// typo.replace_range(5..6, if &typo[5..6] == "a" { "b" } else { "a" });
/// assert!(format.check(&typo).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyFormat {
    prefix: String,
}

reason_codes! {
    /// Why an API key string does not have the right form.
    pub enum ApiKeyFormatError {
        /// Wrong prefix, length or characters.
        Malformed = "malformed": "malformed",
        /// The checksum does not match: a typo or a made-up key.
        BadChecksum = "bad_checksum": "bad_checksum",
    }
}

impl ApiKeyFormat {
    /// A format with `prefix` (2 to 16 lowercase ASCII letters or digits).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if the prefix is not of that form.
    pub fn new(prefix: impl Into<String>) -> Result<Self, BuildError> {
        let prefix = prefix.into();
        let ok = (2..=16).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(BuildError::invalid(
                "api_key.prefix",
                "API key prefix must be 2 to 16 lowercase ASCII letters or digits",
            ));
        }
        Ok(Self { prefix })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The total length of a key.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN
    }

    /// Whether `s` starts like a key of this format (for telling API keys apart from
    /// JWTs in an `Authorization: Bearer` header).
    pub fn looks_like_key(&self, s: &str) -> bool {
        s.len() == self.key_len()
            && s.starts_with(&self.prefix)
            && s.as_bytes().get(self.prefix.len()) == Some(&b'_')
    }

    /// Generates a new key from the operating system's random generator (178 bits of
    /// entropy).
    ///
    /// # Errors
    ///
    /// An [`Error`] if the system random generator fails.
    pub fn generate(&self) -> Result<Secret, Error> {
        let rng = ring::rand::SystemRandom::new();
        let mut out = String::with_capacity(self.key_len());
        out.push_str(&self.prefix);
        out.push('_');
        let mut buf = [0u8; 64];
        while out.len() < self.prefix.len() + 1 + RANDOM_LEN {
            rng.fill(&mut buf)
                .map_err(|_| Error::new(ErrorKind::Backend, "system random generator failed"))?;
            for &b in &buf {
                // Rejection sampling keeps the characters uniform.
                if b < 248 && out.len() < self.prefix.len() + 1 + RANDOM_LEN {
                    out.push(char::from(codec::base62_digit(b)));
                }
            }
        }
        let sum = base62_fixed(crc32(out.as_bytes()));
        out.push_str(std::str::from_utf8(&sum).unwrap_or("000000"));
        Ok(Secret::new(out))
    }

    /// Checks the form and checksum of `key`, without any lookup.
    ///
    /// # Errors
    ///
    /// [`ApiKeyFormatError::Malformed`] or [`ApiKeyFormatError::BadChecksum`].
    pub fn check(&self, key: &str) -> Result<(), ApiKeyFormatError> {
        if !self.looks_like_key(key)
            || !key.as_bytes()[self.prefix.len() + 1..]
                .iter()
                .all(u8::is_ascii_alphanumeric)
        {
            return Err(ApiKeyFormatError::Malformed);
        }
        let (body, sum) = key.split_at(key.len() - CHECKSUM_LEN);
        if base62_fixed(crc32(body.as_bytes())) != sum.as_bytes() {
            return Err(ApiKeyFormatError::BadChecksum);
        }
        Ok(())
    }
}

/// A stored API key: its id, the principal it stands for (with its scopes), when it
/// was created and expires, whether it is revoked, and its keyed digest. Never the key.
#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    id: String,
    principal: Principal,
    created: SystemTime,
    expires: Option<SystemTime>,
    revoked: bool,
    digest: [u8; 32],
}

impl ApiKeyRecord {
    /// A record for a key known only by its keyed digest (as [`digest`](Self::digest)
    /// returns it when the key is issued), for stores and policy files that keep
    /// digests, never keys. `created` is when the key was issued.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use inference_guard::identity::ApiKeyRecord;
    /// use inference_guard::{CredentialKind, Principal};
    /// let p = Principal::builder("svc", CredentialKind::ApiKey).build();
    /// let r = ApiKeyRecord::from_digest("key_1", p, [7; 32], SystemTime::now(), None);
    /// assert_eq!(r.principal().key_id(), Some("key_1"));
    /// ```
    pub fn from_digest(
        id: impl Into<String>,
        principal: Principal,
        digest: [u8; 32],
        created: SystemTime,
        expires: Option<SystemTime>,
    ) -> Self {
        let id = id.into();
        let mut b = Principal::builder(principal.id(), principal.kind()).key_id(id.clone());
        if let Some(t) = principal.tenant() {
            b = b.tenant(t);
        }
        for s in principal.scopes() {
            b = b.scope(s);
        }
        for (k, v) in principal.attributes() {
            b = b.attribute(k.clone(), v.clone());
        }
        b = b.attribute(
            "credential_created",
            created
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
        );
        Self {
            id,
            principal: b.build(),
            created,
            expires,
            revoked: false,
            digest,
        }
    }

    /// The key's id (not secret; shown in audit records).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The principal the key authenticates as.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    /// When the key was created.
    pub fn created(&self) -> SystemTime {
        self.created
    }
    /// When the key expires.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }
    /// Whether the key is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }
    /// The same record, revoked.
    #[cfg(feature = "redis")]
    pub(crate) fn to_revoked(&self) -> Self {
        let mut r = self.clone();
        r.revoked = true;
        r
    }
    /// The keyed digest (HMAC-SHA256 under the server secret).
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// Where API-key records live. One required method: find a record by the key's keyed
/// digest. Implement it over a database; [`InMemoryKeyStore`] is the built-in.
pub trait ApiKeyStore: Send + Sync + 'static {
    /// The record whose digest is `digest`, if any.
    fn find<'a>(
        &'a self,
        digest: &'a [u8; 32],
    ) -> Step<'a, Result<Option<Arc<ApiKeyRecord>>, Error>>;
}

/// An in-memory [`ApiKeyStore`]. Clones share the same store.
#[derive(Clone, Debug, Default)]
pub struct InMemoryKeyStore {
    records: Arc<RwLock<HashMap<[u8; 32], Arc<ApiKeyRecord>>>>,
}

impl InMemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a record.
    pub fn insert(&self, record: ApiKeyRecord) {
        self.records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.digest, Arc::new(record));
    }

    /// Revokes the key with `id`. Returns whether it existed.
    pub fn revoke(&self, id: &str) -> bool {
        let mut map = self.records.write().unwrap_or_else(|p| p.into_inner());
        let Some((digest, rec)) = map.iter().find(|(_, r)| r.id == id) else {
            return false;
        };
        let digest = *digest;
        let mut rec = ApiKeyRecord::clone(rec);
        rec.revoked = true;
        map.insert(digest, Arc::new(rec));
        true
    }

    /// The records, in no particular order.
    pub fn records(&self) -> Vec<Arc<ApiKeyRecord>> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl ApiKeyStore for InMemoryKeyStore {
    fn find<'a>(
        &'a self,
        digest: &'a [u8; 32],
    ) -> Step<'a, Result<Option<Arc<ApiKeyRecord>>, Error>> {
        Step::ready(Ok(self
            .records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()))
    }
}

/// Verifies API keys: form and checksum first (no lookup for a typo), then a lookup
/// by HMAC-SHA256 digest under a server secret, a constant-time comparison of the
/// digests, and the record's revocation and expiry.
///
/// Keys are accepted from `x-api-key` and, when they have this format, from
/// `Authorization: Bearer` (as OpenAI clients send them).
///
/// ```
/// use inference_guard::identity::{ApiKeyFormat, ApiKeys, InMemoryKeyStore};
/// use inference_guard::{CredentialKind, Principal};
///
/// let store = InMemoryKeyStore::new();
/// let keys = ApiKeys::new(b"a server secret of 32 bytes or more!", ApiKeyFormat::new("igk")?, store.clone())?;
/// let owner = Principal::builder("svc-reports", CredentialKind::ApiKey).scope("model:*").build();
/// let (key, record) = keys.issue("key_01", owner, None)?;
/// store.insert(record);
/// assert_eq!(keys.verify_key(key.expose())?.key_id(), Some("key_01"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ApiKeys<S = InMemoryKeyStore> {
    hmac: ring::hmac::Key,
    format: ApiKeyFormat,
    store: S,
}

impl<S> fmt::Debug for ApiKeys<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("prefix", &self.format.prefix)
            .finish_non_exhaustive()
    }
}

/// Why an API key was rejected (the audit detail); [`code`](Self::code) is stable
/// and is also its `Display`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// Wrong form or checksum; no lookup was made.
    #[error(transparent)]
    Format(#[from] ApiKeyFormatError),
    /// No such key.
    #[error("unknown_key")]
    Unknown,
    /// The key was revoked.
    #[error("revoked")]
    Revoked,
    /// The key expired.
    #[error("expired")]
    Expired,
}

impl ApiKeyError {
    /// A stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Format(f) => f.code(),
            Self::Unknown => "unknown_key",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl<S: ApiKeyStore> ApiKeys<S> {
    /// A verifier whose digests are keyed by `server_secret`.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if the secret is shorter than 32 bytes.
    pub fn new(server_secret: &[u8], format: ApiKeyFormat, store: S) -> Result<Self, BuildError> {
        if server_secret.len() < 32 {
            return Err(BuildError::invalid(
                "api_keys.server_secret",
                "the API-key server secret must be at least 32 bytes",
            ));
        }
        Ok(Self {
            hmac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, server_secret),
            format,
            store,
        })
    }

    /// The key format.
    pub fn format(&self) -> &ApiKeyFormat {
        &self.format
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn digest(&self, key: &str) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.hmac, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Generates a key for `principal` (whose key id becomes `id`) and the record to
    /// store. The key is returned once; only its digest is kept.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the system random generator fails.
    pub fn issue(
        &self,
        id: impl Into<String>,
        principal: Principal,
        expires: Option<SystemTime>,
    ) -> Result<(Secret, ApiKeyRecord), Error> {
        let key = self.format.generate()?;
        let record = ApiKeyRecord::from_digest(
            id,
            principal,
            self.digest(key.expose()),
            SystemTime::now(),
            expires,
        );
        Ok((key, record))
    }

    /// Verifies a key now, synchronously (the store must answer synchronously).
    ///
    /// # Errors
    ///
    /// An [`ApiKeyError`]. A store that fails or answers asynchronously is reported
    /// as [`ApiKeyError::Unknown`] here; the [`IdentityVerifier`] impl fails closed
    /// (`503`) on store failures and awaits asynchronous stores.
    pub fn verify_key(&self, key: &str) -> Result<Principal, ApiKeyError> {
        let digest = self.precheck(key)?;
        match self.store.find(&digest).into_ready() {
            Ok(Ok(rec)) => self.finish(key, rec.as_deref(), SystemTime::now()),
            _ => Err(ApiKeyError::Unknown),
        }
    }

    fn precheck(&self, key: &str) -> Result<[u8; 32], ApiKeyError> {
        self.format.check(key).map_err(ApiKeyError::Format)?;
        Ok(self.digest(key))
    }

    fn finish(
        &self,
        key: &str,
        record: Option<&ApiKeyRecord>,
        now: SystemTime,
    ) -> Result<Principal, ApiKeyError> {
        let rec = record.ok_or(ApiKeyError::Unknown)?;
        // Constant-time comparison of the stored digest with the presented key's.
        ring::hmac::verify(&self.hmac, key.as_bytes(), &rec.digest)
            .map_err(|_| ApiKeyError::Unknown)?;
        if rec.revoked {
            return Err(ApiKeyError::Revoked);
        }
        if rec.expires.is_some_and(|e| now >= e) {
            return Err(ApiKeyError::Expired);
        }
        Ok(rec.principal.clone())
    }

    pub(crate) fn verify_step<'a>(
        &'a self,
        key: &'a str,
    ) -> Step<'a, Result<Principal, StageError>> {
        let reject = |e: ApiKeyError| -> StageError {
            Rejection::unauthenticated(format!("api_key: {}", e.code())).into()
        };
        let digest = match self.precheck(key) {
            Ok(d) => d,
            Err(e) => return Step::ready(Err(reject(e))),
        };
        let step = self.store.find_owned(digest);
        match step.into_ready() {
            Ok(found) => Step::ready(match found {
                Ok(rec) => self
                    .finish(key, rec.as_deref(), SystemTime::now())
                    .map_err(reject),
                Err(e) => Err(e.into()),
            }),
            Err(pending) => Step::future(async move {
                match pending.await {
                    Ok(rec) => self
                        .finish(key, rec.as_deref(), SystemTime::now())
                        .map_err(reject),
                    Err(e) => Err(e.into()),
                }
            }),
        }
    }
}

/// Lets a store be asked with an owned digest (the future may outlive the caller's
/// stack frame).
trait FindOwned {
    fn find_owned(&self, digest: [u8; 32]) -> Step<'_, Result<Option<Arc<ApiKeyRecord>>, Error>>;
}

impl<S: ApiKeyStore> FindOwned for S {
    fn find_owned(&self, digest: [u8; 32]) -> Step<'_, Result<Option<Arc<ApiKeyRecord>>, Error>> {
        let ready = {
            let step = self.find(&digest);
            step.into_ready().ok()
        };
        match ready {
            Some(v) => Step::ready(v),
            None => Step::future(async move { self.find(&digest).await }),
        }
    }
}

impl<S: ApiKeyStore> IdentityVerifier for ApiKeys<S> {
    fn verify<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>> {
        let c = request.credentials();
        let key = match (c.api_key(), c.bearer_token()) {
            (Some(k), None) => k,
            (None, Some(b)) if self.format.looks_like_key(b.expose()) => b,
            (Some(_), Some(_)) => {
                return Step::ready(Err(Rejection::unauthenticated(
                    "api_key: both an API key and a bearer token were presented",
                )
                .into()));
            }
            _ => return Step::ready(Err(Rejection::unauthenticated("api_key: no API key").into())),
        };
        if key.len() > 256 {
            return Step::ready(Err(Rejection::unauthenticated("api_key: malformed").into()));
        }
        self.verify_step(key.expose())
    }

    fn name(&self) -> &str {
        "api_keys"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_valid() {
        let f = ApiKeyFormat::new("igk").unwrap();
        let a = f.generate().unwrap();
        let b = f.generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(f.check(a.expose()).is_ok());
        assert_eq!(f.check("igk_short"), Err(ApiKeyFormatError::Malformed));
        let wrong_prefix = a.expose().replacen("igk_", "xyz_", 1);
        assert_eq!(f.check(&wrong_prefix), Err(ApiKeyFormatError::Malformed));
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let f = ApiKeyFormat::new("igk").unwrap();
        let key = f.generate().unwrap();
        let k = key.expose();
        for i in 4..k.len() {
            let orig = k.as_bytes()[i];
            let sub = if orig == b'a' { 'b' } else { 'a' };
            let mut typo = k.to_owned();
            typo.replace_range(i..=i, &sub.to_string());
            assert!(f.check(&typo).is_err(), "typo at {i} accepted");
        }
    }
}
