//! Credentials and personal data: rules as data, found through a multi-literal
//! prefilter, confirmed by a pattern around each candidate, and checked by a
//! validator where the format has one (checksums, Luhn, mod-97, base58check, bech32).

use std::borrow::Cow;
use std::collections::HashSet;

use regex::{Regex, RegexBuilder};
use smallvec::SmallVec;

use crate::finding::{Action, Category, Finding, Location, Severity};

/// A check on a matched value beyond its pattern.
pub type Validator = fn(&str) -> bool;

/// One detection rule: what to look for, how sure a match is, and what to do.
///
/// `anchors` are literals (matched case-insensitively) of which one must occur near a
/// match; the pattern runs only in a window around them. A rule without anchors runs
/// over the whole text. A user-supplied pattern is compiled with size limits, and the
/// regex engine matches in linear time.
///
/// ```
/// use inference_guard::scan::Rule;
/// use inference_guard::{Action, Category, Severity};
///
/// let rule = Rule::new("acme.api_key", Category::Secret, Severity::Critical, r"\bacme_[0-9a-f]{32}\b")?
///     .anchors(["acme_"])
///     .action(Action::Redact);
/// # let _ = rule;
/// # Ok::<(), inference_guard::BuildError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Rule {
    pub(crate) id: Cow<'static, str>,
    pub(crate) category: Category,
    pub(crate) severity: Severity,
    pub(crate) action: Action,
    pub(crate) anchors: Vec<String>,
    pub(crate) regex: Regex,
    /// Whether the pattern has the value group `v` (read once, at compile time).
    value_group: bool,
    pub(crate) validator: Option<Validator>,
    pub(crate) window: usize,
    /// A check of the text around an anchor found at a byte offset (built-in
    /// rules whose anchors are common: a colon, `://`): an anchor that fails it
    /// opens no window. Every match holds an anchor that passes.
    pub(crate) near: Option<fn(&[u8], usize) -> bool>,
    /// Its findings' mask, when its id is `'static`
    /// ([`static_mask`](super::redaction::static_mask)).
    mask: Option<&'static str>,
}

impl Rule {
    /// A rule with `pattern` (a regex; the capture group named `v`, if present, is
    /// the value that is validated and reported, otherwise the whole match).
    ///
    /// # Errors
    ///
    /// A [`BuildError`](crate::BuildError) naming the rule if the pattern does not
    /// compile within the size limits.
    pub fn new(
        id: impl Into<Cow<'static, str>>,
        category: Category,
        severity: Severity,
        pattern: &str,
    ) -> Result<Self, crate::BuildError> {
        Self::compile(id.into(), category, severity, pattern, 1 << 20)
    }

    fn compile(
        id: Cow<'static, str>,
        category: Category,
        severity: Severity,
        pattern: &str,
        limit: usize,
    ) -> Result<Self, crate::BuildError> {
        let regex = RegexBuilder::new(pattern)
            .size_limit(limit)
            .nest_limit(64)
            .build()
            .map_err(|e| {
                crate::BuildError::invalid_owned(
                    format!("scanner.secret_rules[{id}]"),
                    e.to_string(),
                )
                .with_source(e)
            })?;
        let mask = match &id {
            Cow::Borrowed(id) => Some(super::redaction::static_mask(id)),
            Cow::Owned(_) => None,
        };
        Ok(Self {
            id,
            mask,
            category,
            severity,
            action: Action::Redact,
            anchors: Vec::new(),
            value_group: regex.capture_names().any(|n| n == Some("v")),
            regex,
            validator: None,
            window: 512,
            near: None,
        })
    }

    /// Literals of which one must occur near a match (case-insensitive).
    #[must_use]
    pub fn anchors<I, S>(mut self, anchors: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.anchors = anchors.into_iter().map(Into::into).collect();
        self
    }

    /// The action the rule asks for (default [`Action::Redact`]).
    #[must_use]
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// A validator for matched values.
    #[must_use]
    pub fn validator(mut self, v: Validator) -> Self {
        self.validator = Some(v);
        self
    }

    /// How far around an anchor the pattern looks, in bytes (default 512).
    #[must_use]
    pub fn window(mut self, bytes: usize) -> Self {
        self.window = bytes.max(16);
        self
    }

    /// A check of the text around each anchor (see [`Rule::near`]'s field).
    pub(crate) fn near(mut self, near: fn(&[u8], usize) -> bool) -> Self {
        self.near = Some(near);
        self
    }

    /// The rule's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Documented example and placeholder values contain one of these (in any case).
const PLACEHOLDERS: [&str; 17] = [
    "example",
    "xxxx",
    "<your",
    "your_",
    "your-",
    "${",
    "{{",
    "changeme",
    "placeholder",
    "dummy",
    "redacted",
    "0000000000",
    "1234567890",
    "abcdefghij",
    "*****",
    "fake",
    "sample",
];

/// Documented example and placeholder values are not findings: one automaton of
/// [`PLACEHOLDERS`], ASCII case folded (no lowercased copy of every candidate, no
/// searcher per word), walked as the anchors' table is: a value is a few dozen
/// bytes, where an `aho_corasick` search's setup costs more than the walk (its
/// searches took 2.7 µs of the dense scan bench's 4 KiB; the walk saves about 1).
fn placeholder(v: &str) -> bool {
    match placeholders() {
        Some(table) => table.any(v.as_bytes()),
        // Not reached (the automaton is small); the same test without it.
        None => {
            let l = v.to_ascii_lowercase();
            PLACEHOLDERS.iter().any(|p| l.contains(p))
        }
    }
}

/// The automaton of [`PLACEHOLDERS`] (`None` if it could not be built).
fn placeholders() -> Option<&'static super::anchors::Anchors> {
    static TABLE: std::sync::OnceLock<Option<super::anchors::Anchors>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| super::anchors::Anchors::new(&PLACEHOLDERS.map(String::from)))
        .as_ref()
}

/// A compiled set of rules.
#[derive(Clone, Debug)]
pub(crate) struct RuleSet {
    rules: Vec<Rule>,
    /// Every rule's anchors in one automaton (`None` when it cannot be built:
    /// then every anchored rule runs over the whole text).
    prefilter: Option<super::anchors::Anchors>,
    anchor_rule: Vec<usize>,
    anchorless: Vec<usize>,
    /// The anchorless rules' patterns behind one prefilter (their literal prefixes,
    /// or what every match contains): a pattern runs only where it can match.
    anchorless_set: super::prefilter::Prefixed,
}

