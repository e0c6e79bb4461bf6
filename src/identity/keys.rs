//! Verification keys: algorithms, JWKS (RFC 7517), PEM and DER public keys.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

use crate::error::BuildError;

/// A JWS signature algorithm (RFC 7518). Each configured key is bound to exactly one.
///
/// `none` is not an algorithm here: a token that names it is always rejected.
///
/// ```
/// use inference_guard::identity::Algorithm;
/// assert_eq!(Algorithm::from_name("ES256"), Some(Algorithm::ES256));
/// assert_eq!(Algorithm::from_name("es256"), None); // names are case-sensitive
/// assert_eq!(Algorithm::from_name("none"), None);
/// ```
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA with P-256 and SHA-256.
    ES256,
    /// ECDSA with P-384 and SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
}

impl Algorithm {
    /// Parses a JWS `alg` name (case-sensitive, as RFC 7515 requires).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" => Self::EdDSA,
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            _ => return None,
        })
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
        }
    }

    fn family(self) -> Family {
        match self {
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                Family::Rsa
            }
            Self::ES256 => Family::P256,
            Self::ES384 => Family::P384,
            Self::EdDSA => Family::Ed25519,
            Self::HS256 | Self::HS384 | Self::HS512 => Family::Hmac,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
    Hmac,
}

#[derive(Clone)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Point(Vec<u8>),
    Hmac(ring::hmac::Key),
}

/// One verification key, bound to one algorithm, with an optional key id.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    /// The one issuer this key signs for, when bound.
    pub(crate) issuer: Option<std::sync::Arc<str>>,
    pub(crate) alg: Algorithm,
    material: Material,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Verifies `sig` over `msg`. Constant time for HMAC.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use Algorithm as A;
        match &self.material {
            Material::Hmac(key) => ring::hmac::verify(key, msg, sig).is_ok(),
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match self.alg {
                    A::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    A::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    A::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    A::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    A::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    A::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Material::Point(point) => {
                let alg: &dyn signature::VerificationAlgorithm = match self.alg {
                    A::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    A::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                    A::EdDSA => &signature::ED25519,
                    _ => return false,
                };
                UnparsedPublicKey::new(alg, point).verify(msg, sig).is_ok()
            }
        }
    }
}

