//! Signed receipts: output provenance that downstream systems verify.
//!
//! For each admitted and validated answer, a guard built with
//! [`GuardBuilder::receipts`](crate::GuardBuilder::receipts) issues a compact JWS
//! (EdDSA, with a key id) binding the request id, the principal, its tenant, the
//! model, the policy version, SHA-256 digests of the admitted input and of the text
//! the caller receives and of the tool calls it receives (when there are any), the
//! output verdict with a findings summary, and the time.
//! ([`CheckedResponse::receipt`](crate::CheckedResponse::receipt); for streams,
//! [`StreamEnd::receipt`](crate::StreamEnd::receipt).)
//!
//! A downstream system (an approval workflow, a ticketing bot) verifies the receipt
//! and the digest of the text it received with a [`ReceiptVerifier`], so it trusts
//! who asked and what was checked, not the text alone. Verification rejects a wrong
//! key or algorithm, a bad signature, an expired receipt and any digest mismatch.
//!
//! The signing key is an Ed25519 [`AuditSigningKey`]; use one dedicated to receipts.
//!
//! ```
//! use inference_guard::audit::AuditSigningKey;
//! use inference_guard::receipt::{ReceiptSigner, ReceiptVerifier, ReceiptError};
//! use inference_guard::*;
//!
//! let key = AuditSigningKey::generate("receipts-2026-11")?;
//! let verifier = ReceiptVerifier::new([key.public_key()]);
//! let mut b = InferenceGuard::builder();
//! b.allow_anonymous().authorize_all().audit_sink(NoopSink)
//!     .receipts(ReceiptSigner::new(key)).policy_version("2026-11-27.1");
//! let guard = b.build()?;
//! let checked = guard
//!     .check_request(GuardRequest::new("m").with_message(Role::User, "Approve invoice 42?"))?
//!     .check_response(GuardResponse::new("Invoice 42 is within budget."))?;
//! let receipt = checked.receipt().unwrap();
//!
//! let r = verifier.verify(receipt, b"Invoice 42 is within budget.")?;
//! assert_eq!((r.model(), r.policy_version(), r.verdict()), ("m", "2026-11-27.1", "passed"));
//! assert_eq!(verifier.verify(receipt, b"Invoice 42 is approved.").unwrap_err(), ReceiptError::DigestMismatch);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::codec;

use crate::audit::{AuditPublicKey, AuditSigningKey};

/// The `typ` of a receipt's JWS header.
pub const RECEIPT_TYPE: &str = "inference-receipt+jws";
/// Receipts longer than this are refused unread.
const MAX_RECEIPT: usize = 16 * 1024;