impl RuleSet {
    pub(crate) fn new(rules: Vec<Rule>) -> Self {
        let mut literals = Vec::new();
        let mut anchor_rule = Vec::new();
        let mut anchorless = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if r.anchors.is_empty() {
                anchorless.push(i);
            }
            for a in &r.anchors {
                literals.push(a.clone());
                anchor_rule.push(i);
            }
        }
        let prefilter = super::anchors::Anchors::new(&literals);
        let anchorless_set = super::prefilter::Prefixed::new(
            anchorless.iter().map(|&i| rules[i].regex.clone()).collect(),
            1 << 22,
        );
        Self {
            rules,
            prefilter,
            anchor_rule,
            anchorless,
            anchorless_set,
        }
    }

    /// Every rule's anchors.
    pub(crate) fn anchors(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.anchors.iter().map(String::as_str))
    }

    pub(crate) fn scan(
        &self,
        text: &str,
        at: Location,
        disabled: &HashSet<String>,
        replacer: &mut super::redaction::Replacer<'_>,
        out: &mut Vec<Finding>,
    ) {
        let mut cx = ScanCx {
            text,
            at,
            disabled,
            last: Vec::new(),
            replacer,
            out,
        };
        self.anchor_windows(&mut cx);
        self.anchorless_set.for_each_match(text, |k, m| {
            let ri = self.anchorless[k];
            if cx.disabled.contains(self.rules[ri].id.as_ref()) {
                return false;
            }
            self.accept(ri, 0, text, m, &mut cx);
            true
        });
    }

    /// Runs each rule over the windows around its anchors in the text.
    fn anchor_windows(&self, cx: &mut ScanCx<'_, '_, '_>) {
        // Windows around anchors, merged per rule: each rule's pattern runs once over
        // each stretch of text that its anchors cover, however dense they are.
        let mut open: SmallVec<[Option<(usize, usize)>; 128]> = SmallVec::new();
        let Some(anchors) = &self.prefilter else {
            open.resize(self.rules.len(), None);
            for &ri in &self.anchor_rule {
                open[ri] = Some((0, cx.text.len()));
            }
            // Read in place: moving the vector into an iterator copied its 3 KB.
            for (ri, slot) in open.iter().enumerate() {
                if let Some((f, t)) = *slot {
                    self.run(ri, f, t, cx);
                }
            }
            return;
        };
        anchors.for_each(cx.text.as_bytes(), |pattern, start, end| {
            // A slot per rule from the first anchor on (most texts have none).
            if open.is_empty() {
                open.resize(self.rules.len(), None);
            }
            let ri = self.anchor_rule[pattern];
            if self.rules[ri]
                .near
                .is_some_and(|near| !near(cx.text.as_bytes(), start))
            {
                return;
            }
            let w = self.rules[ri].window;
            let (from, to) = (start.saturating_sub(w), end + w);
            match &mut open[ri] {
                Some((_, end)) if from <= *end => *end = (*end).max(to),
                slot => {
                    if let Some((f, t)) = slot.replace((from, to)) {
                        self.run(ri, f, t, cx);
                    }
                }
            }
        });
        for (ri, slot) in open.iter().enumerate() {
            if let Some((f, t)) = *slot {
                self.run(ri, f, t, cx);
            }
        }
    }

    /// Runs rule `ri` over `text[from..to]` (widened to character boundaries).
    fn run(&self, ri: usize, from: usize, to: usize, cx: &mut ScanCx<'_, '_, '_>) {
        let r = &self.rules[ri];
        if cx.disabled.contains(r.id.as_ref()) {
            return;
        }
        let text = cx.text;
        let from = crate::finding::floor_boundary(text, from);
        let to = crate::finding::ceil_boundary(text, to.min(text.len()));
        let hay = &text[from..to];
        for whole in r.regex.find_iter(hay) {
            self.accept(ri, from, hay, whole.range(), cx);
        }
    }

    /// Takes match `whole` of rule `ri` in `hay` (which starts at `from` in the
    /// text): its value, validated, as a finding.
    fn accept(
        &self,
        ri: usize,
        from: usize,
        hay: &str,
        whole: std::ops::Range<usize>,
        cx: &mut ScanCx<'_, '_, '_>,
    ) {
        let r = &self.rules[ri];
        // The value group, when the rule has one, is looked up in the match only.
        let m = if r.value_group {
            match r
                .regex
                .captures_at(&hay[..whole.end], whole.start)
                .and_then(|c| c.name("v"))
            {
                Some(v) => v.range(),
                None => return,
            }
        } else {
            whole
        };
        let v = &hay[m.clone()];
        if placeholder(v) || r.validator.is_some_and(|f| !f(v)) {
            return;
        }
        let (start, end) = (from + m.start, from + m.end);
        if cx.last.is_empty() {
            cx.last.resize(self.rules.len(), (usize::MAX, usize::MAX));
        }
        if cx.last[ri] != (start, end) {
            cx.last[ri] = (start, end);
            let f = Finding::new(
                r.id.clone(),
                r.category.clone(),
                r.severity,
                cx.at,
                start..end,
            )
            .with_action(r.action);
            let f = cx.replacer.apply(f, &r.id, &r.category, v, r.mask);
            cx.out.push(f);
        }
    }
}

/// What one scan carries from rule to rule.
struct ScanCx<'t, 'o, 'r> {
    text: &'t str,
    at: Location,
    disabled: &'t HashSet<String>,
    /// Per rule, the span of its last finding (sized at the first): each rule's
    /// matches come in order (its windows in order, each searched in order), so
    /// a span found twice would be found twice in a row.
    last: Vec<(usize, usize)>,
    replacer: &'o mut super::redaction::Replacer<'r>,
    out: &'o mut Vec<Finding>,
}

// ---- validators ----------------------------------------------------------------

use crate::codec::{crc32, keccak256};

fn base62_6(v: u32) -> [u8; 6] {
    crate::codec::base62_fixed(v)
}

/// GitHub and npm tokens: the last 6 characters are the base62 CRC32 of the 30 random
/// characters before them.
fn github_checksum(v: &str) -> bool {
    let body = v.rsplit('_').next().unwrap_or("");
    body.len() == 36 && base62_6(crc32(&body.as_bytes()[..30])) == body.as_bytes()[30..]
}