/// The keys a [`JwtVerifier`](super::JwtVerifier) trusts, each bound to one algorithm
/// and selected by `kid`.
///
/// Keys come only from here: a token's `jku`, `x5u`, `jwk` or `x5c` header is never
/// followed. Build a key set from a JWKS document, from PEM or DER public keys, or from
/// HMAC secrets.
///
/// ```
/// use inference_guard::identity::{Algorithm, KeySet};
///
/// let mut keys = KeySet::new();
/// keys.add_hmac("k1", Algorithm::HS256, &[7u8; 32])?;
/// assert_eq!(keys.len(), 1);
/// assert!(KeySet::new().add_hmac("short", Algorithm::HS256, b"too short").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub(crate) keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// An empty key set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Binds every key of the set to `issuer`: a token whose `iss` is another
    /// issuer is refused (`key_issuer_mismatch`) even when one of these keys signed
    /// it. A verifier with several issuers needs every key bound
    /// ([`JwtVerifierBuilder::issuer_keys`](super::JwtVerifierBuilder::issuer_keys)).
    #[must_use]
    pub fn bound_to(mut self, issuer: &str) -> Self {
        let iss: std::sync::Arc<str> = issuer.into();
        for k in &mut self.keys {
            k.issuer = Some(iss.clone());
        }
        self
    }

    /// The key ids, in order.
    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref())
    }

    fn push(&mut self, key: VerifyingKey) -> Result<&mut Self, BuildError> {
        if let Some(kid) = &key.kid {
            if self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                return Err(BuildError::invalid(
                    "keys.kid",
                    format!("duplicate key id {kid:?}"),
                ));
            }
        }
        self.keys.push(key);
        Ok(self)
    }

    /// Parses a JWKS document (`{"keys": [...]}`). Keys whose `use` is not `sig`, or
    /// whose `key_ops` lack `verify`, are skipped. Every other key must be usable.
    ///
    /// EC and OKP keys may omit `alg` (it follows from the curve). RSA and `oct` keys
    /// must name their `alg`, since one key must not serve several algorithms; use
    /// [`from_jwks_assuming`](Self::from_jwks_assuming) for an issuer whose JWKS omits it.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the key that is malformed or unsupported.
    pub fn from_jwks(json: &str) -> Result<Self, BuildError> {
        Self::parse_jwks(json, None)
    }

    /// As [`from_jwks`](Self::from_jwks), binding RSA keys that name no `alg` to
    /// `rsa_alg`.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the key that is malformed or unsupported.
    pub fn from_jwks_assuming(json: &str, rsa_alg: Algorithm) -> Result<Self, BuildError> {
        if rsa_alg.family() != Family::Rsa {
            return Err(BuildError::invalid(
                "keys.algorithm",
                format!("{rsa_alg} is not an RSA algorithm"),
            ));
        }
        Self::parse_jwks(json, Some(rsa_alg))
    }

    fn parse_jwks(json: &str, rsa_default: Option<Algorithm>) -> Result<Self, BuildError> {
        let doc: Value = serde_json::from_str(json)
            .map_err(|e| BuildError::invalid("jwks", format!("not JSON: {e}")).with_source(e))?;
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err(BuildError::invalid("jwks.keys", "no \"keys\" array"));
        };
        let mut set = Self::new();
        for (i, jwk) in keys.iter().enumerate() {
            let name = jwk
                .get("kid")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{i}"), |k| format!("{k:?}"));
            let err = |m: &str| BuildError::invalid_owned(format!("jwks.keys[{name}]"), m);
            if jwk.get("use").is_some_and(|u| u != "sig") {
                continue;
            }
            if let Some(ops) = jwk.get("key_ops") {
                let ops = ops
                    .as_array()
                    .ok_or_else(|| err("key_ops is not an array"))?;
                if !ops.iter().any(|o| o == "verify") {
                    continue;
                }
            }
            let kid = match jwk.get("kid") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(err("kid is not a string")),
            };
            let s = |field: &str| -> Result<Vec<u8>, BuildError> {
                let v = jwk
                    .get(field)
                    .and_then(Value::as_str)
                    .ok_or_else(|| err(&format!("missing {field}")))?;
                URL_SAFE_NO_PAD
                    .decode(v)
                    .map_err(|_| err(&format!("{field} is not canonical base64url")))
            };
            let alg = match jwk.get("alg") {
                None => None,
                Some(Value::String(a)) => Some(
                    Algorithm::from_name(a)
                        .ok_or_else(|| err(&format!("unsupported alg {a:?}")))?,
                ),
                Some(_) => return Err(err("alg is not a string")),
            };
            let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
            let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
            let key = match kty {
                "RSA" => {
                    let alg = alg.or(rsa_default).ok_or_else(|| {
                        err("RSA key names no alg; use from_jwks_assuming to bind one")
                    })?;
                    rsa_key(kid, alg, strip_zeros(s("n")?), strip_zeros(s("e")?))
                        .map_err(|m| err(&m))?
                }
                "EC" => {
                    let (implied, len) = match crv {
                        "P-256" => (Algorithm::ES256, 32),
                        "P-384" => (Algorithm::ES384, 48),
                        _ => return Err(err(&format!("unsupported curve {crv:?}"))),
                    };
                    let alg = alg.unwrap_or(implied);
                    if alg != implied {
                        return Err(err(&format!("alg {alg} does not match curve {crv}")));
                    }
                    let (x, y) = (s("x")?, s("y")?);
                    if x.len() != len || y.len() != len {
                        return Err(err("coordinates have the wrong length"));
                    }
                    let mut point = Vec::with_capacity(1 + 2 * len);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    VerifyingKey {
                        kid,
                        issuer: None,
                        alg,
                        material: Material::Point(point),
                    }
                }
                "OKP" => {
                    if crv != "Ed25519" {
                        return Err(err(&format!("unsupported curve {crv:?}")));
                    }
                    let alg = alg.unwrap_or(Algorithm::EdDSA);
                    if alg != Algorithm::EdDSA {
                        return Err(err(&format!("alg {alg} does not match Ed25519")));
                    }
                    let x = s("x")?;
                    if x.len() != 32 {
                        return Err(err("Ed25519 key is not 32 bytes"));
                    }
                    VerifyingKey {
                        kid,
                        issuer: None,
                        alg,
                        material: Material::Point(x),
                    }
                }
                "oct" => {
                    let alg = alg.ok_or_else(|| err("oct key names no alg"))?;
                    hmac_key(kid, alg, &s("k")?).map_err(|m| err(&m))?
                }
                other => return Err(err(&format!("unsupported kty {other:?}"))),
            };
            set.push(key)?;
        }
        Ok(set)
    }

    /// Adds an HMAC secret for `alg` (HS256, HS384 or HS512).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if `alg` is not an HMAC algorithm, the secret is shorter than
    /// the hash output (32, 48 or 64 bytes), or `kid` is already used.
    pub fn add_hmac(
        &mut self,
        kid: impl Into<String>,
        alg: Algorithm,
        secret: &[u8],
    ) -> Result<&mut Self, BuildError> {
        let key = hmac_key(Some(kid.into()), alg, secret)
            .map_err(|m| BuildError::invalid("keys.add_hmac", m))?;
        self.push(key)
    }

    /// Adds a public key in PEM: `PUBLIC KEY` (SubjectPublicKeyInfo) or
    /// `RSA PUBLIC KEY` (PKCS#1).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if the PEM is malformed, its key type does not fit `alg`, or
    /// `kid` is already used.
    pub fn add_pem(
        &mut self,
        kid: impl Into<String>,
        alg: Algorithm,
        pem: &str,
    ) -> Result<&mut Self, BuildError> {
        let (label, der) = pem_decode(pem).map_err(|m| BuildError::invalid("keys.add_pem", m))?;
        let key = match label.as_str() {
            "PUBLIC KEY" => spki_key(Some(kid.into()), alg, &der),
            "RSA PUBLIC KEY" => match pkcs1_rsa(&der) {
                Some((n, e)) => rsa_key(Some(kid.into()), alg, n, e),
                None => Err("malformed RSA public key".to_owned()),
            },
            other => Err(format!("unsupported PEM label {other:?}")),
        }
        .map_err(|m| BuildError::invalid("keys.add_pem", m))?;
        self.push(key)
    }

    /// Adds a public key as DER SubjectPublicKeyInfo.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if the DER is malformed, its key type does not fit `alg`, or
    /// `kid` is already used.
    pub fn add_der(
        &mut self,
        kid: impl Into<String>,
        alg: Algorithm,
        spki: &[u8],
    ) -> Result<&mut Self, BuildError> {
        let key = spki_key(Some(kid.into()), alg, spki)
            .map_err(|m| BuildError::invalid("keys.add_der", m))?;
        self.push(key)
    }

    /// Adds a raw public key: an uncompressed EC point (`04 || x || y`) for ES256 and
    /// ES384, or the 32 bytes of an Ed25519 key.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if the key's length does not fit `alg`, or `kid` is used.
    pub fn add_raw_public_key(
        &mut self,
        kid: impl Into<String>,
        alg: Algorithm,
        key: &[u8],
    ) -> Result<&mut Self, BuildError> {
        let ok = match alg.family() {
            Family::P256 => key.len() == 65 && key[0] == 4,
            Family::P384 => key.len() == 97 && key[0] == 4,
            Family::Ed25519 => key.len() == 32,
            _ => false,
        };
        if !ok {
            return Err(BuildError::invalid(
                "keys.raw_public_key",
                format!("raw key does not fit {alg}"),
            ));
        }
        self.push(VerifyingKey {
            issuer: None,
            kid: Some(kid.into()),
            alg,
            material: Material::Point(key.to_vec()),
        })
    }

    /// Adds an RSA public key from its modulus and exponent (big-endian).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if `alg` is not an RSA algorithm, the modulus is outside 2048
    /// to 8192 bits, or `kid` is already used.
    pub fn add_rsa_components(
        &mut self,
        kid: impl Into<String>,
        alg: Algorithm,
        n: &[u8],
        e: &[u8],
    ) -> Result<&mut Self, BuildError> {
        let key = rsa_key(
            Some(kid.into()),
            alg,
            strip_zeros(n.to_vec()),
            strip_zeros(e.to_vec()),
        )
        .map_err(|m| BuildError::invalid("keys.add_rsa_components", m))?;
        self.push(key)
    }

    /// Finds the key for a token: by `kid` when the token names one, otherwise the
    /// single key of the token's algorithm.
    pub(crate) fn select(&self, kid: Option<&str>) -> Selection<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) => Selection::Found(k),
                None => Selection::Unknown,
            },
            None => {
                if self.keys.len() == 1 {
                    Selection::Found(&self.keys[0])
                } else {
                    Selection::Ambiguous
                }
            }
        }
    }
}

