//! Simple, complete built-in stages: static API keys, a scope authorizer and a
//! regular-expression rule set.
//!
//! They are enough to put a guard in front of a model today and they show the shape
//! of each stage; the dedicated identity, rate-limit and scanner modules go further
//! (JWT verification, policies, secret and injection detectors).

use std::collections::HashMap;
use std::fmt;

use regex::{Regex, RegexBuilder};

use crate::decision::Rejection;
use crate::error::{BuildError, StageError};
use crate::finding::{Action, Category, Finding, Location, Severity};
use crate::principal::Principal;
use crate::request::GuardRequest;
use crate::response::GuardResponse;
use crate::stage::{Authorizer, IdentityVerifier, InputScanner, OutputContext, OutputValidator};
use crate::step::Step;

/// API keys held as keyed digests (HMAC-SHA256 under a server secret): the keys
/// themselves are never stored, and a lookup compares digests, not keys.
///
/// ```
/// use inference_guard::builtin::StaticApiKeys;
/// use inference_guard::{CredentialKind, Principal};
///
/// let mut keys = StaticApiKeys::new(b"server-secret-at-least-32-bytes!!")?;
/// keys.insert("ig_demo_123", Principal::builder("svc-a", CredentialKind::ApiKey).key_id("k1").build());
/// assert_eq!(keys.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StaticApiKeys {
    key: ring::hmac::Key,
    principals: HashMap<[u8; 32], Principal>,
}

impl fmt::Debug for StaticApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticApiKeys")
            .field("keys", &self.principals.len())
            .finish_non_exhaustive()
    }
}

impl StaticApiKeys {
    /// An empty key set whose digests are keyed by `server_secret`.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] if the secret is shorter than 32 bytes.
    pub fn new(server_secret: &[u8]) -> Result<Self, BuildError> {
        if server_secret.len() < 32 {
            return Err(BuildError::new(
                "the API-key server secret must be at least 32 bytes",
            ));
        }
        Ok(Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, server_secret),
            principals: HashMap::new(),
        })
    }

    fn digest(&self, api_key: &str) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.key, api_key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Registers `api_key` for `principal`. Only its digest is kept.
    pub fn insert(&mut self, api_key: &str, principal: Principal) -> &mut Self {
        let d = self.digest(api_key);
        self.principals.insert(d, principal);
        self
    }

    /// Forgets `api_key`.
    pub fn revoke(&mut self, api_key: &str) -> bool {
        let d = self.digest(api_key);
        self.principals.remove(&d).is_some()
    }

    /// How many keys are registered.
    pub fn len(&self) -> usize {
        self.principals.len()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
    }
}

impl IdentityVerifier for StaticApiKeys {
    fn verify<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Principal, StageError>> {
        let result = match request.credentials().api_key() {
            None if request.credentials().bearer_token().is_some() => {
                Err(Rejection::unauthenticated(
                    "bearer token presented; this verifier accepts API keys",
                ))
            }
            None => Err(Rejection::unauthenticated("no credentials")),
            Some(k) if k.len() > 512 => Err(Rejection::unauthenticated("api key too long")),
            Some(k) => self
                .principals
                .get(&self.digest(k.expose()))
                .cloned()
                .ok_or_else(|| Rejection::unauthenticated("unknown api key")),
        };
        Step::ready(result.map_err(Into::into))
    }

    fn name(&self) -> &str {
        "static_api_keys"
    }
}

/// A least-privilege authorizer driven by the principal's scopes:
///
/// - `model:NAME` allows one model; `model:PREFIX*` allows models starting with
///   `PREFIX`; `model:*` allows every model.
/// - `tool:NAME` allows offering that tool to the model (`tool:*` every tool).
/// - `stream` allows streamed answers.
///
/// Everything else is denied (`403`). A ceiling on `max_output_tokens` can be set.
///
/// ```
/// use inference_guard::builtin::ScopeAuthorizer;
/// let authz = ScopeAuthorizer::new().max_output_tokens(4096);
/// # let _ = authz;
/// ```
#[derive(Clone, Debug, Default)]
pub struct ScopeAuthorizer {
    max_output_tokens: Option<u32>,
}

