//! The machine-identity inventory: facts per principal and each risk flag.

use std::time::{Duration, SystemTime};

use inference_guard::authz::{Grant, PolicyAuthorizer};
use inference_guard::identity::{ApiKeyFormat, ApiKeys, Authenticator, InMemoryKeyStore};
use inference_guard::inventory::{FlagKind, Inventory, InventoryPolicy};
use inference_guard::*;

mod common;

const DAY: Duration = Duration::from_secs(86_400);

struct Setup {
    guard: InferenceGuard,
    inventory: Inventory,
    policy: PolicyAuthorizer,
    keys: Vec<(String, Secret)>,
}

fn setup() -> Setup {
    let store = InMemoryKeyStore::new();
    let api_keys = ApiKeys::new(
        b"inventory test secret of 32 bytes!!",
        ApiKeyFormat::new("igk").unwrap(),
        store.clone(),
    )
    .unwrap();
    let mut keys = Vec::new();
    for (kid, who, scope) in [
        ("key_report_1", "svc-report", "chat"),
        ("key_etl_1", "svc-etl", "batch"),
        ("key_idle_1", "svc-idle", "chat"),
    ] {
        let (secret, record) = api_keys
            .issue(
                kid,
                Principal::builder(who, CredentialKind::ApiKey)
                    .scope(scope)
                    .build(),
                None,
            )
            .unwrap();
        store.insert(record);
        keys.push((kid.to_owned(), secret));
    }
    let policy = PolicyAuthorizer::builder()
        .grant(
            Grant::to_scope("chat")
                .models(["demo-small", "demo-large"])
                .tools(["search", "send_email"]),
        )
        .grant(Grant::to_scope("batch").models(["demo-*"]))
        .build()
        .unwrap();
    let inventory = Inventory::with_bounds(100, 8);
    let mut b = InferenceGuard::builder();
    b.identity(Authenticator::new().api_keys(api_keys))
        .authorizer(policy.clone())
        .audit_sink(NoopSink)
        .inventory(inventory.clone());
    Setup {
        guard: b.build().unwrap(),
        inventory,
        policy,
        keys,
    }
}

fn call(s: &Setup, key: usize, model: &str, addr: &str, ua: &str) -> Result<(), Rejection> {
    let mut req = GuardRequest::new(model)
        .with_credentials(Credentials::from_api_key(s.keys[key].1.expose()))
        .with_client_addr(addr.parse().unwrap())
        .with_metadata("user_agent", ua)
        .with_message(Role::User, "hello");
    if key == 0 {
        req = req.with_tool(ToolSpec::new("search"));
    }
    let adm = s.guard.check_request(req)?;
    adm.check_response(GuardResponse::new("ok")).map(|_| ())
}

