//! Differential: an arbitrary answer, validated whole and streamed in arbitrary
//! chunks, must get the same verdict and the caller must receive the same text.
//! Properties: no panic; equal outcomes; a blocked stream never released text the
//! whole answer would not have released.
#![no_main]

use std::sync::OnceLock;

use inference_guard::output::{AnswerValidator, Canary};
use inference_guard::*;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

const CANARY: &str = "ig-canary-q8w7e6r5t4y3u2i1";

fn guard() -> &'static InferenceGuard {
    static G: OnceLock<InferenceGuard> = OnceLock::new();
    G.get_or_init(|| {
        let v = AnswerValidator::builder()
            .canary(Canary::new(CANARY).unwrap())
            .system_prompt("You are the assistant of a small shop; answer questions about orders and returns only.")
            .build()
            .unwrap();
        common::open_guard(|b| {
            b.output_validator(v);
        })
    })
}

fn request() -> GuardRequest {
    common::user("hi")
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let step = usize::from(data[0]).max(1);
    let Ok(text) = std::str::from_utf8(&data[1..]) else {
        return;
    };
    // Repeat short inputs so segments and cuts are exercised.
    let answer = if text.len() < 512 {
        text.repeat(1 + 3000 / (text.len() + 1))
    } else {
        text.to_owned()
    };
    let g = guard();
    let whole = g
        .check_request(request())
        .unwrap()
        .check_response(GuardResponse::new(answer.clone()))
        .map(|c| c.response().text().to_owned())
        .map_err(|r| r.status());
    let mut s = g
        .check_request(request().with_stream(true))
        .unwrap()
        .stream();
    let mut released = String::new();
    let mut streamed = Ok(());
    let mut at = 0;
    let mut k = 0usize;
    while at < answer.len() && streamed.is_ok() {
        let mut end = (at + step + (k * 7) % 13).min(answer.len());
        while !answer.is_char_boundary(end) {
            end += 1;
        }
        match s.push(&answer[at..end]) {
            Ok(t) => released.push_str(&t),
            Err(r) => streamed = Err(r.status()),
        }
        at = end;
        k += 1;
    }
    let streamed = match streamed {
        Ok(()) => s
            .finish(None)
            .map(|t| {
                released.push_str(&t);
                released.clone()
            })
            .map_err(|r| r.status()),
        Err(e) => Err(e),
    };
    assert_eq!(whole, streamed);
});
