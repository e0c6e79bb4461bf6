//! The framework-neutral half of an HTTP adapter: credentials from headers, OpenAI
//! request and response bodies, and rejections as HTTP responses. The `tower` layer
//! ([`crate::tower`], feature `tower`) and the actix-web middleware of the gateway
//! example are built on it; use it to write an adapter for another framework.
//!
//! ```
//! use inference_guard::adapter::{credentials, Endpoint, OpenAiCall, AdapterConfig};
//!
//! let cfg = AdapterConfig::default();
//! let headers = [("authorization", &b"Bearer abc.def.ghi"[..]), ("content-type", b"application/json")];
//! let creds = credentials(headers.iter().map(|(n, v)| (*n, *v)), &cfg).unwrap();
//! assert!(creds.bearer_token().is_some());
//!
//! let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
//! let call = OpenAiCall::parse(Endpoint::ChatCompletions, body).unwrap();
//! let req = call.to_guard_request(creds, "/v1/chat/completions");
//! assert_eq!(req.messages()[0].content(), "hi");
//! ```

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::decision::Rejection;
use crate::guard::CheckedResponse;
use crate::openai::{ChatCompletionRequest, ChatCompletionResponse};
use crate::request::{Credentials, GuardRequest, Role};
use crate::response::{GuardResponse, Usage};

/// What an adapter accepts.
#[derive(Clone, Debug)]
pub struct AdapterConfig {
    max_body_bytes: usize,
    api_key_header: String,
    read_timeout: Duration,
    max_answer_bytes: usize,
}

impl Default for AdapterConfig {
    /// Bodies up to 1 MiB read within 10 s, API keys in `x-api-key` (and as
    /// `Authorization: Bearer`), answers up to 8 MiB.
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            api_key_header: "x-api-key".to_owned(),
            read_timeout: Duration::from_secs(10),
            max_answer_bytes: 8 << 20,
        }
    }
}

impl AdapterConfig {
    /// The largest request body accepted (`413` above it, before it is read).
    #[must_use]
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }
    /// The header that carries API keys (default `x-api-key`).
    #[must_use]
    pub fn api_key_header(mut self, name: impl Into<String>) -> Self {
        self.api_key_header = name.into().to_ascii_lowercase();
        self
    }
    /// How long a client may take to send its body (`408` after it).
    #[must_use]
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }
    /// The largest non-streamed answer read from the model (`502` above it).
    #[must_use]
    pub fn max_answer_bytes(mut self, n: usize) -> Self {
        self.max_answer_bytes = n;
        self
    }
    /// See [`max_body_bytes`](Self::max_body_bytes).
    pub fn body_limit(&self) -> usize {
        self.max_body_bytes
    }
    /// See [`read_timeout`](Self::read_timeout).
    pub fn timeout(&self) -> Duration {
        self.read_timeout
    }
    /// See [`max_answer_bytes`](Self::max_answer_bytes).
    pub fn answer_limit(&self) -> usize {
        self.max_answer_bytes
    }
}