fn flags(
    s: &Setup,
    policy: &InventoryPolicy,
    at: SystemTime,
) -> Vec<(FlagKind, String, Option<String>)> {
    s.inventory
        .report(policy, at)
        .flags()
        .iter()
        .map(|f| {
            (
                f.kind(),
                f.principal().to_owned(),
                f.key_id().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn facts_are_kept_per_principal_and_bounded() {
    let s = setup();
    for i in 0..20 {
        call(
            &s,
            0,
            "demo-small",
            &format!("10.0.0.{i}"),
            "report-job/1.4",
        )
        .unwrap();
    }
    // A denial is counted by reason.
    assert_eq!(
        call(&s, 0, "gpt-x", "10.0.0.1", "report-job/1.4")
            .unwrap_err()
            .status(),
        403
    );
    let f = s.inventory.facts("svc-report").unwrap();
    assert_eq!(f.requests(), 21);
    assert_eq!(f.models().counts().get("demo-small"), Some(&20));
    assert_eq!(f.tools().counts().get("search"), Some(&21));
    assert_eq!(f.denials().counts().get("insufficient_scope"), Some(&1));
    assert_eq!(f.credential_kinds().counts().get("api_key"), Some(&21));
    // Addresses: at most 8 kept, the rest counted.
    assert_eq!(f.addresses().counts().len(), 8);
    assert_eq!(f.addresses().others(), 12);
    let k = &f.keys()["key_report_1"];
    assert_eq!(k.uses(), 21);
    assert!(k.age_at_last_use().unwrap() < Duration::from_secs(60));
    let json: serde_json::Value = serde_json::from_str(
        &s.inventory
            .report(&InventoryPolicy::default(), SystemTime::now())
            .to_json(),
    )
    .unwrap();
    assert_eq!(json["principals"][0]["principal"], "svc-report");
}

#[test]
fn unused_and_long_lived_keys_are_flagged() {
    let s = setup();
    call(&s, 0, "demo-small", "10.0.0.1", "report-job/1.4").unwrap();
    let now = SystemTime::now();
    let policy = InventoryPolicy::default()
        .unused_after(30 * DAY)
        .rotate_after(90 * DAY)
        .known_key("key_report_1", "svc-report", now)
        .known_key("key_idle_1", "svc-idle", now - 45 * DAY)
        .known_key("key_etl_1", "svc-etl", now - 200 * DAY);
    let f = flags(&s, &policy, now);
    // Never used for 45 days; never used for 200 days and older than its rotation.
    assert!(f.contains(&(
        FlagKind::UnusedKey,
        "svc-idle".into(),
        Some("key_idle_1".into())
    )));
    assert!(f.contains(&(
        FlagKind::UnusedKey,
        "svc-etl".into(),
        Some("key_etl_1".into())
    )));
    assert!(f.contains(&(
        FlagKind::LongLivedKey,
        "svc-etl".into(),
        Some("key_etl_1".into())
    )));
    assert!(
        !f.iter()
            .any(|x| x.1 == "svc-report" && x.0 == FlagKind::UnusedKey)
    );
    // 40 days later the used key is idle too, and at 100 days it is long-lived.
    let f = flags(&s, &policy, now + 40 * DAY);
    assert!(f.contains(&(
        FlagKind::UnusedKey,
        "svc-report".into(),
        Some("key_report_1".into())
    )));
    // Without the list of issued keys, the key's own creation time (which API keys
    // carry) still dates it.
    let f = flags(&s, &InventoryPolicy::default(), now + 100 * DAY);
    assert!(f.contains(&(
        FlagKind::UnusedKey,
        "svc-report".into(),
        Some("key_report_1".into())
    )));
    assert!(f.contains(&(
        FlagKind::LongLivedKey,
        "svc-report".into(),
        Some("key_report_1".into())
    )));
    let f = flags(&s, &InventoryPolicy::default(), now + 10 * DAY);
    assert!(!f.iter().any(|x| x.1 == "svc-report"));
}

#[test]
fn grants_never_used_are_flagged() {
    let s = setup();
    call(&s, 0, "demo-small", "10.0.0.1", "report-job/1.4").unwrap();
    let policy = InventoryPolicy::default().authorizer(s.policy.clone());
    let report = s.inventory.report(&policy, SystemTime::now());
    let f = report
        .flags()
        .iter()
        .find(|f| f.kind() == FlagKind::UnusedGrant)
        .unwrap();
    assert_eq!(f.principal(), "svc-report");
    assert!(f.detail().contains("demo-large") && f.detail().contains("send_email"));
    assert!(!f.detail().contains("demo-small") && !f.detail().contains("search"));
}

#[test]
fn reuse_and_human_use_are_flagged() {
    let s = setup();
    for i in 0..7 {
        call(&s, 1, "demo-small", &format!("192.0.2.{i}"), "etl/2.0").unwrap();
    }
    call(
        &s,
        0,
        "demo-small",
        "10.0.0.1",
        "Mozilla/5.0 (Macintosh) Safari/605.1.15",
    )
    .unwrap();
    let f = flags(&s, &InventoryPolicy::default(), SystemTime::now());
    assert!(f.contains(&(
        FlagKind::CredentialReuse,
        "svc-etl".into(),
        Some("key_etl_1".into())
    )));
    assert!(f.contains(&(FlagKind::HumanUse, "svc-report".into(), None)));
    assert!(
        !f.iter()
            .any(|x| x.0 == FlagKind::HumanUse && x.1 == "svc-etl")
    );
    // Below the thresholds: nothing.
    let lenient = InventoryPolicy::default().reuse_over(10, 5);
    let f = flags(&s, &lenient, SystemTime::now());
    assert!(!f.iter().any(|x| x.0 == FlagKind::CredentialReuse));
}

/// An authorizer of the application's own: the inventory learns its grants through
/// the `Authorizer` trait, not from the built-in policy type.
#[test]
fn a_custom_authorizer_reports_its_grants_to_the_inventory() {
    struct OwnRules;
    impl Authorizer for OwnRules {
        fn authorize<'a>(&'a self, _: StageContext<'a>) -> Step<'a, Result<(), StageError>> {
            Step::ready(Ok(()))
        }
        fn grants(&self, p: &Principal) -> Option<Granted> {
            (p.id() == "svc-report")
                .then(|| Granted::new(["demo-small", "demo-vision"], ["search"]))
        }
    }
    let s = setup();
    call(&s, 0, "demo-small", "10.0.0.1", "report-job/1.4").unwrap();
    let report = s.inventory.report(
        &InventoryPolicy::default().authorizer(OwnRules),
        SystemTime::now(),
    );
    let unused: Vec<_> = report
        .flags()
        .iter()
        .filter(|f| f.kind() == FlagKind::UnusedGrant)
        .collect();
    assert_eq!(unused.len(), 1, "{unused:?}");
    assert_eq!(unused[0].principal(), "svc-report");
    assert!(unused[0].detail().contains("demo-vision"));
    assert!(!unused[0].detail().contains("search") && !unused[0].detail().contains("demo-small"));
    // An authorizer that cannot say (the trait's default) flags nothing.
    let silent = s.inventory.report(
        &InventoryPolicy::default().authorizer(authorizer_fn(|_, _| Ok(()))),
        SystemTime::now(),
    );
    assert!(
        silent
            .flags()
            .iter()
            .all(|f| f.kind() != FlagKind::UnusedGrant)
    );
}

/// Many threads, many principals: every request is counted (the inventory's maps
/// are sharded; no request is lost to a race), and the bound holds.
#[test]
fn concurrent_requests_are_all_counted_and_the_bound_holds() {
    let inventory = Inventory::with_bounds(40, 8);
    let guard = {
        let mut b = InferenceGuard::builder();
        b.identity(common::key_as_principal(None))
            .authorize_all()
            .audit_sink(NoopSink)
            .inventory(inventory.clone());
        b.build().unwrap()
    };
    std::thread::scope(|s| {
        for t in 0..4 {
            let guard = &guard;
            s.spawn(move || {
                for i in 0..250 {
                    let who = format!("svc-{}", (t * 250 + i) % 50);
                    let req =
                        GuardRequest::new("m").with_credentials(Credentials::from_api_key(who));
                    drop(guard.check_request(req).unwrap());
                }
            });
        }
    });
    let report = inventory.report(&InventoryPolicy::default(), SystemTime::now());
    let counted: u64 = report.principals().iter().map(|p| p.requests()).sum();
    assert_eq!(report.principals().len(), 40);
    assert_eq!(counted + inventory.untracked(), 1000);
}

/// A principal's creation time is read from attributes an identity plugin sets: a
/// number past what a `SystemTime` holds is taken as the last second of 9999:
/// the use is counted, with no age (the credential is not created yet).
#[test]
fn a_creation_time_past_any_clock_is_clamped() {
    let inventory = Inventory::with_bounds(100, 8);
    let mut b = InferenceGuard::builder();
    b.identity(verifier_fn(|_: &GuardRequest| {
        Ok(Principal::builder("svc-far", CredentialKind::ApiKey)
            .key_id("key_far")
            .attribute("credential_created", u64::MAX.to_string())
            .build())
    }))
    .authorize_all()
    .audit_sink(NoopSink)
    .inventory(inventory.clone());
    let guard = b.build().unwrap();
    let req = GuardRequest::new("m").with_message(Role::User, "hello");
    guard
        .check_request(req)
        .unwrap()
        .check_response(GuardResponse::new("ok"))
        .unwrap();
    let report = inventory.report(&InventoryPolicy::default(), SystemTime::now());
    assert_eq!(report.principals().len(), 1);
    // The key's use is counted (a panic in the observer, which the guard catches,
    // lost it).
    let key = &report.principals()[0].keys()["key_far"];
    assert_eq!(key.uses(), 1);
    assert_eq!(key.age_at_last_use(), None);
}
