//! Rejections and the stages that make them.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

names! {
    /// A stage of the guard's pipeline, in the order the guard runs them.
    ///
    /// ```
    /// use inference_guard::Stage;
    /// assert_eq!(Stage::RateLimit.as_str(), "rate_limit");
    /// assert!(Stage::Identity < Stage::Authorization);
    /// ```
    ///
    /// ```
    /// # use inference_guard::Stage;
    /// assert_eq!(Stage::InputScan.as_str(), "input_scan");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    #[non_exhaustive]
    pub enum Stage {
        /// Who is calling: credentials become a [`Principal`](crate::Principal).
        Identity = "identity",
        /// Request size limits (bytes per message, per request, number of messages).
        Limits = "limits",
        /// May this principal make this request (model, tools, streaming)?
        Authorization = "authorization",
        /// Rate limits, token budgets and concurrency limits.
        RateLimit = "rate_limit",
        /// Input scanning and sanitization.
        InputScan = "input_scan",
        /// Validation of what the model returned.
        OutputValidation = "output_validation",
        /// The audit sink.
        Audit = "audit",
    }
}

/// A stage that may fail open ([`GuardBuilder::fail_open`](crate::GuardBuilder::fail_open)):
/// one whose failure need not stop a request. Identity, limits and authorization
/// are not here: a failure there would let unverified or unauthorized callers
/// through, so they always fail closed.
///
/// ```compile_fail
/// let mut b = inference_guard::InferenceGuard::builder();
/// b.fail_open(inference_guard::FailOpenStage::Identity); // no such variant
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailOpenStage {
    /// Rate limits, token budgets and concurrency limits.
    RateLimit,
    /// Input scanning and sanitization.
    InputScan,
    /// Validation of what the model returned.
    OutputValidation,
    /// The audit sink.
    Audit,
}

impl From<FailOpenStage> for Stage {
    fn from(s: FailOpenStage) -> Self {
        match s {
            FailOpenStage::RateLimit => Self::RateLimit,
            FailOpenStage::InputScan => Self::InputScan,
            FailOpenStage::OutputValidation => Self::OutputValidation,
            FailOpenStage::Audit => Self::Audit,
        }
    }
}

/// A stage that may run in shadow mode ([`GuardBuilder::enforcement`](crate::GuardBuilder::enforcement)):
/// its verdicts are recorded, not enforced. Identity, limits, authorization and
/// audit always enforce.
///
/// ```compile_fail
/// let mut b = inference_guard::InferenceGuard::builder();
/// b.enforcement(inference_guard::ShadowStage::Authorization, inference_guard::Enforcement::Shadow);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShadowStage {
    /// Rate limits, token budgets and concurrency limits.
    RateLimit,
    /// Input scanning and sanitization.
    InputScan,
    /// Validation of what the model returned.
    OutputValidation,
}

impl From<ShadowStage> for Stage {
    fn from(s: ShadowStage) -> Self {
        match s {
            ShadowStage::RateLimit => Self::RateLimit,
            ShadowStage::InputScan => Self::InputScan,
            ShadowStage::OutputValidation => Self::OutputValidation,
        }
    }
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Self; 7] = [
        Self::Identity,
        Self::Limits,
        Self::Authorization,
        Self::RateLimit,
        Self::InputScan,
        Self::OutputValidation,
        Self::Audit,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

names! {
    /// Why a request or response was rejected.
    ///
    /// ```
    /// use inference_guard::{RejectReason, Rejection};
    /// assert_eq!(Rejection::forbidden("no").reason(), RejectReason::Forbidden);
    /// assert_eq!(RejectReason::RateLimited.status(), 429);
    /// ```
    ///
    /// ```
    /// # use inference_guard::RejectReason;
    /// assert_eq!(RejectReason::PayloadTooLarge.as_str(), "payload_too_large");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum RejectReason {
        /// Missing, malformed, expired or unknown credentials (401).
        Unauthenticated = "unauthenticated",
        /// Authenticated, but not allowed to do this (403).
        Forbidden = "forbidden",
        /// The principal is suspended for a while (403 with `Retry-After`).
        Suspended = "suspended",
        /// The request is larger than the configured limits (413).
        PayloadTooLarge = "payload_too_large",
        /// The input scanners blocked the request (422).
        InputRejected = "input_rejected",
        /// The output validators blocked the model's answer (422).
        OutputBlocked = "output_blocked",
        /// A rate limit, token budget or concurrency limit was hit (429).
        RateLimited = "rate_limited",
        /// A stage failed and the guard failed closed (503).
        Unavailable = "unavailable",
    }
}

