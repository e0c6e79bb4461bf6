//! The HTTP exchange: one framework-neutral place that decides, for every adapter,
//! which requests are guarded, what is parsed, what is forwarded to the model, what
//! comes back, and what errors look like. The `tower` layer ([`crate::tower`],
//! feature `tower`) and the actix-web middleware of the gateway example are thin
//! glue around it; use it to put the guard in front of another framework.
//!
//! # What crosses, in each direction
//!
//! - **Routes.** Decided on the path the router will see ([`normalize_path`]:
//!   unreserved escapes decoded, dot segments resolved, slashes merged, trailing
//!   slash dropped). By default everything under `/v1` is the guard's: the three
//!   endpoints are guarded, any other path under the prefix is a `404` unless it is
//!   a [public route](ExchangeConfig::public_route), and an escape, backslash or
//!   case difference that could route differently is a `400` (`ambiguous_path`).
//!   Methods other than `POST` on an endpoint are a `405`.
//! - **Requests.** Only the OpenAI parameters the guard understands are forwarded,
//!   with their meaning enforced: `n`/`best_of` (every choice is validated, up to
//!   [`max_choices`](ExchangeConfig::max_choices)), legacy `functions` authorized as
//!   tools, `stream_options.include_usage` forced on for streams (budgets settle on
//!   real usage), the enforced output ceiling (grant or reservation) written into
//!   `max_tokens`, `logprobs` dropped (token-level output cannot be validated). Any
//!   other field is a `400` naming it, or is stripped
//!   ([`UnknownFields`]). Every message the caller sends is scanned, whatever its
//!   role; operator instructions are configured here instead
//!   ([`operator_system_prompt`](ExchangeConfig::operator_system_prompt),
//!   [`pin_system_prompt`](ExchangeConfig::pin_system_prompt)). Token-id prompts are a
//!   `400` unless a [tokenizer hook](ExchangeConfig::tokenizer) turns them into text.
//! - **Answers.** Every choice and every text-bearing field (content, refusal,
//!   reasoning, tool calls, legacy function calls) is validated; answers are rebuilt
//!   from the validated parts, so unknown fields and `logprobs` never reach the
//!   caller. Streams go through the [`SseRelay`].
//! - **Budgets.** An unreadable or oversized answer settles with the model's
//!   reported usage, or the whole reservation ([`Admission::abort`]); a caller that
//!   disconnects is charged its reservation.
//!
//! ```
//! use inference_guard::exchange::{Exchange, ExchangeConfig, Route};
//! use inference_guard::*;
//!
//! let mut b = InferenceGuard::builder();
//! b.allow_anonymous().authorize_all().audit_sink(NoopSink);
//! let exchange = Exchange::new(b.build()?, ExchangeConfig::default().public_route("GET", "/v1/models"));
//! assert!(matches!(exchange.route("POST", "/v1/chat/completions"), Route::Guard(_)));
//! assert!(matches!(exchange.route("GET", "/v1/models"), Route::Pass));
//! assert!(matches!(exchange.route("POST", "/v1/files"), Route::Refuse(_)));
//! assert!(matches!(exchange.route("POST", "/v1/chat/%63ompletions"), Route::Refuse(_)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod answer;
mod call;
mod relay;
mod route;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

pub use relay::SseRelay;
pub use route::{Route, normalize_path};

use crate::decision::Rejection;
use crate::guard::{Admission, InferenceGuard};
use crate::id::RequestId;
use crate::principal::Principal;
pub(crate) use crate::request::cap;
use crate::request::{Credentials, GuardRequest};

/// The longest `model` name accepted (`400` above it).
pub const MAX_MODEL_BYTES: usize = 256;
/// The longest `User-Agent` kept for audit records (longer ones are cut).
pub const MAX_USER_AGENT_BYTES: usize = 256;
/// The longest tool or function name accepted (`400` above it; OpenAI's limit).
pub const MAX_TOOL_NAME_BYTES: usize = 64;

