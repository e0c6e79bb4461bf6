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
    /// The last cut fell inside a paragraph with a line shaped like a table's
    /// delimiter row (see [`Tables`]).
    pub(crate) table: bool,
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
    judge_nested(seg, offset, carry, rules, last, 0, out)
}

/// How deep fenced code inside a container is read again as markdown (the content
/// of such a block can hold another one); deeper, a block's content goes.
const MAX_NEST: u8 = 4;

/// [`judge_segment`] at nesting `nest`: 0 for the answer, more for the content of
/// a fenced code block inside a container, read as the text a renderer without
/// such code blocks shows (only its images and links are judged there: tags and
/// terminal sequences are judged in the answer itself).
fn judge_nested(
    seg: &str,
    offset: usize,
    carry: &Carry,
    rules: &Rules<'_>,
    last: bool,
    nest: u8,
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
    // The lines of a fenced code block inside a container, while in one.
    let mut disputed: Option<Vec<Range<usize>>> = None;
    // Where a table may cut a code span (read when the first one is met).
    let mut tables: Option<Tables> = None;
    for (event, r) in iter.by_ref() {
        if depth == 0 && matches!(event, Event::Start(_)) && frames.is_empty() {
            tail_risky = false;
        }
        match event {
            Event::Start(Tag::CodeBlock(kind)) => {
                let fenced = matches!(kind, CodeBlockKind::Fenced(_));
                blocks.push(fenced);
                if fenced {
                    let (closed, fence) = fence_closed(&src[r.clone()]);
                    // At the top level, exactly: a line of the code that looks like
                    // a fence four columns in does not close it.
                    let closed = if depth == 0 {
                        closing_line(&src, r.clone(), &fence).is_some()
                    } else {
                        closed
                    };
                    if rules.code_is_inert {
                        code.push(local(r.clone()));
                        // Python-Markdown reads fenced code only at the top level,
                        // from the start of a line, with a one-word info string, to
                        // the same fence: its text is what every renderer shows as
                        // code only in that form. A top-level block is given it; the
                        // content of one inside a container is judged as markdown.
                        if depth == 0 && nest == 0 {
                            let synthetic = r.start < shift;
                            for (span, with) in fence_form(&src, r.clone(), synthetic, &fence) {
                                found.push(low("markup.fence_form", at(local(span)), with));
                            }
                        } else {
                            // Its info string is text to such a renderer too.
                            let info = fence_info(&src, r.clone(), &fence);
                            disputed = Some(vec![local(info)]);
                        }
                    }
                    if !closed && reaches_end(&r) {
                        if depth == 0 {
                            open_fence = Some(fence);
                        } else {
                            open_nested = true;
                        }
                    }
                } else if rules.code_is_inert && (depth > 0 || nest > 0) {
                    // Indented code in a list item: Python-Markdown indents a list
                    // item's blocks by four columns, not to the item's text, so
                    // what is code here by a column or two is a paragraph to it.
                    disputed = Some(vec![local(r.start..r.start)]);
                }
                depth += 1;
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some(lines) = disputed.take() {
                    judge_disputed(seg, &lines, offset, carry, rules, nest, false, &mut found);
                }
                blocks.pop();
                depth = depth.saturating_sub(1);
            }
            Event::Start(Tag::HtmlBlock) => {
                tail_risky = true;
                if reaches_end(&r) && html_block_open(&src[r.clone()]) {
                    open_nested = true;
                }
                // Python-Markdown (`md_in_html`, in `extra`) renders the markdown
                // in a block with `markdown="1"`, and reads a tag inside a quote
                // or a list item, or text after a comment, as inline: its text
                // is judged as markdown too.
                if rules.code_is_inert {
                    disputed = Some(vec![local(r.start..r.start)]);
                }
                depth += 1;
            }
            Event::End(TagEnd::HtmlBlock) => {
                if let Some(lines) = disputed.take() {
                    judge_disputed(seg, &lines, offset, carry, rules, nest, true, &mut found);
                }
                depth = depth.saturating_sub(1);
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
                // A code span in a paragraph that a table renderer may read as a
                // table is not code to it: each row's cells are read apart, and
                // a backtick in one row closes nothing in the next. There its
                // text is judged as markup (found by the `markup` fuzz target:
                // `comrak` took `x\n-|` for a table that `pulldown-cmark` did
                // not, and a `</script>` two rows down was live).
                if rules.code_is_inert
                    && !tables
                        .get_or_insert_with(|| Tables::new(&src, carry.table))
                        .may_cut(&src, r.clone())
                {
                    let span = local(r.clone());
                    if let Some((start, end, with)) = long_code_span(&src[r]) {
                        found.push(low(
                            "markup.long_code_span",
                            at(span.start + start..span.start + end),
                            with,
                        ));
                    }
                    code.push(span);
                }
            }
            Event::Html(_) => {
                if let Some(lines) = disputed.as_mut() {
                    lines.push(local(r.clone()));
                }
                tail_risky = true;
            }
            Event::InlineHtml(_) => tail_risky = true,
            Event::SoftBreak | Event::HardBreak => {
                if let Some(f) = frames.last_mut() {
                    f.text.push('\n');
                }
            }
            Event::Text(t) => {
                if let Some(lines) = disputed.as_mut() {
                    lines.push(local(r.clone()));
                }
                // A backtick that opens no code span: cmark-gfm (GitHub's, and
                // `comrak`) then misses the next code span of a length it passed
                // on its way (a cache of where backtick strings were seen), and
                // the code there is markdown and HTML to it, images and tags live
                // (``` ``x `a` and `<img …>` ```; found by the `markup` fuzz
                // target). Escaped, it reads the same everywhere.
                if rules.code_is_inert && blocks.is_empty() {
                    let span = local(r.clone());
                    for i in stray_backticks(seg, span) {
                        found.push(low("markup.stray_backtick", at(i..i + 1), "\\`".to_owned()));
                    }
                }
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
            // A tab after a fence goes (`markup.fence_tab`, which this replaces).
            if c != '\r' && c != '\t' {
                with.push(c);
            }
            if c != '\n' {
                with.push('\n');
            }
            with.push_str(fence);
            found.push(low(
                "markup.unclosed_fence",
                at(seg.len() - c.len_utf8()..seg.len()),
                with,
            ));
        }
    }
    // Reference definitions: a definition is judged as a link (an image by
    // reference is judged where it is used); one shadowed by an earlier definition
    // of the same label is never used.
    let mut next = Carry {
        defs: carry.defs.clone(),
        fence: open_fence,
        table: tables
            .get_or_insert_with(|| Tables::new(&src, carry.table))
            .open_at_end(),
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
        let before = found.len();
        judge(rules.links, Kind::Link, &dest, "", at(span), &mut found);
        // A definition that goes is not the label's first: the next one is,
        // here (the segment's rewrites are judged again) and in a later segment
        // (found by the `markup` fuzz target: a second definition of a removed
        // one's label, in the next segment, went out unjudged).
        if found[before..].iter().all(|f| f.action() != Action::Redact) {
            next.defs.insert(key, dest);
        }
    }
    // HTML wherever a renderer passes it through: everything but code.
    let mut tag_open = false;
    if nest == 0 && seg.contains('<') {
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

/// The rewrites that give a top-level fenced code block (its source `src[r]`,
/// `fence` its opening run, its first line `synthetic` when carried from an
/// earlier segment) the form Python-Markdown reads as code too: the opening fence
/// at the start of its line with an info string of one word, and a closing line
/// that is the same fence. Spans are into `src`.
fn fence_form(
    src: &str,
    r: Range<usize>,
    synthetic: bool,
    fence: &str,
) -> smallvec::SmallVec<[(Range<usize>, String); 2]> {
    let mut out = smallvec::SmallVec::new();
    let r = r.start.min(src.len())..r.end.min(src.len());
    if !synthetic {
        let start = src[..r.start].rfind(['\n', '\r']).map_or(0, |i| i + 1);
        let line = &src[start..];
        let line = &line[..line.find(['\n', '\r']).unwrap_or(line.len())];
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(info) = line[indent..].strip_prefix(fence) {
            if indent > 0 || !python_markdown_info(info) {
                let word = info.trim_start_matches([' ', '\t']);
                let word = &word[..word.find(|c: char| !info_char(c)).unwrap_or(word.len())];
                out.push((start..start + line.len(), format!("{fence}{word}")));
            }
        }
    }
    if let Some(at) = closing_line(src, r, fence) {
        if src[at.clone()].trim_end_matches([' ', '\t']) != fence {
            out.push((at, fence.to_owned()));
        }
    }
    out
}

/// A low rewrite of `span` to `with` (markup every renderer reads alike once
/// rewritten).
pub(super) fn low(rule: &'static str, span: Range<usize>, with: String) -> Finding {
    Finding::new(
        rule,
        Category::UnsafeMarkup,
        Severity::Low,
        Location::Output,
        span,
    )
    .with_action(Action::Redact)
    .with_replacement(with)
}

/// Where a table renderer may take a paragraph for a table: the lines shaped
/// like a table's delimiter row (after any quote markers, only `-`, `:`, `|`,
/// spaces and tabs, with a `-` and a `|`: read loosely, as more renderers than
/// one read tables), and the blank lines that end paragraphs, by where they
/// start.
struct Tables {
    rows: Vec<usize>,
    blanks: Vec<usize>,
}

impl Tables {
    /// The lines of `src`; `carried`: the paragraph it starts in began in an
    /// earlier segment with such a row (counted as one at its start).
    fn new(src: &str, carried: bool) -> Self {
        let (mut rows, mut blanks) = (Vec::new(), Vec::new());
        if carried {
            rows.push(0);
        }
        if carried || src.contains('|') {
            let mut at = 0;
            for line in src.split_inclusive('\n') {
                let t = line
                    .trim_start_matches([' ', '\t', '>'])
                    .trim_end_matches([' ', '\t', '\r', '\n']);
                if t.is_empty() {
                    blanks.push(at);
                } else if t.contains('-')
                    && t.contains('|')
                    && t.bytes()
                        .all(|c| matches!(c, b'-' | b':' | b'|' | b' ' | b'\t'))
                {
                    rows.push(at);
                }
                at += line.len();
            }
        }
        Self { rows, blanks }
    }

    /// Whether the text ends in a paragraph with a delimiter row.
    fn open_at_end(&self) -> bool {
        self.rows
            .last()
            .is_some_and(|&r| self.blanks.last().is_none_or(|&b| b < r))
    }

    /// Whether a table may cut the code span at `span`: a delimiter row stands
    /// in its paragraph before its end, or on the line after its last (whose
    /// line is then a table's header row).
    fn may_cut(&self, src: &str, span: Range<usize>) -> bool {
        if self.rows.is_empty() {
            return false;
        }
        let from = self.blanks[..self.blanks.partition_point(|&b| b < span.start)]
            .last()
            .copied()
            .unwrap_or(0);
        // The end of the line after the span's last.
        let next = |i: usize| src[i..].find('\n').map_or(src.len(), |k| i + k + 1);
        let to = next(next(span.end.min(src.len())).min(src.len()));
        let k = self.rows.partition_point(|&r| r < from);
        self.rows.get(k).is_some_and(|&r| r < to)
    }
}

/// The backticks of `seg[span]` (text outside code) not escaped by a backslash.
fn stray_backticks(seg: &str, span: Range<usize>) -> impl Iterator<Item = usize> + '_ {
    let b = seg.as_bytes();
    let span = span.start.min(b.len())..span.end.min(b.len());
    memchr::memchr_iter(b'`', &b[span.clone()])
        .map(move |i| span.start + i)
        .filter(move |&i| b[..i].iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 0)
}

/// A code span (`code`, as written) whose backtick strings are longer than 80,
/// which cmark-gfm never closes (its content is markdown and HTML to it): the
/// stretch from its opening string to its closing one, rewritten with the
/// shortest string its content does not hold (or nothing, when it holds every
/// length up to 80).
fn long_code_span(code: &str) -> Option<(usize, usize, String)> {
    let b = code.as_bytes();
    let open = b.iter().take_while(|&&c| c == b'`').count();
    if open <= 80 || b.len() < 2 * open {
        return None;
    }
    let inner = &code[open..code.len() - open];
    let mut lengths = [false; 81];
    for run in inner.split(|c| c != '`').filter(|r| !r.is_empty()) {
        if run.len() <= 80 {
            lengths[run.len()] = true;
        }
    }
    let with = match (1..=80).find(|&l| !lengths[l]) {
        Some(l) => format!("{0}{inner}{0}", "`".repeat(l)),
        None => String::new(),
    };
    Some((0, code.len(), with))
}

/// The closing line of the top-level fenced code block `src[r]` opened by
/// `fence` (without its line end), or `None` when the block is open: its last
/// line, when that is a closing fence (at most three spaces in, a run of at least
/// the fence, nothing after but spaces and tabs). A block left open, or cut at the
/// end of a segment, ends with a line of its code.
fn closing_line(src: &str, r: Range<usize>, fence: &str) -> Option<Range<usize>> {
    let r = r.start.min(src.len())..r.end.min(src.len());
    let body = src[r.clone()].trim_end_matches(['\n', '\r']);
    let at = body.rfind(['\n', '\r']).map_or(0, |i| i + 1);
    let line = &body[at..];
    let indent = line.len() - line.trim_start_matches(' ').len();
    let c = fence.as_bytes().first().copied().unwrap_or(b'`');
    let run = line.as_bytes()[indent..]
        .iter()
        .take_while(|&&b| b == c)
        .count();
    let closer = at > 0
        && indent <= 3
        && run >= fence.len()
        && line[indent + run..].trim_matches([' ', '\t']).is_empty();
    closer.then(|| r.start + at..r.start + body.len())
}

/// Where the info string of the fenced code block `src[r]` (opened by `fence`)
/// is in `src`: the rest of its first line after the fence.
fn fence_info(src: &str, r: Range<usize>, fence: &str) -> Range<usize> {
    let r = r.start.min(src.len())..r.end.min(src.len());
    let block = &src[r.clone()];
    let line = &block[..block.find(['\n', '\r']).unwrap_or(block.len())];
    let c = fence.as_bytes().first().copied().unwrap_or(b'`');
    let lead = line.len() - line.trim_start_matches([' ', '\t', '>']).len();
    let run = line.as_bytes()[lead..]
        .iter()
        .take_while(|&&b| b == c)
        .count();
    r.start + lead + run..r.start + line.len()
}

/// `text` with each `<` as a space, but for an autolink's (`<https://…>`): a tag
/// opens no HTML block then, and a link stays a link.
fn tags_as_spaces(text: &str) -> String {
    let mut out = text.as_bytes().to_vec();
    for (i, _) in text.match_indices('<') {
        let rest = &text.as_bytes()[i + 1..];
        let scheme = rest
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'))
            .count();
        let autolink =
            scheme >= 2 && rest[0].is_ascii_alphabetic() && rest.get(scheme) == Some(&b':');
        if !autolink {
            out[i] = b' ';
        }
    }
    // Only ASCII `<` became ASCII spaces: still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// A character Python-Markdown takes in a fence's language (`[\w#.+-]`).
fn info_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '#' | '.' | '+' | '-')
}

/// Whether Python-Markdown's fenced code reads an opening fence followed by
/// `info` (the rest of its line): spaces, then `{attributes}`, or a language of
/// [`info_char`]s with an optional `hl_lines="…"`.
fn python_markdown_info(info: &str) -> bool {
    let s = info.trim_start_matches([' ', '\t']);
    if s.starts_with('{') {
        return s.ends_with('}');
    }
    let s = s
        .trim_start_matches(info_char)
        .trim_start_matches([' ', '\t']);
    let Some(h) = s.strip_prefix("hl_lines=") else {
        return s.is_empty();
    };
    let h = h.trim_end_matches([' ', '\t']);
    match h.chars().next() {
        Some(q @ ('"' | '\'')) => h.len() >= 2 && h.ends_with(q),
        _ => false,
    }
}

/// Judges the content of a code block inside a container (its info string and
/// its lines, `lines`, spans into `seg`) as the markdown Python-Markdown shows
/// there: it has no fenced code in a quote or a list item, so the fences are text
/// and the images between them load, and it reads a list item's indented code
/// from a different column. The text of an HTML block (`html`) is read with its
/// `<` as spaces: its tags are judged as HTML, and no tag opens a block there.
#[allow(clippy::too_many_arguments)]
fn judge_disputed(
    seg: &str,
    lines: &[Range<usize>],
    offset: usize,
    carry: &Carry,
    rules: &Rules<'_>,
    nest: u8,
    html: bool,
    out: &mut Vec<Finding>,
) {
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        return;
    };
    // The first piece is the info string: a line of its own.
    let mut text = String::new();
    let mut map = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        text.push_str(&seg[l.clone()]);
        map.extend(l.clone());
        if i == 0 {
            text.push('\n');
            map.push(l.end);
        }
    }
    if html {
        text = tags_as_spaces(&text);
    }
    // An image, a link or a definition needs a bracket; an autolink a `<`.
    if memchr::memchr2(b'[', b'<', text.as_bytes()).is_none() {
        return;
    }
    if nest + 1 >= MAX_NEST {
        out.push(
            Finding::new(
                "markup.nested_code",
                Category::UnsafeMarkup,
                Severity::Medium,
                Location::Output,
                offset + first.start..offset + last.end,
            )
            .with_action(Action::Redact)
            .with_replacement(String::new()),
        );
        return;
    }
    let inner = Rules {
        links: rules.links,
        html: rules.html,
        code_is_inert: rules.code_is_inert,
        bare_urls: false,
    };
    let carry = Carry {
        defs: carry.defs.clone(),
        fence: None,
        table: false,
    };
    let mut found = Vec::new();
    judge_nested(&text, 0, &carry, &inner, false, nest + 1, &mut found);
    for f in found {
        let s = f.span();
        let start = map.get(s.start).copied().unwrap_or(last.end);
        let end = match s.end.checked_sub(1) {
            Some(e) if s.end > s.start => map.get(e).map_or(last.end, |&x| x + 1),
            _ => start,
        };
        out.push(f.with_span(offset + start..offset + end));
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
