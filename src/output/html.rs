//! An HTML tokenizer for the answer validator: tags and their attributes as a
//! browser's tokenizer reads them (WHATWG HTML, "13.2.5 Tokenization": the data,
//! tag, attribute and comment states), with the byte span of every tag so that a
//! finding can rewrite exactly the tag and nothing else.
//!
//! Why not `html5ever` or `lol_html`: neither reports source offsets for tokens
//! (html5ever gives line numbers, lol_html rewrites a stream), and redaction, stream
//! segments and the audit record all need byte spans. The states that decide what
//! a browser sees as a tag and an attribute are few and followed here to the letter:
//! a quoted value followed directly by a name starts a new attribute
//! (`src="x"onerror=`), `/` between attributes is a separator, names are
//! lowercased, character references in attribute values are decoded (numeric with
//! or without `;`, and the named references that decode to ASCII), comments end at
//! `-->`, `--!>` or abruptly at `<!-->`.

use std::borrow::Cow;
use std::ops::Range;

/// An attribute: lowercased name and decoded value.
pub(crate) struct Attr<'a> {
    pub(crate) name: String,
    pub(crate) value: Cow<'a, str>,
}

/// A start or end tag.
pub(crate) struct Tag<'a> {
    /// Lowercased tag name.
    pub(crate) name: String,
    pub(crate) end_tag: bool,
    /// From `<` to `>` inclusive (to the end of the text when unclosed).
    pub(crate) span: Range<usize>,
    pub(crate) attrs: Vec<Attr<'a>>,
    /// Whether the tag ended with `>` before the end of the text.
    pub(crate) closed: bool,
}

impl Tag<'_> {
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_ref())
    }
}

fn ws(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

/// Every tag of `text`, in order. Text, comments, doctypes and processing
/// instructions are skipped as a browser skips them.
///
/// In a block quote, a markdown renderer takes the quote markers off each line
/// before it reads the line's HTML: `> Hi <img\n> src=https://…>` is, to it,
/// `<img src=https://…>`, where the text holds a harmless `<img\n>` (the `>`
/// that starts the second line ends it) and no URL. So the tags of the text with
/// the markers taken off are read too, and each one that differs from every tag
/// of the text as written is added, spanning the bytes of the text it comes from
/// (found by the `markup` fuzz target).
pub(crate) fn tags(text: &str) -> Vec<Tag<'_>> {
    let mut out = read(text);
    let Some((view, map)) = unquoted(text) else {
        return out;
    };
    let written: std::collections::HashMap<(usize, usize), usize> = out
        .iter()
        .enumerate()
        .map(|(k, t)| ((t.span.start, t.span.end), k))
        .collect();
    let mut added = false;
    for t in read(&view) {
        let span = map[t.span.start]..map[t.span.end.max(t.span.start + 1) - 1] + 1;
        let same = |o: &Tag<'_>| {
            o.name == t.name
                && o.end_tag == t.end_tag
                && o.closed == t.closed
                && o.attrs.len() == t.attrs.len()
                && o.attrs
                    .iter()
                    .zip(&t.attrs)
                    .all(|(a, b)| a.name == b.name && a.value == b.value)
        };
        if written
            .get(&(span.start, span.end))
            .is_some_and(|&k| same(&out[k]))
        {
            continue;
        }
        added = true;
        out.push(Tag {
            name: t.name,
            end_tag: t.end_tag,
            span,
            attrs: t
                .attrs
                .into_iter()
                .map(|a| Attr {
                    name: a.name,
                    value: Cow::Owned(a.value.into_owned()),
                })
                .collect(),
            closed: t.closed,
        });
    }
    if added {
        out.sort_by_key(|t| t.span.start);
    }
    out
}