/// What to do with a request field the guard does not understand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownFields {
    /// Refuse the request with a `400` naming the field (default).
    #[default]
    Refuse,
    /// Remove the field and forward the rest.
    Strip,
}

/// Turns token ids into text, so that token-array prompts can be scanned.
pub type Tokenizer = Arc<dyn Fn(&[u32]) -> Option<String> + Send + Sync>;

/// What an exchange accepts and how it treats what it does not know.
#[derive(Clone)]
pub struct ExchangeConfig {
    max_body_bytes: usize,
    api_key_header: String,
    read_timeout: Duration,
    max_answer_bytes: usize,
    prefix: String,
    guard_prefix: bool,
    public: Vec<(String, String)>,
    unknown_fields: UnknownFields,
    operator_prompt: Option<String>,
    pinned: Vec<[u8; 32]>,
    tokenizer: Option<Tokenizer>,
    max_choices: u32,
}

impl fmt::Debug for ExchangeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeConfig")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("api_key_header", &self.api_key_header)
            .field("read_timeout", &self.read_timeout)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .field("prefix", &self.prefix)
            .field("guard_prefix", &self.guard_prefix)
            .field("public", &self.public)
            .field("unknown_fields", &self.unknown_fields)
            .field("operator_system_prompt", &self.operator_prompt.is_some())
            .field("pinned_system_prompts", &self.pinned.len())
            .field("tokenizer", &self.tokenizer.is_some())
            .field("max_choices", &self.max_choices)
            .finish()
    }
}

impl Default for ExchangeConfig {
    /// Bodies up to 1 MiB read within 10 s, API keys in `x-api-key` (and as
    /// `Authorization: Bearer`), answers up to 8 MiB, everything under `/v1`
    /// guarded, unknown fields refused, up to 4 choices.
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            api_key_header: "x-api-key".to_owned(),
            read_timeout: Duration::from_secs(10),
            max_answer_bytes: 8 << 20,
            prefix: "/v1".to_owned(),
            guard_prefix: true,
            public: Vec::new(),
            unknown_fields: UnknownFields::Refuse,
            operator_prompt: None,
            pinned: Vec::new(),
            tokenizer: None,
            max_choices: 4,
        }
    }
}

