//! The machine-identity inventory: a guard sees some traffic, then prints who calls,
//! with what, from where, and the risks it found.
//!
//! ```text
//! cargo run --example inventory [-- --json]
//! ```
//!
//! The traffic is simulated: a reporting service, an ETL job whose key is used from
//! many addresses, a key that is used from a browser, a key never used, and an old
//! key. With `--json` the report is printed as JSON (the export format).

use std::time::{Duration, SystemTime};

use inference_guard::authz::{Grant, PolicyAuthorizer};
use inference_guard::identity::{ApiKeyFormat, ApiKeys, Authenticator, InMemoryKeyStore};
use inference_guard::inventory::{Inventory, InventoryPolicy};
use inference_guard::*;

const DAY: Duration = Duration::from_secs(86_400);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let json = std::env::args().any(|a| a == "--json");
    let store = InMemoryKeyStore::new();
    let api_keys = ApiKeys::new(
        b"inventory demo secret, 32+ random bytes",
        ApiKeyFormat::new("igk")?,
        store.clone(),
    )?;
    let mut secrets = Vec::new();
    for (kid, who, scope) in [
        ("key_report_01", "svc-report", "chat"),
        ("key_etl_03", "job-etl", "batch"),
        ("key_support_02", "svc-support", "chat"),
        ("key_legacy_01", "svc-legacy", "chat"),
    ] {
        let p = Principal::builder(who, CredentialKind::ApiKey)
            .tenant("acme")
            .scope(scope)
            .build();
        let (secret, record) = api_keys.issue(kid, p, None)?;
        store.insert(record);
        secrets.push(secret);
    }
    let authz = PolicyAuthorizer::builder()
        .grant(
            Grant::to_scope("chat")
                .models(["demo-small", "demo-large"])
                .tools(["search", "create_ticket"]),
        )
        .grant(Grant::to_scope("batch").models(["demo-*"]))
        .build()?;
    let inventory = Inventory::new();
    let mut b = InferenceGuard::builder();
    b.identity(Authenticator::new().api_keys(api_keys))
        .authorizer(authz.clone())
        .audit_sink(NoopSink)
        .inventory(inventory.clone());
    let guard = b.build()?;

    let call = |key: usize, model: &str, addr: &str, ua: &str, tool: Option<&str>| {
        let mut req = GuardRequest::new(model)
            .with_credentials(Credentials::from_api_key(secrets[key].expose()))
            .with_client_addr(addr.parse().expect("address"))
            .with_metadata("user_agent", ua)
            .with_message(Role::User, "Summarize today's tickets.");
        if let Some(t) = tool {
            req = req.with_tool(ToolSpec::new(t));
        }
        if let Ok(adm) = guard.check_request(req) {
            let _ = adm.check_response(GuardResponse::new("Done."));
        }
    };
    for _ in 0..40 {
        call(
            0,
            "demo-small",
            "10.20.0.5",
            "report-svc/3.2",
            Some("search"),
        );
    }
    for i in 0..9 {
        call(
            1,
            "demo-large",
            &format!("203.0.113.{}", 10 + i),
            "etl-runner/1.0",
            None,
        );
    }
    call(1, "gpt-unknown", "203.0.113.10", "etl-runner/1.0", None); // denied
    for _ in 0..3 {
        call(
            2,
            "demo-small",
            "198.51.100.23",
            "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0",
            None,
        );
    }

    let now = SystemTime::now();
    let policy = InventoryPolicy::default()
        .unused_after(30 * DAY)
        .rotate_after(90 * DAY)
        .authorizer(authz)
        // The service's own list of issued keys (dates as its records say).
        .known_key("key_report_01", "svc-report", now - 20 * DAY)
        .known_key("key_etl_03", "job-etl", now - 120 * DAY)
        .known_key("key_support_02", "svc-support", now - 5 * DAY)
        .known_key("key_legacy_01", "svc-legacy", now - 400 * DAY);
    let report = inventory.report(&policy, now);
    if json {
        println!("{}", report.to_json());
        return Ok(());
    }
    println!(
        "{:<13} {:>8} {:<16} {:<24} {:>5} {:>4} denials",
        "principal", "requests", "key", "models", "addrs", "UAs"
    );
    for p in report.principals() {
        for (kid, k) in p.keys() {
            let models: Vec<String> = p
                .models()
                .counts()
                .iter()
                .map(|(m, n)| format!("{m}×{n}"))
                .collect();
            let denials: Vec<String> = p
                .denials()
                .counts()
                .iter()
                .map(|(d, n)| format!("{d}×{n}"))
                .collect();
            println!(
                "{:<13} {:>8} {:<16} {:<24} {:>5} {:>4} {}",
                p.principal(),
                p.requests(),
                kid,
                models.join(","),
                k.addresses().distinct(),
                k.user_agents().distinct(),
                if denials.is_empty() {
                    "-".to_owned()
                } else {
                    denials.join(",")
                }
            );
        }
    }
    println!("\nflags:");
    for f in report.flags() {
        println!(
            "  {:<17} {:<13} {:<16} {}",
            f.kind().as_str(),
            f.principal(),
            f.key_id().unwrap_or("-"),
            f.detail()
        );
    }
    Ok(())
}
