//! Arbitrary text through the input scanner: no panic, every span inside the text and
//! on character boundaries, and redacting the findings leaves valid text.
#![no_main]

use std::sync::OnceLock;

use inference_guard::scan::Scanner;
use inference_guard::{Action, Location, redact};
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
    let redacted: Vec<_> = findings
        .into_iter()
        .map(|f| f.with_action(Action::Redact))
        .collect();
    let _ = redact(&text, &redacted);
});
