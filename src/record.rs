//! The floor: what a request's record says. The audit event and its parts (the
//! outcome, each stage's record, the abuse escalation it caused), shared by the
//! guard that writes them, the sinks that store them and the observers that read
//! them. Public under `audit` and `respond`.

use std::cell::OnceCell;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use quanta::Instant;

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::decision::{RateLimitInfo, Rejection, Stage};
use crate::error::ErrorKind;
use crate::finding::Finding;
use crate::id::RequestId;
use crate::principal::Principal;
use crate::request::Message;
use crate::response::Usage;

/// The version of the audit event schema; bumped on incompatible changes.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

names! {
    /// How a request ended.
    ///
    /// ```
    /// use inference_guard::Outcome;
    /// assert_eq!(Outcome::OutputBlocked.as_str(), "output_blocked");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Outcome {
        /// Admitted and answered; the answer passed validation (possibly redacted).
        Completed = "completed",
        /// Rejected by a stage before the model was called.
        Rejected = "rejected",
        /// Admitted, but the answer was blocked by output validation.
        OutputBlocked = "output_blocked",
        /// A streamed answer ended early: blocked mid-stream, or the stream was dropped.
        StreamAborted = "stream_aborted",
        /// Admitted, but the model call failed ([`Admission::fail`](crate::Admission::fail)).
        ModelFailed = "model_failed",
        /// Admitted and the model answered, but the guard could not take the answer
        /// (unreadable, over the size limit): [`Admission::abort`](crate::Admission::abort).
        /// The budget is charged (the model did the work).
        AnswerFailed = "answer_failed",
        /// Admitted, but the admission was dropped without a response (the task was
        /// cancelled or the caller forgot to check the response).
        Abandoned = "abandoned",
        /// The asynchronous check was cancelled before it decided.
        Cancelled = "cancelled",
    }
}

names! {
    /// What one stage decided.
    ///
    /// ```
    /// use inference_guard::StageOutcome;
    /// assert_eq!(StageOutcome::FailedOpen.as_str(), "failed_open");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum StageOutcome {
        /// Passed with no findings.
        Passed = "passed",
        /// Passed; findings were recorded but did not change anything.
        Flagged = "flagged",
        /// Passed after redacting parts of the text.
        Redacted = "redacted",
        /// Rejected the request or blocked the answer.
        Rejected = "rejected",
        /// Would have rejected or changed something, but the stage is in shadow mode.
        Shadowed = "shadowed",
        /// Failed (error or panic); the guard failed closed.
        FailedClosed = "failed_closed",
        /// Failed (error or panic); the stage is fail-open, so the guard went on.
        FailedOpen = "failed_open",
        /// Not configured, or not needed for this request.
        Skipped = "skipped",
    }
}

/// One stage's part in a request: its outcome, its latency, its error kind and how
/// many findings it made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageRecord {
    pub(crate) stage: Stage,
    pub(crate) outcome: StageOutcome,
    /// The stage's start and end; the latency is computed when it is read, so the
    /// request path only reads the clock.
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) error: Option<ErrorKind>,
    pub(crate) findings: u32,
}

