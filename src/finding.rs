//! Findings of scanners and validators, and what to do about them.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// What a finding is about.
///
/// ```
/// use inference_guard::Category;
/// assert_eq!(Category::Secret.as_str(), "secret");
/// assert_eq!(Category::custom("toxicity").as_str(), "toxicity");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Category {
    /// A credential: an API key, a token, a private key, a password.
    Secret,
    /// Personal data: an e-mail address, a phone or card number.
    PersonalData,
    /// An attempt to override the model's instructions.
    PromptInjection,
    /// A jailbreak (persona, "do anything now", ...).
    Jailbreak,
    /// Hidden or deceptive Unicode: tag characters, bidi controls, confusables.
    UnicodeSmuggling,
    /// An encoded payload (base64, hex, ...) that hides an instruction.
    EncodedPayload,
    /// The model revealed its system prompt or a canary.
    SystemPromptLeak,
    /// A link or image that can carry data to another host.
    Exfiltration,
    /// HTML, script or terminal control sequences.
    UnsafeMarkup,
    /// A tool call that is not allowed or whose arguments are dangerous.
    ToolCall,
    /// Output that does not match the expected structure.
    Schema,
    /// A size or count limit.
    Limit,
    /// A category defined by a user's stage.
    Custom(Cow<'static, str>),
}

impl Category {
    /// A user-defined category.
    pub fn custom(name: impl Into<Cow<'static, str>>) -> Self {
        Self::Custom(name.into())
    }

    /// A short, stable name used in audit records.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Secret => "secret",
            Self::PersonalData => "personal_data",
            Self::PromptInjection => "prompt_injection",
            Self::Jailbreak => "jailbreak",
            Self::UnicodeSmuggling => "unicode_smuggling",
            Self::EncodedPayload => "encoded_payload",
            Self::SystemPromptLeak => "system_prompt_leak",
            Self::Exfiltration => "exfiltration",
            Self::UnsafeMarkup => "unsafe_markup",
            Self::ToolCall => "tool_call",
            Self::Schema => "schema",
            Self::Limit => "limit",
            Self::Custom(s) => s,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

names! {
    /// How serious a finding is.
    ///
    /// ```
    /// use inference_guard::Severity;
    /// assert!(Severity::Critical > Severity::Low);
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    #[non_exhaustive]
    pub enum Severity {
        /// Informational.
        Low = "low",
        /// Worth a look.
        Medium = "medium",
        /// Likely harmful.
        High = "high",
        /// Harmful: a live credential, an instruction override.
        Critical = "critical",
    }
}

names! {
    /// What the guard does about a finding.
    ///
    /// The strictest action among a text's findings wins: `Block` over `Redact` over
    /// `Flag`. In [shadow mode](Enforcement::Shadow) every action is recorded but
    /// downgraded to `Flag`.
    ///
    /// ```
    /// use inference_guard::Action;
    /// assert!(Action::Block > Action::Redact);
    /// assert!(Action::Redact > Action::Flag);
    /// assert_eq!(Action::Redact.as_str(), "redact");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    #[cfg_attr(
        feature = "policy",
        derive(serde::Deserialize),
        serde(rename_all = "lowercase")
    )]
    #[non_exhaustive]
    pub enum Action {
        /// Record it; let the text through unchanged.
        Flag = "flag",
        /// Replace the span (with the finding's replacement, or `[REDACTED:CATEGORY]`).
        Redact = "redact",
        /// Reject the request or block the answer.
        Block = "block",
    }
}

/// Whether a stage's decisions are enforced or only recorded.
///
/// Shadow mode lets a team roll a policy out safely: the audit records show what
/// would have been blocked, while traffic flows as before.
///
/// ```
/// use inference_guard::{Enforcement, InferenceGuard, ShadowStage};
/// let mut b = InferenceGuard::builder();
/// b.enforcement(ShadowStage::InputScan, Enforcement::Shadow);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Enforcement {
    /// Decisions take effect (the default).
    #[default]
    Enforce,
    /// Decisions are recorded in the audit trail, but nothing is blocked or changed.
    Shadow,
}