impl ExchangeConfig {
    /// The largest request body accepted (`413` above it, before it is read).
    #[must_use]
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }
    /// The header that carries API keys (default `x-api-key`).
    #[must_use]
    pub fn api_key_header(mut self, name: impl Into<String>) -> Self {
        self.api_key_header = name.into().to_ascii_lowercase();
        self
    }
    /// How long a client may take to send its body (`408` after it).
    #[must_use]
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }
    /// The largest non-streamed answer read from the model (`502` above it).
    #[must_use]
    pub fn max_answer_bytes(mut self, n: usize) -> Self {
        self.max_answer_bytes = n;
        self
    }
    /// Where the OpenAI API is mounted (default `/v1`): with
    /// [`guard_prefix`](Self::guard_prefix), every path under it is the guard's.
    /// The endpoints themselves are recognised by their last segments wherever
    /// they are mounted (`/api/v1/chat/completions` is guarded too).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let p = prefix.into();
        self.prefix = normalize_path(&p).to_ascii_lowercase();
        self
    }
    /// Whether every path under the prefix is the guard's (default on): paths that
    /// are not an endpoint or a [public route](Self::public_route) are refused
    /// (`404`), never passed through. Off: only the endpoints are guarded and other
    /// paths pass.
    #[must_use]
    pub fn guard_prefix(mut self, on: bool) -> Self {
        self.guard_prefix = on;
        self
    }
    /// A route under the prefix that passes unguarded (for example
    /// `GET /v1/models`), matched on the normalized path.
    #[must_use]
    pub fn public_route(mut self, method: &str, path: &str) -> Self {
        self.public
            .push((method.to_ascii_uppercase(), normalize_path(path)));
        self
    }
    /// What to do with request fields the guard does not understand (default
    /// [`UnknownFields::Refuse`]).
    #[must_use]
    pub fn unknown_fields(mut self, u: UnknownFields) -> Self {
        self.unknown_fields = u;
        self
    }
    /// The operator's system prompt: put first in every chat request the exchange
    /// forwards, as the operator's own message (exempt from the injection and
    /// jailbreak heuristics; see [`Message::operator`](crate::Message::operator)).
    #[must_use]
    pub fn operator_system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.operator_prompt = Some(prompt.into());
        self
    }
    /// Pins a system prompt the operator's own client sends: a caller's `system`
    /// or `developer` message whose text is exactly this one is treated as the
    /// operator's. Only its SHA-256 is kept. Any other caller message is scanned in
    /// full.
    #[must_use]
    pub fn pin_system_prompt(mut self, prompt: &str) -> Self {
        self.pinned.push(sha256(prompt.as_bytes()));
        self
    }
    /// Pins a system prompt by its SHA-256 digest (64 hex digits); ignored if
    /// malformed. See [`pin_system_prompt`](Self::pin_system_prompt).
    #[must_use]
    pub fn pin_system_prompt_digest(mut self, hex_digest: &str) -> Self {
        let h = hex_digest.trim().as_bytes();
        if h.len() == 64 {
            let mut d = [0u8; 32];
            let ok = h.chunks(2).zip(d.iter_mut()).all(|(pair, out)| {
                match (
                    char::from(pair[0]).to_digit(16),
                    char::from(pair[1]).to_digit(16),
                ) {
                    (Some(a), Some(b)) => {
                        *out = u8::try_from(a * 16 + b).unwrap_or(0);
                        true
                    }
                    _ => false,
                }
            });
            if ok {
                self.pinned.push(d);
            }
        }
        self
    }
    /// A tokenizer hook: token-array prompts (`"prompt": [[1, 2, 3]]`, embeddings
    /// of token ids) are turned into text for scanning. Without one they are a
    /// `400`. Their length counts towards limits and estimates either way.
    #[must_use]
    pub fn tokenizer(
        mut self,
        hook: impl Fn(&[u32]) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.tokenizer = Some(Arc::new(hook));
        self
    }
    /// The most choices (`n`, `best_of`) a call may ask for (default 4); each is
    /// validated and reserved.
    #[must_use]
    pub fn max_choices(mut self, n: u32) -> Self {
        self.max_choices = n.max(1);
        self
    }
    /// See [`max_body_bytes`](Self::max_body_bytes).
    pub fn body_limit(&self) -> usize {
        self.max_body_bytes
    }
    /// See [`read_timeout`](Self::read_timeout).
    pub fn timeout(&self) -> Duration {
        self.read_timeout
    }
    /// See [`max_answer_bytes`](Self::max_answer_bytes).
    pub fn answer_limit(&self) -> usize {
        self.max_answer_bytes
    }
    fn pinned(&self, text: &str) -> bool {
        !self.pinned.is_empty() && self.pinned.contains(&sha256(text.as_bytes()))
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An HTTP error response in the OpenAI error shape.
#[derive(Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl fmt::Debug for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponse")
            .field("status", &self.status)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for ErrorResponse {}

impl ErrorResponse {
    /// A protocol error (`400`, `404`, `405`, `408`, `413`, `415`, ...) with an
    /// OpenAI-style body of type `invalid_request_error` (`server_error` for 5xx).
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        Self::with_param_value(status, code, message, Value::Null)
    }

    /// A `400` about one request field, named in the body's `param`.
    pub fn field(code: &str, message: &str, field: &str) -> Self {
        Self::with_param_value(400, code, message, Value::from(field))
    }

    fn with_param_value(status: u16, code: &str, message: &str, param: Value) -> Self {
        let kind = if status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body:
                json!({"error": {"message": message, "type": kind, "code": code, "param": param}})
                    .to_string(),
        }
    }

    /// Adds a header (lowercase name).
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The response for a rejection: its status, `WWW-Authenticate`, `Retry-After`,
    /// rate-limit headers (`x-ratelimit-*` and the IETF `RateLimit-Policy` /
    /// `RateLimit`), and its OpenAI error body.
    pub fn from_rejection(r: &Rejection) -> Self {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(c) = r.challenge() {
            headers.push(("www-authenticate", c.to_owned()));
        }
        if let Some(s) = r.retry_after_secs() {
            headers.push(("retry-after", s.to_string()));
        }
        if let Some(info) = r.rate_limit() {
            headers.extend(rate_limit_headers(info));
        }
        let mut body = r.openai_error();
        body["error"]["param"] = Value::Null;
        Self {
            status: r.status(),
            headers,
            body: body.to_string(),
        }
    }

    fn bad_upstream() -> Self {
        Self::new(
            502,
            "bad_upstream_response",
            "the model's answer could not be read",
        )
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The headers (lowercase names).
    pub fn headers(&self) -> &[(&'static str, String)] {
        &self.headers
    }
    /// The JSON body.
    pub fn body(&self) -> &str {
        &self.body
    }
}

/// Rate-limit headers for a decision: `x-ratelimit-limit-requests`,
/// `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the IETF
/// `ratelimit-policy` / `ratelimit`.
pub fn rate_limit_headers(info: &crate::RateLimitInfo) -> Vec<(&'static str, String)> {
    let reset = crate::decision::ceil_secs(info.reset());
    let mut h = vec![
        ("x-ratelimit-limit-requests", info.limit().to_string()),
        (
            "x-ratelimit-remaining-requests",
            info.remaining().to_string(),
        ),
        ("x-ratelimit-reset-requests", format!("{reset}s")),
    ];
    if let Some(p) = info.policy() {
        let name = p.split(';').next().unwrap_or("\"default\"").to_owned();
        h.push(("ratelimit-policy", p.to_owned()));
        h.push((
            "ratelimit",
            format!("{name};r={};t={reset}", info.remaining()),
        ));
    }
    h
}

/// The OpenAI endpoints the exchange guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions` (legacy; not streamed).
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// The endpoint of a path (normalized first), by its last segments:
    /// `/v1/chat/completions`, `/chat/completions` and `/api/v1/chat/completions`
    /// are all chat completions.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::from_normalized(&normalize_path(path))
    }

    /// Recognised by the path's last segments, wherever the API is mounted (a
    /// router nested under `/api` still has its endpoints guarded).
    fn from_normalized(p: &str) -> Option<Self> {
        if p.ends_with("/chat/completions") {
            Some(Self::ChatCompletions)
        } else if p.ends_with("/completions") {
            Some(Self::Completions)
        } else if p.ends_with("/embeddings") {
            Some(Self::Embeddings)
        } else {
            None
        }
    }

    /// The canonical path (`/v1/...`): the route in audit records, and the path
    /// to forward to.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
        }
    }
}

