//! Rate limits, token budgets, concurrency limits and bounded memory, on a clock the
//! tests drive (no test sleeps to test a rate).

use std::sync::Arc;
use std::time::Duration;

use inference_guard::rate_limit::*;
use inference_guard::*;
use proptest::prelude::*;

fn principal(id: &str, tenant: &str) -> Principal {
    Principal::builder(id, CredentialKind::ApiKey)
        .tenant(tenant)
        .build()
}

fn guard(limiter: InMemoryRateLimiter, sink: MemorySink) -> InferenceGuard {
    let mut b = InferenceGuard::builder();
    b.identity(verifier_fn(|req| {
        let key = req
            .credentials()
            .api_key()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default();
        let (id, tenant) = key.split_once('@').unwrap_or((&key, "t0"));
        Ok(principal(id, tenant))
    }))
    .authorize_all()
    .rate_limiter(limiter)
    .audit_sink(sink);
    b.build().unwrap()
}

fn req(who: &str) -> GuardRequest {
    GuardRequest::new("m").with_credentials(Credentials::from_api_key(who))
}

/// A token bucket in exact integer arithmetic, written independently of the GCRA:
/// capacity `burst·t` nanosecond-units, refilled one unit per nanosecond, a request
/// costs `t`.
struct Reference {
    level: u128,
    cap: u128,
    cost: u128,
    last: u128,
}

impl Reference {
    fn admit(&mut self, now: u128) -> bool {
        self.level = (self.level + (now - self.last)).min(self.cap);
        self.last = now;
        if self.level >= self.cost {
            self.level -= self.cost;
            true
        } else {
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gcra_admits_exactly_what_conforms(
        burst in 1u32..20,
        interval_ms in 1u64..500,
        gaps in prop::collection::vec(0u64..400, 1..200),
    ) {
        let t = interval_ms * 1_000_000;
        let limiter = KeyedGcra::new(Quota::per(Duration::from_nanos(t * u64::from(burst)), burst), 10);
        let mut reference = Reference { level: u128::from(t) * u128::from(burst), cap: u128::from(t) * u128::from(burst), cost: u128::from(t), last: 0 };
        let mut now = 1_000_000_000u64; // start well after the origin
        reference.last = u128::from(now);
        let mut admitted: Vec<u64> = Vec::new();
        for gap in gaps {
            now += gap * 1_000_000 / 4;
            let ours = limiter.check("k", 1, Duration::from_nanos(now)).unwrap().is_allowed();
            let theirs = reference.admit(u128::from(now));
            // Never rejects a conforming request, never admits a non-conforming one.
            prop_assert_eq!(ours, theirs, "at {} ns", now);
            if ours {
                admitted.push(now);
            }
        }
        // Over every window, admissions <= burst + rate x elapsed.
        for i in 0..admitted.len() {
            for j in i..admitted.len() {
                let count = (j - i + 1) as u128;
                let elapsed = u128::from(admitted[j] - admitted[i]);
                prop_assert!(count * u128::from(t) <= u128::from(burst) * u128::from(t) + elapsed);
            }
        }
    }
}

#[test]
fn rejection_carries_retry_after_and_rate_state() {
    let clock = ManualClock::new();
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::requests("rpm", Quota::per_minute(3)).key_by(KeyBy::PRINCIPAL))
        .clock(clock.clone())
        .build()
        .unwrap();
    let sink = MemorySink::new();
    let g = guard(limiter, sink.clone());
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let adm = g.check_request(req("alice")).unwrap();
        remaining.push(adm.rate_limit().unwrap().remaining());
        adm.fail();
    }
    assert_eq!(remaining, [2, 1, 0]);
    let r = g.check_request(req("alice")).unwrap_err();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.retry_after_secs(),
        Some(20),
        "one request per 20 s refills"
    );
    let info = r.rate_limit().unwrap();
    assert_eq!((info.limit(), info.remaining()), (3, 0));
    assert_eq!(info.policy(), Some("\"rpm\";q=3;w=60"));
    assert_eq!(r.detail(), "limit rpm");
    let audited = sink.records().pop().unwrap();
    assert_eq!(audited["rate_limit"]["remaining"], 0);
    assert_eq!(audited["rejection"]["retry_after_s"], 20);
    // Another principal is independent; time refills.
    g.check_request(req("bob")).unwrap().fail();
    clock.advance(Duration::from_millis(19_999));
    assert!(g.check_request(req("alice")).is_err());
    clock.advance(Duration::from_millis(1));
    g.check_request(req("alice")).unwrap().fail();
    // Failed calls still count against request limits (no free retry storms).
    assert!(g.check_request(req("alice")).is_err());
}

