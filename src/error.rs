//! Error types: [`Error`] for infrastructure failures, [`BuildError`] for invalid
//! configuration, and [`StageError`], what a stage returns when it does not pass a
//! request.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::decision::Rejection;

names! {
    /// What kind of infrastructure failure an [`Error`] is.
    ///
    /// ```
    /// use inference_guard::{Error, ErrorKind};
    ///
    /// let e = Error::new(ErrorKind::Backend, "redis: connection refused");
    /// assert_eq!(e.kind(), ErrorKind::Backend);
    /// ```
    ///
    /// ```
    /// # use inference_guard::ErrorKind;
    /// assert_eq!(ErrorKind::WouldBlock.as_str(), "would_block");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum ErrorKind {
        /// A backend the stage depends on (a database, a key server, Redis) failed or
        /// could not be reached.
        Backend = "backend",
        /// A stage panicked. The guard caught the panic and failed the stage.
        Panicked = "panicked",
        /// A stage returned a future, but the guard was driven synchronously with
        /// [`InferenceGuard::check_request`](crate::InferenceGuard::check_request).
        /// Use the `_async` methods for guards with asynchronous stages.
        WouldBlock = "would_block",
        /// The audit sink could not record an event.
        Audit = "audit",
        /// A stage's configuration or state is inconsistent.
        Internal = "internal",
        /// The response given to the guard could not be understood.
        InvalidResponse = "invalid_response",
        /// A stage's own capacity is exhausted (its queue is full): retry later.
        Overloaded = "overloaded",
        /// A stage did not finish within its deadline.
        Timeout = "timeout",
        /// Something else; see the message.
        Other = "other",
    }
}

/// An infrastructure failure: a backend that did not answer, a stage that panicked.
///
/// This is not a policy outcome (that is a [`Rejection`]); the guard turns an `Error`
/// into a `503` rejection unless the failing stage was configured fail-open.
///
/// `Error` is opaque: inspect it with [`Error::kind`]. It is cheap to clone.
///
/// # Security
///
/// The message must not contain credentials or prompt text; it goes into audit
/// records. Built-in stages only put error kinds, lengths and identifiers in it.
///
/// ```
/// use inference_guard::{Error, ErrorKind};
///
/// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
/// let e = Error::with_source(ErrorKind::Backend, "key server", io);
/// assert_eq!(e.to_string(), "backend: key server");
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` with a message.
    ///
    /// ```
    /// # use inference_guard::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::Internal, "quota table missing");
    /// assert_eq!(e.message(), "quota table missing");
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` with a message and an underlying cause.
    ///
    /// ```
    /// # use inference_guard::{Error, ErrorKind};
    /// let cause = std::io::Error::other("disk full");
    /// let e = Error::with_source(ErrorKind::Audit, "audit log", cause);
    /// assert_eq!(e.kind(), ErrorKind::Audit);
    /// ```
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// What kind of failure this is.
    ///
    /// ```
    /// # use inference_guard::{Error, ErrorKind};
    /// assert_eq!(Error::new(ErrorKind::Other, "x").kind(), ErrorKind::Other);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind prefix.
    ///
    /// ```
    /// # use inference_guard::{Error, ErrorKind};
    /// assert_eq!(Error::new(ErrorKind::Other, "x").message(), "x");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn panicked(stage: &'static str) -> Self {
        Self::new(ErrorKind::Panicked, format!("stage {stage} panicked"))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// What a stage returns when it does not let a request through: either a policy
/// [`Rejection`] (the caller gets its status and message) or an infrastructure
/// [`Error`] (the guard fails closed with `503`, or continues if the stage was
/// configured fail-open).
///
/// Both convert with `?` or `.into()`:
///
/// ```
/// use inference_guard::{Error, ErrorKind, Rejection, StageError};
///
/// let denied: StageError = Rejection::forbidden("model not allowed").into();
/// assert!(denied.as_rejection().is_some());
/// let failed: StageError = Error::new(ErrorKind::Backend, "timeout").into();
/// assert!(failed.as_error().is_some());
/// ```
#[derive(Clone, Debug)]
pub struct StageError(StageErrorRepr);

