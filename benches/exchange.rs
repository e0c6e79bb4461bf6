//! The HTTP exchange on the request path, without sockets: a 4 KiB chat request
//! through `Exchange::begin` + `admit` and its 4 KiB answer through
//! `Admitted::answer`, next to `serde_json` parsing the request and serializing the
//! answer in the same run (what any proxy in front of a model does at least), with
//! trivial stages (the exchange's own cost) and with the demo gateway's stages (input
//! scanner with pseudonyms, answer validator). The answer streamed as OpenAI chunks
//! of about a token through the exchange's `SseRelay`, next to the `SseGuard` it
//! drives.
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
#[path = "fixtures/sse.rs"]
mod sse;

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
    Exchange::new(guard(full), ExchangeConfig::default())
}

fn guard(full: bool) -> InferenceGuard {
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
    b.build().unwrap()
}

fn round_trip(ex: &Exchange, req: &[u8], answer: &[u8]) -> usize {
    let admitted = admit(ex, req);
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

    // The same answer streamed: OpenAI chunks of about a token, relayed by the
    // exchange's `SseRelay` (what the tower and actix adapters drive), next to the
    // `SseGuard` it wraps fed the same events.
    let events = sse::events(&format!("You said: {}", prompt()), 4);
    let stream_req = {
        let mut v: serde_json::Value = serde_json::from_slice(&req).unwrap();
        v["stream"] = serde_json::Value::Bool(true);
        serde_json::to_vec(&v).unwrap()
    };
    let mut g = c.benchmark_group(format!("exchange_stream_{}_events", events.len()));
    let plain = guard(false);
    g.bench_function("SseGuard, every event", |b| {
        b.iter(|| {
            let req = GuardRequest::new("demo-small")
                .with_credentials(Credentials::from_bearer("bench-token"))
                .with_message(Role::User, "hi")
                .with_stream(true);
            let mut sse = SseGuard::new(plain.check_request(req).unwrap().stream());
            black_box(
                events
                    .iter()
                    .map(|e| sse.push(e.as_bytes()).len())
                    .sum::<usize>(),
            )
        });
    });
    g.bench_function("SseRelay, every event", |b| {
        b.iter(|| black_box(relay(&trivial, &stream_req, &events)));
    });
    g.finish();
}

fn admit(ex: &Exchange, req: &[u8]) -> inference_guard::exchange::Admitted {
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
    once(ex.admit(pending, async { Ok::<_, ErrorResponse>(body) }, None)).unwrap()
}

/// Relays `events` (one upstream chunk each) through the exchange; the bytes sent.
fn relay(ex: &Exchange, req: &[u8], events: &[String]) -> usize {
    let mut relay = admit(ex, req).relay();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut next = events.iter();
    let mut sent = 0;
    loop {
        let upstream = |_: &mut std::task::Context<'_>| {
            std::task::Poll::Ready(next.next().map(|e| Ok::<_, ()>(e.as_bytes())))
        };
        match relay.poll_relay(&mut cx, upstream) {
            std::task::Poll::Ready(Some(out)) => sent += out.len(),
            std::task::Poll::Ready(None) => return sent,
            std::task::Poll::Pending => panic!("a trivial stage waited"),
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
