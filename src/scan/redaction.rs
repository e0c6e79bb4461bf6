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

/// `[REDACTED:LABEL]`, the mask of a finding of `rule`.
fn mask_text(rule: &str) -> String {
    let mut with = String::with_capacity(rule.len() + 11);
    with.push_str("[REDACTED:");
    push_label(&mut with, rule);
    with.push(']');
    with
}

/// The mask of a rule whose id is `'static` (the built-in rules'), made once
/// per id for the life of the process: a masked finding of the rule then
/// borrows it instead of allocating its own (2.6 µs of the dense scan bench's
/// 4 KiB, which holds about 85 findings). The ids that are `'static` are a
/// program's own literals, a bounded set: each is kept once.
pub(crate) fn static_mask(rule: &'static str) -> &'static str {
    static MASKS: std::sync::OnceLock<std::sync::Mutex<HashMap<&'static str, &'static str>>> =
        std::sync::OnceLock::new();
    let mut masks = MASKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    masks
        .entry(rule)
        .or_insert_with(|| Box::leak(mask_text(rule).into_boxed_str()))
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

    /// `f` (a finding of `rule` with `value`) with its replacement; `mask` is
    /// the rule's [`static_mask`], when it has one.
    pub(crate) fn apply(
        &mut self,
        f: Finding,
        rule: &str,
        category: &Category,
        value: &str,
        mask: Option<&'static str>,
    ) -> Finding {
        if !matches!(category, Category::Secret | Category::PersonalData) {
            return f;
        }
        match &self.mode.0 {
            Mode::Mask => match mask {
                Some(m) => f.with_replacement(m),
                None => f.with_replacement(mask_text(rule)),
            },
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
            let want = format!("[REDACTED:{want}]");
            let f = Replacer::new(&mask).apply(f, rule, &Category::Secret, "v", None);
            assert_eq!(f.replacement(), Some(want.as_str()));
            // A rule's mask kept for the life of the process is the same text,
            // made once.
            let kept = static_mask(rule);
            assert_eq!(kept, want);
            assert!(std::ptr::eq(kept, static_mask(rule)), "{rule}");
            let f = Replacer::new(&mask).apply(f, rule, &Category::Secret, "v", Some(kept));
            assert_eq!(f.replacement(), Some(want.as_str()));
        }
    }

    /// Masked findings of built-in rules (ids that are `'static`) and of a rule
    /// whose id is made at run time read the same.
    #[test]
    fn built_in_and_run_time_rules_mask_alike() {
        use crate::scan::{Rule, Scanner};
        let id = format!("custom.{}", "order-ref");
        let rule = Rule::new(id, Category::PersonalData, Severity::High, r"ORD-[0-9]{6}").unwrap();
        let scanner = Scanner::builder().rule(rule).build();
        let text = "card 4111 1111 1111 1111, ref ORD-123456, mail ana.lopez@acme-widgets.com";
        let found = scanner.scan_text(text, Location::Output);
        let masks: Vec<(&str, Option<&str>)> = found
            .iter()
            .map(|f| (f.rule_id(), f.replacement()))
            .collect();
        for (rule, want) in [
            ("pii.payment_card", "[REDACTED:PAYMENT_CARD]"),
            ("custom.order-ref", "[REDACTED:ORDER_REF]"),
            ("pii.email", "[REDACTED:EMAIL]"),
        ] {
            assert!(masks.contains(&(rule, Some(want))), "{rule}: {masks:?}");
        }
    }
}