impl StageRecord {
    /// The stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }
    /// What it decided.
    pub fn outcome(&self) -> StageOutcome {
        self.outcome
    }
    /// How long it took.
    pub fn latency(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
    /// The kind of error, if it failed.
    pub fn error(&self) -> Option<ErrorKind> {
        self.error
    }
    /// How many findings it made.
    pub fn findings(&self) -> u32 {
        self.findings
    }
}

/// One audit event, borrowed from the guard's per-request state.
///
/// Read it through the accessors, or serialize it ([`to_json`](Self::to_json) or
/// `serde`) in the documented schema: see the crate's README, "Audit records".
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Generated on first use and then stable, so every sink of a fan-out sees the
    /// same id, and a sink that never reads it costs nothing.
    pub(crate) event_id: OnceCell<uuid::Uuid>,
    pub(crate) request_id: RequestId,
    pub(crate) trace_id: Option<&'a str>,
    pub(crate) started: SystemTime,
    pub(crate) ended: SystemTime,
    pub(crate) principal: Option<&'a Principal>,
    pub(crate) route: &'a str,
    pub(crate) model: &'a str,
    pub(crate) client_addr: Option<IpAddr>,
    pub(crate) stream: bool,
    /// The monotonic instant `started` stands for (stage records are relative to it).
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) origin: Option<Instant>,
    pub(crate) outcome: Outcome,
    pub(crate) rejection: Option<&'a Rejection>,
    pub(crate) stages: &'a [StageRecord],
    pub(crate) input_findings: &'a [Finding],
    pub(crate) output_findings: &'a [Finding],
    pub(crate) rate_limit: Option<&'a RateLimitInfo>,
    pub(crate) estimated_tokens: u64,
    pub(crate) usage: Option<Usage>,
    pub(crate) prompt_digest: Option<[u8; 32]>,
    pub(crate) answer_digest: Option<[u8; 32]>,
    pub(crate) content: Option<Content<'a>>,
    pub(crate) abuse: Option<&'a AbuseAction>,
}

/// Redacted content, in events of guards built with
/// [`GuardBuilder::audit_content`](crate::GuardBuilder::audit_content).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Content<'a> {
    pub(crate) messages: &'a [Message],
    pub(crate) answer: Option<&'a str>,
}

impl<'a> AuditEvent<'a> {
    /// The event's id: a UUIDv7 from the time the event was recorded, unique per
    /// event and the same for every sink that records it.
    pub fn event_id(&self) -> uuid::Uuid {
        *self.event_id.get_or_init(|| crate::id::new_v7(self.ended))
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }
    /// How the request ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
    /// The principal, once identity was established.
    pub fn principal(&self) -> Option<&'a Principal> {
        self.principal
    }
    /// The rejection, if the request or answer was rejected.
    pub fn rejection(&self) -> Option<&'a Rejection> {
        self.rejection
    }
    /// The stage that decided the outcome, when a stage rejected.
    pub fn decided_by(&self) -> Option<Stage> {
        self.rejection.and_then(Rejection::stage)
    }
    /// Each stage's record, in pipeline order.
    pub fn stages(&self) -> &'a [StageRecord] {
        self.stages
    }
    /// Findings of the input scanners (spans, never text).
    pub fn input_findings(&self) -> &'a [Finding] {
        self.input_findings
    }
    /// Findings of the output validators.
    pub fn output_findings(&self) -> &'a [Finding] {
        self.output_findings
    }
    /// The route.
    pub fn route(&self) -> &'a str {
        self.route
    }
    /// The model.
    pub fn model(&self) -> &'a str {
        self.model
    }
    /// When the guard started on the request.
    pub fn started(&self) -> SystemTime {
        self.started
    }
    /// When the request ended.
    pub fn ended(&self) -> SystemTime {
        self.ended
    }
    /// Token usage: the settled usage, when the model answered.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
    /// The client's address, when the caller gave it.
    pub fn client_addr(&self) -> Option<IpAddr> {
        self.client_addr
    }

    /// Whether the answer was a stream that ended early.
    pub fn stream_aborted(&self) -> bool {
        self.outcome == Outcome::StreamAborted
    }

    /// The keyed digest (HMAC-SHA256) of the prompt, when the guard was built with
    /// [`GuardBuilder::audit_digest_key`](crate::GuardBuilder::audit_digest_key).
    pub fn prompt_digest(&self) -> Option<&[u8; 32]> {
        self.prompt_digest.as_ref()
    }

    /// The keyed digest of the answer, as for [`prompt_digest`](Self::prompt_digest).
    pub fn answer_digest(&self) -> Option<&[u8; 32]> {
        self.answer_digest.as_ref()
    }

    /// An owned copy, for sinks that keep or hand over the event.
    pub fn to_record(&self) -> AuditRecord {
        AuditRecord {
            event_id: self.event_id(),
            request_id: self.request_id,
            trace_id: self.trace_id.map(Into::into),
            started: self.started,
            ended: self.ended,
            principal: self.principal.cloned(),
            route: self.route.into(),
            model: self.model.into(),
            client_addr: self.client_addr,
            stream: self.stream,
            outcome: self.outcome,
            rejection: self.rejection.cloned(),
            stages: self.stages.iter().copied().collect(),
            input_findings: self.input_findings.to_vec(),
            output_findings: self.output_findings.to_vec(),
            rate_limit: self.rate_limit.cloned(),
            estimated_tokens: self.estimated_tokens,
            usage: self.usage,
            prompt_digest: self.prompt_digest,
            answer_digest: self.answer_digest,
            content: self
                .content
                .map(|c| (c.messages.to_vec(), c.answer.map(Into::into))),
            abuse: self.abuse.cloned(),
        }
    }

    /// The abuse response this request triggered, if any.
    pub fn abuse(&self) -> Option<&'a AbuseAction> {
        self.abuse
    }

    /// The event as one line of JSON (no trailing newline).
    ///
    /// ```
    /// use inference_guard::*;
    /// let sink = MemorySink::new();
    /// let mut b = InferenceGuard::builder();
    /// b.allow_anonymous().authorize_all().audit_sink(sink.clone());
    /// let guard = b.build()?;
    /// let adm = guard.check_request(GuardRequest::new("m"))?;
    /// drop(adm);
    /// assert!(sink.lines()[0].starts_with("{\"schema\":1,"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// `t` in RFC 3339, UTC, as `time` writes it (the fraction of a second without
