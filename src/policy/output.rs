//! `[output]` and `[[actions]]`: the answer validator and rule actions.

use super::*;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Output {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) allow_hosts: Vec<String>,
    #[serde(default)]
    pub(super) strict_links: bool,
    #[serde(default)]
    pub(super) html: Option<MarkupMode>,
    #[serde(default)]
    pub(super) ansi: Option<MarkupMode>,
    #[serde(default)]
    pub(super) canary_env: Option<String>,
    #[serde(default)]
    pub(super) system_prompt_file: Option<String>,
    #[serde(default)]
    pub(super) overlap_threshold: Option<f32>,
    #[serde(default)]
    pub(super) reference_cache: Option<usize>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_hosts: Vec::new(),
            strict_links: false,
            html: None,
            ansi: None,
            canary_env: None,
            system_prompt_file: None,
            overlap_threshold: None,
            reference_cache: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionSpec {
    pub(super) rule: String,
    pub(super) action: Action,
}

impl Policy {
    /// `[output]`: the answer validator.
    pub(super) fn output(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if self.output.enabled {
            let mut v = AnswerValidator::builder();
            v.allow_hosts(self.output.allow_hosts.iter().cloned())
                .strict_links(self.output.strict_links);
            if let Some(m) = self.output.html {
                v.html(m);
            }
            if let Some(m) = self.output.ansi {
                v.ansi(m);
            }
            if let Some(n) = self.output.reference_cache {
                v.reference_cache(n);
            }
            if let Some(t) = self.output.overlap_threshold {
                v.overlap_threshold(t);
            }
            if let Some(var) = &self.output.canary_env {
                let token = std::env::var(var).map_err(|_| {
                    err(
                        "output.canary_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                v.canary(Canary::new(token).map_err(|e| caused("output.canary_env", e))?);
            }
            if let Some(f) = &self.output.system_prompt_file {
                let path = self.path(f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        "output.system_prompt_file",
                        format!("{}: {e}", path.display()),
                    )
                })?;
                v.system_prompt(text);
            }
            b.output_validator(v.build().map_err(|e| caused("output", e))?);
        }
        Ok(())
    }

    /// `[[actions]]`: rule actions.
    pub(super) fn actions(&self, b: &mut GuardBuilder) {
        for a in &self.actions {
            b.rule_action(a.rule.clone(), a.action);
        }
    }
}
