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
//!
//! [output]
//! allow_hosts = ["docs.example.com"]
//! html = "escape"                   # escape, strip, block
//! canary_env = "GUARD_CANARY"
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

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    api_key_prefix: Option<String>,
    #[serde(default)]
    api_key_secret_env: Option<String>,
    #[serde(default)]
    api_key_secret_file: Option<String>,
    #[serde(default)]
    api_keys: Vec<KeySpec>,
    #[serde(default)]
    jwt: Vec<JwtSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    id: String,
    principal: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    digest: String,
    /// Unix seconds.
    #[serde(default)]
    created: Option<u64>,
    /// Unix seconds.
    #[serde(default)]
    expires: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtSpec {
    issuer: String,
    audience: String,
    jwks_file: String,
    #[serde(default)]
    max_lifetime_secs: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantSpec {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    models: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    max_input_bytes: Option<usize>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum UnitSpec {
    Requests,
    Tokens,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Per {
    Second,
    Minute,
    Hour,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum KeyPart {
    Principal,
    Tenant,
    Model,
    Route,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSpec {
    name: String,
    unit: UnitSpec,
    amount: u32,
    per: Per,
    #[serde(default)]
    key_by: Vec<KeyPart>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Concurrency {
    per_principal: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_message_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    max_messages: Option<usize>,
    max_output_bytes: Option<usize>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RedactionSpec {
    Mask,
    Partial,
    Remove,
    Pseudonymize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    threshold: Option<f32>,
    #[serde(default)]
    disable: Vec<String>,
    #[serde(default)]
    redaction: Option<RedactionSpec>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    scan_instructions: bool,
    #[serde(default = "yes")]
    classifier: bool,
    #[serde(default)]
    classifier_flag: Option<f32>,
    #[serde(default)]
    classifier_block: Option<f32>,
    #[serde(default)]
    classifier_thresholds: std::collections::BTreeMap<String, CategoryThresholds>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryThresholds {
    #[serde(default)]
    flag: Option<f32>,
    #[serde(default)]
    block: Option<f32>,
}

impl Default for Input {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: None,
            disable: Vec::new(),
            redaction: None,
            shadow: false,
            scan_instructions: false,
            classifier: true,
            classifier_flag: None,
            classifier_block: None,
            classifier_thresholds: std::collections::BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Markup {
    Escape,
    Strip,
    Block,
}

impl From<Markup> for MarkupMode {
    fn from(m: Markup) -> Self {
        match m {
            Markup::Escape => Self::Escape,
            Markup::Strip => Self::Strip,
            Markup::Block => Self::Block,
        }
    }
}

/// `[redis]`: state shared by replicas (feature `redis`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
struct RedisSpec {
    #[serde(default)]
    url_env: Option<String>,
    #[serde(default)]
    url_file: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default = "yes")]
    rate_limits: bool,
    #[serde(default = "yes")]
    abuse: bool,
    #[serde(default = "yes")]
    replay: bool,
    #[serde(default = "yes")]
    revocations: bool,
    #[serde(default)]
    revocation_refresh_ms: Option<u64>,
    #[serde(default)]
    fail_open: Vec<SharedUse>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum SharedUse {
    RateLimits,
    Replay,
}

/// The connections a policy's `[redis]` section opened (feature `redis`).
#[cfg(feature = "redis")]
struct Shared {
    rate_limiter: Option<crate::rate_limit::RedisRateLimiter>,
    abuse: Option<AbuseMonitor>,
    replay: Option<crate::identity::RedisReplayCache>,
    revocations: Option<crate::identity::RedisRevocations>,
}

#[cfg(not(feature = "redis"))]
struct Shared;

/// `[onnx]`: a transformer classifier (feature `onnx`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "onnx"), allow(dead_code))]
struct Onnx {
    model: String,
    tokenizer: String,
    #[serde(default)]
    runtime: Option<String>,
    labels: Vec<OnnxLabel>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    overlap: Option<usize>,
    #[serde(default)]
    batch: Option<usize>,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    queue: Option<usize>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    sigmoid: bool,
    #[serde(default)]
    uncertain_band: Option<[f32; 2]>,
    #[serde(default = "yes")]
    input: bool,
    #[serde(default)]
    output: bool,
    #[serde(default)]
    fail_open: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "onnx"), allow(dead_code))]
struct OnnxLabel {
    index: usize,
    category: String,
    flag: f32,
    block: f32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    strict_links: bool,
    #[serde(default)]
    html: Option<Markup>,
    #[serde(default)]
    ansi: Option<Markup>,
    #[serde(default)]
    canary_env: Option<String>,
    #[serde(default)]
    system_prompt_file: Option<String>,
    #[serde(default)]
    overlap_threshold: Option<f32>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_hosts: Vec::new(),
            strict_links: false,
            html: None,
            ansi: None,
            canary_env: None,
            system_prompt_file: None,
            overlap_threshold: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ActionName {
    Block,
    Redact,
    Flag,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSpec {
    rule: String,
    action: ActionName,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum SinkKind {
    Stdout,
    Jsonl,
    Chained,
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Audit {
    sink: SinkKind,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    signing_key_file: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Receipts {
    signing_key_file: String,
    kid: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    #[serde(default)]
    unknown_fields: Option<String>,
    #[serde(default)]
    operator_system_prompt_file: Option<String>,
    #[serde(default)]
    pinned_system_prompt_sha256: Vec<String>,
    #[serde(default)]
    public_routes: Vec<String>,
    #[serde(default)]
    max_choices: Option<u32>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Abuse {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    shadow: bool,
}

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

    /// The HTTP exchange's configuration from the `[http]` section (defaults
    /// without one).
    ///
    /// ```
    /// use inference_guard::policy::Policy;
    /// let p = Policy::from_toml("version = \"1\"\n[identity]\nallow_anonymous = true\n[[grants]]\nprincipals = [\"*\"]\nmodels = [\"m\"]\n[audit]\nsink = \"none\"\n[http]\nunknown_fields = \"strip\"\npublic_routes = [\"GET /v1/models\"]\n")?;
    /// let cfg = p.exchange_config()?;
    /// # let _ = cfg;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] naming the field whose value cannot be used.
    pub fn exchange_config(&self) -> Result<crate::exchange::ExchangeConfig, PolicyError> {
        use crate::exchange::{ExchangeConfig, UnknownFields};
        let h = &self.http;
        let mut c = ExchangeConfig::default();
        match h.unknown_fields.as_deref() {
            None | Some("refuse") => {}
            Some("strip") => c = c.unknown_fields(UnknownFields::Strip),
            Some(_) => return Err(err("http.unknown_fields", "must be refuse or strip")),
        }
        if let Some(f) = &h.operator_system_prompt_file {
            let path = self.path(f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "http.operator_system_prompt_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            c = c.operator_system_prompt(text.trim_end_matches('\n'));
        }
        for (i, d) in h.pinned_system_prompt_sha256.iter().enumerate() {
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    &format!("http.pinned_system_prompt_sha256[{i}]"),
                    "must be 64 hex digits",
                ));
            }
            c = c.pin_system_prompt_digest(d);
        }
        for (i, r) in h.public_routes.iter().enumerate() {
            let Some((m, p)) = r
                .split_once(' ')
                .filter(|(m, p)| !m.is_empty() && p.starts_with('/'))
            else {
                return Err(err(
                    &format!("http.public_routes[{i}]"),
                    "must be 'METHOD /path'",
                ));
            };
            c = c.public_route(m, p.trim());
        }
        if let Some(p) = &h.prefix {
            c = c.prefix(p.clone());
        }
        if let Some(n) = h.max_choices {
            c = c.max_choices(n);
        }
        if let Some(n) = h.max_body_bytes {
            if n == 0 {
                return Err(err("http.max_body_bytes", "must be positive"));
            }
            c = c.max_body_bytes(n);
        }
        Ok(c)
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

    /// `[[grants]]`: the policy authorizer (at least one grant: deny by default).
    fn grants(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if self.grants.is_empty() {
            return Err(err(
                "grants",
                "at least one grant is required (deny by default)",
            ));
        }
        let mut authz = PolicyAuthorizer::builder();
        for (i, g) in self.grants.iter().enumerate() {
            let field = format!("grants[{i}]");
            // A grant to principals, or one grant per scope.
            let heads: Vec<Grant> = match (g.principals.is_empty(), g.scopes.is_empty()) {
                (false, true) => vec![Grant::to_principals(g.principals.iter().cloned())],
                (true, false) => g
                    .scopes
                    .iter()
                    .map(|s| Grant::to_scope(s.clone()))
                    .collect(),
                _ => return Err(err(&field, "give principals or scopes (one of the two)")),
            };
            for head in heads {
                let mut grant = head
                    .models(g.models.iter().cloned())
                    .tools(g.tools.iter().cloned());
                if g.stream {
                    grant = grant.allow_stream();
                }
                if let Some(n) = g.max_output_tokens {
                    grant = grant.max_output_tokens(n);
                }
                if let Some(n) = g.max_input_bytes {
                    grant = grant.max_input_bytes(n);
                }
                authz.grant(grant);
            }
        }
        b.authorizer(authz.build().map_err(|e| caused("grants", e))?);
        Ok(())
    }

    /// `[[rate_limits]]` and `[concurrency]`: in memory, or on the shared store.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn rate_limits(
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
    fn request_limits(&self, b: &mut GuardBuilder) {
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

    /// `[input]`: the input scanner and its classifier.
    fn input(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if self.input.enabled {
            let mut s = Scanner::builder();
            if let Some(t) = self.input.threshold {
                s.threshold(t);
            }
            for d in &self.input.disable {
                s.disable(d.clone());
            }
            s.scan_instructions(self.input.scan_instructions);
            let classifier = if self.input.classifier {
                let mut c = crate::scan::Classifier::builtin();
                let heads: Vec<Category> = c.categories().cloned().collect();
                for cat in &heads {
                    let (flag, block) = c.thresholds(cat).unwrap_or((0.5, 0.5));
                    let per = self.input.classifier_thresholds.get(cat.as_str());
                    let flag = per
                        .and_then(|t| t.flag)
                        .or(self.input.classifier_flag)
                        .unwrap_or(flag);
                    let block = per
                        .and_then(|t| t.block)
                        .or(self.input.classifier_block)
                        .unwrap_or(block);
                    c = c
                        .with_category_thresholds(cat, flag, block)
                        .map_err(|e| caused("input.classifier_thresholds", e))?;
                }
                if let Some(k) = self
                    .input
                    .classifier_thresholds
                    .keys()
                    .find(|k| !heads.iter().any(|c| c.as_str() == k.as_str()))
                {
                    return Err(err(
                        "input.classifier_thresholds",
                        format!(
                            "no classifier head for {k:?} (prompt_injection, jailbreak, system_prompt_leak)"
                        ),
                    ));
                }
                Some(c)
            } else {
                None
            };
            s.classifier(classifier);
            s.redaction(match self.input.redaction {
                None | Some(RedactionSpec::Mask) => Redaction::mask(),
                Some(RedactionSpec::Partial) => Redaction::partial(4),
                Some(RedactionSpec::Remove) => Redaction::remove(),
                Some(RedactionSpec::Pseudonymize) => Redaction::pseudonymize(),
            });
            b.input_scanner(s.build());
            if self.input.shadow {
                b.enforcement(crate::ShadowStage::InputScan, crate::Enforcement::Shadow);
            }
        }
        Ok(())
    }

    /// `[output]`: the answer validator.
    fn output(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if self.output.enabled {
            let mut v = AnswerValidator::builder();
            v.allow_hosts(self.output.allow_hosts.iter().cloned())
                .strict_links(self.output.strict_links);
            if let Some(m) = self.output.html {
                v.html(m.into());
            }
            if let Some(m) = self.output.ansi {
                v.ansi(m.into());
            }
            if let Some(t) = self.output.overlap_threshold {
                v.overlap_threshold(t);
            }
            if let Some(var) = &self.output.canary_env {
                let token = std::env::var(var).map_err(|_| {
                    err(
                        "output.canary_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                v.canary(Canary::new(token).map_err(|e| caused("output.canary_env", e))?);
            }
            if let Some(f) = &self.output.system_prompt_file {
                let path = self.path(f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        "output.system_prompt_file",
                        format!("{}: {e}", path.display()),
                    )
                })?;
                v.system_prompt(text);
            }
            b.output_validator(v.build().map_err(|e| caused("output", e))?);
        }
        Ok(())
    }

    /// `[[actions]]`: rule actions.
    fn actions(&self, b: &mut GuardBuilder) {
        for a in &self.actions {
            b.rule_action(
                a.rule.clone(),
                match a.action {
                    ActionName::Block => Action::Block,
                    ActionName::Redact => Action::Redact,
                    ActionName::Flag => Action::Flag,
                },
            );
        }
    }

    /// `[receipts]`: the receipt signer.
    fn receipts(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if let Some(r) = &self.receipts {
            let path = self.path(&r.signing_key_file);
            let der = std::fs::read(&path).map_err(|e| {
                err(
                    "receipts.signing_key_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            let key = AuditSigningKey::from_pkcs8(r.kid.clone(), &der)
                .map_err(|e| caused("receipts.signing_key_file", e))?;
            let mut signer = ReceiptSigner::new(key);
            if let Some(t) = r.ttl_secs {
                signer = signer.ttl(Duration::from_secs(t));
            }
            b.receipts(signer);
        }
        Ok(())
    }

    /// `[abuse]`: the abuse monitor, shared through Redis when `[redis]` says so.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn abuse(&self, b: &mut GuardBuilder, shared: Option<&Shared>) -> Result<(), PolicyError> {
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
    fn abuse_monitor(&self) -> Result<Option<AbuseMonitor>, PolicyError> {
        let Some(a) = self.abuse.as_ref().filter(|a| a.enabled) else {
            return Ok(None);
        };
        AbuseMonitor::builder()
            .shadow(a.shadow)
            .build()
            .map(Some)
            .map_err(|e| caused("abuse", e))
    }

    /// The `[onnx]` section: the model-backed classifier after the built-in stages.
    #[cfg(feature = "onnx")]
    fn onnx(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        let Some(o) = &self.onnx else {
            return Ok(());
        };
        let mut c =
            crate::scan::OnnxClassifier::builder(self.path(&o.model), self.path(&o.tokenizer));
        if let Some(r) = &o.runtime {
            c.runtime(self.path(r));
        }
        for (i, l) in o.labels.iter().enumerate() {
            let category = [
                Category::PromptInjection,
                Category::Jailbreak,
                Category::SystemPromptLeak,
                Category::Secret,
                Category::PersonalData,
                Category::Exfiltration,
                Category::UnsafeMarkup,
            ]
            .into_iter()
            .find(|c| c.as_str() == l.category)
            .ok_or_else(|| {
                err(
                    &format!("onnx.labels[{i}].category"),
                    format!(
                        "unknown category {:?} (prompt_injection, jailbreak, system_prompt_leak, secret, personal_data, exfiltration, unsafe_markup)",
                        l.category
                    ),
                )
            })?;
            c.label(l.index, category, l.flag, l.block);
        }
        if let Some(n) = o.max_tokens {
            c.max_tokens(n);
        }
        if let Some(n) = o.overlap {
            c.overlap(n);
        }
        if let Some(n) = o.batch {
            c.batch(n);
        }
        if let Some(n) = o.workers {
            c.workers(n);
        }
        if let Some(n) = o.queue {
            c.queue(n);
        }
        if let Some(ms) = o.deadline_ms {
            c.deadline(Duration::from_millis(ms));
        }
        c.sigmoid(o.sigmoid);
        if let Some([low, high]) = o.uncertain_band {
            c.only_when_uncertain(crate::scan::Classifier::builtin(), low, high);
        }
        if !o.input && !o.output {
            return Err(err(
                "onnx",
                "input and output are both false: the model would never run",
            ));
        }
        let c = c.build().map_err(|e| caused("onnx", e))?;
        if o.input {
            b.input_scanner(c.clone());
            if o.fail_open {
                b.fail_open(crate::FailOpenStage::InputScan);
            }
        }
        if o.output {
            b.output_validator(c);
            if o.fail_open {
                b.fail_open(crate::FailOpenStage::OutputValidation);
            }
        }
        Ok(())
    }

    #[cfg(not(feature = "onnx"))]
    fn onnx(&self, _b: &mut GuardBuilder) -> Result<(), PolicyError> {
        match &self.onnx {
            None => Ok(()),
            Some(_) => Err(err(
                "onnx",
                "this build has no ONNX Runtime support (the onnx feature)",
            )),
        }
    }

    /// The `[[rate_limits]]` and the per-principal concurrency.
    fn limits(&self) -> Result<(Vec<Limit>, Option<u32>), PolicyError> {
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
            let mut key = KeyBy::GLOBAL;
            for k in &r.key_by {
                key = key
                    | match k {
                        KeyPart::Principal => KeyBy::PRINCIPAL,
                        KeyPart::Tenant => KeyBy::TENANT,
                        KeyPart::Model => KeyBy::MODEL,
                        KeyPart::Route => KeyBy::ROUTE,
                    };
            }
            let limit = match r.unit {
                UnitSpec::Requests => Limit::requests(r.name.clone(), quota),
                UnitSpec::Tokens => Limit::tokens(r.name.clone(), quota),
            };
            out.push(limit.key_by(key));
        }
        Ok((out, self.concurrency.as_ref().map(|c| c.per_principal)))
    }

    fn identity(&self, b: &mut GuardBuilder, shared: Option<&Shared>) -> Result<(), PolicyError> {
        #[cfg(not(feature = "redis"))]
        let _ = shared;
        let id = &self.identity;
        if id.allow_anonymous {
            b.allow_anonymous();
        }
        let mut auth = Authenticator::new();
        for (i, j) in id.jwt.iter().enumerate() {
            let field = format!("identity.jwt[{i}]");
            if id.jwt[..i].iter().any(|o| o.issuer == j.issuer) {
                return Err(err(&format!("{field}.issuer"), "the same issuer twice"));
            }
            let path = self.path(&j.jwks_file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    &format!("{field}.jwks_file"),
                    format!("{}: {e}", path.display()),
                )
            })?;
            let keys =
                KeySet::from_jwks(&text).map_err(|e| caused(&format!("{field}.jwks_file"), e))?;
            let mut v = JwtVerifier::builder();
            v.issuer(j.issuer.clone())
                .audience(j.audience.clone())
                .keys(keys);
            if let Some(s) = j.max_lifetime_secs {
                v.max_lifetime(Duration::from_secs(s));
            }
            #[cfg(feature = "redis")]
            if let Some(replay) = shared.and_then(|s| s.replay.clone()) {
                let open = self
                    .redis
                    .as_ref()
                    .is_some_and(|r| r.fail_open.contains(&SharedUse::Replay));
                v.shared_replay_cache(replay).replay_fail_open(open);
            }
            auth = auth.jwt(v.build().map_err(|e| caused(&field, e))?);
        }
        if id.api_keys.is_empty() && id.jwt.is_empty() {
            if !id.allow_anonymous {
                return Err(err(
                    "identity",
                    "no api_keys and no jwt issuers: nobody could call (set allow_anonymous to mean it)",
                ));
            }
            return Ok(());
        }
        if id.api_keys.is_empty() {
            b.identity(auth);
            return Ok(());
        }
        let secret = secret(
            "identity.api_key_secret",
            id.api_key_secret_env.as_ref(),
            id.api_key_secret_file.as_deref().map(|f| self.path(f)),
        )?;
        let store = InMemoryKeyStore::new();
        let format = ApiKeyFormat::new(id.api_key_prefix.as_deref().unwrap_or("igk"))
            .map_err(|e| caused("identity.api_key_prefix", e))?;
        let keys = ApiKeys::new(&secret, format, store.clone())
            .map_err(|e| caused("identity.api_key_secret", e))?;
        for (i, k) in id.api_keys.iter().enumerate() {
            let field = format!("identity.api_keys[{i}]");
            let mut p = Principal::builder(k.principal.clone(), CredentialKind::ApiKey);
            if let Some(t) = &k.tenant {
                p = p.tenant(t.clone());
            }
            for s in &k.scopes {
                p = p.scope(s.clone());
            }
            let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
            store.insert(ApiKeyRecord::from_digest(
                k.id.clone(),
                p.build(),
                hex32(&format!("{field}.digest"), &k.digest)?,
                k.created.map_or_else(SystemTime::now, at),
                k.expires.map(at),
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(rev) = shared.and_then(|s| s.revocations.as_ref()) {
            let checked = ApiKeys::new(
                &secret,
                ApiKeyFormat::new(id.api_key_prefix.as_deref().unwrap_or("igk"))
                    .map_err(|e| caused("identity.api_key_prefix", e))?,
                rev.checked(store),
            )
            .map_err(|e| caused("identity.api_key_secret", e))?;
            drop(keys);
            b.identity(auth.api_keys(checked));
            return Ok(());
        }
        b.identity(auth.api_keys(keys));
        Ok(())
    }

    fn audit(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        let a = &self.audit;
        match a.sink {
            SinkKind::None => {
                b.audit_sink(NoopSink);
            }
            SinkKind::Stdout => {
                b.audit_sink(JsonLinesSink::new(std::io::stdout()));
            }
            SinkKind::Jsonl => {
                let path = a
                    .path
                    .as_deref()
                    .ok_or_else(|| err("audit.path", "required for sink = \"jsonl\""))?;
                let path = self.path(path);
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| err("audit.path", format!("{}: {e}", path.display())))?;
                b.audit_sink(JsonLinesSink::new(f));
            }
            SinkKind::Chained => {
                let path = a
                    .path
                    .as_deref()
                    .ok_or_else(|| err("audit.path", "required for sink = \"chained\""))?;
                let key_file = a.signing_key_file.as_deref().ok_or_else(|| {
                    err("audit.signing_key_file", "required for sink = \"chained\"")
                })?;
                let key_path = self.path(key_file);
                let der = std::fs::read(&key_path).map_err(|e| {
                    err(
                        "audit.signing_key_file",
                        format!("{}: {e}", key_path.display()),
                    )
                })?;
                let key = AuditSigningKey::from_pkcs8(
                    a.kid.clone().unwrap_or_else(|| "audit".into()),
                    &der,
                )
                .map_err(|e| caused("audit.signing_key_file", e))?;
                let sink = ChainedLogSink::create(self.path(path), key)
                    .map_err(|e| caused("audit.path", e))?;
                b.audit_sink(sink);
            }
        }
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

    #[cfg(feature = "redis")]
    async fn connect_shared(&self, spec: &RedisSpec) -> Result<Shared, PolicyError> {
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