/// its trailing zeros, none when it is zero): written directly for the years
/// 1970 to 9999, two per audit record (`time`'s formatter, which reads a format
/// description, took about 300 ns each); before 1970 by `time`; past 9999, which
/// RFC 3339 cannot write (and where `time`'s conversion panics), the last instant
/// of 9999.
fn rfc3339(t: SystemTime) -> String {
    let d = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= crate::clock::LAST_SECOND.as_secs() => d,
        Ok(_) => return String::from("9999-12-31T23:59:59.999999999Z"),
        Err(e) => return rfc3339_before_1970(e.duration()),
    };
    let secs = d.as_secs();
    let (year, month, day) = civil(secs / 86_400);
    let second = secs % 86_400;
    // "YYYY-MM-DDTHH:MM:SS", digits written in place (`format!` took most of the
    // time of this function), then ".fraction" and "Z".
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for k in (at..at + width).rev() {
            b[k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, second / 3600);
    put(14, 2, second / 60 % 60);
    put(17, 2, second % 60);
    let mut nanos = d.subsec_nanos();
    let mut len = 19;
    if nanos != 0 {
        let mut digits = 9;
        while nanos % 10 == 0 {
            nanos /= 10;
            digits -= 1;
        }
        put(20, digits, u64::from(nanos));
        len = 20 + digits;
    }
    b[len] = b'Z';
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&b[..=len]).into_owned()
}

/// `time`'s RFC 3339 of the time `before` the Unix epoch (empty past its range).
fn rfc3339_before_1970(before: Duration) -> String {
    time::Duration::try_from(before)
        .ok()
        .and_then(|d| time::OffsetDateTime::UNIX_EPOCH.checked_sub(d))
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

struct Stages<'a>(&'a [StageRecord]);
impl Serialize for Stages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for r in self.0 {
            seq.serialize_element(&StageJson(r))?;
        }
        seq.end()
    }
}

struct StageJson<'a>(&'a StageRecord);
impl Serialize for StageJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("stage", r.stage.as_str())?;
        m.serialize_entry("outcome", r.outcome.as_str())?;
        m.serialize_entry("latency_us", &(r.latency().as_nanos() as f64 / 1000.0))?;
        if let Some(e) = r.error {
            m.serialize_entry("error", e.as_str())?;
        }
        if r.findings > 0 {
            m.serialize_entry("findings", &r.findings)?;
        }
        m.end()
    }
}

struct Findings<'a>(&'a [Finding]);
impl Serialize for Findings<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for f in self.0 {
            seq.serialize_element(&FindingJson(f))?;
        }
        seq.end()
    }
}

