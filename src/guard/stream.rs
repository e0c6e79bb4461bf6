//! [`StreamGuard`]: validating an answer chunk by chunk.

use std::fmt;
use std::time::Duration;

use quanta::Instant;

use crate::decision::{Rejection, Stage};
use crate::finding::{Action, Finding, Location, floor_boundary, redact};
use crate::guard::Admission;
use crate::record::{Outcome, StageOutcome, StageRecord};
use crate::response::{GuardResponse, ToolCall, Usage};
use crate::stage::{StageContext, StreamValidator};
use crate::step::poll_once;

/// Validates a streamed answer as it arrives, releasing text only once it is safe.
///
/// Get one from [`Admission::stream`]. Feed it each text delta with
/// [`push`](Self::push); it returns the text that may be sent to the caller now and
/// holds back the rest. End it with [`finish`](Self::finish).
///
/// Validators that support streaming ([`OutputValidator::stream`]) say how much of the
/// answer is safe; the guard holds back at most what they hold back. A validator
/// without streaming support makes the guard hold back the whole answer until
/// `finish`, where it validates the whole answer: safe, but not streamed.
///
/// A block in mid-stream returns a [`Rejection`]; every later call returns it too.
/// Send the caller an in-band error and end the stream without a clean end marker.
///
/// Dropping the guard before `finish` records a
/// [`StreamAborted`](crate::Outcome::StreamAborted) event and charges what was
/// streamed.
///
/// ```
/// use inference_guard::*;
///
/// let mut b = InferenceGuard::builder();
/// b.allow_anonymous().authorize_all().audit_sink(NoopSink);
/// let guard = b.build()?;
/// let mut stream = guard.check_request(GuardRequest::new("m").with_stream(true))?.stream();
/// let mut sent = String::new();
/// for delta in ["Hel", "lo, ", "world"] {
///     sent.push_str(&stream.push(delta)?);
/// }
/// sent.push_str(&stream.finish(None)?);
/// assert_eq!(sent, "Hello, world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`OutputValidator::stream`]: crate::OutputValidator::stream
pub struct StreamGuard {
    admission: Admission,
    text: String,
    released: usize,
    incremental: Vec<Box<dyn StreamValidator>>,
    whole: Vec<usize>,
    pending_redactions: Vec<Finding>,
    blocked: Option<Rejection>,
    spent: Duration,
    /// A validator failed open: the others no longer run.
    failed_open: bool,
    /// `finish` is running: nothing more will arrive, hold nothing back.
    finishing: bool,
    /// SHA-256 of everything released to the caller, for the receipt.
    /// The digest of what was released, kept only when the guard signs receipts.
    sent: Option<ring::digest::Context>,
}

/// How a stream ended: the rest of the text, the tool calls that may be sent, and the
/// signed receipt when the guard issues receipts.
#[derive(Debug)]
#[non_exhaustive]
pub struct StreamEnd {
    /// The rest of the text to send.
    pub text: String,
    /// The validated tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// The receipt (over all the text the caller received), when the guard issues
    /// receipts (see [`receipt`](crate::receipt)).
    pub receipt: Option<String>,
}

impl StreamEnd {
    /// The receipt, if any.
    pub fn receipt(&self) -> Option<&str> {
        self.receipt.as_deref()
    }
}

impl fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamGuard")
            .field("request_id", &self.admission.request_id())
            .field("received", &self.text.len())
            .field("released", &self.released)
            .field("blocked", &self.blocked.is_some())
            .finish_non_exhaustive()
    }
}

impl StreamGuard {
    pub(crate) fn new(admission: Admission) -> Self {
        let mut incremental = Vec::new();
        let mut whole = Vec::new();
        {
            let cx = StageContext::new(admission.principal(), admission.request());
            for (i, v) in admission.guard().validators().iter().enumerate() {
                match v.stream(cx) {
                    Some(s) => incremental.push(s),
                    None => whole.push(i),
                }
            }
        }
        let sent = admission
            .guard()
            .receipt_signer()
            .map(|_| ring::digest::Context::new(&ring::digest::SHA256));
        Self {
            admission,
            text: String::new(),
            released: 0,
            incremental,
            whole,
            pending_redactions: Vec::new(),
            blocked: None,
            spent: Duration::ZERO,
            failed_open: false,
            finishing: false,
            sent,
        }
    }

    /// Bytes received so far.
    pub fn received_bytes(&self) -> usize {
        self.text.len()
    }

    /// Bytes released to the caller so far.
    pub fn released_bytes(&self) -> usize {
        self.released
    }

    /// Bytes held back.
    pub fn held_bytes(&self) -> usize {
        self.text.len() - self.released
    }

