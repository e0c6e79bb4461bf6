//! The stage traits users implement: identity, authorization, rate limiting, input
//! scanning, output validation and audit.
//!
//! Each trait has **one required method** returning a [`Step`], plus defaulted
//! helpers. All are `Send + Sync + 'static` and dyn-compatible, so a guard stores them
//! as `Arc<dyn Trait>`; blanket impls cover `&T`, `Box<T>` and `Arc<T>`, and
//! [`FnStage`] turns a closure into a stage.

use std::fmt;
use std::sync::Arc;

use crate::RateLimitInfo;
use crate::error::{Error, StageError};
use crate::finding::Finding;
use crate::principal::Principal;
use crate::record::{AuditEvent, Observation};
use crate::request::GuardRequest;
use crate::response::{GuardResponse, Usage};
use crate::step::Step;

/// Verifies the caller's credentials and says who it is.
///
/// Return [`Rejection::unauthenticated`](crate::Rejection::unauthenticated) for any
/// credential problem (the guard answers `401` with a `WWW-Authenticate` challenge and
/// keeps the detail for the audit record only), or an [`Error`] when a backend
/// failed (the guard answers `503`: identity never fails open).
///
/// ```
/// use inference_guard::{CredentialKind, GuardRequest, IdentityVerifier, Principal, Rejection, StageError, Step};
///
/// #[derive(Debug)]
/// struct SharedSecret;
///
/// impl IdentityVerifier for SharedSecret {
///     fn verify<'a>(&'a self, req: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>> {
///         let ok = req.credentials().api_key().is_some_and(|k| k.expose() == "let-me-in");
///         Step::ready(if ok {
///             Ok(Principal::builder("demo", CredentialKind::ApiKey).build())
///         } else {
///             Err(Rejection::unauthenticated("unknown key").into())
///         })
///     }
/// }
/// ```
pub trait IdentityVerifier: Send + Sync + 'static {
    /// Verifies `request.credentials()`.
    fn verify<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>>;

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// Decides whether a verified principal may make a request (model, tools, streaming,
/// output tokens). Deny what is not explicitly allowed.
///
/// ```
/// use inference_guard::{authorizer_fn, Rejection};
///
/// let only_small = authorizer_fn(|_principal, req| {
///     if req.model().ends_with("-mini") { Ok(()) } else { Err(Rejection::forbidden("model").into()) }
/// });
/// # let _ = only_small;
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// Allows the request (`Ok(())`) or rejects it (usually `403`).
    fn authorize<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<(), StageError>>;

    /// The most output tokens the principal may ask for in this (allowed) request, if
    /// the policy sets a ceiling. The guard lowers the request's maximum output to
    /// it, and an HTTP exchange writes it into the body it forwards, so a caller that
    /// names no maximum does not get the model's default. `None` (the default): no
    /// ceiling from authorization.
    fn output_ceiling(&self, cx: StageContext<'_>) -> Option<u32> {
        let _ = cx;
        None
    }

    /// What `principal` is granted, for reports that compare grants with use (the
    /// [inventory](crate::inventory)'s unused grants). `None` (the default): this
    /// authorizer cannot say.
    fn grants(&self, principal: &Principal) -> Option<Granted> {
        let _ = principal;
        None
    }

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// What an [`Authorizer`] grants one principal: model and tool patterns (globs with
/// `*`) and whether it may stream.
///
/// ```
/// use inference_guard::Granted;
/// let g = Granted::new(["gpt-4o-*"], ["search"]).with_stream(true);
/// assert_eq!(g.models(), ["gpt-4o-*"]);
/// assert!(g.stream());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    models: Vec<String>,
    tools: Vec<String>,
    stream: bool,
}

impl Granted {
    /// Granted of these models and tools (sorted, without duplicates), no streaming.
    pub fn new(
        models: impl IntoIterator<Item = impl Into<String>>,
        tools: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let sorted = |v: &mut Vec<String>| {
            v.sort();
            v.dedup();
        };
        let mut models: Vec<String> = models.into_iter().map(Into::into).collect();
        let mut tools: Vec<String> = tools.into_iter().map(Into::into).collect();
        sorted(&mut models);
        sorted(&mut tools);
        Self {
            models,
            tools,
            stream: false,
        }
    }

