//! [`InferenceGuard`], its builder, and the request lifecycle.

mod sse;
pub(crate) mod stream;

pub use sse::SseGuard;
pub use stream::{StreamEnd, StreamGuard};

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

/// Stage timings read the CPU time-stamp counter (a few nanoseconds) rather than the
/// system clock (tens of nanoseconds in a VM): a request takes about eight readings.
use quanta::Instant;

use smallvec::SmallVec;

use crate::decision::{FailOpenStage, RateLimitInfo, RejectReason, Rejection, ShadowStage, Stage};
use crate::error::{BuildError, Error, ErrorKind, StageError};
use crate::finding::{Action, Category, Enforcement, Finding, Location, Severity, redact};
use crate::id::RequestId;
use crate::principal::Principal;
use crate::record::{AbuseAction, AuditEvent, Observation, Outcome, StageOutcome, StageRecord};
use crate::request::GuardRequest;
use crate::response::{GuardResponse, ToolCall, Usage};
use crate::stage::{
    AuditObserver, AuditSink, Authorizer, IdentityVerifier, InputScanner, OutputValidator, Permit,
    RateLimiter, StageContext,
};
use crate::step::{Step, poll_once};

/// Size limits on requests and answers. Requests over a limit are rejected with
/// `413`; answers over [`max_output_bytes`](Self::max_output_bytes) are blocked.
///
/// ```
/// use inference_guard::RequestLimits;
/// let limits = RequestLimits::default().max_messages(32).max_request_bytes(256 * 1024);
/// assert_eq!(limits.messages(), 32);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    max_message_bytes: usize,
    max_request_bytes: usize,
    max_messages: usize,
    max_output_bytes: usize,
}

impl Default for RequestLimits {
    /// 256 KiB per message, 1 MiB per request, 256 messages, 1 MiB of answer.
    fn default() -> Self {
        Self {
            max_message_bytes: 256 * 1024,
            max_request_bytes: 1024 * 1024,
            max_messages: 256,
            max_output_bytes: 1024 * 1024,
        }
    }
}

impl RequestLimits {
    /// Maximum bytes of one message's text.
    #[must_use]
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }
    /// Maximum bytes of all messages' text together.
    #[must_use]
    pub fn max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n;
        self
    }
    /// Maximum number of messages.
    #[must_use]
    pub fn max_messages(mut self, n: usize) -> Self {
        self.max_messages = n;
        self
    }
    /// Maximum bytes of an answer (text plus tool-call arguments).
    #[must_use]
    pub fn max_output_bytes(mut self, n: usize) -> Self {
        self.max_output_bytes = n;
        self
    }
    /// The per-message limit.
    pub fn message_bytes(&self) -> usize {
        self.max_message_bytes
    }
    /// The per-request limit.
    pub fn request_bytes(&self) -> usize {
        self.max_request_bytes
    }
    /// The message-count limit.
    pub fn messages(&self) -> usize {
        self.max_messages
    }
    /// The answer limit.
    pub fn output_bytes(&self) -> usize {
        self.max_output_bytes
    }
}

/// Counters a guard keeps for operators.
///
/// ```
/// # use inference_guard::*;
/// # let mut b = InferenceGuard::builder();
/// # b.allow_anonymous().authorize_all().audit_sink(NoopSink);
/// # let guard = b.build().unwrap();
/// assert_eq!(guard.stats().audit_failures, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardStats {
    /// Audit events the sink failed to record.
    pub audit_failures: u64,
    /// Stage failures that were let through because the stage is fail-open.
    pub failed_open: u64,
    /// Stage failures that rejected the request (fail closed).
    pub failed_closed: u64,
    /// Panics caught in [audit observers](crate::AuditObserver) (the request went
    /// on; the observer missed that event).
    pub observer_panics: u64,
}

#[derive(Default)]
struct Counters {
    audit_failures: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    observer_panics: AtomicU64,
}

#[derive(Clone)]
struct Policy {
    fail_open: [bool; Stage::ALL.len()],
    enforcement: [Enforcement; Stage::ALL.len()],
    /// (pattern, is_glob, action), most specific first.
    rule_actions: Vec<(String, bool, Action)>,
}

impl Policy {
    fn action_for(&self, rule_id: &str) -> Option<Action> {
        self.rule_actions.iter().find_map(|(p, glob, a)| {
            let hit = if *glob {
                crate::codec::glob_match(p, rule_id)
            } else {
                rule_id == p
            };
            hit.then_some(*a)
        })
    }

    /// Applies rule overrides; returns the strictest action.
    fn resolve(&self, findings: &mut [Finding]) -> Option<Action> {
        let mut max = None;
        for f in findings.iter_mut() {
            if let Some(a) = self.action_for(f.rule_id()) {
                f.set_action(a);
            }
            max = max.max(Some(f.action()));
        }
        max
    }

    fn shadow(&self, stage: Stage) -> bool {
        self.enforcement[stage.index()] == Enforcement::Shadow
    }

    /// Applies rule overrides to `findings` and says what the stage did: the one
    /// mapping from findings to an outcome, for input, whole answers and streams.
    fn judge(&self, stage: Stage, findings: &mut [Finding]) -> StageOutcome {
        outcome_of(self.resolve(findings), self.shadow(stage))
    }
}

/// The outcome of a stage whose strictest action is `action`.
fn outcome_of(action: Option<Action>, shadow: bool) -> StageOutcome {
    match action {
        None => StageOutcome::Passed,
        Some(Action::Flag) => StageOutcome::Flagged,
        Some(_) if shadow => StageOutcome::Shadowed,
        Some(Action::Block) => StageOutcome::Rejected,
        Some(_) => StageOutcome::Redacted,
    }
}

struct Inner {
    identity: Option<Arc<dyn IdentityVerifier>>,
    allow_anonymous: bool,
    authorizer: Arc<dyn Authorizer>,
    rate_limiter: Option<Arc<dyn RateLimiter>>,
    scanners: Vec<Arc<dyn InputScanner>>,
    validators: Vec<Arc<dyn OutputValidator>>,
    sink: Arc<dyn AuditSink>,
    limits: RequestLimits,
    policy: Policy,
    realm: Box<str>,
    unavailable_retry: Duration,
    audit_digest: Option<ring::hmac::Key>,
    audit_content: bool,
    counters: Counters,
    abuse: Option<crate::respond::AbuseMonitor>,
    observers: Box<[Arc<dyn AuditObserver>]>,
    receipts: Option<crate::receipt::ReceiptSigner>,
    policy_version: Box<str>,
    /// Emit metrics through the `metrics` facade (feature `metrics`).
    #[cfg(feature = "metrics")]
    metrics: bool,
    /// The tracer spans go to (feature `otel`).
    #[cfg(feature = "otel")]
    tracer: Option<opentelemetry::global::BoxedTracer>,
}

/// The guard: one pipeline of stages run around every model call.
///
/// Build it once at start-up with [`InferenceGuard::builder`] and share it: it is
/// `Send + Sync` and cloning it is one reference count.
///
/// # Lifecycle
///
/// 1. [`check_request`](Self::check_request) (or
///    [`check_request_async`](Self::check_request_async)) runs identity, limits,
///    authorization, rate limiting and input scanning. It returns an [`Admission`] or
///    a [`Rejection`].
/// 2. The service calls its model with [`Admission::request`] (possibly redacted).
/// 3. [`Admission::check_response`] validates a whole answer, or
///    [`Admission::stream`] returns a [`StreamGuard`] for a streamed one. Either
///    settles the rate-limit reservation and records the audit event.
///
/// Every path records exactly one audit event, including rejections, a failed model
/// call ([`Admission::fail`]), and an admission that is dropped.
///
/// ```
/// use inference_guard::*;
///
/// let sink = MemorySink::new();
/// let mut builder = InferenceGuard::builder();
/// builder
///     .identity(verifier_fn(|req| match req.credentials().api_key() {
///         Some(k) if k.expose() == "demo-key" => {
///             Ok(Principal::builder("demo", CredentialKind::ApiKey).scope("models:*").build())
///         }
///         _ => Err(Rejection::unauthenticated("unknown api key").into()),
///     }))
///     .authorizer(authorizer_fn(|p, _req| {
///         if p.has_scope("models:*") { Ok(()) } else { Err(Rejection::forbidden("scope").into()) }
///     }))
///     .audit_sink(sink.clone());
/// let guard = builder.build()?;
///
/// let request = GuardRequest::new("demo-model")
///     .with_credentials(Credentials::from_api_key("demo-key"))
///     .with_message(Role::User, "Say hello");
/// let admission = guard.check_request(request)?;
/// let answer = GuardResponse::new("Hello!"); // your model call goes here
/// let checked = admission.check_response(answer)?;
/// assert_eq!(checked.response().text(), "Hello!");
///
/// let denied = guard.check_request(GuardRequest::new("demo-model")).unwrap_err();
/// assert_eq!(denied.status(), 401);
/// assert_eq!(sink.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct InferenceGuard {
    inner: Arc<Inner>,
}