/// `text` as a markdown renderer reads the inside of block quotes: at the start
/// of each line, the quote markers (each a `>` after up to three spaces, with a
/// space or tab after it) taken off; and, for each byte of that, where it is in
/// `text`, with one more entry for the end. `None` when no line starts with a
/// marker.
fn unquoted(text: &str) -> Option<(String, Vec<usize>)> {
    let b = text.as_bytes();
    // The end of the markers at the start of the line that starts at `i`.
    let markers = |mut i: usize| loop {
        let mut k = i;
        while k < b.len() && k - i < 3 && b[k] == b' ' {
            k += 1;
        }
        if b.get(k) != Some(&b'>') {
            return i;
        }
        k += 1;
        if matches!(b.get(k), Some(b' ' | b'\t')) {
            k += 1;
        }
        i = k;
    };
    let starts = std::iter::once(0).chain(
        memchr::memchr2_iter(b'\n', b'\r', b)
            .filter(|&e| !(b[e] == b'\r' && b.get(e + 1) == Some(&b'\n')))
            .map(|e| e + 1),
    );
    if !starts.clone().any(|s| markers(s) > s) {
        return None;
    }
    let mut view = Vec::with_capacity(b.len());
    let mut map = Vec::with_capacity(b.len() + 1);
    let mut from = 0;
    for s in starts.skip(1).chain([b.len() + 1]) {
        // The line from `from` (its markers off) to the next line's start.
        let (start, end) = (markers(from).min(s), s.min(b.len()));
        view.extend_from_slice(&b[start.min(end)..end]);
        map.extend(start..end);
        from = s;
    }
    map.push(b.len());
    // Only ASCII bytes at the start of lines were left out.
    Some((String::from_utf8(view).ok()?, map))
}

