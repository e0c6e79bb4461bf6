//! What the model answered, as the guard sees it.

use serde::{Deserialize, Serialize};

/// Token usage of one call.
///
/// ```
/// use inference_guard::Usage;
/// let u = Usage::new(120, 30);
/// assert_eq!(u.total(), 150);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of input (prompt).
    pub input_tokens: u64,
    /// Tokens of output (completion).
    pub output_tokens: u64,
}

impl Usage {
    /// Usage of `input_tokens` in and `output_tokens` out.
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            output_tokens,
        }
    }

    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// A tool call the model asks for.
///
/// ```
/// use inference_guard::ToolCall;
/// let c = ToolCall::new("call_1", "get_weather", r#"{"city":"Oslo"}"#);
/// assert_eq!(c.name(), "get_weather");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    id: String,
    name: String,
    arguments: String,
}

impl ToolCall {
    /// A call of tool `name` with JSON `arguments` (as text, exactly as the model
    /// produced them).
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// The call's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arguments, as the model produced them.
    pub fn arguments(&self) -> &str {
        &self.arguments
    }
}

/// A model's answer: text, tool calls, usage and why it stopped.
///
/// ```
/// use inference_guard::{GuardResponse, ToolCall, Usage};
///
/// let r = GuardResponse::new("It is sunny.")
///     .with_tool_call(ToolCall::new("c1", "get_weather", "{}"))
///     .with_usage(Usage::new(20, 5));
/// assert_eq!(r.text(), "It is sunny.");
/// assert_eq!(r.tool_calls().len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardResponse {
    text: String,
    tool_calls: Vec<ToolCall>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
}

impl GuardResponse {
    /// An answer with `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// Adds a tool call.
    #[must_use]
    pub fn with_tool_call(mut self, call: ToolCall) -> Self {
        self.tool_calls.push(call);
        self
    }

    /// Sets the usage the model reported.
    #[must_use]
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Sets why the model stopped (`stop`, `length`, `tool_calls`, ...).
    #[must_use]
    pub fn with_finish_reason(mut self, reason: impl Into<String>) -> Self {
        self.finish_reason = Some(reason.into());
        self
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text, by value.
    pub fn into_text(self) -> String {
        self.text
    }

    /// Replaces the text (used by the guard when it redacts).
    pub fn set_text(&mut self, text: String) {
        self.text = text;
    }

    /// The tool calls.
    pub fn tool_calls(&self) -> &[ToolCall] {
        &self.tool_calls
    }

    /// The tool calls, mutably.
    pub fn tool_calls_mut(&mut self) -> &mut Vec<ToolCall> {
        &mut self.tool_calls
    }

    /// The usage the model reported.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Why the model stopped.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }

    /// The usage the model reported or, when it reported none, an estimate: the
    /// request's estimated input and one output token per four bytes of answer.
    ///
    /// ```
    /// # use inference_guard::GuardResponse;
    /// assert_eq!(GuardResponse::new("12345678").usage_or_estimate(10).output_tokens, 2);
    /// ```
    pub fn usage_or_estimate(&self, estimated_input: u64) -> Usage {
        self.usage.unwrap_or_else(|| {
            let bytes: usize = self.text.len()
                + self
                    .tool_calls
                    .iter()
                    .map(|c| c.arguments.len())
                    .sum::<usize>();
            Usage::new(estimated_input, (bytes as u64).div_ceil(4))
        })
    }
}
