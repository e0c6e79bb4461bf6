//! Heap allocations per guarded request, counted by `dhat` (the whole bench binary
//! runs on its allocator): the request of `benches/request.rs` (every built-in stage,
//! 4 KiB prompt and answer) next to the typed `serde_json` parse and serialize of the
//! same bodies, at two numbers of requests (the count per request must not grow).
//!
//! ```text
//! cargo bench --bench allocations
//! ```

#![allow(missing_docs)]

use inference_guard::openai::{ChatCompletionRequest, ChatCompletionResponse};
use inference_guard::*;

#[path = "fixtures/chat.rs"]
#[allow(dead_code)] // the `request` bench's conversation
mod chat;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "fixtures/request.rs"]
mod fixture;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Blocks and bytes allocated by `n` runs of `f`, per run.
fn per_run(n: u64, mut f: impl FnMut()) -> (f64, f64) {
    let before = dhat::HeapStats::get();
    for _ in 0..n {
        f();
    }
    let after = dhat::HeapStats::get();
    (
        (after.total_blocks - before.total_blocks) as f64 / n as f64,
        (after.total_bytes - before.total_bytes) as f64 / n as f64,
    )
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let (req_json, resp_json) = fixture::bodies();
    let typed_answer: ChatCompletionResponse = serde_json::from_str(&resp_json).unwrap();
    let (guard, key) = fixture::full_guard();
    let wire: ChatCompletionRequest = serde_json::from_str(&req_json).unwrap();
    let request = wire.to_guard_request(
        Credentials::from_api_key(key.expose()),
        "/v1/chat/completions",
    );
    let answer = GuardResponse::new(common::repeat_to(fixture::PROSE, 4096))
        .with_usage(Usage::new(1030, 1027));
    // Warm up: first-use caches (the key's digest, the limiter's keys).
    for _ in 0..10 {
        drop(common::pass(&guard, request.clone(), answer.clone()));
    }
    println!("allocations per request (blocks, bytes):");
    for n in [100u64, 1000] {
        let (rb, rbytes) = per_run(n, || {
            let (req, ans) = (request.clone(), answer.clone());
            std::hint::black_box((req, ans));
        });
        let (gb, gbytes) = per_run(n, || {
            let (req, ans) = (request.clone(), answer.clone());
            std::hint::black_box(common::pass(&guard, req, ans));
        });
        let (sb, sbytes) = per_run(n, || {
            let r: ChatCompletionRequest = serde_json::from_str(&req_json).unwrap();
            let out = serde_json::to_vec(&typed_answer).unwrap();
            std::hint::black_box((r, out));
        });
        println!(
            "  n = {n:>4}: guarded request {:.1} blocks, {:.0} bytes (the copies of the request and answer it is given: {:.1}, {:.0}); serde_json parse + serialize {:.1}, {:.0}",
            gb - rb,
            gbytes - rbytes,
            rb,
            rbytes,
            sb,
            sbytes
        );
    }
}