/// Signs receipts; give it to [`GuardBuilder::receipts`](crate::GuardBuilder::receipts).
#[derive(Clone)]
pub struct ReceiptSigner {
    key: Arc<AuditSigningKey>,
    ttl: Duration,
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("kid", &self.key.kid())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl ReceiptSigner {
    /// A signer with `key`; receipts are valid for a day by default.
    pub fn new(key: AuditSigningKey) -> Self {
        Self {
            key: Arc::new(key),
            ttl: Duration::from_secs(86_400),
        }
    }

    /// How long receipts are valid.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The public key, for verifiers.
    pub fn public_key(&self) -> AuditPublicKey {
        self.key.public_key()
    }

    /// Signs claims (an object) as a compact JWS.
    pub(crate) fn sign_claims(&self, mut claims: Value, now: SystemTime) -> String {
        let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        claims["iat"] = json!(iat);
        claims["exp"] = json!(iat.saturating_add(self.ttl.as_secs()));
        let header = json!({"alg": "EdDSA", "typ": RECEIPT_TYPE, "kid": self.key.kid()});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign_bytes(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// SHA-256 of `bytes` as `sha256:` and lowercase hex, as receipts carry digests.
///
/// ```
/// assert!(inference_guard::receipt::digest(b"").starts_with("sha256:e3b0c442"));
/// ```
pub fn digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        crate::codec::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

/// The digest of the tool calls an answer carries, as receipts bind them: SHA-256
/// of the JSON array of `[name, arguments]` pairs in order (`arguments` as the
/// string the model produced).
///
/// ```
/// use inference_guard::ToolCall;
/// use inference_guard::receipt::tool_calls_digest;
/// let calls = [ToolCall::new("c1", "refund", r#"{"order": 42}"#)];
/// assert_eq!(tool_calls_digest(&calls), tool_calls_digest(&calls.clone()));
/// assert_ne!(tool_calls_digest(&calls), tool_calls_digest(&[]));
/// ```
pub fn tool_calls_digest(calls: &[crate::ToolCall]) -> String {
    let pairs: Vec<[&str; 2]> = calls.iter().map(|c| [c.name(), c.arguments()]).collect();
    digest(serde_json::to_string(&pairs).unwrap_or_default().as_bytes())
}

reason_codes! {
    /// Why a receipt was refused. [`code`](Self::code) is stable: `malformed`,
    /// `algorithm`, `unknown_key`, `signature`, `expired`, `digest_mismatch`.
    pub enum ReceiptError {
        /// Not a well-formed receipt (segments, encoding, JSON, claims).
        Malformed = "malformed": "the receipt is malformed",
        /// Not EdDSA, or not a receipt (`typ`).
        Algorithm = "algorithm": "the receipt is not an EdDSA inference receipt",
        /// No key with its key id.
        UnknownKey = "unknown_key": "the receipt's key is unknown",
        /// The signature does not verify.
        Signature = "signature": "the receipt's signature does not verify",
        /// Past its expiry (or issued in the future).
        Expired = "expired": "the receipt has expired",
        /// The text does not have the digest the receipt binds.
        DigestMismatch = "digest_mismatch": "the text does not match the receipt",
    }
}

/// A verified receipt's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    kid: String,
    request_id: String,
    principal: String,
    tenant: Option<String>,
    model: String,
    policy_version: String,
    input_digest: String,
    output_digest: String,
    tool_calls_digest: Option<String>,
    verdict: String,
    input_findings: BTreeMap<String, u64>,
    output_findings: BTreeMap<String, u64>,
    issued_at: u64,
    expires_at: u64,
}

impl Receipt {
    /// The digest of the tool calls the answer carried ([`tool_calls_digest`]),
    /// when it had any.
    pub fn tool_calls_digest(&self) -> Option<&str> {
        self.tool_calls_digest.as_deref()
    }

    /// The signing key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The request's id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
    /// Who asked (`anonymous` when the guard allows anonymous callers).
    pub fn principal(&self) -> &str {
        &self.principal
    }
    /// Its tenant.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
    /// The model asked for.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The guard's policy version.
    pub fn policy_version(&self) -> &str {
        &self.policy_version
    }
    /// The digest of the admitted input (see [`input_digest`]).
    pub fn input_digest(&self) -> &str {
        &self.input_digest
    }
    /// The digest of the answer's text as the caller received it.
    pub fn output_digest(&self) -> &str {
        &self.output_digest
    }
    /// The output verdict: `passed`, `flagged`, `redacted` or `shadowed`.
    pub fn verdict(&self) -> &str {
        &self.verdict
    }
    /// Input findings by category.
    pub fn input_findings(&self) -> &BTreeMap<String, u64> {
        &self.input_findings
    }
    /// Output findings by category.
    pub fn output_findings(&self) -> &BTreeMap<String, u64> {
        &self.output_findings
    }
    /// Issue time, Unix seconds.
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }
    /// Expiry, Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// The digest of an admitted request's messages, as receipts bind it: SHA-256 over
/// each message's role, a unit separator (`0x1f`), its content and a record
/// separator (`0x1e`).
///
/// ```
/// # use inference_guard::{GuardRequest, Role};
/// let r = GuardRequest::new("m").with_message(Role::User, "hi");
/// assert_eq!(inference_guard::receipt::input_digest(&r), inference_guard::receipt::digest(b"user\x1fhi\x1e"));
/// ```
pub fn input_digest(request: &crate::GuardRequest) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for m in request.messages() {
        ctx.update(m.role().as_str().as_bytes());
        ctx.update(&[0x1f]);
        ctx.update(m.content().as_bytes());
        ctx.update(&[0x1e]);
    }
    format!("sha256:{}", crate::codec::hex(ctx.finish().as_ref()))
}

/// Verifies receipts with a set of public keys.
#[derive(Clone, Debug)]
pub struct ReceiptVerifier {
    keys: Vec<AuditPublicKey>,
    leeway: Duration,
}

fn b64(seg: &str) -> Result<Vec<u8>, ReceiptError> {
    codec::b64url(seg).ok_or(ReceiptError::Malformed)
}

/// A segment as a strict JSON object: the parser JWTs are read with (a duplicate
/// member name is malformed, not "the last one wins").
fn object(seg: &str) -> Result<Map<String, Value>, ReceiptError> {
    codec::jws_object(seg).map_err(|_| ReceiptError::Malformed)
}

fn counts(v: Option<&Value>) -> Result<BTreeMap<String, u64>, ReceiptError> {
    match v {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, n)| {
                n.as_u64()
                    .map(|n| (k.clone(), n))
                    .ok_or(ReceiptError::Malformed)
            })
            .collect(),
        Some(_) => Err(ReceiptError::Malformed),
    }
}