/// This crate's API keys (`identity::ApiKeyFormat`): CRC32 over everything before the
/// checksum.
fn guard_key_checksum(v: &str) -> bool {
    v.len() > 6 && base62_6(crc32(&v.as_bytes()[..v.len() - 6])) == v.as_bytes()[v.len() - 6..]
}

/// A national phone number: 9 to 12 digits, not all the same digit, and a North
/// American number's area code and exchange not starting with 0 or 1 nor an N11
/// service code.
fn national_phone(v: &str) -> bool {
    let digits: Vec<u8> = v
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    if !(9..=12).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    if digits.len() == 10
        && (v.starts_with('(') && v.as_bytes().get(4) == Some(&b')')
            || v.as_bytes()
                .get(3)
                .is_some_and(|b| *b == b'.' || *b == b'-'))
    {
        let (area, exchange) = (&digits[0..3], &digits[3..6]);
        let n11 = |x: &[u8]| x[1] == 1 && x[2] == 1;
        return area[0] >= 2 && exchange[0] >= 2 && !n11(area) && !n11(exchange);
    }
    true
}

fn luhn(v: &str) -> bool {
    // The digits, on the stack: more than 19 is not a card number.
    let mut digits = [0u32; 19];
    let mut n = 0;
    for d in v.chars().filter_map(|c| c.to_digit(10)) {
        if n == digits.len() {
            return false;
        }
        digits[n] = d;
        n += 1;
    }
    let digits = &digits[..n];
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    let iin_ok = matches!(digits[0], 2..=6)
        || (digits[0] == 3 && matches!(digits[1], 4 | 7 | 5 | 0 | 6 | 8));
    sum % 10 == 0 && iin_ok
}

/// The length of each country's IBAN, by its code (sorted, for a binary search).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VG", 24),
    ("XK", 20),
];

fn iban(v: &str) -> bool {
    // Without its whitespace, on the stack: an IBAN is ASCII, at most 34 long.
    let mut buf = [0u8; 34];
    let mut n = 0;
    for c in v.chars().filter(|c| !c.is_whitespace()) {
        if !c.is_ascii() || n == buf.len() {
            return false;
        }
        buf[n] = c as u8;
        n += 1;
    }
    let s = &buf[..n];
    let Some(&(_, len)) = s.get(..2).and_then(|code| {
        IBAN_LENGTHS
            .binary_search_by(|(c, _)| c.as_bytes().cmp(code))
            .ok()
            .map(|i| &IBAN_LENGTHS[i])
    }) else {
        return false;
    };
    if s.len() != len {
        return false;
    }
    let rearranged = s[4..].iter().chain(&s[..4]);
    // The number written out (a letter as its two digits, A = 10) by its
    // remainder by 97, taken once the number passes 10^15 (not at each digit:
    // below that, two more digits fit in 64 bits).
    let mut rem: u64 = 0;
    for &c in rearranged {
        let Some(v) = char::from(c).to_digit(36) else {
            return false;
        };
        rem = rem * if v >= 10 { 100 } else { 10 } + u64::from(v);
        if rem >= 1_000_000_000_000_000 {
            rem %= 97;
        }
    }
    rem % 97 == 1
}

fn ssn(v: &str) -> bool {
    let d: String = v.chars().filter(char::is_ascii_digit).collect();
    if d.len() != 9 {
        return false;
    }
    let (area, group, serial) = (&d[..3], &d[3..5], &d[5..]);
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn ipv4(v: &str) -> bool {
    v.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| !a.is_unspecified() && !a.is_broadcast())
}

fn ipv6(v: &str) -> bool {
    v.parse::<std::net::Ipv6Addr>().is_ok() && v.matches(':').count() >= 2 && v.len() >= 6
}

/// Ethereum addresses: all-lowercase or all-uppercase hex carries no checksum;
/// mixed case is the EIP-55 checksum (a letter is uppercase where the matching nibble
/// of Keccak-256 of the lowercase address is 8 or more) and must verify.
fn eip55(v: &str) -> bool {
    let Some(hex) = v.strip_prefix("0x") else {
        return false;
    };
    let letters = || hex.bytes().filter(u8::is_ascii_alphabetic);
    if letters().all(|b| b.is_ascii_lowercase()) || letters().all(|b| b.is_ascii_uppercase()) {
        return true;
    }
    let hash = keccak256(hex.to_ascii_lowercase().as_bytes());
    hex.bytes().enumerate().all(|(i, b)| {
        let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0xf;
        !b.is_ascii_alphabetic() || b.is_ascii_uppercase() == (nibble >= 8)
    })
}