#[test]
fn several_limits_per_request_roll_back_when_one_refuses() {
    let clock = ManualClock::new();
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::requests("per-principal", Quota::per_minute(2)).key_by(KeyBy::PRINCIPAL))
        .limit(Limit::requests("per-tenant", Quota::per_minute(3)).key_by(KeyBy::TENANT))
        .limit(
            Limit::requests("heavy-model", Quota::per_minute(10))
                .key_by(KeyBy::MODEL)
                .weight(5),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    let g = guard(limiter.clone(), MemorySink::new());
    g.check_request(req("a@acme")).unwrap().fail();
    g.check_request(req("b@acme")).unwrap().fail();
    // The model limit (weight 5 of 10) is now spent; the principal limit of c is not,
    // and must not be charged for the refused request.
    let r = g.check_request(req("c@acme")).unwrap_err();
    assert_eq!(r.detail(), "limit heavy-model");
    clock.advance(Duration::from_secs(30)); // model limit refills 5 units
    g.check_request(req("c@acme")).unwrap().fail(); // tenant: 3rd of 3
    let r = g.check_request(req("c@other")).unwrap_err();
    assert_eq!(r.detail(), "limit heavy-model");
    let keys: Vec<usize> = limiter.keys().iter().map(|(_, n)| *n).collect();
    assert_eq!(keys, [3, 2, 1]);
}

#[test]
fn token_budgets_reserve_then_settle() {
    let clock = ManualClock::new();
    // 1,000 tokens a minute per tenant; a request reserves input estimate + max output.
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::tokens("tokens", Quota::per_minute(1000)).key_by(KeyBy::TENANT))
        .max_output_reservation(400)
        .clock(clock.clone())
        .build()
        .unwrap();
    let g = guard(limiter, MemorySink::new());
    let ask = |n: u32| {
        req("a@acme")
            .with_message(Role::User, "12345678")
            .with_max_output_tokens(n)
    }; // 6 input
    // Reservations are capped by policy (400 + 6), and two fit, a third does not.
    let a1 = g.check_request(ask(5000)).unwrap();
    assert_eq!(a1.reserved_tokens(), 406);
    let a2 = g.check_request(ask(400)).unwrap();
    let r = g.check_request(ask(400)).unwrap_err();
    assert_eq!(r.status(), 429);
    // Settling with real usage refunds what was not used: 406 - 106 = 300 back.
    a1.check_response(GuardResponse::new("x").with_usage(Usage::new(6, 100)))
        .unwrap();
    let a3 = g.check_request(ask(400)).unwrap();
    // A failed call refunds everything.
    a3.fail();
    let a4 = g.check_request(ask(400)).unwrap();
    drop(a4); // abandoned: charged (the model may have answered a caller that left)
    // An overrun becomes debt: a2 used 900 tokens although it reserved 406.
    a2.check_response(GuardResponse::new("x").with_usage(Usage::new(6, 894)))
        .unwrap();
    assert!(
        g.check_request(ask(1)).is_err(),
        "1000 budget, 106 + 900 spent"
    );
    clock.advance(Duration::from_secs(60));
    g.check_request(ask(1)).unwrap().fail();
}

