//! Shared security state against a local `redis-server` (feature `redis`, `REDIS_URL`):
//! the latency of the JWT replay check (one `SET NX PX`), of the API-key revocation
//! check when the replica's copy is stale (one `SMEMBERS`) and when it is fresh (no
//! round trip), next to a bare `PING` round trip in the same run. Prints the median
//! and the 99th percentile of 2,000 calls each.
//!
//! Target (issue #17): the shared replay check adds at most one Redis round trip.
#![allow(missing_docs)]

use std::time::{Duration, Instant, SystemTime};

use inference_guard::identity::{RedisReplayCache, RedisRevocations, ReplayStore};

const N: usize = 2000;

fn percentiles(mut t: Vec<Duration>) -> (Duration, Duration) {
    t.sort_unstable();
    (t[t.len() / 2], t[t.len() * 99 / 100])
}

fn report(name: &str, t: Vec<Duration>, ping: Duration) {
    let (median, p99) = percentiles(t);
    println!(
        "shared_state/{name:<22} median {:>8.1} µs  p99 {:>8.1} µs  ({:.2}x the PING median)",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        median.as_secs_f64() / ping.as_secs_f64()
    );
}

fn main() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        let msg = "the shared_state bench needs REDIS_URL (a local redis-server)";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prefix = format!("igbench-{}", std::process::id());
        let timeout = Duration::from_millis(500);
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut ping = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            ping.push(t.elapsed());
        }
        let (ping_median, _) = percentiles(ping.clone());
        report("ping", ping, ping_median);

        let replay = RedisReplayCache::connect(&url, &prefix, timeout)
            .await
            .unwrap();
        let until = SystemTime::now() + Duration::from_secs(60);
        let mut times = Vec::with_capacity(N);
        for i in 0..N {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let t = Instant::now();
            assert!(replay.first_use(&id, until).await.unwrap());
            times.push(t.elapsed());
        }
        report("replay_check", times, ping_median);

        for (name, refresh) in [
            ("revocation_stale", Duration::ZERO),
            ("revocation_fresh", Duration::from_secs(3600)),
        ] {
            let rev = RedisRevocations::connect(&url, &prefix, timeout, refresh)
                .await
                .unwrap();
            for k in 0..100 {
                rev.revoke(&format!("key_{k}")).await.unwrap();
            }
            let mut times = Vec::with_capacity(N);
            for i in 0..N {
                let t = Instant::now();
                let revoked = rev.is_revoked(&format!("key_{}", i % 200)).await.unwrap();
                times.push(t.elapsed());
                assert_eq!(revoked, i % 200 < 100);
            }
            report(name, times, ping_median);
        }
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}:revoked_keys"))
            .query_async(&mut conn)
            .await
            .unwrap();
    });
}
