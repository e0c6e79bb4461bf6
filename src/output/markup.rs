//! Markup that runs where the answer is shown: HTML that executes or submits, and
//! terminal control sequences.

use regex::Regex;

use super::MarkupMode;
use super::html;
use super::links::{Kind, LinkPolicy, judge};
use crate::finding::{Action, Category, Finding, Location, Severity};

pub(crate) struct Patterns {
    terminal: Regex,
}

pub(crate) fn patterns() -> Patterns {
    let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("built-in markup pattern: {e}"));
    Patterns {
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

/// Elements that run script, load documents or change how the page behaves.
const DANGEROUS: &[&str] = &[
    "script",
    "iframe",
    "frame",
    "frameset",
    "object",
    "embed",
    "applet",
    "form",
    "meta",
    "base",
    "link",
    "style",
    "svg",
    "math",
    "template",
    "noscript",
    "xml",
    "xss",
    "portal",
    "isindex",
    "noembed",
    "xmp",
    "plaintext",
];

/// Attributes whose URL a browser loads without a click.
const LOADS: &[&str] = &[
    "src",
    "srcset",
    "poster",
    "background",
    "data",
    "lowsrc",
    "dynsrc",
    "codebase",
    "xlink:href",
    "imagesrcset",
];

/// Attributes whose URL is followed on a click.
const FOLLOWS: &[&str] = &["href", "action", "formaction", "cite", "ping", "longdesc"];

/// Judges the tags of `text` (a segment whose code is blanked out; `orig` is the
/// same bytes as written): dangerous elements, event handlers, script in styles and
/// tags left open before the end of the answer are markup findings; URLs in attributes are judged as images or
/// links. Returns whether a tag is left open before the end of the answer (the
/// segment may not end there: the tag takes its attributes from what follows).
pub(crate) fn judge_tags(
    orig: &str,
    text: &str,
    mode: MarkupMode,
    links: &LinkPolicy,
    offset: usize,
    last: bool,
    out: &mut Vec<Finding>,
) -> bool {
    let mut open = false;
    if memchr::memchr(b'<', text.as_bytes()).is_none() {
        return open;
    }
    for tag in html::tags(text) {
        let span = offset + tag.span.start..offset + tag.span.end;
        let escaped = || {
            orig.get(tag.span.clone())
                .unwrap_or("")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        if !tag.closed && !last {
            // A tag left open takes its attributes from whatever follows.
            open = true;
            out.push(finding("markup.unclosed_tag", mode, span, escaped()));
            continue;
        }
        // A tag left open at the end of the answer is judged as written: a
        // browser drops it when the answer is the whole document (a fragment set
        // as `innerHTML`), but a page that renders the answer into its own HTML
        // on the server closes it with its own markup, and the element, its
        // handlers and its URLs are live (`<style` swallows the page; found by the
        // `markup` fuzz target reading `comrak`'s raw HTML).
        let dangerous = DANGEROUS.contains(&tag.name.as_str());
        if tag.end_tag {
            if dangerous {
                out.push(finding("markup.html", mode, span, escaped()));
            }
            continue;
        }
        let handler = tag.attrs.iter().any(|a| {
            (a.name.len() > 2 && a.name.starts_with("on"))
                || (a.name == "style" && {
                    let v = a.value.to_ascii_lowercase();
                    v.contains("expression(") || v.contains("url(") || v.contains("script:")
                })
        });
        if dangerous || handler {
            out.push(finding("markup.html", mode, span, escaped()));
            continue;
        }
        let link = matches!(tag.name.as_str(), "a" | "area");
        let replacement = if link {
            String::new()
        } else {
            super::links::replacement(links, tag.attr("alt").unwrap_or(""))
        };
        for a in &tag.attrs {
            let kind = if LOADS.contains(&a.name.as_str()) {
                Kind::Image
            } else if FOLLOWS.contains(&a.name.as_str()) {
                if link || a.name != "href" {
                    Kind::Link
                } else {
                    Kind::Image
                }
            } else {
                continue;
            };
            if a.name.ends_with("srcset") {
                for candidate in a.value.split(',') {
                    let url = candidate.split_ascii_whitespace().next().unwrap_or("");
                    judge(links, kind, url, &replacement, span.clone(), out);
                }
            } else {
                judge(links, kind, &a.value, &replacement, span.clone(), out);
            }
        }
    }
    open
}

/// Terminal control sequences and C1 controls; carriage returns alone, which
/// become line feeds whatever the mode; and tabs after a closing code fence.
///
/// A carriage return not followed by a line feed ends a line for CommonMark, for
/// most renderers and for a terminal (which also moves back to overwrite the line),
/// but not everywhere: `pulldown-cmark` 0.13 does not end a code fence's opening
/// line there, so an image after a fence written with returns alone was code to it
/// and an image to other renderers. As a line feed it is a line end to all of them.
pub(crate) fn terminal(
    p: &Patterns,
    terminal: MarkupMode,
    text: &str,
    offset: usize,
    out: &mut Vec<Finding>,
) {
    let base = out.len();
    let controls = crate::scan::swar::any(text.as_bytes(), |b| {
        ((b < 0x20) & !matches!(b, b'\n' | b'\r' | b'\t')) | (b == 0x7f) | (b == 0xc2)
    });
    if controls {
        for m in p.terminal.find_iter(text) {
            // The line ends of a sequence stay, each as a line feed (escaped or
            // stripped): a markdown renderer reads them, and a blank line inside
            // one ends a block there. Removed, the lines around it were joined,
            // and the answer's next segment, judged as starting a block, did not
            // (found by the `markup` fuzz target: a reference definition after an
            // unterminated APC string was read as text once released).
            let s = m.as_str();
            let span = offset + m.start()..offset + m.end();
            let f = finding("markup.terminal", terminal, span, escape_controls(s));
            out.push(match line_ends(s) {
                n if n > 0 && terminal == MarkupMode::Strip => f.with_replacement("\n".repeat(n)),
                _ => f,
            });
        }
    }
    let b = text.as_bytes();
    let first = out.len();
    let returns = memchr::memchr_iter(b'\r', b).filter(|&at| b.get(at + 1) != Some(&b'\n'));
    rewrite_bytes(out, base..first, returns, offset, "markup.bare_cr", "\n");
    // A tab after a closing code fence: CommonMark allows spaces and tabs there,
    // `pulldown-cmark` 0.13 only spaces, so "```\t" closed the fence for other
    // renderers and not for the validator, and what followed was code to it and
    // markdown (images and all) to them. The tab goes.
    let cr = out.len();
    if memchr::memchr(b'\t', b).is_some() {
        // Read as the text will be without its sequences (`` ```\x1f\t ``).
        let tabs: Vec<usize> = if first > base {
            let (clean, map) = without(text, &out[base..first], offset);
            fence_tabs(clean.as_bytes())
                .into_iter()
                .map(|i| map[i])
                .collect()
        } else {
            fence_tabs(b)
        };
        rewrite_bytes(
            out,
            base..first,
            tabs.into_iter(),
            offset,
            "markup.fence_tab",
            "",
        );
    }
    if out.len() > first && (first > base || out.len() > cr && cr > first) {
        out[base..].sort_by_key(|f| f.span().start);
    }
}

/// Rewrites each byte at `positions` (in order) to `with`, a low finding of
/// `rule`, but for one inside a terminal sequence (`out[sequences]`: in order and
/// not overlapping, so one pass over both), which goes with the sequence.
fn rewrite_bytes(
    out: &mut Vec<Finding>,
    sequences: std::ops::Range<usize>,
    positions: impl Iterator<Item = usize>,
    offset: usize,
    rule: &'static str,
    with: &'static str,
) {
    let mut seq = sequences.start;
    for at in positions {
        let span = offset + at..offset + at + 1;
        while seq < sequences.end && out[seq].span().end <= span.start {
            seq += 1;
        }
        if seq < sequences.end && out[seq].span().start < span.end {
            continue;
        }
        out.push(super::markdown::low(rule, span, with.to_owned()));
    }
}

/// How many line ends (CR LF, LF, or CR alone) `s` holds.
fn line_ends(s: &str) -> usize {
    let b = s.as_bytes();
    memchr::memchr2_iter(b'\n', b'\r', b)
        .filter(|&i| !(b[i] == b'\r' && b.get(i + 1) == Some(&b'\n')))
        .count()
}

/// A terminal sequence spelled out: its controls as `\u{…}`, its line ends as
/// line feeds.
fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => out.push('\n'),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `text` with the terminal `sequences` (spans from `offset`, in order) applied
/// as they will be, and for each byte of the result, and for its end, the offset
/// in `text` it comes from.
pub(super) fn without(text: &str, sequences: &[Finding], offset: usize) -> (String, Vec<usize>) {
    let mut clean = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(text.len() + 1);
    let mut pos = 0;
    for f in sequences {
        let s = f.span();
        let (start, end) = (s.start - offset, s.end - offset);
        if start < pos {
            continue;
        }
        clean.push_str(&text[pos..start]);
        map.extend(pos..start);
        let r = match f.action() {
            Action::Redact => f.replacement().unwrap_or(""),
            _ => "",
        };
        clean.push_str(r);
        map.extend(std::iter::repeat_n(start, r.len()));
        pos = end;
    }
    clean.push_str(&text[pos..]);
    map.extend(pos..text.len());
    map.push(text.len());
    (clean, map)
}

/// The tabs in the spaces and tabs that end a line after a run of three or more
/// backticks or tildes, in order (each run of spaces and tabs read once).
fn fence_tabs(b: &[u8]) -> Vec<usize> {
    let ws = |c: &&u8| matches!(**c, b' ' | b'\t');
    let mut out = Vec::new();
    let mut next = 0;
    for at in memchr::memchr_iter(b'\t', b) {
        if at < next {
            continue;
        }
        let start = at - b[next..at].iter().rev().take_while(ws).count();
        let end = at + b[at..].iter().take_while(ws).count();
        next = end;
        if !matches!(b.get(end), None | Some(b'\n' | b'\r')) {
            continue;
        }
        let Some(&c @ (b'`' | b'~')) = start.checked_sub(1).map(|i| &b[i]) else {
            continue;
        };
        if b[..start].iter().rev().take(3).filter(|&&x| x == c).count() == 3 {
            out.extend((start..end).filter(|&i| b[i] == b'\t'));
        }
    }
    out
}