    /// With streaming allowed or not.
    #[must_use]
    pub fn with_stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// The model patterns.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The tool patterns.
    pub fn tools(&self) -> &[String] {
        &self.tools
    }

    /// Whether streaming is allowed.
    pub fn stream(&self) -> bool {
        self.stream
    }
}

/// Settles a reservation a rate limiter made at admission.
///
/// The guard calls [`settle`](Self::settle) exactly once per admitted request: with the
/// real token usage when the model answered (completed, blocked, or a stream that was
/// aborted, with what was streamed), or with `None` when the model call failed or the
/// admission was dropped before any output, in which case the whole reservation is
/// refunded. Concurrency permits are released here.
///
/// Settlement is synchronous: it runs in `Drop`. A backend that needs I/O to settle
/// (Redis) hands the settlement to its own background worker.
pub trait Settlement: Send + Sync + 'static {
    /// Settles the reservation with the real usage, or refunds it (`None`).
    fn settle(self: Box<Self>, usage: Option<Usage>);
}

impl<F> Settlement for F
where
    F: FnOnce(Option<Usage>) + Send + Sync + 'static,
{
    fn settle(self: Box<Self>, usage: Option<Usage>) {
        (*self)(usage);
    }
}

/// What a rate limiter grants: rate-limit state to report, the tokens it reserved,
/// and a [`Settlement`] to run when the call ends.
///
/// Dropping a `Permit` without settling it refunds the reservation.
///
/// ```
/// use std::time::Duration;
/// use inference_guard::{Permit, RateLimitInfo};
///
/// let p = Permit::new()
///     .with_info(RateLimitInfo::new(60, 59, Duration::from_secs(1)))
///     .with_reserved_tokens(512)
///     .with_settlement(|usage: Option<inference_guard::Usage>| { let _ = usage; });
/// assert_eq!(p.reserved_tokens(), 512);
/// ```
#[derive(Default)]
pub struct Permit {
    info: Option<RateLimitInfo>,
    reserved_tokens: u64,
    settlement: Option<Box<dyn Settlement>>,
}

impl Permit {
    /// A permit with nothing to report and nothing to settle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches rate-limit state (for response headers and the audit record).
    #[must_use]
    pub fn with_info(mut self, info: RateLimitInfo) -> Self {
        self.info = Some(info);
        self
    }

    /// Records how many tokens were reserved.
    #[must_use]
    pub fn with_reserved_tokens(mut self, tokens: u64) -> Self {
        self.reserved_tokens = tokens;
        self
    }

    /// Sets what to run when the call ends.
    #[must_use]
    pub fn with_settlement(mut self, settlement: impl Settlement) -> Self {
        self.settlement = Some(Box::new(settlement));
        self
    }

    /// Rate-limit state, if the limiter reported it.
    pub fn info(&self) -> Option<&RateLimitInfo> {
        self.info.as_ref()
    }

    /// Tokens reserved at admission.
    pub fn reserved_tokens(&self) -> u64 {
        self.reserved_tokens
    }

