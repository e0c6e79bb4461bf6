//! Arbitrary text through the input scanner: no panic, every span inside the text and
//! on character boundaries, and the redacted text never contains a credential the
//! scanner found (when that credential occurs once in the input).
#![no_main]

use std::sync::OnceLock;

use inference_guard::scan::Scanner;
use inference_guard::{Action, Category, Location, redact};
use libfuzzer_sys::fuzz_target;

fn scanner() -> &'static Scanner {
    static S: OnceLock<Scanner> = OnceLock::new();
    S.get_or_init(Scanner::new)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let findings = scanner().scan_text(&text, Location::Message(0));
    for f in &findings {
        let s = f.span();
        assert!(
            s.start <= s.end && s.end <= text.len(),
            "span {s:?} outside {} bytes",
            text.len()
        );
        assert!(
            text.is_char_boundary(s.start) && text.is_char_boundary(s.end),
            "span {s:?} off a boundary"
        );
    }
    let secrets: Vec<String> = findings
        .iter()
        .filter(|f| *f.category() == Category::Secret && f.span().len() >= 8)
        .map(|f| text[f.span()].to_owned())
        .filter(|s| text.matches(s.as_str()).count() == 1)
        .collect();
    let redacted: Vec<_> = findings
        .into_iter()
        .map(|f| f.with_action(Action::Redact))
        .collect();
    let out = redact(&text, &redacted);
    for s in secrets {
        assert!(!out.contains(&s), "a found credential survived redaction");
    }
});
