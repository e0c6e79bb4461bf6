//! Serde types for the OpenAI-compatible chat completions API (the wire format most
//! inference APIs speak), and conversions to and from the guard's model.
//!
//! Fields the guard does not interpret (`temperature`, `seed`, vendor extensions, ...)
//! are kept in `extra` and written back unchanged, so a gateway can forward the
//! admitted request without losing anything.
//!
//! ```
//! use inference_guard::openai::ChatCompletionRequest;
//! use inference_guard::Credentials;
//!
//! let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"max_tokens":32,"temperature":0.2}"#;
//! let mut wire: ChatCompletionRequest = serde_json::from_str(body)?;
//! let req = wire.to_guard_request(Credentials::from_bearer("t"), "/v1/chat/completions");
//! assert_eq!(req.messages()[0].content(), "Hi");
//! assert_eq!(req.max_output_tokens(), Some(32));
//! wire.apply_messages(&req);
//! assert!(serde_json::to_string(&wire)?.contains("\"temperature\":0.2"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::request::{Credentials, GuardRequest, Message, Role, ToolSpec};
use crate::response::{GuardResponse, ToolCall, Usage};

/// A chat completions request (`POST /v1/chat/completions`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// The model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ChatTool>>,
    /// Maximum output tokens (legacy name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Maximum output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Whether to stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// The requested answer format (`{"type": "json_object"}`, `{"type": "json_schema", ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a chat completions request or response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text, or an array of content parts; absent on some assistant messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ChatContent>,
    /// An optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ChatToolCall>>,
    /// The call this tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Message content: a string, or an array of parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChatContent {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`, images, audio, ...).
    Parts(Vec<ChatContentPart>),
}

/// One content part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatContentPart {
    /// The part's type (`text`, `image_url`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatContent {
    /// The text: the string, or the text parts joined by newlines.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => {
                let mut out = String::new();
                for t in parts.iter().filter_map(|p| p.text.as_deref()) {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(t);
                }
                out
            }
        }
    }
}

/// A tool offered to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTool {
    /// Always `function` today.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: ChatFunction,
}

/// A function offered to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatFunction {
    /// Its name.
    pub name: String,
    /// Its description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A tool call in an assistant message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatToolCall {
    /// The call's id.
    pub id: String,
    /// Always `function` today.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function called.
    pub function: ChatFunctionCall,
}

/// The function and arguments of a tool call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatFunctionCall {
    /// The function's name.
    #[serde(default)]
    pub name: String,
    /// The arguments, as a JSON string.
    #[serde(default)]
    pub arguments: String,
}

/// Token usage as OpenAI reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUsage {
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

impl From<ChatUsage> for Usage {
    fn from(u: ChatUsage) -> Self {
        Self::new(u.prompt_tokens, u.completion_tokens)
    }
}

impl From<Usage> for ChatUsage {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.total(),
        }
    }
}

/// A chat completions response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    /// The completion's id.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix time of creation.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The answers (usually one).
    pub choices: Vec<ChatChoice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ChatUsage>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One answer of a response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Its index.
    pub index: u32,
    /// The assistant's message.
    pub message: ChatMessage,
    /// Why the model stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// One server-sent event of a streamed response (`chat.completion.chunk`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// The completion's id.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix time of creation.
    pub created: u64,
    /// The model.
    pub model: String,
    /// Deltas.
    pub choices: Vec<ChatChunkChoice>,
    /// Usage, in the last chunk when `stream_options.include_usage` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ChatUsage>,
}

/// One delta of a streamed response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    /// The choice's index.
    pub index: u32,
    /// What is new.
    pub delta: ChatDelta,
    /// Why the model stopped, in the last chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// The new part of a streamed message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    /// The role, in the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New parts of tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ChatToolCallDelta>>,
}

/// A piece of a streamed tool call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatToolCallDelta {
    /// Which tool call this piece belongs to.
    pub index: u32,
    /// The call's id, in its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, in its first piece.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and argument fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<ChatFunctionCallDelta>,
}