/// Where in the request or the response a finding is.
///
/// ```
/// use inference_guard::Location;
/// assert_eq!(Location::Message(2).to_string(), "message[2]");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Location {
    /// The n-th message of the request.
    Message(usize),
    /// The text of the answer.
    Output,
    /// The arguments of the n-th tool call of the answer.
    ToolCall(usize),
    /// Somewhere else (metadata, a header).
    Other,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message(i) => write!(f, "message[{i}]"),
            Self::Output => f.write_str("output"),
            Self::ToolCall(i) => write!(f, "tool_call[{i}]"),
            Self::Other => f.write_str("other"),
        }
    }
}

/// Something a scanner or validator found.
///
/// A finding carries a rule id, a category, a severity, a confidence, where it is and
/// its byte span in that text, and the action the rule asks for. The guard may
/// override the action by policy ([`GuardBuilder::rule_action`]).
///
/// # Security
///
/// A finding never holds the matched text: only its span. The optional
/// [replacement](Self::replacement) is what the redactor writes instead of it.
///
/// ```
/// use inference_guard::{Action, Category, Finding, Location, Severity};
///
/// let f = Finding::new("pii.email", Category::PersonalData, Severity::Medium, Location::Message(0), 6..23)
///     .with_action(Action::Redact)
///     .with_replacement("<EMAIL_1>");
/// assert_eq!(f.span(), 6..23);
/// assert_eq!(f.replacement(), Some("<EMAIL_1>"));
/// ```
///
/// [`GuardBuilder::rule_action`]: crate::GuardBuilder::rule_action
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    rule_id: Cow<'static, str>,
    category: Category,
    severity: Severity,
    confidence: f32,
    location: Location,
    span: Range<usize>,
    action: Action,
    replacement: Option<Cow<'static, str>>,
    reversible: bool,
}

impl Finding {
    /// A finding of `rule_id` at `span` of the text at `location`. Its action is
    /// [`Action::Block`] for `High` and `Critical` severity, [`Action::Flag`] below,
    /// and its confidence `1.0`, until set otherwise.
    pub fn new(
        rule_id: impl Into<Cow<'static, str>>,
        category: Category,
        severity: Severity,
        location: Location,
        span: Range<usize>,
    ) -> Self {
        let action = if severity >= Severity::High {
            Action::Block
        } else {
            Action::Flag
        };
        Self {
            rule_id: rule_id.into(),
            category,
            severity,
            confidence: 1.0,
            location,
            span,
            action,
            replacement: None,
            reversible: false,
        }
    }

    /// Sets the action the rule asks for.
    #[must_use]
    pub fn with_action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// Sets the confidence, clamped to `0.0..=1.0`.
    ///
    /// ```
    /// # use inference_guard::{Category, Finding, Location, Severity};
    /// let f = Finding::new("r", Category::Secret, Severity::Low, Location::Output, 0..1)
    ///     .with_confidence(3.0);
    /// assert_eq!(f.confidence(), 1.0);
    /// ```
    #[must_use]
    pub fn with_confidence(mut self, confidence: f32) -> Self {
        self.confidence = if confidence.is_nan() {
            0.0
        } else {
            confidence.clamp(0.0, 1.0)
        };
        self
    }

    /// Sets what a redaction writes instead of the span.
    #[must_use]
    pub fn with_replacement(mut self, replacement: impl Into<Cow<'static, str>>) -> Self {
        self.replacement = Some(replacement.into());
        self
    }

    /// Marks the replacement as a pseudonym the guard may restore: when the input is
    /// redacted, the guard keeps the pair (pseudonym, original) for this request only,
    /// in memory, never in an audit record, and puts the original back where the
    /// pseudonym appears in the answer.
    ///
    /// ```
    /// # use inference_guard::{Category, Finding, Location, Severity};
    /// let f = Finding::new("pii.email", Category::PersonalData, Severity::Medium, Location::Message(0), 0..5)
    ///     .with_replacement("<EMAIL_1>")
    ///     .with_reversible(true);
    /// assert!(f.is_reversible());
    /// ```
    #[must_use]
    pub fn with_reversible(mut self, reversible: bool) -> Self {
        self.reversible = reversible;
        self
    }

    /// Whether the replacement is a pseudonym the guard restores in the answer.
    pub fn is_reversible(&self) -> bool {
        self.reversible
    }

    /// The rule that fired.
    pub fn rule_id(&self) -> &str {
        &self.rule_id
    }

    /// The category.
    pub fn category(&self) -> &Category {
        &self.category
    }

    /// The severity.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The confidence, from `0.0` to `1.0`.
    pub fn confidence(&self) -> f32 {
        self.confidence
    }