    /// The admission this stream belongs to.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Adds a text delta; returns the text that is safe to send now (possibly empty,
    /// possibly redacted).
    ///
    /// Drives the validators synchronously: a validator whose
    /// [`advance`](crate::StreamValidator::advance) returns a future (a model-backed
    /// one) fails the stream closed with [`ErrorKind::WouldBlock`](crate::ErrorKind::WouldBlock); use
    /// [`push_async`](Self::push_async) for those.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] when the answer is blocked (now or earlier).
    pub fn push(&mut self, delta: &str) -> Result<String, Rejection> {
        poll_once(std::pin::pin!(self.push_inner(delta, true)))
            .unwrap_or_else(|| Err(crate::guard::would_block()))
    }

    /// Like [`push`](Self::push), awaiting validators that return a future.
    ///
    /// ```
    /// use inference_guard::*;
    ///
    /// # futures_executor_free::run(async {
    /// let mut b = InferenceGuard::builder();
    /// b.allow_anonymous().authorize_all().audit_sink(NoopSink);
    /// let guard = b.build()?;
    /// let admission = guard.check_request_async(GuardRequest::new("m").with_stream(true)).await?;
    /// let mut stream = admission.stream();
    /// let mut sent = stream.push_async("Hello").await?;
    /// sent.push_str(&stream.end_async(None, Vec::new()).await?.text);
    /// assert_eq!(sent, "Hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # mod futures_executor_free {
    /// #     pub fn run<F: std::future::Future>(f: F) -> F::Output {
    /// #         let mut f = std::pin::pin!(f);
    /// #         let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #         loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// #     }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push).
    pub async fn push_async(&mut self, delta: &str) -> Result<String, Rejection> {
        self.push_inner(delta, false).await
    }

    pub(crate) async fn push_inner(
        &mut self,
        delta: &str,
        sync: bool,
    ) -> Result<String, Rejection> {
        if let Some(r) = &self.blocked {
            return Err(r.clone());
        }
        let t0 = crate::clock::ticks();
        self.text.push_str(delta);
        let mut findings = Vec::new();
        if self.text.len() > self.admission.guard().limits().output_bytes() {
            findings.push(crate::guard::output_too_large());
        }
        let mut safe = if self.whole.is_empty() {
            self.text.len()
        } else {
            self.released
        };
        for v in &mut self.incremental {
            let text = &self.text;
            match crate::guard::call(sync, Stage::OutputValidation, || v.advance(text, false)).await
            {
                Ok(verdict) => {
                    safe = safe.min(verdict.safe_up_to);
                    findings.extend(verdict.findings);
                }
                Err(e) => {
                    self.spent += crate::clock::since(t0);
                    return self.stage_failed(e);
                }
            }
        }
        let out = self.settle_findings(findings, safe, t0)?;
        Ok(out)
    }

    /// Ends the stream: runs the end-of-stream checks and whole-answer validators,
    /// settles the reservation (with `usage` if the model reported it, otherwise an
    /// estimate) and records the audit event. Returns the rest of the text to send.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] when the answer is blocked, or a validator or the audit sink
    /// fails closed.
    pub fn finish(self, usage: Option<Usage>) -> Result<String, Rejection> {
        self.finish_with_tool_calls(usage, Vec::new())
            .map(|(text, _)| text)
    }

    /// Ends a stream whose answer also asked for tool calls (assembled from the
    /// stream's deltas): like [`finish`](Self::finish), and the tool calls are
    /// validated as in a whole answer. Returns the rest of the text and the tool
    /// calls that may be sent (a call with a `Redact` finding is removed).
    ///
    /// # Errors
    ///
    /// As [`finish`](Self::finish); a `Block` finding on a tool call blocks.
    pub fn finish_with_tool_calls(
        self,
        usage: Option<Usage>,
        tool_calls: Vec<ToolCall>,
    ) -> Result<(String, Vec<ToolCall>), Rejection> {
        self.end(usage, tool_calls).map(|e| (e.text, e.tool_calls))
    }

    /// Ends the stream like [`finish_with_tool_calls`](Self::finish_with_tool_calls)
    /// and also returns the signed receipt over everything the caller received,
    /// when the guard issues receipts.
    ///
    /// # Errors
    ///
    /// As [`finish`](Self::finish).
    pub fn end(
        self,
        usage: Option<Usage>,
        tool_calls: Vec<ToolCall>,
    ) -> Result<StreamEnd, Rejection> {
        poll_once(std::pin::pin!(self.end_inner(usage, tool_calls, true)))
            .unwrap_or_else(|| Err(crate::guard::would_block()))
    }