/// The tags of `text` as written (see [`tags`]).
fn read(text: &str) -> Vec<Tag<'_>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut raw = Raw::new(b);
    // A tag that is not one of CommonMark's (`<T [x]<script>`: no `[` in an
    // attribute name) is text to a markdown renderer, which writes its `<` as
    // `&lt;` and reads what follows as markdown again: up to where a browser
    // would end it, the tags CommonMark reads there are tags too. An HTML block
    // that starts there (`<scripT !` at a line's start) is read as a browser
    // reads it, to the block's end, and the escaped text resumes after it.
    let mut escaped_until = 0;
    // The HTML block being read inside escaped text: its end, and where the
    // escaped text around it ends.
    let mut block: Option<(usize, usize)> = None;
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'<', &b[i..]) {
        let lt = i + off;
        if let Some((_, outer)) = block.filter(|&(end, _)| lt >= end) {
            escaped_until = escaped_until.max(outer);
            block = None;
        }
        let next = b.get(lt + 1).copied();
        let tag_at = match next {
            Some(c) if c.is_ascii_alphabetic() => Some(lt + 1),
            Some(b'/') if b.get(lt + 2).is_some_and(u8::is_ascii_alphabetic) => Some(lt + 2),
            _ => None,
        };
        if let Some(name_at) = tag_at {
            // Where the tag ends when every renderer reads it as a tag (no line
            // inside may start a block, as loosely as a renderer may read one),
            // and when some renderer may (only a blank line breaks it: `\t>` on
            // the next line starts a quote to a loose reading, and is an
            // indented line of the paragraph to CommonMark; found by the
            // `markup` fuzz target, `</su <style\n\t>` passed a `<style>`).
            let cm = commonmark_tag(b, lt);
            let cm_any =
                cm.or_else(|| tag_extent(b, lt).filter(|&e| next_blank(&b[..e], lt).is_none()));
            // An HTML block starts: of the first six kinds, or a whole tag alone
            // on its line (the seventh).
            let starts_block = || {
                line_start(b, lt)
                    && (html_block_start(&b[lt..])
                        || cm_any.is_some_and(|e| {
                            b[e..]
                                .iter()
                                .take_while(|&&c| c != b'\n' && c != b'\r')
                                .all(|&c| c == b' ' || c == b'\t')
                        }))
            };
            if lt < escaped_until && block.is_none() && starts_block() {
                block = Some((html_block_end(b, lt), escaped_until));
                escaped_until = 0;
            } else if lt < escaped_until
                && cm_any.is_none()
                && !(line_start(b, lt) && html_block_start(&b[lt..]))
            {
                // Not a tag to any renderer, nor an HTML block that may
                // interrupt a paragraph: a block of the seventh kind (a tag alone
                // on its line) may not, so what seemed inside one may be a
                // paragraph's, where `<style` on its own line starts a block
                // (found by the `markup` fuzz target: `<s>\n<B\n<style`).
                i = lt + 1;
                continue;
            }
            // Inside such a block, a tag is read no further than the block.
            let limit = block.map_or(b.len(), |(end, _)| end);
            let (tag, end) = tag(&text[..limit], lt, name_at, name_at == lt + 2);
            out.push(tag);
            if cm == Some(end) {
                i = end;
            } else {
                escaped_until = escaped_until.max(end);
                i = lt + 1;
            }
            continue;
        }
        match next {
            // What a browser would skip as a comment is skipped only where a
            // markdown renderer passes it through as HTML; elsewhere the renderer
            // writes its `<` as `&lt;`, and the tags after it are tags (`<!`,
            // `</ `, `<?` or an unclosed `<!--` before `<img src=…>` hid the image
            // from the validator and not from the browser).
            Some(b'/') => match b.get(lt + 2) {
                Some(b'>') => i = lt + 3,
                // A bogus comment to a browser, text to a markdown renderer.
                _ => i = lt + 2,
            },
            Some(b'!') => {
                if b[lt + 2..].starts_with(b"--") {
                    let body = lt + 4;
                    if b[body..].starts_with(b">") {
                        i = body + 1;
                    } else if b[body..].starts_with(b"->") {
                        i = body + 2;
                    } else {
                        let a = raw.end(lt, body, 0);
                        let c = raw.end(lt, body, 1);
                        i = match (a, c) {
                            (Some(a), Some(c)) if c < a => c + 4,
                            (Some(a), _) => a + 3,
                            (None, Some(c)) => c + 4,
                            // Unclosed: text to a markdown renderer.
                            (None, None) => lt + 2,
                        };
                    }
                } else if (declaration(&b[lt + 2..]) && raw.end(lt, lt + 2, 2).is_some())
                    || (b[lt + 2..].starts_with(b"[CDATA[") && raw.end(lt, lt + 9, 4).is_some())
                {
                    // A declaration or CDATA: to the next `>` for a browser (a
                    // renderer passes it through to its end, which is later).
                    // A declaration as the strictest renderer reads one (`<!s/…>`
                    // is one to `pulldown-cmark`, text to cmark-gfm, which then
                    // passes a `</style>` inside it as a tag; found by the
                    // `markup` fuzz target). CDATA is raw HTML only up to a
                    // `]]>`: without one, a renderer writes its `<` as `&lt;` and
                    // passes the tags after it (`x <![CDATA[ <style>` hid a
                    // `<style>`; found by the `markup` fuzz target).
                    i = skip_to(b, lt + 2, b">");
                } else {
                    i = lt + 2;
                }
            }
            // A processing instruction: raw to a renderer only up to a `?>`, a
            // bogus comment to the next `>` for a browser.
            Some(b'?') if raw.end(lt, lt + 2, 3).is_some() => {
                i = skip_to(b, lt + 2, b">");
            }
            _ => i = lt + 1,
        }
    }
    out
}

/// Whether only whitespace and container markers (`>`, list bullets and
/// numbers) stand between the start of `lt`'s line and `lt`: where a block, an
/// HTML block among them, may start.
fn line_start(b: &[u8], lt: usize) -> bool {
    b[..lt]
        .iter()
        .rev()
        .take_while(|&&c| c != b'\n' && c != b'\r')
        .all(|&c| {
            matches!(
                c,
                b' ' | b'\t' | b'>' | b'-' | b'*' | b'+' | b'.' | b')' | b'0'..=b'9'
            )
        })
}

