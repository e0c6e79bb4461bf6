//! Markup that runs where the answer is shown: HTML that executes or submits, and
//! terminal control sequences.

use regex::Regex;

use super::MarkupMode;
use crate::finding::{Action, Category, Finding, Location, Severity};

pub(crate) struct Patterns {
    html: Regex,
    terminal: Regex,
}

pub(crate) fn patterns() -> Patterns {
    let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("built-in markup pattern: {e}"));
    Patterns {
        html: re(
            r"(?i)<\s*/?\s*(?:script|iframe|frame|frameset|object|embed|applet|form|meta|base|link|style|svg|math|template|noscript|xml|xss)\b[^>]{0,1024}>?|<[a-z][a-z0-9\-]{0,20}\b[^>]{0,1024}?[\s/](?:on[a-z]{3,24})\s*=[^>]{0,1024}>?",
        ),
        terminal: re(
            r"\x1b(?:\[[0-?]{0,64}[ -/]{0,8}[@-~]?|\][^\x07\x1b]{0,4096}(?:\x07|\x1b\\)?|[P^_X][^\x1b]{0,4096}(?:\x1b\\)?|[ -~])?|[\x{80}-\x{9f}]|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]",
        ),
    }
}

fn finding(
    rule: &'static str,
    mode: MarkupMode,
    span: std::ops::Range<usize>,
    escaped: String,
) -> Finding {
    let f = Finding::new(
        rule,
        Category::UnsafeMarkup,
        Severity::High,
        Location::Output,
        span,
    );
    match mode {
        MarkupMode::Escape => f.with_action(Action::Redact).with_replacement(escaped),
        MarkupMode::Strip => f.with_action(Action::Redact).with_replacement(""),
        MarkupMode::Block => f.with_action(Action::Block),
    }
}

pub(crate) fn scan(
    p: &Patterns,
    html: MarkupMode,
    terminal: MarkupMode,
    text: &str,
    out: &mut Vec<Finding>,
) {
    if memchr::memchr(b'<', text.as_bytes()).is_some() {
        for m in p.html.find_iter(text) {
            let escaped = m.as_str().replace('<', "&lt;").replace('>', "&gt;");
            out.push(finding("markup.html", html, m.range(), escaped));
        }
    }
    let controls = text
        .bytes()
        .any(|b| (b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t')) || b == 0x7f || b == 0xc2);
    if controls {
        for m in p.terminal.find_iter(text) {
            let escaped: String = m
                .as_str()
                .chars()
                .map(|c| {
                    if c.is_control() {
                        format!("\\u{{{:x}}}", c as u32)
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            out.push(finding("markup.terminal", terminal, m.range(), escaped));
        }
    }
}
