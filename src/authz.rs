//! A least-privilege authorizer: deny by default, grant by principal or scope.

use std::fmt;

use crate::Rejection;
use crate::codec::glob_match;
use crate::error::{BuildError, StageError};
use crate::principal::Principal;
use crate::request::GuardRequest;
use crate::stage::{Authorizer, Granted, StageContext};
use crate::step::Step;

/// Whether a principal pattern (`id-glob` or `namespace-glob|id-glob`) matches.
fn principal_match(pattern: &str, p: &Principal) -> bool {
    match pattern.split_once('|') {
        Some((ns, id)) => {
            let (pns, pid) = p.qualified_id().split_once('|').unwrap_or(("", p.id()));
            glob_match(ns, pns) && glob_match(id, pid)
        }
        None => !p.namespace().starts_with("jwt:") && glob_match(pattern, p.id()),
    }
}

/// One grant: who (principal ids or scopes), which models and tools, streaming, and
/// ceilings on output tokens and input size.
///
/// ```
/// use inference_guard::authz::Grant;
///
/// let g = Grant::to_scope("inference:chat")
///     .models(["gpt-4o-mini", "llama-3.*"])
///     .tools(["search"])
///     .allow_stream()
///     .max_output_tokens(2048);
/// # let _ = g;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    principals: Vec<String>,
    scopes: Vec<String>,
    models: Vec<String>,
    tools: Vec<String>,
    stream: bool,
    max_output_tokens: Option<u32>,
    max_input_bytes: Option<usize>,
}