struct FindingJson<'a>(&'a Finding);
impl Serialize for FindingJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("rule", f.rule_id())?;
        m.serialize_entry("category", f.category().as_str())?;
        m.serialize_entry("severity", f.severity().as_str())?;
        m.serialize_entry("confidence", &f.confidence())?;
        m.serialize_entry("action", f.action().as_str())?;
        m.serialize_entry("location", &f.location().to_string())?;
        let span = f.span();
        m.serialize_entry("span", &[span.start, span.end])?;
        m.end()
    }
}

struct PrincipalJson<'a>(&'a Principal);
impl Serialize for PrincipalJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", p.id())?;
        m.serialize_entry("credential", p.kind().as_str())?;
        if let Some(k) = p.key_id() {
            m.serialize_entry("key_id", k)?;
        }
        if let Some(t) = p.tenant() {
            m.serialize_entry("tenant", t)?;
        }
        m.end()
    }
}

struct RejectionJson<'a>(&'a Rejection);
impl Serialize for RejectionJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("reason", r.reason().as_str())?;
        m.serialize_entry("status", &r.status())?;
        m.serialize_entry("code", r.code())?;
        m.serialize_entry("detail", r.detail())?;
        if let Some(st) = r.stage() {
            m.serialize_entry("stage", st.as_str())?;
        }
        if let Some(s) = r.retry_after_secs() {
            m.serialize_entry("retry_after_s", &s)?;
        }
        m.end()
    }
}

struct RateJson<'a>(&'a RateLimitInfo);
impl Serialize for RateJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("limit", &r.limit())?;
        m.serialize_entry("remaining", &r.remaining())?;
        m.serialize_entry("reset_s", &r.reset().as_secs_f64())?;
        if let Some(p) = r.policy() {
            m.serialize_entry("policy", p)?;
        }
        m.end()
    }
}

struct ContentJson<'a>(&'a Content<'a>);
impl Serialize for ContentJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Msgs<'a>(&'a [Message]);
        impl Serialize for Msgs<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for m in self.0 {
                    let mut e = std::collections::BTreeMap::new();
                    e.insert("role", m.role().as_str());
                    e.insert("content", m.content());
                    seq.serialize_element(&e)?;
                }
                seq.end()
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("messages", &Msgs(self.0.messages))?;
        if let Some(a) = self.0.answer {
            m.serialize_entry("answer", a)?;
        }
        m.end()
    }
}

/// An owned audit event: what a sink keeps or hands to another thread.
///
/// [`event`](Self::event) borrows it back as an [`AuditEvent`], so it serializes
/// exactly as the event it was made from.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    event_id: uuid::Uuid,
    request_id: RequestId,
    trace_id: Option<Box<str>>,
    started: SystemTime,
    ended: SystemTime,
    principal: Option<Principal>,
    route: Box<str>,
    model: Box<str>,
    client_addr: Option<IpAddr>,
    stream: bool,
    outcome: Outcome,
    rejection: Option<Rejection>,
    stages: smallvec::SmallVec<[StageRecord; 8]>,
    input_findings: Vec<Finding>,
    output_findings: Vec<Finding>,
    rate_limit: Option<RateLimitInfo>,
    estimated_tokens: u64,
    usage: Option<Usage>,
    prompt_digest: Option<[u8; 32]>,
    answer_digest: Option<[u8; 32]>,
    content: Option<(Vec<Message>, Option<Box<str>>)>,
    abuse: Option<AbuseAction>,
}

impl AuditRecord {
    /// The record as an event (borrowed).
    pub fn event(&self) -> AuditEvent<'_> {
        let id = OnceCell::new();
        let _ = id.set(self.event_id);
        AuditEvent {
            event_id: id,
            request_id: self.request_id,
            trace_id: self.trace_id.as_deref(),
            started: self.started,
            ended: self.ended,
            principal: self.principal.as_ref(),
            route: &self.route,
            model: &self.model,
            client_addr: self.client_addr,
            stream: self.stream,
            origin: None,
            outcome: self.outcome,
            rejection: self.rejection.as_ref(),
            stages: &self.stages,
            input_findings: &self.input_findings,
            output_findings: &self.output_findings,
            rate_limit: self.rate_limit.as_ref(),
            estimated_tokens: self.estimated_tokens,
            usage: self.usage,
            prompt_digest: self.prompt_digest,
            answer_digest: self.answer_digest,
            content: self.content.as_ref().map(|(m, a)| Content {
                messages: m,
                answer: a.as_deref(),
            }),
            abuse: self.abuse.as_ref(),
        }
    }

    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        self.event().to_json()
    }
}

