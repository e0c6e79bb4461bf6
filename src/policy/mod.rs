//! A policy file: one TOML document that configures every built-in stage and builds
//! a guard (feature `policy`).
//!
//! Unknown fields are errors; a malformed file gets an error naming the line and
//! the field. Secrets are never in the file: it names the environment variables or
//! files that hold them (`*_env`, `*_file`), and API keys appear only as their keyed
//! digests.
//!
//! ```toml
//! version = "2026-11-27.1"          # bound into receipts and audit
//!
//! [identity]
//! allow_anonymous = false
//! api_key_prefix = "igk"
//! api_key_secret_env = "GUARD_API_KEY_SECRET"   # the HMAC key for key digests
//!
//! [[identity.api_keys]]
//! id = "key_reporting_01"
//! principal = "svc-reporting"
//! tenant = "acme"
//! scopes = ["chat"]
//! digest = "9f0c...64 hex digits"           # from `issue-key`, never the key
//!
//! [[identity.jwt]]
//! issuer = "https://idp.example.com"
//! audience = "inference"
//! jwks_file = "/etc/guard/jwks.json"
//!
//! [[grants]]
//! scopes = ["chat"]                 # or principals = ["svc-*"]
//! models = ["gpt-4o-mini", "llama-3.*"]
//! tools = ["search"]
//! stream = true
//! max_output_tokens = 2048
//!
//! [[rate_limits]]
//! name = "requests-per-principal"
//! unit = "requests"                 # or "tokens"
//! amount = 60
//! per = "minute"                    # "second", "minute" or "hour"
//! key_by = ["principal"]            # principal, tenant, model, route; [] for global
//!
//! [concurrency]
//! per_principal = 4
//!
//! [limits]
//! max_message_bytes = 65536
//!
//! [input]
//! redaction = "pseudonymize"        # mask, partial, remove, pseudonymize
//! scan_instructions = false         # heuristics on system/developer messages too
//! classifier = true                 # the learned classifier decides (false: rules only)
//! classifier_block = 0.9            # its block threshold (default: the calibrated one)
//! classifier_flag = 0.3             # its flag threshold, at or below block
//! # per category (prompt_injection, jailbreak, system_prompt_leak), over the above
//! classifier_thresholds = { jailbreak = { flag = 0.5, block = 0.95 } }
//! disable = ["jailbreak.hypothetical"]
//! history_cache = 8192              # messages whose findings are kept for the caller's next turn (0: off)
//!
//! [output]
//! allow_hosts = ["docs.example.com"]
//! html = "escape"                   # escape, strip, block
//! canary_env = "GUARD_CANARY"
//! reference_cache = 256             # system prompts whose six-word runs are kept per caller (0: off)
//!
//! [[actions]]
//! rule = "secret.*"
//! action = "block"                  # block, redact, flag
//!
//! [audit]
//! sink = "jsonl"                    # stdout, jsonl, chained, none
//! path = "/var/log/guard/audit.jsonl"
//!
//! [receipts]
//! signing_key_file = "/etc/guard/receipt.pk8"   # Ed25519 PKCS#8 (DER)
//! kid = "receipts-2026-11"
//!
//! [abuse]
//! enabled = true
//!
//! [redis]                           # state shared by replicas (feature redis;
//! url_env = "GUARD_REDIS_URL"       #   Policy::build_async); or url_file = ...
//! prefix = "ig"
//! timeout_ms = 250
//! rate_limits = true                # limits, budgets, concurrency on Redis
//! abuse = true                      # strikes and responses shared
//! replay = true                     # the JWT jti replay cache shared
//! revocations = true                # API-key revocations shared (Redis set)
//! revocation_refresh_ms = 1000      # the lag bound for revocations
//! fail_open = []                    # "rate_limits", "replay": else 503 when down
//!
//! [onnx]                            # a transformer classifier (feature onnx)
//! model = "/etc/guard/prompt-guard-2/model.onnx"
//! tokenizer = "/etc/guard/prompt-guard-2/tokenizer.json"
//! runtime = "/opt/onnxruntime/lib/libonnxruntime.so"   # default: ORT_DYLIB_PATH
//! labels = [{ index = 1, category = "prompt_injection", flag = 0.5, block = 0.9 }]
//! max_tokens = 512                  # per window; overlap = 64
//! workers = 2                       # queue = 8 (then 503); deadline_ms = 2000
//! uncertain_band = [0.054, 0.439]   # only texts the built-in classifier is unsure of
//! input = true                      # classify prompts; output = true: answers too
//! fail_open = false                 # a failing model fails the request closed (503)
//!
//! [http]                            # the HTTP exchange (Policy::exchange_config)
//! unknown_fields = "refuse"         # refuse (400 naming the field) or strip
//! operator_system_prompt_file = "/etc/guard/system-prompt.txt"  # injected first
//! pinned_system_prompt_sha256 = ["3b1f...64 hex digits"]        # exempt if sent
//! public_routes = ["GET /v1/models"]
//! max_choices = 4
//! max_body_bytes = 1048576
//! ```
//!
//! Several `[[identity.jwt]]` entries configure several issuers; each entry's keys
//! sign for its issuer only.
//!
//! ```
//! use inference_guard::policy::Policy;
//!
//! let p = Policy::from_toml("version = \"1\"\n[identity]\nallow_anonymous = true\n[[grants]]\nprincipals = [\"*\"]\nmodels = [\"demo-*\"]\n[audit]\nsink = \"none\"\n")?;
//! let guard = p.build()?;
//! # let _ = guard;
//! let err = Policy::from_toml("version = \"1\"\n[identity]\nalow_anonymous = true\n").unwrap_err();
//! assert!(err.to_string().contains("line 3") && err.to_string().contains("alow_anonymous"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::audit::{AuditSigningKey, ChainedLogSink, JsonLinesSink, NoopSink};
use crate::authz::{Grant, PolicyAuthorizer};
use crate::finding::{Action, Category};
use crate::guard::{GuardBuilder, InferenceGuard, RequestLimits};
use crate::identity::{
    ApiKeyFormat, ApiKeyRecord, ApiKeys, Authenticator, InMemoryKeyStore, JwtVerifier, KeySet,
};
use crate::output::{AnswerValidator, Canary, MarkupMode};
use crate::principal::{CredentialKind, Principal};
use crate::rate_limit::{InMemoryRateLimiter, KeyBy, Limit, Quota};
use crate::receipt::ReceiptSigner;
use crate::respond::AbuseMonitor;
use crate::scan::{Redaction, Scanner};

