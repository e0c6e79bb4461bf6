//! The ONNX Runtime classifier stage (feature `onnx`) on the tiny generated model
//! (`eval "$(bash .ci/onnx-fixtures)"` first), at 1 KiB and 16 KiB of prose:
//!
//! - `direct`: the same work done by hand with `tokenizers` and `ort` on the bench
//!   thread: tokenize, cut the same windows, one inference per batch of 8 windows,
//!   softmax, the worst window per label;
//! - `stage`: the guard's input stage, [`InputScanner::scan`] awaited: the text
//!   copied to a worker, the same work there, findings mapped, the result handed
//!   back (the stage machinery is `stage` / `direct`; target at most 1.10);
//! - `stage_spinning_waiter`: the same, awaited by a thread that polls instead of
//!   sleeping: the machinery without the operating system's wake-up of the waiter;
//! - `gated_out`: the stage with an uncertain band that this text falls outside:
//!   the built-in classifier's score and no model call.
//!
//! The tiny model makes inference nearly free, so the ratio shows the machinery at
//! its most visible; with a real model (milliseconds a window) it shrinks.
//!
//! ONNX Runtime allows one environment per process and `ort` has no handle to an
//! existing one, so `direct` runs in a child process of this bench (the same binary
//! and arguments, `IG_ONNX_BENCH_PART=direct`), just before the stage benches, in
//! the same run.
#![allow(missing_docs)] // the criterion macros generate an undocumented pub fn

use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inference_guard::scan::{Classifier, OnnxClassifier};
use inference_guard::{Category, GuardRequest, InputScanner, Principal, Role};
use ort::session::Session;
use ort::value::Tensor;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{block_on, repeat_to};

const PROSE: &str = "The committee met on Tuesday to review the quarterly figures. Revenue in the \
northern region grew while costs stayed flat, and the team agreed to visit the two largest \
accounts before the end of the month. Several members asked for a clearer summary of the \
assumptions behind the forecast, and the chair promised a short note by Friday. ";

const MAX_TOKENS: usize = 512;
const OVERLAP: usize = 64;
const BATCH: usize = 8;

/// `block_on` for a waiter that never sleeps: what the stage costs without the
/// operating system's wake-up of a parked thread (tens of microseconds on a virtual
/// machine; an async runtime's busy workers avoid it, idle ones pay it).
fn spin_on<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::hint::spin_loop();
    }
}

/// The stage's work by hand: [CLS] window [SEP], padded batches, softmax, worst.
fn direct(tok: &tokenizers::Tokenizer, session: &mut Session, text: &str) -> [f32; 3] {
    let enc = tok.encode(text, false).unwrap();
    let ids = enc.get_ids();
    let offsets = enc.get_offsets();
    let (cls, sep) = (2i64, 3i64);
    let content = MAX_TOKENS - 2;
    let step = content - OVERLAP;
    let mut windows = Vec::new();
    let mut k = 0;
    while k == 0 || (k - 1) * step + content < ids.len() {
        let start = k * step;
        windows.push(start..(start + content).min(ids.len()));
        k += 1;
    }
    let mut worst = [0f32; 3];
    let mut span = 0..0;
    for chunk in windows.chunks(BATCH) {
        let len = chunk.iter().map(|r| r.len()).max().unwrap() + 2;
        let mut input = Vec::with_capacity(chunk.len() * len);
        let mut mask = Vec::with_capacity(chunk.len() * len);
        for r in chunk {
            input.push(cls);
            input.extend(ids[r.clone()].iter().map(|&x| i64::from(x)));
            input.push(sep);
            input.resize(input.len() + len - r.len() - 2, 0);
            mask.resize(mask.len() + r.len() + 2, 1i64);
            mask.resize(mask.len() + len - r.len() - 2, 0);
        }
        let shape = [chunk.len(), len];
        let out = session
            .run(ort::inputs![
                "input_ids" => Tensor::from_array((shape, input)).unwrap(),
                "attention_mask" => Tensor::from_array((shape, mask)).unwrap()
            ])
            .unwrap();
        let (_, logits) = out["logits"].try_extract_tensor::<f32>().unwrap();
        for (row, r) in logits.chunks(3).zip(chunk) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|z| (z - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for i in 1..3 {
                if e[i] / sum > worst[i] {
                    worst[i] = e[i] / sum;
                    span = offsets[r.start].0..offsets[r.end - 1].1;
                }
            }
        }
    }
    black_box(span);
    worst
}

fn bench(c: &mut Criterion) {
    let (Some(dir), Some(runtime)) = (
        std::env::var_os("IG_ONNX_FIXTURES"),
        std::env::var_os("ORT_DYLIB_PATH"),
    ) else {
        // Said and skipped on a developer machine; a failure under CI.
        let msg = "the onnx bench needs `eval \"$(bash .ci/onnx-fixtures)\"` first (IG_ONNX_FIXTURES, ORT_DYLIB_PATH)";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    };
    let dir = PathBuf::from(dir);
    let model = dir.join("tiny.onnx");
    let tokenizer = dir.join("tokenizer.json");
    let builder = || {
        let mut b = OnnxClassifier::builder(&model, &tokenizer);
        b.label(1, Category::PromptInjection, 0.5, 0.9)
            .label(2, Category::Jailbreak, 0.5, 0.9)
            .max_tokens(MAX_TOKENS)
            .overlap(OVERLAP)
            .batch(BATCH);
        b
    };
    let sizes = [1024, 16 * 1024];
    let mut g = c.benchmark_group("onnx");
    if std::env::var_os("IG_ONNX_BENCH_PART").is_some_and(|p| p == "direct") {
        let env = ort::init_from(&runtime).unwrap().build().unwrap();
        let mut session = Session::builder(&env)
            .unwrap()
            .with_intra_threads(1)
            .unwrap()
            .commit_from_file(&model)
            .unwrap();
        let tok = tokenizers::Tokenizer::from_file(&tokenizer).unwrap();
        for size in sizes {
            let text = repeat_to(PROSE, size);
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_with_input(BenchmarkId::new("direct", size), &text, |b, t| {
                b.iter(|| black_box(direct(&tok, &mut session, black_box(t))))
            });
        }
        g.finish();
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .env("IG_ONNX_BENCH_PART", "direct")
        .status()
        .unwrap();
    assert!(child.success(), "the direct part failed");

    let stage = builder().build().unwrap();
    // A band this prose falls below: the built-in score, no model call.
    let gated = builder()
        .only_when_uncertain(Classifier::builtin(), 0.5, 0.95)
        .build()
        .unwrap();
    for size in sizes {
        let text = repeat_to(PROSE, size);
        let request = GuardRequest::new("m").with_message(Role::User, text.clone());
        let principal = Principal::anonymous();
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("stage", size), &request, |b, r| {
            b.iter(|| {
                black_box(
                    block_on(
                        stage.scan(inference_guard::StageContext::new(&principal, black_box(r))),
                    )
                    .unwrap(),
                )
            })
        });
        g.bench_with_input(
            BenchmarkId::new("stage_spinning_waiter", size),
            &request,
            |b, r| {
                b.iter(|| {
                    black_box(
                        spin_on(
                            stage
                                .scan(inference_guard::StageContext::new(&principal, black_box(r))),
                        )
                        .unwrap(),
                    )
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("gated_out", size), &request, |b, r| {
            b.iter(|| {
                black_box(
                    block_on(
                        gated.scan(inference_guard::StageContext::new(&principal, black_box(r))),
                    )
                    .unwrap(),
                )
            })
        });
    }
    g.finish();
    assert_eq!(
        gated.stats().model_texts,
        0,
        "the prose fell inside the band"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
