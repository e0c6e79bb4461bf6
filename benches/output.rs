//! Output validation: whole-answer throughput next to input scanning of the same text,
//! and a 4 KiB answer streamed in 16-byte and in 4-byte deltas next to the same
//! answer validated whole, through the guard, in the same run; the same answer as
//! OpenAI server-sent events through the `SseGuard`, next to `serde_json` reading
//! and writing each event.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inference_guard::output::AnswerValidator;
use inference_guard::scan::Scanner;
use inference_guard::*;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "fixtures/sse.rs"]
mod sse;
use common::repeat_to;

const ANSWER: &str = "Thanks for reaching out! Your order **#4421** shipped on Tuesday with the \
standard carrier and should arrive within three to five business days. You can follow it on \
the [tracking page](https://docs.northwind.test/track) at any time.\n\n\
1. Keep the original packaging until the item arrives.\n\
2. If something is missing, reply to this message with a photo.\n\
3. Returns are free within thirty days; see `returns.md` for the steps.\n\n\
```python\nfor item in order.items:\n    print(item.name, item.quantity)\n```\n\n\
Is there anything else I can help you with today? ";

fn guard() -> InferenceGuard {
    let v = AnswerValidator::builder()
        .allow_hosts(["docs.northwind.test"])
        .build()
        .unwrap();
    common::open_guard(|b| {
        b.output_validator(v);
    })
}

fn request() -> GuardRequest {
    GuardRequest::new("m")
        .with_message(
            Role::System,
            "You are the support assistant of Northwind Traders.",
        )
        .with_message(Role::User, "Where is my order?")
}

fn bench(c: &mut Criterion) {
    let g = guard();
    let validator = AnswerValidator::builder()
        .allow_hosts(["docs.northwind.test"])
        .build()
        .unwrap();
    let scanner = Scanner::new();
    let principal = Principal::anonymous();
    let req = request();
    let mut grp = c.benchmark_group("output");
    for size in [4 * 1024, 64 * 1024] {
        let text = repeat_to(ANSWER, size);
        let response = GuardResponse::new(text.clone());
        grp.throughput(Throughput::Bytes(text.len() as u64));
        grp.bench_with_input(
            BenchmarkId::new("validate_whole", size),
            &response,
            |b, r| {
                b.iter(|| {
                    let cx = StageContext::new(&principal, &req);
                    black_box(validator.validate(cx, black_box(r)).into_ready())
                })
            },
        );
        grp.bench_with_input(
            BenchmarkId::new("input_scan_same_text", size),
            &text,
            |b, t| b.iter(|| black_box(scanner.scan_text(black_box(t), Location::Output))),
        );
    }
    // Through the guard: one 4 KiB answer, whole versus 16-byte deltas.
    let text = repeat_to(ANSWER, 4 * 1024);
    grp.throughput(Throughput::Bytes(text.len() as u64));
    grp.bench_function("guard_whole_4096", |b| {
        b.iter(|| {
            let adm = g.check_request(request()).unwrap();
            black_box(adm.check_response(GuardResponse::new(text.clone())).is_ok())
        })
    });
    // 16-byte deltas, and 4-byte ones (about a token each: what a model streams).
    for delta in [16, 4] {
        grp.bench_function(format!("guard_stream_{delta}B_deltas_4096"), |b| {
            b.iter(|| stream(&g, &text, delta))
        });
    }
    grp.finish();

    // The same answer as an OpenAI server-sent-event stream (about a token per
    // event, in the upstream's chunk shape) through the `SseGuard` a gateway relays
    // with, next to `serde_json` reading and writing each event (typed) in the same
    // run: what any proxy that rebuilds events does at least.
    let events = sse::events(&text, 4);
    let mut grp = c.benchmark_group(format!("sse_{}_events", events.len()));
    grp.throughput(Throughput::Bytes(text.len() as u64));
    grp.bench_function("serde_json parse + serialize each event (typed)", |b| {
        b.iter(|| {
            let mut n = 0;
            for e in &events {
                let data = &e.as_bytes()[6..e.len() - 2];
                if data == b"[DONE]" {
                    continue;
                }
                let c: openai::ChatCompletionChunk = serde_json::from_slice(data).unwrap();
                n += serde_json::to_vec(&c).unwrap().len();
            }
            black_box(n)
        })
    });
    grp.bench_function("SseGuard, every event", |b| {
        b.iter(|| {
            let adm = g.check_request(request().with_stream(true)).unwrap();
            let mut sse = SseGuard::new(adm.stream());
            let mut n = 0;
            for e in &events {
                n += sse.push(black_box(e.as_bytes())).len();
            }
            black_box(n)
        })
    });
    grp.finish();

    // A 1 KiB answer to a request whose system prompt is 4 KiB (operators' prompts
    // run from one to several KiB): the prompt's six-word runs kept per caller
    // (default), or hashed again for every request.
    let caller = Principal::builder("svc-support", CredentialKind::ApiKey).build();
    let long = long_system_prompt();
    let req = GuardRequest::new("m")
        .with_message(Role::System, long.as_str())
        .with_message(Role::User, "Where is my order?");
    let answer = GuardResponse::new(repeat_to(ANSWER, 1024));
    let mut grp = c.benchmark_group(format!("output_system_prompt_{}", long.len()));
    for (name, cache) in [("kept per caller", 256), ("hashed per request", 0)] {
        let v = AnswerValidator::builder()
            .allow_hosts(["docs.northwind.test"])
            .reference_cache(cache)
            .build()
            .unwrap();
        grp.bench_function(format!("validate_1024, system prompt {name}"), |b| {
            b.iter(|| {
                let cx = StageContext::new(&caller, &req);
                black_box(v.validate(cx, black_box(&answer)).into_ready())
            })
        });
    }
    let short = request();
    grp.bench_function("validate_1024, one-line system prompt", |b| {
        b.iter(|| {
            let cx = StageContext::new(&caller, &short);
            black_box(validator.validate(cx, black_box(&answer)).into_ready())
        })
    });
    grp.finish();
}

