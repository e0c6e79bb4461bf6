//! `[input]`: the input scanner and its classifier.

use super::*;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Input {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) threshold: Option<f32>,
    #[serde(default)]
    pub(super) disable: Vec<String>,
    #[serde(default)]
    pub(super) redaction: Option<Redaction>,
    #[serde(default)]
    pub(super) shadow: bool,
    #[serde(default)]
    pub(super) scan_instructions: bool,
    #[serde(default = "yes")]
    pub(super) classifier: bool,
    #[serde(default)]
    pub(super) classifier_flag: Option<f32>,
    #[serde(default)]
    pub(super) classifier_block: Option<f32>,
    #[serde(default)]
    pub(super) classifier_thresholds: std::collections::BTreeMap<String, CategoryThresholds>,
    #[serde(default)]
    pub(super) history_cache: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CategoryThresholds {
    #[serde(default)]
    pub(super) flag: Option<f32>,
    #[serde(default)]
    pub(super) block: Option<f32>,
}

impl Default for Input {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: None,
            disable: Vec::new(),
            redaction: None,
            shadow: false,
            scan_instructions: false,
            classifier: true,
            classifier_flag: None,
            classifier_block: None,
            classifier_thresholds: std::collections::BTreeMap::new(),
            history_cache: None,
        }
    }
}

impl Policy {
    /// `[input]`: the input scanner and its classifier.
    pub(super) fn input(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if self.input.enabled {
            let mut s = Scanner::builder();
            if let Some(t) = self.input.threshold {
                s.threshold(t);
            }
            for d in &self.input.disable {
                s.disable(d.clone());
            }
            s.scan_instructions(self.input.scan_instructions);
            if let Some(n) = self.input.history_cache {
                s.history_cache(n);
            }
            let classifier = if self.input.classifier {
                let mut c = crate::scan::Classifier::builtin();
                let heads: Vec<Category> = c.categories().cloned().collect();
                for cat in &heads {
                    let (flag, block) = c.thresholds(cat).unwrap_or((0.5, 0.5));
                    let per = self.input.classifier_thresholds.get(cat.as_str());
                    let flag = per
                        .and_then(|t| t.flag)
                        .or(self.input.classifier_flag)
                        .unwrap_or(flag);
                    let block = per
                        .and_then(|t| t.block)
                        .or(self.input.classifier_block)
                        .unwrap_or(block);
                    c = c
                        .with_category_thresholds(cat, flag, block)
                        .map_err(|e| caused("input.classifier_thresholds", e))?;
                }
                if let Some(k) = self
                    .input
                    .classifier_thresholds
                    .keys()
                    .find(|k| !heads.iter().any(|c| c.as_str() == k.as_str()))
                {
                    return Err(err(
                        "input.classifier_thresholds",
                        format!(
                            "no classifier head for {k:?} (prompt_injection, jailbreak, system_prompt_leak)"
                        ),
                    ));
                }
                Some(c)
            } else {
                None
            };
            s.classifier(classifier);
            s.redaction(self.input.redaction.clone().unwrap_or_else(Redaction::mask));
            b.input_scanner(s.build());
            if self.input.shadow {
                b.enforcement(crate::ShadowStage::InputScan, crate::Enforcement::Shadow);
            }
        }
        Ok(())
    }
}