impl RejectReason {
    /// The HTTP status an adapter should answer with.
    ///
    /// ```
    /// # use inference_guard::RejectReason;
    /// assert_eq!(RejectReason::Unauthenticated.status(), 401);
    /// assert_eq!(RejectReason::Unavailable.status(), 503);
    /// ```
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden | Self::Suspended => 403,
            Self::PayloadTooLarge => 413,
            Self::InputRejected | Self::OutputBlocked => 422,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
        }
    }

    fn default_code(self) -> &'static str {
        match self {
            Self::Unauthenticated => "invalid_token",
            Self::Forbidden => "insufficient_scope",
            Self::Suspended => "suspended",
            Self::PayloadTooLarge => "request_too_large",
            Self::InputRejected => "input_rejected",
            Self::OutputBlocked => "output_blocked",
            Self::RateLimited => "rate_limit_exceeded",
            Self::Unavailable => "service_unavailable",
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::Unauthenticated => "invalid or missing credentials",
            Self::Forbidden => "the credential is not allowed to make this request",
            Self::Suspended => "the credential is temporarily suspended",
            Self::PayloadTooLarge => "the request is larger than allowed",
            Self::InputRejected => "the input was rejected by policy",
            Self::OutputBlocked => "the response was blocked by policy",
            Self::RateLimited => "rate limit exceeded",
            Self::Unavailable => "the service is temporarily unavailable",
        }
    }
}

/// Rate-limit state to report to the caller: OpenAI-style `x-ratelimit-*` headers
/// and the IETF `RateLimit` fields are built from it.
///
/// ```
/// use std::time::Duration;
/// use inference_guard::RateLimitInfo;
///
/// let info = RateLimitInfo::new(60, 0, Duration::from_secs(12));
/// assert_eq!(info.remaining(), 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitInfo {
    limit: u64,
    remaining: u64,
    reset: Duration,
    policy: Option<Arc<str>>,
}

impl RateLimitInfo {
    /// A quota of `limit` with `remaining` left, fully replenished after `reset`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use inference_guard::RateLimitInfo;
    /// let i = RateLimitInfo::new(10, 3, Duration::from_secs(5));
    /// assert_eq!((i.limit(), i.remaining(), i.reset()), (10, 3, Duration::from_secs(5)));
    /// ```
    pub fn new(limit: u64, remaining: u64, reset: Duration) -> Self {
        Self {
            limit,
            remaining,
            reset,
            policy: None,
        }
    }

    /// Names the policy, as in the IETF `RateLimit-Policy` field (`"60;w=60"`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use inference_guard::RateLimitInfo;
    /// let i = RateLimitInfo::new(60, 1, Duration::ZERO).with_policy("60;w=60");
    /// assert_eq!(i.policy(), Some("60;w=60"));
    /// ```
    #[must_use]
    pub fn with_policy(mut self, policy: impl Into<Arc<str>>) -> Self {
        self.policy = Some(policy.into());
        self
    }

    /// The quota's size.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What is left of the quota.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// How long until the quota is full again.
    pub fn reset(&self) -> Duration {
        self.reset
    }

    /// The policy string, if one was set.
    pub fn policy(&self) -> Option<&str> {
        self.policy.as_deref()
    }
}

/// A policy decision against a request or a response: a value, not a failure.
///
/// It carries everything an adapter needs to answer: an HTTP [status](Self::status),
/// a machine-readable [code](Self::code), a client-safe [message](Self::message), a
/// [`Retry-After`](Self::retry_after) for limits and outages, a
/// [`WWW-Authenticate`](Self::challenge) challenge for `401`, and
/// [rate-limit state](Self::rate_limit).
///
/// The [detail](Self::detail) says precisely why (for example "token expired"); it
/// goes into the audit record, never to the caller.
///
/// # Security
///
/// Neither the message nor the detail ever contains a credential or prompt text: the
/// built-in stages put rule ids, lengths and reason codes there, and the `Display`
/// output shows only the client-safe message.
///
/// ```
/// use std::time::Duration;
/// use inference_guard::{RejectReason, Rejection};
///
/// let r = Rejection::rate_limited(Duration::from_millis(1500));
/// assert_eq!(r.status(), 429);
/// assert_eq!(r.retry_after_secs(), Some(2)); // rounded up
/// assert_eq!(r.to_string(), "429 rate_limited: rate limit exceeded");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection(Box<Inner>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Inner {
    reason: RejectReason,
    stage: Option<Stage>,
    code: Cow<'static, str>,
    message: Cow<'static, str>,
    detail: Cow<'static, str>,
    retry_after: Option<Duration>,
    challenge: Option<String>,
    rate_limit: Option<RateLimitInfo>,
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.0;
        f.debug_struct("Rejection")
            .field("reason", &r.reason)
            .field("stage", &r.stage)
            .field("code", &r.code)
            .field("message", &r.message)
            .field("detail", &r.detail)
            .field("retry_after", &r.retry_after)
            .field("challenge", &r.challenge)
            .field("rate_limit", &r.rate_limit)
            .finish()
    }
}