    /// Settles the reservation now (see [`Settlement`]).
    pub fn settle(mut self, usage: Option<Usage>) {
        if let Some(s) = self.settlement.take() {
            s.settle(usage);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.settlement.take() {
            s.settle(None);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("info", &self.info)
            .field("reserved_tokens", &self.reserved_tokens)
            .field("settlement", &self.settlement.is_some())
            .finish()
    }
}

/// Enforces rate limits, token budgets and concurrency limits.
///
/// Return a [`Permit`] to admit, [`Rejection::rate_limited`](crate::Rejection::rate_limited)
/// (`429` with `Retry-After`) to refuse, or an [`Error`] when the backend failed (the
/// guard fails closed with `503` unless this stage was configured fail-open).
///
/// Reserve the estimated tokens here ([`GuardRequest::estimated_input_tokens`] plus
/// the request's maximum output) and settle the real usage in the permit's
/// [`Settlement`], so that concurrent requests cannot overshoot a budget.
pub trait RateLimiter: Send + Sync + 'static {
    /// Admits or refuses the request.
    fn acquire<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Permit, StageError>>;

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// Scans a request's messages (secrets, personal data, prompt injection, ...).
///
/// Return the findings, with byte spans into [`Message::content`](crate::Message::content)
/// and [`Location::Message`](crate::Location::Message). The guard applies the policy:
/// it blocks (`422`) if any finding's action is `Block`, redacts the spans of `Redact`
/// findings, and records everything. All scanners see the original text; redactions
/// are applied after the last scanner.
///
/// Return an empty `Vec` for clean text: it does not allocate.
pub trait InputScanner: Send + Sync + 'static {
    /// Scans the request.
    fn scan<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Vec<Finding>, StageError>>;

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// What every stage after identity knows about the call: who asked (the verified
/// [`Principal`]) and what they asked (the request, as admitted so far). The
/// authorizer, the rate limiter, the input scanners and the output validators all
/// receive one.
#[derive(Clone, Copy, Debug)]
pub struct StageContext<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) request: &'a GuardRequest,
}

impl<'a> StageContext<'a> {
    /// A context for validating an answer to `request` from `principal`.
    ///
    /// ```
    /// # use inference_guard::{GuardRequest, StageContext, Principal};
    /// let p = Principal::anonymous();
    /// let r = GuardRequest::new("m");
    /// let cx = StageContext::new(&p, &r);
    /// assert_eq!(cx.request().model(), "m");
    /// ```
    pub fn new(principal: &'a Principal, request: &'a GuardRequest) -> Self {
        Self { principal, request }
    }

    /// Who asked.
    pub fn principal(&self) -> &'a Principal {
        self.principal
    }

    /// The admitted (possibly redacted) request.
    pub fn request(&self) -> &'a GuardRequest {
        self.request
    }
}

/// What a streaming validator says about the answer so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamVerdict {
    /// Bytes of the answer, from its start, that are safe to release: nothing
    /// that a later chunk could turn into a finding remains in them.
    pub safe_up_to: usize,
    /// New findings (spans relative to the start of the answer).
    pub findings: Vec<Finding>,
}

/// An incremental validator for one streamed answer.
///
/// The guard calls [`advance`](Self::advance) with the whole answer so far each time
/// a chunk arrives (the text only grows), and once more with `end_of_stream` set. The
/// validator keeps its own position, so the total work stays linear, and says how far
/// the answer is safe to release; the guard holds back the rest.
///
/// Like every stage, it returns a [`Step`]: `Step::ready` for in-memory checks, a
/// future for a model or a service (awaited by
/// [`StreamGuard::push_async`](crate::StreamGuard::push_async); the synchronous
/// [`push`](crate::StreamGuard::push) fails such a stream closed).
///
/// ```
/// use inference_guard::{StageError, Step, StreamValidator, StreamVerdict};
///
/// /// Releases text up to the last full stop.
/// struct Sentences;
///
/// impl StreamValidator for Sentences {
///     fn advance<'a>(&'a mut self, text: &'a str, end: bool) -> Step<'a, Result<StreamVerdict, StageError>> {
///         let safe = if end { text.len() } else { text.rfind('.').map_or(0, |i| i + 1) };
///         Step::ready(Ok(StreamVerdict { safe_up_to: safe, findings: Vec::new() }))
///     }
/// }
/// ```
pub trait StreamValidator: Send + 'static {
    /// Examines the answer so far.
    ///
    /// # Errors
    ///
    /// A [`StageError`] fails the stream closed (unless the stage is fail-open).
    fn advance<'a>(
        &'a mut self,
        text: &'a str,
        end_of_stream: bool,
    ) -> Step<'a, Result<StreamVerdict, StageError>>;
}

