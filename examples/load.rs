//! A load run: requests per second through the axum gateway with every guard on,
//! against the same gateway with the guard off, in the same run, with 4 KiB prompts
//! on the embedded demo model.
//!
//! ```text
//! cargo run --release --example load --features axum,policy [-- --seconds 5 --concurrency 16 --rounds 3]
//! ```
//!
//! `--turns N` sends a chat at its N-th turn: the N-1 earlier questions (about 250
//! bytes each) and answers (about 1 KiB) before the 4 KiB prompt, the same
//! conversation in every request (the steady state of chats at their N-th turn: the
//! scanner has seen the earlier messages, the newest is read every time).
//!
//! `--history-cache 0` turns the scanner's cache of earlier messages off (default
//! 8192 messages).
//!
//! `--guarded-only 1` runs only the guarded gateway (for a profile of the guard's
//! side: `perf record -e cpu-clock -g -- target/release/examples/load --guarded-only 1`).
//!
//! Both gateways run in this process (on loopback, ephemeral ports) and share the
//! machine with the load generator (a keep-alive HTTP client with `--concurrency`
//! workers). The rounds alternate guard off and guard on; the median round of each
//! is reported, with the guard's cost as a share of throughput. The guard is the demo
//! policy (API key, authorization, rate limit and concurrency limit that are never
//! reached, the input scanner with pseudonyms, the answer validator, abuse
//! monitoring) with a no-op audit sink. Prints a table and one JSON line.

#[path = "../benches/fixtures/chat.rs"]
mod chat;
#[path = "gateway_common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inference_guard::rate_limit::Quota;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve(cfg: common::Config) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let router = common::axum_app::router(&cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(addr)
}

/// Requests per second for `seconds` with `workers` concurrent clients.
async fn run(addr: SocketAddr, key: &str, body: &str, seconds: u64, workers: u64) -> (f64, u64) {
    let client = reqwest::Client::new();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
        let url = format!("http://{addr}/v1/chat/completions");
        let (key, body) = (key.to_owned(), body.to_owned());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = client
                    .post(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = ok.load(Ordering::Relaxed);
    (
        n as f64 / start.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = arg("--seconds", 5);
    let workers = arg("--concurrency", 16);
    let rounds = arg("--rounds", 5).max(1);
    let guarded_only = arg("--guarded-only", 0) != 0;
    let history_cache = arg("--history-cache", 8192) as usize;
    let (guard, keys) =
        common::demo_guard_with(Quota::per_second(1_000_000), false, history_cache)?;
    let key = keys[0].1.clone();
    let on = serve(common::Config {
        addr: String::new(),
        upstream: None,
        upstream_key: None,
        guard: Some(guard),
        keys: Vec::new(),
        policy: String::new(),
        exchange: common::demo_exchange(),
    })
    .await?;
    let off = serve(common::Config {
        addr: String::new(),
        upstream: None,
        upstream_key: None,
        guard: None,
        keys: Vec::new(),
        policy: String::new(),
        exchange: common::demo_exchange(),
    })
    .await?;
    let sentence = "The quarterly review covered revenue by region, the hiring plan for the \
                    support team and the migration of the billing system to the new cluster. ";
    let mut prompt = String::new();
    while prompt.len() < 4096 {
        prompt.push_str(sentence);
    }
    prompt.truncate(4096);
    let turns = arg("--turns", 1).max(1);
    let mut messages = vec![serde_json::json!(
        {"role": "system", "content": "You are a helpful assistant for the finance team."})];
    for turn in 1..turns {
        let turn = turn as usize;
        messages.push(serde_json::json!({"role": "user", "content": chat::message(turn, 3)}));
        messages.push(
            serde_json::json!({"role": "assistant", "content": chat::message(turn + 100, 13)}),
        );
    }
    messages.push(serde_json::json!({"role": "user", "content": prompt}));
    let body = serde_json::json!({"model": "demo-small", "messages": messages}).to_string();
    // Warm up both (lazy regex states, connection pools).
    run(off, &key, &body, 1, workers).await;
    run(on, &key, &body, 1, workers).await;
    let (mut offs, mut ons, mut failures) = (Vec::new(), Vec::new(), 0);
    println!("round  guard off (req/s)  guard on (req/s)");
    for r in 0..rounds {
        let (a, fa) = if guarded_only {
            (f64::NAN, 0)
        } else {
            run(off, &key, &body, seconds, workers).await
        };
        let (b, fb) = run(on, &key, &body, seconds, workers).await;
        failures += fa + fb;
        offs.push(a);
        ons.push(b);
        println!("{:>5}  {a:>17.0}  {b:>16.0}", r + 1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (median_off, median_on) = (median(&mut offs), median(&mut ons));
    let cost = 1.0 - median_on / median_off;
    println!(
        "median: guard off {median_off:.0} req/s, guard on {median_on:.0} req/s: the guard costs {:.1}% of throughput (target 10%), {failures} failed requests",
        cost * 100.0
    );
    println!(
        "{}",
        serde_json::json!({"prompt_bytes": 4096, "turns": turns, "history_cache": history_cache, "body_bytes": body.len(), "concurrency": workers, "seconds": seconds, "rounds": rounds,
            "rps_guard_off": median_off.round(), "rps_guard_on": median_on.round(),
            "cost_share": (cost * 1000.0).round() / 1000.0, "failed": failures})
    );
    Ok(())
}
