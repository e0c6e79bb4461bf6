//! One segment of an answer, read as a CommonMark renderer reads it
//! (`pulldown-cmark`, with tables, strikethrough, task lists and footnotes): images
//! and links with their decoded destinations, reference definitions, code, and
//! whether a construct is left open at the segment's end.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use pulldown_cmark::{
    BrokenLink, CodeBlockKind, CowStr, Event, LinkType, Options, Parser, Tag, TagEnd,
};

use super::MarkupMode;
use super::links::{Kind, LinkPolicy, bare_urls, judge, replacement};
use super::markup::judge_tags;
use crate::finding::{Action, Category, Finding, Location, Severity};

/// The destination given to a reference whose definition is not known (yet): a
/// later definition would make it render, so an image by such a reference goes.
const UNRESOLVED: &str = "ig-unresolved:";

/// What a segment leaves to the next.
#[derive(Clone, Debug, Default)]
pub(crate) struct Carry {
    /// Reference definitions of earlier segments (normalized label, destination);
    /// the first definition of a label wins, as in a renderer.
    pub(crate) defs: HashMap<String, String>,
    /// The fence of the top-level fenced code block the last cut fell inside.
    pub(crate) fence: Option<String>,
}

/// How the segment's markup is judged.
pub(crate) struct Rules<'a> {
    pub(crate) links: &'a LinkPolicy,
    pub(crate) html: MarkupMode,
    /// Code spans and fenced code are shown as code (a markdown renderer).
    pub(crate) code_is_inert: bool,
    /// Whether bare URLs in text are judged (a renderer that links them).
    pub(crate) bare_urls: bool,
}

/// The verdict on one segment.
pub(crate) struct Judged {
    /// Whether the segment may end here: no fenced code block inside a container,
    /// HTML block that spans blank lines, tag, or PEM block is left open.
    pub(crate) closed: bool,
    /// Whether the segment may also end here when its last line is not blank: the
    /// last block is not raw HTML and has no bracket, backtick or `<` left as
    /// text, so no link, image, code span or tag can continue on the next line.
    pub(crate) line_cut: bool,
    pub(crate) carry: Carry,
}

/// A CommonMark link label, normalized: case folded, whitespace collapsed.
fn label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for w in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(w.chars().flat_map(char::to_lowercase));
    }
    out
}

struct Frame {
    image: bool,
    link_type: LinkType,
    dest: String,
    id: String,
    span: Range<usize>,
    text: String,
}

/// Whether a fenced code block's source ends with its closing fence.
fn fence_closed(block: &str) -> (bool, String) {
    // Lines end at a line feed or a carriage return (CommonMark): a block written
    // with carriage returns alone is one line to `str::lines`.
    let mut lines = block.split(['\n', '\r']);
    let first = lines.next().unwrap_or("").trim_start();
    let c = first.chars().next().unwrap_or('`');
    let n = first.chars().take_while(|&x| x == c).count().max(3);
    let fence: String = std::iter::repeat_n(c, n).collect();
    let closed = lines.any(|l| {
        let l = l.trim_start_matches([' ', '\t', '>']).trim_end();
        l.len() >= n && l.chars().all(|x| x == c)
    });
    (closed, fence)
}

/// Whether an HTML block of a kind that spans blank lines lacks its end.
fn html_block_open(block: &str) -> bool {
    let b = block.trim_start().to_ascii_lowercase();
    for (open, close) in [
        ("<script", "</script>"),
        ("<pre", "</pre>"),
        ("<style", "</style>"),
        ("<textarea", "</textarea>"),
    ] {
        if let Some(rest) = b.strip_prefix(open) {
            if rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r', '>']) {
                return !b.contains(close);
            }
        }
    }
    if let Some(rest) = b.strip_prefix("<!--") {
        return !rest.contains("-->");
    }
    if b.starts_with("<?") {
        return !b.contains("?>");
    }
    if b.starts_with("<![cdata[") {
        return !b.contains("]]>");
    }
    if let Some(rest) = b.strip_prefix("<!") {
        return !rest.contains('>');
    }
    false
}