/// Validates what the model answered (leaks, links, markup, tool calls, ...).
///
/// Return the findings with [`Location::Output`](crate::Location::Output) spans into
/// the answer's text, or [`Location::ToolCall`](crate::Location::ToolCall) for a tool
/// call. The guard blocks the answer (`422`) on a `Block` finding, redacts `Redact`
/// spans in the text, and removes tool calls with a `Redact` finding.
///
/// For streamed answers the guard asks [`stream`](Self::stream) for an incremental
/// validator. The default returns `None`: the guard then holds the streamed text back
/// and calls [`validate`](Self::validate) on the whole answer at the end, which is
/// safe but delays the stream.
pub trait OutputValidator: Send + Sync + 'static {
    /// Validates a whole answer.
    fn validate<'a>(
        &'a self,
        cx: StageContext<'a>,
        response: &'a GuardResponse,
    ) -> Step<'a, Result<Vec<Finding>, StageError>>;

    /// An incremental validator for a streamed answer, if this validator has one.
    fn stream(&self, cx: StageContext<'_>) -> Option<Box<dyn StreamValidator>> {
        let _ = cx;
        None
    }

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// Watches every request's audit event as the guard records it: abuse monitoring
/// ([`AbuseMonitor`](crate::respond::AbuseMonitor)), the usage inventory
/// ([`Inventory`](crate::inventory::Inventory)) and your own counters or detectors.
///
/// Observers run once per request, in the order they were added, on the thread that
/// ends the request and before the [`AuditSink`] records the event, so an escalation
/// an observer notes ([`Observation::escalate`]) is written into the same record.
/// Keep `observe` short and never block; it cannot fail the request (a panic is
/// caught and counted).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use inference_guard::*;
///
/// #[derive(Default)]
/// struct Rejections(AtomicU64);
///
/// impl AuditObserver for Rejections {
///     fn observe(&self, o: &mut Observation<'_>) {
///         if o.event().rejection().is_some() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// let seen = Arc::new(Rejections::default());
/// let mut b = InferenceGuard::builder();
/// b.allow_anonymous().authorize_all().audit_sink(NoopSink).observer(seen.clone());
/// let guard = b.build()?;
/// let too_big = GuardRequest::new("m").with_message(Role::User, "x".repeat(2_000_000));
/// assert!(guard.check_request(too_big).is_err());
/// assert_eq!(seen.0.load(Ordering::Relaxed), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait AuditObserver: Send + Sync + 'static {
    /// Sees one request's event.
    fn observe(&self, observation: &mut Observation<'_>);

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// Receives one audit event for every request the guard handles.
///
/// `record` is called on the request path: keep it cheap and non-blocking. Sinks that
/// ship events over the network put them on a bounded queue and ship from a
/// background thread or task.
///
/// If `record` fails, the guard fails closed (the answer is replaced by a `503`)
/// unless the audit stage is configured fail-open; for a dropped admission, the
/// failure is counted in [`GuardStats::audit_failures`](crate::GuardStats::audit_failures).
pub trait AuditSink: Send + Sync + 'static {
    /// Records an event.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`ErrorKind::Audit`](crate::ErrorKind::Audit) when the
    /// event could not be recorded.
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error>;

    /// Whether the sink can accept an event now. The guard asks before admitting a
    /// request and refuses it (`503`) if not, so a sink whose queue is full can fail
    /// closed before the model is called. Defaults to `Ok(())`.
    ///
    /// # Errors
    ///
    /// An [`Error`] when the sink cannot accept events.
    fn ready(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Flushes buffered events. Defaults to `Ok(())`.
    ///
    /// # Errors
    ///
    /// An [`Error`] when buffered events could not be written.
    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

macro_rules! forward_impls {
    ($($wrapper:ty),*) => {$(
        impl<T: IdentityVerifier + ?Sized> IdentityVerifier for $wrapper {
            fn verify<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>> {
                (**self).verify(request)
            }
            fn name(&self) -> &str { (**self).name() }
        }
        impl<T: Authorizer + ?Sized> Authorizer for $wrapper {
            fn authorize<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<(), StageError>> {
                (**self).authorize(cx)
            }
            fn output_ceiling(&self, cx: StageContext<'_>) -> Option<u32> {
                (**self).output_ceiling(cx)
            }
            fn grants(&self, principal: &Principal) -> Option<Granted> {
                (**self).grants(principal)
            }
            fn name(&self) -> &str { (**self).name() }
        }
        impl<T: RateLimiter + ?Sized> RateLimiter for $wrapper {
            fn acquire<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Permit, StageError>> {
                (**self).acquire(cx)
            }
            fn name(&self) -> &str { (**self).name() }
        }
        impl<T: InputScanner + ?Sized> InputScanner for $wrapper {
            fn scan<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Vec<Finding>, StageError>> {
                (**self).scan(cx)
            }
            fn name(&self) -> &str { (**self).name() }
        }
        impl<T: OutputValidator + ?Sized> OutputValidator for $wrapper {
            fn validate<'a>(&'a self, cx: StageContext<'a>, response: &'a GuardResponse) -> Step<'a, Result<Vec<Finding>, StageError>> {
                (**self).validate(cx, response)
            }
            fn stream(&self, cx: StageContext<'_>) -> Option<Box<dyn StreamValidator>> {
                (**self).stream(cx)
            }
            fn name(&self) -> &str { (**self).name() }
        }
        impl<T: AuditSink + ?Sized> AuditSink for $wrapper {
            fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> { (**self).record(event) }
            fn ready(&self) -> Result<(), Error> { (**self).ready() }
            fn flush(&self) -> Result<(), Error> { (**self).flush() }
            fn name(&self) -> &str { (**self).name() }
        }
        impl<T: AuditObserver + ?Sized> AuditObserver for $wrapper {
            fn observe(&self, observation: &mut Observation<'_>) { (**self).observe(observation) }
            fn name(&self) -> &str { (**self).name() }
        }
    )*};
}

forward_impls!(Box<T>, Arc<T>, &'static T);

/// Fan-out: every sink records every event. All sinks are tried; the first error is
/// returned.
impl<S: AuditSink> AuditSink for Vec<S> {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let mut first = Ok(());
        for s in self {
            if let Err(e) = s.record(event) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    fn ready(&self) -> Result<(), Error> {
        self.iter().try_for_each(|s| s.ready())
    }

    fn flush(&self) -> Result<(), Error> {
        let mut first = Ok(());
        for s in self {
            if let Err(e) = s.flush() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// A stage made from a closure; see [`verifier_fn`], [`authorizer_fn`],
/// [`rate_limiter_fn`], [`scanner_fn`], [`validator_fn`] and [`sink_fn`].
#[derive(Clone, Copy)]
pub struct FnStage<F>(F);

impl<F> fmt::Debug for FnStage<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnStage")
    }
}

/// An identity verifier from a closure.
///
/// ```
/// use inference_guard::{verifier_fn, CredentialKind, Principal, Rejection};
///
/// let v = verifier_fn(|req| match req.credentials().api_key() {
///     Some(k) if k.expose() == "demo-key" => Ok(Principal::builder("demo", CredentialKind::ApiKey).build()),
///     _ => Err(Rejection::unauthenticated("unknown api key").into()),
/// });
/// # let _ = v;
/// ```
pub fn verifier_fn<F>(f: F) -> FnStage<F>
where
    F: Fn(&GuardRequest) -> Result<Principal, StageError> + Send + Sync + 'static,
{
    FnStage(f)
}

impl<F> IdentityVerifier for FnStage<F>
where
    F: Fn(&GuardRequest) -> Result<Principal, StageError> + Send + Sync + 'static,
{
    fn verify<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>> {
        Step::ready((self.0)(request))
    }
    fn name(&self) -> &str {
        "verifier_fn"
    }
}

/// An authorizer from a closure.
///
/// ```
/// use inference_guard::{authorizer_fn, Rejection};
/// let a = authorizer_fn(|p, _req| if p.has_scope("infer") { Ok(()) } else { Err(Rejection::forbidden("scope").into()) });
/// # let _ = a;
/// ```
pub fn authorizer_fn<F>(f: F) -> FnStage<F>
where
    F: Fn(&Principal, &GuardRequest) -> Result<(), StageError> + Send + Sync + 'static,
{
    FnStage(f)
}

impl<F> Authorizer for FnStage<F>
where
    F: Fn(&Principal, &GuardRequest) -> Result<(), StageError> + Send + Sync + 'static,
{
    fn authorize<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<(), StageError>> {
        Step::ready((self.0)(cx.principal(), cx.request()))
    }
    fn name(&self) -> &str {
        "authorizer_fn"
    }
}

/// A rate limiter from a closure.
///
/// ```
/// use inference_guard::{rate_limiter_fn, Permit};
/// let unlimited = rate_limiter_fn(|_p, _r| Ok(Permit::new()));
/// # let _ = unlimited;
/// ```
pub fn rate_limiter_fn<F>(f: F) -> FnStage<F>
where
    F: Fn(&Principal, &GuardRequest) -> Result<Permit, StageError> + Send + Sync + 'static,
{
    FnStage(f)
}

impl<F> RateLimiter for FnStage<F>
where
    F: Fn(&Principal, &GuardRequest) -> Result<Permit, StageError> + Send + Sync + 'static,
{
    fn acquire<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Permit, StageError>> {
        Step::ready((self.0)(cx.principal(), cx.request()))
    }
    fn name(&self) -> &str {
        "rate_limiter_fn"
    }
}

/// An input scanner from a closure.
///
/// ```
/// use inference_guard::{scanner_fn, Category, Finding, Location, Severity};
/// let s = scanner_fn(|req| {
///     Ok(req.messages().iter().enumerate()
///         .filter_map(|(i, m)| m.content().find("DROP TABLE").map(|at| {
///             Finding::new("sql.drop", Category::PromptInjection, Severity::High, Location::Message(i), at..at + 10)
///         }))
///         .collect())
/// });
/// # let _ = s;
/// ```
pub fn scanner_fn<F>(f: F) -> FnStage<F>
where
    F: Fn(&GuardRequest) -> Result<Vec<Finding>, StageError> + Send + Sync + 'static,
{
    FnStage(f)
}

impl<F> InputScanner for FnStage<F>
where
    F: Fn(&GuardRequest) -> Result<Vec<Finding>, StageError> + Send + Sync + 'static,
{
    fn scan<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Vec<Finding>, StageError>> {
        Step::ready((self.0)(cx.request()))
    }
    fn name(&self) -> &str {
        "scanner_fn"
    }
}

/// An output validator from a closure.
///
/// ```
/// use inference_guard::{validator_fn, Category, Finding, Location, Severity};
/// let v = validator_fn(|_cx, resp| {
///     Ok(resp.text().find("<script").map(|at| {
///         Finding::new("html.script", Category::UnsafeMarkup, Severity::High, Location::Output, at..at + 7)
///     }).into_iter().collect())
/// });
/// # let _ = v;
/// ```
pub fn validator_fn<F>(f: F) -> FnStage<F>
where
    F: Fn(StageContext<'_>, &GuardResponse) -> Result<Vec<Finding>, StageError>
        + Send
        + Sync
        + 'static,
{
    FnStage(f)
}

impl<F> OutputValidator for FnStage<F>
where
    F: Fn(StageContext<'_>, &GuardResponse) -> Result<Vec<Finding>, StageError>
        + Send
        + Sync
        + 'static,
{
    fn validate<'a>(
        &'a self,
        cx: StageContext<'a>,
        response: &'a GuardResponse,
    ) -> Step<'a, Result<Vec<Finding>, StageError>> {
        Step::ready((self.0)(cx, response))
    }
    fn name(&self) -> &str {
        "validator_fn"
    }
}

/// An audit sink from a closure.
///
/// ```
/// use inference_guard::sink_fn;
/// let print = sink_fn(|event| { println!("{}", event.to_json()); Ok(()) });
/// # let _ = print;
/// ```
pub fn sink_fn<F>(f: F) -> FnStage<F>
where
    F: Fn(&AuditEvent<'_>) -> Result<(), Error> + Send + Sync + 'static,
{
    FnStage(f)
}

impl<F> AuditSink for FnStage<F>
where
    F: Fn(&AuditEvent<'_>) -> Result<(), Error> + Send + Sync + 'static,
{
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        (self.0)(event)
    }
    fn name(&self) -> &str {
        "sink_fn"
    }
}