impl fmt::Debug for InferenceGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.inner;
        f.debug_struct("InferenceGuard")
            .field("identity", &g.identity.as_ref().map(|s| s.name()))
            .field("allow_anonymous", &g.allow_anonymous)
            .field("authorizer", &g.authorizer.name())
            .field("rate_limiter", &g.rate_limiter.as_ref().map(|s| s.name()))
            .field(
                "input_scanners",
                &g.scanners.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field(
                "output_validators",
                &g.validators.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("audit_sink", &g.sink.name())
            .field("limits", &g.limits)
            .finish_non_exhaustive()
    }
}

/// Builds an [`InferenceGuard`]. A non-consuming builder: setters take `&mut self`,
/// [`build`](Self::build) takes `&self`, validates and can be called again.
///
/// # Secure defaults
///
/// - An identity verifier is required, unless [`allow_anonymous`](Self::allow_anonymous)
///   is called.
/// - An authorizer is required, unless [`authorize_all`](Self::authorize_all) is called.
/// - An audit sink is required; pass [`NoopSink`](crate::NoopSink) to disable auditing
///   explicitly.
/// - Every stage fails closed; [`fail_open`](Self::fail_open) is refused for identity,
///   limits and authorization.
/// - Every stage enforces; [shadow mode](Enforcement::Shadow) is allowed for rate
///   limiting, input scanning and output validation only.
///
/// ```
/// use inference_guard::{InferenceGuard, NoopSink};
/// let mut b = InferenceGuard::builder();
/// assert!(b.build().is_err()); // no identity
/// b.allow_anonymous().authorize_all().audit_sink(NoopSink);
/// assert!(b.build().is_ok());
/// ```
#[derive(Clone, Default)]
pub struct GuardBuilder {
    identity: Option<Arc<dyn IdentityVerifier>>,
    allow_anonymous: bool,
    authorizer: Option<Arc<dyn Authorizer>>,
    authorize_all: bool,
    rate_limiter: Option<Arc<dyn RateLimiter>>,
    scanners: Vec<Arc<dyn InputScanner>>,
    validators: Vec<Arc<dyn OutputValidator>>,
    sink: Option<Arc<dyn AuditSink>>,
    limits: RequestLimits,
    fail_open: Vec<Stage>,
    enforcement: Vec<(Stage, Enforcement)>,
    rule_actions: Vec<(String, Action)>,
    realm: Option<String>,
    unavailable_retry: Option<Duration>,
    audit_digest_key: Option<Vec<u8>>,
    audit_content: bool,
    abuse: Option<crate::respond::AbuseMonitor>,
    observers: Vec<Arc<dyn AuditObserver>>,
    receipts: Option<crate::receipt::ReceiptSigner>,
    policy_version: Option<String>,
    #[cfg(feature = "metrics")]
    no_metrics: bool,
    #[cfg(feature = "otel")]
    no_spans: bool,
}

impl fmt::Debug for GuardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardBuilder")
            .field("identity", &self.identity.as_ref().map(|s| s.name()))
            .field("allow_anonymous", &self.allow_anonymous)
            .field("authorizer", &self.authorizer.as_ref().map(|s| s.name()))
            .field("authorize_all", &self.authorize_all)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize<'a>(&'a self, _cx: StageContext<'a>) -> Step<'a, Result<(), StageError>> {
        Step::ready(Ok(()))
    }
    fn name(&self) -> &str {
        "authorize_all"
    }
}

impl GuardBuilder {
    /// Sets the identity verifier.
    pub fn identity(&mut self, verifier: impl IdentityVerifier) -> &mut Self {
        self.identity = Some(Arc::new(verifier));
        self
    }

    /// Lets callers without credentials through as [`Principal::anonymous`]. Callers
    /// that present credentials are still verified (when a verifier is set), and
    /// rejected if the credentials are bad.
    pub fn allow_anonymous(&mut self) -> &mut Self {
        self.allow_anonymous = true;
        self
    }

    /// Sets the authorizer.
    pub fn authorizer(&mut self, authorizer: impl Authorizer) -> &mut Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Allows every authenticated principal to make any request. Explicit, because it
    /// gives every credential every model and tool (OWASP NHI5, over-privileged
    /// identities).
    pub fn authorize_all(&mut self) -> &mut Self {
        self.authorize_all = true;
        self
    }

    /// Sets the rate limiter.
    pub fn rate_limiter(&mut self, limiter: impl RateLimiter) -> &mut Self {
        self.rate_limiter = Some(Arc::new(limiter));
        self
    }

    /// Adds an input scanner. Scanners run in the order they were added.
    pub fn input_scanner(&mut self, scanner: impl InputScanner) -> &mut Self {
        self.scanners.push(Arc::new(scanner));
        self
    }

    /// Adds an output validator. Validators run in the order they were added.
    pub fn output_validator(&mut self, validator: impl OutputValidator) -> &mut Self {
        self.validators.push(Arc::new(validator));
        self
    }

    /// Sets the audit sink. For several sinks, pass a `Vec` of them.
    pub fn audit_sink(&mut self, sink: impl AuditSink) -> &mut Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// Responds to abuse: principals and addresses that keep getting rejected are
    /// throttled, then suspended (see [`respond`](crate::respond)). The monitor
    /// refuses throttled and suspended callers before the rate limits, and observes
    /// every request's event first among the [observers](Self::observer). Replaces
    /// an earlier monitor.
    pub fn abuse_monitor(&mut self, monitor: crate::respond::AbuseMonitor) -> &mut Self {
        self.abuse = Some(monitor);
        self
    }

    /// Keeps usage facts of every principal (see [`inventory`](crate::inventory)): an
    /// [observer](Self::observer).
    pub fn inventory(&mut self, inventory: crate::inventory::Inventory) -> &mut Self {
        self.observer(inventory)
    }