/// Judges `seg` (which starts at `offset` in the answer; `last` when the answer
/// ends with it) and says whether it may end here. Findings' spans are into the answer.
pub(crate) fn judge_segment(
    seg: &str,
    offset: usize,
    carry: &Carry,
    rules: &Rules<'_>,
    last: bool,
    out: &mut Vec<Finding>,
) -> Judged {
    let src: Cow<'_, str> = match &carry.fence {
        Some(f) => Cow::Owned(format!("{f}\n{seg}")),
        None => Cow::Borrowed(seg),
    };
    let shift = src.len() - seg.len();
    let local = |r: Range<usize>| {
        r.start.saturating_sub(shift).min(seg.len())..r.end.saturating_sub(shift).min(seg.len())
    };
    let at = |r: Range<usize>| offset + r.start..offset + r.end;
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let defs = &carry.defs;
    // A reference to a label defined in an earlier segment resolves as in the
    // renderer. An image by a label not defined (yet) is an image to remove; a link
    // by such a label stays text, as in a renderer that has no definition for it
    // (made a link, it would hide the brackets around it: `[a [b]](javascript:..)`).
    let text: &str = &src;
    let callback = |b: BrokenLink<'_>| -> Option<(CowStr<'_>, CowStr<'_>)> {
        let dest = match defs.get(&label(&b.reference)) {
            Some(d) => d.clone(),
            None if text[b.span.start.min(text.len())..].starts_with('!') => UNRESOLVED.to_owned(),
            None => return None,
        };
        Some((CowStr::from(dest), CowStr::from("")))
    };
    let mut iter =
        Parser::new_with_broken_link_callback(&src, opts, Some(callback)).into_offset_iter();
    let mut code: Vec<Range<usize>> = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut depth = 0usize;
    let mut blocks: Vec<bool> = Vec::new();
    let mut open_nested = false;
    let mut open_fence: Option<String> = None;
    let reaches_end = |r: &Range<usize>| src[r.end.min(src.len())..].trim().is_empty();
    let mut found = Vec::new();
    let mut tail_risky = false;
    for (event, r) in iter.by_ref() {
        if depth == 0 && matches!(event, Event::Start(_)) && frames.is_empty() {
            tail_risky = false;
        }
        match event {
            Event::Start(Tag::CodeBlock(kind)) => {
                let fenced = matches!(kind, CodeBlockKind::Fenced(_));
                blocks.push(fenced);
                if fenced {
                    if rules.code_is_inert {
                        code.push(local(r.clone()));
                    }
                    let (closed, fence) = fence_closed(&src[r.clone()]);
                    if !closed && reaches_end(&r) {
                        if depth == 0 {
                            open_fence = Some(fence);
                        } else {
                            open_nested = true;
                        }
                    }
                }
                depth += 1;
            }
            Event::End(TagEnd::CodeBlock) => {
                blocks.pop();
                depth = depth.saturating_sub(1);
            }
            Event::Start(Tag::HtmlBlock) => {
                tail_risky = true;
                if reaches_end(&r) && html_block_open(&src[r.clone()]) {
                    open_nested = true;
                }
                depth += 1;
            }
            Event::Start(
                ref tag @ (Tag::Image {
                    link_type,
                    ref dest_url,
                    ref id,
                    ..
                }
                | Tag::Link {
                    link_type,
                    ref dest_url,
                    ref id,
                    ..
                }),
            ) => frames.push(Frame {
                image: matches!(tag, Tag::Image { .. }),
                link_type,
                dest: dest_url.to_string(),
                id: id.to_string(),
                span: local(r),
                text: String::new(),
            }),
            Event::End(TagEnd::Image | TagEnd::Link) => {
                if let Some(f) = frames.pop() {
                    if let Some(parent) = frames.last_mut() {
                        parent.text.push_str(&f.text);
                    }
                    judge_frame(rules.links, &carry.defs, f, offset, &mut found);
                }
            }
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Code(t) => {
                if let Some(f) = frames.last_mut() {
                    f.text.push_str(&t);
                }
                if rules.code_is_inert {
                    code.push(local(r));
                }
            }
            Event::Html(_) | Event::InlineHtml(_) => tail_risky = true,
            Event::SoftBreak | Event::HardBreak => {
                if let Some(f) = frames.last_mut() {
                    f.text.push('\n');
                }
            }
            Event::Text(t) => {
                if frames.is_empty()
                    && crate::scan::swar::any(t.as_bytes(), |b| {
                        matches!(b, b'[' | b']' | b'`' | b'<')
                    })
                {
                    tail_risky = true;
                }
                if let Some(f) = frames.last_mut() {
                    f.text.push_str(&t);
                } else if rules.bare_urls && (!blocks.contains(&true) || !rules.code_is_inert) {
                    let r = local(r);
                    bare_urls(rules.links, &seg[r.clone()], offset + r.start, &mut found);
                }
            }
            _ => {}
        }
    }
    // An answer that ends inside a top-level fenced code block: CommonMark reads
    // the rest as code, but a renderer that needs the closing fence
    // (Python-Markdown, Showdown) reads it as markdown, images and all. The fence
    // is closed after the answer's last character, where every renderer agrees.
    if last && rules.code_is_inert {
        if let (Some(fence), Some(c)) = (&open_fence, seg.chars().next_back()) {
            let mut with = String::with_capacity(fence.len() + 2);
            if c != '\r' {
                with.push(c);
            }
            if c != '\n' {
                with.push('\n');
            }
            with.push_str(fence);
            found.push(
                Finding::new(
                    "markup.unclosed_fence",
                    Category::UnsafeMarkup,
                    Severity::Low,
                    Location::Output,
                    at(seg.len() - c.len_utf8()..seg.len()),
                )
                .with_action(Action::Redact)
                .with_replacement(with),
            );
        }
    }
    // Reference definitions: a definition is judged as a link (an image by
    // reference is judged where it is used); one shadowed by an earlier definition
    // of the same label is never used.
    let mut next = Carry {
        defs: carry.defs.clone(),
        fence: open_fence,
    };
    let mut new_defs: Vec<(String, String, Range<usize>)> = iter
        .reference_definitions()
        .iter()
        .map(|(l, d)| (label(l), d.dest.to_string(), local(d.span.clone())))
        .collect();
    new_defs.sort_by_key(|(_, _, r)| r.start);
    for (key, dest, span) in new_defs {
        if next.defs.contains_key(&key) {
            continue;
        }
        judge(rules.links, Kind::Link, &dest, "", at(span), &mut found);
        next.defs.insert(key, dest);
    }
    // HTML wherever a renderer passes it through: everything but code.
    let mut tag_open = false;
    if seg.contains('<') {
        if code.is_empty() {
            tag_open = judge_tags(seg, seg, rules.html, rules.links, offset, last, &mut found);
        } else {
            let mut blank = seg.as_bytes().to_vec();
            for r in &code {
                for b in &mut blank[r.clone()] {
                    // Keep UTF-8 valid: every byte of the region becomes a space.
                    *b = b' ';
                }
            }
            let blanked = String::from_utf8(blank).unwrap_or_default();
            tag_open = judge_tags(
                seg,
                &blanked,
                rules.html,
                rules.links,
                offset,
                last,
                &mut found,
            );
        }
    }
    out.append(&mut found);
    // Most answers have no PEM block: a forward search (vectorized) says so
    // before the backward one (byte by byte) looks for the last.
    let pem_open = memchr::memmem::find(seg.as_bytes(), b"-----BEGIN ")
        .and_then(|_| seg.rfind("-----BEGIN "))
        .is_some_and(|b| !seg[b..].contains("-----END "));
    let closed = !open_nested && !pem_open && !tag_open;
    Judged {
        closed,
        line_cut: closed && !tail_risky && next.fence.is_none(),
        carry: next,
    }
}