impl Grant {
    /// A grant to principals whose id matches one of `patterns` (globs with `*`).
    ///
    /// A pattern `namespace|id` names the namespace too (both globs): for token
    /// principals write `jwt:<issuer>|<sub>` (or `jwt:*|<sub>` to mean any configured
    /// issuer). A pattern without `|` matches ids in the namespaces the operator
    /// controls (API keys, client certificates, custom verifiers) and never a token's
    /// subject, which an issuer chooses: two issuers cannot collide on one grant.
    pub fn to_principals<I, P>(patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        Self {
            principals: patterns.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A grant to principals that hold `scope`.
    pub fn to_scope(scope: impl Into<String>) -> Self {
        Self {
            scopes: vec![scope.into()],
            ..Self::default()
        }
    }

    /// The models allowed (globs with `*`). None by default.
    #[must_use]
    pub fn models<I, P>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.models.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The tools that may be offered to the model (globs with `*`). None by default.
    #[must_use]
    pub fn tools<I, P>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.tools.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Allows streamed answers. Not allowed by default.
    #[must_use]
    pub fn allow_stream(mut self) -> Self {
        self.stream = true;
        self
    }

    /// A ceiling on the `max_output_tokens` a request may ask for.
    #[must_use]
    pub fn max_output_tokens(mut self, n: u32) -> Self {
        self.max_output_tokens = Some(n);
        self
    }

    /// A ceiling on the bytes of message text a request may carry.
    #[must_use]
    pub fn max_input_bytes(mut self, n: usize) -> Self {
        self.max_input_bytes = Some(n);
        self
    }

    fn applies_to(&self, p: &Principal) -> bool {
        self.principals.iter().any(|g| principal_match(g, p))
            || self.scopes.iter().any(|s| p.has_scope(s))
    }

    /// Why this grant does not cover the request, if it does not. The first element
    /// ranks how far the request got, so the most relevant grant's reason is reported.
    fn denial(&self, req: &GuardRequest) -> Option<(u8, &'static str, &'static str)> {
        self.denial_reason(req).map(|(code, msg)| {
            let rank = match code {
                "model_not_allowed" => 0,
                "tool_not_allowed" => 1,
                "stream_not_allowed" => 2,
                "output_tokens_over_ceiling" => 3,
                _ => 4,
            };
            (rank, code, msg)
        })
    }

    fn denial_reason(&self, req: &GuardRequest) -> Option<(&'static str, &'static str)> {
        if !self.models.iter().any(|m| glob_match(m, req.model())) {
            return Some((
                "model_not_allowed",
                "the credential is not allowed to use this model",
            ));
        }
        if !req
            .tools()
            .iter()
            .all(|t| self.tools.iter().any(|g| glob_match(g, t.name())))
        {
            return Some((
                "tool_not_allowed",
                "the credential is not allowed to use a requested tool",
            ));
        }
        if req.stream() && !self.stream {
            return Some((
                "stream_not_allowed",
                "the credential is not allowed to stream",
            ));
        }
        if let (Some(max), Some(asked)) = (self.max_output_tokens, req.max_output_tokens()) {
            if asked > max {
                return Some((
                    "output_tokens_over_ceiling",
                    "max output tokens is over the allowed ceiling",
                ));
            }
        }
        if self
            .max_input_bytes
            .is_some_and(|max| req.input_bytes() > max)
        {
            return Some((
                "input_over_ceiling",
                "the input is larger than the credential may send",
            ));
        }
        None
    }
}

/// Deny by default: a request is allowed only if one grant that applies to the
/// principal covers all of it (model, every tool, streaming, output tokens, input
/// size). A denial is `403` with code `insufficient_scope`; the audit detail names
/// what was missing.
///
/// A request without `max_output_tokens` is not refused for it; the rate limiter's
/// reservation caps it.
///
/// Custom authorizers can wrap it: call [`PolicyAuthorizer::check`] from your own.
///
/// ```
/// use inference_guard::authz::{Grant, PolicyAuthorizer};
/// use inference_guard::{CredentialKind, GuardRequest, Principal};
///
/// let policy = PolicyAuthorizer::builder()
///     .grant(Grant::to_principals(["svc-*"]).models(["small-*"]))
///     .build()?;
/// let svc = Principal::builder("svc-a", CredentialKind::ApiKey).build();
/// assert!(policy.check(&svc, &GuardRequest::new("small-1")).is_ok());
/// assert_eq!(policy.check(&svc, &GuardRequest::new("large-1")).unwrap_err().status(), 403);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PolicyAuthorizer {
    grants: Vec<Grant>,
}

/// Builds a [`PolicyAuthorizer`].
#[derive(Clone, Debug, Default)]
pub struct PolicyAuthorizerBuilder {
    grants: Vec<Grant>,
}

impl PolicyAuthorizerBuilder {
    /// Adds a grant.
    pub fn grant(&mut self, grant: Grant) -> &mut Self {
        self.grants.push(grant);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if there is no grant, or a grant names no principal, scope or
    /// model.
    pub fn build(&self) -> Result<PolicyAuthorizer, BuildError> {
        if self.grants.is_empty() {
            return Err(BuildError::invalid(
                "authz.grants",
                "no grants (everything would be denied)",
            ));
        }
        for (i, g) in self.grants.iter().enumerate() {
            if g.principals.is_empty() && g.scopes.is_empty() {
                return Err(BuildError::invalid(
                    "authz.grants",
                    format!("policy grant #{i} names no principal or scope"),
                ));
            }
            if g.models.is_empty() {
                return Err(BuildError::invalid(
                    "authz.grants",
                    format!("policy grant #{i} allows no model"),
                ));
            }
        }
        Ok(PolicyAuthorizer {
            grants: self.grants.clone(),
        })
    }
}

impl PolicyAuthorizer {
    /// The model and tool patterns granted to `p`, and whether it may stream (the
    /// union of the grants that apply to it).
    /// A builder.
    pub fn builder() -> PolicyAuthorizerBuilder {
        PolicyAuthorizerBuilder::default()
    }

