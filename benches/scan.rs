//! Input scanning throughput (`Throughput::Bytes`) next to two baselines over the same
//! text in the same run: `memchr::memmem` with a needle that never occurs (what the
//! machine reads at), and `aho-corasick` searching the scanner's own anchor set
//! (`Scanner::anchors`, case-insensitive, every occurrence: the least a scanner of
//! such rules does). Clean English prose, text dense with near-misses, and
//! adversarial input (repeated anchors and rule prefixes) at 4 KiB, 64 KiB and
//! 1 MiB, to show where the scanner stands and that it stays linear.
//!
//! A text repeated to a size is the same few sentences again: the regex engines'
//! lazy DFAs warm up on it and stay warm, which real traffic does not allow. So,
//! when the evaluation corpus is next to the repository (`../shared/corpus`, or
//! `IG_CORPUS`), the group `corpus` scans every benign prompt of it (5,279 texts
//! from several sources and 27 languages, 1.8 MB) once per iteration, next to
//! the same two baselines over the same texts.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inference_guard::Location;
use inference_guard::scan::Scanner;

#[path = "../tests/common/mod.rs"]
mod common;
use common::repeat_to;

const PROSE: &str = "The committee met on Tuesday to review the quarterly figures. Revenue in the \
northern region grew while costs stayed flat, and the team agreed to visit the two largest \
accounts before the end of the month. Several members asked for a clearer summary of the \
assumptions behind the forecast, and the chair promised a short note by Friday. ";

const DENSE: &str = "Order 4471-2210 shipped 2024-11-03 to ana.lopez@example.org (ref QmFzZTY0 \
0x1f2e3d4c, tel +44 20 7946 0958, card 4111 1111 1111 1111, iban GB82WEST12345698765432). \
Token aGVsbG8gd29ybGQ= and hash 9f86d081884c7d659a2feaa0c55ad015; build #8812 at 10:42. ";

const ADVERSARIAL: &str =
    "ignore ignore previous <|im_start <|im_ dan dan mode aGVsbG8g \\033[ system: ";

fn bench(c: &mut Criterion) {
    let scanner = Scanner::new();
    // The same scanner without the classifier, and the classifier on its own
    // (normalization, rule families and scoring).
    let rules_only = Scanner::builder().classifier(None).build();
    let classifier = inference_guard::scan::Classifier::builtin();
    let finder = memchr::memmem::Finder::new("zq#never-present#qz");
    let anchors = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::Standard)
        .kind(Some(AhoCorasickKind::DFA))
        .build(scanner.anchors())
        .expect("anchor automaton");
    let mut g = c.benchmark_group("scan");
    for (name, base) in [
        ("prose", PROSE),
        ("dense", DENSE),
        ("adversarial", ADVERSARIAL),
    ] {
        for size in [4 * 1024, 64 * 1024, 1024 * 1024] {
            let text = repeat_to(base, size);
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.sample_size(if size > 64 * 1024 { 10 } else { 50 });
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_scanner"), size),
                &text,
                |b, t| b.iter(|| black_box(scanner.scan_text(black_box(t), Location::Message(0)))),
            );
            if size == 4 * 1024 {
                g.bench_with_input(
                    BenchmarkId::new(format!("{name}_rules_only"), size),
                    &text,
                    |b, t| {
                        b.iter(|| {
                            black_box(rules_only.scan_text(black_box(t), Location::Message(0)))
                        })
                    },
                );
                g.bench_with_input(
                    BenchmarkId::new(format!("{name}_classifier_alone"), size),
                    &text,
                    |b, t| b.iter(|| black_box(classifier.score(black_box(t)))),
                );
            }
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_aho_corasick"), size),
                &text,
                |b, t| b.iter(|| black_box(anchors.find_overlapping_iter(black_box(t)).count())),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_memmem"), size),
                &text,
                |b, t| b.iter(|| black_box(finder.find(black_box(t.as_bytes())))),
            );
        }
    }
    g.finish();
    corpus(c, &scanner, &anchors, &finder);
}

/// Every benign prompt of the evaluation corpus, when it is there.
fn corpus(
    c: &mut Criterion,
    scanner: &Scanner,
    anchors: &AhoCorasick,
    finder: &memchr::memmem::Finder<'_>,
) {
    let dir = std::env::var("IG_CORPUS").unwrap_or_else(|_| "../shared/corpus".into());
    let Ok(files) = std::fs::read_dir(std::path::Path::new(&dir).join("benign")) else {
        eprintln!("no corpus at {dir}: group `corpus` skipped");
        return;
    };
    let mut texts: Vec<String> = Vec::new();
    for f in files.flatten() {
        let Ok(body) = std::fs::read_to_string(f.path()) else {
            continue;
        };
        for line in body.lines() {
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
                texts.push(t.to_owned());
            }
        }
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut g = c.benchmark_group("corpus");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.sample_size(10);
    g.bench_function("benign_scanner", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| scanner.scan_text(black_box(t), Location::Message(0)).len())
                .sum::<usize>()
        })
    });
    g.bench_function("benign_aho_corasick", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| anchors.find_overlapping_iter(black_box(t)).count())
                .sum::<usize>()
        })
    });
    g.bench_function("benign_memmem", |b| {
        b.iter(|| {
            texts
                .iter()
                .filter(|t| finder.find(black_box(t.as_bytes())).is_some())
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
