//! A tower [`Layer`] and [`Service`] that put the guard in front of an
//! OpenAI-compatible handler: for axum, tonic and hyper users (feature `tower`).
//!
//! For `POST` requests to `/v1/chat/completions`, `/v1/completions` and
//! `/v1/embeddings` the service:
//!
//! 1. takes credentials from `Authorization: Bearer` and `x-api-key` (see
//!    [`AdapterConfig`]); a credential header sent twice is a `400`;
//! 2. refuses a body whose `Content-Length` is over the limit before reading it
//!    (`413`), then reads it with the limit and a timeout (`413`, `408`), and
//!    requires `application/json` (`415`) that parses (`400`);
//! 3. runs [`InferenceGuard::check_request_async`] (rate limits reject here, in
//!    `call`; readiness is never used for them) and answers rejections with their
//!    status, `WWW-Authenticate`, `Retry-After`, rate-limit headers and an OpenAI
//!    error body;
//! 4. forwards the admitted (possibly redacted) request, with a [`GuardContext`]
//!    (the principal and the request id) in its extensions;
//! 5. validates a JSON answer ([`Admission::check_response_async`]) and sends the
//!    receipt, when the guard issues them, as `x-inference-receipt`; or wraps a
//!    streamed (`text/event-stream`) answer in an [`SseGuard`] without buffering
//!    the stream.
//!
//! Other routes pass through untouched. An upstream error status (`4xx`/`5xx`) is
//! passed through and recorded as a failed model call.
//!
//! The client address is taken from a [`ClientAddr`] extension (insert it from
//! your server's connection info) or a `std::net::SocketAddr` extension.
//!
//! ```
//! use inference_guard::tower::GuardLayer;
//! use inference_guard::*;
//!
//! let mut b = InferenceGuard::builder();
//! b.allow_anonymous().authorize_all().audit_sink(NoopSink);
//! let layer = GuardLayer::new(b.build()?);
//! // axum: Router::new().route("/v1/chat/completions", post(handler)).layer(layer)
//! # let _ = layer;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::adapter::{
    AdapterConfig, Endpoint, ErrorResponse, OpenAiAnswer, OpenAiCall, check_content_type,
    credentials, rate_limit_headers,
};
use crate::guard::{Admission, InferenceGuard};
use crate::id::RequestId;
use crate::output::SseGuard;
use crate::principal::Principal;

/// Errors of bodies in and out of the service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of [`GuardService`].
pub type GuardBody = UnsyncBoxBody<Bytes, BoxError>;

/// The client's address, for the guard (rate limits and abuse responses by address,
/// audit records). Insert it into the request's extensions before the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// What the guard established, in the extensions of an admitted request.
#[derive(Clone, Debug)]
pub struct GuardContext {
    principal: Principal,
    request_id: RequestId,
}

impl GuardContext {
    /// Who is calling.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    /// The request's id (as in the audit record).
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for GuardContext {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "the guard layer is not installed",
        ))
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::OptionalFromRequestParts<S> for GuardContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}

/// The layer; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct GuardLayer {
    guard: InferenceGuard,
    config: AdapterConfig,
}

impl GuardLayer {
    /// A layer for `guard` with the default [`AdapterConfig`].
    pub fn new(guard: InferenceGuard) -> Self {
        Self {
            guard,
            config: AdapterConfig::default(),
        }
    }

    /// Sets what the adapter accepts.
    #[must_use]
    pub fn config(mut self, config: AdapterConfig) -> Self {
        self.config = config;
        self
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            inner,
            guard: self.guard.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service; see the [module docs](self).
#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: InferenceGuard,
    config: AdapterConfig,
}

impl<S> fmt::Debug for GuardService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn full(bytes: impl Into<Bytes>) -> GuardBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn boxed<B>(body: B) -> GuardBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An error response.
pub fn error_response(e: &ErrorResponse) -> Response<GuardBody> {
    let mut r = Response::new(full(e.body().to_owned()));
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    for (name, value) in e.headers() {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }
    r
}

/// The body's headers: its declared length against the limit, and its type.
fn check_body_headers(headers: &HeaderMap, config: &AdapterConfig) -> Result<(), ErrorResponse> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()));
    match length {
        Some(None) => {
            return Err(ErrorResponse::new(
                400,
                "invalid_header",
                "Content-Length is malformed",
            ));
        }
        Some(Some(n)) if n > config.body_limit() as u64 => {
            return Err(ErrorResponse::new(
                413,
                "request_too_large",
                "the body is larger than allowed",
            ));
        }
        _ => {}
    }
    check_content_type(headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes))
}