    /// Adds an observer of every request's audit event (see [`AuditObserver`]).
    /// Observers run in the order they were added, after the abuse monitor.
    pub fn observer(&mut self, observer: impl AuditObserver) -> &mut Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Issues a signed receipt for every validated answer (see
    /// [`receipt`](crate::receipt)).
    pub fn receipts(&mut self, signer: crate::receipt::ReceiptSigner) -> &mut Self {
        self.receipts = Some(signer);
        self
    }

    /// Whether the guard emits metrics through the `metrics` facade (feature
    /// `metrics`; default on): decisions, stage latencies, tokens, findings, abuse
    /// responses, audit failures. See the README's metric list. Without a recorder
    /// installed, each emission is a no-op.
    ///
    /// ```
    /// # use inference_guard::*;
    /// let mut b = InferenceGuard::builder();
    /// b.allow_anonymous().authorize_all().audit_sink(NoopSink).metrics(false);
    /// # b.build().unwrap();
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(&mut self, on: bool) -> &mut Self {
        self.no_metrics = !on;
        self
    }

    /// Whether the guard emits OpenTelemetry spans (feature `otel`; default on): one
    /// per request and one per stage, with the GenAI security attributes, joined to
    /// the caller's trace when the request carries a W3C `traceparent`
    /// ([`GuardRequest::with_trace_id`]). The tracer is taken from the global
    /// provider when the guard is built: install the SDK first. Never content, never
    /// credentials. See the README, "Tracing".
    ///
    /// ```
    /// # use inference_guard::*;
    /// let mut b = InferenceGuard::builder();
    /// b.allow_anonymous().authorize_all().audit_sink(NoopSink).spans(false);
    /// # b.build().unwrap();
    /// ```
    #[cfg(feature = "otel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
    pub fn spans(&mut self, on: bool) -> &mut Self {
        self.no_spans = !on;
        self
    }

    /// The version of the policy this guard enforces, bound into receipts (default
    /// `unversioned`).
    pub fn policy_version(&mut self, version: impl Into<String>) -> &mut Self {
        self.policy_version = Some(version.into());
        self
    }

    /// Sets the size limits.
    pub fn limits(&mut self, limits: RequestLimits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// Lets requests through when `stage` fails (an error or a panic) instead of
    /// answering `503`. The audit record says `failed_open`. Only the stages of
    /// [`FailOpenStage`]: identity, limits and authorization always fail closed.
    pub fn fail_open(&mut self, stage: FailOpenStage) -> &mut Self {
        let stage = Stage::from(stage);
        if !self.fail_open.contains(&stage) {
            self.fail_open.push(stage);
        }
        self
    }

    /// Sets whether `stage` enforces its decisions or only records them (shadow).
    /// Only the stages of [`ShadowStage`]: the others always enforce.
    pub fn enforcement(&mut self, stage: ShadowStage, enforcement: Enforcement) -> &mut Self {
        self.enforcement.push((Stage::from(stage), enforcement));
        self
    }

    /// Overrides the action of a rule, by exact id (`"pii.email"`) or by a glob
    /// whose `*` stands for any run of characters (`"pii.*"`, `"secret.*.key"`): the
    /// dialect grants use too. An exact id wins over a glob, and a glob with more
    /// literal characters over one with fewer.
    ///
    /// ```
    /// use inference_guard::{Action, InferenceGuard};
    /// let mut b = InferenceGuard::builder();
    /// b.rule_action("pii.*", Action::Redact).rule_action("pii.ssn", Action::Block);
    /// ```
    pub fn rule_action(&mut self, pattern: impl Into<String>, action: Action) -> &mut Self {
        self.rule_actions.push((pattern.into(), action));
        self
    }

    /// Sets the realm of the `WWW-Authenticate` challenge (default `"inference"`).
    pub fn realm(&mut self, realm: impl Into<String>) -> &mut Self {
        self.realm = Some(realm.into());
        self
    }

    /// Sets the `Retry-After` sent with `503` when a stage fails closed (default 1 s).
    pub fn unavailable_retry_after(&mut self, retry_after: Duration) -> &mut Self {
        self.unavailable_retry = Some(retry_after);
        self
    }

    /// Adds keyed digests (HMAC-SHA256 under `key`) of the prompt and the answer to
    /// every audit event, so events can be correlated with content held elsewhere
    /// without the log holding the content. The prompt digest covers the messages as
    /// received (before redaction); the answer digest covers the answer as returned,
    /// or as produced when it was blocked.
    pub fn audit_digest_key(&mut self, key: &[u8]) -> &mut Self {
        self.audit_digest_key = Some(key.to_vec());
        self
    }

    /// Includes content in audit events: the admitted messages (after input redaction)
    /// and the answer as returned (after output redaction; never a blocked answer).
    /// Off by default (OWASP Logging Cheat Sheet: do not log sensitive data).
    pub fn audit_content(&mut self, enabled: bool) -> &mut Self {
        self.audit_content = enabled;
        self
    }

    /// Validates the configuration and builds the guard.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] that says what is missing or inconsistent: no identity
    /// verifier and no `allow_anonymous`; no authorizer and no `authorize_all`; no
    /// audit sink; fail-open or shadow mode on a stage that refuses it; zero limits; an
    /// invalid rule pattern or realm.
    pub fn build(&self) -> Result<InferenceGuard, BuildError> {
        if self.identity.is_none() && !self.allow_anonymous {
            return Err(BuildError::invalid(
                "guard.identity",
                "no identity verifier: call .identity(..), or .allow_anonymous() to let every caller in as anonymous",
            ));
        }
        let authorizer: Arc<dyn Authorizer> = match (&self.authorizer, self.authorize_all) {
            (Some(a), false) => a.clone(),
            (None, true) => Arc::new(AllowAll),
            (Some(_), true) => {
                return Err(BuildError::invalid(
                    "guard.authorizer",
                    "both .authorizer(..) and .authorize_all() were called: choose one",
                ));
            }
            (None, false) => {
                return Err(BuildError::invalid(
                    "guard.authorizer",
                    "no authorizer: call .authorizer(..), or .authorize_all() to let every authenticated caller use every model and tool",
                ));
            }
        };
        let Some(sink) = self.sink.clone() else {
            return Err(BuildError::invalid(
                "guard.audit_sink",
                "no audit sink: call .audit_sink(..); pass NoopSink to disable auditing explicitly",
            ));
        };
        let mut policy = Policy {
            fail_open: [false; Stage::ALL.len()],
            enforcement: [Enforcement::Enforce; Stage::ALL.len()],
            rule_actions: Vec::new(),
        };
        // The setters take only the stages that qualify (FailOpenStage,
        // ShadowStage): nothing to refuse here.
        for &stage in &self.fail_open {
            policy.fail_open[stage.index()] = true;
        }
        for &(stage, mode) in &self.enforcement {
            policy.enforcement[stage.index()] = mode;
        }
        for (pattern, action) in &self.rule_actions {
            if pattern.is_empty() {
                return Err(BuildError::invalid(
                    "guard.rule_action",
                    "an empty rule pattern: use a rule id or a glob (`pii.*`)",
                ));
            }
            policy
                .rule_actions
                .push((pattern.clone(), pattern.contains('*'), *action));
        }
        // Most specific first: exact ids before globs, then the glob with more
        // literal characters; the last call wins among equal patterns.
        policy.rule_actions.reverse();
        policy.rule_actions.sort_by_key(|(p, glob, _)| {
            (
                *glob,
                std::cmp::Reverse(p.bytes().filter(|&b| b != b'*').count()),
            )
        });
        let l = self.limits;
        if l.max_message_bytes == 0
            || l.max_request_bytes == 0
            || l.max_messages == 0
            || l.max_output_bytes == 0
        {
            return Err(BuildError::invalid(
                "guard.limits",
                "request limits must be greater than zero",
            ));
        }
        if self.audit_digest_key.as_ref().is_some_and(|k| k.len() < 32) {
            return Err(BuildError::invalid(
                "guard.audit_digest_key",
                "the audit digest key must be at least 32 bytes",
            ));
        }
        let realm = self.realm.clone().unwrap_or_else(|| "inference".to_owned());
        if realm.is_empty()
            || realm
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(BuildError::invalid(
                "guard.realm",
                "realm must be non-empty and contain no quotes, backslashes or control characters",
            ));
        }
        Ok(InferenceGuard {
            inner: Arc::new(Inner {
                identity: self.identity.clone(),
                allow_anonymous: self.allow_anonymous,
                authorizer,
                rate_limiter: self.rate_limiter.clone(),
                scanners: self.scanners.clone(),
                validators: self.validators.clone(),
                sink,
                limits: self.limits,
                policy,
                realm: realm.into_boxed_str(),
                unavailable_retry: self.unavailable_retry.unwrap_or(Duration::from_secs(1)),
                audit_digest: self
                    .audit_digest_key
                    .as_ref()
                    .map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)),
                audit_content: self.audit_content,
                counters: Counters::default(),
                abuse: self.abuse.clone(),
                observers: self
                    .abuse
                    .iter()
                    .map(|m| Arc::new(m.clone()) as Arc<dyn AuditObserver>)
                    .chain(self.observers.iter().cloned())
                    .collect(),
                receipts: self.receipts.clone(),
                policy_version: self
                    .policy_version
                    .as_deref()
                    .unwrap_or("unversioned")
                    .into(),
                #[cfg(feature = "metrics")]
                metrics: !self.no_metrics,
                #[cfg(feature = "otel")]
                tracer: (!self.no_spans).then(|| opentelemetry::global::tracer("inference-guard")),
            }),
        })
    }
}

/// Per-request state the guard accumulates for the audit event.
pub(crate) struct Trace {
    pub(crate) request_id: RequestId,
    pub(crate) started: Option<SystemTime>,
    pub(crate) stages: SmallVec<[StageRecord; 8]>,
    pub(crate) input_findings: Vec<Finding>,
    pub(crate) output_findings: Vec<Finding>,
    pub(crate) rate: Option<RateLimitInfo>,
    pub(crate) estimated_tokens: u64,
    pub(crate) prompt_digest: Option<[u8; 32]>,
    /// Pseudonyms put into the request and the originals they stand for. Held for the
    /// request only, in memory; never serialized into an audit record.
    pub(crate) vault: Vec<(String, String)>,
    /// When the guard started, on the monotonic clock (pairs with `started`).
    pub(crate) origin: Option<Instant>,
    /// The last stage boundary: each stage's latency is the time since the previous
    /// boundary, so a stage costs one clock read.
    pub(crate) mark: Option<Instant>,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            request_id: RequestId::NIL,
            started: None,
            stages: SmallVec::new(),
            input_findings: Vec::new(),
            output_findings: Vec::new(),
            rate: None,
            estimated_tokens: 0,
            prompt_digest: None,
            vault: Vec::new(),
            origin: None,
            mark: None,
        }
    }
}

impl Trace {
    fn new() -> Self {
        let (now, origin) = crate::id::now();
        Self {
            request_id: RequestId::at(now),
            started: Some(now),
            origin: Some(origin),
            mark: Some(origin),
            ..Self::default()
        }
    }

    /// Starts timing a stage from now (used after the model call).
    pub(crate) fn reset_mark(&mut self) {
        self.mark = Some(Instant::now());
    }

    /// The interval since the last boundary; sets a new boundary.
    pub(crate) fn lap(&mut self) -> (Instant, Instant) {
        let now = Instant::now();
        let start = self.mark.unwrap_or(now);
        self.mark = Some(now);
        (start, now)
    }

    fn push(&mut self, stage: Stage, outcome: StageOutcome, findings: usize) {
        let (start, end) = self.lap();
        self.stages.push(StageRecord {
            stage,
            outcome,
            start,
            end,
            error: None,
            findings: u32::try_from(findings).unwrap_or(u32::MAX),
        });
    }
}