impl Rejection {
    /// A rejection for `reason`, with the default code and message for it, and
    /// `detail` (audit only) saying precisely why.
    ///
    /// ```
    /// # use inference_guard::{RejectReason, Rejection};
    /// let r = Rejection::new(RejectReason::InputRejected, "rule injection.override");
    /// assert_eq!(r.status(), 422);
    /// assert_eq!(r.detail(), "rule injection.override");
    /// ```
    pub fn new(reason: RejectReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Self(Box::new(Inner {
            reason,
            stage: None,
            code: Cow::Borrowed(reason.default_code()),
            message: Cow::Borrowed(reason.default_message()),
            detail: detail.into(),
            retry_after: None,
            challenge: None,
            rate_limit: None,
        }))
    }

    /// `401`: credentials are missing or invalid. The guard adds a
    /// `WWW-Authenticate` challenge if the stage did not.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// assert_eq!(Rejection::unauthenticated("expired").code(), "invalid_token");
    /// ```
    pub fn unauthenticated(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(RejectReason::Unauthenticated, detail)
    }

    /// `403`: the principal may not make this request.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// assert_eq!(Rejection::forbidden("model").code(), "insufficient_scope");
    /// ```
    pub fn forbidden(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(RejectReason::Forbidden, detail)
    }

    /// `413`: the request is too large.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// assert_eq!(Rejection::payload_too_large("3 MiB").status(), 413);
    /// ```
    pub fn payload_too_large(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(RejectReason::PayloadTooLarge, detail)
    }

    /// `422`: the input scanners blocked the request.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// assert_eq!(Rejection::input_rejected("secret.aws").status(), 422);
    /// ```
    pub fn input_rejected(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(RejectReason::InputRejected, detail)
    }

    /// `422`: the output validators blocked the answer.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// assert_eq!(Rejection::output_blocked("canary").code(), "output_blocked");
    /// ```
    pub fn output_blocked(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(RejectReason::OutputBlocked, detail)
    }