/// Fragments of a streamed function call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatFunctionCallDelta {
    /// The name, in the first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A fragment of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ChatCompletionRequest {
    /// The guard's view of this request, with the caller's credentials and route.
    ///
    /// Each message becomes one [`Message`]; content parts are joined by newlines
    /// (only text parts: images are not scanned). The arguments of tool calls in
    /// earlier assistant turns are appended to that message's text, so they are
    /// scanned too.
    pub fn to_guard_request(&self, credentials: Credentials, route: &str) -> GuardRequest {
        let mut req = self
            .guard_request_shell()
            .with_credentials(credentials)
            .with_route(route);
        for m in &self.messages {
            let mut text = m
                .content
                .as_ref()
                .map(ChatContent::text)
                .unwrap_or_default();
            for call in m.tool_calls.iter().flatten() {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&call.function.arguments);
            }
            req = req.with_message(Role::from_name(&m.role), text);
        }
        for t in self.tools.iter().flatten() {
            let mut spec = ToolSpec::new(t.function.name.clone());
            if let Some(p) = &t.function.parameters {
                spec = spec.with_parameters(p.clone());
            }
            req = req.with_tool(spec);
        }
        req
    }

    /// The guard's request without messages: model, streaming, the answer format
    /// (`response_format`), the maximum output tokens.
    pub(crate) fn guard_request_shell(&self) -> GuardRequest {
        let mut req = GuardRequest::new(self.model.clone())
            .with_stream(self.stream.unwrap_or(false))
            .with_json_response(self.response_format.as_ref().is_some_and(|f| {
                matches!(
                    f.get("type").and_then(Value::as_str),
                    Some("json_object" | "json_schema")
                )
            }));
        if let Some(schema) = self
            .response_format
            .as_ref()
            .and_then(|f| f.get("json_schema"))
            .and_then(|j| j.get("schema"))
        {
            req = req.with_json_schema(schema.clone());
        }
        if let Some(n) = self.max_completion_tokens.or(self.max_tokens) {
            req = req.with_max_output_tokens(n);
        }
        req
    }

    /// Writes the admitted (possibly redacted) message texts back into this request.
    ///
    /// A message whose text did not change is left as it was. A changed message gets
    /// the new text: as a string, or, for content parts, as one text part in place of
    /// the old text parts (other parts are kept). Tool-call arguments that were
    /// redacted are replaced by `{}` .
    pub fn apply_messages(&mut self, admitted: &GuardRequest) {
        for (wire, msg) in self.messages.iter_mut().zip(admitted.messages()) {
            apply_one(wire, msg);
        }
    }
}

fn apply_one(wire: &mut ChatMessage, msg: &Message) {
    let mut original = wire
        .content
        .as_ref()
        .map(ChatContent::text)
        .unwrap_or_default();
    let has_calls = wire.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
    for call in wire.tool_calls.iter().flatten() {
        if !original.is_empty() {
            original.push('\n');
        }
        original.push_str(&call.function.arguments);
    }
    if original == msg.content() {
        return;
    }
    if has_calls {
        for call in wire.tool_calls.iter_mut().flatten() {
            if !msg.content().contains(&call.function.arguments) {
                call.function.arguments = String::from("{}");
            }
        }
        // The content part of a message with tool calls is rarely present; keep
        // only what is left after the arguments were handled.
        if let Some(content) = &wire.content {
            let text = content.text();
            if !msg.content().starts_with(&text) {
                wire.content = Some(ChatContent::Text(String::new()));
            }
        }
        return;
    }
    match &mut wire.content {
        Some(ChatContent::Parts(parts)) => {
            let mut new_parts = Vec::with_capacity(parts.len());
            let mut placed = false;
            for p in parts.drain(..) {
                if p.text.is_some() {
                    if !placed {
                        new_parts.push(ChatContentPart {
                            kind: "text".into(),
                            text: Some(msg.content().to_owned()),
                            extra: Map::new(),
                        });
                        placed = true;
                    }
                } else {
                    new_parts.push(p);
                }
            }
            *parts = new_parts;
        }
        _ => wire.content = Some(ChatContent::Text(msg.content().to_owned())),
    }
}

impl ChatCompletionResponse {
    /// The guard's view of the first choice: its text, tool calls, usage and finish
    /// reason.
    pub fn to_guard_response(&self) -> GuardResponse {
        let mut r = GuardResponse::default();
        if let Some(choice) = self.choices.first() {
            r.set_text(
                choice
                    .message
                    .content
                    .as_ref()
                    .map(ChatContent::text)
                    .unwrap_or_default(),
            );
            for c in choice.message.tool_calls.iter().flatten() {
                r = r.with_tool_call(ToolCall::new(
                    c.id.clone(),
                    c.function.name.clone(),
                    c.function.arguments.clone(),
                ));
            }
            if let Some(f) = &choice.finish_reason {
                r = r.with_finish_reason(f.clone());
            }
        }
        if let Some(u) = self.usage {
            r = r.with_usage(u.into());
        }
        r
    }

