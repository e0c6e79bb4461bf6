//! A [`StreamGuard`] for OpenAI server-sent events: bytes in, bytes out.

use std::fmt;

use super::stream::StreamGuard;
use crate::decision::Rejection;
use crate::openai::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatFunctionCallDelta, ChatToolCallDelta,
};
use crate::response::{ToolCall, Usage};
use crate::step::poll_once;

/// The most bytes one event may take before the stream is refused.
const MAX_EVENT: usize = 1 << 20;

#[derive(Default)]
struct CallParts {
    id: String,
    name: String,
    arguments: String,
}

/// Validates a streamed OpenAI chat completion as it passes through: feed it the
/// upstream's bytes as they arrive (split anywhere, even inside a `data:` line or a
/// UTF-8 character) and send on what it returns.
///
/// - Text deltas go through the [`StreamGuard`]; each outgoing chunk carries the
///   text released so far, so nothing is sent before it is checked.
/// - Tool-call deltas are assembled and held back; at `[DONE]` the whole calls are
///   validated and sent in one chunk, then the finish reason, usage and `[DONE]`.
/// - Usage reported in the stream settles the budget; without it, usage is counted
///   from the text.
/// - When the guard issues receipts, an `event: inference_receipt` event after
///   `[DONE]` carries the receipt over all the text sent.
/// - A block ends the stream with an in-band error event in the OpenAI error shape
///   (`data: {"error": {...}}`) and **no** `[DONE]`, so clients see a truncation.
/// - An upstream that ends without `[DONE]` ([`close`](Self::close)) is an aborted
///   stream: what was held back is not sent.
///
/// Only choice 0 is supported (`n` = 1); other choices end the stream with an error.
///
/// ```
/// use inference_guard::output::AnswerValidator;
/// use inference_guard::SseGuard;
/// use inference_guard::*;
///
/// let mut b = InferenceGuard::builder();
/// b.allow_anonymous().authorize_all().audit_sink(NoopSink).output_validator(AnswerValidator::new());
/// let guard = b.build()?;
/// let admission = guard.check_request(GuardRequest::new("m").with_stream(true))?;
/// let mut sse = SseGuard::new(admission.stream());
/// let mut sent = Vec::new();
/// let upstream = concat!(
///     "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",",
///     "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
///     "data: [DONE]\n\n"
/// );
/// for piece in upstream.as_bytes().chunks(7) {
///     sent.extend(sse.push(piece));
/// }
/// let sent = String::from_utf8(sent)?;
/// assert!(sent.contains("Hello") && sent.ends_with("data: [DONE]\n\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SseGuard {
    stream: Option<StreamGuard>,
    line: Vec<u8>,
    data: Vec<u8>,
    template: Option<ChatCompletionChunk>,
    calls: Vec<CallParts>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    ended: bool,
    rejection: Option<Rejection>,
}

