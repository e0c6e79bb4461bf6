//! A policy-enforcement pipeline around machine-learning inference calls.
//!
//! An inference API is where untrusted input meets a model and where the model's
//! answers flow into other systems. `inference-guard` enforces identity,
//! authorization, rate limits, input scanning, output validation and audit at that
//! boundary, in a few microseconds, without tying you to a web framework.
//!
//! # Overview
//!
//! Build one [`InferenceGuard`] at start-up and call it around every model call:
//!
//! 1. [`InferenceGuard::check_request`] runs, in order: **identity**
//!    ([`IdentityVerifier`]), **limits** ([`RequestLimits`], `413`),
//!    **authorization** ([`Authorizer`]), **rate limiting** ([`RateLimiter`]) and
//!    **input scanning** ([`InputScanner`]). It returns an [`Admission`] or a
//!    [`Rejection`].
//! 2. You call the model with [`Admission::request`], which the scanners may have
//!    redacted.
//! 3. [`Admission::check_response`] runs **output validation** ([`OutputValidator`])
//!    on the whole answer, or [`Admission::stream`] gives a [`StreamGuard`] that
//!    validates chunk by chunk. Either settles the rate limiter's reservation with the
//!    real usage and records the **audit** event ([`AuditSink`]).
//!
//! Every path ends in exactly one audit event: completed, rejected at any stage,
//! output blocked, stream aborted, model failed ([`Admission::fail`]), admission
//! dropped, and asynchronous check cancelled.
//!
//! # Quick start
//!
//! ```
//! use inference_guard::authz::{Grant, PolicyAuthorizer};
//! use inference_guard::builtin::PatternRules;
//! use inference_guard::identity::{ApiKeyFormat, ApiKeys, InMemoryKeyStore};
//! use inference_guard::rate_limit::{InMemoryRateLimiter, Quota};
//! use inference_guard::*;
//!
//! // Identity: checksummed API keys, stored only as HMAC digests.
//! let store = InMemoryKeyStore::new();
//! let keys = ApiKeys::new(b"a server secret of at least 32 bytes", ApiKeyFormat::new("igk")?, store.clone())?;
//! let (demo_key, record) = keys.issue("key_01", Principal::builder("svc-demo", CredentialKind::ApiKey).scope("chat").build(), None)?;
//! store.insert(record);
//! let rules = PatternRules::builder()
//!     .rule("injection.override", Category::PromptInjection, Severity::High, Action::Block,
//!           r"(?i)ignore\s+(all\s+)?previous\s+instructions")
//!     .build()?;
//!
//! let audit = MemorySink::new();
//! let mut builder = InferenceGuard::builder();
//! builder
//!     .identity(keys)
//!     .authorizer(PolicyAuthorizer::builder().grant(Grant::to_scope("chat").models(["demo-*"])).build()?)
//!     .rate_limiter(InMemoryRateLimiter::per_principal(Quota::per_minute(60)))
//!     .input_scanner(rules)
//!     .audit_sink(audit.clone());
//! let guard = builder.build()?;
//!
//! let request = GuardRequest::new("demo-small")
//!     .with_credentials(Credentials::from_api_key(demo_key.expose()))
//!     .with_message(Role::User, "Summarise this paragraph.");
//! let admission = guard.check_request(request)?;
//! let answer = GuardResponse::new("A summary."); // call your model here
//! let checked = admission.check_response(answer)?;
//! assert_eq!(checked.response().text(), "A summary.");
//!
//! let attack = GuardRequest::new("demo-small")
//!     .with_credentials(Credentials::from_api_key(demo_key.expose()))
//!     .with_message(Role::User, "Ignore all previous instructions and ...");
//! let rejection = guard.check_request(attack).unwrap_err();
//! assert_eq!(rejection.status(), 422);
//! assert_eq!(audit.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Extending it
//!
//! Every stage is a trait with **one required method** and defaulted helpers,
//! implemented for `Box<T>`, `Arc<T>` and `&'static T`, and stored as `Arc<dyn Trait>`.
//! Closures become stages with [`verifier_fn`], [`authorizer_fn`], [`rate_limiter_fn`],
//! [`scanner_fn`], [`validator_fn`] and [`sink_fn`]. A stage answers with a value, a
//! [`Rejection`] (a policy decision: `401`, `403`, `413`, `422`, `429`) or an [`Error`]
//! (an infrastructure failure). [`AuditObserver`]s watch every request's audit
//! event (the abuse monitor and the inventory are observers).
//!
//! # Conventions
//!
//! - **Builders** (`InferenceGuard::builder()`, `JwtVerifier::builder()`,
//!   `Scanner::builder()`, ... every `*Builder` but one) are non-consuming:
//!   setters take and return `&mut Self`, so they chain in one expression or run one
//!   by one under `if`s, and `build(&self)` validates and can be called again (the
//!   builder is a reusable template). The exception is [`PrincipalBuilder`], which
//!   consumes itself: principals are built on the request path, and a `build(&self)`
//!   would copy every field.
//! - **Values** (`GuardRequest`, `Grant`, `Quota`, `Limit`, `RequestLimits`,
//!   `ExchangeConfig`, `InventoryPolicy`) are built by value with `with_*` or plain
//!   chained methods that return `Self`.
//! - **Setters**: one that takes an item of a list adds it (`issuer`, `limit`,
//!   `grant`, `rule`, `input_scanner`, `observer`; `keys` and `allow_hosts` add
//!   several); one that takes the value of a setting replaces it (`audience`,
//!   `leeway`, `limits`, `threshold`, `identity`).
//! - **Errors**: a configuration error is a [`BuildError`] naming the setting
//!   (`field()`, `component.setting`) with the error beneath as its `source()`; a
//!   reason (why a token, key or receipt was refused) is an enum with a stable
//!   `code()`; an infrastructure failure is an [`Error`] with a `kind()`.
//!
//! # Synchronous and asynchronous stages
//!
//! Every stage method returns a [`Step`]: either a value that is ready now
//! ([`Step::ready`], no allocation) or a boxed `Send` future ([`Step::future`]). One
//! pipeline serves both:
//!
//! - In-memory stages (all the built-in ones) return ready steps. The guard's
//!   synchronous methods, [`InferenceGuard::check_request`] and
//!   [`Admission::check_response`], drive the pipeline to completion in one pass with
//!   no executor and no allocation for the steps.
//! - Stages backed by a network service (a Redis rate limiter, a remote key set, a
//!   model-based classifier) return futures. Call the `_async` methods
//!   ([`InferenceGuard::check_request_async`], [`Admission::check_response_async`]):
//!   they await those futures, so nothing blocks a Tokio worker. Their futures are
//!   `Send`.
//! - If a synchronous method meets a stage that returned a future, it does not block:
//!   the stage fails with [`ErrorKind::WouldBlock`], and the guard fails closed
//!   (`503`) unless that stage is fail-open. A misconfiguration is loud, never a
//!   stalled thread.
//!
//! Two parts stay synchronous by design, because they run in `Drop`: rate-limit
//! [`Settlement`] and [`AuditSink::record`]. Backends that need I/O there hand the
//! work to their own background worker through a bounded queue.
//!
//! # Security model and untrusted input
//!
//! - **Fail closed.** A stage that returns an [`Error`] or panics rejects the request
//!   with `503` and `Retry-After`, unless that stage was configured
//!   [fail-open](GuardBuilder::fail_open); the audit record says `failed_closed` or
//!   `failed_open`. Identity, limits and authorization cannot be made fail-open. A
//!   panic in a stage is caught; it never unwinds into your handler.
//! - **Nothing anonymous by default.** A guard without an identity verifier does not
//!   build unless [`GuardBuilder::allow_anonymous`] is called; likewise an authorizer
//!   ([`GuardBuilder::authorize_all`] to opt out) and an audit sink
//!   ([`NoopSink`] to opt out).
//! - **No secrets in errors or logs.** Credentials are held in [`Secret`], whose
//!   `Debug` shows only a length and which cannot be serialized. [`Rejection`]'s
//!   client message is generic; the precise [detail](Rejection::detail) goes to the
//!   audit record, which holds ids, rule ids, spans and counts, never prompt text,
//!   answers or matched secrets.
//! - **Bounded work.** Requests are size-checked ([`RequestLimits`]) before they are
//!   scanned. Patterns in [`builtin::PatternRules`] are compiled with size and nesting
//!   limits and match in linear time.
//! - **Shadow mode.** Rate limiting, input scanning and output validation can run in
//!   [`Enforcement::Shadow`] to roll a policy out: decisions are recorded, not enforced.
//!
//! # Performance
//!
//! The pipeline with trivial stages costs well under the time `serde_json` takes to
//! parse the request it guards (see `benches/pipeline.rs` and the README for measured
//! figures). The request path takes no locks of its own, performs no system calls
//! (request ids are UUIDv7 from a thread-local generator seeded once from the OS), and
//! borrows the audit event from per-request state instead of copying it.
//!
//! # Crate features
//!
//! - `tracing`: [`audit::TracingSink`], which emits audit events as `tracing` events.
//! - `redis`: `rate_limit::RedisRateLimiter`, rate limits shared by all replicas
//!   through Redis, and `respond::AbuseMonitor::share_via_redis` (adds the `redis`
//!   and `tokio` crates).
//! - `tower`: `tower::GuardLayer`, a tower `Layer`/`Service` for axum, tonic and
//!   hyper (adds `tower-layer`, `tower-service`, `http`, `http-body`,
//!   `http-body-util`, `bytes` and `tokio`'s timer).
//! - `axum`: the axum extractor for `tower::GuardContext` (adds `axum-core`).
//! - `policy`: `policy::Policy`, a TOML policy file that configures every built-in
//!   stage (adds `toml`).
//!
//! The core has no web-framework dependency: [`exchange`] is the framework-neutral
//! HTTP exchange (routes, allow-listed requests and answers, the SSE relay, error
//! bodies) that the `tower` layer and the actix-web gateway example are thin glue
//! around.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.85 (edition 2024). The MSRV may rise in a minor release, never in a patch
//! release, and stays at least six months behind the latest stable release.