fn base58check(v: &str) -> bool {
    const ALPHA: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut bytes: Vec<u8> = vec![0];
    for c in v.bytes() {
        let Some(mut carry) = ALPHA.iter().position(|&a| a == c).map(|p| p as u32) else {
            return false;
        };
        for b in bytes.iter_mut().rev() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let leading = v.bytes().take_while(|&c| c == b'1').count();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let mut full = vec![0u8; leading];
    full.extend_from_slice(&bytes[first..]);
    if full.len() != 25 {
        return false;
    }
    let h1 = ring::digest::digest(&ring::digest::SHA256, &full[..21]);
    let h2 = ring::digest::digest(&ring::digest::SHA256, h1.as_ref());
    h2.as_ref()[..4] == full[21..]
}

fn bech32(v: &str) -> bool {
    const CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let v = v.to_ascii_lowercase();
    let Some(pos) = v.rfind('1') else {
        return false;
    };
    let (hrp, data) = (&v[..pos], &v[pos + 1..]);
    if hrp.is_empty() || data.len() < 6 {
        return false;
    }
    let mut values: Vec<u32> = hrp.bytes().map(|b| u32::from(b >> 5)).collect();
    values.push(0);
    values.extend(hrp.bytes().map(|b| u32::from(b & 31)));
    for c in data.bytes() {
        match CHARSET.iter().position(|&x| x == c) {
            Some(p) => values.push(p as u32),
            None => return false,
        }
    }
    let generator = [
        0x3b6a_57b2u32,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ v;
        for (i, g) in generator.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk == 1 || chk == 0x2bc8_30a3 // bech32 or bech32m
}

fn entropy(v: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in v.bytes() {
        counts[b as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn generic_secret(v: &str) -> bool {
    v.len() >= 12
        && entropy(v) >= 3.3
        && v.chars().any(|c| c.is_ascii_digit())
        && v.chars().any(|c| c.is_ascii_alphabetic())
}

// ---- the built-in rules --------------------------------------------------------------

fn rule(id: &'static str, cat: Category, sev: Severity, anchors: &[&str], pattern: &str) -> Rule {
    // Built-in patterns are reviewed here; they may compile larger than users' rules.
    Rule::compile(
        Cow::Borrowed(id),
        cat,
        sev,
        &ascii_classes(pattern),
        1 << 24,
    )
    .unwrap_or_else(|e| panic!("built-in {e}"))
    .anchors(anchors.iter().copied())
}

/// `pattern` with its word boundaries, digits and word characters in ASCII (`\b`,
/// `\d`, `\w`): what the built-in formats are written in. Besides, with a
/// Unicode word boundary the regex engine's DFAs give up on any text with a byte
/// outside ASCII (a curly quote is enough) and search with its slowest engine:
/// 100x slower on such texts. Next to a letter or digit of ASCII, an ASCII word
/// boundary is wherever a Unicode one is (and also next to a letter outside
/// ASCII): the built-in rules find what they found, and a token glued to such
/// a letter as well.
fn ascii_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push_str(r"(?-u:\b)"),
            Some('d') => out.push_str("[0-9]"),
            Some('w') => out.push_str("[0-9A-Za-z_]"),
            Some(e) => {
                out.push('\\');
                out.push(e);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn s(id: &'static str, anchors: &[&str], pattern: &str) -> Rule {
    rule(id, Category::Secret, Severity::Critical, anchors, pattern)
}

/// The built-in credential rules (63 formats).
pub(crate) fn secret_rules() -> Vec<Rule> {
    vec![
        s("secret.aws_access_key_id", &["akia", "asia", "abia", "acca"], r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b"),
        s("secret.aws_secret_access_key", &["aws_secret", "secret_access_key", "aws secret", "secretaccesskey", "secret access key"], r#"(?i)(?:aws.{0,20}secret.{0,20}?|secret[_ ]?access[_ ]?key["']?)[=:"'\s]+(?P<v>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#),
        s("secret.gcp_service_account", &["service_account"], r#""type"\s*:\s*"service_account"(?s:.)*?"private_key"\s*:\s*"-----BEGIN"#).window(4096),
        s("secret.google_api_key", &["aiza"], r"\bAIza[0-9A-Za-z_\-]{35}\b"),
        s("secret.google_oauth_client_secret", &["gocspx-"], r"\bGOCSPX-[A-Za-z0-9_\-]{28}\b"),
        s("secret.azure_storage_key", &["accountkey="], r"AccountKey=(?P<v>[A-Za-z0-9+/]{86}==)"),
        s("secret.azure_sas_token", &["sig="], r"\bsv=\d{4}-\d{2}-\d{2}&[^\s]{0,300}?\bsig=(?P<v>[A-Za-z0-9%+/=]{30,})"),
        s("secret.azure_ad_client_secret", &["8q~"], r"\b[A-Za-z0-9_~.\-]{3}8Q~[A-Za-z0-9_~.\-]{31,34}\b"),
        s("secret.github_token", &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"], r"\bgh[pousr]_[A-Za-z0-9]{36}\b").validator(github_checksum),
        s("secret.github_fine_grained_pat", &["github_pat_"], r"\bgithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}\b"),
        s("secret.gitlab_token", &["glpat-", "glrt-", "gldt-", "glptt-", "glft-"], r"\bgl(?:pat|rt|dt|ptt|ft)-[A-Za-z0-9_\-]{20,}\b"),
        s("secret.openai_api_key", &["sk-"], r"\bsk-(?:(?:proj|svcacct|admin|None)-)?[A-Za-z0-9_\-]{20,200}T3BlbkFJ[A-Za-z0-9_\-]{20,200}\b|\bsk-[A-Za-z0-9]{48}\b"),
        s("secret.anthropic_api_key", &["sk-ant-"], r"\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_\-]{80,120}\b"),
        s("secret.huggingface_token", &["hf_"], r"\bhf_[A-Za-z]{34}\b"),
        s("secret.replicate_token", &["r8_"], r"\br8_[A-Za-z0-9]{37}\b"),
        s("secret.groq_api_key", &["gsk_"], r"\bgsk_[A-Za-z0-9]{52}\b"),
        s("secret.perplexity_api_key", &["pplx-"], r"\bpplx-[A-Za-z0-9]{48}\b"),
        s("secret.xai_api_key", &["xai-"], r"\bxai-[A-Za-z0-9]{80}\b"),
        s("secret.cohere_api_key", &["cohere"], r#"(?i)cohere.{0,20}?[=:"'\s]+(?P<v>[A-Za-z0-9]{40})\b"#),
        s("secret.stripe_key", &["sk_live_", "sk_test_", "rk_live_", "rk_test_"], r"\b[sr]k_(?:live|test)_[0-9a-zA-Z]{24,99}\b"),
        s("secret.stripe_webhook_secret", &["whsec_"], r"\bwhsec_[A-Za-z0-9]{32,}\b"),
        s("secret.slack_token", &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe"], r"\bxox(?:[baprs]|e(?:\.xox[bp])?)-[0-9A-Za-z\-]{10,250}\b"),
        s("secret.slack_app_token", &["xapp-"], r"\bxapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{32,}\b"),
        s("secret.slack_webhook", &["hooks.slack.com"], r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9+/]{40,}"),
        s("secret.twilio_api_key", &[], r"\bSK[0-9a-f]{32}\b"),
        s("secret.twilio_auth_token", &["twilio"], r#"(?i)twilio.{0,30}?(?:token|secret).{0,10}?[=:"'\s]+(?P<v>[0-9a-f]{32})\b"#),
        s("secret.sendgrid_api_key", &["sg."], r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b"),
        s("secret.mailgun_api_key", &[], r"\bkey-[0-9a-f]{32}\b"),
        s("secret.mailchimp_api_key", &[], r"\b[0-9a-f]{32}-us\d{1,2}\b"),
        s("secret.npm_token", &["npm_"], r"\bnpm_[A-Za-z0-9]{36}\b").validator(github_checksum),
        s("secret.pypi_token", &["pypi-"], r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}\b"),
        s("secret.rubygems_api_key", &["rubygems_"], r"\brubygems_[0-9a-f]{48}\b"),
        s("secret.crates_io_token", &[], r"\bcio[A-Za-z0-9]{32}\b"),
        s("secret.docker_hub_pat", &["dckr_pat_"], r"\bdckr_pat_[A-Za-z0-9_\-]{27}\b"),
        s("secret.jwt", &["eyj"], r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{16,}\b"),
        // The whole block, to its END line (PEM, or JSON with escaped line breaks as in
        // a service-account file); a block cut short goes to the end of its body.
        s("secret.private_key", &["-----begin"], r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.)*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:\\[nr]|[A-Za-z0-9+/=\r\n])*").window(16_384),
        s("secret.connection_string_password", &["://"], r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql|sqlserver|jdbc:[a-z]+|ftp|sftp|ldap)://[^\s:/@]{1,64}:(?P<v>[^\s:/@]{3,128})@[^\s/]+").near(userinfo_after),
        s("secret.url_password", &["://"], r"\bhttps?://[^\s:/@]{1,64}:(?P<v>[^\s:/@]{3,128})@[A-Za-z0-9.\-]+").near(userinfo_after),
        s("secret.basic_auth_header", &["basic "], r"(?i)\bauthorization\s*:\s*basic\s+(?P<v>[A-Za-z0-9+/]{8,}={0,2})"),
        s("secret.bearer_header", &["bearer "], r"(?i)\bauthorization\s*:\s*bearer\s+(?P<v>[A-Za-z0-9._~+/\-]{20,}=*)"),
        s("secret.shopify_token", &["shpat_", "shpss_", "shpca_", "shppa_"], r"\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b"),
        s("secret.atlassian_api_token", &["atatt3"], r"\bATATT3[A-Za-z0-9_\-=]{180,}\b"),
        s("secret.discord_bot_token", &[], r"\b[MN][A-Za-z\d]{23,25}\.[\w\-]{6}\.[\w\-]{27,38}\b"),
        s("secret.discord_webhook", &["discord"], r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[\w\-]{60,}"),
        s("secret.telegram_bot_token", &[], r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b"),
        s("secret.square_token", &["sq0atp-", "sq0csp-", "eaaa"], r"\bsq0(?:atp|csp)-[0-9A-Za-z_\-]{22,43}\b|\bEAAA[A-Za-z0-9_\-]{60}\b"),
        s("secret.braintree_token", &["access_token$production$"], r"access_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32}"),
        s("secret.digitalocean_token", &["dop_v1_", "doo_v1_", "dor_v1_"], r"\bdo[por]_v1_[a-f0-9]{64}\b"),
        s("secret.linear_api_key", &["lin_api_"], r"\blin_api_[A-Za-z0-9]{40}\b"),
        s("secret.notion_token", &["secret_", "ntn_"], r"\b(?:secret_[A-Za-z0-9]{43}|ntn_[A-Za-z0-9]{46})\b"),
        s("secret.airtable_pat", &[], r"\bpat[A-Za-z0-9]{14}\.[a-f0-9]{64}\b"),
        s("secret.dropbox_token", &["sl."], r"\bsl\.[A-Za-z0-9_\-]{130,}\b"),
        s("secret.figma_token", &["figd_"], r"\bfigd_[A-Za-z0-9_\-]{40,}\b"),
        s("secret.postman_api_key", &["pmak-"], r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b"),
        s("secret.terraform_cloud_token", &["atlasv1"], r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,}\b"),
        s("secret.vault_token", &["hvs.", "hvb."], r"\bhv[sb]\.[A-Za-z0-9_\-]{24,}\b"),
        s("secret.new_relic_key", &["nrak-"], r"\bNRAK-[A-Z0-9]{27}\b"),
        s("secret.sentry_dsn", &["sentry.io"], r"https://(?P<v>[0-9a-f]{32})@o\d+\.ingest\.(?:[a-z]{2}\.)?sentry\.io"),
        s("secret.grafana_token", &["glsa_", "glc_"], r"\b(?:glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|glc_[A-Za-z0-9+/]{32,}={0,2})\b"),
        s("secret.alibaba_access_key", &["ltai"], r"\bLTAI[A-Za-z0-9]{20}\b"),
        s("secret.facebook_access_token", &[], r"\bEAA[A-Za-z0-9]{100,}\b"),
        s("secret.twitter_bearer_token", &["aaaaaaaaaaaaaaaaaaaaa"], r"\bAAAAAAAAAAAAAAAAAAAAA[A-Za-z0-9%]{30,}\b"),
        s("secret.age_secret_key", &["age-secret-key-1"], r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b"),
        s("secret.onepassword_service_token", &["ops_"], r"\bops_eyJ[A-Za-z0-9_\-]{100,}\b"),
        s("secret.pulumi_token", &["pul-"], r"\bpul-[a-f0-9]{40}\b"),
        s("secret.doppler_token", &["dp.pt.", "dp.st."], r"\bdp\.(?:pt|st|sa|ct)\.[A-Za-z0-9]{40,44}\b"),
        s("secret.supabase_token", &["sbp_"], r"\bsbp_[a-f0-9]{40}\b"),
        s("secret.databricks_token", &["dapi"], r"\bdapi[a-f0-9]{32}(?:-\d)?\b"),
        s("secret.netlify_token", &["nfp_"], r"\bnfp_[A-Za-z0-9]{36}\b"),
        s("secret.inference_guard_api_key", &[], r"\b[a-z0-9]{2,16}_[A-Za-z0-9]{36}\b").validator(guard_key_checksum),
        rule(
            "secret.generic_assignment",
            Category::Secret,
            Severity::High,
            &["password", "passwd", "pwd", "secret", "api_key", "apikey", "api-key", "token", "auth", "credential", "private_key", "private-key"],
            r#"(?i)(?:\b|[_\-.])(?:password|passwd|pwd|secret|client_secret|api[_\-]?key|access[_\-]?token|auth[_\-]?token|credentials?|private[_\-]key)\b["']?\s*(?:=|:|=>|:=)\s*["']?(?P<v>[^\s"'`,;]{8,128})"#,
        )
        .validator(generic_secret)
        .near(assigned_after),
    ]
}

fn p(id: &'static str, anchors: &[&str], pattern: &str) -> Rule {
    rule(
        id,
        Category::PersonalData,
        Severity::Medium,
        anchors,
        pattern,
    )
}

/// Whether the `://` at `at` has an `@` after it within the 194 bytes a user
/// name (at most 64), a colon and a password (at most 128) take, before any ASCII
/// whitespace: what a URL or connection string with a password has (most links
/// have none, and then the pattern need not run around them).
fn userinfo_after(b: &[u8], at: usize) -> bool {
    let after = b.get(at + 3..).unwrap_or_default();
    after
        .iter()
        .take(64 + 1 + 128 + 1)
        .take_while(|c| !c.is_ascii_whitespace())
        .any(|&c| c == b'@')
}

/// Whether the colon at `at` can be the first of an IPv6 address as
/// `pii.ipv6` reads one: a hex digit before it, one to four after it, then
/// another colon. Colons in prose and code ("Note:", "items:", "10:42") are not.
fn ipv6_colon(b: &[u8], at: usize) -> bool {
    let before = at.checked_sub(1).and_then(|i| b.get(i));
    let run = b
        .get(at + 1..)
        .unwrap_or_default()
        .iter()
        .take(5)
        .take_while(|c| c.is_ascii_hexdigit())
        .count();
    before.is_some_and(u8::is_ascii_hexdigit)
        && (1..=4).contains(&run)
        && b.get(at + 1 + run) == Some(&b':')
}

/// Whether the keyword an anchor of `secret.generic_assignment` found at `at` is
/// followed as the rule needs: past the rest of the word (letters, digits, `_`,
/// `-`, and any byte outside ASCII: a letter that `(?i)` folds to one), an
/// optional quote, whitespace (ASCII, or any byte outside it), then `=` or `:`,
/// within the rule's window. Its keywords are also in prose ("token", "author",
/// "secretary", "authentication"), seldom before an assignment.
fn assigned_after(b: &[u8], at: usize) -> bool {
    let rest = b.get(at..).unwrap_or_default();
    let rest = &rest[..rest.len().min(512)];
    let word = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-') || *c >= 0x80;
    let mut i = rest.iter().position(|c| !word(c)).unwrap_or(rest.len());
    if matches!(rest.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    let space = |c: &u8| matches!(c, b'\t'..=b'\r' | b' ') || *c >= 0x80;
    i += rest[i..]
        .iter()
        .position(|c| !space(c))
        .unwrap_or(rest.len() - i);
    matches!(rest.get(i), Some(b'=' | b':'))
}

/// Whether a digit follows the keyword at `at` on its line, within the 92 bytes
/// the longest keyword (9), twenty characters of up to four bytes and a
/// parenthesis take: what `pii.phone_national` needs. Its keywords are also in
/// words of prose ("recall", "excellent", "hotel"), seldom before a number.
fn digit_after(b: &[u8], at: usize) -> bool {
    b.get(at..)
        .unwrap_or_default()
        .iter()
        .take(92)
        .take_while(|&&c| c != b'\n')
        .any(u8::is_ascii_digit)
}

/// The built-in personal-data rules.
pub(crate) fn pii_rules() -> Vec<Rule> {
    vec![
        p(
            "pii.email",
            &["@"],
            r"(?i)\b[a-z0-9][a-z0-9._%+\-]{0,63}@(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}\b",
        ),
        p(
            "pii.phone_e164",
            &["+"],
            r"\+[1-9]\d{0,2}[\s.\-]?\(?\d{1,4}\)?(?:[\s.\-]?\d{2,4}){2,4}\b",
        ),
        p(
            "pii.phone_national",
            &["phone", "tel", "call", "mobile", "cell", "fax", "whatsapp"],
            r"(?i)\b(?:phone|tel|telephone|call|mobile|cell|fax|whatsapp)\b[^\d\n]{0,20}(?P<v>\(?\d{2,4}\)?[\s.\-]?\d{3,4}[\s.\-]?\d{3,4})\b",
        )
        .near(digit_after),
        // National numbers written the way each country writes them, without a
        // keyword: the shape is the evidence (grouping and separators), the
        // validator the digit count and the trunk/area rules.
        p(
            "pii.phone_national_format",
            &[],
            concat!(
                r"(?:\(\d{3}\)\s?|\b\d{3}[.\-])[2-9]\d{2}[.\-]\d{4}\b", // US/CA: (415) 555-0132, 415.555.0198
                r"|\b0(?:7\d{3}\s\d{6}|20\s\d{4}\s\d{4}|1\d{2,3}\s\d{6,7})\b", // UK
                r"|\b0[1-9](?:[ .]\d{2}){4}\b",                         // FR: 06 12 34 56 78
                r"|\b0(?:1[5-7]\d{1,2}|[2-9]\d{1,4})[ /\-]\d{4,8}\b",   // DE: 030 12345678
                r"|\b[67]\d{2}\s\d{3}\s\d{3}\b|\b9\d\s\d{3}\s\d{2}\s\d{2}\b", // ES
                r"|\b3\d{2}\s\d{3}\s\d{4}\b",                           // IT mobile
                r"|\(\d{2}\)\s?9?\d{4}-\d{4}\b",                        // BR
            ),
        )
        .validator(national_phone),
        p("pii.payment_card", &[], r"\b(?:\d[ \-]?){12,18}\d\b").validator(luhn),
        p(
            "pii.iban",
            &[],
            r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b",
        )
        .validator(iban),
        p("pii.us_ssn", &[], r"\b\d{3}-\d{2}-\d{4}\b").validator(ssn),
        p(
            "pii.us_ssn_unformatted",
            &["ssn", "social security"],
            r"(?i)\b(?:ssn|social security(?: number)?)\b[^\d\n]{0,20}(?P<v>\d{9})\b",
        )
        .validator(ssn),
        // Written out rather than `(?:\d{1,3}\.){3}`: the same matches, but the
        // regex engine then looks for the dots first, where the repetition had it
        // stop at every digit (21 us against 1 us over 4 KiB dense with digits).
        p("pii.ipv4", &[], r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b").validator(ipv4),
        p(
            "pii.ipv6",
            &[":"],
            r"(?i)\b(?:[0-9a-f]{1,4}:){2,7}(?::|[0-9a-f]{1,4})(?:[0-9a-f:]*)\b",
        )
        .validator(ipv6)
        .near(ipv6_colon),
        p(
            "pii.bitcoin_address",
            &[],
            r"\b[13][1-9A-HJ-NP-Za-km-z]{25,34}\b",
        )
        .validator(base58check),
        p(
            "pii.bitcoin_bech32",
            &["bc1", "tb1"],
            r"(?i)\b(?:bc|tb)1[02-9ac-hj-np-z]{11,71}\b",
        )
        .validator(bech32),
        p("pii.ethereum_address", &["0x"], r"\b0x[0-9a-fA-F]{40}\b").validator(eip55),
    ]
}

/// The built-in rules' anchors.
#[cfg(test)]
pub(crate) fn builtin_anchors() -> Vec<String> {
    secret_rules()
        .iter()
        .chain(&pii_rules())
        .flat_map(|r| r.anchors.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The automaton says what lowercasing and `contains` said, on generated
    /// values of the placeholders' bytes in both cases.
    #[test]
    fn placeholders_are_found_in_any_case() {
        assert!(placeholders().is_some(), "the automaton, not the fallback");
        let old = |v: &str| {
            let l = v.to_ascii_lowercase();
            PLACEHOLDERS.iter().any(|p| l.contains(p))
        };
        let mut hits = 0;
        let values =
            crate::scan::testgen::strings(b"exampleXAMPLEyour_-<${*0123456789Fk", 16, 60_000);
        for v in values {
            let v = String::from_utf8(v).unwrap();
            assert_eq!(placeholder(&v), old(&v), "{v:?}");
            hits += usize::from(old(&v));
        }
        for p in PLACEHOLDERS {
            let upper = p.to_ascii_uppercase();
            assert!(placeholder(&format!("sk-{upper}-1")), "{p}");
            hits += 1;
        }
        assert!(hits > 100, "{hits}");
        assert!(!placeholder("ghp_R4nd0mV4lu3"));
    }

    /// What `rules` finds in `text`.
    fn findings(rules: &RuleSet, text: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let mask = super::super::Redaction::mask();
        let mut replacer = super::super::redaction::Replacer::new(&mask);
        rules.scan(
            text,
            Location::Message(0),
            &HashSet::new(),
            &mut replacer,
            &mut out,
        );
        out
    }

    /// The ids of what `rules` finds in `text`.
    fn found(rules: &RuleSet, text: &str) -> Vec<String> {
        findings(rules, text)
            .iter()
            .map(|f| f.rule_id().to_owned())
            .collect()
    }

    /// The built-in rules read word boundaries, digits and word characters as
    /// ASCII (and an escaped backslash stays one).
    #[test]
    fn builtin_classes_are_ascii() {
        assert_eq!(
            ascii_classes(r"\b(?:\d[ \-]?){12}[\w\-]\\b\s\B"),
            r"(?-u:\b)(?:[0-9][ \-]?){12}[[0-9A-Za-z_]\-]\\b\s\B"
        );
        let rules = RuleSet::new(secret_rules().into_iter().chain(pii_rules()).collect());
        let found = |text: &str| found(&rules, text);
        // What was found in a text with characters outside ASCII still is, and a
        // number glued to a letter outside ASCII is found too.
        let text = "Café “4111 1111 1111 1111” — SSN 078-05-1120, IP 192.168.1.10.";
        let ids = found(text);
        for id in ["pii.payment_card", "pii.us_ssn", "pii.ipv4"] {
            assert!(ids.iter().any(|f| f == id), "{id}: {ids:?}");
        }
        assert!(
            found("Número:é4111111111111111")
                .iter()
                .any(|f| f == "pii.payment_card")
        );
        // Digits of other scripts are not card numbers (Luhn reads ASCII digits).
        assert!(found("٤١١١١١١١١١١١١١١١").is_empty());
    }

    /// The IPv4 rule's pattern, written out, finds what the repetition found.
    #[test]
    fn ipv4_pattern_written_out_matches_as_the_repetition() {
        let rule = pii_rules()
            .into_iter()
            .find(|r| r.id == "pii.ipv4")
            .expect("ipv4 rule");
        let repeated = regex::Regex::new(&ascii_classes(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")).unwrap();
        let mut matched = 0;
        for hay in crate::scan::testgen::texts(b"0123..4 a", 24, 20_000) {
            let ours: Vec<_> = rule.regex.find_iter(&hay).map(|m| m.range()).collect();
            let theirs: Vec<_> = repeated.find_iter(&hay).map(|m| m.range()).collect();
            assert_eq!(ours, theirs, "{hay:?}");
            matched += ours.len();
        }
        assert!(matched > 100, "{matched}");
    }

    /// The card and IBAN checks, which read their digits onto the stack, answer
    /// as they did when they collected them into a vector and a string.
    #[test]
    fn card_and_iban_checks_agree_with_collecting_ones() {
        fn luhn_ref(v: &str) -> bool {
            let d: Vec<u32> = v.chars().filter_map(|c| c.to_digit(10)).collect();
            if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
                return false;
            }
            // Every second digit from the right doubled, its digits summed: by
            // table.
            const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
            let (mut sum, mut second) = (0, false);
            for &x in d.iter().rev() {
                sum += if second { DOUBLED[x as usize] } else { x };
                second = !second;
            }
            sum % 10 == 0
                && (matches!(d[0], 2..=6) || (d[0] == 3 && matches!(d[1], 4 | 7 | 5 | 0 | 6 | 8)))
        }
        fn iban_ref(v: &str) -> bool {
            let s: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            let len = match s.get(..2) {
                Some("GB") => 22,
                Some("DE") => 22,
                Some("NO") => 15,
                _ => return false,
            };
            if s.len() != len || !s.is_ascii() {
                return false;
            }
            // The number written out (a letter as its two digits, A = 10),
            // then its remainder by 97, a digit at a time.
            let mut number = String::new();
            for c in s[4..].chars().chain(s[..4].chars()) {
                let Some(v) = c.to_digit(36) else {
                    return false;
                };
                number.push_str(&v.to_string());
            }
            number
                .bytes()
                .fold(0u32, |r, d| (r * 10 + u32::from(d - b'0')) % 97)
                == 1
        }
        let (mut cards, mut ibans) = (0, 0);
        let mut check = |t: &str| {
            assert_eq!(luhn(t), luhn_ref(t), "{t:?}");
            if t.starts_with(['G', 'D', 'N']) {
                assert_eq!(iban(t), iban_ref(t), "{t:?}");
            }
            cards += usize::from(luhn(t));
            ibans += usize::from(iban(t));
        };
        for t in crate::scan::testgen::texts(b"0123456789 -", 26, 100_000) {
            check(&t);
            check(&format!("4{t}"));
        }
        // IBANs with one character changed, and spaces and other scripts inside.
        let valid = [
            "GB82 WEST 1234 5698 7654 32",
            "DE89 3704 0044 0532 0130 00",
            "NO93 8601 1117 947",
        ];
        for v in valid {
            check(v);
            for i in 0..v.len() {
                for c in ['0', '7', 'A', 'Z', ' ', '\u{a0}', 'é'] {
                    let mut t: Vec<char> = v.chars().collect();
                    t[i] = c;
                    check(&t.iter().collect::<String>());
                }
            }
        }
        assert!(cards > 1_000 && ibans >= 3, "{cards} cards, {ibans} IBANs");
        // Every country's code is found (the table is sorted), and an IBAN of its
        // length with the check digits the written-out remainder gives (letters
        // in the account part too: each two digits) passes, one digit off not.
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
        let remainder = |s: &str| {
            s.chars()
                .map(|c| c.to_digit(36).unwrap().to_string())
                .collect::<String>()
                .bytes()
                .fold(0u32, |r, d| (r * 10 + u32::from(d - b'0')) % 97)
        };
        for &(code, len) in IBAN_LENGTHS {
            let account: String = "Z9".chars().cycle().take(len - 4).collect();
            let check = 98 - remainder(&format!("{account}{code}00"));
            let valid = format!("{code}{check:02}{account}");
            assert!(iban(&valid), "{valid}");
            let off = format!("{code}{check:02}{}8", &account[..account.len() - 1]);
            assert!(!iban(&off), "{off}");
            assert!(!iban(&format!("{valid}9")), "{valid}9");
        }
    }

    #[test]
    fn validators() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(iban("GB82 WEST 1234 5698 7654 32"));
        assert!(!iban("GB82 WEST 1234 5698 7654 33"));
        assert!(
            ssn("123-45-6789") && !ssn("666-45-6789") && !ssn("900-45-6789") && !ssn("123-00-6789")
        );
        assert!(base58check("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"));
        assert!(!base58check("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"));
        assert!(bech32("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"));
        assert!(!bech32("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdz"));
        assert!(!ipv4("999.1.1.1") && ipv4("192.168.1.10"));
        assert!(placeholder("AKIAIOSFODNN7EXAMPLE"));
    }

    #[test]
    fn keccak_and_eip55() {
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        assert_eq!(
            hex(keccak256(b"The quick brown fox jumps over the lazy dog")),
            "4d741b6f1eb29cb2a9b9911c82f56fa8d73b04959d3d9d222895df6c0b28aa15"
        );
        // The EIP-55 test vectors.
        for a in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            assert!(eip55(a), "{a}");
            assert!(eip55(&a.to_ascii_lowercase()));
        }
        assert!(!eip55("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"));
    }

    /// The rules that open windows only at anchors their surroundings allow
    /// (`Rule::near`) find what they found with a window at every anchor.
    #[test]
    fn anchors_passed_over_hold_no_match() {
        const PIECES: [&str; 48] = [
            "Call",
            "hotel",
            " (",
            "555",
            "-0142",
            "\u{2003}",
            "https://",
            "http://",
            "postgres://",
            "jdbc:mysql://",
            "user",
            ":",
            "pass",
            "@",
            "host.test",
            " ",
            "\n",
            "2001",
            "db8",
            "::",
            "1",
            "ABCD",
            "10:42",
            "Note: ",
            "x",
            "é",
            "/",
            "fe80",
            "0:",
            "\u{a0}",
            "token",
            "Token",
            "auth",
            "_token",
            "password",
            "Secret",
            "credentials",
            "private-key",
            "\"",
            "'",
            "=",
            "=>",
            ":=",
            "s3cr3tV4lu3X9q",
            "hunter2hunter2",
            "\t",
            "\u{3000}",
            "author",
        ];
        let with: Vec<Rule> = secret_rules()
            .into_iter()
            .chain(pii_rules())
            .filter(|r| r.near.is_some())
            .collect();
        assert_eq!(with.len(), 5);
        let without: Vec<Rule> = with
            .iter()
            .cloned()
            .map(|mut r| {
                r.near = None;
                r
            })
            .collect();
        let (with, without) = (RuleSet::new(with), RuleSet::new(without));
        let spans = |set: &RuleSet, text: &str| {
            findings(set, text)
                .iter()
                .map(|f| (f.rule_id().to_owned(), f.span()))
                .collect::<Vec<_>>()
        };
        let (mut found, mut assigned, mut texts) = (0, 0, 0);
        let alphabet = b"0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_";
        assert_eq!(alphabet.len(), PIECES.len());
        for picks in crate::scan::testgen::strings(alphabet, 48, 40_000) {
            let text: String = picks
                .iter()
                .map(|&c| PIECES[usize::from(c - b'0')])
                .collect();
            let a = spans(&with, &text);
            assert_eq!(a, spans(&without, &text), "{text:?}");
            found += a.len();
            assigned += a
                .iter()
                .filter(|(id, _)| id == "secret.generic_assignment")
                .count();
            texts += 1;
        }
        // Texts of kilobytes: windows of distant anchors do not meet.
        for k in [0, 300, 600, 2000] {
            let pad = "Note: see the list:\n".repeat(k / 20);
            for tail in [
                "mail https://bob:hunter22@host.test now",
                "db postgres://app:s3cret!@db.internal:5432/x",
                "addr 2001:db8:85a3:0:0:8a2e:370:7334 ok",
                "or call us at 415 555 0142.",
                "set private-key = \"s3cr3tV4lu3X9q\" here",
            ] {
                let text = format!("{pad}{tail} {pad}");
                let a = spans(&with, &text);
                assert_eq!(a.len(), 1, "{tail}");
                assert_eq!(a, spans(&without, &text));
            }
        }
        assert!(
            found > 100 && assigned > 100 && texts == 40_000,
            "{found} findings, {assigned} assignments"
        );
    }

    #[test]
    fn anchors_match_whatever_the_case_on_either_side() {
        let rule = Rule::new(
            "acme.key",
            Category::Secret,
            Severity::Critical,
            r"(?i)\bacme_[0-9a-f]{8}\b",
        )
        .unwrap()
        .anchors(["AcMe_"]);
        let set = RuleSet::new(vec![rule]);
        for text in [
            "key ACME_0123abcd here",
            "key acme_0123abcd here",
            "aCmE_0123abcd",
        ] {
            assert_eq!(found(&set, text), ["acme.key"], "{text}");
        }
    }

    #[test]
    fn github_checksums_are_validated() {
        // A token with a valid checksum, made here.
        let body = "abcdefghijklmnopqrstuvwxyz0123";
        let sum = base62_6(crc32(body.as_bytes()));
        let token = format!("ghp_{body}{}", std::str::from_utf8(&sum).unwrap());
        assert!(github_checksum(&token));
        let mut bad = token;
        bad.replace_range(10..11, "Z");
        assert!(!github_checksum(&bad));
    }
}
