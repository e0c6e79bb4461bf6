//! `[[grants]]`: who may use which models and tools.

use super::*;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantSpec {
    #[serde(default)]
    pub(super) principals: Vec<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) models: Vec<String>,
    #[serde(default)]
    pub(super) tools: Vec<String>,
    #[serde(default)]
    pub(super) stream: bool,
    #[serde(default)]
    pub(super) max_output_tokens: Option<u32>,
    #[serde(default)]
    pub(super) max_input_bytes: Option<usize>,
}

impl Policy {
    /// `[[grants]]`: the policy authorizer (at least one grant: deny by default).
    pub(super) fn grants(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if self.grants.is_empty() {
            return Err(err(
                "grants",
                "at least one grant is required (deny by default)",
            ));
        }
        let mut authz = PolicyAuthorizer::builder();
        for (i, g) in self.grants.iter().enumerate() {
            let field = format!("grants[{i}]");
            // A grant to principals, or one grant per scope.
            let heads: Vec<Grant> = match (g.principals.is_empty(), g.scopes.is_empty()) {
                (false, true) => vec![Grant::to_principals(g.principals.iter().cloned())],
                (true, false) => g
                    .scopes
                    .iter()
                    .map(|s| Grant::to_scope(s.clone()))
                    .collect(),
                _ => return Err(err(&field, "give principals or scopes (one of the two)")),
            };
            for head in heads {
                let mut grant = head
                    .models(g.models.iter().cloned())
                    .tools(g.tools.iter().cloned());
                if g.stream {
                    grant = grant.allow_stream();
                }
                if let Some(n) = g.max_output_tokens {
                    grant = grant.max_output_tokens(n);
                }
                if let Some(n) = g.max_input_bytes {
                    grant = grant.max_input_bytes(n);
                }
                authz.grant(grant);
            }
        }
        b.authorizer(authz.build().map_err(|e| caused("grants", e))?);
        Ok(())
    }
}
