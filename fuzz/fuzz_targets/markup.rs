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
    let mut o = comrak::Options::default();
    o.extension.strikethrough = true;
    o.extension.table = true;
    o.extension.autolink = true;
    o.extension.tasklist = true;
    o.extension.footnotes = true;
    let html = comrak::markdown_to_html(md, &o);
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
});