enum Flow {
    Continue,
    Stop(Rejection),
}

/// Polls a stage future, turning a panic into an error.
struct CatchUnwind<'a, T> {
    step: Step<'a, Result<T, StageError>>,
    stage: Stage,
}

impl<T> Future for CatchUnwind<'_, T> {
    type Output = Result<T, StageError>;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let step = &mut this.step;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(step).poll(cx))) {
            Ok(p) => p,
            Err(_) => Poll::Ready(Err(Error::panicked(this.stage.as_str()).into())),
        }
    }
}

impl<T> Unpin for CatchUnwind<'_, T> {}

/// Runs one stage call: catches panics, and in synchronous mode refuses a stage that
/// returned a future.
pub(crate) async fn call<'a, T>(
    sync: bool,
    stage: Stage,
    f: impl FnOnce() -> Step<'a, Result<T, StageError>>,
) -> Result<T, StageError> {
    let Ok(step) = catch_unwind(AssertUnwindSafe(f)) else {
        return Err(Error::panicked(stage.as_str()).into());
    };
    match step.into_ready() {
        Ok(v) => v,
        Err(_) if sync => Err(Error::new(
            ErrorKind::WouldBlock,
            "stage returned a future; use the _async methods for guards with asynchronous stages",
        )
        .into()),
        Err(step) => CatchUnwind { step, stage }.await,
    }
}

/// The finding for an answer over [`RequestLimits::max_output_bytes`].
pub(crate) fn output_too_large() -> Finding {
    Finding::new(
        "limit.output_bytes",
        Category::Limit,
        Severity::High,
        Location::Output,
        0..0,
    )
    .with_action(Action::Block)
}

pub(crate) fn would_block() -> Rejection {
    Rejection::unavailable(
        "a stage did not complete synchronously",
        Duration::from_secs(1),
    )
}

