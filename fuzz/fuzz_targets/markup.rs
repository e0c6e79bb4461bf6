//! The markdown, HTML and URL path of the answer validator on arbitrary answers.
//! Properties: no panic; what the validator releases is clean, so validating it
//! again finds no image, link, script URL or markup to remove (a rewrite never
//! builds a new construct out of the pieces it leaves).
#![no_main]

use std::sync::OnceLock;

use inference_guard::output::AnswerValidator;
use inference_guard::*;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

fn guard() -> &'static InferenceGuard {
    static G: OnceLock<InferenceGuard> = OnceLock::new();
    G.get_or_init(|| {
        let v = AnswerValidator::builder()
            .allow_hosts(["docs.example.com"])
            .leaks(None)
            .build()
            .unwrap();
        common::open_guard(|b| {
            b.output_validator(v);
        })
    })
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
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((once, _)) = released(text) else {
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
                Category::UnsafeMarkup | Category::Exfiltration
            )
        })
        .map(Finding::rule_id)
        .collect();
    assert!(
        removed.is_empty(),
        "released text still has {removed:?}: {once:?} -> {twice:?}"
    );
});