/// Reads credentials from request headers (name, raw value): `Authorization:
/// Bearer` and the API-key header. A header sent twice, a value that is not
/// visible ASCII, or an `Authorization` scheme other than `Bearer` is a `400` or
/// `401` here, before any stage runs.
///
/// ```
/// use inference_guard::exchange::{credentials, ExchangeConfig};
/// let headers = [("authorization", &b"Bearer abc.def.ghi"[..])];
/// let creds = credentials(headers.iter().map(|(n, v)| (*n, *v)), &ExchangeConfig::default()).unwrap();
/// assert!(creds.bearer_token().is_some());
/// ```
///
/// # Errors
///
/// An [`ErrorResponse`] for duplicated or malformed credential headers.
pub fn credentials<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    config: &ExchangeConfig,
) -> Result<Credentials, ErrorResponse> {
    let mut seen = Seen::default();
    for (name, value) in headers {
        seen.take(name, value, config)?;
    }
    seen.credentials()
}

/// The headers the exchange reads, collected in one pass.
#[derive(Default)]
struct Seen<'a> {
    auth: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    length: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    traceparent: Option<&'a [u8]>,
}

impl<'a> Seen<'a> {
    fn take(
        &mut self,
        name: &str,
        value: &'a [u8],
        config: &ExchangeConfig,
    ) -> Result<(), ErrorResponse> {
        let slot = if name.eq_ignore_ascii_case("authorization") {
            &mut self.auth
        } else if name.eq_ignore_ascii_case(&config.api_key_header) {
            &mut self.key
        } else {
            if name.eq_ignore_ascii_case("content-length") {
                self.length = Some(value);
            } else if name.eq_ignore_ascii_case("content-type") {
                self.content_type = Some(value);
            } else if name.eq_ignore_ascii_case("user-agent") {
                self.user_agent = Some(value);
            } else if name.eq_ignore_ascii_case("traceparent") {
                self.traceparent = Some(value);
            }
            return Ok(());
        };
        if slot.is_some() {
            return Err(ErrorResponse::new(
                400,
                "duplicate_credentials",
                "a credential header was sent more than once",
            ));
        }
        *slot = Some(value);
        Ok(())
    }