/// Where the tag at `lt` ends (past its `>`) when it is an open or closing tag
/// as CommonMark defines raw HTML ("6.6 Raw HTML"): a name of ASCII letters,
/// digits and `-`; attributes of `[A-Za-z_:][A-Za-z0-9_.:-]*`, each after
/// whitespace, with a value unquoted (no whitespace, quotes, `=`, `<`, `>` or
/// backtick), in single or in double quotes; whitespace of spaces, tabs and at
/// most one line end; no line inside that starts a block (see
/// [`paragraph_break`]). `None` otherwise (a renderer writes its `<` as `&lt;`).
fn commonmark_tag(b: &[u8], lt: usize) -> Option<usize> {
    let end = tag_extent(b, lt)?;
    // In a paragraph: a line inside that starts a block ends it first.
    paragraph_break(&b[..end], lt).is_none().then_some(end)
}

/// Where the tag at `lt` ends by CommonMark's grammar of tags alone.
fn tag_extent(b: &[u8], lt: usize) -> Option<usize> {
    // Spaces and tabs with at most one line end, from `i`: where they end.
    let space = |mut i: usize| {
        let mut ends = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b' ' | b'\t' => i += 1,
                b'\r' | b'\n' => {
                    ends += 1;
                    i += if c == b'\r' && b.get(i + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                }
                _ => break,
            }
        }
        (ends <= 1).then_some(i)
    };
    let mut i = lt + 1;
    let closing = b.get(i) == Some(&b'/');
    i += usize::from(closing);
    if !b.get(i)?.is_ascii_alphabetic() {
        return None;
    }
    while b
        .get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'-')
    {
        i += 1;
    }
    if closing {
        let w = space(i)?;
        return (b.get(w) == Some(&b'>')).then_some(w + 1);
    }
    loop {
        let w = space(i)?;
        match *b.get(w)? {
            b'>' => return Some(w + 1),
            b'/' => return (b.get(w + 1) == Some(&b'>')).then_some(w + 2),
            c if w > i && (c.is_ascii_alphabetic() || c == b'_' || c == b':') => {
                let mut j = w + 1;
                while b.get(j).is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-')
                }) {
                    j += 1;
                }
                let k = space(j)?;
                if b.get(k) == Some(&b'=') {
                    let v = space(k + 1)?;
                    j = match *b.get(v)? {
                        q @ (b'"' | b'\'') => v + 1 + memchr::memchr(q, &b[v + 1..])? + 1,
                        _ => {
                            let n = b[v..]
                                .iter()
                                .take_while(|c| {
                                    !matches!(
                                        c,
                                        b' ' | b'\t'
                                            | b'\r'
                                            | b'\n'
                                            | b'\x0b'
                                            | b'\x0c'
                                            | b'"'
                                            | b'\''
                                            | b'='
                                            | b'<'
                                            | b'>'
                                            | b'`'
                                    )
                                })
                                .count();
                            if n == 0 {
                                return None;
                            }
                            v + n
                        }
                    };
                }
                i = j;
            }
            _ => return None,
        }
    }
}

/// Where raw HTML ends for a markdown renderer: a comment (`-->`, `--!>`), a
/// declaration (`>`) or a processing instruction (`?>`). Raw HTML inside a
/// paragraph does not reach past the paragraph's end, a blank line or a line that
/// starts a block (its `<` is then text, written as `&lt;`; found by the `markup`
/// fuzz target: `<style` on the next line began an HTML block inside a comment);
/// one at the start of a line begins an HTML block, which does.
///
/// The searches go forward only (each opener is after the last), so each
/// remembers its last answer: a text of many openers and no end is read once per
/// needle, not once per opener.
struct Raw<'a> {
    b: &'a [u8],
    /// Per needle, the next occurrence at or after the last search's start
    /// (`None`: none to the end).
    next: [Option<Option<usize>>; 5],
    /// The next paragraph break ([`paragraph_break`]) at or after the last
    /// search's start.
    blank: Option<Option<usize>>,
    /// Where the line of the last opener starts, and how far line ends were read.
    line: usize,
    seen: usize,
}

