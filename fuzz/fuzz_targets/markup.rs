//! The markdown, HTML and URL path of the answer validator on arbitrary answers.
//! Properties: no panic; what the validator releases is clean, so validating it
//! again finds no image, link, script URL, markup or credential to remove (a
//! rewrite never builds a new construct out of the pieces it leaves, and never
//! releases a credential it was to mask inside a construct it rewrote).
//!
//! A second renderer reads what was released: every image that `comrak` (a port
//! of GitHub's cmark-gfm, with its extensions) renders loads from a place the
//! validator allows (its own host or a relative URL): where two markdown readers
//! disagree on what is an image, the validator must not be the one that missed it.
//!
//! The same renderer with raw HTML on (`comrak`'s unsafe option, as a site that
//! trusts its markdown renders it), and `pulldown-cmark` (the validator's own
//! reader, which passes raw HTML through), write no dangerous element, no event
//! handler and no URL loaded from elsewhere without a click.
//!
//! The first byte, when odd, puts an AWS access key into the answer at a place it
//! chooses (the fuzzer would seldom write one).
#![no_main]

use std::sync::OnceLock;

use inference_guard::output::AnswerValidator;
use inference_guard::*;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

const KEY: &str = "AKIAZ4QW7RTY2UIOPL3M";

fn guard() -> &'static InferenceGuard {
    static G: OnceLock<InferenceGuard> = OnceLock::new();
    G.get_or_init(|| {
        let v = AnswerValidator::builder()
            .allow_hosts(["docs.example.com"])
            .build()
            .unwrap();
        common::open_guard(|b| {
            b.output_validator(v);
        })
    })
}