    /// Like [`end`](Self::end), awaiting validators that return a future (see
    /// [`push_async`](Self::push_async)).
    ///
    /// # Errors
    ///
    /// As [`finish`](Self::finish).
    pub async fn end_async(
        self,
        usage: Option<Usage>,
        tool_calls: Vec<ToolCall>,
    ) -> Result<StreamEnd, Rejection> {
        self.end_inner(usage, tool_calls, false).await
    }

    pub(crate) async fn end_inner(
        mut self,
        usage: Option<Usage>,
        tool_calls: Vec<ToolCall>,
        sync: bool,
    ) -> Result<StreamEnd, Rejection> {
        if let Some(r) = &self.blocked {
            return Err(r.clone());
        }
        self.finishing = true;
        let mut calls = GuardResponse::new(String::new());
        for c in tool_calls {
            calls = calls.with_tool_call(c);
        }
        let t0 = crate::clock::ticks();
        let mut out = String::new();
        let mut findings = Vec::new();
        let mut failure = None;
        for v in &mut self.incremental {
            let text = &self.text;
            match crate::guard::call(sync, Stage::OutputValidation, || v.advance(text, true)).await
            {
                Ok(verdict) => findings.extend(verdict.findings),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Whole-answer validators see the text and the tool calls; incremental ones
        // have seen the text and now see the tool calls alone.
        let has_calls = !calls.tool_calls().is_empty();
        if failure.is_none() && (!self.whole.is_empty() || has_calls) {
            let mut response = GuardResponse::new(std::mem::take(&mut self.text));
            for c in calls.tool_calls() {
                response = response.with_tool_call(c.clone());
            }
            let guard = self.admission.guard().clone();
            let validators = guard.validators();
            let cx = StageContext::new(self.admission.principal(), self.admission.request());
            let plan: Vec<(usize, bool)> = (0..validators.len())
                .filter_map(|i| {
                    if self.whole.contains(&i) {
                        Some((i, true))
                    } else if has_calls && !self.failed_open {
                        Some((i, false))
                    } else {
                        None
                    }
                })
                .collect();
            for (i, whole) in plan {
                let v = &validators[i];
                let subject = if whole { &response } else { &calls };
                let res =
                    crate::guard::call(sync, Stage::OutputValidation, || v.validate(cx, subject))
                        .await;
                match res {
                    Ok(f) => findings.extend(f),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            self.text = response.into_text();
        }
        let before = self.admission.parts_mut().2.output_findings.len();
        if let Some(e) = failure {
            self.spent += crate::clock::since(t0);
            // Fail-open releases everything held; fail-closed blocks.
            out.push_str(&self.stage_failed(e)?);
            findings.clear();
        }
        let end = self.text.len();
        out.push_str(&self.settle_findings(findings, end, t0)?);
        // Tool calls with a Redact finding are removed.
        let mut tool_calls = calls.tool_calls().to_vec();
        if !self.admission.guard().shadow(Stage::OutputValidation) {
            let (_, _, trace) = self.admission.parts_mut();
            let mut drop: Vec<usize> = trace.output_findings
                [before.min(trace.output_findings.len())..]
                .iter()
                .filter_map(|f| match f.location() {
                    Location::ToolCall(i) if f.action() == Action::Redact => Some(i),
                    _ => None,
                })
                .collect();
            drop.sort_unstable();
            drop.dedup();
            for i in drop.into_iter().rev() {
                if i < tool_calls.len() {
                    tool_calls.remove(i);
                }
            }
        }
        let usage = usage.unwrap_or_else(|| self.estimated_usage());
        let guard = self.admission.guard().clone();
        let outcome = guard.output_outcome(self.admission.parts_mut().2);
        self.record_stage(outcome);
        self.admission
            .finish_stream(Outcome::Completed, None, usage, &self.text)?;
        let sent = self.sent.take();
        let receipt = guard.receipt_signer().zip(sent).map(|(signer, sent)| {
            let digest = format!("sha256:{}", crate::codec::hex(sent.finish().as_ref()));
            let principal = self.admission.principal().clone();
            let (_, request, trace) = self.admission.parts_mut();
            guard.sign_receipt(
                signer,
                Some(&principal),
                request,
                trace,
                digest,
                &tool_calls,
            )
        });
        Ok(StreamEnd {
            text: out,
            tool_calls,
            receipt,
        })
    }

    /// Records the output stage once per stream, with the time spent in it.
    fn record_stage(&mut self, outcome: StageOutcome) {
        let spent = self.spent;
        let (_, _, trace) = self.admission.parts_mut();
        if trace
            .stages
            .iter()
            .any(|s| s.stage == Stage::OutputValidation)
        {
            return;
        }
        let end = Instant::now();
        trace.stages.push(StageRecord {
            stage: Stage::OutputValidation,
            outcome,
            start: end.checked_sub(spent).unwrap_or(end),
            end,
            error: None,
            findings: u32::try_from(trace.output_findings.len()).unwrap_or(u32::MAX),
        });
    }

    fn estimated_usage(&self) -> Usage {
        Usage::new(
            self.admission.request().estimated_input_tokens(),
            (self.text.len() as u64).div_ceil(4),
        )
    }

    fn stage_failed(&mut self, e: crate::StageError) -> Result<String, Rejection> {
        let guard = self.admission.guard().clone();
        let (_, _, trace) = self.admission.parts_mut();
        trace.reset_mark();
        match guard.fail_open_output(e, trace) {
            Ok(()) => {
                // Fail-open: the failing validators are dropped; release what we hold.
                self.incremental.clear();
                self.whole.clear();
                self.failed_open = true;
                let end = self.text.len();
                self.release(end)
            }
            Err(r) => Err(self.block(r)),
        }
    }

    fn block(&mut self, r: Rejection) -> Rejection {
        let usage = self.estimated_usage();
        self.blocked = Some(r.clone());
        let _ = self
            .admission
            .finish_stream(Outcome::StreamAborted, Some(&r), usage, &self.text);
        r
    }

    fn settle_findings(
        &mut self,
        mut findings: Vec<Finding>,
        safe: usize,
        t0: u64,
    ) -> Result<String, Rejection> {
        if !findings.is_empty() {
            let guard = self.admission.guard().clone();
            let (_, _, trace) = self.admission.parts_mut();
            let before = trace.output_findings.len();
            // The same judgement as a whole answer's; the stage is recorded once,
            // when the stream ends or is blocked.
            let verdict = guard.judge_output(std::mem::take(&mut findings), trace);
            if !guard.shadow(Stage::OutputValidation) {
                self.pending_redactions.extend(
                    trace.output_findings[before..]
                        .iter()
                        .filter(|f| {
                            f.action() == Action::Redact && f.location() == Location::Output
                        })
                        .cloned(),
                );
            }
            if let Err(r) = verdict {
                self.spent += crate::clock::since(t0);
                self.record_stage(StageOutcome::Rejected);
                return Err(self.block(r));
            }
        }
        let out = self.release(safe);
        self.spent += crate::clock::since(t0);
        out
    }

    fn release(&mut self, safe: usize) -> Result<String, Rejection> {
        let mut end = floor_boundary(&self.text, safe);
        let restoring = !self.admission.parts_mut().2.vault.is_empty();
        if restoring && !self.finishing {
            // Never cut a pseudonym placeholder (`<EMAIL_1>`) in two: hold back an
            // unclosed `<` near the end.
            let tail_from = end.saturating_sub(64).max(self.released);
            let tail_from = floor_boundary(&self.text, tail_from);
            if let Some(lt) = self.text[tail_from..end].rfind('<') {
                if !self.text[tail_from + lt..end].contains('>') {
                    end = tail_from + lt;
                }
            }
        }
        if end <= self.released {
            return Ok(String::new());
        }
        let start = self.released;
        let segment = &self.text[start..end];
        let out = if self.pending_redactions.is_empty() {
            segment.to_owned()
        } else {
            let shifted: Vec<Finding> = self
                .pending_redactions
                .iter()
                .filter(|f| f.span().end > start && f.span().start < end)
                .map(|f| {
                    let s = f.span();
                    let mut g = f.clone();
                    g = Finding::new(
                        g.rule_id().to_owned(),
                        g.category().clone(),
                        g.severity(),
                        Location::Output,
                        s.start.max(start) - start..s.end.min(end) - start,
                    )
                    .with_action(Action::Redact);
                    if let Some(r) = f.replacement() {
                        g = g.with_replacement(r.to_owned());
                    }
                    g
                })
                .collect();
            self.pending_redactions.retain(|f| f.span().end > end);
            redact(segment, &shifted)
        };
        self.released = end;
        let mut out = out;
        if restoring {
            // Pseudonyms from the input go back to the originals for the caller; the
            // audit record keeps the pseudonymized answer.
            let (_, _, trace) = self.admission.parts_mut();
            for (pseudonym, original) in &trace.vault {
                if out.contains(pseudonym.as_str()) {
                    out = out.replace(pseudonym.as_str(), original);
                }
            }
        }
        if let Some(sent) = &mut self.sent {
            sent.update(out.as_bytes());
        }
        Ok(out)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.admission.is_finished() {
            return;
        }
        let usage = self.estimated_usage();
        let _ = self
            .admission
            .finish_stream(Outcome::StreamAborted, None, usage, &self.text);
    }
}