const NEEDLES: [&[u8]; 5] = [b"-->", b"--!>", b">", b"?>", b"]]>"];

impl<'a> Raw<'a> {
    fn new(b: &'a [u8]) -> Self {
        Raw {
            b,
            next: [None; 5],
            blank: None,
            line: 0,
            seen: 0,
        }
    }

    /// Where needle `k` is found from `from`, when it ends the raw HTML opened at
    /// `lt` (`from` and `lt` never go back between calls).
    fn end(&mut self, lt: usize, from: usize, k: usize) -> Option<usize> {
        let found = match self.next[k] {
            Some(None) => None,
            Some(Some(p)) if p >= from => Some(p),
            _ => find(self.b, from, NEEDLES[k]),
        };
        self.next[k] = Some(found);
        let end = found?;
        let b = self.b;
        if let Some(p) = memchr::memrchr2(b'\n', b'\r', &b[self.seen.min(lt)..lt]) {
            self.line = self.seen + p + 1;
        }
        self.seen = lt;
        let line = self.line;
        let block = lt - line <= 3 && b[line..lt].iter().all(|&c| c == b' ');
        let blank = match self.blank {
            Some(None) => None,
            Some(Some(p)) if p >= lt => Some(p),
            _ => paragraph_break(b, lt),
        };
        self.blank = Some(blank);
        (block || blank.is_none_or(|p| p >= end)).then_some(end)
    }
}

/// Where the paragraph holding `from` ends for a markdown renderer, at the
/// latest: the start of the first line after `from`'s that is blank or may
/// start a block, which interrupts a paragraph (a quote, a heading, a fence, a
/// thematic break or setext underline, a list item, a table's delimiter row, an
/// HTML block). Read loosely where loose is safe: a line that may start one
/// counts, indented or not.
fn paragraph_break(b: &[u8], from: usize) -> Option<usize> {
    line_after(b, from, interrupts)
}