#[test]
fn debt_is_carried_in_full_not_forgiven() {
    let clock = ManualClock::new();
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::tokens("tokens", Quota::per_minute(100)).key_by(KeyBy::PRINCIPAL))
        .max_output_reservation(50)
        .clock(clock.clone())
        .build()
        .unwrap();
    let g = guard(limiter, MemorySink::new());
    let a = g
        .check_request(req("a").with_max_output_tokens(50))
        .unwrap();
    // 5,000 tokens used against a 100-a-minute budget: fifty minutes of debt.
    a.check_response(GuardResponse::new("x").with_usage(Usage::new(0, 5000)))
        .unwrap();
    clock.advance(Duration::from_secs(20 * 60));
    assert!(
        g.check_request(req("a").with_max_output_tokens(1)).is_err(),
        "debt forgiven after ten bursts"
    );
    clock.advance(Duration::from_secs(31 * 60));
    g.check_request(req("a").with_max_output_tokens(1))
        .unwrap()
        .fail();
}

#[test]
fn the_reservation_and_the_grant_cap_the_output_the_model_is_asked_for() {
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::tokens("tokens", Quota::per_minute(100_000)).key_by(KeyBy::PRINCIPAL))
        .max_output_reservation(700)
        .build()
        .unwrap();
    let mut b = InferenceGuard::builder();
    b.allow_anonymous()
        .authorizer(
            inference_guard::authz::PolicyAuthorizer::builder()
                .grant(
                    inference_guard::authz::Grant::to_principals(["*"])
                        .models(["small"])
                        .max_output_tokens(512),
                )
                .grant(inference_guard::authz::Grant::to_principals(["*"]).models(["big"]))
                .build()
                .unwrap(),
        )
        .rate_limiter(limiter)
        .audit_sink(NoopSink);
    let g = b.build().unwrap();
    // No maximum named: the grant's ceiling becomes the request's.
    let a = g.check_request(GuardRequest::new("small")).unwrap();
    assert_eq!(a.request().max_output_tokens(), Some(512));
    a.fail();
    // No grant ceiling: the reservation's output share is the ceiling.
    let a = g.check_request(GuardRequest::new("big")).unwrap();
    assert_eq!(a.request().max_output_tokens(), Some(700));
    a.fail();
    let a = g
        .check_request(GuardRequest::new("big").with_max_output_tokens(10))
        .unwrap();
    assert_eq!(a.request().max_output_tokens(), Some(10));
    a.fail();
}

#[test]
fn an_aborted_stream_is_charged_what_was_streamed() {
    let clock = ManualClock::new();
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::tokens("tokens", Quota::per_minute(600)).key_by(KeyBy::PRINCIPAL))
        .max_output_reservation(500)
        .clock(clock)
        .build()
        .unwrap();
    let g = guard(limiter, MemorySink::new());
    let mut s = g
        .check_request(req("a").with_max_output_tokens(500))
        .unwrap()
        .stream();
    s.push(&"x".repeat(1600)).unwrap(); // 400 tokens streamed
    drop(s);
    // 600 - 400 = 200 left: a 150-token reservation fits, a 300 one does not.
    assert!(
        g.check_request(req("a").with_max_output_tokens(300))
            .is_err()
    );
    g.check_request(req("a").with_max_output_tokens(150))
        .unwrap()
        .fail();
}

