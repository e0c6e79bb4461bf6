//! The axum gateway's router, shared by `axum_gateway` and the `load` example.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use inference_guard::openai::ChatCompletionRequest;
use inference_guard::tower::{ClientAddr, GuardContext, GuardLayer};

use super as common;

#[derive(Clone)]
struct App {
    upstream: Option<String>,
    upstream_key: Option<String>,
    client: reqwest::Client,
}

fn bad_request() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": {"message": "bad request", "type": "invalid_request_error", "code": "invalid_request", "param": null}})),
    )
        .into_response()
}

async fn proxy(app: &App, path: &str, body: Bytes) -> Response {
    let base = app
        .upstream
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let mut req = app
        .client
        .post(format!("{base}{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(k) = &app.upstream_key {
        req = req.bearer_auth(k);
    }
    match req.send().await {
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
                .unwrap_or(HeaderValue::from_static("application/json"));
            let mut r = Response::new(Body::from_stream(resp.bytes_stream()));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
            r
        }
        Err(_) => (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response(),
    }
}

async fn chat(State(app): State<App>, ctx: Option<GuardContext>, body: Bytes) -> Response {
    if app.upstream.is_some() {
        return proxy(&app, "/v1/chat/completions", body).await;
    }
    let latency = common::latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Ok(req) = serde_json::from_slice::<ChatCompletionRequest>(&body) else {
        return bad_request();
    };
    let mut resp = if req.stream == Some(true) {
        let events = common::chat_stream(&req)
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Bytes::from(e)));
        let mut r = Response::new(Body::from_stream(futures_util::stream::iter(events)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r
    } else {
        Json(common::chat(&req)).into_response()
    };
    // The principal the guard established, handed to the handler by the layer.
    if let Some(p) = ctx.and_then(|c| HeaderValue::from_str(c.principal().id()).ok()) {
        resp.headers_mut().insert("x-demo-principal", p);
    }
    resp
}

async fn completions(State(app): State<App>, body: Bytes) -> Response {
    if app.upstream.is_some() {
        return proxy(&app, "/v1/completions", body).await;
    }
    match serde_json::from_slice(&body) {
        Ok(v) => Json(common::completion(&v)).into_response(),
        Err(_) => bad_request(),
    }
}

async fn embeddings(State(app): State<App>, body: Bytes) -> Response {
    if app.upstream.is_some() {
        return proxy(&app, "/v1/embeddings", body).await;
    }
    match serde_json::from_slice(&body) {
        Ok(v) => Json(common::embeddings(&v)).into_response(),
        Err(_) => bad_request(),
    }
}

async fn client_addr(
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Request<Body> {
    req.extensions_mut().insert(ClientAddr(addr.ip()));
    req
}

/// The gateway's router: the routes, the guard layer when there is a guard, and the
/// client address for it.
pub fn router(cfg: &super::Config) -> Router {
    let app = App {
        upstream: cfg.upstream.clone(),
        upstream_key: cfg.upstream_key.clone(),
        client: reqwest::Client::new(),
    };
    let mut router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(|| async { Json(common::models()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|| async {
                match common::metrics_text() {
                    Some(text) => {
                        ([("content-type", "text/plain; version=0.0.4")], text).into_response()
                    }
                    None => axum::http::StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .with_state(app);
    if let Some(guard) = cfg.guard.clone() {
        router = router.layer(GuardLayer::new(guard).config(cfg.exchange.clone()));
    }
    router.layer(axum::middleware::map_request(client_addr))
}
