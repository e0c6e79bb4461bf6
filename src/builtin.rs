//! [`PatternRules`]: a regular-expression rule set, usable as an input scanner and as
//! an output validator, for rules of your own.

use regex::{Regex, RegexBuilder};

use crate::error::{BuildError, StageError};
use crate::finding::{Action, Category, Finding, Location, Severity};
use crate::response::GuardResponse;
use crate::stage::{InputScanner, OutputValidator, StageContext};
use crate::step::Step;

/// One rule of a [`PatternRules`] set.
#[derive(Clone, Debug)]
struct Rule {
    id: String,
    category: Category,
    severity: Severity,
    action: Action,
    regex: Regex,
}

/// A set of regular-expression rules, usable as an input scanner and as an output
/// validator. Patterns are compiled with size and nesting limits, and the regex
/// engine guarantees linear-time matching.
///
/// ```
/// use inference_guard::builtin::PatternRules;
/// use inference_guard::{Action, Category, Severity};
///
/// let rules = PatternRules::builder()
///     .rule("injection.ignore_previous", Category::PromptInjection, Severity::High, Action::Block,
///           r"(?i)ignore\s+(all\s+)?(previous|prior)\s+instructions")
///     .build()?;
/// assert_eq!(rules.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PatternRules {
    rules: Vec<Rule>,
    set: regex::RegexSet,
}

/// Builds [`PatternRules`].
#[derive(Clone, Debug, Default)]
pub struct PatternRulesBuilder {
    rules: Vec<(String, Category, Severity, Action, String)>,
}

impl PatternRulesBuilder {
    /// Adds a rule.
    pub fn rule(
        &mut self,
        id: impl Into<String>,
        category: Category,
        severity: Severity,
        action: Action,
        pattern: impl Into<String>,
    ) -> &mut Self {
        self.rules
            .push((id.into(), category, severity, action, pattern.into()));
        self
    }

    /// Compiles the rules.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the rule whose pattern does not compile or is too large.
    pub fn build(&self) -> Result<PatternRules, BuildError> {
        const SIZE: usize = 1 << 20;
        let mut rules = Vec::with_capacity(self.rules.len());
        for (id, category, severity, action, pattern) in &self.rules {
            let regex = RegexBuilder::new(pattern)
                .size_limit(SIZE)
                .nest_limit(64)
                .build()
                .map_err(|e| {
                    BuildError::invalid_owned(format!("pattern_rules.rule[{id}]"), e.to_string())
                        .with_source(e)
                })?;
            rules.push(Rule {
                id: id.clone(),
                category: category.clone(),
                severity: *severity,
                action: *action,
                regex,
            });
        }
        let set = regex::RegexSetBuilder::new(self.rules.iter().map(|r| &r.4))
            .size_limit(SIZE * 4)
            .nest_limit(64)
            .build()
            .map_err(|e| {
                BuildError::invalid("pattern_rules.rule", format!("rule set: {e}")).with_source(e)
            })?;
        Ok(PatternRules { rules, set })
    }
}

impl PatternRules {
    /// A builder.
    pub fn builder() -> PatternRulesBuilder {
        PatternRulesBuilder::default()
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Scans `text`; findings are reported at `location`.
    ///
    /// ```
    /// # use inference_guard::builtin::PatternRules;
    /// # use inference_guard::{Action, Category, Location, Severity};
    /// let rules = PatternRules::builder()
    ///     .rule("demo.word", Category::custom("demo"), Severity::Low, Action::Flag, r"\bfoo\b")
    ///     .build()?;
    /// let f = rules.scan_text("a foo b foo", Location::Output);
    /// assert_eq!(f.len(), 2);
    /// assert_eq!(f[0].span(), 2..5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scan_text(&self, text: &str, location: Location) -> Vec<Finding> {
        let mut out = Vec::new();
        if self.rules.is_empty() {
            return out;
        }
        for i in self.set.matches(text).iter() {
            let r = &self.rules[i];
            for m in r.regex.find_iter(text) {
                out.push(
                    Finding::new(
                        r.id.clone(),
                        r.category.clone(),
                        r.severity,
                        location,
                        m.range(),
                    )
                    .with_action(r.action),
                );
            }
        }
        out
    }
}

impl InputScanner for PatternRules {
    fn scan<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Vec<Finding>, StageError>> {
        let request = cx.request();
        let mut out = Vec::new();
        for (i, m) in request.messages().iter().enumerate() {
            out.extend(self.scan_text(m.content(), Location::Message(i)));
        }
        Step::ready(Ok(out))
    }

    fn name(&self) -> &str {
        "pattern_rules"
    }
}

impl OutputValidator for PatternRules {
    fn validate<'a>(
        &'a self,
        _cx: StageContext<'a>,
        response: &'a GuardResponse,
    ) -> Step<'a, Result<Vec<Finding>, StageError>> {
        let mut out = self.scan_text(response.text(), Location::Output);
        for (i, c) in response.tool_calls().iter().enumerate() {
            out.extend(self.scan_text(c.arguments(), Location::ToolCall(i)));
        }
        Step::ready(Ok(out))
    }

    fn name(&self) -> &str {
        "pattern_rules"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_invalid_patterns_are_refused_with_the_rule_id() {
        let huge = PatternRules::builder()
            .rule(
                "big",
                Category::custom("x"),
                Severity::Low,
                Action::Flag,
                r"\w{1000}\w{1000}\w{1000}",
            )
            .build();
        assert_eq!(huge.unwrap_err().field(), Some("pattern_rules.rule[big]"));
        let bad = PatternRules::builder()
            .rule(
                "bad",
                Category::custom("x"),
                Severity::Low,
                Action::Flag,
                "(",
            )
            .build();
        assert_eq!(bad.unwrap_err().field(), Some("pattern_rules.rule[bad]"));
    }
}