async fn read_body<B>(body: B, config: &AdapterConfig) -> Result<Bytes, ErrorResponse>
where
    B: Body + Send,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout(
        config.timeout(),
        Limited::new(body, config.body_limit()).collect(),
    )
    .await
    {
        Err(_) => Err(ErrorResponse::new(
            408,
            "request_timeout",
            "the body was not received in time",
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ErrorResponse::new(
            413,
            "request_too_large",
            "the body is larger than allowed",
        )),
        Ok(Err(_)) => Err(ErrorResponse::new(
            400,
            "invalid_body",
            "the body could not be read",
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

impl<S, B, RB> Service<Request<B>> for GuardService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<GuardBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GuardBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        let config = self.config.clone();
        Box::pin(guarded(inner, guard, config, req))
    }
}

async fn guarded<S, B, RB>(
    mut inner: S,
    guard: InferenceGuard,
    config: AdapterConfig,
    req: Request<B>,
) -> Result<Response<GuardBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: Body + From<Bytes> + Send,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let endpoint = (req.method() == Method::POST)
        .then(|| Endpoint::from_path(req.uri().path()))
        .flatten();
    let Some(endpoint) = endpoint else {
        return inner.call(req).await.map(|r| r.map(boxed));
    };
    let (mut parts, body) = req.into_parts();
    let creds = match credentials(
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
        &config,
    ) {
        Ok(c) => c,
        Err(e) => return Ok(error_response(&e)),
    };
    if creds.is_empty() && guard.requires_credentials() {
        // No credentials: refused at identity (and audited) before the body is read.
        let bare = crate::GuardRequest::new("").with_route(parts.uri.path());
        if let Err(r) = guard.check_request_async(bare).await {
            return Ok(error_response(&ErrorResponse::from_rejection(&r)));
        }
    }
    if let Err(e) = check_body_headers(&parts.headers, &config) {
        return Ok(error_response(&e));
    }
    let bytes = match read_body(body, &config).await {
        Ok(b) => b,
        Err(e) => return Ok(error_response(&e)),
    };
    let mut call = match OpenAiCall::parse(endpoint, &bytes) {
        Ok(c) => c,
        Err(e) => return Ok(error_response(&e)),
    };
    let mut greq = call.to_guard_request(creds, parts.uri.path());
    let addr = parts
        .extensions
        .get::<ClientAddr>()
        .map(|a| a.0)
        .or_else(|| parts.extensions.get::<SocketAddr>().map(SocketAddr::ip));
    if let Some(a) = addr {
        greq = greq.with_client_addr(a);
    }
    if let Some(ua) = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        greq = greq.with_metadata("user_agent", ua);
    }
    if let Some(tp) = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        greq = greq.with_trace_id(tp);
    }
    let admission = match guard.check_request_async(greq).await {
        Ok(a) => a,
        Err(r) => return Ok(error_response(&ErrorResponse::from_rejection(&r))),
    };
    call.apply(admission.request());
    let body = call.to_json();
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    parts.extensions.insert(GuardContext {
        principal: admission.principal().clone(),
        request_id: admission.request_id(),
    });
    let rate = admission.rate_limit().cloned();
    let resp = match inner
        .call(Request::from_parts(parts, B::from(Bytes::from(body))))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            admission.fail();
            return Err(e);
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    if let Some(info) = &rate {
        set_headers(&mut rparts.headers, &rate_limit_headers(info));
    }
    if !rparts.status.is_success() {
        admission.fail();
        return Ok(Response::from_parts(rparts, boxed(rbody)));
    }
    let sse = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        rparts.headers.remove(header::CONTENT_LENGTH);
        let body = SseBody {
            inner: boxed(rbody),
            sse: Some(SseGuard::new(admission.stream())),
        };
        return Ok(Response::from_parts(rparts, body.boxed_unsync()));
    }
    validate_whole(endpoint, admission, rparts, rbody, &config).await
}

fn set_headers(headers: &mut HeaderMap, pairs: &[(&'static str, String)]) {
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

async fn validate_whole<S, RB>(
    endpoint: Endpoint,
    admission: Admission,
    mut rparts: http::response::Parts,
    rbody: RB,
    config: &AdapterConfig,
) -> Result<Response<GuardBody>, S>
where
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let bytes = match Limited::new(rbody, config.answer_limit()).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            admission.fail();
            return Ok(error_response(&ErrorResponse::new(
                502,
                "bad_upstream_response",
                "the model's answer could not be read",
            )));
        }
    };
    let mut answer = match OpenAiAnswer::parse(endpoint, &bytes) {
        Ok(a) => a,
        Err(e) => {
            admission.fail();
            return Ok(error_response(&e));
        }
    };
    match admission
        .check_response_async(answer.to_guard_response())
        .await
    {
        Err(r) => Ok(error_response(&ErrorResponse::from_rejection(&r))),
        Ok(checked) => {
            let body = answer.apply(&checked);
            rparts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            if let Some(r) = checked
                .receipt()
                .and_then(|r| HeaderValue::from_str(r).ok())
            {
                rparts.headers.insert("x-inference-receipt", r);
            }
            Ok(Response::from_parts(rparts, full(body)))
        }
    }
}

/// A streamed answer passed through an [`SseGuard`], frame by frame.
struct SseBody {
    inner: GuardBody,
    sse: Option<SseGuard>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(sse) = this.sse.as_mut() else {
                return Poll::Ready(None);
            };
            if sse.is_ended() {
                // Nothing more is sent once the stream is over (or blocked); dropping
                // the upstream body closes it.
                this.sse = None;
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let out = sse.push(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    // The upstream ended (or failed): without `[DONE]` this is an
                    // aborted stream, recorded as such.
                    let out = this.sse.take().map(SseGuard::close).unwrap_or_default();
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sse.is_none()
    }
}
