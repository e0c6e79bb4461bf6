//! The HTTP exchange on the request path, without sockets: a 4 KiB chat request
//! through `Exchange::begin` + `admit` and its 4 KiB answer through
//! `Admitted::answer`, next to `serde_json` parsing the request and serializing the
//! answer in the same run (what any proxy in front of a model does at least), with
//! trivial stages (the exchange's own cost) and with the demo gateway's stages (input
//! scanner with pseudonyms, answer validator).
//!
//! ```text
//! cargo bench --bench exchange
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::future::Future;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use inference_guard::exchange::{ErrorResponse, Exchange, ExchangeConfig};
use inference_guard::output::{AnswerValidator, Canary};
use inference_guard::scan::{Redaction, Scanner};
use inference_guard::*;

#[path = "../tests/common/mod.rs"]
mod common;

/// In-memory stages decide in one poll.
fn once<F: Future>(f: F) -> F::Output {
    common::poll_once(f).expect("a stage did not decide in one poll")
}

fn prompt() -> String {
    let sentence = "The quarterly review covered revenue by region, the hiring plan for the \
                    support team and the migration of the billing system to the new cluster. ";
    let mut p = String::new();
    while p.len() < 4096 {
        p.push_str(sentence);
    }
    p.truncate(4096);
    p
}

fn bodies() -> (Vec<u8>, Vec<u8>) {
    let p = prompt();
    let req = serde_json::json!({"model": "demo-small", "messages": [
        {"role": "system", "content": "You are a helpful assistant for the finance team."},
        {"role": "user", "content": p}]});
    let answer = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
        "model": "demo-small", "choices": [{"index": 0, "message": {"role": "assistant",
        "content": format!("You said: {p}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1030, "completion_tokens": 1027, "total_tokens": 2057}});
    (
        serde_json::to_vec(&req).unwrap(),
        serde_json::to_vec(&answer).unwrap(),
    )
}

fn exchange(full: bool) -> Exchange {
    let principal = Principal::builder("svc-bench", CredentialKind::ApiKey).build();
    let mut b = InferenceGuard::builder();
    b.identity(verifier_fn(move |_r| Ok(principal.clone())))
        .authorize_all()
        .audit_sink(NoopSink);
    if full {
        b.input_scanner(
            Scanner::builder()
                .redaction(Redaction::pseudonymize())
                .build(),
        )
        .output_validator(
            AnswerValidator::builder()
                .allow_hosts(["docs.example.com"])
                .canary(Canary::new("ig-canary-demo7h2k9q4m3x8wp5").unwrap())
                .build()
                .unwrap(),
        );
    }
    Exchange::new(b.build().unwrap(), ExchangeConfig::default())
}

fn round_trip(ex: &Exchange, req: &[u8], answer: &[u8]) -> usize {
    let headers = [
        ("authorization", &b"Bearer bench-token"[..]),
        ("content-type", b"application/json"),
    ];
    let pending = ex
        .begin(
            "POST",
            "/v1/chat/completions",
            headers.iter().map(|(n, v)| (*n, *v)),
        )
        .unwrap()
        .unwrap();
    let body = req.to_vec();
    let admitted = once(ex.admit(pending, async { Ok::<_, ErrorResponse>(body) }, None)).unwrap();
    let forwarded = admitted.body().len();
    once(admitted.answer(answer)).unwrap().body().len() + forwarded
}

fn bench(c: &mut Criterion) {
    let (req, answer) = bodies();
    let mut g = c.benchmark_group("exchange_4k");
    g.bench_function("serde_json parse request + serialize answer", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&req)).unwrap();
            let a: serde_json::Value = serde_json::from_slice(black_box(&answer)).unwrap();
            black_box(serde_json::to_vec(&v).unwrap().len() + serde_json::to_vec(&a).unwrap().len())
        });
    });
    let trivial = exchange(false);
    g.bench_function("exchange, trivial stages", |b| {
        b.iter(|| black_box(round_trip(&trivial, black_box(&req), black_box(&answer))));
    });
    let full = exchange(true);
    g.bench_function("exchange, scanner and validator", |b| {
        b.iter(|| black_box(round_trip(&full, black_box(&req), black_box(&answer))));
    });
    let scanner = Scanner::new();
    let text = prompt();
    g.bench_function("scanner alone, 4 KiB", |b| {
        b.iter(|| {
            black_box(
                scanner
                    .scan_text(black_box(&text), Location::Message(0))
                    .len(),
            )
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