impl ScopeAuthorizer {
    /// An authorizer with no output-token ceiling.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rejects requests asking for more than `n` output tokens.
    #[must_use]
    pub fn max_output_tokens(mut self, n: u32) -> Self {
        self.max_output_tokens = Some(n);
        self
    }

    fn allows(principal: &Principal, kind: &str, name: &str) -> bool {
        principal.scopes().any(|s| {
            let Some(pattern) = s.strip_prefix(kind).and_then(|r| r.strip_prefix(':')) else {
                return false;
            };
            match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            }
        })
    }

    fn check(&self, principal: &Principal, request: &GuardRequest) -> Result<(), Rejection> {
        if !Self::allows(principal, "model", request.model()) {
            return Err(
                Rejection::forbidden(format!("model not in scopes of {}", principal.id()))
                    .with_message("the credential is not allowed to use this model"),
            );
        }
        if let Some(t) = request
            .tools()
            .iter()
            .find(|t| !Self::allows(principal, "tool", t.name()))
        {
            return Err(
                Rejection::forbidden(format!("tool {:?} not in scopes", t.name()))
                    .with_message("the credential is not allowed to use a requested tool"),
            );
        }
        if request.stream() && !principal.has_scope("stream") {
            return Err(Rejection::forbidden("streaming not in scopes")
                .with_message("the credential is not allowed to stream"));
        }
        if let (Some(max), Some(asked)) = (self.max_output_tokens, request.max_output_tokens()) {
            if asked > max {
                return Err(Rejection::forbidden(format!(
                    "max_output_tokens {asked} over ceiling {max}"
                ))
                .with_message("max output tokens is over the allowed ceiling"));
            }
        }
        Ok(())
    }
}

impl Authorizer for ScopeAuthorizer {
    fn authorize<'a>(
        &'a self,
        principal: &'a Principal,
        request: &'a GuardRequest,
    ) -> Step<'a, Result<(), StageError>> {
        Step::ready(self.check(principal, request).map_err(Into::into))
    }

    fn name(&self) -> &str {
        "scope_authorizer"
    }
}

/// One rule of a [`PatternRules`] set.
#[derive(Clone, Debug)]
struct Rule {
    id: String,
    category: Category,
    severity: Severity,
    action: Action,
    regex: Regex,
}

/// A set of regular-expression rules, usable as an input scanner and as an output
/// validator. Patterns are compiled with size and nesting limits, and the regex
/// engine guarantees linear-time matching.
///
/// ```
/// use inference_guard::builtin::PatternRules;
/// use inference_guard::{Action, Category, Severity};
///
/// let rules = PatternRules::builder()
///     .rule("injection.ignore_previous", Category::PromptInjection, Severity::High, Action::Block,
///           r"(?i)ignore\s+(all\s+)?(previous|prior)\s+instructions")
///     .build()?;
/// assert_eq!(rules.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PatternRules {
    rules: Vec<Rule>,
    set: regex::RegexSet,
}

/// Builds [`PatternRules`].
#[derive(Clone, Debug, Default)]
pub struct PatternRulesBuilder {
    rules: Vec<(String, Category, Severity, Action, String)>,
}

impl PatternRulesBuilder {
    /// Adds a rule.
    #[must_use]
    pub fn rule(
        mut self,
        id: impl Into<String>,
        category: Category,
        severity: Severity,
        action: Action,
        pattern: impl Into<String>,
    ) -> Self {
        self.rules
            .push((id.into(), category, severity, action, pattern.into()));
        self
    }