    fn credentials(&self) -> Result<Credentials, ErrorResponse> {
        let text = |v: &[u8]| -> Result<String, ErrorResponse> {
            let s = std::str::from_utf8(v)
                .ok()
                .filter(|s| s.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' '))
                .ok_or_else(|| {
                    ErrorResponse::new(400, "invalid_header", "a credential header is malformed")
                })?;
            Ok(s.trim().to_owned())
        };
        let mut creds = Credentials::none();
        if let Some(v) = self.auth {
            let v = text(v)?;
            let (scheme, token) = v.split_once(' ').unwrap_or((v.as_str(), ""));
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                let r = Rejection::unauthenticated("authorization scheme is not Bearer")
                    .with_message("the Authorization header must be 'Bearer <token>'")
                    .with_challenge("Bearer realm=\"inference\"");
                return Err(ErrorResponse::from_rejection(&r));
            }
            creds = creds.with_bearer(token.trim());
        }
        if let Some(v) = self.key {
            let v = text(v)?;
            if !v.is_empty() {
                creds = creds.with_api_key(v);
            }
        }
        Ok(creds)
    }

    /// The body's declared length against the limit, and its type.
    fn check_body(&self, config: &ExchangeConfig) -> Result<(), ErrorResponse> {
        if let Some(v) = self.length {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                None => {
                    return Err(ErrorResponse::new(
                        400,
                        "invalid_header",
                        "Content-Length is malformed",
                    ));
                }
                Some(n) if n > config.max_body_bytes as u64 => {
                    return Err(ErrorResponse::new(
                        413,
                        "request_too_large",
                        "the body is larger than allowed",
                    ));
                }
                Some(_) => {}
            }
        }
        check_content_type(self.content_type)
    }
}

/// Checks the `Content-Type` of a request body: JSON only.
///
/// # Errors
///
/// `415` for anything but `application/json` (parameters such as `charset=utf-8`
/// are accepted).
pub fn check_content_type(value: Option<&[u8]>) -> Result<(), ErrorResponse> {
    let ok = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(ErrorResponse::new(
            415,
            "unsupported_media_type",
            "the body must be application/json",
        ))
    }
}

/// A valid W3C `traceparent` (55 characters, lowercase hex, version `00`-`fe`),
/// or `None`: anything else is ignored, never stored.
fn traceparent(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let ok = b.len() == 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && &b[0..2] != b"ff";
    ok.then(|| s.to_owned())
}