pub(crate) enum Selection<'a> {
    Found(&'a VerifyingKey),
    Unknown,
    Ambiguous,
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let z = v.iter().take_while(|b| **b == 0).count();
    v.drain(..z);
    v
}

fn hmac_key(kid: Option<String>, alg: Algorithm, secret: &[u8]) -> Result<VerifyingKey, String> {
    let (ring_alg, min) = match alg {
        Algorithm::HS256 => (ring::hmac::HMAC_SHA256, 32),
        Algorithm::HS384 => (ring::hmac::HMAC_SHA384, 48),
        Algorithm::HS512 => (ring::hmac::HMAC_SHA512, 64),
        other => return Err(format!("{other} is not an HMAC algorithm")),
    };
    if secret.len() < min {
        return Err(format!(
            "{alg} secret has {} bytes; at least {min} (the hash output) are required",
            secret.len()
        ));
    }
    Ok(VerifyingKey {
        kid,
        issuer: None,
        alg,
        material: Material::Hmac(ring::hmac::Key::new(ring_alg, secret)),
    })
}

fn rsa_key(
    kid: Option<String>,
    alg: Algorithm,
    n: Vec<u8>,
    e: Vec<u8>,
) -> Result<VerifyingKey, String> {
    if alg.family() != Family::Rsa {
        return Err(format!("an RSA key cannot be used with {alg}"));
    }
    let bits = n.len() * 8;
    if !(2048..=8192).contains(&bits) || e.is_empty() || e.len() > 4 {
        return Err(format!(
            "RSA key of {bits} bits: 2048 to 8192 bits are accepted"
        ));
    }
    Ok(VerifyingKey {
        kid,
        issuer: None,
        alg,
        material: Material::Rsa { n, e },
    })
}