/// The `src` of every image `comrak` renders in `md` (raw HTML is omitted by its
/// safe renderer: the validator's HTML rules are the `markup` property above).
fn comrak_images(md: &str) -> Vec<String> {
    let html = comrak_html(md, false);
    html.match_indices("<img src=\"")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            let src = &rest[..rest.find('"').unwrap_or(rest.len())];
            src.replace("&quot;", "\"")
                .replace("&#x27;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
        .collect()
}

/// Elements that run script, load documents or change how the page behaves: the
/// validator's list (`src/output/markup.rs`).
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

/// Attributes whose URL a browser loads without a click (the validator's list).
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

/// `&amp;`, `&quot;`, `&#39;`, `&lt;`, `&gt;` and numeric references decoded (what
/// comrak writes, and what an answer's raw HTML may hold).
fn decode(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
            .map_or(rest.len(), |e| e + 1);
        let name = &rest[1..end];
        let c = match name {
            "amp" => Some('&'),
            "quot" => Some('"'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "colon" => Some(':'),
            "Tab" => Some('\t'),
            "NewLine" => Some('\n'),
            _ => name
                .strip_prefix("#x")
                .or_else(|| name.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end..];
                rest = rest.strip_prefix(';').unwrap_or(rest);
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What `comrak`, rendering raw HTML (its unsafe option, as a site that trusts
/// its markdown does), writes that the validator removes: a dangerous element, an
/// event handler, or a URL loaded without a click from elsewhere. Tags are read as
/// a browser reads them, roughly: comments and other `<!`/`<?` constructs are
/// skipped, quoted values may hold `>`.
fn comrak_raw_html(md: &str) -> Vec<String> {
    bad_html(&comrak_html(md, true))
}

/// `md` rendered by `comrak` with GitHub's extensions, raw HTML passed through
/// when `raw`.
fn comrak_html(md: &str, raw: bool) -> String {
    let mut o = comrak::Options::default();
    o.extension.strikethrough = true;
    o.extension.table = true;
    o.extension.autolink = true;
    o.extension.tasklist = true;
    o.extension.footnotes = true;
    o.render.r#unsafe = raw;
    comrak::markdown_to_html(md, &o)
}

/// The same for `pulldown-cmark`'s HTML (the validator's own reader, with its
/// extensions), which passes raw HTML through.
fn pulldown_raw_html(md: &str) -> Vec<String> {
    use pulldown_cmark::{Options, Parser};
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, Parser::new_ext(md, opts));
    bad_html(&html)
}

/// What in rendered `html` the validator removes: a dangerous element, an event
/// handler, or a URL loaded without a click from elsewhere.
fn bad_html(html: &str) -> Vec<String> {
    let b = html.as_bytes();
    let mut bad = Vec::new();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'<') {
        let lt = i + off;
        i = lt + 1;
        if html[lt..].starts_with("<!--") {
            i = html[lt + 4..]
                .find("-->")
                .map_or(b.len(), |e| lt + 4 + e + 3);
            continue;
        }
        if matches!(b.get(lt + 1), Some(b'!' | b'?')) {
            i = html[lt..].find('>').map_or(b.len(), |e| lt + e + 1);
            continue;
        }
        let end_tag = b.get(lt + 1) == Some(&b'/');
        let s = lt + 1 + usize::from(end_tag);
        if !b.get(s).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        let mut j = s;
        while j < b.len() && !matches!(b[j], b'\t' | b'\n' | b'\x0c' | b'\r' | b' ' | b'/' | b'>') {
            j += 1;
        }
        let name = html[s..j].to_ascii_lowercase();
        if DANGEROUS.contains(&name.as_str()) {
            bad.push(format!("<{name}>"));
        }
        // Attributes.
        loop {
            while j < b.len() && matches!(b[j], b'\t' | b'\n' | b'\x0c' | b'\r' | b' ' | b'/') {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' {
                break;
            }
            let a = j;
            j += 1;
            while j < b.len()
                && !matches!(
                    b[j],
                    b'\t' | b'\n' | b'\x0c' | b'\r' | b' ' | b'/' | b'>' | b'='
                )
            {
                j += 1;
            }
            let attr = html[a..j].to_ascii_lowercase();
            while j < b.len() && matches!(b[j], b'\t' | b'\n' | b'\x0c' | b'\r' | b' ') {
                j += 1;
            }
            let mut value = String::new();
            if b.get(j) == Some(&b'=') {
                j += 1;
                while j < b.len() && matches!(b[j], b'\t' | b'\n' | b'\x0c' | b'\r' | b' ') {
                    j += 1;
                }
                match b.get(j) {
                    Some(&q @ (b'"' | b'\'')) => {
                        let e = b[j + 1..]
                            .iter()
                            .position(|&c| c == q)
                            .map_or(b.len(), |e| j + 1 + e);
                        value = decode(&html[j + 1..e]);
                        j = (e + 1).min(b.len());
                    }
                    _ => {
                        let e = b[j..]
                            .iter()
                            .position(|&c| {
                                matches!(c, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ' | b'>')
                            })
                            .map_or(b.len(), |e| j + e);
                        value = decode(&html[j..e]);
                        j = e;
                    }
                }
            }
            if end_tag {
                continue;
            }
            if attr.len() > 2 && attr.starts_with("on") {
                bad.push(format!("<{name} {attr}>"));
            }
            if attr == "style" {
                let v = value.to_ascii_lowercase();
                if v.contains("expression(") || v.contains("url(") || v.contains("script:") {
                    bad.push(format!("<{name} style={value:?}>"));
                }
            }
            if LOADS.contains(&attr.as_str()) {
                let urls: Vec<&str> = if attr.ends_with("srcset") {
                    value
                        .split(',')
                        .filter_map(|c| c.split_whitespace().next())
                        .collect()
                } else {
                    vec![value.trim()]
                };
                for u in urls {
                    if !image_allowed(u) {
                        bad.push(format!("<{name} {attr}={u:?}>"));
                    }
                }
            }
        }
        i = j.max(i);
    }
    bad
}

/// Whether an image at `src` loads from where the fuzz target's validator allows:
/// the page itself (a relative URL, or none: comrak's safe renderer blanks a
/// script URL) or `docs.example.com`.
fn image_allowed(src: &str) -> bool {
    // A URL with a scheme as on a page of another scheme (`https:evil.test` is
    // a path only on an `https:` page).
    let base = url::Url::parse("https://relative.invalid/").unwrap();
    let Ok(u) = url::Url::parse(src).or_else(|_| base.join(src)) else {
        return true; // a browser loads nothing
    };
    if !matches!(u.scheme(), "http" | "https" | "ftp" | "ws" | "wss") {
        return u.scheme() != "data";
    }
    matches!(u.host_str(), Some("relative.invalid" | "docs.example.com"))
}

fn released(answer: &str) -> Option<(String, Vec<Finding>)> {
    let c = guard()
        .check_request(common::user("hi"))
        .unwrap()
        .check_response(GuardResponse::new(answer))
        .ok()?;
    Some((c.response().text().to_owned(), c.findings().to_vec()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut answer = text.to_owned();
    if first & 1 == 1 {
        let mut at = usize::from(first >> 1) * text.len() / 128;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        answer.insert_str(at, KEY);
    }
    let Some((once, _)) = released(&answer) else {
        return;
    };
    let Some((twice, findings)) = released(&once) else {
        panic!("released text is blocked when validated again: {once:?}");
    };
    let removed: Vec<&str> = findings
        .iter()
        .filter(|f| f.action() != Action::Flag)
        .filter(|f| {
            matches!(
                f.category(),
                Category::UnsafeMarkup | Category::Exfiltration | Category::Secret
            )
        })
        .map(Finding::rule_id)
        .collect();
    assert!(
        removed.is_empty(),
        "released text still has {removed:?}: {once:?} -> {twice:?}"
    );
    for src in comrak_images(&once) {
        assert!(image_allowed(&src), "comrak loads {src:?} from {once:?}");
    }
    let raw = comrak_raw_html(&once);
    assert!(
        raw.is_empty(),
        "comrak's raw HTML has {raw:?} from {once:?}"
    );
    let raw = pulldown_raw_html(&once);
    assert!(
        raw.is_empty(),
        "pulldown-cmark's HTML has {raw:?} from {once:?}"
    );
});