/// The framework-neutral exchange: build one per guard and share it (cheap to
/// clone).
#[derive(Clone, Debug)]
pub struct Exchange {
    guard: InferenceGuard,
    config: Arc<ExchangeConfig>,
}

/// A guarded request whose headers passed, waiting for its body.
#[derive(Debug)]
pub struct Pending {
    endpoint: Endpoint,
    credentials: Credentials,
    /// A body-header problem, answered after the credential check.
    body_error: Option<ErrorResponse>,
    user_agent: Option<String>,
    traceparent: Option<String>,
}

impl Pending {
    /// The endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
}

impl Exchange {
    /// An exchange for `guard`.
    pub fn new(guard: InferenceGuard, config: ExchangeConfig) -> Self {
        Self {
            guard,
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ExchangeConfig {
        &self.config
    }

    /// The guard.
    pub fn guard(&self) -> &InferenceGuard {
        &self.guard
    }

    /// What to do with a request, from its method and raw (undecoded) path.
    pub fn route(&self, method: &str, raw_path: &str) -> Route {
        route::decide(
            method,
            raw_path,
            &self.config.prefix,
            self.config.guard_prefix,
            &self.config.public,
        )
    }

    /// The first step for a request: its route, then (for a guarded endpoint) its
    /// credential headers. `Ok(None)`: pass it on unguarded.
    ///
    /// # Errors
    ///
    /// The response to send instead: a route refusal, duplicated or malformed
    /// credentials.
    pub fn begin<'h>(
        &self,
        method: &str,
        raw_path: &str,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    ) -> Result<Option<Pending>, ErrorResponse> {
        let endpoint = match self.route(method, raw_path) {
            Route::Pass => return Ok(None),
            Route::Refuse(e) => return Err(e),
            Route::Guard(e) => e,
        };
        let mut seen = Seen::default();
        for (name, value) in headers {
            seen.take(name, value, &self.config)?;
        }
        let credentials = seen.credentials()?;
        Ok(Some(Pending {
            endpoint,
            credentials,
            body_error: seen.check_body(&self.config).err(),
            user_agent: seen
                .user_agent
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|v| cap(v, MAX_USER_AGENT_BYTES).to_owned()),
            traceparent: seen.traceparent.and_then(traceparent),
        }))
    }

    /// Admits a request: a request without credentials is refused (and audited)
    /// before its body is read; a declared length over the limit (`413`) or a type
    /// other than JSON (`415`) is refused before it is read; then the body (`body`,
    /// the adapter's read with its limit and timeout) is parsed, checked against the
    /// allow-list and the guard.
    ///
    /// # Errors
    ///
    /// The response to send instead (a rejection, or a protocol error).
    pub async fn admit<B: AsRef<[u8]>>(
        &self,
        pending: Pending,
        body: impl Future<Output = Result<B, ErrorResponse>>,
        client_addr: Option<IpAddr>,
    ) -> Result<Admitted, ErrorResponse> {
        let route = pending.endpoint.path();
        if pending.credentials.is_empty() && self.guard.requires_credentials() {
            let mut bare = GuardRequest::new("").with_route(route);
            if let Some(a) = client_addr {
                bare = bare.with_client_addr(a);
            }
            match self.guard.check_request_async(bare).await {
                Err(r) => return Err(ErrorResponse::from_rejection(&r)),
                // A verifier that admits a request without credentials: the real
                // check follows; this one is refunded, not charged.
                Ok(a) => a.fail(),
            }
        }
        if let Some(e) = pending.body_error {
            return Err(e);
        }
        let bytes = body.await?;
        let mut call = call::Call::parse(pending.endpoint, bytes.as_ref(), &self.config)?;
        let mut req = call.guard_request(pending.credentials, route, &self.config)?;
        if let Some(a) = client_addr {
            req = req.with_client_addr(a);
        }
        if let Some(ua) = pending.user_agent {
            req = req.with_metadata("user_agent", ua);
        }
        if let Some(tp) = pending.traceparent {
            req = req.with_trace_id(tp);
        }
        let admission = self
            .guard
            .check_request_async(req)
            .await
            .map_err(|r| ErrorResponse::from_rejection(&r))?;
        let body = call.forward(admission.request())?;
        Ok(Admitted {
            admission,
            endpoint: pending.endpoint,
            body,
        })
    }
}