    /// `429` with `Retry-After`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use inference_guard::Rejection;
    /// let r = Rejection::rate_limited(Duration::from_secs(3));
    /// assert_eq!(r.retry_after(), Some(Duration::from_secs(3)));
    /// ```
    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut r = Self::new(RejectReason::RateLimited, "rate limit");
        r.0.retry_after = Some(retry_after);
        r
    }

    /// `503` with `Retry-After`: the guard could not decide and failed closed.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use inference_guard::Rejection;
    /// let r = Rejection::unavailable("redis down", Duration::from_secs(1));
    /// assert_eq!((r.status(), r.retry_after_secs()), (503, Some(1)));
    /// ```
    pub fn unavailable(detail: impl Into<Cow<'static, str>>, retry_after: Duration) -> Self {
        let mut r = Self::new(RejectReason::Unavailable, detail);
        r.0.retry_after = Some(retry_after);
        r
    }

    /// Replaces the client-facing message. Never put a credential or prompt text in it.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// let r = Rejection::forbidden("x").with_message("streaming is not allowed");
    /// assert_eq!(r.message(), "streaming is not allowed");
    /// ```
    #[must_use]
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.0.message = message.into();
        self
    }

    /// Replaces the machine-readable code.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// let r = Rejection::forbidden("x").with_code("model_not_allowed");
    /// assert_eq!(r.code(), "model_not_allowed");
    /// ```
    #[must_use]
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.0.code = code.into();
        self
    }

    /// Sets `Retry-After`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use inference_guard::Rejection;
    /// let r = Rejection::forbidden("x").with_retry_after(Duration::from_secs(60));
    /// assert_eq!(r.retry_after_secs(), Some(60));
    /// ```
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.0.retry_after = Some(retry_after);
        self
    }

    /// Sets the `WWW-Authenticate` challenge.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// let r = Rejection::unauthenticated("x").with_challenge("Bearer realm=\"api\"");
    /// assert_eq!(r.challenge(), Some("Bearer realm=\"api\""));
    /// ```
    #[must_use]
    pub fn with_challenge(mut self, challenge: impl Into<String>) -> Self {
        self.0.challenge = Some(challenge.into());
        self
    }

    /// Attaches rate-limit state for response headers.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use inference_guard::{RateLimitInfo, Rejection};
    /// let r = Rejection::rate_limited(Duration::from_secs(1))
    ///     .with_rate_limit(RateLimitInfo::new(5, 0, Duration::from_secs(1)));
    /// assert_eq!(r.rate_limit().unwrap().limit(), 5);
    /// ```
    #[must_use]
    pub fn with_rate_limit(mut self, info: RateLimitInfo) -> Self {
        self.0.rate_limit = Some(info);
        self
    }

    pub(crate) fn set_stage(&mut self, stage: Stage) {
        if self.0.stage.is_none() {
            self.0.stage = Some(stage);
        }
    }

    pub(crate) fn ensure_challenge(&mut self, realm: &str, credentials_presented: bool) {
        if self.0.reason == RejectReason::Unauthenticated && self.0.challenge.is_none() {
            // RFC 6750 §3.1: no error code when the request carried no credentials.
            self.0.challenge = Some(if credentials_presented {
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
            } else {
                format!("Bearer realm=\"{realm}\"")
            });
        }
    }

    /// Why.
    pub fn reason(&self) -> RejectReason {
        self.0.reason
    }

    /// The stage that rejected, once the guard has handled the rejection.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// assert_eq!(Rejection::forbidden("x").stage(), None);
    /// ```
    pub fn stage(&self) -> Option<Stage> {
        self.0.stage
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.0.reason.status()
    }

    /// A short machine-readable code (`invalid_token`, `insufficient_scope`,
    /// `rate_limit_exceeded`, ...), for the `code` field of an OpenAI-style error.
    pub fn code(&self) -> &str {
        &self.0.code
    }

    /// A message that is safe to show the caller.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The precise reason, for the audit record only.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    /// How long the caller should wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1 when set).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use inference_guard::Rejection;
    /// let r = Rejection::rate_limited(Duration::from_millis(1));
    /// assert_eq!(r.retry_after_secs(), Some(1));
    /// ```
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.0.retry_after.map(ceil_secs)
    }

    /// The `WWW-Authenticate` challenge, for `401`.
    pub fn challenge(&self) -> Option<&str> {
        self.0.challenge.as_deref()
    }

    /// Rate-limit state, when a limiter reported it.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.0.rate_limit.as_ref()
    }

    /// The body of an OpenAI-style error response:
    /// `{"error": {"message", "type", "code"}}`.
    ///
    /// ```
    /// # use inference_guard::Rejection;
    /// let body = Rejection::forbidden("x").to_openai_error_json();
    /// assert!(body.contains("\"code\":\"insufficient_scope\""));
    /// ```
    pub fn to_openai_error_json(&self) -> String {
        self.openai_error().to_string()
    }

    /// The OpenAI error object, for adapters that add to it.
    pub(crate) fn openai_error(&self) -> serde_json::Value {
        let kind = match self.0.reason {
            RejectReason::Unauthenticated => "authentication_error",
            RejectReason::Forbidden | RejectReason::Suspended => "permission_error",
            RejectReason::PayloadTooLarge | RejectReason::InputRejected => "invalid_request_error",
            RejectReason::OutputBlocked => "content_filter",
            RejectReason::RateLimited => "rate_limit_error",
            RejectReason::Unavailable => "server_error",
        };
        serde_json::json!({
            "error": { "message": self.0.message, "type": kind, "code": self.0.code }
        })
    }
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 || s == 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.0.reason, self.0.message)
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn every_reason_has_a_documented_status() {
        for r in [
            RejectReason::Unauthenticated,
            RejectReason::Forbidden,
            RejectReason::Suspended,
            RejectReason::PayloadTooLarge,
            RejectReason::InputRejected,
            RejectReason::OutputBlocked,
            RejectReason::RateLimited,
            RejectReason::Unavailable,
        ] {
            assert!([401, 403, 413, 422, 429, 503].contains(&r.status()), "{r}");
        }
    }

    #[test]
    fn display_shows_message_not_detail() {
        let r = Rejection::unauthenticated("signature mismatch for kid k1");
        assert!(!r.to_string().contains("signature"));
    }
}
