//! The same OpenAI-compatible gateway on actix-web, with the guard as middleware
//! (`Transform`). The guard is built once, outside `HttpServer::new`, so its rate
//! limits, budgets and abuse state are shared by all workers.
//!
//! ```text
//! cargo run --example actix_gateway --features policy
//! ```
//!
//! Same environment, endpoints and demo model as `axum_gateway`.

#[path = "gateway_common/mod.rs"]
mod common;

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BodyStream, BoxBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{App, Error, HttpMessage, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use inference_guard::Principal;
use inference_guard::exchange::{ErrorResponse, Exchange, ExchangeConfig, SseRelay};
use inference_guard::openai::ChatCompletionRequest;

/// The guard as actix-web middleware: glue around the library's [`Exchange`],
/// which makes every decision (the same one the axum gateway's tower layer uses).
struct GuardedService<S> {
    service: Rc<S>,
    exchange: Exchange,
}

fn error_http(e: &ErrorResponse) -> HttpResponse {
    let mut r =
        HttpResponse::build(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST));
    for (name, value) in e.headers() {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.insert_header((HeaderName::from_static(name), v));
        }
    }
    r.body(e.body().to_owned())
}

async fn read_payload(
    mut payload: Payload,
    config: &ExchangeConfig,
) -> Result<Bytes, ErrorResponse> {
    let limit = config.body_limit();
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| {
                ErrorResponse::new(400, "invalid_body", "the body could not be read")
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ErrorResponse::new(
                    413,
                    "request_too_large",
                    "the body is larger than allowed",
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(config.timeout(), read)
        .await
        .unwrap_or_else(|_| {
            Err(ErrorResponse::new(
                408,
                "request_timeout",
                "the body was not received in time",
            ))
        })
}

impl<S, B> Service<ServiceRequest> for GuardedService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let exchange = self.exchange.clone();
        Box::pin(async move {
            let reject =
                |req: ServiceRequest, e: &ErrorResponse| Ok(req.into_response(error_http(e)));
            // The raw path (actix routes on a decoded one: the exchange refuses any
            // path whose two readings could differ).
            let begun = exchange.begin(
                req.method().as_str(),
                req.uri().path(),
                req.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            );
            let pending = match begun {
                Ok(Some(p)) => p,
                Ok(None) => {
                    return service
                        .call(req)
                        .await
                        .map(ServiceResponse::map_into_boxed_body);
                }
                Err(e) => return reject(req, &e),
            };
            let body = read_payload(req.take_payload(), exchange.config());
            let addr = req.peer_addr().map(|a| a.ip());
            let admitted = match exchange.admit(pending, body, addr).await {
                Ok(a) => a,
                Err(e) => return reject(req, &e),
            };
            req.headers_mut().insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(admitted.body().len()),
            );
            req.set_payload(Payload::from(Bytes::copy_from_slice(admitted.body())));
            req.extensions_mut().insert(admitted.principal().clone());
            let rate = admitted.rate_limit_headers();
            let res = match service.call(req).await {
                Ok(r) => r,
                Err(e) => {
                    admitted.upstream_failed();
                    return Err(e);
                }
            };
            let mut res = res.map_into_boxed_body();
            if !res.status().is_success() {
                let retry = res
                    .headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.as_bytes().to_vec());
                let e = admitted.upstream_error(res.status().as_u16(), retry.as_deref());
                let (req, _) = res.into_parts();
                let mut out = error_http(&e);
                for (name, value) in &rate {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        out.headers_mut().insert(HeaderName::from_static(name), v);
                    }
                }
                return Ok(ServiceResponse::new(req, out));
            }
            for (name, value) in &rate {
                if let Ok(v) = HeaderValue::from_str(value) {
                    res.headers_mut().insert(HeaderName::from_static(name), v);
                }
            }
            let sse = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if sse {
                let relay = admitted.relay();
                return Ok(res.map_body(move |_, body| {
                    BoxBody::new(BodyStream::new(SseStream { body, relay }))
                }));
            }
            let (req, res) = res.into_parts();
            let status = res.status();
            let headers = res.headers().clone();
            let read = actix_web::body::to_bytes_limited(
                res.into_body(),
                exchange.config().answer_limit(),
            )
            .await;
            let Ok(Ok(bytes)) = read else {
                let e = admitted.answer_unreadable();
                return Ok(ServiceResponse::new(req, error_http(&e)));
            };
            match admitted.answer(&bytes).await {
                Err(e) => Ok(ServiceResponse::new(req, error_http(&e))),
                Ok(answer) => {
                    let mut out = HttpResponse::build(status);
                    for (n, v) in &headers {
                        if n != header::CONTENT_LENGTH && n != header::CONTENT_TYPE {
                            out.insert_header((n.clone(), v.clone()));
                        }
                    }
                    out.insert_header((header::CONTENT_TYPE, "application/json"));
                    if let Some(r) = answer.receipt().and_then(|r| HeaderValue::from_str(r).ok()) {
                        out.insert_header(("x-inference-receipt", r));
                    }
                    Ok(ServiceResponse::new(req, out.body(answer.into_body())))
                }
            }
        })
    }
}

