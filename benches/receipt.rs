//! Receipts: the cost of signing (the whole guard with and without receipts, same
//! run) and of verifying, and the share of the guard's per-request cost that signing
//! adds. The guard has every built-in stage: API keys, a policy authorizer, an
//! in-memory rate limiter, the input scanner and the answer validator.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use inference_guard::audit::AuditSigningKey;
use inference_guard::authz::{Grant, PolicyAuthorizer};
use inference_guard::identity::{ApiKeyFormat, ApiKeys, InMemoryKeyStore};
use inference_guard::output::AnswerValidator;
use inference_guard::rate_limit::{InMemoryRateLimiter, Quota};
use inference_guard::receipt::{ReceiptSigner, ReceiptVerifier};
use inference_guard::scan::Scanner;
use inference_guard::*;

const PROMPT: &str = "Please summarise the attached quarterly report for the board. Focus on \
revenue by region, the change in operating costs and the three largest risks named by the \
auditors. Keep it under two hundred words and use plain language. ";
const ANSWER: &str = "Revenue grew in the northern and western regions while the south was \
flat. Operating costs rose slightly because of new hires in support. The auditors named \
three risks: supplier concentration, currency exposure and a delayed system migration. ";

fn guard(receipts: Option<ReceiptSigner>) -> (InferenceGuard, Secret) {
    let store = InMemoryKeyStore::new();
    let keys = ApiKeys::new(
        b"bench secret of at least 32 bytes!!",
        ApiKeyFormat::new("igk").unwrap(),
        store.clone(),
    )
    .unwrap();
    let (secret, record) = keys
        .issue(
            "k1",
            Principal::builder("svc-bench", CredentialKind::ApiKey)
                .scope("chat")
                .build(),
            None,
        )
        .unwrap();
    store.insert(record);
    let mut b = InferenceGuard::builder();
    b.identity(keys)
        .authorizer(
            PolicyAuthorizer::builder()
                .grant(Grant::to_scope("chat").models(["*"]))
                .build()
                .unwrap(),
        )
        .rate_limiter(InMemoryRateLimiter::per_principal(Quota::per_second(
            1_000_000,
        )))
        .input_scanner(Scanner::new())
        .output_validator(AnswerValidator::new())
        .audit_sink(NoopSink);
    if let Some(r) = receipts {
        b.receipts(r);
    }
    (b.build().unwrap(), secret)
}

fn bench(c: &mut Criterion) {
    let key = AuditSigningKey::generate("bench").unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let (plain, s1) = guard(None);
    let (signing, s2) = guard(Some(ReceiptSigner::new(key)));
    let prompt = PROMPT.repeat(4);
    let answer = ANSWER.repeat(4);
    let run = |g: &InferenceGuard, s: &Secret| {
        let req = GuardRequest::new("m")
            .with_credentials(Credentials::from_api_key(s.expose()))
            .with_message(Role::User, prompt.as_str());
        g.check_request(req)
            .unwrap()
            .check_response(GuardResponse::new(answer.as_str()))
            .unwrap()
    };
    let sample = run(&signing, &s2);
    let receipt = sample.receipt().unwrap().to_owned();
    let text = sample.response().text().to_owned();
    let mut g = c.benchmark_group("receipt");
    g.bench_function("guard_request_without_receipt", |b| {
        b.iter(|| black_box(run(&plain, &s1)))
    });
    g.bench_function("guard_request_with_receipt", |b| {
        b.iter(|| black_box(run(&signing, &s2)))
    });
    g.bench_function("verify", |b| {
        b.iter(|| {
            black_box(
                verifier
                    .verify(black_box(&receipt), text.as_bytes())
                    .is_ok(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
