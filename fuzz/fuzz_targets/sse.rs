//! The OpenAI server-sent-event guard on arbitrary upstream bytes: raw, or chunks
//! built around arbitrary content, tool-call arguments and finish reasons, cut at
//! arbitrary places. Properties: no panic; the bytes sent do not depend on where the
//! upstream's bytes were cut; what is sent is a sequence of events whose data is
//! `[DONE]` or JSON, nothing but the receipt after `[DONE]`; every chunk sent
//! carries the guard's id and the model the caller asked for, never the upstream's.
#![no_main]

use std::sync::OnceLock;

use inference_guard::openai::ChatCompletionChunk;
use inference_guard::output::AnswerValidator;
use inference_guard::*;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

fn guard() -> &'static InferenceGuard {
    static G: OnceLock<InferenceGuard> = OnceLock::new();
    G.get_or_init(|| {
        common::open_guard(|b| {
            b.output_validator(AnswerValidator::new());
        })
    })
}

/// Upstream bytes: `data` as it is, or events built around its pieces (split at
/// `\0`), so that the fuzzer reaches the paths behind a chunk that reads.
fn upstream(data: &[u8]) -> Vec<u8> {
    let (&mode, rest) = data.split_first().unwrap_or((&0, &[]));
    if mode & 1 == 0 {
        return rest.to_vec();
    }
    let mut out = String::new();
    for (i, piece) in rest.split(|b| *b == 0).enumerate() {
        let text = String::from_utf8_lossy(piece);
        let s = serde_json::to_string(&text).unwrap_or_default();
        let delta = match (usize::from(mode >> 1) + i) % 5 {
            0 | 1 => format!(r#"{{"content":{s}}}"#),
            2 => format!(
                r#"{{"tool_calls":[{{"index":0,"id":"call_1","type":"function","function":{{"name":"f","arguments":{s}}}}}]}}"#
            ),
            3 => format!(r#"{{"role":{s}}}"#),
            _ => format!(r#"{{"content":{s}}},"finish_reason":{s}"#),
        };
        out.push_str(&format!(
            "data: {{\"id\":\"upstream-id\",\"object\":\"chat.completion.chunk\",\"created\":{i},\"model\":\"upstream-model\",\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}\n\n"
        ));
    }
    if mode & 2 == 0 {
        out.push_str("data: [DONE]\n\n");
    }
    out.into_bytes()
}

/// The bytes sent for `bytes` cut every `step` bytes, with the request id replaced.
fn relay(bytes: &[u8], step: usize) -> String {
    let adm = guard()
        .check_request(GuardRequest::new("asked-model").with_stream(true))
        .expect("an open guard admits");
    let id = adm.request_id().to_string();
    let mut sse = SseGuard::new(adm.stream());
    let mut out = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        out.extend(sse.push(piece));
    }
    out.extend(sse.close());
    String::from_utf8(out)
        .expect("what is sent is UTF-8")
        .replace(&id, "RID")
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let bytes = upstream(data);
    let whole = relay(&bytes, bytes.len());
    let cut = relay(&bytes, usize::from(step % 17) + 1);
    assert_eq!(
        whole, cut,
        "the events sent depend on where upstream's bytes were cut"
    );
    let mut done = false;
    for event in whole.split_terminator("\n\n") {
        if done {
            assert!(
                event.starts_with("event: inference_receipt\n"),
                "an event after [DONE]"
            );
            continue;
        }
        let data = event
            .strip_prefix("data: ")
            .expect("each event is a data line");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("each event is JSON");
        if v.get("error").is_some() {
            continue;
        }
        let chunk: ChatCompletionChunk =
            serde_json::from_value(v).expect("a chunk sent reads as a chunk");
        assert_eq!(chunk.id, "chatcmpl-RID");
        assert_eq!(chunk.model, "asked-model");
    }
});