    /// Compiles the rules.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the rule whose pattern does not compile or is too large.
    pub fn build(self) -> Result<PatternRules, BuildError> {
        const SIZE: usize = 1 << 20;
        let mut rules = Vec::with_capacity(self.rules.len());
        for (id, category, severity, action, pattern) in &self.rules {
            let regex = RegexBuilder::new(pattern)
                .size_limit(SIZE)
                .nest_limit(64)
                .build()
                .map_err(|e| BuildError::new(format!("rule {id}: {e}")))?;
            rules.push(Rule {
                id: id.clone(),
                category: category.clone(),
                severity: *severity,
                action: *action,
                regex,
            });
        }
        let set = regex::RegexSetBuilder::new(self.rules.iter().map(|r| &r.4))
            .size_limit(SIZE * 4)
            .nest_limit(64)
            .build()
            .map_err(|e| BuildError::new(format!("rule set: {e}")))?;
        Ok(PatternRules { rules, set })
    }
}

impl PatternRules {
    /// A builder.
    pub fn builder() -> PatternRulesBuilder {
        PatternRulesBuilder::default()
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Scans `text`; findings are reported at `location`.
    ///
    /// ```
    /// # use inference_guard::builtin::PatternRules;
    /// # use inference_guard::{Action, Category, Location, Severity};
    /// let rules = PatternRules::builder()
    ///     .rule("demo.word", Category::custom("demo"), Severity::Low, Action::Flag, r"\bfoo\b")
    ///     .build()?;
    /// let f = rules.scan_text("a foo b foo", Location::Output);
    /// assert_eq!(f.len(), 2);
    /// assert_eq!(f[0].span(), 2..5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scan_text(&self, text: &str, location: Location) -> Vec<Finding> {
        let mut out = Vec::new();
        if self.rules.is_empty() {
            return out;
        }
        for i in self.set.matches(text).iter() {
            let r = &self.rules[i];
            for m in r.regex.find_iter(text) {
                out.push(
                    Finding::new(
                        r.id.clone(),
                        r.category.clone(),
                        r.severity,
                        location,
                        m.range(),
                    )
                    .with_action(r.action),
                );
            }
        }
        out
    }
}

impl InputScanner for PatternRules {
    fn scan<'a>(&'a self, request: &'a GuardRequest) -> Step<'a, Result<Vec<Finding>, StageError>> {
        let mut out = Vec::new();
        for (i, m) in request.messages().iter().enumerate() {
            out.extend(self.scan_text(m.content(), Location::Message(i)));
        }
        Step::ready(Ok(out))
    }

    fn name(&self) -> &str {
        "pattern_rules"
    }
}

impl OutputValidator for PatternRules {
    fn validate<'a>(
        &'a self,
        _cx: OutputContext<'a>,
        response: &'a GuardResponse,
    ) -> Step<'a, Result<Vec<Finding>, StageError>> {
        let mut out = self.scan_text(response.text(), Location::Output);
        for (i, c) in response.tool_calls().iter().enumerate() {
            out.extend(self.scan_text(c.arguments(), Location::ToolCall(i)));
        }
        Step::ready(Ok(out))
    }

    fn name(&self) -> &str {
        "pattern_rules"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CredentialKind;

    #[test]
    fn scope_globs() {
        let p = Principal::builder("x", CredentialKind::ApiKey)
            .scope("model:gpt-4o*")
            .scope("tool:search")
            .build();
        assert!(ScopeAuthorizer::allows(&p, "model", "gpt-4o-mini"));
        assert!(!ScopeAuthorizer::allows(&p, "model", "o3"));
        assert!(ScopeAuthorizer::allows(&p, "tool", "search"));
        assert!(!ScopeAuthorizer::allows(&p, "tool", "shell"));
        assert!(!ScopeAuthorizer::allows(&p, "modelx", "gpt-4o"));
    }

    #[test]
    fn short_server_secret_is_refused() {
        assert!(StaticApiKeys::new(b"short").is_err());
    }
}