impl Serialize for AuditRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.event().serialize(s)
    }
}

impl Serialize for AuditEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("AuditEvent", 20)?;
        st.serialize_field("schema", &AUDIT_SCHEMA_VERSION)?;
        st.serialize_field("event_id", &self.event_id().to_string())?;
        st.serialize_field("request_id", &self.request_id.to_string())?;
        if let Some(t) = self.trace_id {
            st.serialize_field("trace_id", t)?;
        }
        st.serialize_field("started", &rfc3339(self.started))?;
        st.serialize_field("ended", &rfc3339(self.ended))?;
        st.serialize_field("outcome", self.outcome.as_str())?;
        if let Some(p) = self.principal {
            st.serialize_field("principal", &PrincipalJson(p))?;
        }
        st.serialize_field("route", self.route)?;
        st.serialize_field("model", self.model)?;
        if let Some(a) = self.client_addr {
            st.serialize_field("client_addr", &a.to_string())?;
        }
        st.serialize_field("stream", &self.stream)?;
        if let Some(r) = self.rejection {
            st.serialize_field("rejection", &RejectionJson(r))?;
        }
        st.serialize_field("stages", &Stages(self.stages))?;
        if !self.input_findings.is_empty() {
            st.serialize_field("input_findings", &Findings(self.input_findings))?;
        }
        if !self.output_findings.is_empty() {
            st.serialize_field("output_findings", &Findings(self.output_findings))?;
        }
        if let Some(r) = self.rate_limit {
            st.serialize_field("rate_limit", &RateJson(r))?;
        }
        st.serialize_field("tokens_estimated", &self.estimated_tokens)?;
        if let Some(u) = self.usage {
            st.serialize_field("usage", &u)?;
        }
        if let Some(out) = self
            .stages
            .iter()
            .rev()
            .find(|s| s.stage == Stage::OutputValidation)
        {
            st.serialize_field("output_verdict", out.outcome.as_str())?;
        }
        st.serialize_field("stream_aborted", &self.stream_aborted())?;
        if let Some(d) = &self.prompt_digest {
            st.serialize_field("prompt_hmac", &crate::codec::hex(d))?;
        }
        if let Some(d) = &self.answer_digest {
            st.serialize_field("answer_hmac", &crate::codec::hex(d))?;
        }
        if let Some(c) = &self.content {
            st.serialize_field("content", &ContentJson(c))?;
        }
        if let Some(a) = self.abuse {
            st.serialize_field("abuse", &AbuseJson(a))?;
        }
        st.end()
    }
}

struct AbuseJson<'a>(&'a AbuseAction);

impl Serialize for AbuseJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut st = s.serialize_struct("Abuse", 5)?;
        st.serialize_field("subject", &a.subject().to_string())?;
        st.serialize_field("level", a.level().as_str())?;
        st.serialize_field("score", &((a.score() * 100.0).round() / 100.0))?;
        st.serialize_field("shadow", &a.shadow())?;
        if let Some(u) = a.until() {
            st.serialize_field("until", &rfc3339(u))?;
        }
        st.end()
    }
}

/// Who strikes are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Subject {
    /// A principal, by [qualified id](crate::Principal::qualified_id)
    /// (`namespace|id`, for example `api_key|svc-demo`).
    Principal(String),
    /// A client address.
    Address(IpAddr),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Principal(p) => write!(f, "principal:{p}"),
            Self::Address(a) => write!(f, "address:{a}"),
        }
    }
}