impl fmt::Debug for SseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseGuard")
            .field("stream", &self.stream)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl SseGuard {
    /// Wraps a stream guard (from [`Admission::stream`](crate::Admission::stream)).
    pub fn new(stream: StreamGuard) -> Self {
        Self {
            stream: Some(stream),
            line: Vec::new(),
            data: Vec::new(),
            template: None,
            calls: Vec::new(),
            finish_reason: None,
            usage: None,
            ended: false,
            rejection: None,
        }
    }

    /// Whether the stream has ended (completed, blocked or failed).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The rejection that ended the stream, if one did.
    pub fn rejection(&self) -> Option<&Rejection> {
        self.rejection.as_ref()
    }

    /// Takes bytes from upstream; returns the bytes to send to the client now.
    ///
    /// Drives the validators synchronously (see [`StreamGuard::push`]); with a
    /// validator that returns a future, use [`push_async`](Self::push_async).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.now(|s| s.push_inner(bytes, true))
    }

    /// Like [`push`](Self::push), awaiting validators that return a future.
    pub async fn push_async(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.push_inner(bytes, false).await
    }

    /// Runs a step of the synchronous path, which never waits: a validator that
    /// would has already failed the stream closed inside it.
    fn now<'a, F: std::future::Future<Output = Vec<u8>> + 'a>(
        &'a mut self,
        f: impl FnOnce(&'a mut Self) -> F,
    ) -> Vec<u8> {
        poll_once(std::pin::pin!(f(self))).unwrap_or_default()
    }

    async fn push_inner(&mut self, bytes: &[u8], sync: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.ended {
                break;
            }
            if b != b'\n' {
                self.line.push(b);
                if self.line.len() + self.data.len() > MAX_EVENT {
                    self.fail(
                        Rejection::output_blocked("upstream event too large")
                            .with_code("upstream_event_too_large"),
                        &mut out,
                    );
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                let data = std::mem::take(&mut self.data);
                if !data.is_empty() {
                    self.event(&data, &mut out, sync).await;
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(rest);
            }
            // Comments (`:`) and other fields (`event`, `id`, `retry`) carry nothing
            // the guard needs.
        }
        out
    }

    /// The upstream closed the connection. Without a `[DONE]` this is an aborted
    /// stream: the guard records it and nothing held back is sent.
    pub fn close(mut self) -> Vec<u8> {
        self.now(|s| s.close_inner(true))
    }

    /// Like [`close`](Self::close), awaiting validators that return a future.
    pub async fn close_async(mut self) -> Vec<u8> {
        self.close_inner(false).await
    }

    async fn close_inner(&mut self, sync: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.ended {
            // A last event without its blank line still counts.
            let mut line = std::mem::take(&mut self.line);
            if !line.is_empty() {
                line.push(b'\n');
                out.extend(self.push_inner(&line, sync).await);
            }
            if !self.data.is_empty() && !self.ended {
                let data = std::mem::take(&mut self.data);
                self.event(&data, &mut out, sync).await;
            }
        }
        // Dropping an unfinished StreamGuard records StreamAborted.
        self.stream = None;
        out
    }

    fn fail(&mut self, r: Rejection, out: &mut Vec<u8>) {
        event(out, &r.to_openai_error_json());
        self.rejection = Some(r);
        self.ended = true;
        self.stream = None;
    }

    async fn event(&mut self, data: &[u8], out: &mut Vec<u8>, sync: bool) {
        if data == b"[DONE]" {
            self.done(out, sync).await;
            return;
        }
        let value: serde_json::Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(_) => {
                let r = Rejection::output_blocked("malformed upstream event")
                    .with_code("upstream_malformed_event");
                self.fail(r, out);
                return;
            }
        };
        if value.get("error").is_some() {
            // The upstream's own error: forwarded, and the stream ends.
            event(out, &value.to_string());
            self.ended = true;
            self.stream = None;
            return;
        }
        let chunk: ChatCompletionChunk = match serde_json::from_value(value) {
            Ok(c) => c,
            Err(_) => {
                let r = Rejection::output_blocked("malformed upstream chunk")
                    .with_code("upstream_malformed_event");
                self.fail(r, out);
                return;
            }
        };
        if let Some(u) = chunk.usage {
            self.usage = Some(u.into());
        }
        let mut template = chunk.clone();
        template.choices.clear();
        template.usage = None;
        // The id and model are echoed in every event: the guard's (the request id,
        // the model asked for), so that no upstream string rides along unvalidated.
        if let Some(s) = &self.stream {
            template.id = format!("chatcmpl-{}", s.admission().request_id());
            template.model = s.admission().request().model().to_owned();
        }
        template.object = "chat.completion.chunk".to_owned();
        self.template = Some(template);
        for choice in chunk.choices {
            if choice.index != 0 {
                let r = Rejection::output_blocked("more than one choice streamed")
                    .with_code("unsupported_choices");
                self.fail(r, out);
                return;
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
            for d in choice.delta.tool_calls.into_iter().flatten() {
                let i = d.index as usize;
                if i > 128 {
                    continue;
                }
                if self.calls.len() <= i {
                    self.calls.resize_with(i + 1, CallParts::default);
                }
                let c = &mut self.calls[i];
                if let Some(id) = d.id {
                    c.id = id;
                }
                if let Some(f) = d.function {
                    if let Some(n) = f.name {
                        c.name.push_str(&n);
                    }
                    if let Some(a) = f.arguments {
                        c.arguments.push_str(&a);
                    }
                }
            }
            let role = choice.delta.role;
            let text = match (choice.delta.content, self.stream.as_mut()) {
                (Some(t), Some(s)) => match s.push_inner(&t, sync).await {
                    Ok(released) => released,
                    Err(r) => {
                        self.fail(r, out);
                        return;
                    }
                },
                _ => String::new(),
            };
            if role.is_some() || !text.is_empty() {
                self.emit(out, role, (!text.is_empty()).then_some(text), None, None);
            }
        }
    }

    async fn done(&mut self, out: &mut Vec<u8>, sync: bool) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let calls: Vec<ToolCall> = std::mem::take(&mut self.calls)
            .into_iter()
            .filter(|c| !c.name.is_empty() || !c.arguments.is_empty())
            .map(|c| ToolCall::new(c.id, c.name, c.arguments))
            .collect();
        match stream.end_inner(self.usage, calls, sync).await {
            Ok(end) => {
                let (rest, calls, receipt) = (end.text, end.tool_calls, end.receipt);
                if !rest.is_empty() {
                    self.emit(out, None, Some(rest), None, None);
                }
                if !calls.is_empty() {
                    let deltas = calls
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| ChatToolCallDelta {
                            index: u32::try_from(i).unwrap_or(u32::MAX),
                            id: Some(c.id().to_owned()),
                            kind: Some("function".to_owned()),
                            function: Some(ChatFunctionCallDelta {
                                name: Some(c.name().to_owned()),
                                arguments: Some(c.arguments().to_owned()),
                            }),
                        })
                        .collect();
                    self.emit(out, None, None, Some(deltas), None);
                }
                let reason = self.finish_reason.take();
                if reason.is_some() {
                    self.emit(out, None, None, None, reason);
                }
                if let Some(u) = self.usage {
                    let mut c = self.template.clone().unwrap_or_default();
                    c.usage = Some(u.into());
                    event(out, &serde_json::to_string(&c).unwrap_or_default());
                }
                event(out, "[DONE]");
                // The receipt comes last, as its own event type: clients that stop
                // at `[DONE]` (the OpenAI SDKs) never see it.
                if let Some(r) = receipt {
                    out.extend_from_slice(b"event: inference_receipt\ndata: ");
                    out.extend_from_slice(r.as_bytes());
                    out.extend_from_slice(b"\n\n");
                }
                self.ended = true;
            }
            Err(r) => self.fail(r, out),
        }
    }

    fn emit(
        &self,
        out: &mut Vec<u8>,
        role: Option<String>,
        content: Option<String>,
        tool_calls: Option<Vec<ChatToolCallDelta>>,
        finish_reason: Option<String>,
    ) {
        let mut c = self
            .template
            .clone()
            .unwrap_or_else(|| ChatCompletionChunk {
                object: "chat.completion.chunk".to_owned(),
                ..ChatCompletionChunk::default()
            });
        c.choices = vec![ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role,
                content,
                tool_calls,
            },
            finish_reason,
        }];
        event(out, &serde_json::to_string(&c).unwrap_or_default());
    }
}

fn event(out: &mut Vec<u8>, data: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}