/// A streamed answer passed through the exchange's [`SseRelay`] chunk by chunk.
struct SseStream {
    body: BoxBody,
    relay: SseRelay,
}

impl futures_util::Stream for SseStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let body = &mut this.body;
        this.relay
            .poll_relay(cx, |cx| Pin::new(&mut *body).poll_next(cx))
            .map(|out| out.map(|b| Ok(Bytes::from(b))))
    }
}

#[derive(Clone)]
struct AppState {
    upstream: Option<String>,
    upstream_key: Option<String>,
    client: reqwest::Client,
}

fn bad_request() -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({"error": {"message": "bad request",
        "type": "invalid_request_error", "code": "invalid_request", "param": null}}))
}

async fn proxy(state: &AppState, path: &str, body: Bytes) -> HttpResponse {
    let base = state
        .upstream
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let mut req = state
        .client
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = &state.upstream_key {
        req = req.bearer_auth(k);
    }
    match req.send().await {
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            HttpResponse::build(status)
                .insert_header(("content-type", ct))
                .streaming(
                    resp.bytes_stream()
                        .map(|r| r.map_err(actix_web::error::ErrorBadGateway)),
                )
        }
        Err(_) => HttpResponse::BadGateway().body("upstream unreachable"),
    }
}

async fn chat(state: web::Data<AppState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    if state.upstream.is_some() {
        return proxy(&state, "/v1/chat/completions", body).await;
    }
    let latency = common::latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Ok(r) = serde_json::from_slice::<ChatCompletionRequest>(&body) else {
        return bad_request();
    };
    let mut resp = if r.stream == Some(true) {
        let events = common::chat_stream(&r)
            .into_iter()
            .map(|e| Ok::<_, Error>(Bytes::from(e)));
        HttpResponse::Ok()
            .insert_header(("content-type", "text/event-stream"))
            .streaming(futures_util::stream::iter(events))
    } else {
        HttpResponse::Ok().json(common::chat(&r))
    };
    // The principal the middleware established, handed to the handler.
    if let Some(p) = req.extensions().get::<Principal>() {
        if let Ok(v) = HeaderValue::from_str(p.id()) {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-demo-principal"), v);
        }
    }
    resp
}

async fn completions(state: web::Data<AppState>, body: Bytes) -> HttpResponse {
    if state.upstream.is_some() {
        return proxy(&state, "/v1/completions", body).await;
    }
    match serde_json::from_slice(&body) {
        Ok(v) => HttpResponse::Ok().json(common::completion(&v)),
        Err(_) => bad_request(),
    }
}

async fn embeddings(state: web::Data<AppState>, body: Bytes) -> HttpResponse {
    if state.upstream.is_some() {
        return proxy(&state, "/v1/embeddings", body).await;
    }
    match serde_json::from_slice(&body) {
        Ok(v) => HttpResponse::Ok().json(common::embeddings(&v)),
        Err(_) => bad_request(),
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = common::config().await?;
    let state = AppState {
        upstream: cfg.upstream.clone(),
        upstream_key: cfg.upstream_key.clone(),
        client: reqwest::Client::new(),
    };
    // Built once, outside HttpServer::new: every worker shares the same guard.
    let guarded = cfg
        .guard
        .clone()
        .map(|guard| Exchange::new(guard, cfg.exchange.clone()));
    // The exchange bounds bodies itself; actix's own limit must not be lower.
    let body_limit = cfg.exchange.body_limit();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::PayloadConfig::new(body_limit.max(8 << 20)))
            .wrap(actix_web::middleware::Condition::new(
                guarded.is_some(),
                Optional(guarded.clone()),
            ))
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/completions", web::post().to(completions))
            .route("/v1/embeddings", web::post().to(embeddings))
            .route(
                "/v1/models",
                web::get().to(|| async { HttpResponse::Ok().json(common::models()) }),
            )
            .route("/healthz", web::get().to(|| async { "ok" }))
            .route(
                "/metrics",
                web::get().to(|| async {
                    match common::metrics_text() {
                        Some(text) => HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(text),
                        None => HttpResponse::NotFound().finish(),
                    }
                }),
            )
    })
    .bind(&cfg.addr)?;
    let addr = server.addrs()[0];
    common::banner("actix_gateway", &addr, &cfg);
    server.run().await?;
    Ok(())
}

/// The guard when configured, a pass-through otherwise (for `GUARD_DISABLED=1`).
#[derive(Clone)]
struct Optional(Option<Exchange>);

impl<S, B> Transform<S, ServiceRequest> for Optional
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = GuardedService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        match &self.0 {
            Some(exchange) => ready(Ok(GuardedService {
                service: Rc::new(service),
                exchange: exchange.clone(),
            })),
            // Condition::new(false, ..) never calls this.
            None => ready(Err(())),
        }
    }
}
