//! How credentials and personal data are replaced when redacted.

use std::collections::HashMap;

use crate::finding::{Category, Finding};

#[derive(Clone)]
enum Mode {
    Mask,
    Partial(usize),
    KeyedHash(ring::hmac::Key),
    Remove,
    Pseudonymize,
}

/// What a redacted credential or piece of personal data becomes.
///
/// - [`mask`](Self::mask) (the default): `[REDACTED:EMAIL]`.
/// - [`partial`](Self::partial): the last characters stay visible: `***********1111`.
/// - [`keyed_hash`](Self::keyed_hash): `[EMAIL:3f9a0c1b2d4e]`, a keyed digest, so equal
///   values can be correlated without being readable.
/// - [`remove`](Self::remove): nothing.
/// - [`pseudonymize`](Self::pseudonymize): `<EMAIL_1>`, stable within a request (the
///   same value gets the same placeholder), kept in the request's vault so the guard
///   restores the original where the model's answer uses the placeholder; the model
///   never sees the value.
///
/// ```
/// use inference_guard::scan::{Redaction, Scanner};
/// use inference_guard::{Action, GuardRequest, GuardResponse, InferenceGuard, NoopSink, Role};
///
/// let scanner = Scanner::builder().redaction(Redaction::pseudonymize()).build();
/// let mut b = InferenceGuard::builder();
/// b.allow_anonymous().authorize_all().input_scanner(scanner).audit_sink(NoopSink);
/// let guard = b.build()?;
/// let adm = guard.check_request(GuardRequest::new("m").with_message(Role::User, "Write to ana@contoso.org"))?;
/// assert_eq!(adm.request().messages()[0].content(), "Write to <EMAIL_1>");
/// let out = adm.check_response(GuardResponse::new("Sent to <EMAIL_1>."))?;
/// assert_eq!(out.response().text(), "Sent to ana@contoso.org.");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Redaction(Mode);

impl std::fmt::Debug for Redaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Mode::Mask => "Redaction::Mask",
            Mode::Partial(_) => "Redaction::Partial",
            Mode::KeyedHash(_) => "Redaction::KeyedHash",
            Mode::Remove => "Redaction::Remove",
            Mode::Pseudonymize => "Redaction::Pseudonymize",
        })
    }
}

impl Default for Redaction {
    fn default() -> Self {
        Self::mask()
    }
}

impl Redaction {
    /// `[REDACTED:LABEL]`.
    pub fn mask() -> Self {
        Self(Mode::Mask)
    }
    /// Asterisks, with the last `visible` characters kept (at most a quarter of the
    /// value).
    pub fn partial(visible: usize) -> Self {
        Self(Mode::Partial(visible))
    }
    /// `[LABEL:digest]`, HMAC-SHA256 under `key`, 12 hex digits.
    pub fn keyed_hash(key: &[u8]) -> Self {
        Self(Mode::KeyedHash(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            key,
        )))
    }
    /// Nothing.
    pub fn remove() -> Self {
        Self(Mode::Remove)
    }
    /// `<LABEL_n>`, restored in the answer.
    pub fn pseudonymize() -> Self {
        Self(Mode::Pseudonymize)
    }

    /// Whether a replacement depends on the request (pseudonyms are numbered per
    /// request) rather than on the value alone.
    pub(crate) fn per_request(&self) -> bool {
        matches!(self.0, Mode::Pseudonymize)
    }
}

/// In a policy file (feature `policy`): `"mask"`, `"partial"` (four characters
/// shown), `"remove"` or `"pseudonymize"`.
#[cfg(feature = "policy")]
impl<'de> serde::Deserialize<'de> for Redaction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["mask", "partial", "remove", "pseudonymize"];
        match String::deserialize(d)?.as_str() {
            "mask" => Ok(Self::mask()),
            "partial" => Ok(Self::partial(4)),
            "remove" => Ok(Self::remove()),
            "pseudonymize" => Ok(Self::pseudonymize()),
            other => Err(serde::de::Error::unknown_variant(other, NAMES)),
        }
    }
}

/// `pii.email` -> `EMAIL`; `secret.github_token` -> `GITHUB_TOKEN`.
fn label(rule: &str) -> String {
    let mut s = String::with_capacity(rule.len());
    push_label(&mut s, rule);
    s
}

/// Appends [`label`]`(rule)` to `s` (one allocation for a mask, not three).
fn push_label(s: &mut String, rule: &str) {
    let r = rule.split_once('.').map_or(rule, |(_, r)| r);
    s.extend(r.chars().map(|c| match c {
        '.' | '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
}

/// Replaces findings' values for one scan (numbering pseudonyms across messages).
pub(crate) struct Replacer<'a> {
    mode: &'a Redaction,
    pseudonyms: HashMap<(String, String), String>,
    counters: HashMap<String, usize>,
}

impl<'a> Replacer<'a> {
    pub(crate) fn new(mode: &'a Redaction) -> Self {
        Self {
            mode,
            pseudonyms: HashMap::new(),
            counters: HashMap::new(),
        }
    }

    pub(crate) fn apply(
        &mut self,
        f: Finding,
        rule: &str,
        category: &Category,
        value: &str,
    ) -> Finding {
        if !matches!(category, Category::Secret | Category::PersonalData) {
            return f;
        }
        match &self.mode.0 {
            Mode::Mask => {
                let mut with = String::with_capacity(rule.len() + 11);
                with.push_str("[REDACTED:");
                push_label(&mut with, rule);
                with.push(']');
                f.with_replacement(with)
            }
            Mode::Remove => f.with_replacement(""),
            Mode::Partial(n) => {
                let chars: Vec<char> = value.chars().collect();
                let keep = (*n).min(chars.len() / 4);
                let mut out = "*".repeat(chars.len() - keep);
                out.extend(&chars[chars.len() - keep..]);
                f.with_replacement(out)
            }
            Mode::KeyedHash(key) => {
                let label = label(rule);
                let tag = ring::hmac::sign(key, value.as_bytes());
                f.with_replacement(format!(
                    "[{label}:{}]",
                    &crate::codec::hex(tag.as_ref())[..12]
                ))
            }
            Mode::Pseudonymize => {
                let label = label(rule);
                let key = (label.clone(), value.to_owned());
                let p = match self.pseudonyms.get(&key) {
                    Some(p) => p.clone(),
                    None => {
                        let n = self.counters.entry(label.clone()).or_insert(0);
                        *n += 1;
                        let p = format!("<{label}_{n}>");
                        self.pseudonyms.insert(key, p.clone());
                        p
                    }
                };
                f.with_replacement(p).with_reversible(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Location, Severity};

    /// The part after the first dot, uppercased, dots and dashes as underscores;
    /// a mask is that label in brackets.
    #[test]
    fn labels_name_the_rule() {
        for (rule, want) in [
            ("pii.email", "EMAIL"),
            ("secret.github_token", "GITHUB_TOKEN"),
            ("custom.my-key.v2", "MY_KEY_V2"),
            ("plain", "PLAIN"),
            ("x.ünï-cödé", "üNï_CöDé"),
        ] {
            assert_eq!(label(rule), want, "{rule}");
            let mask = Redaction::mask();
            let f = Finding::new(
                rule.to_owned(),
                Category::Secret,
                Severity::High,
                Location::Output,
                0..1,
            );
            let f = Replacer::new(&mask).apply(f, rule, &Category::Secret, "v");
            assert_eq!(f.replacement(), Some(format!("[REDACTED:{want}]").as_str()));
        }
    }
}