    /// Writes a validated answer back into the first choice: the (possibly redacted)
    /// text and the tool calls that were kept.
    pub fn apply_response(&mut self, checked: &GuardResponse) {
        if let Some(choice) = self.choices.first_mut() {
            let had_content = choice.message.content.is_some();
            if had_content || !checked.text().is_empty() {
                choice.message.content = Some(ChatContent::Text(checked.text().to_owned()));
            }
            if let Some(calls) = &mut choice.message.tool_calls {
                calls.retain(|c| checked.tool_calls().iter().any(|k| k.id() == c.id));
                if calls.is_empty() {
                    choice.message.tool_calls = None;
                }
            }
        }
    }

    /// A response with one assistant choice built from a guard response.
    pub fn from_guard_response(id: &str, model: &str, created: u64, r: &GuardResponse) -> Self {
        let tool_calls: Vec<ChatToolCall> = r
            .tool_calls()
            .iter()
            .map(|c| ChatToolCall {
                id: c.id().to_owned(),
                kind: "function".into(),
                function: ChatFunctionCall {
                    name: c.name().to_owned(),
                    arguments: c.arguments().to_owned(),
                },
            })
            .collect();
        Self {
            id: id.to_owned(),
            object: "chat.completion".into(),
            created,
            model: model.to_owned(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant".into(),
                    content: Some(ChatContent::Text(r.text().to_owned())),
                    tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                    ..ChatMessage::default()
                },
                finish_reason: r.finish_reason().map(str::to_owned).or(Some("stop".into())),
            }],
            usage: r.usage().map(Into::into),
            extra: Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_joined_and_rewritten_in_place() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"call me at bob@example.com"},
            {"type":"image_url","image_url":{"url":"https://x/y.png"}},
            {"type":"text","text":"thanks"}]}]}"#;
        let mut wire: ChatCompletionRequest = serde_json::from_str(body).unwrap();
        let mut req = wire.to_guard_request(Credentials::none(), "/");
        assert_eq!(
            req.messages()[0].content(),
            "call me at bob@example.com\nthanks"
        );
        req.messages_mut()[0].set_content("call me at [REDACTED]\nthanks".into());
        wire.apply_messages(&req);
        let Some(ChatContent::Parts(parts)) = &wire.messages[0].content else {
            panic!("parts expected")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0].text.as_deref(),
            Some("call me at [REDACTED]\nthanks")
        );
        assert_eq!(parts[1].kind, "image_url");
    }

    #[test]
    fn unchanged_messages_are_untouched_and_extras_survive() {
        let body =
            r#"{"model":"m","messages":[{"role":"user","content":"hi","x-vendor":1}],"seed":7}"#;
        let mut wire: ChatCompletionRequest = serde_json::from_str(body).unwrap();
        let before = wire.clone();
        let req = wire.to_guard_request(Credentials::none(), "/");
        wire.apply_messages(&req);
        assert_eq!(wire, before);
        let out = serde_json::to_value(&wire).unwrap();
        assert_eq!(out["seed"], 7);
        assert_eq!(out["messages"][0]["x-vendor"], 1);
    }

    #[test]
    fn response_round_trip_keeps_only_allowed_tool_calls() {
        let r = GuardResponse::new("ok")
            .with_tool_call(ToolCall::new("a", "f", "{}"))
            .with_tool_call(ToolCall::new("b", "g", "{}"))
            .with_usage(Usage::new(3, 4));
        let mut wire = ChatCompletionResponse::from_guard_response("id", "m", 0, &r);
        let back = wire.to_guard_response();
        assert_eq!(back, r.clone().with_finish_reason("stop"));
        let mut kept = r;
        kept.tool_calls_mut().remove(0);
        wire.apply_response(&kept);
        let calls = wire.choices[0].message.tool_calls.as_ref().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].id, "b");
        assert_eq!(wire.usage.unwrap().total_tokens, 7);
    }

    #[test]
    fn stream_chunk_parses() {
        let line = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}}]}"#;
        let chunk: ChatCompletionChunk = serde_json::from_str(line).unwrap();
        let d = &chunk.choices[0].delta.tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            d.function.as_ref().unwrap().arguments.as_deref(),
            Some("{\"ci")
        );
    }
}