impl ReceiptVerifier {
    /// A verifier trusting `keys` (matched by key id), with 60 s of clock leeway.
    pub fn new(keys: impl IntoIterator<Item = AuditPublicKey>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            leeway: Duration::from_secs(60),
        }
    }

    /// Verifies `receipt` and that `received` (the answer's text as received) has
    /// the digest it binds.
    ///
    /// # Errors
    ///
    /// A [`ReceiptError`] saying why the receipt is refused.
    pub fn verify(&self, receipt: &str, received: &[u8]) -> Result<Receipt, ReceiptError> {
        self.verify_at(receipt, received, SystemTime::now())
    }

    /// [`verify`](Self::verify) at a given time.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify).
    pub fn verify_at(
        &self,
        receipt: &str,
        received: &[u8],
        now: SystemTime,
    ) -> Result<Receipt, ReceiptError> {
        self.verify_answer_at(receipt, received, &[], now)
    }

    /// Verifies `receipt` for an answer with tool calls: the text as received and
    /// the calls as received must both have the digests it binds. [`verify`]
    /// refuses a receipt that binds tool calls, so that a tool-call answer is never
    /// accepted on its text alone.
    ///
    /// [`verify`]: Self::verify
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify).
    pub fn verify_answer(
        &self,
        receipt: &str,
        text: &[u8],
        tool_calls: &[crate::ToolCall],
    ) -> Result<Receipt, ReceiptError> {
        self.verify_answer_at(receipt, text, tool_calls, SystemTime::now())
    }

    /// [`verify_answer`](Self::verify_answer) at a given time.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify).
    pub fn verify_answer_at(
        &self,
        receipt: &str,
        text: &[u8],
        tool_calls: &[crate::ToolCall],
        now: SystemTime,
    ) -> Result<Receipt, ReceiptError> {
        let r = self.verify_signature_at(receipt, now)?;
        if digest(text) != r.output_digest {
            return Err(ReceiptError::DigestMismatch);
        }
        let calls = (!tool_calls.is_empty()).then(|| tool_calls_digest(tool_calls));
        if calls != r.tool_calls_digest {
            return Err(ReceiptError::DigestMismatch);
        }
        Ok(r)
    }

    /// Verifies the receipt alone (signature, key, type and time), without a text.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify), without `DigestMismatch`.
    pub fn verify_signature_at(
        &self,
        receipt: &str,
        now: SystemTime,
    ) -> Result<Receipt, ReceiptError> {
        if receipt.len() > MAX_RECEIPT {
            return Err(ReceiptError::Malformed);
        }
        let Some((h, c, s)) = codec::jws_segments(receipt) else {
            return Err(ReceiptError::Malformed);
        };
        let header = object(h)?;
        if header.get("alg").and_then(Value::as_str) != Some("EdDSA")
            || header.get("typ").and_then(Value::as_str) != Some(RECEIPT_TYPE)
            || header.contains_key("crit")
        {
            return Err(ReceiptError::Algorithm);
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(ReceiptError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid() == kid)
            .ok_or(ReceiptError::UnknownKey)?;
        let sig = b64(s)?;
        let signing_input = &receipt[..h.len() + 1 + c.len()];
        if !key.verifies(signing_input.as_bytes(), &sig) {
            return Err(ReceiptError::Signature);
        }
        let claims = object(c)?;
        let str_claim = |k: &str| -> Result<String, ReceiptError> {
            claims
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(ReceiptError::Malformed)
        };
        if claims.get("v").and_then(Value::as_u64) != Some(1) {
            return Err(ReceiptError::Malformed);
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or(ReceiptError::Malformed)?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(ReceiptError::Malformed)?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let leeway = self.leeway.as_secs();
        if now >= exp.saturating_add(leeway) || iat > now.saturating_add(leeway) {
            return Err(ReceiptError::Expired);
        }
        let findings = claims.get("findings");
        Ok(Receipt {
            kid: kid.to_owned(),
            request_id: str_claim("rid")?,
            principal: str_claim("sub")?,
            tenant: claims.get("ten").and_then(Value::as_str).map(str::to_owned),
            model: str_claim("model")?,
            policy_version: str_claim("pol")?,
            input_digest: str_claim("in")?,
            output_digest: str_claim("out")?,
            tool_calls_digest: match claims.get("calls") {
                None => None,
                Some(Value::String(d)) => Some(d.clone()),
                Some(_) => return Err(ReceiptError::Malformed),
            },
            verdict: str_claim("verdict")?,
            input_findings: counts(findings.and_then(|f| f.get("input")))?,
            output_findings: counts(findings.and_then(|f| f.get("output")))?,
            issued_at: iat,
            expires_at: exp,
        })
    }
}

/// Findings by category, for a receipt.
pub(crate) fn summary(findings: &[crate::Finding]) -> Value {
    let mut m: BTreeMap<&str, u64> = BTreeMap::new();
    for f in findings {
        *m.entry(f.category().as_str()).or_default() += 1;
    }
    json!(m)
}
