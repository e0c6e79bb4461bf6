//! A tower [`Layer`] and [`Service`] that put the guard in front of an
//! OpenAI-compatible handler: for axum, tonic and hyper users (feature `tower`).
//!
//! It is thin glue around the framework-neutral [`Exchange`](crate::exchange):
//!
//! 1. the route is decided on the raw path ([`Route`]): the OpenAI endpoints are
//!    guarded, other paths under the guarded prefix (`/v1` by default) are refused
//!    (`404`) unless public, ambiguous encodings are a `400`, other methods a `405`;
//!    paths outside the prefix pass through untouched;
//! 2. credentials come from `Authorization: Bearer` and `x-api-key`; a request
//!    without credentials is refused before its body is read; a body over the limit
//!    is a `413` before it is read, a slow one a `408`; non-JSON a `415`;
//! 3. the body is allow-listed and checked ([`InferenceGuard::check_request_async`]);
//!    rejections are answered with their status, `WWW-Authenticate`, `Retry-After`,
//!    rate-limit headers and an OpenAI error body;
//! 4. the admitted body (redacted, allow-listed, with the enforced output ceiling)
//!    is forwarded, with a [`GuardContext`] (the principal and the request id) in
//!    its extensions;
//! 5. a JSON answer is validated choice by choice and rebuilt from the validated
//!    parts (receipt as `x-inference-receipt`); a streamed (`text/event-stream`)
//!    answer goes through the [`SseRelay`] without being buffered. An upstream
//!    error status becomes an OpenAI error with that status (not the upstream's
//!    body) and is recorded as a failed model call.
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
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

#[cfg(doc)]
use crate::exchange::Route;
use crate::exchange::{Admitted, ErrorResponse, Exchange, ExchangeConfig, SseRelay};
use crate::guard::InferenceGuard;
use crate::id::RequestId;
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
    exchange: Exchange,
}

impl GuardLayer {
    /// A layer for `guard` with the default [`ExchangeConfig`].
    pub fn new(guard: InferenceGuard) -> Self {
        Self {
            exchange: Exchange::new(guard, ExchangeConfig::default()),
        }
    }

    /// A layer around an exchange (its guard and configuration).
    pub fn from_exchange(exchange: Exchange) -> Self {
        Self { exchange }
    }

    /// Sets what the exchange accepts.
    #[must_use]
    pub fn config(self, config: ExchangeConfig) -> Self {
        Self {
            exchange: Exchange::new(self.exchange.guard().clone(), config),
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            inner,
            exchange: self.exchange.clone(),
        }
    }
}

/// The service; see the [module docs](self).
#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    exchange: Exchange,
}

impl<S> fmt::Debug for GuardService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardService")
            .field("config", self.exchange.config())
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
    set_headers(r.headers_mut(), e.headers());
    r
}

async fn read_body<B>(body: B, config: &ExchangeConfig) -> Result<Bytes, ErrorResponse>
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
        Box::pin(guarded(inner, self.exchange.clone(), req))
    }
}

async fn guarded<S, B, RB>(
    mut inner: S,
    exchange: Exchange,
    req: Request<B>,
) -> Result<Response<GuardBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: Body + From<Bytes> + Send,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let begun = exchange.begin(
        req.method().as_str(),
        req.uri().path(),
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    let pending = match begun {
        Ok(Some(p)) => p,
        Ok(None) => return inner.call(req).await.map(|r| r.map(boxed)),
        Err(e) => return Ok(error_response(&e)),
    };
    let (mut parts, body) = req.into_parts();
    let addr = parts
        .extensions
        .get::<ClientAddr>()
        .map(|a| a.0)
        .or_else(|| parts.extensions.get::<SocketAddr>().map(SocketAddr::ip));
    let admitted = match exchange
        .admit(pending, read_body(body, exchange.config()), addr)
        .await
    {
        Ok(a) => a,
        Err(e) => return Ok(error_response(&e)),
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(admitted.body().len()),
    );
    parts.extensions.insert(GuardContext {
        principal: admitted.principal().clone(),
        request_id: admitted.request_id(),
    });
    let rate = admitted.rate_limit_headers();
    let forward = Bytes::copy_from_slice(admitted.body());
    let resp = match inner
        .call(Request::from_parts(parts, B::from(forward)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            admitted.upstream_failed();
            return Err(e);
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    if !rparts.status.is_success() {
        let retry = rparts
            .headers
            .get(header::RETRY_AFTER)
            .map(HeaderValue::as_bytes);
        let e = admitted.upstream_error(rparts.status.as_u16(), retry);
        let mut r = error_response(&e);
        set_headers(r.headers_mut(), &rate);
        return Ok(r);
    }
    set_headers(&mut rparts.headers, &rate);
    let sse = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        rparts.headers.remove(header::CONTENT_LENGTH);
        let body = SseBody {
            inner: boxed(rbody),
            relay: admitted.relay(),
        };
        return Ok(Response::from_parts(rparts, body.boxed_unsync()));
    }
    Ok(validate_whole(admitted, rparts, rbody, exchange.config()).await)
}

fn set_headers(headers: &mut HeaderMap, pairs: &[(&'static str, String)]) {
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

async fn validate_whole<RB>(
    admitted: Admitted,
    mut rparts: http::response::Parts,
    rbody: RB,
    config: &ExchangeConfig,
) -> Response<GuardBody>
where
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let bytes = match Limited::new(rbody, config.answer_limit()).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return error_response(&admitted.answer_unreadable()),
    };
    match admitted.answer(&bytes).await {
        Err(e) => error_response(&e),
        Ok(answer) => {
            if let Some(r) = answer.receipt().and_then(|r| HeaderValue::from_str(r).ok()) {
                rparts.headers.insert("x-inference-receipt", r);
            }
            let body = answer.into_body();
            rparts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            rparts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            Response::from_parts(rparts, full(body))
        }
    }
}

/// A streamed answer passed through the exchange's [`SseRelay`], frame by frame.
struct SseBody {
    inner: GuardBody,
    relay: SseRelay,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let inner = &mut this.inner;
        this.relay
            .poll_relay(cx, |cx| {
                Pin::new(&mut *inner)
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map(|frame| frame.into_data().unwrap_or_default())))
            })
            .map(|out| out.map(|b| Ok(Frame::data(Bytes::from(b)))))
    }

    fn is_end_stream(&self) -> bool {
        self.relay.is_done()
    }
}