fn summarize(findings: &[Finding], action: Action) -> String {
    let mut ids: SmallVec<[&str; 4]> = findings
        .iter()
        .filter(|f| f.action() == action)
        .map(Finding::rule_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let more = ids.len().saturating_sub(5);
    let mut s = String::from("rules: ");
    s.push_str(&ids[..ids.len().min(5)].join(", "));
    if more > 0 {
        s.push_str(&format!(" (+{more} more)"));
    }
    s
}

impl InferenceGuard {
    /// A builder; see [`GuardBuilder`].
    pub fn builder() -> GuardBuilder {
        GuardBuilder::default()
    }

    /// The guard's counters.
    pub fn stats(&self) -> GuardStats {
        let c = &self.inner.counters;
        GuardStats {
            audit_failures: c.audit_failures.load(Ordering::Relaxed),
            failed_open: c.failed_open.load(Ordering::Relaxed),
            failed_closed: c.failed_closed.load(Ordering::Relaxed),
            observer_panics: c.observer_panics.load(Ordering::Relaxed),
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> RequestLimits {
        self.inner.limits
    }

    /// Whether a request without credentials is always refused at identity (an
    /// identity stage is configured and anonymous callers are not allowed). HTTP
    /// adapters use it to answer `401` before reading a body.
    ///
    /// ```
    /// use inference_guard::*;
    /// let mut b = InferenceGuard::builder();
    /// b.allow_anonymous().authorize_all().audit_sink(NoopSink);
    /// assert!(!b.build()?.requires_credentials());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn requires_credentials(&self) -> bool {
        self.inner.identity.is_some() && !self.inner.allow_anonymous
    }

    /// Flushes the audit sink.
    ///
    /// # Errors
    ///
    /// The sink's error, if it could not flush.
    pub fn flush(&self) -> Result<(), Error> {
        self.inner.sink.flush()
    }

    /// Checks a request before the model call, synchronously.
    ///
    /// Use this when every stage is in memory (the built-in ones are). If a stage
    /// returns a future, the guard does not block on it: that stage fails with
    /// [`ErrorKind::WouldBlock`] and the guard fails closed (`503`) unless the stage is
    /// fail-open. Use [`check_request_async`](Self::check_request_async) for guards
    /// with asynchronous stages.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] when a stage rejects the request or fails closed.
    pub fn check_request(&self, request: GuardRequest) -> Result<Admission, Rejection> {
        poll_once(pin!(self.check(request, true))).unwrap_or_else(|| Err(would_block()))
    }

    /// Checks a request before the model call, awaiting asynchronous stages.
    ///
    /// The future is `Send`. If it is dropped before it completes, the guard records a
    /// [`Cancelled`](crate::Outcome::Cancelled) audit event and releases what it
    /// reserved.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] when a stage rejects the request or fails closed.
    pub async fn check_request_async(&self, request: GuardRequest) -> Result<Admission, Rejection> {
        self.check(request, false).await
    }

    /// Validates a whole answer; the same as [`Admission::check_response`].
    ///
    /// # Errors
    ///
    /// A [`Rejection`] when the answer is blocked, or a stage or the audit sink fails
    /// closed.
    pub fn check_response(
        &self,
        admission: Admission,
        response: GuardResponse,
    ) -> Result<CheckedResponse, Rejection> {
        admission.check_response(response)
    }

    async fn check(&self, request: GuardRequest, sync: bool) -> Result<Admission, Rejection> {
        // One allocation holds the request's state from here to the audit record; the
        // pipeline works on it in place and the admission is this box. If this future
        // is dropped mid-check, the admission's `Drop` records `Cancelled`.
        let mut admission = Admission {
            st: Box::new(State {
                guard: self.clone(),
                request,
                principal: None,
                trace: Trace::new(),
                permit: None,
                phase: Phase::Checking,
            }),
        };
        let st = &mut *admission.st;
        let result = self
            .admit(
                &mut st.request,
                &mut st.trace,
                &mut st.principal,
                &mut st.permit,
                sync,
            )
            .await;
        match result {
            Ok(()) => {
                admission.st.phase = Phase::Admitted;
                Ok(admission)
            }
            Err(rejection) => {
                let st = &mut *admission.st;
                st.phase = Phase::Finished;
                drop(st.permit.take()); // refunds anything reserved
                self.record(&AuditParts {
                    trace: &st.trace,
                    request: &st.request,
                    principal: st.principal.as_ref(),
                    outcome: Outcome::Rejected,
                    rejection: Some(&rejection),
                    usage: None,
                    answer: None,
                });
                Err(rejection)
            }
        }
    }

    fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Handles a stage's `Err`: shadow, fail-open, or reject.
    fn on_error(&self, stage: Stage, err: StageError, trace: &mut Trace) -> Flow {
        let g = &*self.inner;
        match err.into_parts() {
            Ok(mut rejection) => {
                if g.policy.shadow(stage) {
                    trace.push(stage, StageOutcome::Shadowed, 0);
                    return Flow::Continue;
                }
                trace.push(stage, StageOutcome::Rejected, 0);
                rejection.set_stage(stage);
                if let Some(info) = rejection.rate_limit() {
                    trace.rate = Some(info.clone());
                }
                Flow::Stop(rejection)
            }
            Err(error) => {
                let open = g.policy.fail_open[stage.index()];
                let (start, end) = trace.lap();
                trace.stages.push(StageRecord {
                    stage,
                    outcome: if open {
                        StageOutcome::FailedOpen
                    } else {
                        StageOutcome::FailedClosed
                    },
                    start,
                    end,
                    error: Some(error.kind()),
                    findings: 0,
                });
                if open {
                    self.counters().failed_open.fetch_add(1, Ordering::Relaxed);
                    Flow::Continue
                } else {
                    self.counters()
                        .failed_closed
                        .fetch_add(1, Ordering::Relaxed);
                    let mut r = Rejection::unavailable(
                        format!("stage {stage} failed: {}", error.kind()),
                        g.unavailable_retry,
                    );
                    r.set_stage(stage);
                    Flow::Stop(r)
                }
            }
        }
    }

    async fn admit(
        &self,
        request: &mut GuardRequest,
        trace: &mut Trace,
        principal_out: &mut Option<Principal>,
        permit_out: &mut Option<Permit>,
        sync: bool,
    ) -> Result<(), Rejection> {
        let g = &*self.inner;
        if let Some(key) = &g.audit_digest {
            trace.prompt_digest = Some(digest_messages(key, request));
        }

        // The audit sink must be able to take the event, or we fail closed before the
        // model is called.
        let ready = catch_unwind(AssertUnwindSafe(|| g.sink.ready()))
            .unwrap_or_else(|_| Err(Error::panicked("audit")));
        if let Err(e) = ready {
            if let Flow::Stop(r) = self.on_error(Stage::Audit, e.into(), trace) {
                return Err(r);
            }
        }

        // Identity.
        let principal = match &g.identity {
            Some(_) if request.credentials().is_empty() && g.allow_anonymous => {
                trace.push(Stage::Identity, StageOutcome::Skipped, 0);
                Principal::anonymous()
            }
            None => {
                trace.push(Stage::Identity, StageOutcome::Skipped, 0);
                Principal::anonymous()
            }
            Some(verifier) => {
                let req: &GuardRequest = request;
                match call(sync, Stage::Identity, || verifier.verify(req)).await {
                    Ok(p) => {
                        trace.push(Stage::Identity, StageOutcome::Passed, 0);
                        p
                    }
                    Err(e) => {
                        let presented = !req.credentials().is_empty();
                        let mut r = match self.on_error(Stage::Identity, e, trace) {
                            Flow::Stop(r) => r,
                            Flow::Continue => Rejection::unavailable(
                                "identity stage cannot continue",
                                g.unavailable_retry,
                            ),
                        };
                        r.ensure_challenge(&g.realm, presented);
                        // An address throttled for failed credentials (credential
                        // stuffing) is answered with its throttle; a credential that
                        // verifies is served whatever its address (NAT, proxies).
                        if let Some(m) = &g.abuse {
                            m.check_address(req.client_addr())?;
                        }
                        return Err(r);
                    }
                }
            }
        };
        let principal: &Principal = principal_out.insert(principal);
        if let Some(m) = &g.abuse {
            // Anonymous callers have no strikes of their own: their address does.
            if principal.is_anonymous() {
                if let Err(r) = m.check_address(request.client_addr()) {
                    trace.push(Stage::Identity, StageOutcome::Rejected, 0);
                    return Err(r);
                }
            }
            if let Err(r) = m.check_principal(principal) {
                trace.push(Stage::Authorization, StageOutcome::Rejected, 0);
                return Err(r);
            }
        }

        // Limits.
        let l = &g.limits;
        let too_large = if request.model().len() > crate::request::MAX_RECORDED_BYTES {
            Some(format!(
                "model name has {} bytes, limit {}",
                request.model().len(),
                crate::request::MAX_RECORDED_BYTES
            ))
        } else if request.messages().len() > l.max_messages {
            Some(format!(
                "{} messages, limit {}",
                request.messages().len(),
                l.max_messages
            ))
        } else if let Some((i, m)) = request
            .messages()
            .iter()
            .enumerate()
            .find(|(_, m)| m.content().len() > l.max_message_bytes)
        {
            Some(format!(
                "message {i} has {} bytes, limit {}",
                m.content().len(),
                l.max_message_bytes
            ))
        } else if request.input_bytes() > l.max_request_bytes {
            Some(format!(
                "request has {} bytes, limit {}",
                request.input_bytes(),
                l.max_request_bytes
            ))
        } else {
            None
        };
        if let Some(detail) = too_large {
            trace.push(Stage::Limits, StageOutcome::Rejected, 0);
            let mut r = Rejection::payload_too_large(detail);
            r.set_stage(Stage::Limits);
            return Err(r);
        }
        trace.push(Stage::Limits, StageOutcome::Passed, 0);

        // Authorization.
        {
            let req: &GuardRequest = request;
            let p = principal;
            match call(sync, Stage::Authorization, || {
                g.authorizer.authorize(StageContext::new(p, req))
            })
            .await
            {
                Ok(()) => {
                    trace.push(Stage::Authorization, StageOutcome::Passed, 0);
                    // The grant's output ceiling becomes the request's (an exchange
                    // forwards it), whether or not the caller named a maximum.
                    if let Some(c) = g.authorizer.output_ceiling(StageContext::new(p, req)) {
                        let m = req.max_output_tokens().map_or(c, |m| m.min(c));
                        request.set_max_output_tokens(Some(m));
                    }
                }
                Err(e) => {
                    return Err(match self.on_error(Stage::Authorization, e, trace) {
                        Flow::Stop(r) => r,
                        Flow::Continue => Rejection::unavailable(
                            "authorization stage cannot continue",
                            g.unavailable_retry,
                        ),
                    });
                }
            }
        }

        // Rate limits and budgets.
        trace.estimated_tokens = request.estimated_input_tokens()
            + u64::from(request.max_output_tokens().unwrap_or(0)) * u64::from(request.choices());
        if let Some(limiter) = &g.rate_limiter {
            let req: &GuardRequest = request;
            let p = principal;
            match call(sync, Stage::RateLimit, || {
                limiter.acquire(StageContext::new(p, req))
            })
            .await
            {
                Ok(permit) => {
                    if let Some(info) = permit.info() {
                        trace.rate = Some(info.clone());
                    }
                    if permit.reserved_tokens() > 0 {
                        trace.estimated_tokens = permit.reserved_tokens();
                        // The reservation caps the output too: what it holds for
                        // output, per choice, is the most the model may produce.
                        let per_choice = permit
                            .reserved_tokens()
                            .saturating_sub(request.estimated_input_tokens())
                            / u64::from(request.choices());
                        let cap = u32::try_from(per_choice).unwrap_or(u32::MAX).max(1);
                        let m = request.max_output_tokens().map_or(cap, |m| m.min(cap));
                        request.set_max_output_tokens(Some(m));
                    }
                    *permit_out = Some(permit);
                    trace.push(Stage::RateLimit, StageOutcome::Passed, 0);
                }
                Err(e) => {
                    if let Flow::Stop(r) = self.on_error(Stage::RateLimit, e, trace) {
                        return Err(r);
                    }
                }
            }
        }

        // Input scanning: every scanner sees the original text; redactions are
        // applied after the last one.
        if !g.scanners.is_empty() {
            let mut findings: Vec<Finding> = Vec::new();
            let mut failed: Option<StageError> = None;
            for scanner in &g.scanners {
                let cx = StageContext::new(principal, request);
                match call(sync, Stage::InputScan, || scanner.scan(cx)).await {
                    Ok(mut f) => findings.append(&mut f),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                trace.input_findings = findings;
                if let Flow::Stop(r) = self.on_error(Stage::InputScan, e, trace) {
                    return Err(r);
                }
            } else {
                let outcome = g.policy.judge(Stage::InputScan, &mut findings);
                let n = findings.len();
                if outcome == StageOutcome::Redacted {
                    redact_messages(request, &findings, &mut trace.vault);
                    if !trace.vault.is_empty() && !g.validators.is_empty() {
                        let req: &GuardRequest = request;
                        self.vet_vault(principal, req, &mut trace.vault, sync).await;
                    }
                }
                trace.push(Stage::InputScan, outcome, n);
                if outcome == StageOutcome::Rejected {
                    let mut r = Rejection::input_rejected(summarize(&findings, Action::Block));
                    r.set_stage(Stage::InputScan);
                    trace.input_findings = findings;
                    return Err(r);
                }
                trace.input_findings = findings;
            }
        }
        Ok(())
    }

    /// Keeps in the pseudonym vault only the values the output validators would
    /// let through as they are (personal data is why they are in the vault; any
    /// other finding, such as markup, a link or a credential, or a failing
    /// validator, keeps the pseudonym in the answer). Restoring happens after output
    /// validation, so a restored value is a validated one.
    async fn vet_vault(
        &self,
        principal: &Principal,
        request: &GuardRequest,
        vault: &mut Vec<(String, String)>,
        sync: bool,
    ) {
        let g = &*self.inner;
        let cx = StageContext::new(principal, request);
        let mut kept = Vec::with_capacity(vault.len());
        for (pseudonym, original) in vault.drain(..) {
            let value = GuardResponse::new(original.clone());
            let mut clean = true;
            for v in &g.validators {
                match call(sync, Stage::OutputValidation, || v.validate(cx, &value)).await {
                    Ok(f) if f.iter().all(|f| *f.category() == Category::PersonalData) => {}
                    _ => {
                        clean = false;
                        break;
                    }
                }
            }
            if clean {
                kept.push((pseudonym, original));
            }
        }
        *vault = kept;
    }

    /// Runs the output validators over every part of an answer (each choice, each
    /// text-bearing field) and decides once: one stage record, the strongest action
    /// of any part, each part redacted with its own findings.
    pub(crate) async fn validate_outputs(
        &self,
        principal: &Principal,
        request: &GuardRequest,
        responses: &mut [GuardResponse],
        trace: &mut Trace,
        sync: bool,
    ) -> Result<(), Rejection> {
        let g = &*self.inner;
        trace.reset_mark();
        let out_bytes: usize = responses
            .iter()
            .map(|r| {
                r.text().len()
                    + r.tool_calls()
                        .iter()
                        .map(|c| c.arguments().len() + c.name().len())
                        .sum::<usize>()
            })
            .sum();
        let mut all: Vec<Finding> = Vec::new();
        if out_bytes > g.limits.max_output_bytes {
            all.push(output_too_large());
        }
        if g.validators.is_empty() && all.is_empty() {
            return Ok(());
        }
        // Findings per part (spans are into that part's text).
        let mut per_part: Vec<Vec<Finding>> = Vec::with_capacity(responses.len());
        let mut failed: Option<StageError> = None;
        let cx = StageContext::new(principal, request);
        'parts: for resp in responses.iter() {
            let mut findings = Vec::new();
            for v in &g.validators {
                match call(sync, Stage::OutputValidation, || v.validate(cx, resp)).await {
                    Ok(mut f) => findings.append(&mut f),
                    Err(e) => {
                        failed = Some(e);
                        break 'parts;
                    }
                }
            }
            per_part.push(findings);
        }
        if let Some(e) = failed {
            for mut f in per_part {
                all.append(&mut f);
            }
            trace.output_findings = all;
            return match self.on_error(Stage::OutputValidation, e, trace) {
                Flow::Continue => Ok(()),
                Flow::Stop(r) => Err(r),
            };
        }
        if let [only] = responses {
            let mut f = per_part.pop().unwrap_or_default();
            all.append(&mut f);
            return self.apply_output_findings(all, Some(only), trace);
        }
        // Several parts: each is redacted with its own findings; one decision.
        let shadow = g.policy.shadow(Stage::OutputValidation);
        for (resp, mut findings) in responses.iter_mut().zip(per_part) {
            if g.policy.judge(Stage::OutputValidation, &mut findings) == StageOutcome::Redacted
                && !shadow
            {
                redact_response(resp, &findings);
            }
            all.append(&mut findings);
        }
        let verdict = self.judge_output(all, trace);
        trace.push(
            Stage::OutputValidation,
            verdict.as_ref().map_or(StageOutcome::Rejected, |o| *o),
            trace.output_findings.len(),
        );
        verdict.map(|_| ())
    }

    /// Applies policy to output findings; redacts `response` when given; records the
    /// stage.
    pub(crate) fn apply_output_findings(
        &self,
        mut findings: Vec<Finding>,
        response: Option<&mut GuardResponse>,
        trace: &mut Trace,
    ) -> Result<(), Rejection> {
        let outcome = self
            .inner
            .policy
            .judge(Stage::OutputValidation, &mut findings);
        if outcome == StageOutcome::Redacted {
            if let Some(resp) = response {
                redact_response(resp, &findings);
            }
        }
        let n = findings.len();
        let verdict = self.judge_output(findings, trace);
        trace.push(Stage::OutputValidation, outcome, n);
        verdict.map(|_| ())
    }

    /// The output judgement: applies policy to `findings`, adds them to the
    /// trace, and returns the outcome, or the rejection when they block. It does
    /// not record the stage: a whole answer records it at once, a stream when it
    /// ends or is blocked.
    pub(crate) fn judge_output(
        &self,
        mut findings: Vec<Finding>,
        trace: &mut Trace,
    ) -> Result<StageOutcome, Rejection> {
        let outcome = self
            .inner
            .policy
            .judge(Stage::OutputValidation, &mut findings);
        let result = if outcome == StageOutcome::Rejected {
            let mut r = Rejection::output_blocked(summarize(&findings, Action::Block));
            r.set_stage(Stage::OutputValidation);
            Err(r)
        } else {
            Ok(outcome)
        };
        trace.output_findings.append(&mut findings);
        result
    }

    /// The outcome of the output findings recorded so far (a stream's, at its end).
    pub(crate) fn output_outcome(&self, trace: &Trace) -> StageOutcome {
        let action = trace.output_findings.iter().map(Finding::action).max();
        outcome_of(action, self.inner.policy.shadow(Stage::OutputValidation))
    }

    pub(crate) fn shadow(&self, stage: Stage) -> bool {
        self.inner.policy.shadow(stage)
    }

    pub(crate) fn fail_open_output(
        &self,
        err: StageError,
        trace: &mut Trace,
    ) -> Result<(), Rejection> {
        match self.on_error(Stage::OutputValidation, err, trace) {
            Flow::Continue => Ok(()),
            Flow::Stop(r) => Err(r),
        }
    }

    /// A signed receipt for a validated answer whose caller receives `text` and
    /// `calls`.
    pub(crate) fn issue_receipt(
        &self,
        principal: Option<&Principal>,
        request: &GuardRequest,
        trace: &Trace,
        text: &[u8],
        calls: &[ToolCall],
    ) -> Option<String> {
        let signer = self.inner.receipts.as_ref()?;
        Some(self.sign_receipt(
            signer,
            principal,
            request,
            trace,
            crate::receipt::digest(text),
            calls,
        ))
    }

    pub(crate) fn sign_receipt(
        &self,
        signer: &crate::receipt::ReceiptSigner,
        principal: Option<&Principal>,
        request: &GuardRequest,
        trace: &Trace,
        output_digest: String,
        calls: &[ToolCall],
    ) -> String {
        let verdict = trace
            .stages
            .iter()
            .rev()
            .find(|s| s.stage == Stage::OutputValidation)
            .map_or("passed", |s| s.outcome.as_str());
        let mut claims = serde_json::json!({
            "v": 1,
            "rid": trace.request_id.to_string(),
            "sub": principal.map_or("anonymous", Principal::id),
            "model": request.model(),
            "pol": &*self.inner.policy_version,
            "in": crate::receipt::input_digest(request),
            "out": output_digest,
            "verdict": verdict,
            "findings": {
                "input": crate::receipt::summary(&trace.input_findings),
                "output": crate::receipt::summary(&trace.output_findings),
            },
        });
        if let Some(t) = principal.and_then(Principal::tenant) {
            claims["ten"] = serde_json::Value::from(t);
        }
        if !calls.is_empty() {
            claims["calls"] = serde_json::Value::from(crate::receipt::tool_calls_digest(calls));
        }
        signer.sign_claims(claims, SystemTime::now())
    }

    pub(crate) fn receipt_signer(&self) -> Option<&crate::receipt::ReceiptSigner> {
        self.inner.receipts.as_ref()
    }

    pub(crate) fn validators(&self) -> &[Arc<dyn OutputValidator>] {
        &self.inner.validators
    }

    /// Runs the observers over an event; the escalation they noted, if any.
    fn observe(&self, event: &AuditEvent<'_>, request: &GuardRequest) -> Option<AbuseAction> {
        if self.inner.observers.is_empty() {
            return None;
        }
        let mut o = Observation {
            event,
            request,
            escalation: None,
        };
        for observer in &self.inner.observers {
            if catch_unwind(AssertUnwindSafe(|| observer.observe(&mut o))).is_err() {
                self.counters()
                    .observer_panics
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        o.escalation
    }

    /// Records an audit event. Returns whether the sink accepted it.
    pub(crate) fn record(&self, parts: &AuditParts<'_>) -> bool {
        let t = parts.trace;
        // On paths that end right after a stage, the last stage boundary is "now": the
        // end time is derived from it instead of reading the clock again.
        let fresh = matches!(
            parts.outcome,
            Outcome::Completed | Outcome::Rejected | Outcome::OutputBlocked
        );
        let ended = match (fresh, t.started, t.origin, t.mark) {
            (true, Some(started), Some(origin), Some(mark)) => {
                started + mark.saturating_duration_since(origin)
            }
            _ => SystemTime::now(),
        };
        let mut event = AuditEvent {
            event_id: std::cell::OnceCell::new(),
            request_id: t.request_id,
            // Caller-supplied strings are bounded before they are stored.
            trace_id: parts
                .request
                .trace_id()
                .map(|t| crate::request::cap(t, crate::request::MAX_RECORDED_BYTES)),
            started: t.started.unwrap_or(SystemTime::UNIX_EPOCH),
            ended,
            principal: parts.principal,
            route: crate::request::cap(parts.request.route(), crate::request::MAX_RECORDED_BYTES),
            model: crate::request::cap(parts.request.model(), crate::request::MAX_RECORDED_BYTES),
            client_addr: parts.request.client_addr(),
            stream: parts.request.stream(),
            origin: t.origin,
            outcome: parts.outcome,
            rejection: parts.rejection,
            stages: &t.stages,
            input_findings: &t.input_findings,
            output_findings: &t.output_findings,
            rate_limit: t.rate.as_ref(),
            estimated_tokens: t.estimated_tokens,
            usage: parts.usage,
            prompt_digest: t.prompt_digest,
            answer_digest: match (&self.inner.audit_digest, parts.answer) {
                (Some(key), Some(a)) => {
                    let mut out = [0u8; 32];
                    out.copy_from_slice(ring::hmac::sign(key, a.as_bytes()).as_ref());
                    Some(out)
                }
                _ => None,
            },
            content: self.inner.audit_content.then(|| crate::record::Content {
                messages: parts.request.messages(),
                answer: parts.answer.filter(|_| parts.outcome == Outcome::Completed),
            }),
            abuse: None,
        };
        let escalation = self.observe(&event, parts.request);
        event.abuse = escalation.as_ref();
        let ok = catch_unwind(AssertUnwindSafe(|| self.inner.sink.record(&event)))
            .unwrap_or_else(|_| Err(Error::panicked("audit")))
            .is_ok();
        #[cfg(feature = "metrics")]
        if self.inner.metrics {
            crate::telemetry::observe(&event, ok);
        }
        #[cfg(feature = "otel")]
        if let Some(tracer) = &self.inner.tracer {
            crate::otel::emit(tracer, &event, &self.inner.policy_version);
        }
        if !ok {
            self.counters()
                .audit_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Records the final event of an admitted request. If the sink fails and audit is
    /// not fail-open, returns a `503` to send instead of the answer.
    pub(crate) fn record_final(&self, parts: &AuditParts<'_>) -> Result<(), Rejection> {
        if self.record(parts) {
            Ok(())
        } else {
            self.audit_failed()
        }
    }

    /// What to do when the final audit record could not be written.
    pub(crate) fn audit_failed(&self) -> Result<(), Rejection> {
        if self.inner.policy.fail_open[Stage::Audit.index()] {
            Ok(())
        } else {
            let mut r = Rejection::unavailable("audit sink failed", self.inner.unavailable_retry);
            r.set_stage(Stage::Audit);
            Err(r)
        }
    }
}

pub(crate) struct AuditParts<'a> {
    pub(crate) trace: &'a Trace,
    pub(crate) request: &'a GuardRequest,
    pub(crate) principal: Option<&'a Principal>,
    pub(crate) outcome: Outcome,
    pub(crate) rejection: Option<&'a Rejection>,
    pub(crate) usage: Option<Usage>,
    /// The answer as returned (or as produced, when blocked).
    pub(crate) answer: Option<&'a str>,
}

fn digest_messages(key: &ring::hmac::Key, request: &GuardRequest) -> [u8; 32] {
    let mut ctx = ring::hmac::Context::with_key(key);
    for m in request.messages() {
        ctx.update(m.role().as_str().as_bytes());
        ctx.update(&[0x1f]);
        ctx.update(m.content().as_bytes());
        ctx.update(&[0x1e]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

fn redact_messages(
    request: &mut GuardRequest,
    findings: &[Finding],
    vault: &mut Vec<(String, String)>,
) {
    for (i, m) in request.messages_mut().iter_mut().enumerate() {
        let mine: SmallVec<[Finding; 4]> = findings
            .iter()
            .filter(|f| f.location() == Location::Message(i) && f.action() == Action::Redact)
            .cloned()
            .collect();
        if !mine.is_empty() {
            for f in mine.iter().filter(|f| f.is_reversible()) {
                let (Some(pseudonym), Some(original)) =
                    (f.replacement(), m.content().get(f.span()))
                else {
                    continue;
                };
                if !pseudonym.is_empty() && !vault.iter().any(|(p, _)| p == pseudonym) {
                    vault.push((pseudonym.to_owned(), original.to_owned()));
                }
            }
            let new = redact(m.content(), &mine);
            m.set_content(new);
        }
    }
}

fn redact_response(response: &mut GuardResponse, findings: &[Finding]) {
    let text: SmallVec<[Finding; 4]> = findings
        .iter()
        .filter(|f| f.location() == Location::Output && f.action() == Action::Redact)
        .cloned()
        .collect();
    if !text.is_empty() {
        let new = redact(response.text(), &text);
        response.set_text(new);
    }
    let mut drop_calls: SmallVec<[usize; 4]> = findings
        .iter()
        .filter_map(|f| match f.location() {
            Location::ToolCall(i) if f.action() == Action::Redact => Some(i),
            _ => None,
        })
        .collect();
    if !drop_calls.is_empty() {
        drop_calls.sort_unstable();
        drop_calls.dedup();
        let calls = response.tool_calls_mut();
        for i in drop_calls.into_iter().rev() {
            if i < calls.len() {
                calls.remove(i);
            }
        }
    }
}

/// An admitted request: the principal, the (possibly redacted) request to send to the
/// model, the request id, rate-limit state and per-stage timings.
///
/// End it with [`check_response`](Self::check_response), [`stream`](Self::stream) or
/// [`fail`](Self::fail). If it is dropped instead, the guard records an
/// [`Abandoned`](crate::Outcome::Abandoned) event and charges the reservation (the
/// model may have answered a caller that went away).
#[must_use = "an admission must end with check_response, stream or fail"]
pub struct Admission {
    st: Box<State>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Checking,
    Admitted,
    Finished,
}

struct State {
    guard: InferenceGuard,
    request: GuardRequest,
    principal: Option<Principal>,
    trace: Trace,
    permit: Option<Permit>,
    phase: Phase,
}

fn anonymous() -> &'static Principal {
    static ANON: std::sync::OnceLock<Principal> = std::sync::OnceLock::new();
    ANON.get_or_init(Principal::anonymous)
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("request_id", &self.st.trace.request_id)
            .field("principal", &self.principal().id())
            .field("model", &self.st.request.model())
            .field("reserved_tokens", &self.st.trace.estimated_tokens)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The request to send to the model (redacted where the input scanners redacted).
    pub fn request(&self) -> &GuardRequest {
        &self.st.request
    }

    /// Who is calling.
    pub fn principal(&self) -> &Principal {
        self.st.principal.as_ref().unwrap_or_else(|| anonymous())
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.st.trace.request_id
    }

    /// Rate-limit state to report to the caller (for `x-ratelimit-*` headers).
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.st.trace.rate.as_ref()
    }

    /// Tokens reserved for this call (the rate limiter's reservation, or the estimate:
    /// input estimate plus the maximum output tokens).
    pub fn reserved_tokens(&self) -> u64 {
        self.st.trace.estimated_tokens
    }

    /// What the input scanners found (spans into the original messages).
    pub fn findings(&self) -> &[Finding] {
        &self.st.trace.input_findings
    }

    /// How long each stage took.
    pub fn timings(&self) -> impl Iterator<Item = (Stage, Duration)> + '_ {
        self.st.trace.stages.iter().map(|s| (s.stage, s.latency()))
    }

    /// The stage records so far.
    pub fn stages(&self) -> &[StageRecord] {
        &self.st.trace.stages
    }

    /// Validates a whole answer, settles the reservation with its usage, and records
    /// the audit event. Synchronous; see
    /// [`InferenceGuard::check_request`] for what happens with asynchronous stages.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] (`422`) when the output validators block the answer, or `503`
    /// when a validator or the audit sink fails closed.
    pub fn check_response(self, response: GuardResponse) -> Result<CheckedResponse, Rejection> {
        poll_once(pin!(self.respond(response, true))).unwrap_or_else(|| Err(would_block()))
    }

    /// Validates a whole answer, awaiting asynchronous validators.
    ///
    /// # Errors
    ///
    /// As [`check_response`](Self::check_response).
    pub async fn check_response_async(
        self,
        response: GuardResponse,
    ) -> Result<CheckedResponse, Rejection> {
        self.respond(response, false).await
    }

    async fn respond(
        mut self,
        mut response: GuardResponse,
        sync: bool,
    ) -> Result<CheckedResponse, Rejection> {
        let reported = response.usage();
        let (usage, receipt) = self
            .settle_answer(std::slice::from_mut(&mut response), reported, sync)
            .await?;
        let st = &mut *self.st;
        Ok(CheckedResponse {
            response,
            request_id: st.trace.request_id,
            findings: std::mem::take(&mut st.trace.output_findings),
            rate: st.trace.rate.take(),
            usage,
            receipt,
        })
    }

    /// Validates an answer made of several parts: every choice of an `n > 1` call,
    /// and every text-bearing field of a choice (content, refusal, reasoning),
    /// each as its own [`GuardResponse`]. One decision for all of them: a part that
    /// is blocked blocks the answer; each part is redacted with its own findings.
    /// `usage` is what the model reported for the whole answer (estimated from the
    /// parts when `None`). The receipt binds the parts' texts joined by newlines.
    ///
    /// ```
    /// use inference_guard::output::AnswerValidator;
    /// use inference_guard::*;
    ///
    /// let mut b = InferenceGuard::builder();
    /// b.allow_anonymous().authorize_all().audit_sink(NoopSink).output_validator(AnswerValidator::new());
    /// let guard = b.build()?;
    /// let admission = guard.check_request(GuardRequest::new("m").with_choices(2))?;
    /// let key = format!("AKIA{}", "Z4QW7RTY2UIOPL3M"); // an access key id, in choice 1
    /// let checked = admission.check_responses(
    ///     vec![GuardResponse::new("first"), GuardResponse::new(format!("key {key}"))],
    ///     Some(Usage::new(10, 8)),
    /// )?;
    /// assert_eq!(checked.responses()[0].text(), "first");
    /// assert!(!checked.responses()[1].text().contains(&key));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`check_response`](Self::check_response).
    pub fn check_responses(
        self,
        parts: Vec<GuardResponse>,
        usage: Option<Usage>,
    ) -> Result<CheckedResponses, Rejection> {
        poll_once(pin!(self.respond_parts(parts, usage, true)))
            .unwrap_or_else(|| Err(would_block()))
    }

    /// [`check_responses`](Self::check_responses), awaiting asynchronous validators.
    ///
    /// # Errors
    ///
    /// As [`check_response`](Self::check_response).
    pub async fn check_responses_async(
        self,
        parts: Vec<GuardResponse>,
        usage: Option<Usage>,
    ) -> Result<CheckedResponses, Rejection> {
        self.respond_parts(parts, usage, false).await
    }

    async fn respond_parts(
        mut self,
        mut parts: Vec<GuardResponse>,
        usage: Option<Usage>,
        sync: bool,
    ) -> Result<CheckedResponses, Rejection> {
        let (usage, receipt) = self.settle_answer(&mut parts, usage, sync).await?;
        let st = &mut *self.st;
        Ok(CheckedResponses {
            responses: parts,
            findings: std::mem::take(&mut st.trace.output_findings),
            rate: st.trace.rate.take(),
            usage,
            receipt,
        })
    }

    /// Validates the parts of an answer, settles the budget, records the event,
    /// restores pseudonyms and signs the receipt: the one path for whole answers.
    async fn settle_answer(
        &mut self,
        parts: &mut [GuardResponse],
        reported: Option<Usage>,
        sync: bool,
    ) -> Result<(Usage, Option<String>), Rejection> {
        let st = &mut *self.st;
        let principal = st.principal.as_ref().unwrap_or_else(|| anonymous());
        let verdict = st
            .guard
            .validate_outputs(principal, &st.request, parts, &mut st.trace, sync)
            .await;
        let input = st.request.estimated_input_tokens();
        let usage = reported.unwrap_or_else(|| {
            parts.iter().fold(Usage::new(input, 0), |u, p| {
                Usage::new(
                    input,
                    u.output_tokens + p.usage_or_estimate(input).output_tokens,
                )
            })
        });
        if let Some(p) = st.permit.take() {
            p.settle(Some(usage));
        }
        st.phase = Phase::Finished;
        let outcome = if verdict.is_ok() {
            Outcome::Completed
        } else {
            Outcome::OutputBlocked
        };
        let joined;
        let answer = if let [one] = &*parts {
            one.text()
        } else {
            joined = join_texts(parts);
            joined.as_str()
        };
        let audited = st.guard.record_final(&AuditParts {
            trace: &st.trace,
            request: &st.request,
            principal: st.principal.as_ref(),
            outcome,
            rejection: verdict.as_ref().err(),
            usage: Some(usage),
            answer: Some(answer),
        });
        verdict?;
        audited?;
        // Pseudonyms from the input go back to the originals for the caller, after the
        // audit record (which keeps the pseudonymized answer) is written.
        if !st.trace.vault.is_empty() {
            for part in parts.iter_mut() {
                let mut text = part.text().to_owned();
                for (pseudonym, original) in &st.trace.vault {
                    if text.contains(pseudonym.as_str()) {
                        text = text.replace(pseudonym.as_str(), original);
                    }
                }
                part.set_text(text);
            }
        }
        // The receipt binds what the caller receives (joined only when one is signed):
        // the text and the tool calls of every part.
        let receipt = match &*parts {
            _ if st.guard.inner.receipts.is_none() => None,
            [one] => st.guard.issue_receipt(
                st.principal.as_ref(),
                &st.request,
                &st.trace,
                one.text().as_bytes(),
                one.tool_calls(),
            ),
            several => {
                let calls: Vec<ToolCall> = several
                    .iter()
                    .flat_map(|p| p.tool_calls().iter().cloned())
                    .collect();
                st.guard.issue_receipt(
                    st.principal.as_ref(),
                    &st.request,
                    &st.trace,
                    join_texts(several).as_bytes(),
                    &calls,
                )
            }
        };
        Ok((usage, receipt))
    }

    /// Starts validating a streamed answer; see [`StreamGuard`].
    pub fn stream(self) -> StreamGuard {
        StreamGuard::new(self)
    }

    /// Records that the model call failed: refunds the whole reservation and records
    /// a [`ModelFailed`](crate::Outcome::ModelFailed) event.
    pub fn fail(mut self) {
        self.end(Outcome::ModelFailed, None, None, None);
    }

    /// Records that the model answered but the guard could not take the answer (it
    /// was unreadable, or over the size limit): the budget is settled with the usage
    /// the model reported, or charged the whole reservation when it reported none
    /// (the model did the work), and an [`AnswerFailed`](crate::Outcome::AnswerFailed)
    /// event is recorded.
    pub fn abort(mut self, reported: Option<Usage>) {
        let usage = reported.unwrap_or_else(|| self.reservation());
        self.end(Outcome::AnswerFailed, None, Some(usage), None);
    }

    /// The reservation as a usage: the input estimate and the rest as output.
    fn reservation(&self) -> Usage {
        let input = self.st.request.estimated_input_tokens();
        Usage::new(input, self.st.trace.estimated_tokens.saturating_sub(input))
    }

    /// Ends the admission: settles (refunds with `None`) and records the event.
    fn end(
        &mut self,
        outcome: Outcome,
        rejection: Option<&Rejection>,
        usage: Option<Usage>,
        answer: Option<&str>,
    ) -> bool {
        let st = &mut *self.st;
        st.phase = Phase::Finished;
        if let Some(p) = st.permit.take() {
            p.settle(usage);
        }
        st.guard.record(&AuditParts {
            trace: &st.trace,
            request: &st.request,
            principal: st.principal.as_ref(),
            outcome,
            rejection,
            usage,
            answer,
        })
    }

    pub(crate) fn guard(&self) -> &InferenceGuard {
        &self.st.guard
    }

    pub(crate) fn parts_mut(&mut self) -> (&Principal, &GuardRequest, &mut Trace) {
        let st = &mut *self.st;
        let principal = st.principal.as_ref().unwrap_or_else(|| anonymous());
        (principal, &st.request, &mut st.trace)
    }

    /// Settles and records the end of a stream. If the sink fails and audit is not
    /// fail-open, returns the `503` to send instead.
    pub(crate) fn finish_stream(
        &mut self,
        outcome: Outcome,
        rejection: Option<&Rejection>,
        usage: Usage,
        answer: &str,
    ) -> Result<(), Rejection> {
        if self.end(outcome, rejection, Some(usage), Some(answer)) {
            Ok(())
        } else {
            self.st.guard.audit_failed()
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.st.phase == Phase::Finished
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        match self.st.phase {
            Phase::Finished => {}
            Phase::Checking => {
                self.end(Outcome::Cancelled, None, None, None);
            }
            Phase::Admitted => {
                // The model may well have done the work (a caller that went away
                // while it answered): charge the reservation rather than refund it.
                let usage = self.reservation();
                self.end(Outcome::Abandoned, None, Some(usage), None);
            }
        }
    }
}

/// A validated answer, ready to return to the caller.
#[derive(Debug)]
pub struct CheckedResponse {
    response: GuardResponse,
    request_id: RequestId,
    findings: Vec<Finding>,
    rate: Option<RateLimitInfo>,
    usage: Usage,
    receipt: Option<String>,
}

impl CheckedResponse {
    /// The signed receipt, when the guard issues receipts (see
    /// [`receipt`](crate::receipt)); adapters send it as `x-inference-receipt`.
    pub fn receipt(&self) -> Option<&str> {
        self.receipt.as_deref()
    }

    /// The answer (redacted where the validators redacted).
    pub fn response(&self) -> &GuardResponse {
        &self.response
    }

    /// The answer, by value.
    pub fn into_response(self) -> GuardResponse {
        self.response
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// What the output validators found.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Rate-limit state to report to the caller.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.rate.as_ref()
    }

    /// The usage the budget was settled with.
    pub fn usage(&self) -> Usage {
        self.usage
    }
}

fn join_texts(parts: &[GuardResponse]) -> String {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(p.text());
    }
    out
}

/// A validated answer of several parts ([`Admission::check_responses`]).
#[derive(Debug)]
pub struct CheckedResponses {
    responses: Vec<GuardResponse>,
    findings: Vec<Finding>,
    rate: Option<RateLimitInfo>,
    usage: Usage,
    receipt: Option<String>,
}

impl CheckedResponses {
    /// The parts, in the order given, redacted where the validators redacted.
    pub fn responses(&self) -> &[GuardResponse] {
        &self.responses
    }

    /// The parts, by value.
    pub fn into_responses(self) -> Vec<GuardResponse> {
        self.responses
    }

    /// What the output validators found (spans are into the part they came from).
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Rate-limit state to report to the caller.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.rate.as_ref()
    }

    /// The usage the budget was settled with.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The signed receipt, when the guard issues receipts.
    pub fn receipt(&self) -> Option<&str> {
        self.receipt.as_deref()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<InferenceGuard>();
    is::<Admission>();
    is::<RejectReason>();
}
