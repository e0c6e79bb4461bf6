//! Keyed rate-limit checks: ours (`KeyedGcra`) against `governor`'s keyed limiter, in
//! the same run, single-threaded and with 2 threads contending on the same keys.
//! Both read their clock on every check and always admit (the quota is huge), so the
//! figures are the cost of a check.
//!
//! Target (issue #4): ours at most 1.0x governor's time.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use inference_guard::rate_limit::{Clock, KeyedGcra, Quota, SystemClock};

fn bench(c: &mut Criterion) {
    let keys: Vec<String> = (0..1024)
        .map(|i| format!("spiffe://prod/ns/team-{i}/sa/agent"))
        .collect();
    let ours = KeyedGcra::new(Quota::per_second(1_000_000_000), 1_000_000);
    let clock = SystemClock::default();
    let theirs = governor::RateLimiter::keyed(governor::Quota::per_second(
        NonZeroU32::new(1_000_000_000).unwrap(),
    ));
    for k in &keys {
        ours.check(k, 1, clock.now()).unwrap();
        let _ = theirs.check_key(k);
    }

    let mut g = c.benchmark_group("rate_limit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ours_keyed_1_thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(ours.check(&keys[i], 1, clock.now()).unwrap())
        })
    });
    g.bench_function("governor_keyed_1_thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(theirs.check_key(&keys[i]).is_ok())
        })
    });
    // Two threads, each doing `iters` checks over the same keys; time per check pair.
    g.bench_function("ours_keyed_2_threads", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for off in [0, 512] {
                    let (ours, keys, clock) = (&ours, &keys, &clock);
                    s.spawn(move || {
                        for n in 0..iters as usize {
                            black_box(ours.check(&keys[(n + off) & 1023], 1, clock.now()).unwrap());
                        }
                    });
                }
            });
            t.elapsed()
        })
    });
    g.bench_function("governor_keyed_2_threads", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for off in [0, 512] {
                    let (theirs, keys) = (&theirs, &keys);
                    s.spawn(move || {
                        for n in 0..iters as usize {
                            black_box(theirs.check_key(&keys[(n + off) & 1023]).is_ok());
                        }
                    });
                }
            });
            t.elapsed()
        })
    });
    g.finish();
    redis_bench(c);
}

/// The Redis-backed decision (one script round trip per limit), for information:
/// runs only when `REDIS_URL` names a server and the `redis` feature is on.
#[cfg(feature = "redis")]
fn redis_bench(c: &mut Criterion) {
    use inference_guard::rate_limit::{KeyBy, Limit, RedisRateLimiter};
    use inference_guard::{CredentialKind, GuardRequest, Principal, RateLimiter};
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("rate_limit/redis_decision: skipped (REDIS_URL is not set)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let limiter = rt.block_on(async {
        RedisRateLimiter::builder()
            .prefix(format!("igbench-{}", std::process::id()))
            .limit(
                Limit::requests("per-principal", Quota::per_second(1_000_000_000))
                    .key_by(KeyBy::PRINCIPAL),
            )
            .connect(&url)
            .await
            .unwrap()
    });
    let p = Principal::builder("svc-bench", CredentialKind::ApiKey).build();
    let r = GuardRequest::new("m");
    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("redis_decision", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(
                    limiter
                        .acquire(inference_guard::StageContext::new(&p, &r))
                        .await
                        .unwrap(),
                )
            })
        })
    });
    g.finish();
}

#[cfg(not(feature = "redis"))]
fn redis_bench(_: &mut Criterion) {}

criterion_group!(benches, bench);
criterion_main!(benches);