mod abuse;
mod audit;
mod grants;
mod http;
mod identity;
mod input;
mod limits;
mod onnx;
mod output;
mod shared;

use abuse::*;
use audit::*;
use grants::*;
use http::*;
use identity::*;
use input::*;
use limits::*;
use onnx::*;
use output::*;
use shared::*;

/// Why a policy was refused: the line and field for a malformed file, the field
/// path for a value that does not make sense, the variable or file for a secret
/// that could not be read. [`field`](Self::field) names the setting (`grants`,
/// `identity.api_key_secret`, `rate_limits`), [`line`](Self::line) the place in the
/// file, and [`source`](std::error::Error::source) the error beneath (a
/// [`BuildError`](crate::BuildError) with its own field, an I/O error). A value from
/// the file is never quoted (it may be a secret put in the wrong place).
///
/// ```
/// use inference_guard::policy::Policy;
///
/// let e = Policy::from_toml("version = \"1\"\n[audit]\nsink = \"stdout\"\n[identity]\nanonymous = \"yes\"\n").unwrap_err();
/// assert_eq!(e.line(), Some(5));
/// assert_eq!(e.field(), Some("anonymous"));
/// ```
#[derive(Clone, Debug)]
pub struct PolicyError {
    text: String,
    field: Option<String>,
    line: Option<(usize, usize)>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for PolicyError {
    /// The same message (the sources are not compared).
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for PolicyError {}

impl PolicyError {
    /// The setting that is wrong (`grants`, `identity.api_key_secret`; for a file
    /// that does not parse, the key on the offending line), when it is known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The line (from 1) of a file that does not parse.
    pub fn line(&self) -> Option<usize> {
        self.line.map(|(l, _)| l)
    }

    /// The column (from 1) of a file that does not parse.
    pub fn column(&self) -> Option<usize> {
        self.line.map(|(_, c)| c)
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for PolicyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

fn err(field: &str, why: impl fmt::Display) -> PolicyError {
    PolicyError {
        text: format!("policy: {field}: {why}"),
        field: Some(field.to_owned()),
        line: None,
        source: None,
    }
}

/// [`err`] with the error beneath kept as the source.
fn caused(field: &str, e: impl std::error::Error + Send + Sync + 'static) -> PolicyError {
    let mut p = err(field, &e);
    p.source = Some(Arc::new(e));
    p
}

/// A parsed policy; [`build`](Self::build) turns it into a guard.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    version: String,
    #[serde(default)]
    identity: Identity,
    #[serde(default)]
    grants: Vec<GrantSpec>,
    #[serde(default)]
    rate_limits: Vec<RateLimitSpec>,
    #[serde(default)]
    concurrency: Option<Concurrency>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    input: Input,
    #[serde(default)]
    output: Output,
    #[serde(default)]
    actions: Vec<ActionSpec>,
    audit: Audit,
    #[serde(default)]
    receipts: Option<Receipts>,
    #[serde(default)]
    abuse: Option<Abuse>,
    #[serde(default)]
    http: Http,
    #[serde(default)]
    onnx: Option<Onnx>,
    #[serde(default)]
    redis: Option<RedisSpec>,
    /// Where relative paths are resolved (the file's directory).
    #[serde(skip)]
    base: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[cfg(not(feature = "redis"))]
struct Shared;

/// A secret from an environment variable or a file.
fn secret(
    field: &str,
    env: Option<&String>,
    file: Option<PathBuf>,
) -> Result<Vec<u8>, PolicyError> {
    match (env, file) {
        (Some(var), None) => {
            // A value that is not a variable name may be the secret itself: never
            // echo it.
            if var.is_empty()
                || !var
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(err(
                    field,
                    "must name an environment variable (A-Z, 0-9, _), not hold the secret",
                ));
            }
            std::env::var(var)
                .map(String::into_bytes)
                .map_err(|_| err(field, format!("environment variable {var} is not set")))
        }
        (None, Some(path)) => std::fs::read(&path)
            .map(|mut b| {
                while b.last().is_some_and(u8::is_ascii_whitespace) {
                    b.pop();
                }
                b
            })
            .map_err(|e| err(field, format!("{}: {e}", path.display()))),
        (Some(_), Some(_)) => Err(err(
            field,
            "give the secret's environment variable or its file, not both",
        )),
        (None, None) => Err(err(
            field,
            "the secret's environment variable or file is required",
        )),
    }
}

fn hex32(field: &str, s: &str) -> Result<[u8; 32], PolicyError> {
    crate::codec::unhex32(s.trim()).ok_or_else(|| err(field, "must be 64 hex digits"))
}

impl Policy {
    /// Parses a policy.
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] naming the line and the field of what is malformed or
    /// unknown.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        // The parser's own message quotes the offending line, which may hold a
        // secret pasted where it does not belong: only its position and its
        // message are kept.
        toml::from_str::<Self>(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start.min(text.len()));
            let before = text.get(..at).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            // The key on that line names the field (its value is not repeated).
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim().trim_matches('"'))
                .filter(|k| !k.is_empty() && !k.starts_with('#'));
            let field_note = key.map(|k| format!(" (field `{k}`)")).unwrap_or_default();
            // "invalid type: string \"...\"" would repeat a value: keep the type only.
            let message = e.message();
            let message = match message.find("string \"") {
                Some(i) => match message[i + 8..].find('"') {
                    Some(j) => format!("{}a string{}", &message[..i], &message[i + 9 + j..]),
                    None => message.to_owned(),
                },
                None => message.to_owned(),
            };
            PolicyError {
                text: format!("policy: line {line}, column {column}: {message}{field_note}"),
                field: key.map(str::to_owned),
                line: Some((line, column)),
                source: None,
            }
        })
    }

    /// Reads and parses a policy file; relative paths in it are resolved from its
    /// directory.
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] for a file that cannot be read or parsed.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| caused(&path.display().to_string(), e))?;
        let mut p = Self::from_toml(&text).map_err(|e| PolicyError {
            text: format!("{}: {}", path.display(), e.text),
            ..e
        })?;
        p.base = path.parent().map(Path::to_path_buf);
        Ok(p)
    }

    /// The policy's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        match &self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    }

    /// Configures a builder with everything the policy says (add stages of your
    /// own to it before building).
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] naming the field whose value cannot be used, or the
    /// variable or file of a secret that cannot be read.
    pub fn configure(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if self.redis.is_some() {
            return Err(err(
                "redis",
                "state shared through Redis is connected asynchronously: use Policy::build_async",
            ));
        }
        self.configure_with(b, None)
    }

    fn configure_with(
        &self,
        b: &mut GuardBuilder,
        shared: Option<&Shared>,
    ) -> Result<(), PolicyError> {
        b.policy_version(self.version.clone());
        self.identity(b, shared)?;
        self.grants(b)?;
        self.rate_limits(b, shared)?;
        self.request_limits(b);
        self.input(b)?;
        self.output(b)?;
        self.onnx(b)?;
        self.actions(b);
        self.audit(b)?;
        self.receipts(b)?;
        self.abuse(b, shared)?;
        Ok(())
    }

    /// Builds the guard.
    ///
    /// # Errors
    ///
    /// As [`configure`](Self::configure), and the guard builder's own checks.
    pub fn build(&self) -> Result<InferenceGuard, PolicyError> {
        let mut b = InferenceGuard::builder();
        self.configure(&mut b)?;
        b.build().map_err(|e| caused("guard", e))
    }

    /// Builds the guard, connecting first to what the `[redis]` section shares
    /// (feature `redis`): rate limits, token budgets and concurrency, abuse
    /// responses, the JWT replay cache and API-key revocations. Without a `[redis]`
    /// section it is [`build`](Self::build). Call it on a Tokio runtime.
    ///
    /// ```toml
    /// [redis]
    /// url_env = "GUARD_REDIS_URL"       # or url_file = "/run/secrets/redis-url"
    /// prefix = "ig"                     # keys start with it (one Redis, many services)
    /// timeout_ms = 250                  # then the stage fails (closed by default)
    /// rate_limits = true                # limits, budgets, concurrency shared
    /// abuse = true                      # strikes and responses shared
    /// replay = true                     # the JWT jti replay cache shared
    /// revocations = true                # API-key revocations shared
    /// revocation_refresh_ms = 1000      # the lag bound for revocations
    /// fail_open = []                    # "rate_limits" and/or "replay"
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), and a [`PolicyError`] naming `redis` when the URL
    /// cannot be read, Redis cannot be reached, or the build has no Redis support.
    pub async fn build_async(&self) -> Result<InferenceGuard, PolicyError> {
        let Some(spec) = &self.redis else {
            return self.build();
        };
        #[cfg(not(feature = "redis"))]
        {
            let _ = spec;
            Err(err(
                "redis",
                "this build has no Redis support (the redis feature)",
            ))
        }
        #[cfg(feature = "redis")]
        {
            let shared = self.connect_shared(spec).await?;
            let mut b = InferenceGuard::builder();
            self.configure_with(&mut b, Some(&shared))?;
            b.build().map_err(|e| caused("guard", e))
        }
    }
}