#[derive(Clone, Debug)]
enum StageErrorRepr {
    Reject(Rejection),
    Fail(Error),
}

impl StageError {
    /// The rejection, if this is a policy decision.
    ///
    /// ```
    /// # use inference_guard::{Rejection, StageError};
    /// let e = StageError::from(Rejection::unauthenticated("expired"));
    /// assert_eq!(e.as_rejection().unwrap().status(), 401);
    /// ```
    pub fn as_rejection(&self) -> Option<&Rejection> {
        match &self.0 {
            StageErrorRepr::Reject(r) => Some(r),
            StageErrorRepr::Fail(_) => None,
        }
    }

    /// The error, if this is an infrastructure failure.
    ///
    /// ```
    /// # use inference_guard::{Error, ErrorKind, StageError};
    /// let e = StageError::from(Error::new(ErrorKind::Backend, "down"));
    /// assert_eq!(e.as_error().unwrap().kind(), ErrorKind::Backend);
    /// ```
    pub fn as_error(&self) -> Option<&Error> {
        match &self.0 {
            StageErrorRepr::Fail(e) => Some(e),
            StageErrorRepr::Reject(_) => None,
        }
    }

    pub(crate) fn into_parts(self) -> Result<Rejection, Error> {
        match self.0 {
            StageErrorRepr::Reject(r) => Ok(r),
            StageErrorRepr::Fail(e) => Err(e),
        }
    }
}

impl From<Rejection> for StageError {
    fn from(r: Rejection) -> Self {
        Self(StageErrorRepr::Reject(r))
    }
}

impl From<Error> for StageError {
    fn from(e: Error) -> Self {
        Self(StageErrorRepr::Fail(e))
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            StageErrorRepr::Reject(r) => write!(f, "rejected: {r}"),
            StageErrorRepr::Fail(e) => write!(f, "failed: {e}"),
        }
    }
}

impl std::error::Error for StageError {}

/// The guard's configuration is invalid; returned by
/// [`GuardBuilder::build`](crate::GuardBuilder::build).
///
/// The message says what is wrong and how to fix it.
///
/// ```
/// use inference_guard::InferenceGuard;
///
/// let err = InferenceGuard::builder().build().unwrap_err();
/// assert!(err.to_string().contains("identity"));
/// ```
#[derive(Clone, Debug)]
pub struct BuildError {
    field: Option<Cow<'static, str>>,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The source is the error itself (a `regex::Error`, a `serde_json::Error`), so
/// `downcast_ref` finds it.
impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for BuildError {
    /// Same field and message (the sources are not compared).
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field && self.message == other.message
    }
}

impl Eq for BuildError {}

impl BuildError {
    /// An invalid setting, named as the builder method (or policy key) that sets it,
    /// `component.setting`: `jwt.audience`, `guard.identity`, `rate_limit.limits`.
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(Cow::Borrowed(field)),
            message: message.into(),
            source: None,
        }
    }

    /// The same error about a setting named at run time (a rule id, a grant number).
    pub(crate) fn invalid_owned(field: String, message: impl Into<String>) -> Self {
        Self {
            field: Some(Cow::Owned(field)),
            message: message.into(),
            source: None,
        }
    }

    /// With the error that caused it (a regex that did not compile, JSON that did
    /// not parse).
    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The setting that is wrong, as `component.setting` (`jwt.audience`,
    /// `guard.identity`, `rate_limit.limits`), when one setting is.
    ///
    /// ```
    /// # use inference_guard::InferenceGuard;
    /// let err = InferenceGuard::builder().build().unwrap_err();
    /// assert_eq!(err.field(), Some("guard.identity"));
    /// ```
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// What is wrong, without the common prefix and the field.
    ///
    /// ```
    /// # use inference_guard::InferenceGuard;
    /// let err = InferenceGuard::builder().build().unwrap_err();
    /// assert!(err.message().starts_with("no identity verifier"));
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}
