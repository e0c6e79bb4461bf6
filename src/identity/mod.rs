//! Identity for machine callers: strict JWT verification, checksummed API keys, and
//! an [`Authenticator`] that accepts either.
//!
//! Stolen, long-lived and over-privileged machine credentials are the commonest way in
//! (OWASP Non-Human Identity Top 10: NHI2, NHI4, NHI5, NHI7). The verifiers here
//! accept short-lived tokens from configured issuers only, and API keys that are
//! checksummed, stored as keyed digests, revocable and expiring.
//!
//! Every credential problem is a `401` with `WWW-Authenticate: Bearer realm=...,
//! error="invalid_token"`; the precise reason code ([`TokenError::code`],
//! [`ApiKeyError::code`]) goes to the audit record only. Credentials never appear in
//! `Debug`, `Display`, errors or audit records.
//!
//! ```
//! use inference_guard::identity::{Algorithm, ApiKeyFormat, ApiKeys, Authenticator, InMemoryKeyStore, JwtVerifier, KeySet};
//!
//! let mut keys = KeySet::new();
//! keys.add_hmac("k1", Algorithm::HS256, &[9u8; 32])?;
//! let jwt = JwtVerifier::builder().issuer("https://issuer.example").audience("inference").keys(keys).build()?;
//! let api_keys = ApiKeys::new(&[1u8; 32], ApiKeyFormat::new("igk")?, InMemoryKeyStore::new())?;
//! let auth = Authenticator::new().jwt(jwt).api_keys(api_keys);
//! # let _ = auth;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod api_key;
mod jwt;
mod keys;
#[cfg(feature = "redis")]
mod shared;

use std::fmt;

pub use api_key::{
    ApiKeyError, ApiKeyFormat, ApiKeyFormatError, ApiKeyRecord, ApiKeyStore, ApiKeys,
    InMemoryKeyStore,
};
pub use jwt::{JwtVerifier, JwtVerifierBuilder, ReplayStore, TokenError};
pub use keys::{Algorithm, KeySet};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use shared::{RedisReplayCache, RedisRevocations, RevocationCheckedStore};

use crate::Rejection;
use crate::error::StageError;
use crate::principal::Principal;
use crate::request::GuardRequest;
use crate::stage::IdentityVerifier;
use crate::step::Step;

/// Accepts workload tokens and API keys through one identity stage.
///
/// - An API key in `x-api-key`, or in `Authorization: Bearer` when it has the API-key
///   format (OpenAI clients send keys that way), goes to the API-key verifier.
/// - Any other bearer token goes to the JWT verifier.
/// - Both an `x-api-key` and a bearer token: rejected (ambiguous credentials).
/// - A client-certificate identity alone: rejected unless
///   [`client_certificates`](Self::client_certificates) allows it.
pub struct Authenticator<S = InMemoryKeyStore> {
    jwt: Vec<JwtVerifier>,
    api_keys: Option<ApiKeys<S>>,
    client_cert_domains: Vec<String>,
}

impl<S> fmt::Debug for Authenticator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.len())
            .field("api_keys", &self.api_keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Authenticator<InMemoryKeyStore> {
    fn default() -> Self {
        Self::new()
    }
}

impl Authenticator<InMemoryKeyStore> {
    /// An authenticator that accepts nothing until verifiers are added.
    pub fn new() -> Self {
        Self {
            jwt: Vec::new(),
            api_keys: None,
            client_cert_domains: Vec::new(),
        }
    }
}

impl<S: ApiKeyStore> Authenticator<S> {
    /// Accepts JWTs verified by `verifier`. Call it once per verifier: a token
    /// goes to the verifier that lists its `iss` (with one verifier, to that one).
    #[must_use]
    pub fn jwt(mut self, verifier: JwtVerifier) -> Self {
        self.jwt.push(verifier);
        self
    }

    /// Accepts API keys verified by `keys`.
    #[must_use]
    pub fn api_keys<T: ApiKeyStore>(self, keys: ApiKeys<T>) -> Authenticator<T> {
        Authenticator {
            jwt: self.jwt,
            api_keys: Some(keys),
            client_cert_domains: self.client_cert_domains,
        }
    }

    /// Accepts client-certificate identities (handed in by a TLS-terminating adapter
    /// that verified the certificate) that are SPIFFE IDs in `trust_domain`. The
    /// principal gets no scopes: grant them by id in the authorizer.
    #[must_use]
    pub fn client_certificates(mut self, trust_domain: impl Into<String>) -> Self {
        self.client_cert_domains.push(trust_domain.into());
        self
    }
}

impl<S: ApiKeyStore> IdentityVerifier for Authenticator<S> {
    fn verify<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>> {
        let c = request.credentials();
        let reject = |d: &'static str| Step::ready(Err(Rejection::unauthenticated(d).into()));
        match (
            c.bearer_token(),
            c.api_key(),
            &self.api_keys,
            self.jwt.as_slice(),
        ) {
            (Some(_), Some(_), _, _) => reject("ambiguous credentials: bearer token and API key"),
            (None, Some(_), Some(keys), _) => IdentityVerifier::verify(keys, request),
            (None, Some(_), None, _) => reject("API keys are not accepted"),
            (Some(b), None, Some(keys), _) if keys.format().looks_like_key(b.expose()) => {
                IdentityVerifier::verify(keys, request)
            }
            (Some(_), None, _, [jwt]) => IdentityVerifier::verify(jwt, request),
            (Some(_), None, _, []) => reject("bearer tokens are not accepted"),
            (Some(b), None, _, several) => {
                let iss = jwt::peek_issuer(b.expose());
                match several
                    .iter()
                    .find(|v| iss.as_deref().is_some_and(|i| v.accepts_issuer(i)))
                {
                    Some(v) => IdentityVerifier::verify(v, request),
                    None => reject("token from an issuer that is not configured"),
                }
            }
            (None, None, _, _) => match c.client_certificate_identity() {
                Some(id) => {
                    let ok = jwt::spiffe_trust_domain(id)
                        .is_some_and(|td| self.client_cert_domains.iter().any(|d| d == td));
                    if ok {
                        Step::ready(Ok(Principal::builder(
                            id,
                            crate::CredentialKind::ClientCertificate,
                        )
                        .build()))
                    } else {
                        reject("client certificate identity not accepted")
                    }
                }
                None => reject("no credentials"),
            },
        }
    }

    fn name(&self) -> &str {
        "authenticator"
    }
}
