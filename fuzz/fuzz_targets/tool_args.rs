//! Arbitrary tool-call arguments and schemas through `check_tool_arguments`.
//! Properties: no panic, and bounded time (schema patterns are size-limited);
//! arguments that are not a JSON object are reported as such and nothing else.
#![no_main]

use inference_guard::output::{ToolViolation, check_tool_arguments};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Input: "<schema>\x00<arguments>", or arguments alone.
    let (schema, args) = match text.split_once('\0') {
        Some((s, a)) => (serde_json::from_str::<serde_json::Value>(s).ok(), a),
        None => (None, text),
    };
    let out = check_tool_arguments(schema.as_ref(), args);
    let is_object = serde_json::from_str::<serde_json::Value>(args).is_ok_and(|v| v.is_object());
    if !is_object {
        assert_eq!(out, [ToolViolation::InvalidJson]);
    } else {
        assert!(!out.contains(&ToolViolation::InvalidJson));
    }
});