/// An admitted request: the body to forward, and what checks the answer.
///
/// Dropping it (a caller that went away) charges the reservation; end it with
/// [`answer`](Self::answer), [`relay`](Self::relay),
/// [`upstream_failed`](Self::upstream_failed) or
/// [`answer_unreadable`](Self::answer_unreadable).
#[derive(Debug)]
#[must_use = "an admitted request must be answered"]
pub struct Admitted {
    admission: Admission,
    endpoint: Endpoint,
    body: Vec<u8>,
}

/// A validated non-streamed answer, ready to send.
#[derive(Debug)]
pub struct Answer {
    body: Vec<u8>,
    receipt: Option<String>,
}

impl Answer {
    /// The JSON body (rebuilt from the validated parts).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    /// The body, by value.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
    /// The receipt to send as `x-inference-receipt`, when the guard issues them.
    pub fn receipt(&self) -> Option<&str> {
        self.receipt.as_deref()
    }
}

impl Admitted {
    /// The body to forward to the model (allow-listed, redacted, with the enforced
    /// output ceiling). Send it as `application/json` with its length.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    /// The endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
    /// Who is calling.
    pub fn principal(&self) -> &Principal {
        self.admission.principal()
    }
    /// The request's id (as in the audit record).
    pub fn request_id(&self) -> RequestId {
        self.admission.request_id()
    }
    /// Rate-limit headers to add to the response.
    pub fn rate_limit_headers(&self) -> Vec<(&'static str, String)> {
        self.admission
            .rate_limit()
            .map(rate_limit_headers)
            .unwrap_or_default()
    }
    /// The admission (for the request the model receives, findings, timings).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The model call failed (transport error or an error status): the reservation
    /// is refunded and the failure recorded.
    pub fn upstream_failed(self) {
        self.admission.fail();
    }