/// The start of the first line after `from`'s for which `found` holds (given
/// the text from the line's start).
fn line_after(b: &[u8], from: usize, found: impl Fn(&[u8]) -> bool) -> Option<usize> {
    let mut i = from;
    loop {
        let e = i + memchr::memchr2(b'\n', b'\r', b.get(i..)?)?;
        let q = e + if b[e] == b'\r' && b.get(e + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        if q >= b.len() {
            return None;
        }
        if found(&b[q..]) {
            return Some(q);
        }
        i = q;
    }
}

/// Whether `line` (from its start to the end of the text) is blank or may start
/// a block that interrupts a paragraph.
fn interrupts(line: &[u8]) -> bool {
    let indent = line
        .iter()
        .take_while(|&&c| c == b' ' || c == b'\t')
        .count();
    let rest = &line[indent..];
    match rest.first() {
        None | Some(b'\n' | b'\r') => true,
        Some(b'>' | b'#' | b'-' | b'*' | b'+' | b'=' | b'_' | b'`' | b'~' | b'|' | b':') => true,
        Some(b'0'..=b'9') => {
            let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
            matches!(rest.get(digits), Some(b'.' | b')'))
        }
        Some(b'<') => html_block_start(rest),
        _ => false,
    }
}

/// Whether `r` (after `<!`) starts a declaration to every markdown renderer:
/// CommonMark 0.31 asks for an ASCII letter, cmark-gfm (GitHub's, and `comrak`)
/// for capital letters and then whitespace.
fn declaration(r: &[u8]) -> bool {
    let n = r.iter().take_while(|c| c.is_ascii_uppercase()).count();
    n > 0
        && matches!(
            r.get(n),
            Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
        )
}

/// Where the HTML block that starts at `lt` ends: past the line that closes a
/// `<script`, `<pre`, `<style` or `<textarea` block, else at the next blank line
/// (the end of the text when there is none).
fn html_block_end(b: &[u8], lt: usize) -> usize {
    const RAW: [&[u8]; 4] = [b"script", b"pre", b"style", b"textarea"];
    let name = &b[lt + 1..];
    let n = name
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    let end = if RAW.iter().any(|t| t.eq_ignore_ascii_case(&name[..n])) {
        memchr::memchr_iter(b'<', &b[lt + 1..])
            .map(|p| lt + 1 + p)
            .find(|&p| {
                RAW.iter().any(|t| {
                    b.get(p + 1) == Some(&b'/')
                        && b.get(p + 2..p + 2 + t.len())
                            .is_some_and(|x| x.eq_ignore_ascii_case(t))
                        && b.get(p + 2 + t.len()) == Some(&b'>')
                })
            })
            .map(|p| p + memchr::memchr2(b'\n', b'\r', &b[p..]).unwrap_or(b.len() - p))
    } else {
        next_blank(b, lt)
    };
    end.unwrap_or(b.len())
}

/// Where the first blank line after `from`'s line starts.
fn next_blank(b: &[u8], from: usize) -> Option<usize> {
    line_after(b, from, |line| {
        let w = line
            .iter()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
        matches!(line.get(w), Some(b'\n' | b'\r'))
    })
}

/// Whether `r`, at a line's start, opens an HTML block of CommonMark's first six
/// kinds (those that may interrupt a paragraph): `<script`, `<pre`, `<style`,
/// `<textarea`, a comment, a processing instruction, a declaration, CDATA, or a
/// tag of a block-level element.
fn html_block_start(r: &[u8]) -> bool {
    const BLOCK: &[&str] = &[
        "address",
        "article",
        "aside",
        "base",
        "basefont",
        "blockquote",
        "body",
        "caption",
        "center",
        "col",
        "colgroup",
        "dd",
        "details",
        "dialog",
        "dir",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "frame",
        "frameset",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "head",
        "header",
        "hr",
        "html",
        "iframe",
        "legend",
        "li",
        "link",
        "main",
        "menu",
        "menuitem",
        "nav",
        "noframes",
        "ol",
        "optgroup",
        "option",
        "p",
        "param",
        "search",
        "section",
        "source",
        "summary",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "title",
        "tr",
        "track",
        "ul",
        "script",
        "pre",
        "style",
        "textarea",
    ];
    if r.starts_with(b"<!") || r.starts_with(b"<?") {
        return true;
    }
    let at = if r.starts_with(b"</") { 2 } else { 1 };
    let n = r[at..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    let name = &r[at..at + n];
    n > 0
        && matches!(
            r.get(at + n),
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b'>' | b'/')
        )
        && BLOCK
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(&b[from.min(b.len())..], needle).map(|p| from + p)
}

/// The position after the next `needle`, or the end.
fn skip_to(b: &[u8], from: usize, needle: &[u8]) -> usize {
    find(b, from, needle).map_or(b.len(), |p| p + needle.len())
}

/// Reads a tag whose name starts at `name_at`; returns it and where text resumes.
fn tag(text: &str, lt: usize, name_at: usize, end_tag: bool) -> (Tag<'_>, usize) {
    let b = text.as_bytes();
    let mut i = name_at;
    while i < b.len() && !ws(b[i]) && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    let name = text[name_at..i].to_ascii_lowercase();
    let mut attrs = Vec::new();
    let mut closed = false;
    // Before attribute name.
    'attrs: while i < b.len() {
        match b[i] {
            c if ws(c) || c == b'/' => i += 1,
            b'>' => {
                closed = true;
                i += 1;
                break;
            }
            _ => {
                // Attribute name (a leading `=` belongs to it).
                let start = i;
                i += 1;
                while i < b.len() && !ws(b[i]) && !matches!(b[i], b'/' | b'>' | b'=') {
                    i += 1;
                }
                let name = text[start..i].to_ascii_lowercase();
                // After attribute name.
                while i < b.len() && ws(b[i]) {
                    i += 1;
                }
                if i >= b.len() || b[i] != b'=' {
                    attrs.push(Attr {
                        name,
                        value: Cow::Borrowed(""),
                    });
                    continue 'attrs;
                }
                i += 1;
                // Before attribute value.
                while i < b.len() && ws(b[i]) {
                    i += 1;
                }
                let (raw, after) = match b.get(i) {
                    Some(&q @ (b'"' | b'\'')) => match memchr::memchr(q, &b[i + 1..]) {
                        Some(p) => (&text[i + 1..i + 1 + p], i + 2 + p),
                        None => (&text[i + 1..], b.len()),
                    },
                    Some(b'>') => ("", i),
                    Some(_) => {
                        let s = i;
                        while i < b.len() && !ws(b[i]) && b[i] != b'>' {
                            i += 1;
                        }
                        (&text[s..i], i)
                    }
                    None => ("", i),
                };
                attrs.push(Attr {
                    name,
                    value: decode(raw),
                });
                // After a quoted value anything but `>` starts the next attribute
                // (a parse error a browser forgives: `src="x"onerror=...`).
                i = after;
            }
        }
    }
    let span = lt..i.min(b.len());
    (
        Tag {
            name,
            end_tag,
            span,
            attrs,
            closed,
        },
        i,
    )
}

