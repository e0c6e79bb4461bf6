//! Arbitrary text and spans through `redact`. Properties: no panic; the result is
//! valid UTF-8 (by construction of `String`); no byte of a redacted span that lies on
//! character boundaries survives in place (the text around it is kept in order).
#![no_main]

use inference_guard::{Action, Category, Finding, Location, Severity, redact};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let n = usize::from(data[0] % 8);
    let (spans, text) = data[1..].split_at((n * 2).min(data.len() - 1));
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let findings: Vec<Finding> = spans
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| {
            let (a, b) = (usize::from(c[0]), usize::from(c[1]));
            Finding::new(
                "f",
                Category::Secret,
                Severity::High,
                Location::Output,
                a.min(b)..a.max(b),
            )
            .with_action(Action::Redact)
            .with_replacement("#")
        })
        .collect();
    let out = redact(text, &findings);
    // Spans are clamped to the text and widened to character boundaries; the text
    // before the first redacted span is kept verbatim and the replacement follows it.
    let first = findings
        .iter()
        .map(|f| f.span())
        .filter(|s| s.start < s.end && s.start < text.len())
        .map(|s| {
            (0..=s.start)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0)
        })
        .min();
    match first {
        Some(start) => {
            assert!(out.starts_with(&text[..start]));
            assert_eq!(out.as_bytes().get(start), Some(&b'#'));
        }
        None => assert_eq!(out, text),
    }
});