    /// The model answered with an error status: the failure is recorded (the
    /// reservation refunded) and the caller gets an error in the OpenAI shape with
    /// the same status, never the upstream's body or headers (an upstream error
    /// message can echo the prompt, or name the operator's own credential). An
    /// upstream `401`/`403` (the gateway's upstream key) becomes a `502`; a numeric
    /// `Retry-After` of at most a day is kept.
    ///
    /// ```
    /// # use inference_guard::exchange::*;
    /// # use inference_guard::*;
    /// # fn once<F: std::future::Future>(f: F) -> F::Output {
    /// #     let w = std::task::Waker::noop();
    /// #     match std::pin::pin!(f).poll(&mut std::task::Context::from_waker(&w)) { std::task::Poll::Ready(v) => v, _ => unreachable!() }
    /// # }
    /// let mut b = InferenceGuard::builder();
    /// b.allow_anonymous().authorize_all().audit_sink(NoopSink);
    /// let ex = Exchange::new(b.build()?, ExchangeConfig::default());
    /// let headers = [("content-type", &b"application/json"[..])];
    /// let p = ex.begin("POST", "/v1/embeddings", headers.iter().map(|(n, v)| (*n, *v)))?.unwrap();
    /// let body = async { Ok::<_, ErrorResponse>(br#"{"model":"e","input":"x"}"#.to_vec()) };
    /// let admitted = once(ex.admit(p, body, None))?;
    /// let e = admitted.upstream_error(503, Some(b"7"));
    /// assert_eq!((e.status(), e.headers().iter().any(|(n, v)| *n == "retry-after" && v == "7")), (503, true));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upstream_error(self, status: u16, retry_after: Option<&[u8]>) -> ErrorResponse {
        self.admission.fail();
        let status = match status {
            401 | 403 | 407 => 502,
            400..=599 => status,
            _ => 502,
        };
        let mut e = ErrorResponse::new(
            status,
            "upstream_error",
            "the model service returned an error",
        );
        let secs = retry_after
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|s| *s <= 86_400);
        if let Some(s) = secs {
            e = e.with_header("retry-after", s.to_string());
        }
        e
    }

    /// The answer could not be read (over [`ExchangeConfig::max_answer_bytes`], or
    /// the connection broke): charged the reservation, recorded. Returns the `502`
    /// to send.
    pub fn answer_unreadable(self) -> ErrorResponse {
        self.admission.abort(None);
        ErrorResponse::bad_upstream()
    }

    /// Validates a non-streamed answer (every choice, every text-bearing field)
    /// and rebuilds it from the validated parts.
    ///
    /// # Errors
    ///
    /// The response to send instead: `502` for an answer that is not the
    /// endpoint's JSON (charged), `422` for a blocked answer, `503` when a stage
    /// fails closed.
    pub async fn answer(self, bytes: &[u8]) -> Result<Answer, ErrorResponse> {
        let mut parsed = match answer::Parsed::parse(self.endpoint, bytes) {
            Ok(p) => p,
            Err(usage) => {
                self.admission.abort(usage);
                return Err(ErrorResponse::bad_upstream());
            }
        };
        let (parts, usage) = parsed.take_parts();
        let id = self.admission.request_id().to_string();
        let model = self.admission.request().model().to_owned();
        let checked = self
            .admission
            .check_responses_async(parts, usage)
            .await
            .map_err(|r| ErrorResponse::from_rejection(&r))?;
        let receipt = checked.receipt().map(str::to_owned);
        Ok(Answer {
            body: parsed.rebuild(checked.responses(), &id, &model),
            receipt,
        })
    }

    /// Relays a streamed (`text/event-stream`) answer through the guard.
    pub fn relay(self) -> SseRelay {
        SseRelay::new(crate::guard::SseGuard::new(self.admission.stream()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes()))
    }

    #[test]
    fn credential_headers() {
        let c = ExchangeConfig::default();
        assert!(
            credentials(h(&[("Authorization", "Bearer x")]), &c)
                .unwrap()
                .bearer_token()
                .is_some()
        );
        assert!(
            credentials(h(&[("X-Api-Key", "igk_1")]), &c)
                .unwrap()
                .api_key()
                .is_some()
        );
        assert_eq!(
            credentials(
                h(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]),
                &c
            )
            .unwrap_err()
            .status(),
            400
        );
        assert_eq!(
            credentials(h(&[("authorization", "Basic dXNlcjpw")]), &c)
                .unwrap_err()
                .status(),
            401
        );
        assert_eq!(
            credentials(h(&[("authorization", "Bearer\u{7f}x")]), &c)
                .unwrap_err()
                .status(),
            400
        );
        assert!(credentials(h(&[]), &c).unwrap().is_empty());
        assert_eq!(
            check_content_type(Some(b"application/json; charset=utf-8")),
            Ok(())
        );
        assert_eq!(
            check_content_type(Some(b"text/plain"))
                .unwrap_err()
                .status(),
            415
        );
    }

    #[test]
    fn trace_context_is_kept_only_when_valid() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(traceparent(ok.as_bytes()).as_deref(), Some(ok));
        assert_eq!(traceparent(&[b'a'; 1 << 16]), None);
        assert_eq!(traceparent(b"00-xyz"), None);
        assert_eq!(
            traceparent(b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            None
        );
        assert_eq!(cap("h\u{e9}llo", 2), "h");
    }

    #[test]
    fn endpoints_by_path() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/v1//chat/completions/"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(Endpoint::from_path("/v1/models"), None);
        assert_eq!(Endpoint::Embeddings.path(), "/v1/embeddings");
    }
}