/// An HTTP error response in the OpenAI error shape.
#[derive(Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl fmt::Debug for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponse")
            .field("status", &self.status)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl ErrorResponse {
    /// A protocol error (`400`, `408`, `413`, `415`, ...) with an OpenAI-style body of
    /// type `invalid_request_error`.
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        let kind = if status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
                .to_string(),
        }
    }

    /// The response for a rejection: its status, `WWW-Authenticate`, `Retry-After`,
    /// rate-limit headers (`x-ratelimit-*` and the IETF `RateLimit-Policy` /
    /// `RateLimit`), and its OpenAI error body.
    pub fn from_rejection(r: &Rejection) -> Self {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(c) = r.challenge() {
            headers.push(("www-authenticate", c.to_owned()));
        }
        if let Some(s) = r.retry_after_secs() {
            headers.push(("retry-after", s.to_string()));
        }
        if let Some(info) = r.rate_limit() {
            headers.extend(rate_limit_headers(info));
        }
        let mut body = r.openai_error();
        body["error"]["param"] = Value::Null;
        Self {
            status: r.status(),
            headers,
            body: body.to_string(),
        }
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The headers (lowercase names).
    pub fn headers(&self) -> &[(&'static str, String)] {
        &self.headers
    }
    /// The JSON body.
    pub fn body(&self) -> &str {
        &self.body
    }
}

/// Rate-limit headers for a decision: `x-ratelimit-limit-requests`,
/// `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the IETF
/// `ratelimit-policy` / `ratelimit`.
pub fn rate_limit_headers(info: &crate::RateLimitInfo) -> Vec<(&'static str, String)> {
    let reset = crate::decision::ceil_secs(info.reset());
    let mut h = vec![
        ("x-ratelimit-limit-requests", info.limit().to_string()),
        (
            "x-ratelimit-remaining-requests",
            info.remaining().to_string(),
        ),
        ("x-ratelimit-reset-requests", format!("{reset}s")),
    ];
    if let Some(p) = info.policy() {
        let name = p.split(';').next().unwrap_or("\"default\"").to_owned();
        h.push(("ratelimit-policy", p.to_owned()));
        h.push((
            "ratelimit",
            format!("{name};r={};t={reset}", info.remaining()),
        ));
    }
    h
}

/// Reads credentials from request headers (name, raw value): `Authorization:
/// Bearer` and the API-key header. A header sent twice, a value that is not
/// visible ASCII, or an `Authorization` scheme other than `Bearer` is a `400` or
/// `401` here, before any stage runs.
///
/// # Errors
///
/// An [`ErrorResponse`] for duplicated or malformed credential headers.
pub fn credentials<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    config: &AdapterConfig,
) -> Result<Credentials, ErrorResponse> {
    let mut auth: Option<&[u8]> = None;
    let mut key: Option<&[u8]> = None;
    for (name, value) in headers {
        let slot = if name.eq_ignore_ascii_case("authorization") {
            &mut auth
        } else if name.eq_ignore_ascii_case(&config.api_key_header) {
            &mut key
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(ErrorResponse::new(
                400,
                "duplicate_credentials",
                "a credential header was sent more than once",
            ));
        }
        *slot = Some(value);
    }
    let text = |v: &[u8]| -> Result<String, ErrorResponse> {
        let s = std::str::from_utf8(v)
            .ok()
            .filter(|s| s.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' '))
            .ok_or_else(|| {
                ErrorResponse::new(400, "invalid_header", "a credential header is malformed")
            })?;
        Ok(s.trim().to_owned())
    };
    let mut creds = Credentials::none();
    if let Some(v) = auth {
        let v = text(v)?;
        let (scheme, token) = v.split_once(' ').unwrap_or((v.as_str(), ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            let r = Rejection::unauthenticated("authorization scheme is not Bearer")
                .with_message("the Authorization header must be 'Bearer <token>'")
                .with_challenge("Bearer realm=\"inference\"");
            return Err(ErrorResponse::from_rejection(&r));
        }
        creds = creds.with_bearer(token.trim());
    }
    if let Some(v) = key {
        let v = text(v)?;
        if !v.is_empty() {
            creds = creds.with_api_key(v);
        }
    }
    Ok(creds)
}

/// Checks the `Content-Type` of a request body: JSON only.
///
/// # Errors
///
/// `415` for anything but `application/json` (parameters such as `charset=utf-8`
/// are accepted).
pub fn check_content_type(value: Option<&[u8]>) -> Result<(), ErrorResponse> {
    let ok = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(ErrorResponse::new(
            415,
            "unsupported_media_type",
            "the body must be application/json",
        ))
    }
}

/// The OpenAI endpoints the adapters guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions` (legacy; not streamed).
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// The endpoint of a path (with or without the `/v1` prefix).
    pub fn from_path(path: &str) -> Option<Self> {
        let p = path.strip_prefix("/v1").unwrap_or(path);
        match p.trim_end_matches('/') {
            "/chat/completions" => Some(Self::ChatCompletions),
            "/completions" => Some(Self::Completions),
            "/embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }
}

/// One guarded OpenAI call: its parsed body, kept so that the admitted (possibly
/// redacted) text can be written back before forwarding.
#[derive(Clone, Debug)]
pub struct OpenAiCall {
    endpoint: Endpoint,
    chat: Option<ChatCompletionRequest>,
    other: Value,
}

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) if a.iter().all(Value::is_string) => Some(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
        ),
        // Token arrays carry no text to scan; they are passed as they are.
        Value::Array(a) if a.iter().all(|x| x.is_number() || x.is_array()) => Some(Vec::new()),
        _ => None,
    }
}

