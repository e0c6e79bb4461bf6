//! [`Principal`]: who is calling, once identity is verified.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

names! {
    /// How the caller proved who it is.
    ///
    /// ```
    /// use inference_guard::CredentialKind;
    /// assert_eq!(CredentialKind::ApiKey.as_str(), "api_key");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum CredentialKind {
        /// A bearer token (for example a JWT).
        BearerToken = "bearer_token",
        /// An API key.
        ApiKey = "api_key",
        /// A client certificate verified by the TLS layer.
        ClientCertificate = "client_certificate",
        /// No credential: the guard was built with
        /// [`allow_anonymous`](crate::GuardBuilder::allow_anonymous).
        Anonymous = "anonymous",
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Inner {
    id: Box<str>,
    kind: CredentialKind,
    namespace: Box<str>,
    qualified: Box<str>,
    tenant: Option<Box<str>>,
    key_id: Option<Box<str>>,
    scopes: SmallVec<[Box<str>; 4]>,
    attributes: BTreeMap<String, String>,
}

/// A verified caller: its id (a SPIFFE ID, a token subject or an API key's owner),
/// tenant, how it authenticated, which key it used, its scopes and attributes.
///
/// Cloning is cheap (one reference count), so identity stages can cache principals.
/// A `Principal` never holds the credential itself.
///
/// ```
/// use inference_guard::{CredentialKind, Principal};
///
/// let p = Principal::builder("svc-billing", CredentialKind::ApiKey)
///     .tenant("acme")
///     .key_id("key_01")
///     .scope("models:gpt-4o")
///     .scope("stream")
///     .build();
/// assert_eq!(p.id(), "svc-billing");
/// assert!(p.has_scope("stream"));
/// assert_eq!(p.tenant(), Some("acme"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<Inner>);

impl Principal {
    /// Starts a principal with `id`, authenticated by `kind`.
    pub fn builder(id: impl Into<String>, kind: CredentialKind) -> PrincipalBuilder {
        PrincipalBuilder(Inner {
            id: id.into().into_boxed_str(),
            kind,
            namespace: kind.as_str().into(),
            qualified: Box::default(),
            tenant: None,
            key_id: None,
            scopes: SmallVec::new(),
            attributes: BTreeMap::new(),
        })
    }

    /// The anonymous principal, used only when the guard allows anonymous callers.
    ///
    /// ```
    /// # use inference_guard::{CredentialKind, Principal};
    /// assert_eq!(Principal::anonymous().kind(), CredentialKind::Anonymous);
    /// ```
    pub fn anonymous() -> Self {
        Self::builder("anonymous", CredentialKind::Anonymous).build()
    }

    /// The principal's id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Where its id comes from: `api_key`, `client_certificate`, `anonymous`,
    /// `jwt:<issuer>` for tokens, or what the verifier set
    /// ([`PrincipalBuilder::namespace`]). Two principals with the same id in
    /// different namespaces are different callers.
    ///
    /// ```
    /// # use inference_guard::{CredentialKind, Principal};
    /// let p = Principal::builder("svc-a", CredentialKind::ApiKey).build();
    /// assert_eq!(p.namespace(), "api_key");
    /// assert_eq!(p.qualified_id(), "api_key|svc-a");
    /// let t = Principal::builder("svc-a", CredentialKind::BearerToken).namespace("jwt:https://idp.example").build();
    /// assert_ne!(p.qualified_id(), t.qualified_id());
    /// ```
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// `namespace|id` (a `|` or `%` in the namespace is percent-escaped, so the
    /// first `|` always ends it): the key under which rate limits, budgets, abuse
    /// strikes and the inventory count this principal.
    pub fn qualified_id(&self) -> &str {
        &self.0.qualified
    }

    /// How it authenticated.
    pub fn kind(&self) -> CredentialKind {
        self.0.kind
    }

    /// Its tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }

    /// The id of the key or token it used (a JWT `kid`, an API key's id), never the
    /// key itself.
    pub fn key_id(&self) -> Option<&str> {
        self.0.key_id.as_deref()
    }

    /// Its scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.0.scopes.iter().map(|s| &**s)
    }

    /// Whether it has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| &**s == scope)
    }

    /// Free attributes set by the identity stage.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.0.attributes
    }

    /// Whether this is the anonymous principal.
    pub fn is_anonymous(&self) -> bool {
        self.0.kind == CredentialKind::Anonymous
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.0.id)
            .field("kind", &self.0.kind)
            .field("tenant", &self.0.tenant)
            .field("key_id", &self.0.key_id)
            .field("scopes", &self.0.scopes)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Principal`]; see [`Principal::builder`].
#[derive(Debug)]
pub struct PrincipalBuilder(Inner);

impl PrincipalBuilder {
    /// Sets the tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.0.tenant = Some(tenant.into().into_boxed_str());
        self
    }

    /// Sets the key id.
    #[must_use]
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.0.key_id = Some(key_id.into().into_boxed_str());
        self
    }

    /// Adds a scope.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.0.scopes.push(scope.into().into_boxed_str());
        self
    }

    /// Adds an attribute.
    #[must_use]
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.attributes.insert(key.into(), value.into());
        self
    }

    /// Sets the namespace its id belongs to (default: the credential kind's name;
    /// the JWT verifier sets `jwt:<issuer>`). See [`Principal::namespace`].
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.0.namespace = namespace.into().into_boxed_str();
        self
    }

    /// Finishes the principal.
    pub fn build(mut self) -> Principal {
        let ns = self.0.namespace.replace('%', "%25").replace('|', "%7C");
        self.0.qualified = format!("{ns}|{}", self.0.id).into_boxed_str();
        Principal(Arc::new(self.0))
    }
}
