//! [`Step`]: the return type of every stage method, ready now or later.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A boxed, `Send` future, as returned by asynchronous stage backends.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result of a stage: either available now ([`Step::ready`]) or produced by a
/// future ([`Step::future`]).
///
/// Every stage trait in this crate has one required method that returns a `Step`.
/// In-memory stages return `Step::ready(..)`, which costs nothing: no allocation,
/// no executor. Stages backed by a network service (a Redis rate limiter, a remote
/// key set) return `Step::future(async move { .. })`, which boxes the future once.
///
/// The guard runs one pipeline for both: [`InferenceGuard::check_request`] drives
/// it synchronously and fails closed if a stage turns out to be asynchronous, while
/// [`InferenceGuard::check_request_async`] awaits it. See the crate docs,
/// "Synchronous and asynchronous stages".
///
/// `Step` implements [`Future`], so a stage can also be awaited directly.
///
/// ```
/// use inference_guard::Step;
///
/// let now: Step<'_, u32> = Step::ready(7);
/// assert!(now.is_ready());
/// let later: Step<'_, u32> = Step::future(async { 7 });
/// assert!(!later.is_ready());
/// ```
///
/// [`InferenceGuard::check_request`]: crate::InferenceGuard::check_request
/// [`InferenceGuard::check_request_async`]: crate::InferenceGuard::check_request_async
#[must_use = "a Step does nothing unless it is awaited or inspected"]
pub struct Step<'a, T>(Inner<'a, T>);

enum Inner<'a, T> {
    Ready(Option<T>),
    Pending(BoxFuture<'a, T>),
}

impl<'a, T> Step<'a, T> {
    /// A value that is available now.
    ///
    /// ```
    /// # use inference_guard::Step;
    /// let s = Step::ready("done");
    /// assert_eq!(s.into_ready().ok(), Some("done"));
    /// ```
    pub fn ready(value: T) -> Self {
        Self(Inner::Ready(Some(value)))
    }

    /// A value that a future will produce. The future is boxed once.
    ///
    /// ```
    /// # use inference_guard::Step;
    /// let s = Step::future(async { 1 + 1 });
    /// assert!(!s.is_ready());
    /// ```
    pub fn future<F>(fut: F) -> Self
    where
        F: Future<Output = T> + Send + 'a,
    {
        Self(Inner::Pending(Box::pin(fut)))
    }

    /// Whether the value is available without awaiting.
    ///
    /// ```
    /// # use inference_guard::Step;
    /// assert!(Step::ready(()).is_ready());
    /// ```
    pub fn is_ready(&self) -> bool {
        matches!(self.0, Inner::Ready(Some(_)))
    }

    /// The value, if it is available now; otherwise the step itself, unchanged.
    ///
    /// # Errors
    ///
    /// Returns the step back when it is backed by a future.
    ///
    /// ```
    /// # use inference_guard::Step;
    /// assert_eq!(Step::ready(3).into_ready().ok(), Some(3));
    /// assert!(Step::future(async { 3 }).into_ready().is_err());
    /// ```
    pub fn into_ready(self) -> Result<T, Self> {
        match self.0 {
            Inner::Ready(Some(v)) => Ok(v),
            other => Err(Self(other)),
        }
    }

    /// Transforms the value once it is available.
    ///
    /// ```
    /// # use inference_guard::Step;
    /// assert_eq!(Step::ready(2).map(|v| v * 10).into_ready().ok(), Some(20));
    /// ```
    pub fn map<U, F>(self, f: F) -> Step<'a, U>
    where
        F: FnOnce(T) -> U + Send + 'a,
        T: 'a,
    {
        match self.0 {
            Inner::Ready(Some(v)) => Step::ready(f(v)),
            Inner::Ready(None) => Step(Inner::Ready(None)),
            Inner::Pending(fut) => Step::future(async move { f(fut.await) }),
        }
    }
}

impl<T> From<T> for Step<'_, T> {
    fn from(value: T) -> Self {
        Self::ready(value)
    }
}

// `Step` never moves its value out of a pinned location: the ready value is taken by
// `Option::take` and the future is already behind `Pin<Box<..>>`.
impl<T> Unpin for Step<'_, T> {}

impl<T> Future for Step<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            Inner::Ready(v) => match v.take() {
                Some(v) => Poll::Ready(v),
                // Polled again after completion: the pipeline never does this.
                None => Poll::Pending,
            },
            Inner::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for Step<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Ready(Some(_)) => f.write_str("Step::Ready"),
            Inner::Ready(None) => f.write_str("Step::Taken"),
            Inner::Pending(_) => f.write_str("Step::Pending"),
        }
    }
}

/// Drives a future that is expected to complete without waiting; `None` if it did not.
///
/// Takes the future pinned where it was built (`poll_once(pin!(..))`), so the
/// pipeline's state machine is never moved.
pub(crate) fn poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