#[test]
fn concurrent_reservations_never_overshoot_a_budget() {
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::tokens("tokens", Quota::per_hour(10_000)).key_by(KeyBy::TENANT))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let g = guard(limiter, MemorySink::new());
    let admitted: Vec<Admission> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let g = g.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for _ in 0..100 {
                        if let Ok(a) =
                            g.check_request(req(&format!("p{i}@acme")).with_max_output_tokens(100))
                        {
                            mine.push(a);
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let reserved: u64 = admitted.iter().map(Admission::reserved_tokens).sum();
    assert!(reserved <= 10_000, "{reserved}");
    assert_eq!(admitted.len(), 10_000 / 100, "each reserves 100 tokens");
    for a in admitted {
        a.fail();
    }
}

#[test]
fn concurrency_permits_are_released_on_every_path() {
    let limiter = InMemoryRateLimiter::builder()
        .concurrency(KeyBy::PRINCIPAL, 2)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let g = guard(limiter.clone(), MemorySink::new());
    let a = g.check_request(req("a")).unwrap();
    let b = g.check_request(req("a")).unwrap();
    let r = g.check_request(req("a")).unwrap_err();
    assert_eq!((r.status(), r.retry_after_secs()), (429, Some(1)));
    g.check_request(req("other")).unwrap().fail();
    assert_eq!(limiter.in_flight(), 2);
    a.check_response(GuardResponse::new("ok")).unwrap();
    let c = g.check_request(req("a")).unwrap();
    drop(b); // abandoned
    let mut s = g.check_request(req("a")).unwrap().stream();
    s.push("partial").unwrap();
    drop(s); // stream aborted
    c.fail();
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn a_million_keys_stay_within_the_documented_memory_bound() {
    const KEYS: usize = 1_000_000;
    let table = KeyedGcra::new(Quota::per_minute(1), KEYS);
    let t0 = Duration::from_secs(1);
    for i in 0..KEYS {
        assert!(table.check(&i.to_string(), 1, t0).unwrap().is_allowed());
    }
    let bound = 42 * KEYS + 64 * 1024;
    println!("{} keys: {} bytes", table.len(), table.memory_bytes());
    assert!(table.len() <= KEYS);
    assert!(
        table.memory_bytes() <= bound,
        "{} > {bound}",
        table.memory_bytes()
    );
    // Full of active keys: new keys are refused, an active one is never forgotten.
    let mut refused = 0;
    for i in KEYS..KEYS + 200_000 {
        if table.check(&i.to_string(), 1, t0).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert!(
        !table.check("0", 1, t0).unwrap().is_allowed(),
        "key 0 is still limited"
    );
    // Churn: a minute later every key is idle; a million new keys replace them
    // without growing the table.
    let t1 = t0 + Duration::from_secs(61);
    for i in 2 * KEYS..3 * KEYS {
        assert!(table.check(&i.to_string(), 1, t1).is_ok());
    }
    assert!(table.len() <= KEYS);
    assert!(table.memory_bytes() <= bound);
    table.retain_recent(t1 + Duration::from_secs(61));
    assert!(table.is_empty());
}

#[test]
fn a_full_key_table_fails_closed_through_the_guard() {
    let limiter = InMemoryRateLimiter::builder()
        .limit(Limit::requests("r", Quota::per_minute(10)))
        .max_keys(64)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let g = guard(limiter, MemorySink::new());
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..2000 {
        let s = g.check_request(req(&format!("k{i}"))).map(|a| {
            a.fail();
            200
        });
        *statuses
            .entry(s.unwrap_or_else(|r| r.status()))
            .or_insert(0) += 1;
    }
    assert!(statuses.contains_key(&503), "{statuses:?}");
    assert!(statuses[&200] >= 64, "{statuses:?}");
}

#[test]
fn builder_validation() {
    assert!(InMemoryRateLimiter::builder().build().is_err());
    assert!(
        InMemoryRateLimiter::builder()
            .limit(Limit::requests("a", Quota::per_second(1)))
            .limit(Limit::tokens("a", Quota::per_second(1)))
            .build()
            .is_err()
    );
    assert!(
        InMemoryRateLimiter::builder()
            .concurrency(KeyBy::PRINCIPAL, 0)
            .build()
            .is_err()
    );
    let _shared: Arc<dyn RateLimiter> =
        Arc::new(InMemoryRateLimiter::per_principal(Quota::per_second(5)));
}