fn spki_key(kid: Option<String>, alg: Algorithm, der: &[u8]) -> Result<VerifyingKey, String> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let bad = || "malformed SubjectPublicKeyInfo".to_owned();
    let (spki, rest) = der_take(der, 0x30).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let (alg_id, rest) = der_take(spki, 0x30).ok_or_else(bad)?;
    let (bits, rest) = der_take(rest, 0x03).ok_or_else(bad)?;
    if !rest.is_empty() || bits.first() != Some(&0) {
        return Err(bad());
    }
    let key = &bits[1..];
    let (oid, params) = der_take(alg_id, 0x06).ok_or_else(bad)?;
    let family = if oid == RSA {
        Family::Rsa
    } else if oid == EC {
        let (curve, _) = der_take(params, 0x06).ok_or_else(bad)?;
        if curve == P256 {
            Family::P256
        } else if curve == P384 {
            Family::P384
        } else {
            return Err("unsupported EC curve".into());
        }
    } else if oid == ED25519 {
        Family::Ed25519
    } else {
        return Err("unsupported key algorithm".into());
    };
    if family != alg.family() {
        return Err(format!("the key's type does not fit {alg}"));
    }
    match family {
        Family::Rsa => {
            let (n, e) = pkcs1_rsa(key).ok_or_else(bad)?;
            rsa_key(kid, alg, n, e)
        }
        Family::P256 | Family::P384 | Family::Ed25519 => {
            let want = match family {
                Family::P256 => 65,
                Family::P384 => 97,
                _ => 32,
            };
            if key.len() != want || (family != Family::Ed25519 && key[0] != 4) {
                return Err("public key has the wrong length or form".into());
            }
            Ok(VerifyingKey {
                kid,
                issuer: None,
                alg,
                material: Material::Point(key.to_vec()),
            })
        }
        Family::Hmac => Err(bad()),
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
fn pkcs1_rsa(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (seq, rest) = der_take(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (n, rest) = der_take(seq, 0x02)?;
    let (e, rest) = der_take(rest, 0x02)?;
    rest.is_empty()
        .then(|| (strip_zeros(n.to_vec()), strip_zeros(e.to_vec())))
}

/// Reads one DER element with `tag`; returns its contents and what follows.
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        if len < 0x80 {
            return None; // not the shortest form
        }
        len
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), String> {
    let pem = pem.trim();
    let first = pem.lines().next().unwrap_or("");
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or("not PEM: no BEGIN line")?;
    let end = format!("-----END {label}-----");
    let body_end = pem.find(&end).ok_or("not PEM: no matching END line")?;
    let body: String = pem[first.len()..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| "PEM body is not base64")?;
    Ok((label.to_owned(), der))
}

/// A shared, replaceable key set.
pub(crate) type SharedKeys = Arc<KeySet>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_must_be_minimal_and_in_range() {
        assert_eq!(
            der_take(&[0x02, 0x01, 0x05], 0x02),
            Some((&[5u8][..], &[][..]))
        );
        assert_eq!(der_take(&[0x02, 0x81, 0x01, 0x05], 0x02), None);
        assert_eq!(der_take(&[0x02, 0x05, 0x01], 0x02), None);
        assert_eq!(der_take(&[0x30, 0x01, 0x01], 0x02), None);
    }

    #[test]
    fn jwks_binds_algorithms_strictly() {
        let rsa_no_alg = r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#;
        assert!(
            KeySet::from_jwks(rsa_no_alg)
                .unwrap_err()
                .to_string()
                .contains("names no alg")
        );
        let ec_wrong = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES384","x":"","y":""}]}"#;
        assert!(
            KeySet::from_jwks(ec_wrong)
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        let enc_only = r#"{"keys":[{"kty":"oct","use":"enc","k":"AA"}]}"#;
        assert!(KeySet::from_jwks(enc_only).unwrap().is_empty());
        let short = r#"{"keys":[{"kty":"oct","alg":"HS256","kid":"h","k":"AAAA"}]}"#;
        assert!(
            KeySet::from_jwks(short)
                .unwrap_err()
                .to_string()
                .contains("at least 32")
        );
        let dup = format!(
            r#"{{"keys":[{{"kty":"oct","alg":"HS256","kid":"h","k":"{k}"}},{{"kty":"oct","alg":"HS256","kid":"h","k":"{k}"}}]}}"#,
            k = URL_SAFE_NO_PAD.encode([1u8; 32])
        );
        assert!(
            KeySet::from_jwks(&dup)
                .unwrap_err()
                .to_string()
                .contains("duplicate key id")
        );
    }
}