    /// Which text the span refers to.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The same finding at another span (validators that check a window of a
    /// text shift spans to the whole text).
    pub(crate) fn with_span(mut self, span: Range<usize>) -> Self {
        self.span = span;
        self
    }

    /// The same finding in another message (the scanner's cache of earlier
    /// messages serves a message's findings at the place it now has).
    pub(crate) fn at(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The byte span in that text.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The action (after policy overrides, once the guard has handled it).
    pub fn action(&self) -> Action {
        self.action
    }

    /// What a redaction writes instead of the span.
    pub fn replacement(&self) -> Option<&str> {
        self.replacement.as_deref()
    }

    pub(crate) fn set_action(&mut self, action: Action) {
        self.action = action;
    }
}

/// Replaces the spans of `findings` whose action is [`Action::Redact`] in `text`.
///
/// Overlapping spans are merged; spans that are out of range or not on character
/// boundaries are widened to the nearest boundaries inside the text, so the result is
/// always valid UTF-8 and never contains the redacted bytes.
///
/// ```
/// use inference_guard::{redact, Action, Category, Finding, Location, Severity};
///
/// let text = "mail bob@example.com now";
/// let f = Finding::new("pii.email", Category::PersonalData, Severity::Medium, Location::Output, 5..20)
///     .with_action(Action::Redact);
/// assert_eq!(redact(text, &[f]), "mail [REDACTED:PERSONAL_DATA] now");
/// ```
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut spans: SmallSpans<'_> = findings
        .iter()
        // An empty span redacts nothing, even inside a multi-byte character.
        .filter(|f| f.action == Action::Redact && f.span.start < f.span.end)
        .map(|f| {
            let start = floor_boundary(text, f.span.start);
            let end = ceil_boundary(text, f.span.end.max(f.span.start));
            (start, end, f)
        })
        .filter(|(s, e, _)| s < e)
        .collect();
    if spans.is_empty() {
        return text.to_owned();
    }
    spans.sort_by_key(|(s, e, _)| (*s, std::cmp::Reverse(*e)));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (start, end, f) in spans {
        if end <= pos {
            continue; // inside a span already replaced
        }
        let start = start.max(pos);
        if start > pos {
            out.push_str(&text[pos..start]);
        } else if start < pos {
            // overlapping: the earlier replacement covers up to pos already
        }
        match &f.replacement {
            Some(r) => out.push_str(r),
            None => {
                out.push_str("[REDACTED:");
                for c in f.category.as_str().chars() {
                    out.push(c.to_ascii_uppercase());
                }
                out.push(']');
            }
        }
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

type SmallSpans<'a> = smallvec::SmallVec<[(usize, usize, &'a Finding); 4]>;

pub(crate) fn floor_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(crate) fn ceil_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red(span: Range<usize>) -> Finding {
        Finding::new(
            "r",
            Category::Secret,
            Severity::High,
            Location::Output,
            span,
        )
        .with_action(Action::Redact)
        .with_replacement("#")
    }

    #[test]
    fn overlapping_and_nested_spans_merge() {
        assert_eq!(redact("0123456789", &[red(2..6), red(4..8)]), "01##89");
        assert_eq!(redact("0123456789", &[red(2..8), red(3..4)]), "01#89");
    }

    #[test]
    fn spans_off_char_boundaries_are_widened() {
        let text = "aé€b";
        // 'é' is bytes 1..3, '€' is 3..6; a span 2..4 cuts both.
        let out = redact(text, &[red(2..4)]);
        assert_eq!(out, "a#b");
    }

    #[test]
    fn out_of_range_spans_do_not_panic() {
        assert_eq!(redact("abc", &[red(2..99)]), "ab#");
        assert_eq!(redact("abc", &[red(50..99)]), "abc");
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = red(2..1);
        assert_eq!(redact("abc", &[backwards]), "abc");
    }

    #[test]
    fn empty_spans_inside_a_character_redact_nothing() {
        // Found by the `redact` fuzz target: 1..1 inside "Ԗ" used to widen to 0..2.
        assert_eq!(redact("\u{496}", &[red(1..1)]), "\u{496}");
    }

    #[test]
    fn flagged_findings_are_not_redacted() {
        let f = red(0..1).with_action(Action::Flag);
        assert_eq!(redact("abc", &[f]), "abc");
    }
}