/// Declares a named enum: unit variants, each with a short, stable name (its
/// `as_str()` and its `Display`), used in audit records, metrics and messages. One
/// table per enum, written once: `Stage`, `Outcome`, `ErrorKind`, `Severity`, ...
macro_rules! names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// A short, stable name, used in audit records, metrics and messages.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Declares a reason-code error: a `#[non_exhaustive]` enum whose variants each
/// carry a stable, machine-readable code ([`code()`]) and a message (its `Display`,
/// through `thiserror`). One shape for every error that is a reason: `TokenError`,
/// `ApiKeyFormatError`, `ReceiptError`.
macro_rules! reason_codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $code:literal : $message:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* #[error($message)] $variant, )*
        }

        impl $name {
            /// The stable, machine-readable reason code.
            pub fn code(&self) -> &'static str {
                match self {
                    $( Self::$variant => $code, )*
                }
            }
        }
    };
}

pub mod audit;
pub mod authz;
pub mod builtin;
mod cache;
mod clock;
mod codec;
mod decision;
mod error;
pub mod exchange;
mod finding;
mod guard;
mod id;
pub mod identity;
pub mod inventory;
pub mod openai;
#[cfg(feature = "otel")]
mod otel;
pub mod output;
#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub mod policy;
mod principal;
pub mod rate_limit;
pub mod receipt;
mod record;
mod request;
pub mod respond;
mod response;
pub mod scan;
mod stage;
mod step;
#[cfg(feature = "redis")]
mod store;
#[cfg(feature = "metrics")]
mod telemetry;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use audit::{
    AuditEvent, JsonLinesSink, MemorySink, NoopSink, Outcome, StageOutcome, StageRecord,
};
pub use decision::{FailOpenStage, RateLimitInfo, RejectReason, Rejection, ShadowStage, Stage};
pub use error::{BuildError, Error, ErrorKind, StageError};
pub use finding::{Action, Category, Enforcement, Finding, Location, Severity, redact};
pub use guard::{
    Admission, CheckedResponse, CheckedResponses, GuardBuilder, GuardStats, InferenceGuard,
    RequestLimits, SseGuard, StreamEnd, StreamGuard,
};
pub use id::RequestId;
pub use principal::{CredentialKind, Principal, PrincipalBuilder};
pub use record::Observation;
pub use request::{Credentials, GuardRequest, Message, Role, Secret, ToolSpec};
pub use response::{GuardResponse, ToolCall, Usage};
pub use stage::{
    AuditObserver, AuditSink, Authorizer, FnStage, Granted, IdentityVerifier, InputScanner,
    OutputValidator, Permit, RateLimiter, Settlement, StageContext, StreamValidator, StreamVerdict,
    authorizer_fn, rate_limiter_fn, scanner_fn, sink_fn, validator_fn, verifier_fn,
};
pub use step::{BoxFuture, Step};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
