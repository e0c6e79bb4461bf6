//! One guarded request with every built-in stage on, next to what any proxy in front
//! of a model does at least: `serde_json` parsing the request and serializing the
//! answer, typed, in the same run.
//!
//! The guard: API keys (HMAC digests in memory), the policy authorizer, in-memory
//! request and token limits, the input scanner (with its classifier), the answer
//! validator, and audit to a background sink (JSON lines to nowhere). Receipts off.
//! A 4 KiB prompt of prose and a 4 KiB answer of prose.
//!
//! Target (issue #19): the guarded request at most 3x the parse and serialize.
//!
//! ```text
//! cargo bench --bench request
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use inference_guard::openai::{ChatCompletionRequest, ChatCompletionResponse};
use inference_guard::*;

#[path = "fixtures/chat.rs"]
mod chat;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "fixtures/request.rs"]
mod fixture;
use fixture::{PROSE, bodies, conversation, full_guard, full_guard_with};
use inference_guard::scan::Scanner;

fn bench(c: &mut Criterion) {
    let (req_json, resp_json) = bodies();
    let wire: ChatCompletionRequest = serde_json::from_str(&req_json).unwrap();
    let typed_answer: ChatCompletionResponse = serde_json::from_str(&resp_json).unwrap();
    let (guard, key) = full_guard();
    let request = wire.to_guard_request(
        Credentials::from_api_key(key.expose()),
        "/v1/chat/completions",
    );
    let answer =
        GuardResponse::new(common::repeat_to(PROSE, 4096)).with_usage(Usage::new(1030, 1027));
    // The guard passes this request and this answer: the bench measures the pass.
    let adm = guard.check_request(request.clone()).expect("admitted");
    assert!(adm.findings().is_empty(), "{:?}", adm.findings());
    adm.check_response(answer.clone()).expect("answer passes");

    let mut g = c.benchmark_group("request_4k");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("serde_json parse request + serialize answer (typed)", |b| {
        b.iter(|| {
            let r: ChatCompletionRequest = serde_json::from_str(black_box(&req_json)).unwrap();
            let out = serde_json::to_vec(black_box(&typed_answer)).unwrap();
            black_box((r, out.len()))
        })
    });
    g.bench_function("guarded request, every built-in stage", |b| {
        b.iter_batched(
            || (request.clone(), answer.clone()),
            |(req, ans)| black_box(common::pass(&guard, req, ans)),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // A chat at its tenth turn: the request carries the nine earlier questions and
    // answers. The scanner's cache of earlier messages serves what it read at the
    // earlier turns; without it every turn reads the whole conversation again.
    let turn = conversation(10);
    let turn = turn.with_credentials(Credentials::from_api_key(key.expose()));
    let bytes: usize = turn.messages().iter().map(|m| m.content().len()).sum();
    let wire = serde_json::json!({"model": "demo-small", "messages": turn.messages().iter()
        .map(|m| serde_json::json!({"role": m.role().as_str(), "content": m.content()}))
        .collect::<Vec<_>>()})
    .to_string();
    let short = GuardResponse::new(common::repeat_to(PROSE, 1024)).with_usage(Usage::new(900, 250));
    let typed_short: ChatCompletionResponse = serde_json::from_str(
        &serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "demo-small", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": short.text()}, "finish_reason": "stop"}]})
        .to_string(),
    )
    .unwrap();
    let (uncached, key2) = full_guard_with(Scanner::builder().history_cache(0).build());
    let turn_uncached = turn
        .clone()
        .with_credentials(Credentials::from_api_key(key2.expose()));
    // The turns before, as the cache saw them.
    for n in 1..10 {
        let earlier = conversation(n).with_credentials(Credentials::from_api_key(key.expose()));
        common::pass(&guard, earlier, short.clone());
    }
    let mut g = c.benchmark_group(format!("conversation_turn_10_{}_bytes", bytes));
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("serde_json parse request + serialize answer (typed)", |b| {
        b.iter(|| {
            let r: ChatCompletionRequest = serde_json::from_str(black_box(&wire)).unwrap();
            let out = serde_json::to_vec(black_box(&typed_short)).unwrap();
            black_box((r, out.len()))
        })
    });
    g.bench_function("guarded request, earlier messages from the cache", |b| {
        b.iter_batched(
            || (turn.clone(), short.clone()),
            |(req, ans)| black_box(common::pass(&guard, req, ans)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("guarded request, cache off (every message read)", |b| {
        b.iter_batched(
            || (turn_uncached.clone(), short.clone()),
            |(req, ans)| black_box(common::pass(&uncached, req, ans)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
