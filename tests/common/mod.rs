//! The shared test kit: fixtures used by the integration tests, the benches and the
//! fuzz targets (`#[path = "../tests/common/mod.rs"] mod common;`), so that a guard
//! that changes shape changes in one place. Only `std` and the crate itself here; the
//! JWT ladder (which needs `ring`) is in `jwt.rs`, the gateway launcher in
//! `gateway.rs`.
#![allow(dead_code)] // each test binary uses a part of the kit

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use inference_guard::{
    CheckedResponse, CredentialKind, Credentials, GuardBuilder, GuardRequest, GuardResponse,
    IdentityVerifier, InferenceGuard, MemorySink, NoopSink, Principal, Rejection, Role,
    verifier_fn,
};

/// The API key the kit's identity accepts.
pub(crate) const KEY: &str = "sk-test-SUPERSECRETKEYVALUE-1234567890";

/// Runs a future to completion on this thread (the guard needs no runtime of its
/// own: a stage's future is woken by whatever it waits on).
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Polls a future once: `None` if it did not complete without waiting.
pub(crate) fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// The kit's principal: an API-key service in tenant `acme` with scope `infer`.
pub(crate) fn principal() -> Principal {
    Principal::builder("svc-test", CredentialKind::ApiKey)
        .key_id("key-1")
        .tenant("acme")
        .scope("infer")
        .build()
}

/// An identity stage that accepts [`KEY`] as [`principal`] and refuses anything else.
pub(crate) fn identity() -> impl IdentityVerifier {
    verifier_fn(|req| match req.credentials().api_key() {
        Some(k) if k.expose() == KEY => Ok(principal()),
        Some(_) => Err(Rejection::unauthenticated("unknown api key").into()),
        None => Err(Rejection::unauthenticated("no credentials").into()),
    })
}

/// An identity stage whose principal is the API key itself (`svc-a` for the key
/// `svc-a`), in `tenant` when given: for tests of per-principal state.
pub(crate) fn key_as_principal(tenant: Option<&'static str>) -> impl IdentityVerifier {
    verifier_fn(move |req| {
        let who = req
            .credentials()
            .api_key()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default();
        let b = Principal::builder(who, CredentialKind::ApiKey);
        Ok(match tenant {
            Some(t) => b.tenant(t),
            None => b,
        }
        .build())
    })
}

/// A guard that admits anyone (anonymous, every request authorized, no audit), with
/// whatever else `configure` adds: the fixture for tests of one stage.
pub(crate) fn open_guard(configure: impl FnOnce(&mut GuardBuilder)) -> InferenceGuard {
    let mut b = InferenceGuard::builder();
    b.allow_anonymous().authorize_all().audit_sink(NoopSink);
    configure(&mut b);
    b.build().expect("the kit's guard builds")
}

/// [`open_guard`] with its audit records kept in memory.
pub(crate) fn audited_guard(
    configure: impl FnOnce(&mut GuardBuilder),
) -> (InferenceGuard, MemorySink) {
    let sink = MemorySink::new();
    let guard = open_guard(|b| {
        b.audit_sink(sink.clone());
        configure(b);
    });
    (guard, sink)
}

/// A request and its answer through `guard`, both passed (panics otherwise): the
/// round trip the benches time.
pub(crate) fn pass(
    guard: &InferenceGuard,
    req: GuardRequest,
    ans: GuardResponse,
) -> CheckedResponse {
    let adm = guard.check_request(req).expect("the request passes");
    adm.check_response(ans).expect("the answer passes")
}

/// A request from a user to model `m`, with no credentials.
pub(crate) fn user(text: &str) -> GuardRequest {
    GuardRequest::new("m").with_message(Role::User, text)
}

/// A chat request to `demo-model` on `/v1/chat/completions` carrying [`KEY`].
pub(crate) fn chat(text: &str) -> GuardRequest {
    GuardRequest::new("demo-model")
        .with_credentials(Credentials::from_api_key(KEY))
        .with_route("/v1/chat/completions")
        .with_message(Role::User, text)
}

/// `s` repeated and cut to at most `n` bytes, at a character boundary.
pub(crate) fn repeat_to(s: &str, n: usize) -> String {
    let mut out = s.repeat(n / s.len().max(1) + 1);
    let mut end = n.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}
