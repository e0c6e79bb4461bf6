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
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{App, Error, HttpMessage, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use inference_guard::adapter::{
    AdapterConfig, Endpoint, ErrorResponse, OpenAiAnswer, OpenAiCall, check_content_type,
    credentials, rate_limit_headers,
};
use inference_guard::openai::ChatCompletionRequest;
use inference_guard::output::SseGuard;
use inference_guard::{InferenceGuard, Principal};

/// The guard as actix-web middleware (through [`Optional`]).
#[derive(Clone)]
struct Guarded {
    guard: InferenceGuard,
    config: AdapterConfig,
}

struct GuardedService<S> {
    service: Rc<S>,
    guard: InferenceGuard,
    config: AdapterConfig,
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
    config: &AdapterConfig,
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
        let guard = self.guard.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let endpoint = (req.method() == Method::POST)
                .then(|| Endpoint::from_path(req.path()))
                .flatten();
            let Some(endpoint) = endpoint else {
                return service
                    .call(req)
                    .await
                    .map(ServiceResponse::map_into_boxed_body);
            };
            let reject =
                |req: ServiceRequest, e: &ErrorResponse| Ok(req.into_response(error_http(e)));
            let creds = match credentials(
                req.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
                &config,
            ) {
                Ok(c) => c,
                Err(e) => return reject(req, &e),
            };
            if creds.is_empty() && guard.requires_credentials() {
                // No credentials: refused at identity (and audited) before the body
                // is read.
                let bare = inference_guard::GuardRequest::new("").with_route(req.path());
                if let Err(r) = guard.check_request_async(bare).await {
                    return reject(req, &ErrorResponse::from_rejection(&r));
                }
            }
            let length = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if length.is_some_and(|n| n > config.body_limit() as u64) {
                let e =
                    ErrorResponse::new(413, "request_too_large", "the body is larger than allowed");
                return reject(req, &e);
            }
            if let Err(e) = check_content_type(
                req.headers()
                    .get(header::CONTENT_TYPE)
                    .map(HeaderValue::as_bytes),
            ) {
                return reject(req, &e);
            }
            let bytes = match read_payload(req.take_payload(), &config).await {
                Ok(b) => b,
                Err(e) => return reject(req, &e),
            };
            let mut call = match OpenAiCall::parse(endpoint, &bytes) {
                Ok(c) => c,
                Err(e) => return reject(req, &e),
            };
            let mut greq = call.to_guard_request(creds, req.path());
            if let Some(a) = req.peer_addr() {
                greq = greq.with_client_addr(a.ip());
            }
            if let Some(ua) = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                greq = greq.with_metadata("user_agent", ua);
            }
            let admission = match guard.check_request_async(greq).await {
                Ok(a) => a,
                Err(r) => return reject(req, &ErrorResponse::from_rejection(&r)),
            };
            call.apply(admission.request());
            let body = call.to_json();
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            req.set_payload(Payload::from(Bytes::from(body)));
            req.extensions_mut().insert(admission.principal().clone());
            let rate = admission
                .rate_limit()
                .map(rate_limit_headers)
                .unwrap_or_default();
            let res = match service.call(req).await {
                Ok(r) => r,
                Err(e) => {
                    admission.fail();
                    return Err(e);
                }
            };
            let mut res = res.map_into_boxed_body();
            for (name, value) in &rate {
                if let Ok(v) = HeaderValue::from_str(value) {
                    res.headers_mut().insert(HeaderName::from_static(name), v);
                }
            }
            if !res.status().is_success() {
                admission.fail();
                return Ok(res);
            }
            let sse = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if sse {
                let guard = SseGuard::new(admission.stream());
                return Ok(res.map_body(move |_, body| {
                    BoxBody::new(BodyStream::new(SseStream {
                        body,
                        sse: Some(guard),
                    }))
                }));
            }
            let (req, res) = res.into_parts();
            let status = res.status();
            let headers = res.headers().clone();
            let read =
                actix_web::body::to_bytes_limited(res.into_body(), config.answer_limit()).await;
            let Ok(Ok(bytes)) = read else {
                admission.fail();
                let e = ErrorResponse::new(
                    502,
                    "bad_upstream_response",
                    "the model's answer could not be read",
                );
                return Ok(ServiceResponse::new(req, error_http(&e)));
            };
            let mut answer = match OpenAiAnswer::parse(endpoint, &bytes) {
                Ok(a) => a,
                Err(e) => {
                    admission.fail();
                    return Ok(ServiceResponse::new(req, error_http(&e)));
                }
            };
            match admission
                .check_response_async(answer.to_guard_response())
                .await
            {
                Err(r) => Ok(ServiceResponse::new(
                    req,
                    error_http(&ErrorResponse::from_rejection(&r)),
                )),
                Ok(checked) => {
                    let mut out = HttpResponse::build(status);
                    for (n, v) in &headers {
                        if n != header::CONTENT_LENGTH {
                            out.insert_header((n.clone(), v.clone()));
                        }
                    }
                    if let Some(r) = checked
                        .receipt()
                        .and_then(|r| HeaderValue::from_str(r).ok())
                    {
                        out.insert_header(("x-inference-receipt", r));
                    }
                    Ok(ServiceResponse::new(req, out.body(answer.apply(&checked))))
                }
            }
        })
    }
}

/// A streamed answer passed through an [`SseGuard`] chunk by chunk.
struct SseStream {
    body: BoxBody,
    sse: Option<SseGuard>,
}

impl futures_util::Stream for SseStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(sse) = this.sse.as_mut() else {
                return Poll::Ready(None);
            };
            if sse.is_ended() {
                this.sse = None;
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.body).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let out = sse.push(&data);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    let out = this.sse.take().map(SseGuard::close).unwrap_or_default();
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Bytes::from(out))));
                }
            }
        }
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
    let cfg = common::config()?;
    let state = AppState {
        upstream: cfg.upstream.clone(),
        upstream_key: cfg.upstream_key.clone(),
        client: reqwest::Client::new(),
    };
    // Built once, outside HttpServer::new: every worker shares the same guard.
    let guarded = cfg.guard.clone().map(|guard| Guarded {
        guard,
        config: common::adapter_config(),
    });
    // The adapter bounds bodies itself; actix's own limit must not be lower.
    let body_limit = common::adapter_config().body_limit();
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
    })
    .bind(&cfg.addr)?;
    let addr = server.addrs()[0];
    common::banner("actix_gateway", &addr, &cfg);
    server.run().await?;
    Ok(())
}

/// `Guarded` when configured, a pass-through otherwise (for `GUARD_DISABLED=1`).
#[derive(Clone)]
struct Optional(Option<Guarded>);

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
            Some(g) => ready(Ok(GuardedService {
                service: Rc::new(service),
                guard: g.guard.clone(),
                config: g.config.clone(),
            })),
            // Condition::new(false, ..) never calls this.
            None => ready(Err(())),
        }
    }
}
