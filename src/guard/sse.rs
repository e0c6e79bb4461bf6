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

/// U+FEFF in UTF-8, which a stream may start with.
const BOM: &[u8] = "\u{feff}".as_bytes();

#[derive(Default)]
struct CallParts {
    id: String,
    name: String,
    arguments: String,
}

/// Validates a streamed OpenAI chat completion as it passes through: feed it the
/// upstream's bytes as they arrive (split anywhere, even inside a `data:` line or a
/// UTF-8 character) and send on what it returns. The upstream is read as the
/// EventSource standard reads a stream: lines end at CR LF, LF or a lone CR, and a
/// byte order mark before the first line is skipped.
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
    /// The last bytes pushed ended with a CR (a LF first in the next is its pair).
    after_cr: bool,
    /// A line has been read (a byte order mark may start only the first).
    read_a_line: bool,
    data: Vec<u8>,
    template: Option<Template>,
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
            after_cr: false,
            read_a_line: false,
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
        let mut rest = bytes;
        while !self.ended && !rest.is_empty() {
            // The line feed of a CR LF pair whose CR ended the last push.
            if std::mem::take(&mut self.after_cr) && rest[0] == b'\n' {
                rest = &rest[1..];
                continue;
            }
            // Up to the next line break (or all of it, when the line goes on). As
            // the EventSource standard reads a stream, a line ends at CR LF, at LF
            // or at a CR alone.
            let (piece, ends) = match memchr::memchr2(b'\n', b'\r', rest) {
                Some(i) if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') => {
                    (&rest[..i], Some(i + 2))
                }
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            // Refused before it is copied: no more than an event's worth is kept.
            if self.line.len() + piece.len() + self.data.len() > MAX_EVENT {
                self.fail(
                    Rejection::output_blocked("upstream event too large")
                        .with_code("upstream_event_too_large"),
                    &mut out,
                );
                break;
            }
            self.line.extend_from_slice(piece);
            let Some(next) = ends else {
                break;
            };
            // A CR that ends the bytes given may be the first of a CR LF pair.
            self.after_cr = next == rest.len() && rest[next - 1] == b'\r';
            rest = &rest[next..];
            // The line and the event's data are taken out to be read and put back
            // empty (their buffers are kept for the next ones).
            let mut line = std::mem::take(&mut self.line);
            // A byte order mark before the stream's first line is not part of it.
            if !std::mem::replace(&mut self.read_a_line, true) && line.starts_with(BOM) {
                line.drain(..BOM.len());
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    let mut data = std::mem::take(&mut self.data);
                    self.event(&data, &mut out, sync).await;
                    data.clear();
                    self.data = data;
                }
            } else if let Some(field) = line
                .strip_prefix(b"data:")
                .or((line == b"data").then_some(&[][..]))
            {
                // A `data` line without a colon is a data line with an empty value.
                let field = field.strip_prefix(b" ").unwrap_or(field);
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(field);
            }
            // Comments (`:`) and other fields (`event`, `id`, `retry`) carry nothing
            // the guard needs.
            line.clear();
            self.line = line;
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
        // An ordinary chunk is read straight into its type; anything else (an
        // `error` member, a duplicated member, a chunk that does not read) takes
        // the general path below, which decides as before.
        let chunk = match serde_json::from_slice::<Incoming>(data) {
            Ok(c) if !c.error.0 => ChatCompletionChunk {
                id: c.id,
                object: c.object,
                created: c.created,
                model: c.model,
                choices: c.choices,
                usage: c.usage,
            },
            _ => match self.read_event(data, out) {
                Some(c) => c,
                None => return,
            },
        };
        self.chunk(chunk, out, sync).await;
    }

    /// An event that is not an ordinary chunk: the upstream's error (forwarded; the
    /// stream ends), a malformed event (the stream fails), or a chunk with
    /// duplicated members (the last one counts).
    fn read_event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<ChatCompletionChunk> {
        let value: serde_json::Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(_) => {
                let r = Rejection::output_blocked("malformed upstream event")
                    .with_code("upstream_malformed_event");
                self.fail(r, out);
                return None;
            }
        };
        if value.get("error").is_some() {
            // The upstream's own error: forwarded, and the stream ends.
            event(out, &value.to_string());
            self.ended = true;
            self.stream = None;
            return None;
        }
        match serde_json::from_value(value) {
            Ok(c) => Some(c),
            Err(_) => {
                let r = Rejection::output_blocked("malformed upstream chunk")
                    .with_code("upstream_malformed_event");
                self.fail(r, out);
                None
            }
        }
    }

    async fn chunk(&mut self, chunk: ChatCompletionChunk, out: &mut Vec<u8>, sync: bool) {
        if let Some(u) = chunk.usage {
            self.usage = Some(u.into());
        }
        self.set_template(&chunk);
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
                    let mut c = self
                        .template
                        .as_ref()
                        .map(|t| t.head.clone())
                        .unwrap_or_default();
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

    /// The head every event sent carries, from the upstream's chunk: its `created`;
    /// the guard's id (the request id) and the model asked for, so that no upstream
    /// string rides along unvalidated. Serialized again only when it changes.
    fn set_template(&mut self, chunk: &ChatCompletionChunk) {
        let guard = self.stream.as_ref().map(|s| s.admission());
        if guard.is_some()
            && self
                .template
                .as_ref()
                .is_some_and(|t| t.head.created == chunk.created)
        {
            return;
        }
        let head = ChatCompletionChunk {
            id: guard.map_or_else(
                || chunk.id.clone(),
                |a| format!("chatcmpl-{}", a.request_id()),
            ),
            object: "chat.completion.chunk".to_owned(),
            created: chunk.created,
            model: guard.map_or_else(|| chunk.model.clone(), |a| a.request().model().to_owned()),
            choices: Vec::new(),
            usage: None,
        };
        self.template = Some(Template::new(head));
    }

    fn emit(
        &self,
        out: &mut Vec<u8>,
        role: Option<String>,
        content: Option<String>,
        tool_calls: Option<Vec<ChatToolCallDelta>>,
        finish_reason: Option<String>,
    ) {
        let choice = ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role,
                content,
                tool_calls,
            },
            finish_reason,
        };
        let blank;
        let template = match &self.template {
            Some(t) => t,
            None => {
                blank = Template::new(ChatCompletionChunk {
                    object: "chat.completion.chunk".to_owned(),
                    ..ChatCompletionChunk::default()
                });
                &blank
            }
        };
        // The chunk with this one choice, as `serde_json` writes it: the head's
        // bytes up to the choices, the choice, and the end.
        let start = out.len();
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&template.prefix);
        if serde_json::to_writer(&mut *out, &choice).is_err() {
            // Writing these types to a `Vec` does not fail; should it, no half
            // event is sent.
            out.truncate(start);
            return;
        }
        out.extend_from_slice(b"]}\n\n");
    }
}

