//! Audit: the request-path cost of recording into the non-blocking sink, next to
//! writing the same event synchronously to a JSON Lines file; and the sustained
//! throughput of the chained, signed log.
//!
//! Target (issue #7): the non-blocking record costs at most a tenth of the
//! synchronous JSON Lines write.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use inference_guard::audit::{
    AuditRecord, AuditSigningKey, BackgroundSink, ChainedLogSink, Overflow,
};
use inference_guard::*;

/// A realistic event: a completed request with a redaction finding and rate state.
fn sample_record() -> AuditRecord {
    let captured: Arc<Mutex<Option<AuditRecord>>> = Arc::default();
    let c2 = captured.clone();
    let rules = builtin::PatternRules::builder()
        .rule(
            "pii.email",
            Category::PersonalData,
            Severity::Medium,
            Action::Redact,
            r"[a-z]+@example\.com",
        )
        .build()
        .unwrap();
    let mut b = InferenceGuard::builder();
    b.identity(verifier_fn(|_| {
        Ok(Principal::builder("svc-analytics", CredentialKind::ApiKey)
            .key_id("key_01")
            .tenant("acme")
            .build())
    }))
    .authorize_all()
    .rate_limiter(rate_limit::InMemoryRateLimiter::per_principal(
        rate_limit::Quota::per_minute(1000),
    ))
    .input_scanner(rules)
    .audit_sink(sink_fn(move |e| {
        *c2.lock().unwrap() = Some(e.to_record());
        Ok(())
    }));
    let guard = b.build().unwrap();
    let req = GuardRequest::new("gpt-4o-mini")
        .with_credentials(Credentials::from_api_key("k"))
        .with_route("/v1/chat/completions")
        .with_message(Role::User, "Write to ana@example.com about the invoice.");
    guard
        .check_request(req)
        .unwrap()
        .check_response(GuardResponse::new("Done.").with_usage(Usage::new(20, 3)))
        .unwrap();
    captured.lock().unwrap().take().unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("ig-bench-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let record = sample_record();
    let event = record.event();
    println!("sample event: {} bytes of JSON", record.to_json().len());

    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(1));

    let file = std::fs::File::create(dir.join("sync.jsonl")).unwrap();
    let sync_sink = JsonLinesSink::new(file);
    g.bench_function("sync_json_lines_file", |b| {
        b.iter(|| sync_sink.record(black_box(&event)).unwrap())
    });

    let file = std::fs::File::create(dir.join("bg.jsonl")).unwrap();
    let bg = BackgroundSink::new(JsonLinesSink::new(file), 1 << 16, Overflow::Block);
    g.bench_function("nonblocking_record", |b| {
        // Time only the request-path call; let the writer drain between batches so
        // the queue never fills (a full queue measures the writer, not the call).
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(4096);
                let t = Instant::now();
                for _ in 0..n {
                    bg.record(black_box(&event)).unwrap();
                }
                total += t.elapsed();
                bg.flush().unwrap();
                left -= n;
            }
            total
        })
    });

    let key = AuditSigningKey::generate("bench").unwrap();
    let chained = ChainedLogSink::create(dir.join("chained.jsonl"), key).unwrap();
    g.bench_function("chained_signed_log_sustained", |b| {
        // Sustained writing, including a signed checkpoint and fsync per 1,000 events.
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                chained.record(black_box(&event)).unwrap();
                if i % 1000 == 999 {
                    chained.flush().unwrap();
                }
            }
            chained.flush().unwrap();
            t.elapsed()
        })
    });
    g.finish();
    bg.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
