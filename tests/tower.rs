//! The tower layer in process (no network): what reaches the handler, what the
//! client gets back, and the paths a black-box test cannot easily reach (a stage
//! failing closed, an upstream error, receipts).
#![cfg(feature = "axum")]

use std::time::Duration;

use ::tower::ServiceExt;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use inference_guard::audit::AuditSigningKey;
use inference_guard::receipt::{ReceiptSigner, ReceiptVerifier};
use inference_guard::tower::{GuardContext, GuardLayer};
use inference_guard::*;
use serde_json::{Value, json};

fn answer(text: &str) -> Value {
    json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
}

/// A handler that echoes what it received, and who the guard said was calling.
async fn echo(ctx: GuardContext, body: Bytes) -> axum::Json<Value> {
    let req: Value = serde_json::from_slice(&body).unwrap();
    let last = req["messages"].as_array().unwrap().last().unwrap()["content"].clone();
    axum::Json(answer(&format!(
        "{} asked: {}",
        ctx.principal().id(),
        last.as_str().unwrap()
    )))
}

fn router(b: &mut GuardBuilder) -> Router {
    b.identity(verifier_fn(|r: &GuardRequest| {
        match r.credentials().bearer_token() {
            Some(_) => Ok(Principal::builder("svc-t", CredentialKind::BearerToken).build()),
            None => Err(Rejection::unauthenticated("no token").into()),
        }
    }))
    .authorize_all();
    Router::new()
        .route("/v1/chat/completions", post(echo))
        .route(
            "/v1/embeddings",
            post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "model down") }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(GuardLayer::new(b.build().unwrap()))
}

async fn send(
    app: &Router,
    path: &str,
    body: Value,
    token: bool,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::post(path).header("content-type", "application/json");
    if token {
        req = req.header("authorization", "Bearer t0k3n");
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn chat(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn the_handler_gets_the_admitted_request_and_the_principal() {
    let sink = MemorySink::new();
    let mut b = InferenceGuard::builder();
    b.audit_sink(sink.clone())
        .input_scanner(inference_guard::scan::Scanner::new());
    let app = router(&mut b);
    let (status, _, body) = send(
        &app,
        "/v1/chat/completions",
        chat("mail ana@northwind-mail.com"),
        true,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "svc-t asked: mail [REDACTED:EMAIL]"
    );
    // Other routes pass through untouched (no audit record).
    let resp = app
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sink.len(), 1);
}

#[tokio::test]
async fn a_failing_stage_is_a_503_with_retry_after() {
    let mut b = InferenceGuard::builder();
    b.audit_sink(NoopSink)
        .input_scanner(scanner_fn(|_r: &GuardRequest| {
            Err(Error::new(ErrorKind::Backend, "classifier down").into())
        }));
    let app = router(&mut b);
    let (status, headers, body) = send(&app, "/v1/chat/completions", chat("hi"), true).await;
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some());
    assert_eq!(body["error"]["type"], "server_error");
    assert!(
        !body.to_string().contains("classifier down"),
        "internal detail stays in the audit record"
    );
}

#[tokio::test]
async fn an_upstream_error_passes_through_and_refunds() {
    let sink = MemorySink::new();
    let mut b = InferenceGuard::builder();
    b.audit_sink(sink.clone());
    let app = router(&mut b);
    let (status, _, body) = send(
        &app,
        "/v1/embeddings",
        json!({"model": "m", "input": "x"}),
        true,
    )
    .await;
    assert_eq!(status, 503);
    // The status passes; the upstream's own body ("model down") does not.
    assert_eq!(body["error"]["code"], "upstream_error");
    assert!(!body.to_string().contains("model down"));
    assert_eq!(sink.records().pop().unwrap()["outcome"], "model_failed");
}

#[tokio::test]
async fn receipts_and_rate_limit_headers_come_back() {
    let key = AuditSigningKey::generate("r1").unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let mut b = InferenceGuard::builder();
    b.audit_sink(NoopSink)
        .receipts(ReceiptSigner::new(key))
        .rate_limiter(
            inference_guard::rate_limit::InMemoryRateLimiter::per_principal(
                inference_guard::rate_limit::Quota::per(Duration::from_secs(60), 1),
            ),
        );
    let app = router(&mut b);
    let (status, headers, body) = send(&app, "/v1/chat/completions", chat("hi"), true).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-ratelimit-remaining-requests").is_some());
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    let receipt = headers
        .get("x-inference-receipt")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        verifier
            .verify(receipt, text.as_bytes())
            .unwrap()
            .principal(),
        "svc-t"
    );
    let (status, headers, body) = send(&app, "/v1/chat/completions", chat("hi"), true).await;
    assert_eq!(status, 429);
    assert!(headers.get("retry-after").is_some() && headers.get("ratelimit").is_some());
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let (status, headers, _) = send(&app, "/v1/chat/completions", chat("hi"), false).await;
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").is_some());
}

/// A handler that would serve anything: a fallback proxy, an `any()` route.
async fn open_door() -> &'static str {
    "reached the handler unguarded"
}

#[tokio::test]
async fn fallbacks_nested_routers_and_any_routes_are_mediated() {
    let sink = MemorySink::new();
    let mut b = InferenceGuard::builder();
    b.identity(verifier_fn(|r: &GuardRequest| {
        match r.credentials().bearer_token() {
            Some(_) => Ok(Principal::builder("svc-t", CredentialKind::BearerToken).build()),
            None => Err(Rejection::unauthenticated("no token").into()),
        }
    }))
    .authorize_all()
    .audit_sink(sink.clone());
    let guard = b.build().unwrap();
    let api = Router::new().route("/v1/chat/completions", axum::routing::any(echo));
    let app = Router::new()
        .nest("/api", api)
        .route("/v1/chat/completions", axum::routing::any(open_door))
        .fallback(open_door)
        .layer(GuardLayer::new(guard));
    let call = |method: &'static str, path: &'static str, token: bool| {
        let app = app.clone();
        async move {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json");
            if token {
                req = req.header("authorization", "Bearer t0k3n");
            }
            let resp = app
                .oneshot(req.body(Body::from(chat("hi").to_string())).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    // Unknown paths under /v1 never reach the fallback.
    let (status, body) = call("POST", "/v1/files", true).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Other methods on an `any()` endpoint are refused.
    assert_eq!(
        call("GET", "/v1/chat/completions", true).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call("DELETE", "/v1/chat/completions", true).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // A router nested under a prefix: its endpoint is still guarded.
    assert_eq!(
        call("POST", "/api/v1/chat/completions", false).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = call("POST", "/api/v1/chat/completions", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("svc-t asked: hi"));
    // Merged slashes are guarded like the endpoint; encoded ones refused.
    assert_eq!(
        call("POST", "//v1/chat/completions", false).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call("POST", "/v1/chat/%63ompletions", true).await.0,
        StatusCode::BAD_REQUEST
    );
    // Outside the prefix, the fallback is the application's business.
    assert_eq!(call("GET", "/static/app.js", false).await.0, StatusCode::OK);
    assert!(
        sink.records()
            .iter()
            .all(|r| r["outcome"] != "completed" || r["principal"]["id"] == "svc-t")
    );
}