/// The head of the chunks sent (no choices, no usage) and its serialization up to
/// and including the `[` of its choices.
struct Template {
    head: ChatCompletionChunk,
    prefix: Vec<u8>,
}

impl Template {
    fn new(head: ChatCompletionChunk) -> Self {
        // `{..,"choices":[]}` (the head's fields come before the choices, and
        // `usage` is left out when it is `None`): all but the last two bytes.
        let mut prefix = serde_json::to_vec(&head).unwrap_or_default();
        debug_assert!(prefix.ends_with(b",\"choices\":[]}"));
        prefix.truncate(prefix.len().saturating_sub(2));
        Self { head, prefix }
    }
}

/// An upstream chunk as [`ChatCompletionChunk`] reads it, and whether the event
/// has an `error` member (whatever it holds, `null` too).
#[derive(serde::Deserialize)]
struct Incoming {
    id: String,
    object: String,
    created: u64,
    model: String,
    choices: Vec<ChatChunkChoice>,
    #[serde(default)]
    usage: Option<crate::openai::ChatUsage>,
    #[serde(default)]
    error: Present,
}

/// Whether a member is there: any value, `null` included.
#[derive(Default)]
struct Present(bool);

impl<'de> serde::Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Self(true))
    }
}

fn event(out: &mut Vec<u8>, data: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::SseGuard;
    use crate::openai::ChatCompletionChunk;
    use crate::output::AnswerValidator;
    use crate::*;

    fn guard() -> InferenceGuard {
        let mut b = InferenceGuard::builder();
        b.allow_anonymous()
            .authorize_all()
            .audit_sink(NoopSink)
            .output_validator(AnswerValidator::new());
        b.build().unwrap()
    }

    /// Runs `body` through a fresh `SseGuard`, `piece` bytes at a time; returns what
    /// was sent and the request id.
    fn relay(g: &InferenceGuard, body: &str, piece: usize) -> (String, String) {
        let req = GuardRequest::new("asked-model")
            .with_stream(true)
            .with_tool(ToolSpec::new("get"));
        let adm = g.check_request(req).unwrap();
        let id = adm.request_id().to_string();
        let mut sse = SseGuard::new(adm.stream());
        let mut out = Vec::new();
        for p in body.as_bytes().chunks(piece) {
            out.extend(sse.push(p));
        }
        out.extend(sse.close());
        (String::from_utf8(out).unwrap(), id)
    }

    fn chunk(created: u32, choice: &str) -> String {
        format!(
            "data: {{\"id\":\"up\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":\"up-model\",\"system_fingerprint\":\"fp\",\"choices\":[{choice}]}}\n\n"
        )
    }

    /// The events are written from a head serialized once and each choice: the
    /// bytes are what `serde_json` writes for the whole chunk, the head is the
    /// guard's (request id, model asked for) with the upstream's `created`, also
    /// when it changes mid-stream.
    #[test]
    fn each_event_is_the_chunk_serde_json_writes() {
        let g = guard();
        let body = [
            chunk(1, r#"{"index":0,"delta":{"role":"assistant","content":""}}"#),
            chunk(1, r#"{"index":0,"delta":{"content":"Say \"hi\"\t\u00e9\n"}}"#),
            chunk(2, r#"{"index":0,"delta":{"content":" a < b \\ c, done."},"logprobs":null}"#),
            chunk(2, r#"{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get","arguments":"{}"}}]}}"#),
            chunk(2, r#"{"index":0,"delta":{},"finish_reason":"tool_calls"}"#),
            "data: {\"id\":\"up\",\"object\":\"x\",\"created\":2,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n".to_owned(),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        for piece in [1, 7, body.len()] {
            let (sent, id) = relay(&g, &body, piece);
            let events: Vec<&str> = sent
                .split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| e.strip_prefix("data: ").unwrap())
                .collect();
            assert_eq!(events.last(), Some(&"[DONE]"));
            let mut created = Vec::new();
            let mut text = String::new();
            for e in &events[..events.len() - 1] {
                let c: ChatCompletionChunk = serde_json::from_str(e).unwrap();
                assert_eq!(serde_json::to_string(&c).unwrap(), *e);
                assert_eq!(c.id, format!("chatcmpl-{id}"));
                assert_eq!(
                    (c.model.as_str(), c.object.as_str()),
                    ("asked-model", "chat.completion.chunk")
                );
                created.push(c.created);
                for ch in &c.choices {
                    text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                }
            }
            assert_eq!(text, "Say \"hi\"\t\u{e9}\n a < b \\ c, done.");
            assert_eq!(created.first(), Some(&1));
            assert_eq!(created.last(), Some(&2));
            assert!(sent.contains(r#""tool_calls":[{"index":0,"id":"c1","type":"function""#));
            assert!(sent.contains(r#""usage":{"prompt_tokens":1,"completion_tokens":2"#));
        }
    }

    /// An event with an `error` member is the upstream's error, whatever the
    /// member holds (`null` too) and whatever else the event has: forwarded as it
    /// is, and the stream ends.
    #[test]
    fn an_error_member_even_null_ends_the_stream_with_the_upstreams_event() {
        let g = guard();
        let body = [
            chunk(1, r#"{"index":0,"delta":{"content":"Hello"}}"#),
            "data: {\"id\":\"up\",\"object\":\"o\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"more\"}}],\"error\":null}\n\n".to_owned(),
            chunk(1, r#"{"index":0,"delta":{"content":"after"}}"#),
        ]
        .concat();
        let (sent, _) = relay(&g, &body, body.len());
        assert!(sent.contains(r#""error":null"#) && sent.contains(r#""content":"more""#));
        assert!(!sent.contains("after") && !sent.contains("[DONE]"));
    }

    /// An event of more than 1 MiB (its lines so far and the line being read) ends
    /// the stream, however its bytes are cut; one just under it is read.
    #[test]
    fn an_event_past_its_bound_ends_the_stream() {
        let g = guard();
        let half = "x".repeat(super::MAX_EVENT / 2);
        let over = format!("data: \"{half}\n data: {half}\"\n\n");
        let under = format!("data: {}\n\n", " ".repeat(super::MAX_EVENT - 6));
        for piece in [4096, over.len()] {
            let (sent, _) = relay(&g, &over, piece);
            assert!(sent.contains("upstream_event_too_large"), "{piece}");
            let (sent, _) = relay(&g, &under, piece);
            assert!(sent.contains("upstream_malformed_event"), "{piece}");
        }
    }

    /// The EventSource standard ends a line at CR LF, LF or a lone CR, and skips
    /// a byte order mark that starts the stream: each of these, the pairs split
    /// between pushes, relays the same events (an upstream whose lines end at a
    /// lone CR was refused as one event too large).
    #[test]
    fn every_line_ending_the_standard_allows_relays_the_same() {
        let g = guard();
        let lf = [
            chunk(
                1,
                r#"{"index":0,"delta":{"role":"assistant","content":"Hel"}}"#,
            ),
            chunk(1, r#"{"index":0,"delta":{"content":"lo"}}"#),
            "data\n\n".to_owned(),
            chunk(1, r#"{"index":0,"delta":{},"finish_reason":"stop"}"#),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let (want, id) = relay(&g, &lf, lf.len());
        let want = want.replace(&id, "ID");
        assert!(
            want.contains(r#""content":"Hello""#) && want.ends_with("data: [DONE]\n\n"),
            "{want}"
        );
        let bodies = [
            lf.replace('\n', "\r\n"),
            lf.replace('\n', "\r"),
            format!("\u{feff}{lf}"),
            format!("\u{feff}{}", lf.replace('\n', "\r")),
            // Mixed, with an empty line between a CR and a LF.
            lf.replacen("\n\n", "\r\r\n", 1).replacen("\n\n", "\n\r", 1),
        ];
        for body in &bodies {
            for piece in [1, 2, 3, 7, body.len()] {
                let (sent, id) = relay(&g, body, piece);
                assert_eq!(sent.replace(&id, "ID"), want, "{body:?} in {piece}");
            }
        }
    }

    /// A member given twice counts its last value, as a JSON object read into a
    /// map does.
    #[test]
    fn a_member_given_twice_counts_its_last_value() {
        let g = guard();
        let body = [
            "data: {\"id\":\"up\",\"object\":\"o\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"first\"}}],\"choices\":[{\"index\":0,\"delta\":{\"content\":\"second\"}}]}\n\n",
            "data: [DONE]\n\n",
        ]
        .concat();
        let (sent, _) = relay(&g, &body, 3);
        assert!(sent.contains("second") && !sent.contains("first"), "{sent}");
        assert!(sent.ends_with("data: [DONE]\n\n"));
    }
}