/// What a subject did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Offense {
    /// Its input was blocked by a scanner.
    InputBlocked,
    /// The answer to it was blocked.
    OutputBlocked,
    /// It presented invalid credentials.
    AuthFailure,
    /// It asked for something it is not allowed.
    Forbidden,
    /// It went over a rate limit.
    RateLimited,
}

names! {
    /// A graduated response.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    #[non_exhaustive]
    pub enum Level {
        /// No response.
        Normal = "normal",
        /// A reduced quota.
        Throttled = "throttled",
        /// Refused for a while.
        Suspended = "suspended",
    }
}

/// An escalation: a subject reached a level. Given to the alert hook and written
/// into the audit record of the request that caused it.
#[derive(Clone, Debug, PartialEq)]
pub struct AbuseAction {
    pub(crate) subject: Subject,
    pub(crate) level: Level,
    pub(crate) score: f64,
    pub(crate) shadow: bool,
    pub(crate) until: Option<SystemTime>,
}

impl AbuseAction {
    /// Who.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
    /// The level reached.
    pub fn level(&self) -> Level {
        self.level
    }
    /// The decayed strike score when it was reached.
    pub fn score(&self) -> f64 {
        self.score
    }
    /// Whether the monitor runs in shadow mode (nothing is refused).
    pub fn shadow(&self) -> bool {
        self.shadow
    }
    /// Until when a suspension lasts.
    pub fn until(&self) -> Option<SystemTime> {
        self.until
    }
}

/// What an [`AuditObserver`](crate::AuditObserver) sees of one request: its audit
/// event as the guard is about to record it and the request as the guard admitted
/// it. An observer may note an escalation ([`escalate`](Self::escalate)); the record
/// carries it ([`AuditEvent::abuse`]).
#[derive(Debug)]
pub struct Observation<'a> {
    pub(crate) event: &'a AuditEvent<'a>,
    pub(crate) request: &'a crate::request::GuardRequest,
    pub(crate) escalation: Option<AbuseAction>,
}

impl<'a> Observation<'a> {
    /// The request's audit event (its `abuse` is not set yet: see
    /// [`escalation`](Self::escalation)).
    pub fn event(&self) -> &AuditEvent<'a> {
        self.event
    }

    /// The request, as the guard admitted or rejected it (tools, metadata, address).
    pub fn request(&self) -> &'a crate::request::GuardRequest {
        self.request
    }

    /// Notes an escalation for the record. Of several, the highest level is kept.
    pub fn escalate(&mut self, action: AbuseAction) {
        if self
            .escalation
            .as_ref()
            .is_none_or(|e| action.level() > e.level())
        {
            self.escalation = Some(action);
        }
    }

    /// The escalation noted so far, by this observer or an earlier one.
    pub fn escalation(&self) -> Option<&AbuseAction> {
        self.escalation.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3339 written directly is what `time` writes: leap days, the turns of
    /// years and centuries, fractions with and without trailing zeros, the last
    /// second of 9999, and the times outside that range (given to `time`).
    #[test]
    fn rfc3339_is_times() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut cases: Vec<(u64, u32)> = vec![
            (0, 0),
            (951_782_400, 0),
            (951_868_799, 999_999_999),
            (4_107_542_399, 1),
            (253_402_300_799, 120_000_000),
            (253_402_300_800, 5),
            (1_733_270_400, 100),
        ];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let nanos = match x % 4 {
                0 => 0,
                1 => (x >> 8) as u32 % 1_000 * 1_000_000,
                2 => (x >> 8) as u32 % 1_000_000 * 1_000,
                _ => (x >> 8) as u32 % 1_000_000_000,
            };
            cases.push(((x >> 20) % 253_402_400_000, nanos));
        }
        for (secs, nanos) in cases {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            let by_time = if secs < 253_402_300_800 {
                time::OffsetDateTime::from(t)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            } else {
                String::from("9999-12-31T23:59:59.999999999Z")
            };
            assert_eq!(rfc3339(t), by_time, "{secs}.{nanos}");
        }
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(rfc3339(before), "1969-12-31T00:00:00Z");
        // Past what RFC 3339 writes, and what `time` converts: no panic.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999999999Z");
    }
}