/// Named character references that decode to ASCII (and the no-break space), the
/// ones that matter for a scheme or a host; others are left as written.
const NAMED: &[(&str, char)] = &[
    ("Tab", '\t'),
    ("NewLine", '\n'),
    ("excl", '!'),
    ("quot", '"'),
    ("QUOT", '"'),
    ("num", '#'),
    ("dollar", '$'),
    ("percnt", '%'),
    ("amp", '&'),
    ("AMP", '&'),
    ("apos", '\''),
    ("lpar", '('),
    ("rpar", ')'),
    ("ast", '*'),
    ("midast", '*'),
    ("plus", '+'),
    ("comma", ','),
    ("period", '.'),
    ("sol", '/'),
    ("colon", ':'),
    ("semi", ';'),
    ("lt", '<'),
    ("LT", '<'),
    ("equals", '='),
    ("gt", '>'),
    ("GT", '>'),
    ("quest", '?'),
    ("commat", '@'),
    ("lsqb", '['),
    ("lbrack", '['),
    ("bsol", '\\'),
    ("rsqb", ']'),
    ("rbrack", ']'),
    ("Hat", '^'),
    ("lowbar", '_'),
    ("UnderBar", '_'),
    ("grave", '`'),
    ("DiacriticalGrave", '`'),
    ("lcub", '{'),
    ("lbrace", '{'),
    ("verbar", '|'),
    ("vert", '|'),
    ("VerticalLine", '|'),
    ("rcub", '}'),
    ("rbrace", '}'),
    ("nbsp", '\u{a0}'),
    ("NonBreakingSpace", '\u{a0}'),
];

/// Named references a browser also accepts without `;` (in attribute values only
/// when not followed by a letter, digit or `=`).
const LEGACY: &[&str] = &["amp", "AMP", "lt", "LT", "gt", "GT", "quot", "QUOT", "nbsp"];