impl OpenAiCall {
    /// Parses a request body.
    ///
    /// # Errors
    ///
    /// `400` for a body that is not UTF-8, not JSON, or not the endpoint's shape;
    /// `400` for a streamed legacy completion (only chat completions stream).
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Self, ErrorResponse> {
        if std::str::from_utf8(body).is_err() {
            return Err(ErrorResponse::new(
                400,
                "invalid_utf8",
                "the body is not valid UTF-8",
            ));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|_| ErrorResponse::new(400, "invalid_json", "the body is not valid JSON"))?;
        let shape = |what: &str| ErrorResponse::new(400, "invalid_request", what);
        if !value.is_object() || !value.get("model").is_some_and(Value::is_string) {
            return Err(shape("the body must be an object with a string 'model'"));
        }
        match endpoint {
            Endpoint::ChatCompletions => {
                let chat: ChatCompletionRequest = serde_json::from_value(value)
                    .map_err(|_| shape("'messages' must be a list of chat messages"))?;
                Ok(Self {
                    endpoint,
                    chat: Some(chat),
                    other: Value::Null,
                })
            }
            Endpoint::Completions | Endpoint::Embeddings => {
                let field = if endpoint == Endpoint::Completions {
                    "prompt"
                } else {
                    "input"
                };
                if value.get(field).and_then(strings).is_none() {
                    return Err(shape(&format!(
                        "'{field}' must be a string or a list of strings"
                    )));
                }
                if endpoint == Endpoint::Completions
                    && value.get("stream").and_then(Value::as_bool) == Some(true)
                {
                    return Err(shape("streaming is supported on chat completions only"));
                }
                Ok(Self {
                    endpoint,
                    chat: None,
                    other: value,
                })
            }
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// Whether the answer will be streamed.
    pub fn stream(&self) -> bool {
        self.chat.as_ref().is_some_and(|c| c.stream == Some(true))
    }

    /// The guard's view of the call.
    pub fn to_guard_request(&self, credentials: Credentials, route: &str) -> GuardRequest {
        if let Some(chat) = &self.chat {
            return chat.to_guard_request(credentials, route);
        }
        let v = &self.other;
        let field = if self.endpoint == Endpoint::Completions {
            "prompt"
        } else {
            "input"
        };
        let mut req = GuardRequest::new(v["model"].as_str().unwrap_or_default())
            .with_credentials(credentials)
            .with_route(route);
        for s in v.get(field).and_then(strings).unwrap_or_default() {
            req = req.with_message(Role::User, s);
        }
        if let Some(n) = v.get("max_tokens").and_then(Value::as_u64) {
            req = req.with_max_output_tokens(u32::try_from(n).unwrap_or(u32::MAX));
        }
        req
    }

    /// Writes the admitted (possibly redacted) texts back.
    pub fn apply(&mut self, admitted: &GuardRequest) {
        if let Some(chat) = &mut self.chat {
            chat.apply_messages(admitted);
            return;
        }
        let field = if self.endpoint == Endpoint::Completions {
            "prompt"
        } else {
            "input"
        };
        let texts: Vec<Value> = admitted
            .messages()
            .iter()
            .map(|m| Value::from(m.content()))
            .collect();
        if texts.is_empty() {
            return;
        }
        self.other[field] = if self.other[field].is_string() && texts.len() == 1 {
            texts.into_iter().next().unwrap_or_default()
        } else {
            Value::Array(texts)
        };
    }

    /// The body to forward.
    pub fn to_json(&self) -> Vec<u8> {
        match &self.chat {
            Some(c) => serde_json::to_vec(c).unwrap_or_default(),
            None => serde_json::to_vec(&self.other).unwrap_or_default(),
        }
    }
}

/// A model's non-streamed answer, parsed for validation.
#[derive(Clone, Debug)]
pub struct OpenAiAnswer {
    endpoint: Endpoint,
    chat: Option<ChatCompletionResponse>,
    other: Value,
}

impl OpenAiAnswer {
    /// Parses the model's answer.
    ///
    /// # Errors
    ///
    /// `502` when the upstream's body is not the endpoint's JSON.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Self, ErrorResponse> {
        let bad = || {
            ErrorResponse::new(
                502,
                "bad_upstream_response",
                "the model's answer could not be read",
            )
        };
        match endpoint {
            Endpoint::ChatCompletions => Ok(Self {
                endpoint,
                chat: Some(serde_json::from_slice(body).map_err(|_| bad())?),
                other: Value::Null,
            }),
            _ => {
                let v: Value = serde_json::from_slice(body).map_err(|_| bad())?;
                if !v.is_object() {
                    return Err(bad());
                }
                Ok(Self {
                    endpoint,
                    chat: None,
                    other: v,
                })
            }
        }
    }

    /// The guard's view of the answer.
    pub fn to_guard_response(&self) -> GuardResponse {
        if let Some(c) = &self.chat {
            return c.to_guard_response();
        }
        let mut r = GuardResponse::default();
        if self.endpoint == Endpoint::Completions {
            r.set_text(
                self.other["choices"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        let usage = &self.other["usage"];
        if let Some(p) = usage["prompt_tokens"].as_u64() {
            r = r.with_usage(Usage::new(
                p,
                usage["completion_tokens"].as_u64().unwrap_or(0),
            ));
        }
        r
    }

    /// The body to send to the caller, with the validated (possibly redacted) answer.
    pub fn apply(&mut self, checked: &CheckedResponse) -> Vec<u8> {
        if let Some(c) = &mut self.chat {
            c.apply_response(checked.response());
            return serde_json::to_vec(c).unwrap_or_default();
        }
        if self.endpoint == Endpoint::Completions {
            self.other["choices"][0]["text"] = Value::from(checked.response().text());
        }
        serde_json::to_vec(&self.other).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes()))
    }

    #[test]
    fn credential_headers() {
        let c = AdapterConfig::default();
        assert!(
            credentials(h(&[("Authorization", "Bearer x")]), &c)
                .unwrap()
                .bearer_token()
                .is_some()
        );
        assert!(
            credentials(h(&[("X-Api-Key", "igk_1")]), &c)
                .unwrap()
                .api_key()
                .is_some()
        );
        assert_eq!(
            credentials(
                h(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]),
                &c
            )
            .unwrap_err()
            .status(),
            400
        );
        assert_eq!(
            credentials(h(&[("authorization", "Basic dXNlcjpw")]), &c)
                .unwrap_err()
                .status(),
            401
        );
        assert_eq!(
            credentials(h(&[("authorization", "Bearer\u{7f}x")]), &c)
                .unwrap_err()
                .status(),
            400
        );
        assert!(credentials(h(&[]), &c).unwrap().is_empty());
    }

    #[test]
    fn bodies_by_endpoint() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(Endpoint::from_path("/v1/models"), None);
        assert_eq!(
            OpenAiCall::parse(Endpoint::ChatCompletions, b"\xff")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            OpenAiCall::parse(Endpoint::ChatCompletions, b"{")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            OpenAiCall::parse(Endpoint::ChatCompletions, b"[]")
                .unwrap_err()
                .status(),
            400
        );
        let mut e = OpenAiCall::parse(
            Endpoint::Embeddings,
            br#"{"model":"e","input":["a b","c"]}"#,
        )
        .unwrap();
        let r = e.to_guard_request(Credentials::none(), "/v1/embeddings");
        assert_eq!(r.messages().len(), 2);
        let redacted = GuardRequest::new("e")
            .with_message(Role::User, "x")
            .with_message(Role::User, "y");
        e.apply(&redacted);
        assert!(
            String::from_utf8(e.to_json())
                .unwrap()
                .contains(r#""input":["x","y"]"#)
        );
        assert!(
            OpenAiCall::parse(
                Endpoint::Completions,
                br#"{"model":"c","prompt":"p","stream":true}"#
            )
            .is_err()
        );
        assert_eq!(
            check_content_type(Some(b"application/json; charset=utf-8")),
            Ok(())
        );
        assert_eq!(
            check_content_type(Some(b"text/plain"))
                .unwrap_err()
                .status(),
            415
        );
    }
}
