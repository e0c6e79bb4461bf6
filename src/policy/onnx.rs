//! `[onnx]`: a transformer classifier (feature `onnx`).

use super::*;

/// `[onnx]`: a transformer classifier (feature `onnx`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "onnx"), allow(dead_code))]
pub(super) struct Onnx {
    pub(super) model: String,
    pub(super) tokenizer: String,
    #[serde(default)]
    pub(super) runtime: Option<String>,
    pub(super) labels: Vec<OnnxLabel>,
    #[serde(default)]
    pub(super) max_tokens: Option<usize>,
    #[serde(default)]
    pub(super) overlap: Option<usize>,
    #[serde(default)]
    pub(super) batch: Option<usize>,
    #[serde(default)]
    pub(super) workers: Option<usize>,
    #[serde(default)]
    pub(super) queue: Option<usize>,
    #[serde(default)]
    pub(super) deadline_ms: Option<u64>,
    #[serde(default)]
    pub(super) sigmoid: bool,
    #[serde(default)]
    pub(super) uncertain_band: Option<[f32; 2]>,
    #[serde(default = "yes")]
    pub(super) input: bool,
    #[serde(default)]
    pub(super) output: bool,
    #[serde(default)]
    pub(super) fail_open: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "onnx"), allow(dead_code))]
pub(super) struct OnnxLabel {
    pub(super) index: usize,
    pub(super) category: String,
    pub(super) flag: f32,
    pub(super) block: f32,
}

impl Policy {
    /// The `[onnx]` section: the model-backed classifier after the built-in stages.
    #[cfg(feature = "onnx")]
    pub(super) fn onnx(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        let Some(o) = &self.onnx else {
            return Ok(());
        };
        let mut c =
            crate::scan::OnnxClassifier::builder(self.path(&o.model), self.path(&o.tokenizer));
        if let Some(r) = &o.runtime {
            c.runtime(self.path(r));
        }
        for (i, l) in o.labels.iter().enumerate() {
            let category = [
                Category::PromptInjection,
                Category::Jailbreak,
                Category::SystemPromptLeak,
                Category::Secret,
                Category::PersonalData,
                Category::Exfiltration,
                Category::UnsafeMarkup,
            ]
            .into_iter()
            .find(|c| c.as_str() == l.category)
            .ok_or_else(|| {
                err(
                    &format!("onnx.labels[{i}].category"),
                    format!(
                        "unknown category {:?} (prompt_injection, jailbreak, system_prompt_leak, secret, personal_data, exfiltration, unsafe_markup)",
                        l.category
                    ),
                )
            })?;
            c.label(l.index, category, l.flag, l.block);
        }
        if let Some(n) = o.max_tokens {
            c.max_tokens(n);
        }
        if let Some(n) = o.overlap {
            c.overlap(n);
        }
        if let Some(n) = o.batch {
            c.batch(n);
        }
        if let Some(n) = o.workers {
            c.workers(n);
        }
        if let Some(n) = o.queue {
            c.queue(n);
        }
        if let Some(ms) = o.deadline_ms {
            c.deadline(Duration::from_millis(ms));
        }
        c.sigmoid(o.sigmoid);
        if let Some([low, high]) = o.uncertain_band {
            c.only_when_uncertain(crate::scan::Classifier::builtin(), low, high);
        }
        if !o.input && !o.output {
            return Err(err(
                "onnx",
                "input and output are both false: the model would never run",
            ));
        }
        let c = c.build().map_err(|e| caused("onnx", e))?;
        if o.input {
            b.input_scanner(c.clone());
            if o.fail_open {
                b.fail_open(crate::FailOpenStage::InputScan);
            }
        }
        if o.output {
            b.output_validator(c);
            if o.fail_open {
                b.fail_open(crate::FailOpenStage::OutputValidation);
            }
        }
        Ok(())
    }

    #[cfg(not(feature = "onnx"))]
    pub(super) fn onnx(&self, _b: &mut GuardBuilder) -> Result<(), PolicyError> {
        match &self.onnx {
            None => Ok(()),
            Some(_) => Err(err(
                "onnx",
                "this build has no ONNX Runtime support (the onnx feature)",
            )),
        }
    }
}