fn judge_frame(
    links: &LinkPolicy,
    defs: &HashMap<String, String>,
    f: Frame,
    offset: usize,
    out: &mut Vec<Finding>,
) {
    let span = offset + f.span.start..offset + f.span.end;
    let by_reference = matches!(
        f.link_type,
        LinkType::Reference | LinkType::Collapsed | LinkType::Shortcut
    );
    let unknown = matches!(
        f.link_type,
        LinkType::ReferenceUnknown | LinkType::CollapsedUnknown | LinkType::ShortcutUnknown
    );
    if !f.image {
        // A link by reference is judged at its definition; e-mail autolinks are
        // mailto: links.
        if by_reference || unknown || f.link_type == LinkType::Email {
            return;
        }
        judge(
            links,
            Kind::Link,
            &f.dest,
            &replacement(links, &f.text),
            span,
            out,
        );
        return;
    }
    // An image by reference uses the first definition of its label, which may sit
    // in an earlier segment.
    let dest = if by_reference {
        defs.get(&label(&f.id)).cloned().unwrap_or(f.dest)
    } else {
        f.dest
    };
    if dest == UNRESOLVED {
        out.push(
            Finding::new(
                "link.image_unresolved",
                Category::Exfiltration,
                Severity::High,
                Location::Output,
                span,
            )
            .with_action(Action::Redact)
            .with_replacement(replacement(links, &f.text)),
        );
        return;
    }
    judge(
        links,
        Kind::Image,
        &dest,
        &replacement(links, &f.text),
        span,
        out,
    );
}