/// Decodes the character references of an attribute value as a browser does.
pub(crate) fn decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains('&') {
        return Cow::Borrowed(raw);
    }
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'&' {
            let next = memchr::memchr(b'&', &b[i..]).map_or(b.len(), |p| i + p);
            out.push_str(&raw[i..next]);
            i = next;
            continue;
        }
        if b.get(i + 1) == Some(&b'#') {
            let hex = matches!(b.get(i + 2), Some(b'x' | b'X'));
            let start = i + 2 + usize::from(hex);
            let mut j = start;
            while j < b.len()
                && (if hex {
                    b[j].is_ascii_hexdigit()
                } else {
                    b[j].is_ascii_digit()
                })
            {
                j += 1;
            }
            if j > start {
                let v =
                    u32::from_str_radix(&raw[start..j.min(start + 8)], if hex { 16 } else { 10 })
                        .unwrap_or(0x11_0000);
                let v = if j - start > 8 { 0x11_0000 } else { v };
                out.push(numeric(v));
                i = if b.get(j) == Some(&b';') { j + 1 } else { j };
                continue;
            }
            out.push('&');
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < b.len() && b[j].is_ascii_alphanumeric() && j - start < 32 {
            j += 1;
        }
        let name = &raw[start..j];
        if b.get(j) == Some(&b';') {
            if let Some((_, c)) = NAMED.iter().find(|(n, _)| *n == name) {
                out.push(*c);
                i = j + 1;
                continue;
            }
        } else if let Some(l) = LEGACY.iter().find(|l| name.starts_with(**l)) {
            let after = b.get(start + l.len()).copied();
            if !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'=') {
                if let Some((_, c)) = NAMED.iter().find(|(n, _)| n == l) {
                    out.push(*c);
                    i = start + l.len();
                    continue;
                }
            }
        }
        out.push('&');
        i += 1;
    }
    Cow::Owned(out)
}

/// A numeric character reference's character, with the browser's replacements.
fn numeric(v: u32) -> char {
    // Windows-1252 for the C1 range, as browsers do.
    const C1: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    let v = if (0x80..0xa0).contains(&v) {
        C1[(v - 0x80) as usize]
    } else {
        v
    };
    if v == 0 {
        return '\u{fffd}';
    }
    char::from_u32(v).unwrap_or('\u{fffd}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Tag<'_> {
        tags(s).into_iter().next().expect("a tag")
    }

    #[test]
    fn attributes_as_a_browser_reads_them() {
        let t = one(r#"<img src="x"onerror=alert(1)>"#);
        assert_eq!(t.name, "img");
        assert_eq!(t.attr("src"), Some("x"));
        assert_eq!(t.attr("onerror"), Some("alert(1)"));
        assert!(t.closed);
        let t = one("<IMG/SRC=x/onerror=y>");
        assert_eq!(t.attr("src"), Some("x/onerror=y"));
        let t = one("<a\nhref = 'java&#x09;script&colon;alert(1)' >x</a>");
        assert_eq!(t.attr("href"), Some("java\tscript:alert(1)"));
        let t = one("<a href=&#106&#97vascript:x>");
        assert_eq!(t.attr("href"), Some("javascript:x"));
        let t = one(r#"<img alt="a > b" src=y"#);
        assert_eq!(t.attr("alt"), Some("a > b"));
        assert!(!t.closed);
        assert_eq!(t.span.end, 22);
    }

    #[test]
    fn comments_and_text_are_not_tags() {
        assert!(tags("a < b, x <= y, <!-- <img src=x onerror=y> -->").is_empty());
        let t = tags("<!--><img src=x onerror=y>");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].attr("onerror"), Some("y"));
        assert_eq!(tags("</ script><?x <b>?>").len(), 0);
        assert_eq!(tags("</a >").first().map(|t| t.end_tag), Some(true));
    }

    #[test]
    fn references() {
        assert_eq!(decode("&amp;&ampx&amp=&lt"), "&&ampx&amp=<");
        assert_eq!(decode("&#0;&#x110000;&#128;"), "\u{fffd}\u{fffd}\u{20ac}");
        assert_eq!(decode("&unknown; &"), "&unknown; &");
    }
}