    /// Checks a request.
    ///
    /// # Errors
    ///
    /// A `403` [`Rejection`] whose detail names what was not granted.
    pub fn check(&self, principal: &Principal, request: &GuardRequest) -> Result<(), Rejection> {
        let mut best: Option<(u8, &str, &str)> = None;
        for g in self.grants.iter().filter(|g| g.applies_to(principal)) {
            match g.denial(request) {
                None => return Ok(()),
                Some(d) => {
                    if best.is_none_or(|b| d.0 > b.0) {
                        best = Some(d);
                    }
                }
            }
        }
        let (_, code, message) = best.unwrap_or((
            0,
            "no_grant",
            "the credential is not allowed to make this request",
        ));
        Err(Rejection::forbidden(code).with_message(message))
    }
}

impl Authorizer for PolicyAuthorizer {
    fn authorize<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<(), StageError>> {
        Step::ready(self.check(cx.principal(), cx.request()).map_err(Into::into))
    }

    /// The `max_output_tokens` of the first grant that allows the request (`None`
    /// when that grant sets no ceiling).
    fn output_ceiling(&self, cx: StageContext<'_>) -> Option<u32> {
        self.grants
            .iter()
            .find(|g| g.applies_to(cx.principal()) && g.denial(cx.request()).is_none())
            .and_then(|g| g.max_output_tokens)
    }

    /// Every grant that applies to the principal, together.
    fn grants(&self, p: &Principal) -> Option<Granted> {
        let applies = || self.grants.iter().filter(|g| g.applies_to(p));
        Some(
            Granted::new(
                applies().flat_map(|g| g.models.iter().cloned()),
                applies().flat_map(|g| g.tools.iter().cloned()),
            )
            .with_stream(applies().any(|g| g.stream)),
        )
    }

    fn name(&self) -> &str {
        "policy"
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grant(principals={:?}, scopes={:?}, models={:?})",
            self.principals, self.scopes, self.models
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialKind, ToolSpec};

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(glob_match("spiffe://prod/*", "spiffe://prod/ns/a"));
    }

    #[test]
    fn deny_by_default_and_one_grant_must_cover_everything() {
        let policy = PolicyAuthorizer::builder()
            .grant(Grant::to_scope("chat").models(["m1"]).tools(["search"]))
            .grant(
                Grant::to_scope("chat")
                    .models(["m2"])
                    .allow_stream()
                    .max_output_tokens(100),
            )
            .build()
            .unwrap();
        let p = Principal::builder("x", CredentialKind::ApiKey)
            .scope("chat")
            .build();
        let nobody = Principal::builder("y", CredentialKind::ApiKey).build();
        let code = |p: &Principal, r: GuardRequest| {
            policy.check(p, &r).err().map(|e| e.detail().to_owned())
        };
        assert_eq!(
            code(&nobody, GuardRequest::new("m1")).as_deref(),
            Some("no_grant")
        );
        assert_eq!(code(&p, GuardRequest::new("m1")), None);
        assert_eq!(
            code(&p, GuardRequest::new("m3")).as_deref(),
            Some("model_not_allowed")
        );
        assert_eq!(
            code(
                &p,
                GuardRequest::new("m1").with_tool(ToolSpec::new("search"))
            ),
            None
        );
        assert_eq!(
            code(
                &p,
                GuardRequest::new("m1").with_tool(ToolSpec::new("shell"))
            )
            .as_deref(),
            Some("tool_not_allowed")
        );
        // Streaming is granted for m2 only; tools only for m1: no grant covers both.
        assert_eq!(code(&p, GuardRequest::new("m2").with_stream(true)), None);
        assert!(code(&p, GuardRequest::new("m1").with_stream(true)).is_some());
        assert_eq!(
            code(&p, GuardRequest::new("m2").with_max_output_tokens(101)).as_deref(),
            Some("output_tokens_over_ceiling")
        );
    }

    #[test]
    fn empty_policies_do_not_build() {
        assert!(PolicyAuthorizer::builder().build().is_err());
        assert!(
            PolicyAuthorizer::builder()
                .grant(Grant::to_scope("s"))
                .build()
                .is_err()
        );
        assert!(
            PolicyAuthorizer::builder()
                .grant(Grant::default().models(["m"]))
                .build()
                .is_err()
        );
    }
}