/// A support desk's system prompt of about 4 KiB: numbered rules, each its own.
fn long_system_prompt() -> String {
    let topics = [
        "refunds for damaged items",
        "orders that have not shipped",
        "changes to a delivery address",
        "gift cards and store credit",
        "warranty claims on electronics",
        "bulk orders from businesses",
        "missing items in a parcel",
        "returns without a receipt",
        "price matching requests",
        "subscription cancellations",
        "loyalty points that did not post",
        "deliveries left with a neighbour",
        "international shipping and customs",
        "orders paid twice by mistake",
        "accessibility requests for the website",
        "complaints about a courier",
    ];
    let mut p = String::from(
        "You are the support assistant of Northwind Traders. Answer in the customer's \
         language, keep a friendly tone, and never promise what the rules below do not allow.\n",
    );
    for (i, t) in topics.iter().enumerate() {
        p.push_str(&format!(
            "{}. For {t}: check the order number first, quote the policy page for {t}, offer \
             the option the customer is entitled to, and hand over to a person when the \
             customer asks twice or the amount is above {} euros.\n",
            i + 1,
            100 * (i + 2)
        ));
    }
    p
}

/// Streams `text` through the guard in deltas of `delta` bytes (widened to
/// character boundaries); returns the bytes released.
fn stream(g: &InferenceGuard, text: &str, delta: usize) -> usize {
    let mut s = g
        .check_request(request().with_stream(true))
        .unwrap()
        .stream();
    let mut sent = 0;
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + delta).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        sent += s.push(&text[at..end]).unwrap().len();
        at = end;
    }
    sent += s.finish(None).unwrap().len();
    black_box(sent)
}

criterion_group!(benches, bench);
criterion_main!(benches);
