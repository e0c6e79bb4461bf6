//! Patterns found through what their matches must start with or contain, so
//! that a pattern's regex runs only where it can match.
//!
//! Each pattern's top-level branches are read with `regex-syntax` (a branch that
//! starts with a choice, `(?:\(\d{3}\)|\d{3}-)\d{4}`, as one branch per choice):
//!
//! - A branch whose matches all start at a word boundary with one of a finite set
//!   of literals that start with a letter or digit is **looked up by word**: the
//!   text's words (runs of ASCII letters and digits, found eight bytes at a time)
//!   are looked up in a table by their first bytes, and literals of eight bytes or
//!   more by those eight bytes. A word that starts no literal costs one bit test.
//! - A branch whose matches all start with one of a finite set of other literals
//!   (punctuation, after any leading whitespace) is **searched for** by that byte
//!   with `memchr`, three bytes a pass, each occurrence compared with the literals
//!   that have it there (split by the three bytes that follow); a few letter-led
//!   literals by their first four bytes with `memmem`. Past 24 bytes or 8 such
//!   stems, one Aho-Corasick pass over the literals instead.
//! - Any other branch gets a **gate**: up to three parts every match goes through
//!   (the literals a part starts with, or a class of a few ASCII bytes such as the
//!   digits), each as many times as every match holds it (a repetition `{5,}` of
//!   what holds it once: five; a card's thirteen digits), each checked once per
//!   text with `memchr`/`memmem`, counting without overlaps. While a gate is
//!   shut, the branch cannot match; when one is open, the pattern is searched in
//!   full. A pattern with a branch that has none of the three is always searched
//!   in full.
//!
//! At each candidate, the pattern (not the branch) is confirmed by an anchored
//! search (`regex-automata`) with the whole text as context for look-behind
//! (`\b`). The matches are the ones `Regex::find_iter` finds over the whole text
//! (leftmost first, non-overlapping): no match starts anywhere but at a candidate,
//! and the anchored search at a start prefers what the unanchored one prefers.
//! A text with no candidate and shut gates costs the word pass, the `memchr`
//! passes and the gate checks, and no regex at all.
//!
//! A pattern with more candidates than [`CANDIDATES`] in one text is searched in
//! full (one linear pass instead of many anchored ones: dense adversarial text
//! stays linear); when those candidates are fewer than [`PACKED`] bytes apart
//! (digits in a table or a log), by the lazy DFA alone, without the literal
//! prefilter that would stop at each of them. Patterns searched in full are searched one by one, each with its
//! own literal optimizations: a `RegexSet` of them all, tried as a first pass,
//! builds a lazy DFA whose states differ from text to text (the patterns' bounded
//! repetitions multiply), and was 5-10x slower on a corpus of real prompts than
//! the searches it was to spare.

use std::ops::Range;

use smallvec::SmallVec;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::{Anchored, Input, meta};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind, Look};

use super::swar::{alnum, load, run};

/// Candidates kept per pattern and text; past this the pattern is searched in full.
pub(crate) const CANDIDATES: usize = 64;

/// A dense pattern (past [`CANDIDATES`]) whose first candidates are on average
/// fewer than this many bytes apart is searched in full without a prefilter.
const PACKED: usize = 16;

/// How one pattern is searched.
#[derive(Clone)]
struct Pattern {
    /// The pattern as the caller compiled it (searches in full).
    regex: regex::Regex,
    /// The same pattern for anchored searches, when it has usable prefixes.
    anchored: Option<meta::Regex>,
    /// The gates of the branches without prefixes (indices into
    /// [`Prefixed::parts`]): when one is open in the text, the pattern is searched
    /// in full.
    gates: Vec<Vec<usize>>,
    /// The gates of line branches (see [`Analysis::lines`]), each with the part
    /// whose literals locate the lines: when one is open, the starts of the lines
    /// that hold those literals are candidates.
    lines: Vec<(Vec<usize>, usize)>,
    /// What a candidate must have for a match to start there (see [`Start`]).
    start: Option<Start>,
}

/// What every match of a pattern of numbers (cards, phone numbers, addresses)
/// has from its start: a candidate without it starts no match, and is neither
/// tried nor counted towards [`CANDIDATES`] (a text dense with digits, the
/// prefixes of these patterns, is then searched in full only where matches may
/// be). Patterns of words are not gated: most of their candidates start a match
/// or fail at once, and the test cost more than it spared (0.5 µs over 4 KiB of
/// prose).
#[derive(Clone)]
struct Start {
    /// The bytes any match is made of (a bit per byte), and the fewest bytes of
    /// a match (when four or more, and the bytes are not almost all): a match's
    /// first `min_len` bytes are all in `bytes`.
    bytes: [u64; 4],
    min_len: usize,
    /// Every match holds at least `.0` ASCII digits (three or more) and is at
    /// most `.1` bytes long.
    digits: (u32, usize),
}

impl Start {
    /// What a pattern's matches have from their start, when they need three
    /// digits or more and are at most 256 bytes long.
    fn new(pattern: &str) -> Option<Self> {
        let hir = parse(pattern)?;
        let len = hir.properties().maximum_len().filter(|&l| l <= 256)?;
        let n = u32::try_from(min_digits(&hir)).ok().filter(|&n| n >= 3)?;
        let mut bytes = [0u64; 4];
        match_bytes(&hir, &mut bytes);
        let min_len = hir.properties().minimum_len()?;
        let some = bytes.iter().map(|w| w.count_ones()).sum::<u32>() < 200;
        Some(Self {
            bytes,
            min_len: if some && min_len >= 4 { min_len } else { 0 },
            digits: (n, len),
        })
    }

    /// Whether a match may start at `at` in `hay` (`digits`: the text's digits,
    /// read on first use).
    #[inline]
    fn open(&self, hay: &[u8], at: usize, digits: &mut Option<SmallVec<[u64; 64]>>) -> bool {
        if self.min_len > 0 {
            let Some(head) = hay.get(at..at + self.min_len) else {
                return false;
            };
            if !head
                .iter()
                .all(|&b| self.bytes[usize::from(b / 64)] >> (b % 64) & 1 == 1)
            {
                return false;
            }
        }
        let (n, len) = self.digits;
        let bits = digits.get_or_insert_with(|| digit_bits(hay));
        bits_between(bits, at, at.saturating_add(len)) >= n
    }
}

/// Adds to `set` (a bit per byte) every byte a match of `h` may hold (a class
/// with characters outside ASCII: every byte from 0x80).
fn match_bytes(h: &Hir, set: &mut [u64; 4]) {
    use regex_syntax::hir::Class;
    let mut add = |lo: u8, hi: u8| {
        for b in lo..=hi {
            set[usize::from(b / 64)] |= 1 << (b % 64);
        }
    };
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(l) => l.0.iter().for_each(|&b| add(b, b)),
        HirKind::Class(Class::Unicode(c)) => {
            for r in c.ranges() {
                let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                if lo < 0x80 {
                    add(lo as u8, hi.min(0x7f) as u8);
                }
                if hi >= 0x80 {
                    add(0x80, 0xff);
                }
            }
        }
        HirKind::Class(Class::Bytes(c)) => c.ranges().iter().for_each(|r| add(r.start(), r.end())),
        HirKind::Repetition(r) => match_bytes(&r.sub, set),
        HirKind::Capture(c) => match_bytes(&c.sub, set),
        HirKind::Concat(hs) | HirKind::Alternation(hs) => {
            hs.iter().for_each(|h| match_bytes(h, set))
        }
    }
}

/// The fewest ASCII digits any match of `h` holds (a class counts when all it
/// matches are ASCII digits).
fn min_digits(h: &Hir) -> usize {
    use regex_syntax::hir::Class;
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => 0,
        HirKind::Literal(l) => l.0.iter().filter(|b| b.is_ascii_digit()).count(),
        HirKind::Class(Class::Unicode(c)) => usize::from(
            !c.ranges().is_empty()
                && c.ranges()
                    .iter()
                    .all(|r| r.start().is_ascii_digit() && r.end().is_ascii_digit()),
        ),
        HirKind::Class(Class::Bytes(c)) => usize::from(
            !c.ranges().is_empty()
                && c.ranges()
                    .iter()
                    .all(|r| r.start().is_ascii_digit() && r.end().is_ascii_digit()),
        ),
        HirKind::Repetition(r) => (r.min as usize).saturating_mul(min_digits(&r.sub)),
        HirKind::Capture(c) => min_digits(&c.sub),
        HirKind::Concat(hs) => hs.iter().fold(0, |a, h| a.saturating_add(min_digits(h))),
        HirKind::Alternation(hs) => hs.iter().map(min_digits).min().unwrap_or(0),
    }
}

/// A bit per byte of `hay` that is an ASCII digit (byte `64 i + k`: bit `k` of
/// word `i`).
fn digit_bits(hay: &[u8]) -> SmallVec<[u64; 64]> {
    let mut out = SmallVec::with_capacity(hay.len().div_ceil(64));
    for block in 0..hay.len().div_ceil(64) {
        let at = 64 * block;
        let end = (at + 64).min(hay.len());
        out.push(super::swar::mask(&hay[at..end], |c| c.is_ascii_digit()));
    }
    out
}

/// How many bits of `bits` are set from bit `from` to bit `to` (excluded; past
/// the end, none).
fn bits_between(bits: &[u64], from: usize, to: usize) -> u32 {
    let to = to.min(64 * bits.len());
    if from >= to {
        return 0;
    }
    let (first, last) = (from / 64, (to - 1) / 64);
    let mut n = 0;
    for (i, &w) in bits.iter().enumerate().take(last + 1).skip(first) {
        let mut w = w;
        if i == first {
            w &= u64::MAX << (from % 64);
        }
        if i == last && to % 64 != 0 {
            w &= (1u64 << (to % 64)) - 1;
        }
        n += w.count_ones();
    }
    n
}

/// A gate's part, ready to look for: what to look for, and how many times a match
/// needs it.
#[derive(Clone)]
struct Check {
    what: Seek,
    times: usize,
}

/// What a [`Check`] looks for.
#[derive(Clone)]
enum Seek {
    Literals(Vec<memchr::memmem::Finder<'static>>),
    Class(Vec<u8>, Beyond),
}

impl Check {
    fn new(need: &Need) -> Self {
        let what = match &need.part {
            // Needed once, a literal that holds another of the part is not looked
            // for: where it occurs, the other does ("chatbot" and "bot"). (Needed
            // more often, each literal's occurrences add up: all are counted.)
            Part::Literals(l) => Seek::Literals(
                l.iter()
                    .enumerate()
                    .filter(|&(i, a)| {
                        need.times > 1
                            || !l.iter().enumerate().any(|(j, b)| {
                                j != i && memchr::memmem::find(a, b).is_some() && (a != b || j < i)
                            })
                    })
                    .map(|(_, l)| memchr::memmem::Finder::new(l).into_owned())
                    .collect(),
            ),
            Part::Class(ascii, beyond) => Seek::Class(ascii.clone(), beyond.clone()),
        };
        Self {
            what,
            times: need.times,
        }
    }

    /// How many passes over a text looking for it takes (at most).
    fn passes(&self) -> usize {
        match &self.what {
            Seek::Literals(l) => l.len(),
            Seek::Class(bytes, _) => bytes.len().div_ceil(3),
        }
    }

    /// Whether `hay` has the part as many times as a match needs it (`ascii`:
    /// whether `hay` is all ASCII). Occurrences are counted without overlaps, per
    /// literal: at least as many as any match could hold apart.
    #[cfg(test)]
    fn found(&self, hay: &str, ascii: bool) -> bool {
        self.found_in(hay, ascii, &mut Pairs::default())
    }

    /// [`Check::found`], with what `pairs` knows of `hay` (a literal with a byte
    /// pair it lacks is not looked for), and telling it of each search that
    /// found nothing.
    fn found_in(&self, hay: &str, ascii: bool, pairs: &mut Pairs) -> bool {
        let b = hay.as_bytes();
        let need = self.times;
        let mut seen = 0;
        match &self.what {
            Seek::Literals(l) => l.iter().any(|l| {
                if !pairs.may_hold(l.needle()) {
                    return false;
                }
                // What `find_iter` counts (each search starts past the last match),
                // without the copy of the searcher an iterator takes.
                let mut at = 0;
                while seen < need {
                    match b.get(at..).and_then(|h| l.find(h)) {
                        Some(i) => {
                            seen += 1;
                            at += i + l.needle().len().max(1);
                        }
                        None => {
                            pairs.missed(l.needle(), b);
                            break;
                        }
                    }
                }
                seen >= need
            }),
            Seek::Class(bytes, beyond) => {
                bytes.chunks(3).any(|g| {
                    seen += match *g {
                        [a] => memchr::memchr_iter(a, b).take(need - seen).count(),
                        [a, c] => memchr::memchr2_iter(a, c, b).take(need - seen).count(),
                        [a, c, d] => memchr::memchr3_iter(a, c, d, b).take(need - seen).count(),
                        _ => 0,
                    };
                    seen >= need
                }) || !ascii && seen + beyond.count(hay, need - seen) >= need
            }
        }
    }
}

/// What a text's searches for gate literals learn of it. Once [`MISSES`]
/// searches for literals of two or more bytes have read it to its end and found
/// nothing (a text without the words the gates ask for: dense with numbers and
/// codes), the byte pairs it holds are read in one pass (about what 25 searches
/// cost), and a literal with a pair it lacks is known not to be there without a
/// search.
///
/// The pairs are of the text with each ASCII letter folded with its ROT13 (`a`
/// and `n` one byte, [`fold`]): the normalized text and its ROT13 reading (which
/// rotates some of its letters, those not from leetspeak) fold to the same
/// bytes, so one reading serves both.
#[derive(Default)]
pub(crate) struct Pairs {
    misses: usize,
    /// A bit per folded byte pair (the first byte high), and the text's last
    /// byte, folded.
    bits: Option<(Box<[u64; 1024]>, Option<u8>)>,
}

/// Searches for literals of two or more bytes that find nothing before
/// [`Pairs`] reads the text's byte pairs.
const MISSES: usize = 8;

impl Pairs {
    /// With its pairs read at once (for tests of the filter).
    #[cfg(test)]
    fn read(hay: &[u8]) -> Self {
        Self {
            misses: 0,
            bits: Some(pairs_of(hay)),
        }
    }

    /// Whether the text may hold `needle` (`false`: it does not).
    fn may_hold(&self, needle: &[u8]) -> bool {
        let Some((bits, last)) = &self.bits else {
            return true;
        };
        let has = |x: usize| bits[x >> 6] >> (x & 63) & 1 == 1;
        match needle {
            [] => true,
            // A byte followed by any, or the text's last.
            &[c] => {
                let c = fold(c);
                bits[usize::from(c) * 4..usize::from(c) * 4 + 4]
                    .iter()
                    .any(|&w| w != 0)
                    || *last == Some(c)
            }
            _ => needle
                .windows(2)
                .all(|w| has(usize::from(fold(w[0])) << 8 | usize::from(fold(w[1])))),
        }
    }

    /// A search for `needle` read `hay` (the text, or its ROT13 reading) to its
    /// end without finding it.
    fn missed(&mut self, needle: &[u8], hay: &[u8]) {
        if needle.len() >= 2 && self.bits.is_none() {
            self.misses += 1;
            if self.misses >= MISSES {
                self.bits = Some(pairs_of(hay));
            }
        }
    }
}

/// An ASCII letter folded with its ROT13 (the first of the two: `a` for `a` and
/// `n`, `A` for `A` and `N`); any other byte as it is.
fn fold(c: u8) -> u8 {
    FOLD[usize::from(c)]
}

const FOLD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = match b {
            b'n'..=b'z' | b'N'..=b'Z' => b - 13,
            _ => b,
        };
        c += 1;
    }
    t
};

/// The folded byte pairs of `b` (bit `x % 64` of word `x / 64` for the pair
/// `x = first << 8 | second`), and its last byte folded.
fn pairs_of(b: &[u8]) -> (Box<[u64; 1024]>, Option<u8>) {
    let mut bits = Box::new([0u64; 1024]);
    for w in b.windows(2) {
        let x = usize::from(fold(w[0])) << 8 | usize::from(fold(w[1]));
        bits[x >> 6] |= 1 << (x & 63);
    }
    (bits, b.last().map(|&c| fold(c)))
}

/// The characters of a gate's class outside ASCII.
#[derive(Clone, Debug, PartialEq)]
enum Beyond {
    None,
    /// Any byte past ASCII (a class of bytes).
    Bytes,
    /// These ranges of characters (sorted; `\d` has the digits of many scripts).
    Chars(Vec<(char, char)>),
}

impl Beyond {
    /// How many `hay` (not all ASCII) has, counted up to `up_to` (a class of bytes
    /// past ASCII: `up_to`, without counting).
    fn count(&self, hay: &str, up_to: usize) -> usize {
        match self {
            Self::None => 0,
            Self::Bytes => up_to,
            Self::Chars(ranges) => hay
                .chars()
                .filter(|&c| {
                    !c.is_ascii() && {
                        // The first range that does not end before `c`.
                        let i = ranges.partition_point(|&(_, end)| end < c);
                        ranges.get(i).is_some_and(|&(start, _)| start <= c)
                    }
                })
                .take(up_to)
                .count(),
        }
    }
}

/// A set of patterns searched through their literal prefixes; see the module docs.
#[derive(Clone)]
pub(crate) struct Prefixed {
    patterns: Vec<Pattern>,
    /// The patterns that may be searched in full without a candidate (no
    /// prefixes, or gates), ascending: the others are looked at only when a text
    /// gives them candidates.
    special: Vec<usize>,
    /// The patterns with line gates, ascending.
    lined: Vec<usize>,
    /// Every distinct gate part, checked at most once per text.
    parts: Vec<Check>,
    /// The prefixes looked up by word.
    words: WordIndex,
    /// The literals searched for.
    searched: Searched,
}

impl std::fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("patterns", &self.patterns.len())
            .field("searched", &self.searched.len())
            .field("word_literals", &self.words.len())
            .field("gate_parts", &self.parts.len())
            .field(
                "full",
                &(0..self.patterns.len())
                    .filter(|&i| self.patterns[i].anchored.is_none())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A literal every match of a branch of a pattern starts with, and how it is
/// found.
#[derive(Debug, PartialEq)]
enum Prefix {
    /// Looked up by word: the branch starts at a word boundary and the literal (of
    /// two bytes or more) with an ASCII letter or digit.
    Word(Vec<u8>),
    /// Searched for by its byte at `.1` (past the whitespace it starts with: a
    /// space is everywhere, what follows it is not).
    Searched(Vec<u8>, usize),
    /// A whole word: the branch is a word boundary, ASCII letters and digits
    /// only, and a word boundary, so every match is a word (a run of ASCII
    /// letters and digits) of `min..=max` bytes that starts with one of `first`.
    Whole {
        first: Vec<u8>,
        min: usize,
        max: usize,
    },
}

/// The length of the whitespace `literal` starts with.
fn leading_space(literal: &[u8]) -> usize {
    let mut at = 0;
    'next: while at < literal.len() {
        for len in 1..=4 {
            if let Some(c) = literal
                .get(at..at + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.chars().next())
            {
                if c.is_whitespace() {
                    at += len;
                    continue 'next;
                }
                break 'next;
            }
        }
        break;
    }
    at
}

/// Words are bucketed by their first three bytes (zero-padded when shorter).
const HEAD: usize = 3;
const BUCKET_BITS: u32 = 14;

/// The bucket of a word whose first bytes are `bits` and whose length is `len`.
fn bucket(bits: u64, len: usize) -> usize {
    let head = bits & ((1u64 << (8 * len.min(HEAD))) - 1);
    (head.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BUCKET_BITS)) as usize
}

/// How the literals that are not looked up by word are found. Most of them start
/// (after any leading whitespace) with punctuation: `memchr` finds the bytes they
/// start with, three at a time, and the literals that start with a byte are
/// compared where it occurs (their first eight bytes as one word of memory,
/// then the rest). The few that start with a letter or digit are found by their
/// first four bytes with `memmem`. Past [`BYTES`] bytes or [`WORDS`] such stems,
/// one Aho-Corasick pass over all the literals instead.
#[derive(Clone)]
enum Searched {
    Memchr {
        /// The distinct first bytes.
        bytes: Vec<u8>,
        /// Per byte: its literals with fewer than three bytes after it, and the
        /// others by the three bytes that follow it (found by binary search).
        by_byte: Vec<ByByte>,
        /// Per byte: the patterns its literals begin (an occurrence is skipped when
        /// none of them wants more candidates).
        owners: Vec<SmallVec<[u32; 4]>>,
        /// Letter-led stems, and their literals.
        words: Vec<(memchr::memmem::Finder<'static>, Vec<Entry>)>,
    },
    Automaton(AhoCorasick, Vec<Vec<(Vec<u8>, usize, u32)>>),
}

/// One byte's literals: those with fewer than three bytes after it, and the others
/// by the three bytes that follow it.
type ByByte = (Vec<Entry>, Vec<(u32, Entry)>);

/// A literal, its first eight bytes (from its start) and their mask, where its
/// stem starts in it, and the pattern it begins.
#[derive(Clone, PartialEq)]
struct Entry {
    literal: Vec<u8>,
    head: u64,
    mask: u64,
    at: usize,
    pattern: u32,
}

impl Entry {
    fn new(literal: Vec<u8>, at: usize, pattern: u32) -> Self {
        let n = literal.len().min(8);
        let mask = if n == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        };
        Self {
            head: load(&literal, 0),
            mask,
            literal,
            at,
            pattern,
        }
    }

    /// Calls `f` when the literal occurs with its stem at `r`.
    fn check(
        &self,
        hay: &[u8],
        r: usize,
        want: &impl Fn(u32) -> bool,
        f: &mut impl FnMut(u32, usize),
    ) {
        if r >= self.at && want(self.pattern) {
            let s = r - self.at;
            if load(hay, s) & self.mask == self.head && hay[s..].starts_with(&self.literal) {
                f(self.pattern, s);
            }
        }
    }
}

/// At most this many distinct first bytes go to `memchr`, and letter-led stems to
/// `memmem`.
const BYTES: usize = 24;
const WORDS: usize = 8;

impl Searched {
    /// `None` when the automaton was needed and could not be built.
    fn new(literals: Vec<(Vec<u8>, usize, u32)>) -> Option<Self> {
        let mut bytes: Vec<u8> = Vec::new();
        let mut by_byte: Vec<ByByte> = vec![(Vec::new(), Vec::new()); 256];
        let mut words: Vec<(Vec<u8>, Vec<Entry>)> = Vec::new();
        for (l, at, p) in &literals {
            let e = Entry::new(l.clone(), *at, *p);
            if l[*at].is_ascii_alphanumeric() {
                let stem = l[*at..(*at + 4).min(l.len())].to_vec();
                match words.iter_mut().find(|(s, _)| *s == stem) {
                    Some((_, v)) => v.push(e),
                    None => words.push((stem, vec![e])),
                }
            } else {
                let b = l[*at];
                if !bytes.contains(&b) {
                    bytes.push(b);
                }
                let (short, long) = &mut by_byte[b as usize];
                match l.get(*at + 1..*at + 4) {
                    Some(next) => {
                        let key = u32::from_le_bytes([next[0], next[1], next[2], 0]);
                        if !long.iter().any(|(_, x)| *x == e) {
                            long.push((key, e));
                        }
                    }
                    None => {
                        if !short.contains(&e) {
                            short.push(e);
                        }
                    }
                }
            }
        }
        for (_, long) in &mut by_byte {
            long.sort_by_key(|(key, _)| *key);
        }
        if bytes.len() <= BYTES && words.len() <= WORDS {
            let words = words
                .into_iter()
                .map(|(stem, v)| (memchr::memmem::Finder::new(&stem).into_owned(), v))
                .collect();
            let owners = by_byte
                .iter()
                .map(|(short, long)| {
                    let mut o: SmallVec<[u32; 4]> = short
                        .iter()
                        .chain(long.iter().map(|(_, e)| e))
                        .map(|e| e.pattern)
                        .collect();
                    o.sort_unstable();
                    o.dedup();
                    o
                })
                .collect();
            return Some(Self::Memchr {
                bytes,
                by_byte,
                owners,
                words,
            });
        }
        let mut unique: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<(Vec<u8>, usize, u32)>> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for (l, at, p) in literals {
            let k = *index.entry(l.clone()).or_insert_with(|| {
                unique.push(l.clone());
                owners.push(Vec::new());
                owners.len() - 1
            });
            owners[k].push((l, at, p));
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&unique)
            .ok()?;
        Some(Self::Automaton(ac, owners))
    }

    fn empty() -> Self {
        Self::Memchr {
            owners: Vec::new(),
            bytes: Vec::new(),
            by_byte: Vec::new(),
            words: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Memchr { by_byte, words, .. } => {
                by_byte
                    .iter()
                    .map(|(s, l)| s.len() + l.len())
                    .sum::<usize>()
                    + words.iter().map(|(_, v)| v.len()).sum::<usize>()
            }
            Self::Automaton(_, owners) => owners.iter().map(Vec::len).sum(),
        }
    }

    /// Calls `f(pattern, start)` for each literal found in `hay` of a pattern it
    /// still `want`s.
    fn search(&self, hay: &[u8], want: impl Fn(u32) -> bool, mut f: impl FnMut(u32, usize)) {
        match self {
            Self::Memchr {
                bytes,
                by_byte,
                owners,
                words,
            } => {
                let mut at = |r: usize| {
                    if !owners[hay[r] as usize].iter().any(|&p| want(p)) {
                        return;
                    }
                    let (short, long) = &by_byte[hay[r] as usize];
                    for e in short {
                        e.check(hay, r, &want, &mut f);
                    }
                    if let Some(next) = hay.get(r + 1..r + 4) {
                        let key = u32::from_le_bytes([next[0], next[1], next[2], 0]);
                        let from = long.partition_point(|(k, _)| *k < key);
                        for (k, e) in &long[from..] {
                            if *k != key {
                                break;
                            }
                            e.check(hay, r, &want, &mut f);
                        }
                    }
                };
                for group in bytes.chunks(3) {
                    match *group {
                        [a] => memchr::memchr_iter(a, hay).for_each(&mut at),
                        [a, b] => memchr::memchr2_iter(a, b, hay).for_each(&mut at),
                        [a, b, c] => memchr::memchr3_iter(a, b, c, hay).for_each(&mut at),
                        _ => {}
                    }
                }
                for (finder, entries) in words {
                    for r in finder.find_iter(hay) {
                        for e in entries {
                            e.check(hay, r, &want, &mut f);
                        }
                    }
                }
            }
            Self::Automaton(ac, owners) => {
                // The automaton holds whole literals: a match starts where one does.
                for m in ac.find_overlapping_iter(hay) {
                    for &(_, _, p) in &owners[m.pattern().as_usize()] {
                        if want(p) {
                            f(p, m.start());
                        }
                    }
                }
            }
        }
    }
}

/// Literals looked up by the word they start with: a table of buckets by the
/// word's first bytes, each holding the first eight bytes of the literals a word
/// with those bytes can start (compared as one word of memory).
#[derive(Clone)]
struct WordIndex {
    /// Bucket `b` holds `entries[offsets[b]..offsets[b + 1]]`.
    offsets: Vec<u32>,
    /// (first bytes, their mask, pattern) of the literals shorter than eight bytes.
    entries: Vec<(u64, u64, u32)>,
    /// The literals of eight bytes or more by their first eight: an open-addressed
    /// table of (those bytes, index into `patterns`), a power of two long.
    long: Vec<(u64, u32)>,
    /// The patterns each entry of `long` begins.
    patterns: Vec<Vec<u32>>,
    /// A bit per bucket that any literal (short or long) starts in: most words
    /// start none and cost one bit test.
    used: Vec<u64>,
    /// A bit per bucket that a literal of eight bytes or more starts in (the
    /// others skip the table of long literals).
    long_used: Vec<u64>,
    /// A bit per [`long_bit`] of each literal of eight bytes or more: most words
    /// whose bucket has one are told apart without a probe of `long` (64 KB
    /// for the built-in families, where this is 8 KB).
    long_bits: Vec<u64>,
    /// Per bucket, how many of its literals (in `entries`) are shorter than four
    /// bytes (saturated: at [`u8::MAX`] every literal is compared). They come
    /// first; the others follow by their first four bytes, and past [`FOURS`]
    /// of them only those that begin with a word's first four are compared
    /// (the phone formats put 200 literals in the bucket of "03").
    shorts: Vec<u8>,
    /// Literals that are the first two bytes of a word that may go on, by those
    /// bytes (sorted by them), and a bit per two bytes that start one.
    starts: Vec<(u16, (u64, u64, u32))>,
    starts_used: Vec<u64>,
    /// Per word of `starts_used`, the bits set in the words before it; and per
    /// two bytes that start a literal (in order), where its literals begin in
    /// `starts` (one more at the end): a word's literals found by counting bits,
    /// without a search.
    starts_rank: Vec<u32>,
    starts_from: Vec<u32>,
    /// Patterns whose matches are whole words ([`Prefix::Whole`]): a bit per
    /// first byte, the least and most bytes, the pattern.
    whole: Vec<([u64; 4], usize, usize, u32)>,
    /// A bit per first two bytes of a word (the first byte and zero for a word of
    /// one byte) that any literal can start with: most words of a text start
    /// none and cost one bit test.
    heads: Vec<u64>,
    /// Rectangles of (first byte, second byte) that hold every head (the second
    /// byte of a word of one byte is any), when [`COVER`] or fewer do: a text is
    /// then looked at 64 bytes at a time for a word that starts in one, by
    /// comparisons the compiler makes vector instructions of, and its words are
    /// found only in the stretches that have one.
    cover: Option<Cover>,
    /// (bucket, entry) while building.
    pending: Vec<(usize, (u64, u64, u32))>,
}

impl WordIndex {
    fn new() -> Self {
        Self {
            offsets: Vec::new(),
            entries: Vec::new(),
            long: Vec::new(),
            patterns: Vec::new(),
            used: Vec::new(),
            long_used: Vec::new(),
            long_bits: Vec::new(),
            shorts: Vec::new(),
            starts: Vec::new(),
            whole: Vec::new(),
            starts_used: vec![0; (1 << 16) / 64],
            starts_rank: Vec::new(),
            starts_from: Vec::new(),
            heads: vec![0; (1 << 16) / 64],
            cover: None,
            pending: Vec::new(),
        }
    }

    /// Adds a literal of two bytes or more that starts with an ASCII letter or digit.
    fn add(&mut self, literal: &[u8], pattern: u32) {
        let w = literal
            .iter()
            .position(|b| !b.is_ascii_alphanumeric())
            .unwrap_or(literal.len());
        let stem = &literal[..literal.len().min(8)];
        let mask = if stem.len() == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * stem.len())) - 1
        };
        let entry = (load(stem, 0), mask, pattern);
        let k = usize::from(u16::from_le_bytes([
            literal[0],
            if w > 1 { literal[1] } else { 0 },
        ]));
        self.heads[k / 64] |= 1 << (k % 64);
        if w == literal.len() && w < HEAD {
            // The literal is the start of a short word, which may go on: looked up
            // by the word's first two bytes.
            let k = usize::from(u16::from_le_bytes([literal[0], literal[1]]));
            self.starts_used[k / 64] |= 1 << (k % 64);
            self.starts.push((k as u16, entry));
            return;
        }
        // The text's word is this literal's word, or starts with its first bytes.
        let head = &literal[..w.min(HEAD)];
        self.pending
            .push((bucket(load(head, 0), head.len()), entry));
    }

    /// Adds a pattern whose matches are whole words of `min..=max` bytes (two or
    /// more) that start with one of `first` (ASCII letters and digits).
    fn add_whole(&mut self, first: &[u8], min: usize, max: usize, pattern: u32) {
        let mut set = [0u64; 4];
        for &b in first {
            set[usize::from(b / 64)] |= 1 << (b % 64);
            // Any second byte: the word's length, not its bytes, is the test.
            for y in 0..=255u8 {
                let k = usize::from(u16::from_le_bytes([b, y]));
                self.heads[k / 64] |= 1 << (k % 64);
            }
        }
        self.whole.push((set, min, max, pattern));
    }

    fn seal(&mut self) {
        self.cover = self.cover();
        let pending = std::mem::take(&mut self.pending);
        // In the order they were added, for each two bytes.
        self.starts.sort_by_key(|(k, _)| *k);
        let mut before = 0u32;
        self.starts_rank = self
            .starts_used
            .iter()
            .map(|w| {
                let r = before;
                before += w.count_ones();
                r
            })
            .collect();
        self.starts_from = Vec::with_capacity(before as usize + 1);
        for (i, (k, _)) in self.starts.iter().enumerate() {
            if i == 0 || self.starts[i - 1].0 != *k {
                self.starts_from.push(i as u32);
            }
        }
        self.starts_from.push(self.starts.len() as u32);
        self.used = vec![0; (1 << BUCKET_BITS) / 64];
        self.long_used = vec![0; (1 << BUCKET_BITS) / 64];
        for &(b, (_, mask, _)) in &pending {
            self.used[b / 64] |= 1 << (b % 64);
            if mask == u64::MAX {
                self.long_used[b / 64] |= 1 << (b % 64);
            }
        }
        // Literals of eight bytes or more: by those bytes, in one table.
        let mut long: Vec<(u64, u32)> = pending
            .iter()
            .filter(|(_, (_, mask, _))| *mask == u64::MAX)
            .map(|&(_, (stem, _, p))| (stem, p))
            .collect();
        long.sort_unstable();
        long.dedup();
        self.long_bits = vec![0; (1 << LONG_BITS) / 64];
        for &(stem, _) in &long {
            let k = long_bit(stem);
            self.long_bits[k / 64] |= 1 << (k % 64);
        }
        let size = (long.len() * 2).next_power_of_two().max(2);
        self.long = vec![(0, u32::MAX); size];
        self.patterns = Vec::new();
        for (stem, p) in long {
            let mut i = slot(stem, size);
            loop {
                let (s, k) = self.long[i];
                if k == u32::MAX {
                    self.long[i] = (stem, self.patterns.len() as u32);
                    self.patterns.push(vec![p]);
                    break;
                }
                if s == stem {
                    self.patterns[k as usize].push(p);
                    break;
                }
                i = (i + 1) & (size - 1);
            }
        }
        // The shorter ones by bucket.
        let mut short: Vec<(usize, (u64, u64, u32))> = pending
            .into_iter()
            .filter(|(_, (_, mask, _))| *mask != u64::MAX)
            .collect();
        // Per bucket, the literals of fewer than four bytes first, then the
        // others by their first four bytes.
        let four = |mask: u64| mask & 0xffff_ffff == 0xffff_ffff;
        short.sort_unstable_by_key(|&(b, e)| (b, four(e.1), e.0 as u32, e));
        short.dedup();
        self.shorts = vec![0; 1 << BUCKET_BITS];
        for &(b, (_, mask, _)) in &short {
            if !four(mask) {
                self.shorts[b] = self.shorts[b].saturating_add(1);
            }
        }
        self.offsets = vec![0; (1 << BUCKET_BITS) + 1];
        for &(b, _) in &short {
            self.offsets[b + 1] += 1;
        }
        for b in 0..1 << BUCKET_BITS {
            self.offsets[b + 1] += self.offsets[b];
        }
        self.entries = short.iter().map(|&(_, e)| e).collect();
    }

    /// Rectangles that cover the heads (see [`WordIndex::cover`]).
    fn cover(&self) -> Option<Cover> {
        let head = |k: usize| self.heads[k / 64] >> (k % 64) & 1 == 1;
        // Per first byte, its second bytes as ranges (a word of one byte: any).
        let seconds = |b: usize| -> Ranges {
            if head(b) {
                return vec![(0, 255)];
            }
            let mut r = Ranges::new();
            for y in 1..=255u8 {
                if head(b | usize::from(y) << 8) {
                    match r.last_mut() {
                        Some((_, hi)) if usize::from(*hi) + 1 == usize::from(y) => *hi = y,
                        _ => r.push((y, y)),
                    }
                }
            }
            r
        };
        // First bytes in a row with the same second bytes share rectangles.
        let mut rects: Vec<(u8, u8, Ranges)> = Vec::new();
        for b in 0..=255u8 {
            let r = seconds(usize::from(b));
            if r.is_empty() {
                continue;
            }
            match rects.last_mut() {
                Some((_, hi, s)) if usize::from(*hi) + 1 == usize::from(b) && *s == r => *hi = b,
                _ => rects.push((b, b, r)),
            }
        }
        let flat: Vec<Rect> = rects
            .iter()
            .flat_map(|(lo, hi, r)| r.iter().map(|&(l2, h2)| [*lo, *hi - *lo, l2, h2 - l2]))
            .collect();
        Cover::new(&flat)
    }

    fn len(&self) -> usize {
        self.entries.len()
            + self.patterns.iter().map(Vec::len).sum::<usize>()
            + self.starts.len()
            + self.whole.len()
    }

    /// Calls `f(pattern, start)` for each word of `hay` (a run of ASCII letters and
    /// digits) that starts with the first eight bytes of a literal of a pattern it
    /// still `want`s.
    /// Every word is also given to `word(start, end)`, in order (another reader of
    /// the same words, fed from this pass).
    fn search(
        &self,
        hay: &[u8],
        want: impl Fn(u32) -> bool,
        mut f: impl FnMut(u32, usize),
        mut word: Option<&mut dyn FnMut(usize, usize)>,
    ) {
        if self.entries.is_empty()
            && self.patterns.is_empty()
            && self.starts.is_empty()
            && self.whole.is_empty()
        {
            if let Some(word) = word {
                ascii_words(hay, word);
            }
            return;
        }
        if let (None, Some(cover)) = (&word, &self.cover) {
            // No reader of every word: only the words that start in a stretch
            // with a byte pair in the cover.
            let start = |i: usize| {
                let w = if i == 0 { b' ' } else { hay[i - 1] };
                let y = hay.get(i + 1).copied().unwrap_or(b' ');
                !w.is_ascii_alphanumeric() && cover.covers(hay[i], y)
            };
            let mut look = |i: usize| {
                let bits = load(hay, i);
                let two = hay.get(i + 1).is_some_and(u8::is_ascii_alphanumeric);
                let k = (bits & if two { 0xffff } else { 0xff }) as usize;
                if self.heads[k / 64] & (1 << (k % 64)) != 0 {
                    self.lookup(bits, i, word_end(hay, i), &want, &mut f);
                }
            };
            for (c, block) in (0..hay.len()).step_by(64).zip(hay.chunks(64)) {
                // A whole block with a byte on each side: compared at once.
                let whole = c.checked_sub(1).and_then(|b| {
                    Some((
                        <&[u8; 64]>::try_from(hay.get(b..b + 64)?).ok()?,
                        <&[u8; 64]>::try_from(block).ok()?,
                        <&[u8; 64]>::try_from(hay.get(c + 1..c + 65)?).ok()?,
                    ))
                });
                match whole {
                    Some((p, x, y)) => {
                        let mut m = cover.starts(p, x, y);
                        while m != 0 {
                            look(c + m.trailing_zeros() as usize);
                            m &= m - 1;
                        }
                    }
                    None => (c..c + block.len())
                        .filter(|&i| start(i))
                        .for_each(&mut look),
                }
            }
            return;
        }
        ascii_words(hay, |s, e| {
            if let Some(word) = word.as_mut() {
                word(s, e);
            }
            let bits = load(hay, s);
            let k = (bits & if e - s >= 2 { 0xffff } else { 0xff }) as usize;
            if self.heads[k / 64] & (1 << (k % 64)) != 0 {
                self.lookup(bits, s, e, &want, &mut f);
            }
        });
    }

    /// The literals a word `hay[s..e]` whose first eight bytes are `bits` starts
    /// (past the filter of its first two bytes: out of line, so that the loop over
    /// the words stays small).
    #[inline(never)]
    fn lookup(
        &self,
        bits: u64,
        s: usize,
        e: usize,
        want: &impl Fn(u32) -> bool,
        f: &mut impl FnMut(u32, usize),
    ) {
        let first = (bits & 0xff) as u8;
        for &(set, min, max, pattern) in &self.whole {
            if (min..=max).contains(&(e - s))
                && set[usize::from(first / 64)] >> (first % 64) & 1 == 1
                && want(pattern)
            {
                f(pattern, s);
            }
        }
        if e - s >= 2 {
            let k = (bits & 0xffff) as usize;
            let (used, bit) = (self.starts_used[k / 64], 1u64 << (k % 64));
            if used & bit != 0 {
                let r =
                    self.starts_rank[k / 64] as usize + (used & (bit - 1)).count_ones() as usize;
                let (from, to) = (
                    self.starts_from[r] as usize,
                    self.starts_from[r + 1] as usize,
                );
                for &(_, (stem, mask, pattern)) in &self.starts[from..to] {
                    if bits & mask == stem && want(pattern) {
                        f(pattern, s);
                    }
                }
            }
        }
        let b = bucket(bits, e - s);
        if self.used[b / 64] & (1 << (b % 64)) == 0 {
            return;
        }
        let (from, to) = (self.offsets[b] as usize, self.offsets[b + 1] as usize);
        let entries = &self.entries[from..to];
        let shorts = usize::from(self.shorts[b]);
        // Past the literals of fewer than four bytes, those that begin with
        // the word's first four, found by halves among many.
        let four = bits as u32;
        let fours = match entries.get(shorts..) {
            Some(rest) if rest.len() > FOURS && shorts < usize::from(u8::MAX) => {
                let lo = rest.partition_point(|e| (e.0 as u32) < four);
                let n = rest[lo..].partition_point(|e| e.0 as u32 == four);
                &rest[lo..lo + n]
            }
            _ => &entries[shorts.min(entries.len())..],
        };
        let mut last = u32::MAX;
        for part in [&entries[..shorts.min(entries.len())], fours] {
            for &(stem, mask, pattern) in part {
                if bits & mask == stem && pattern != last && want(pattern) {
                    f(pattern, s);
                    last = pattern;
                }
            }
        }
        let k = long_bit(bits);
        if self.long_used[b / 64] & (1 << (b % 64)) == 0
            || self.long_bits[k / 64] & (1 << (k % 64)) == 0
        {
            return;
        }
        let size = self.long.len();
        let mut i = slot(bits, size);
        while let Some(&(stem, k)) = self.long.get(i).filter(|(_, k)| *k != u32::MAX) {
            if stem == bits {
                for &p in &self.patterns[k as usize] {
                    if want(p) {
                        f(p, s);
                    }
                }
                break;
            }
            i = (i + 1) & (size - 1);
        }
    }
}

/// More literals of four bytes or more than this in a bucket are searched by
/// halves (see [`WordIndex::shorts`]).
const FOURS: usize = 32;

/// Bits of [`WordIndex::long_bits`]' index.
const LONG_BITS: u32 = 16;

/// The bit of eight bytes in [`WordIndex::long_bits`].
#[inline]
fn long_bit(key: u64) -> usize {
    (key.wrapping_mul(0xd6e8_feb8_6659_fd93) >> (64 - LONG_BITS)) as usize
}

/// The slot of eight bytes in an open-addressed table of `size` (a power of two).
fn slot(key: u64, size: usize) -> usize {
    ((key ^ (key >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & (size - 1)
}

/// Calls `f(start, end)` for each run of ASCII letters and digits in `hay`, in
/// order. Read 64 bytes at a time: a bit per byte that is a letter or digit
/// ([`swar::mask`](super::swar::mask)), and the words' starts and ends where the bits change
/// (one loop over a block's changes, whose length the processor mispredicts
/// once a block rather than once every eight bytes).
fn ascii_words(hay: &[u8], mut f: impl FnMut(usize, usize)) {
    let mut start = 0;
    // Whether the byte before the block is in a word.
    let mut carry = 0u64;
    for at in (0..hay.len()).step_by(64) {
        let n = (hay.len() - at).min(64);
        let m = super::swar::mask(&hay[at..at + n], |c| c.is_ascii_alphanumeric());
        // Bytes where a word starts or ends: differ from the byte before. Starts
        // and ends alternate, a start first.
        let mut changes = m ^ ((m << 1) | carry);
        while changes != 0 {
            let p = at + changes.trailing_zeros() as usize;
            changes &= changes - 1;
            if (m >> (p - at)) & 1 == 1 {
                start = p;
            } else {
                f(start, p);
            }
        }
        carry = m >> 63;
    }
    if carry == 1 {
        f(start, hay.len());
    }
}

/// How many rectangles [`WordIndex::cover`] holds at most.
const COVER: usize = 8;

/// Ranges of bytes, from and to (both included).
type Ranges = Vec<(u8, u8)>;

/// A rectangle of byte pairs: the first byte from `r[0]` to `r[0] + r[1]`, the
/// second from `r[2]` to `r[2] + r[3]`.
type Rect = [u8; 4];

/// Rectangles of byte pairs, as many as there are (a type each: the compiler
/// then compares a block with each of them and no more).
#[derive(Clone, Debug)]
enum Cover {
    One([Rect; 1]),
    Two([Rect; 2]),
    Three([Rect; 3]),
    Four([Rect; 4]),
    Five([Rect; 5]),
    Six([Rect; 6]),
    Seven([Rect; 7]),
    Eight([Rect; 8]),
}

impl Cover {
    /// The cover of `rects`: none when there are more than [`COVER`].
    fn new(rects: &[Rect]) -> Option<Self> {
        if rects.len() > COVER {
            return None;
        }
        Some(match rects.len() {
            1 => Self::One(rects.try_into().ok()?),
            2 => Self::Two(rects.try_into().ok()?),
            3 => Self::Three(rects.try_into().ok()?),
            4 => Self::Four(rects.try_into().ok()?),
            5 => Self::Five(rects.try_into().ok()?),
            6 => Self::Six(rects.try_into().ok()?),
            7 => Self::Seven(rects.try_into().ok()?),
            8 => Self::Eight(rects.try_into().ok()?),
            _ => return None,
        })
    }

    /// Whether the byte pair (`x`, `y`) is in a rectangle.
    fn covers(&self, x: u8, y: u8) -> bool {
        match self {
            Self::One(r) => covered(r, x, y),
            Self::Two(r) => covered(r, x, y),
            Self::Three(r) => covered(r, x, y),
            Self::Four(r) => covered(r, x, y),
            Self::Five(r) => covered(r, x, y),
            Self::Six(r) => covered(r, x, y),
            Self::Seven(r) => covered(r, x, y),
            Self::Eight(r) => covered(r, x, y),
        }
    }

    /// A bit for each byte of `x` where a word starts with its pair in a
    /// rectangle: `p` is the bytes before each of `x`'s, `y` those after.
    fn starts(&self, p: &[u8; 64], x: &[u8; 64], y: &[u8; 64]) -> u64 {
        match self {
            Self::One(r) => starts(r, p, x, y),
            Self::Two(r) => starts(r, p, x, y),
            Self::Three(r) => starts(r, p, x, y),
            Self::Four(r) => starts(r, p, x, y),
            Self::Five(r) => starts(r, p, x, y),
            Self::Six(r) => starts(r, p, x, y),
            Self::Seven(r) => starts(r, p, x, y),
            Self::Eight(r) => starts(r, p, x, y),
        }
    }
}

/// Whether the byte pair (`x`, `y`) is in a rectangle of `rects`.
#[inline(always)]
fn covered<const N: usize>(rects: &[Rect; N], x: u8, y: u8) -> bool {
    rects.iter().fold(false, |any, r| {
        any | ((x.wrapping_sub(r[0]) <= r[1]) & (y.wrapping_sub(r[2]) <= r[3]))
    })
}

/// [`Cover::starts`] for `N` rectangles, without a branch per byte: the
/// compiler compares the bytes 16 or 32 at a time, and the flags are gathered
/// into bits eight at a time. (A loop over an array, not `std::array::from_fn`:
/// the compiler once kept `from_fn`'s closure out of line here, a call per
/// byte, which made the whole scan half again as slow.)
#[allow(clippy::needless_range_loop)] // the same index into four arrays
fn starts<const N: usize>(rects: &[Rect; N], p: &[u8; 64], x: &[u8; 64], y: &[u8; 64]) -> u64 {
    let mut flags = [0u8; 64];
    for i in 0..64 {
        flags[i] = u8::from(!p[i].is_ascii_alphanumeric() & covered(rects, x[i], y[i]));
    }
    flags.chunks_exact(8).enumerate().fold(0, |m, (k, c)| {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Bytes of 0 or 1: the low bit of each into the top byte, first lowest.
        m | (v.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k)
    })
}

/// Where the run of ASCII letters and digits of `hay` that starts at `start`
/// ends, eight bytes at a time.
fn word_end(hay: &[u8], start: usize) -> usize {
    let mut e = start;
    loop {
        // Past the end the bytes read are zero: not letters or digits.
        let k = run(alnum(load(hay, e)));
        e += k;
        if k < 8 {
            return e.min(hay.len());
        }
    }
}

/// How a pattern's matches are found (see [`analyze`]).
struct Analysis {
    /// The literals every match of the prefix branches starts with.
    prefixes: Vec<Prefix>,
    /// For each other branch: what its matches contain. When no branch's gate
    /// is open in a text, those branches cannot match in it.
    gates: Vec<Gate>,
    /// Line branches: branches without prefixes whose matches start a line
    /// (`(?m)^`) and hold no line break, with a gate that has literals (the
    /// index of that part in the gate). Every match starts the line of one of
    /// those literals' occurrences.
    lines: Vec<(Gate, usize)>,
}

/// More two-byte word starts of lowercase letters than this are too weak a prefix
/// (see [`analyze`]).
const WEAK: usize = 16;

/// At most this many literals per part of a gate (a `memmem` pass each).
const GATES: usize = 16;

/// The literals every match of `h` starts with, when they are a finite set.
fn prefix_literals(h: &Hir) -> Option<Vec<Vec<u8>>> {
    let seq = Extractor::new()
        .kind(ExtractKind::Prefix)
        .limit_class(32)
        .limit_total(2048)
        .extract(h);
    let lits = seq.literals()?;
    (!lits.is_empty()).then(|| lits.iter().map(|l| l.as_bytes().to_vec()).collect())
}

/// What every match of a branch contains: up to [`PARTS`] parts every match goes
/// through, each as many times as it needs it. A text that lacks one part (or has
/// it fewer times) has no match.
type Gate = Vec<Need>;

/// A part, and how many times (at least) every match holds it, without overlaps
/// (a repetition `{5,}` of what has it once: five).
#[derive(Clone, Debug, PartialEq)]
struct Need {
    part: Part,
    times: usize,
}

impl Need {
    fn once(part: Part) -> Self {
        Self { part, times: 1 }
    }
}

/// A gate counts a part up to this many times.
const TIMES: usize = 64;

/// A branch searched by its punctuation prefix is gated instead when its gate
/// needs literals this many times (see [`analyze`]).
const REPEATED: usize = 4;

/// One required part of a match.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    /// It starts with one of these literals (past any leading whitespace).
    Literals(Vec<Vec<u8>>),
    /// It is one character of a class: these ASCII bytes (at most [`GATES`]), and
    /// those outside ASCII (`\d` has many).
    Class(Vec<u8>, Beyond),
}

impl Part {
    /// How rare the part looks: its shortest literal's length (a class, 1).
    fn strength(&self) -> usize {
        match self {
            Self::Literals(l) => l.iter().map(Vec::len).min().unwrap_or(0),
            Self::Class(..) => 1,
        }
    }
}

/// At most this many parts per gate (the rarest-looking first: the longest
/// shortest literal).
const PARTS: usize = 3;

/// `h` as a gate's part: its prefix literals (past any leading whitespace, none a
/// single letter, digit, space or tab, at most [`GATES`]), or the class it is.
fn gate_part(h: &Hir) -> Option<Part> {
    let Some(lits) = prefix_literals(h) else {
        return class_part(h);
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for l in lits {
        // Past leading whitespace, unless it is all whitespace (a line break is
        // worth looking for; a space or a tab is everywhere).
        let at = leading_space(&l);
        let l = if at < l.len() { l[at..].to_vec() } else { l };
        if matches!(l.as_slice(), [] | [b' '] | [b'\t'])
            || l.len() == 1 && l[0].is_ascii_alphanumeric()
        {
            return class_part(h);
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    if out.len() <= GATES {
        Some(Part::Literals(out))
    } else {
        class_part(h)
    }
}

/// `h` as a class part, when it is a class of at most [`GATES`] ASCII bytes (and
/// any number of other characters) without a space or a tab.
fn class_part(h: &Hir) -> Option<Part> {
    let (ascii, beyond): (Vec<u8>, Beyond) = match h.kind() {
        HirKind::Class(regex_syntax::hir::Class::Unicode(c)) => {
            let beyond: Vec<(char, char)> = c
                .ranges()
                .iter()
                .filter(|r| !r.end().is_ascii())
                .map(|r| (r.start().max('\u{80}'), r.end()))
                .collect();
            (
                c.ranges()
                    .iter()
                    .flat_map(|r| u32::from(r.start())..=u32::from(r.end()).min(127))
                    .map(|c| c as u8)
                    .collect(),
                if beyond.is_empty() {
                    Beyond::None
                } else {
                    Beyond::Chars(beyond)
                },
            )
        }
        HirKind::Class(regex_syntax::hir::Class::Bytes(c)) => (
            c.ranges()
                .iter()
                .flat_map(|r| r.start()..=r.end().min(127))
                .collect(),
            if c.ranges().iter().any(|r| r.end() > 127) {
                Beyond::Bytes
            } else {
                Beyond::None
            },
        ),
        _ => return None,
    };
    (!ascii.contains(&b' ') && !ascii.contains(&b'\t') && ascii.len() <= GATES)
        .then_some(Part::Class(ascii, beyond))
}

/// The gate of `h` (see [`Gate`]), when it has one.
fn required(h: &Hir) -> Option<Gate> {
    if h.properties().minimum_len().is_none_or(|m| m == 0) {
        return None;
    }
    match h.kind() {
        HirKind::Capture(c) => required(&c.sub),
        // Each of the `min` repetitions holds what one does, apart from the others.
        HirKind::Repetition(r) if r.min >= 1 => {
            let mut gate = required(&r.sub)?;
            let min = usize::try_from(r.min).unwrap_or(TIMES);
            for need in &mut gate {
                need.times = need.times.saturating_mul(min).min(TIMES);
            }
            Some(gate)
        }
        HirKind::Concat(parts) => {
            // The same part in two places of a concatenation: the times add up
            // (their matches do not overlap).
            let mut gate: Gate = Vec::new();
            for need in parts.iter().filter_map(required).flatten() {
                match gate.iter_mut().find(|n| n.part == need.part) {
                    Some(n) => n.times = (n.times + need.times).min(TIMES),
                    None => gate.push(need),
                }
            }
            gate.sort_by_key(|n| {
                (
                    std::cmp::Reverse(n.part.strength()),
                    std::cmp::Reverse(n.times),
                )
            });
            gate.truncate(PARTS);
            (!gate.is_empty()).then_some(gate)
        }
        HirKind::Alternation(bs) => {
            if let Some(part) = gate_part(h) {
                return Some(vec![Need::once(part)]);
            }
            // Each branch's first literal part, together: a match goes through one
            // of them, as many times as the branch that needs it least.
            let mut part: Vec<Vec<u8>> = Vec::new();
            let mut times = TIMES;
            for b in bs {
                let first = required(b)?.swap_remove(0);
                let Part::Literals(lits) = first.part else {
                    return None;
                };
                times = times.min(first.times);
                for l in lits {
                    if !part.contains(&l) {
                        part.push(l);
                    }
                }
            }
            (part.len() <= GATES).then(|| {
                vec![Need {
                    part: Part::Literals(part),
                    times,
                }]
            })
        }
        _ => gate_part(h).map(|part| vec![Need::once(part)]),
    }
}

/// `h` as branches when it is a concatenation whose first part past any
/// look-around is a choice (`\b(?:a|b)c`: `\bac`, `\bbc`); otherwise `h`.
fn split_first_choice(h: &Hir) -> Vec<Hir> {
    let HirKind::Concat(parts) = h.kind() else {
        return vec![h.clone()];
    };
    let Some(k) = parts
        .iter()
        .position(|h| !matches!(h.kind(), HirKind::Look(_)))
    else {
        return vec![h.clone()];
    };
    let HirKind::Alternation(bs) = parts[k].kind() else {
        return vec![h.clone()];
    };
    bs.iter()
        .map(|b| {
            let mut v = parts[..k].to_vec();
            v.push(b.clone());
            v.extend_from_slice(&parts[k + 1..]);
            Hir::concat(v)
        })
        .collect()
}

/// `pattern`'s syntax (nested as deep as the anchored regexes may be).
fn parse(pattern: &str) -> Option<Hir> {
    regex_syntax::ParserBuilder::new()
        .nest_limit(64)
        .build()
        .parse(pattern)
        .ok()
}

/// How `pattern`'s matches can be found, branch by branch (top-level branches):
/// by their literal prefixes, when every match of the branch starts with one of
/// a finite set and none of those searched for (rather than looked up by word) is
/// frequent in ordinary text (only whitespace, or a single letter or digit after
/// it); otherwise by literals the branch's matches contain (gates). `None` when a
/// branch has neither: the pattern is searched in full.
fn analyze(pattern: &str) -> Option<Analysis> {
    let hir = parse(pattern)?;
    // Top-level branches, with what they share written out (the parser factors a
    // common `\b` out of `\ba|\bb`), and a branch that starts with a choice split
    // by it (`(?:\(\d{3}\)|\b\d{3}-)\d{4}` is two branches, each with prefixes
    // of its own).
    let branches: Vec<Hir> = match hir.kind() {
        HirKind::Alternation(bs) => bs.iter().flat_map(split_first_choice).collect(),
        _ => split_first_choice(&hir),
    };
    let mut out = Vec::new();
    let mut gates: Vec<Gate> = Vec::new();
    let mut lines: Vec<(Gate, usize)> = Vec::new();
    'branch: for branch in &branches {
        let lits = prefix_literals(branch);
        let need = required(branch);
        // At a word boundary, a match that starts with a letter or digit starts a
        // word.
        let boundary = branch.properties().look_set_prefix();
        let at_word = [
            Look::WordAscii,
            Look::WordUnicode,
            Look::WordStartAscii,
            Look::WordStartUnicode,
            Look::WordStartHalfAscii,
            Look::WordStartHalfUnicode,
        ]
        .into_iter()
        .any(|l| boundary.contains(l));
        let frequent = |l: &[u8]| {
            // Searched for by the byte after any leading whitespace: none (all
            // whitespace), or a single letter or digit, is everywhere.
            let at = leading_space(l);
            l.len() == at || l.len() == at + 1 && l[at].is_ascii_alphanumeric()
        };
        // Two-byte starts from a class of lowercase letters (`[0-9a-f]{32}` starts
        // with any of 256, 36 of them such as "de" or "ca") start a good share of
        // the words of any text: what the branch requires is a better test, when
        // it has one.
        let weak = |lits: &[Vec<u8>]| {
            lits.iter().all(|l| l.len() <= 2)
                && lits
                    .iter()
                    .filter(|l| l.iter().all(u8::is_ascii_lowercase))
                    .count()
                    > WEAK
        };
        if let Some(lits) = lits.filter(|l| !weak(l) || need.is_none()) {
            let by_word = at_word
                && lits
                    .iter()
                    .all(|l| l.len() >= 2 && l[0].is_ascii_alphanumeric());
            if by_word {
                out.extend(lits.into_iter().map(Prefix::Word));
                continue 'branch;
            }
            // A branch that repeats what it holds (five list items, each with a
            // parenthesis and a line break) is rarer than the byte it starts with:
            // its gate, when it has one that counts literals REPEATED times or more
            // (a class such as the digits of a phone number is not rarer).
            let repeats = need.as_ref().is_some_and(|g| {
                g.iter()
                    .any(|n| n.times >= REPEATED && matches!(n.part, Part::Literals(_)))
            });
            if !lits.iter().any(|l| frequent(l)) && !repeats {
                out.extend(lits.into_iter().map(|l| {
                    let at = leading_space(&l);
                    Prefix::Searched(l, at)
                }));
                continue 'branch;
            }
        }
        if let Some(whole) = whole_word(branch) {
            out.push(whole);
            continue 'branch;
        }
        let gate = need?;
        let starts_line = branch
            .properties()
            .look_set_prefix()
            .contains(Look::StartLF);
        let locate = gate
            .iter()
            .position(|n| matches!(n.part, Part::Literals(_)))
            .filter(|_| starts_line && one_line(branch));
        match locate {
            Some(k) => {
                if !lines.iter().any(|(g, _)| *g == gate) {
                    lines.push((gate, k));
                }
            }
            None => {
                if !gates.contains(&gate) {
                    gates.push(gate);
                }
            }
        }
    }
    Some(Analysis {
        prefixes: out,
        gates,
        lines,
    })
}

/// A word this long or longer is rare enough to be a candidate by its length.
const WHOLE: usize = 8;

/// [`Prefix::Whole`] for branch `h`, when it is a word boundary, then only
/// ASCII letters and digits, at least [`WHOLE`] of them, then a word boundary:
/// then a match starts where a run of ASCII letters and digits starts (the byte
/// before it is no word character) and ends where the run ends (the byte after it
/// is none either), so it is such a run, as long as a match is.
fn whole_word(h: &Hir) -> Option<Prefix> {
    let HirKind::Concat(parts) = h.kind() else {
        return None;
    };
    let boundary = |h: &Hir| matches!(h.kind(), HirKind::Look(Look::WordAscii | Look::WordUnicode));
    let (first, last) = (parts.first()?, parts.last()?);
    if parts.len() < 3 || !boundary(first) || !boundary(last) {
        return None;
    }
    let body = &parts[1..parts.len() - 1];
    // Every byte any part of the body can match.
    fn bytes(h: &Hir) -> Option<Vec<u8>> {
        match h.kind() {
            HirKind::Literal(l) => Some(l.0.to_vec()),
            HirKind::Class(regex_syntax::hir::Class::Bytes(c)) => {
                Some(c.iter().flat_map(|r| r.start()..=r.end()).collect())
            }
            HirKind::Class(regex_syntax::hir::Class::Unicode(c)) => {
                let mut out = Vec::new();
                for r in c.iter() {
                    if u32::from(r.end()) > 0x7f {
                        return None;
                    }
                    out.extend(r.start() as u8..=r.end() as u8);
                }
                Some(out)
            }
            HirKind::Repetition(r) => bytes(&r.sub),
            HirKind::Capture(c) => bytes(&c.sub),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => {
                let mut out = Vec::new();
                for h in hs {
                    out.extend(bytes(h)?);
                }
                Some(out)
            }
            HirKind::Empty | HirKind::Look(_) => None,
        }
    }
    let mut all = Vec::new();
    for p in body {
        let b = bytes(p)?;
        if !b.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        all.extend(b);
    }
    let body = Hir::concat(body.to_vec());
    let min = body.properties().minimum_len()?;
    let max = body.properties().maximum_len().unwrap_or(usize::MAX);
    // The bytes a match starts with: of its prefix literals, or (too many of
    // those) any it holds.
    let mut first: Vec<u8> = match prefix_literals(&body) {
        Some(lits) => lits.iter().filter_map(|l| l.first().copied()).collect(),
        None => all,
    };
    first.sort_unstable();
    first.dedup();
    (min >= WHOLE && !first.is_empty()).then_some(Prefix::Whole { first, min, max })
}

/// Whether no match of `h` holds a line break.
fn one_line(h: &Hir) -> bool {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => true,
        HirKind::Literal(l) => !l.0.contains(&b'\n'),
        HirKind::Class(regex_syntax::hir::Class::Unicode(c)) => !c
            .ranges()
            .iter()
            .any(|r| r.start() <= '\n' && '\n' <= r.end()),
        HirKind::Class(regex_syntax::hir::Class::Bytes(c)) => !c
            .ranges()
            .iter()
            .any(|r| r.start() <= b'\n' && b'\n' <= r.end()),
        HirKind::Repetition(r) => one_line(&r.sub),
        HirKind::Capture(c) => one_line(&c.sub),
        HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().all(one_line),
    }
}

impl Prefixed {
    /// Compiles the search for `regexes` (the caller's compiled patterns; their
    /// indices are the pattern numbers reported). `limit` bounds each anchored
    /// regex's compiled size and lazy-DFA cache, as the caller bounded its own.
    pub(crate) fn new(regexes: Vec<regex::Regex>, limit: usize) -> Self {
        let mut literals: Vec<(Vec<u8>, usize, u32)> = Vec::new();
        let mut patterns = Vec::with_capacity(regexes.len());
        let mut words = WordIndex::new();
        let mut parts: Vec<Need> = Vec::new();
        for (i, regex) in regexes.into_iter().enumerate() {
            let mut gates = Vec::new();
            let mut lines = Vec::new();
            let anchored = analyze(regex.as_str()).and_then(|found| {
                let re = meta::Regex::builder()
                    .syntax(regex_automata::util::syntax::Config::new().nest_limit(64))
                    .configure(
                        // No literal prefilter: anchored searches do not use one,
                        // and this regex also searches a text in full where the
                        // pattern's prefixes are too frequent for a prefilter
                        // (past CANDIDATES), where one stops at each of them.
                        meta::Config::new()
                            .auto_prefilter(false)
                            .nfa_size_limit(Some(limit))
                            .hybrid_cache_capacity(limit)
                            .dfa_size_limit(Some(limit)),
                    )
                    .build(regex.as_str())
                    .ok()?;
                let mut index = |part: Need| match parts.iter().position(|p| *p == part) {
                    Some(k) => k,
                    None => {
                        parts.push(part);
                        parts.len() - 1
                    }
                };
                gates = found
                    .gates
                    .into_iter()
                    .map(|gate| gate.into_iter().map(&mut index).collect())
                    .collect();
                lines = found
                    .lines
                    .into_iter()
                    .map(|(gate, k)| {
                        let gate: Vec<usize> = gate.into_iter().map(&mut index).collect();
                        let locate = gate[k];
                        (gate, locate)
                    })
                    .collect();
                for prefix in found.prefixes {
                    match prefix {
                        Prefix::Word(l) => words.add(&l, i as u32),
                        Prefix::Whole { first, min, max } => {
                            words.add_whole(&first, min, max, i as u32);
                        }
                        Prefix::Searched(l, at) => literals.push((l, at, i as u32)),
                    }
                }
                Some(re)
            });
            let start = anchored.as_ref().and_then(|_| Start::new(regex.as_str()));
            patterns.push(Pattern {
                regex,
                anchored,
                gates,
                lines,
                start,
            });
        }
        let searched = Searched::new(literals);
        let searched = match searched {
            Some(s) => s,
            None => {
                // No automaton (it could not be built): every pattern in full.
                words = WordIndex::new();
                for p in &mut patterns {
                    p.anchored = None;
                    p.lines.clear();
                }
                Searched::empty()
            }
        };
        words.seal();
        let parts: Vec<Check> = parts.iter().map(Check::new).collect();
        // Each gate's parts with fewer passes first (a gate is closed by any part
        // not found; among equals, the rarer-looking first, as `required` ranks them).
        for p in &mut patterns {
            for gate in p.gates.iter_mut().chain(p.lines.iter_mut().map(|(g, _)| g)) {
                gate.sort_by_key(|&k| parts[k].passes());
            }
        }
        let lined = (0..patterns.len())
            .filter(|&i| !patterns[i].lines.is_empty())
            .collect();
        let special = (0..patterns.len())
            .filter(|&i| patterns[i].anchored.is_none() || !patterns[i].gates.is_empty())
            .collect();
        Self {
            patterns,
            special,
            lined,
            parts,
            words,
            searched,
        }
    }

    /// Calls `f(pattern, span)` for each match of each pattern in `hay`, pattern
    /// after pattern in ascending order, each pattern's matches in order as
    /// `find_iter` finds them; `f` returns whether it wants that pattern's next match.
    pub(crate) fn for_each_match(&self, hay: &str, f: impl FnMut(usize, Range<usize>) -> bool) {
        self.for_each_match_words(hay, None, &mut Pairs::default(), f);
    }

    /// [`for_each_match`](Self::for_each_match), giving each word of `hay` (a run
    /// of ASCII letters and digits) to `word(start, end)` in order, from the pass
    /// that looks the words up; `pairs` holds what earlier searches of the text
    /// (or of its ROT13 reading) learnt of it.
    pub(crate) fn for_each_match_words(
        &self,
        hay: &str,
        word: Option<&mut dyn FnMut(usize, usize)>,
        pairs: &mut Pairs,
        mut f: impl FnMut(usize, Range<usize>) -> bool,
    ) {
        let n = self.patterns.len();
        // The candidates, (pattern, start), and per pattern how many (up to
        // CANDIDATES; past that the pattern is dense: searched in full). On the
        // stack for up to 64 patterns and 256 candidates.
        let mut cands: SmallVec<[(u32, u32); 256]> = SmallVec::new();
        let count: SmallVec<[std::cell::Cell<u16>; 64]> =
            smallvec::smallvec![std::cell::Cell::new(0); n];
        // A dense pattern wants no more candidates (nor the comparisons that find
        // them).
        let want = |p: u32| usize::from(count[p as usize].get()) <= CANDIDATES;
        // The text's digits, read when a pattern with a digit gate first has a
        // candidate that passes the rest of its gate.
        let mut digits: Option<SmallVec<[u64; 64]>> = None;
        let mut candidate = |p: u32, at: usize| {
            if let Some(start) = &self.patterns[p as usize].start {
                if !start.open(hay.as_bytes(), at, &mut digits) {
                    return;
                }
            }
            let c = &count[p as usize];
            c.set(c.get() + 1);
            if usize::from(c.get()) <= CANDIDATES {
                cands.push((p, at as u32));
            }
        };
        self.words
            .search(hay.as_bytes(), want, &mut candidate, word);
        self.searched.search(hay.as_bytes(), want, &mut candidate);
        let ascii = hay.is_ascii();
        let mut found: SmallVec<[Option<bool>; 32]> = smallvec::smallvec![None; self.parts.len()];
        let mut open = |gate: &[usize]| {
            // A part already looked for and not found closes the gate at no cost.
            if gate.iter().any(|&k| found[k] == Some(false)) {
                return false;
            }
            gate.iter().all(|&k| {
                *found[k].get_or_insert_with(|| self.parts[k].found_in(hay, ascii, pairs))
            })
        };
        // Line branches with an open gate: the start of each line that holds one
        // of the locating literals (a line once per literal).
        for &i in &self.lined {
            for (gate, locate) in &self.patterns[i].lines {
                if !open(gate) {
                    continue;
                }
                let Seek::Literals(lits) = &self.parts[*locate].what else {
                    continue;
                };
                let b = hay.as_bytes();
                for l in lits {
                    let mut at = 0;
                    while want(i as u32) {
                        let Some(o) = b.get(at..).and_then(|h| l.find(h)).map(|k| at + k) else {
                            break;
                        };
                        candidate(
                            i as u32,
                            memchr::memrchr(b'\n', &b[..o]).map_or(0, |j| j + 1),
                        );
                        match memchr::memchr(b'\n', &b[o..]) {
                            Some(j) => at = o + j + 1,
                            None => break,
                        }
                    }
                }
            }
        }
        cands.sort_unstable();
        cands.dedup();
        // The patterns to look at, ascending: those that may be searched in full
        // without a candidate, and those with candidates (a pattern with neither
        // has nothing to do).
        let (mut special, mut next) = (self.special.iter().peekable(), 0);
        loop {
            let i = match (special.peek(), cands.get(next)) {
                (None, None) => break,
                (s, c) => {
                    let s = s.map_or(usize::MAX, |&&s| s);
                    s.min(c.map_or(usize::MAX, |c| c.0 as usize))
                }
            };
            if special.peek() == Some(&&i) {
                special.next();
            }
            let p = &self.patterns[i];
            // This pattern's candidates, in order.
            let from = next;
            while next < cands.len() && cands[next].0 as usize == i {
                next += 1;
            }
            // Searched in full: no prefixes, an open gate (a branch without
            // prefixes may match), or too many candidates.
            let dense = usize::from(count[i].get()) > CANDIDATES;
            let in_full = p.anchored.is_none() || p.gates.iter().any(|gate| open(gate)) || dense;
            if in_full {
                // A text thick with the pattern's prefixes (its first candidates
                // fewer than PACKED bytes apart) is read by the DFA alone: the
                // regex's own prefilter, on those same prefixes, would stop at
                // each (3x slower over digit-dense text). Otherwise the regex
                // with its literal optimizations, which skip what lies between.
                let packed = dense
                    && cands[from..next]
                        .last()
                        .is_some_and(|&(_, last)| (last as usize) < PACKED * (next - from));
                let full = p.anchored.as_ref().filter(|_| packed);
                let find = |at: usize| match full {
                    Some(re) => re.find(Input::new(hay).range(at..)).map(|m| m.range()),
                    None => p.regex.find_at(hay, at).map(|m| m.range()),
                };
                let mut at = 0;
                while let Some(m) = find(at) {
                    let end = m.end;
                    if !f(i, m.clone()) {
                        break;
                    }
                    at = if m.is_empty() {
                        match hay[end..].chars().next() {
                            Some(c) => end + c.len_utf8(),
                            None => break,
                        }
                    } else {
                        end
                    };
                }
                continue;
            }
            let Some(re) = &p.anchored else {
                continue;
            };
            let mut done = 0;
            for &(_, start) in &cands[from..next] {
                let start = start as usize;
                if start < done {
                    continue;
                }
                let input = Input::new(hay).range(start..).anchored(Anchored::Yes);
                if let Some(m) = re.find(input) {
                    if !f(i, m.range()) {
                        break;
                    }
                    done = m.end().max(start + 1);
                }
            }
        }
    }

    /// Whether its pass over a text's words reads every word (its words have no
    /// cover to skip by): a reader of every word costs that pass nothing more.
    pub(crate) fn reads_every_word(&self) -> bool {
        self.words.cover.is_none()
    }

    /// The first match of each pattern that matches, in pattern order (what
    /// `Regex::find` returns for each).
    pub(crate) fn first_matches(
        &self,
        hay: &str,
        word: Option<&mut dyn FnMut(usize, usize)>,
        pairs: &mut Pairs,
    ) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        self.for_each_match_words(hay, word, pairs, |i, m| {
            out.push((i, m));
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate counts the digits every match has and bounds its length, and
    /// knows the bytes and least length of every match; the bits between two
    /// offsets are those a byte-by-byte count finds.
    #[test]
    fn starts_hold_what_every_match_has() {
        let gate = |p: &str| Start::new(p).map(|g| (g.min_len, g.digits));
        let card = r"(?-u:\b)(?:[0-9][ \-]?){12,18}[0-9](?-u:\b)";
        assert_eq!(gate(card), Some((13, (13, 37))));
        let g = Start::new(card).unwrap();
        let open = |hay: &str, at: usize| g.open(hay.as_bytes(), at, &mut None);
        assert!(open("4111 1111 1111 1111", 0));
        assert!(open("x 4111-1111-1111-1111 x", 2));
        // Too short a text, a letter in the first 13 bytes, fewer than 13 digits
        // in the 37 bytes from the start.
        assert!(!open("4111 1111 1111", 0));
        assert!(!open("4111 1111 11x1 1111 1", 0));
        assert!(!open(&"4   ".repeat(20), 0));
        // `\s` is Unicode: up to three bytes, any byte from 0x80.
        let phone = r"(?:\([0-9]{3}\)\s?|[0-9]{3}-)[0-9]{3}";
        assert_eq!(gate(phone), Some((7, (6, 11))));
        let g = Start::new(phone).unwrap();
        assert!(g.open("(555)\u{a0}123".as_bytes(), 0, &mut None));
        // Any byte: no least length to test, the digits still.
        assert_eq!(gate(r"[0-9]{4}(?s:.){9}"), Some((0, (4, 40))));
        // Unicode digits, a branch of two digits, no bound, words: no gate.
        assert_eq!(gate(r"\d{13}"), None);
        assert_eq!(gate(r"[0-9]{6}|ab[0-9]{2}"), None);
        assert_eq!(gate(r"[0-9]{6}x*"), None);
        assert_eq!(gate(r"ignore (?:all|the) instructions"), None);
        for hay in crate::scan::testgen::texts(b"0a9 5", 150, 500) {
            let b = hay.as_bytes();
            let bits = digit_bits(b);
            // Digits before each offset, counted a byte at a time.
            let mut before = vec![0u32];
            for c in b {
                before.push(before.last().unwrap() + u32::from(c.is_ascii_digit()));
            }
            let upto = |k: usize| before[k.min(b.len())];
            for from in 0..=b.len() + 2 {
                for to in from..=b.len() + 70 {
                    let want = upto(to) - upto(from);
                    assert_eq!(bits_between(&bits, from, to), want, "{hay:?} {from}..{to}");
                }
            }
        }
    }

    /// A literal part counts what `find_iter` counts over each literal: matches
    /// that do not overlap (an overlapping count opens gates that should stay shut).
    #[test]
    fn literal_parts_count_as_find_iter() {
        let lits: Vec<Vec<u8>> = vec![b"aa".to_vec(), b"aba".to_vec(), b"b".to_vec()];
        for times in 1..6 {
            let check = Check::new(&Need {
                part: Part::Literals(lits.clone()),
                times,
            });
            for hay in crate::scan::testgen::texts(b"ab ", 16, 3000) {
                // The part is there as often as the literals are, one after another.
                let mut seen = 0;
                let expected = lits.iter().any(|l| {
                    seen += memchr::memmem::find_iter(hay.as_bytes(), l)
                        .take(times - seen)
                        .count();
                    seen >= times
                });
                assert_eq!(check.found(&hay, true), expected, "{hay:?} x{times}");
            }
        }
    }

    /// The patterns' regexes and the set of them.
    fn compiled(patterns: &[&str]) -> (Vec<regex::Regex>, Prefixed) {
        let regexes: Vec<regex::Regex> = patterns
            .iter()
            .map(|p| regex::Regex::new(p).unwrap())
            .collect();
        let set = Prefixed::new(regexes.clone(), 1 << 22);
        (regexes, set)
    }

    /// Every match the set finds in `hay`, in its order.
    fn all_matches(set: &Prefixed, hay: &str) -> Vec<(usize, Range<usize>)> {
        let mut ours = Vec::new();
        set.for_each_match(hay, |i, m| {
            ours.push((i, m));
            true
        });
        ours
    }

    fn reference(regexes: &[regex::Regex], hay: &str) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        for (i, r) in regexes.iter().enumerate() {
            for m in r.find_iter(hay) {
                out.push((i, m.range()));
            }
        }
        out
    }

    /// A bucket of many literals of four bytes or more (digit formats that
    /// expand to hundreds), some shorter ones beside them: searching the long
    /// ones by their first four bytes finds what every regex finds.
    #[test]
    fn many_literals_in_a_bucket_are_searched_by_their_first_four_bytes() {
        let patterns = [
            r"(?-u:\b)0[1-9](?:[ .][0-9]{2}){4}(?-u:\b)",
            r"(?-u:\b)0(?:[2-9][0-9]{1,2})[ /\-][0-9]{4}(?-u:\b)",
            r"(?-u:\b)03 \w{3}",
            r"(?-u:\b)03-\w",
        ];
        let (regexes, set) = compiled(&patterns);
        let w = &set.words;
        // A bucket with both: more long ones than are compared one by one.
        let both = (0..1 << BUCKET_BITS)
            .map(|b| {
                let n = (w.offsets[b + 1] - w.offsets[b]) as usize;
                (n - usize::from(w.shorts[b]).min(n), w.shorts[b])
            })
            .filter(|&(fours, shorts)| fours > FOURS && shorts > 0)
            .count();
        assert!(both > 0);
        // Texts of pieces that match, nearly match, and share the bucket.
        const PIECES: &[&str] = &[
            "03 12 34 56 78",
            "01 23 45 67 89",
            "03.12.34.56.7",
            "0203-4567",
            "030 1234",
            "0311/5555",
            "03 abc",
            "03-x",
            "03",
            "03 t",
            "03 1",
            " ",
            ".",
            "-",
            "9",
            "x",
            "0",
            "3",
            "03 12",
            "1234",
        ];
        let mut matched = 0;
        for hay in crate::scan::testgen::pieces(PIECES, 12, 3000) {
            let ours = all_matches(&set, &hay);
            assert_eq!(ours, reference(&regexes, &hay), "{hay:?}");
            matched += ours.len();
        }
        assert!(matched > 1000, "{matched}");
    }

    #[test]
    fn finds_what_find_iter_finds() {
        let patterns = [
            r"\bignore (?:all|the) (?:rules|instructions)\b",
            r"\b(?:sk|pk)-[a-z0-9]{4,}\b",
            r"<\|(?:im_start|system)\|>",
            r"(?m)^\s*system\s*:",
            r"\d{3}-\d{4}",
            r"\bab\b|\babc",
            r"x+y",
            r"\b(?:dan|do anything|ignoring)\b",
            r"\b(?:see|say)\w*",
            r"\bcafé\b|\b(?-u:\b)t3st",
            r"\b(?:ignore|ignores|ignored) (?:all|the)\b",
            r"(?m)(?:^|\s)(?:#{2,}|\*\*)\s*system\b",
            r"\[/?inst\]|<<sys>>|\{\{|\(#context\)|!\[|'you|\x22you|<\|im|\u{201c}you",
            r"(?m)^[ \t>*_#-]*(?:user|system)[ \t]*:[ \t]*\S",
            r"\b(?:stay|remain) in [\w-]+ mode\b|\b[\w-]+ mode (?:is )?(?:enabled|on)\b",
            r"\b(?:\d[ \-]?){3,5}\d\b",
            r"\bi am (?:dan|free)\b",
            r"\b[a-f0-9]{4}-us\b",
            r"(?:[^()\n]{0,8}\([a-z ]\)[^()\n]{0,8}\n){2,}",
            r"(?:\([0-9]{2}\)\s?|\b[0-9]{2}[.\-])[0-9]{2}\b",
            r"(?m)^[ \t]*(?:-{2,}|\[)[ \t]*(?:[a-z]+[ \t]+){0,2}(?:instructions?|task)\b[^\n]{0,8}$",
            r"(?m)^[ \t>*_#-]*(?:ab|dan)[ \t]*:|\bfree\b",
            // Whole words, found by their length: a class first, a class of
            // more than the extractor keeps, an ASCII and a Unicode boundary.
            r"(?-u:\b)[13][1-9A-HJ-NP-Za-km-z]{7,9}(?-u:\b)",
            r"\b[a-f0-9]{8,}\b",
            r"\b(?:ab|cd)[0-9A-Za-z]{6}\b",
            // Digit gates: matches of at least six and ten ASCII digits.
            r"(?-u:\b)(?:[0-9][ \-]?){5,8}[0-9](?-u:\b)",
            r"(?:\([0-9]{3}\)\s?|(?-u:\b)[0-9]{3}[.\-])[2-9][0-9]{2}[.\-][0-9]{4}",
        ];
        let (regexes, set) = compiled(&patterns);
        const WORDS: &[&str] = &[
            "ignore",
            "i",
            "am",
            "free",
            "i am dan",
            "i am free",
            "\u{663}\u{663}\u{663}\u{663}",
            "\u{663}",
            "be",
            "dead-us",
            "ca-us",
            "all",
            "the",
            "rules",
            "instructions",
            "sk-",
            "pk-",
            "abcd12",
            "<|",
            "im_start",
            "|>",
            "system",
            ":",
            "\n",
            " ",
            "555-0199",
            "ab",
            "abc",
            "xxy",
            "x",
            "y",
            "é",
            "aignore",
            "dan",
            "do",
            "anything",
            "ignoring",
            "see",
            "seen",
            "sa",
            "say",
            "café",
            "t3st",
            "_",
            "ignores",
            "ignored",
            "<|system|>",
            "\nsystem:",
            "##",
            "** system",
            "\u{a0}",
            "\t",
            "[inst]",
            "<<sys>>",
            "{{",
            "(#context)",
            "![",
            "'you",
            "\"you",
            "<|im",
            "\u{201c}you",
            "user:",
            "x-dev mode on",
            "12",
            "5-",
            "\u{663}\u{664}",
            "stay in dev mode",
            "stay in",
            "mode",
            "dev",
            "enabled",
            "on",
            "is",
            "(55)",
            "12-",
            "(a)\n",
            "(b) x\n(c)\n",
            "(",
            ")",
            "--",
            "[",
            "task",
            "-- new task",
            "\n[ instructions",
            "dan:",
            "> ab :",
            "1abcdefgh",
            "3ABCDEFGHJ",
            "1abcdefghjk",
            "1abc0efgh",
            "deadbeef",
            "deadbeef0",
            "dead",
            "beef",
            "ab123456",
            "cdXYZ789",
            "ab12",
            "4111",
            "555",
            "(555)",
            "867-5309",
            "12-34",
            "0",
            "1 ",
            "ĳ",
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut total = vec![0usize; patterns.len()];
        for round in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut hay = String::new();
            for k in 0..(x % 30) {
                let r = x.rotate_left(k as u32 * 3) ^ k.wrapping_mul(0x2545_F491_4F6C_DD1D);
                hay.push_str(WORDS[(r % WORDS.len() as u64) as usize]);
                if r & 0x100 != 0 {
                    hay.push(' ');
                }
            }
            if round % 97 == 0 {
                // Dense: more candidates than are kept.
                hay = "ignore all rules sk-abcd ".repeat(CANDIDATES + 3);
            } else if round % 10 == 0 {
                // Dense with whatever this text starts.
                hay = hay.repeat(CANDIDATES + 1);
            } else if round % 10 == 5 {
                // Thick with digits, the letters made digits: candidates a few bytes
                // apart, searched in full without the regex's prefilter.
                let digits: String = hay
                    .chars()
                    .map(|c| match c {
                        'a'..='z' => char::from(b'0' + (c as u8 % 10)),
                        _ => c,
                    })
                    .collect();
                hay = digits.repeat(CANDIDATES + 1);
            }
            let ours = all_matches(&set, &hay);
            assert_eq!(ours, reference(&regexes, &hay), "{hay:?}");
            for (i, _) in &ours {
                total[*i] += 1;
            }
            let first: Vec<(usize, Range<usize>)> = regexes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.find(&hay).map(|m| (i, m.range())))
                .collect();
            // Every word (a run of ASCII letters and digits) given in order.
            let mut words = Vec::new();
            let mut word = |s: usize, e: usize| words.push(&hay[s..e]);
            assert_eq!(
                set.first_matches(&hay, Some(&mut word), &mut Pairs::default()),
                first,
                "{hay:?}"
            );
            let expected: Vec<&str> = hay
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            assert_eq!(words, expected, "{hay:?}");
        }
        // Every pattern matched somewhere: the comparison was not vacuous.
        assert!(total.iter().all(|&t| t > 3), "{total:?}");
        // Words are given also by a set that looks none up.
        let none = Prefixed::new(vec![regex::Regex::new(r"<\|im_start").unwrap()], 1 << 20);
        let mut words = Vec::new();
        let hay = "a <|im_start|> b2c, d\u{e9}f";
        none.first_matches(
            hay,
            Some(&mut |s: usize, e: usize| words.push(&hay[s..e])),
            &mut Pairs::default(),
        );
        assert_eq!(words, ["a", "im", "start", "b2c", "d", "f"]);
    }

    /// A set whose word literals start with few byte pairs finds its words 64
    /// bytes at a time, only in the blocks with a pair of its cover: the same
    /// matches as `find_iter`, and the same first ones as the walk over every word
    /// (what a set with a reader of every word takes), on texts of up to a few
    /// hundred bytes (whole blocks, words across their ends, matches at both ends
    /// of the text).
    #[test]
    fn words_found_by_their_cover_are_those_of_every_word() {
        let patterns = [
            r"\b\d{3}-\d{4}\b",
            r"\bpat[a-z]{2}\b",
            r"\b[A-Z]{2}\d{2}\b",
            r"\bkey-[0-9a-f]{4}\b",
            r"\b[0-9]\b",
            r"(?-u:\b)[13][1-9A-HJ-NP-Za-km-z]{7,9}(?-u:\b)",
        ];
        let (regexes, set) = compiled(&patterns);
        assert!(set.words.cover.is_some(), "{:?}", set.words.cover);
        assert_eq!(set.words.whole.len(), 1);
        const WORDS: &[&str] = &[
            "patio",
            "pat",
            "apatio",
            "spat",
            "key-beef",
            "key-",
            "keys",
            "AB12",
            "ABC12",
            "xAB12",
            "Ab12",
            "AZ12",
            "ZA12",
            "ZZ99",
            "555-0199",
            "0",
            "9",
            "1555-0199",
            "7",
            "x7",
            "7x",
            "é",
            "é7",
            "\u{663}",
            " ",
            " ",
            " ",
            "\n",
            ".",
            "-",
            "_",
            "the",
            "quarterly",
            "Revenue",
            "P",
            "K",
            "1abcdefgh",
            "3ABCDEFGHJ",
            "1abc0efgh",
            "1ab",
        ];
        let mut total = vec![0usize; patterns.len()];
        for hay in crate::scan::testgen::pieces(WORDS, 160, 3000) {
            let ours = all_matches(&set, &hay);
            assert_eq!(ours, reference(&regexes, &hay), "{hay:?}");
            for (i, _) in &ours {
                total[*i] += 1;
            }
            let mut every = |_: usize, _: usize| {};
            assert_eq!(
                set.first_matches(&hay, None, &mut Pairs::default()),
                set.first_matches(&hay, Some(&mut every), &mut Pairs::default()),
                "{hay:?}"
            );
        }
        assert!(total.iter().all(|&t| t > 50), "{total:?}");
    }

    #[test]
    fn words_a_block_at_a_time_are_the_byte_loop_s() {
        const BYTES: &[u8] = b"aZz09/:@[`{ \x7f\x80\xc3\xa9_-";
        const WORDY: &[u8] = b"aaaaaZ09 ";
        let long = crate::scan::testgen::strings(BYTES, 300, 5000)
            .chain(crate::scan::testgen::strings(WORDY, 300, 5000));
        for hay in crate::scan::testgen::strings(BYTES, 40, 20000).chain(long) {
            let mut ours = Vec::new();
            ascii_words(&hay, |s, e| ours.push((s, e)));
            let mut theirs = Vec::new();
            let mut i = 0;
            while i < hay.len() {
                if !hay[i].is_ascii_alphanumeric() {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < hay.len() && hay[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                theirs.push((s, i));
            }
            assert_eq!(ours, theirs, "{hay:?}");
        }
        for b in 0..=255u8 {
            assert_eq!(alnum(u64::from(b)) != 0, b.is_ascii_alphanumeric(), "{b}");
        }
    }

    #[test]
    fn many_first_bytes_use_one_automaton() {
        let words: Vec<String> = "!#$%&*+,./:;<=>?@[]^`{|}~-"
            .chars()
            .zip('a'..='z')
            .map(|(p, l)| format!("{p}{l}"))
            .collect();
        let regexes: Vec<regex::Regex> = words
            .iter()
            .map(|w| regex::Regex::new(&format!(r"\s?{}\b", regex::escape(w))).unwrap())
            .collect();
        let set = Prefixed::new(regexes.clone(), 1 << 22);
        assert!(matches!(set.searched, Searched::Automaton(..)));
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let hay: String = (0..x % 40)
                .map(|k| {
                    let w = &words[(x.rotate_left(k as u32) % words.len() as u64) as usize];
                    if k % 3 == 0 {
                        format!(" {w}")
                    } else {
                        w.clone()
                    }
                })
                .collect();
            let ours = all_matches(&set, &hay);
            assert_eq!(ours, reference(&regexes, &hay), "{hay:?}");
        }
    }

    /// A word boundary, ASCII letters and digits only (eight or more), a word
    /// boundary: candidates are the words of the length a match has that start
    /// with its first bytes. Anything else in it (an underscore, a space, a
    /// letter outside ASCII, a boundary missing) leaves it to the other ways.
    #[test]
    fn whole_word_patterns_are_found_by_length() {
        let whole = |p: &str| {
            analyze(p).and_then(|a| match a.prefixes.as_slice() {
                [Prefix::Whole { first, min, max }] => Some((first.clone(), *min, *max)),
                _ => None,
            })
        };
        assert_eq!(
            whole(r"(?-u:\b)[13][1-9A-HJ-NP-Za-km-z]{25,34}(?-u:\b)"),
            Some((b"13".to_vec(), 26, 35))
        );
        let (first, min, max) = whole(r"\b[a-f0-9]{8,}\b").unwrap();
        assert_eq!((first.len(), min, max), (16, 8, usize::MAX));
        // Literal word starts come first: those are looked up as they are.
        assert!(matches!(
            analyze(r"\b(?:ab|cd)[0-9]{6}\b").unwrap().prefixes[0],
            Prefix::Word(_)
        ));
        for p in [
            r"\b[a-z0-9]{2,16}_[A-Za-z0-9]{36}\b",
            r"\b(?:[0-9][ \-]?){12,18}[0-9]\b",
            r"\b\w{8,}\b",
            r"\b[a-f0-9]{8,}",
            r"[a-f0-9]{8,}\b",
            r"\b[a-f0-9]{4,7}\b",
        ] {
            assert_eq!(whole(p), None, "{p}");
        }
    }

    /// A part needed once does not look for its literals that hold another of
    /// its literals, and is found in the same texts; a part needed more often
    /// counts every literal's occurrences, added up.
    #[test]
    fn literals_holding_another_are_not_looked_for() {
        let lits: Vec<Vec<u8>> = ["chatbot", "bot", "gpt", "chatgpt", "bot", "ab", "aab"]
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect();
        for times in 1..=3 {
            let check = Check::new(&Need {
                part: Part::Literals(lits.clone()),
                times,
            });
            let Seek::Literals(kept) = &check.what else {
                panic!("literals");
            };
            let kept: Vec<&[u8]> = kept.iter().map(|f| f.needle()).collect();
            if times == 1 {
                assert_eq!(kept, [&b"bot"[..], b"gpt", b"ab"]);
            } else {
                assert_eq!(kept.len(), lits.len());
            }
            // Found where the literals' occurrences (each literal's without
            // overlaps) add up to `times`.
            let reference = |hay: &str| {
                let mut n = 0;
                for l in &lits {
                    let mut at = 0;
                    while let Some(i) = memchr::memmem::find(&hay.as_bytes()[at..], l) {
                        n += 1;
                        at += i + l.len();
                    }
                }
                n >= times
            };
            let mut found = 0;
            for hay in crate::scan::testgen::texts(b"abchotgp ", 40, 20_000) {
                assert_eq!(check.found(&hay, true), reference(&hay), "{hay:?} x{times}");
                // The same with the text's byte pairs read first, from the text
                // or from its ROT13 (the pairs are folded: the same).
                for reading in [hay.clone(), crate::codec::rot13_str(&hay)] {
                    let mut pairs = Pairs::read(reading.as_bytes());
                    assert_eq!(
                        check.found_in(&hay, true, &mut pairs),
                        reference(&hay),
                        "{hay:?} x{times}"
                    );
                }
                found += usize::from(reference(&hay));
            }
            assert!(found > 100, "{found}");
        }
    }

    /// The pairs of a text, or of any reading of it with some of its letters
    /// rotated by ROT13, never hide a literal of another such reading; and they
    /// do tell of some that are not there. A search that finds nothing is
    /// counted, and the pairs are read after [`MISSES`] of them.
    #[test]
    fn pairs_never_hide_a_literal_there() {
        let rotate = |t: &str, every: usize| -> String {
            t.bytes()
                .enumerate()
                .map(|(i, c)| {
                    let r = crate::codec::rot13(char::from(c)) as u8;
                    char::from(if i % every == 0 { r } else { c })
                })
                .collect()
        };
        let mut hidden = 0;
        for t in crate::scan::testgen::texts(b"abnoAN-z01 m", 30, 5_000) {
            let readings = [t.clone(), rotate(&t, 1), rotate(&t, 2), rotate(&t, 3)];
            for r in &readings {
                let pairs = Pairs::read(r.as_bytes());
                for other in &readings {
                    let b = other.as_bytes();
                    for len in 1..=4 {
                        for needle in b.windows(len) {
                            assert!(pairs.may_hold(needle), "{r:?} {needle:?}");
                        }
                    }
                }
                for needle in [&b"zz"[..], b"a-", b"0n", b" m", b"q", b"N0a"] {
                    let there = readings
                        .iter()
                        .any(|o| memchr::memmem::find(o.as_bytes(), needle).is_some());
                    assert!(!there || pairs.may_hold(needle), "{r:?} {needle:?}");
                    hidden += usize::from(!pairs.may_hold(needle));
                }
            }
        }
        assert!(hidden > 1_000, "{hidden}");
        let mut pairs = Pairs::default();
        for k in 0..MISSES {
            assert!(pairs.bits.is_none(), "{k}");
            pairs.missed(b"ab", b"xyz");
            pairs.missed(b"a", b"xyz");
        }
        assert!(!pairs.may_hold(b"ab") && pairs.may_hold(b"yz") && pairs.may_hold(b"z"));
    }

    #[test]
    fn frequent_or_unbounded_prefixes_are_searched_in_full() {
        let kinds = |p: &str| {
            analyze(p).map(|a| {
                a.prefixes
                    .iter()
                    .map(|x| matches!(x, Prefix::Word(_)))
                    .collect::<Vec<bool>>()
            })
        };
        assert_eq!(kinds(r"\bignore\b"), Some(vec![true]));
        assert_eq!(kinds(r"\bignore\b|<\|"), Some(vec![true, false]));
        assert_eq!(kinds(r"ignore"), Some(vec![false]));
        assert!(analyze(r"(?:^|\s)system:").is_some());
        // Only a single letter to search for, and no literal every match has.
        assert!(analyze(r"(?:^|\s)s").is_none());
        assert!(
            analyze(r"(?:^|\s)#{2,}system")
                .is_some_and(|a| a.prefixes.contains(&Prefix::Searched(b" ##".to_vec(), 1)))
        );
        assert!(analyze(r"a|bcd").is_none());
        // A branch that starts with a choice is one branch per choice, each with
        // prefixes of its own: no gate.
        assert!(
            analyze(r"(?:\([0-9]{3}\)\s?|\b[0-9]{3}[.\-])[2-9][0-9]{2}[.\-][0-9]{4}\b|\bfoo")
                .is_some_and(|a| a.gates.is_empty() && !a.prefixes.is_empty())
        );
        // Five list items, each with a parenthesis: gated by what it repeats (a
        // text without five parentheses and line breaks has none), not searched at
        // every parenthesis; a phone number's digits do not count as such.
        assert!(
            analyze(r"\([a-z]\)[^()\n]{0,40}\n(?:[^()\n]{0,40}\([a-z]\)[^()\n]{0,40}\n){4,}")
                .is_some_and(|a| a.prefixes.is_empty() && a.gates.len() == 1)
        );
        // No prefixes, but every match goes through "@example" or "user".
        let gates = |p: &str| analyze(p).map(|a| a.gates);
        let lits = |l: &[&str]| {
            Need::once(Part::Literals(
                l.iter().map(|l| l.as_bytes().to_vec()).collect(),
            ))
        };
        assert_eq!(gates(r"\w+@example"), Some(vec![vec![lits(&["@example"])]]));
        // A line branch (it starts a line and holds no line break): its lines are
        // located by the literals of its gate; with `\s`, which matches a line
        // break, it is gated.
        let line = analyze(r"(?m)^[ \t>*_#-]*(?:user|human)[ \t]*:").unwrap();
        assert!(line.gates.is_empty());
        assert_eq!(
            line.lines,
            [(vec![lits(&["user", "human"]), lits(&[":"])], 0)]
        );
        assert_eq!(
            gates(r"(?m)^\s*(?:user|human)\s*:"),
            Some(vec![vec![lits(&["user", "human"]), lits(&[":"])]])
        );
        // A class of a few ASCII bytes: the digits (and `\d`'s other digits).
        let digits = gates(r"\b(?:\d[ \-]?){12,18}\d\b").unwrap();
        let [
            Need {
                part: Part::Class(ascii, Beyond::Chars(beyond)),
                times: 13,
            },
        ] = digits[0].as_slice()
        else {
            panic!("{digits:?}");
        };
        assert_eq!(ascii, b"0123456789");
        assert!(beyond.len() > 50 && beyond.contains(&('\u{660}', '\u{669}')));
        // A card has thirteen digits or more: a text with fewer shuts the gate. A
        // text outside ASCII counts the digits of other scripts too.
        let check = Check::new(&digits[0][0]);
        assert!(!check.found("café au lait", false));
        assert!(!check.found("café ٣ 3", false) && !check.found(&"3".repeat(12), true));
        assert!(check.found(&"3".repeat(13), true));
        assert!(check.found(&format!("café ٣ {}", "3".repeat(12)), false));
        assert!(!check.found(&format!("café {}", "3".repeat(12)), false));
        // A repetition needs what it repeats as many times; a concatenation adds up.
        let lines = gates(r"(?:[^()\n]{0,40}\(\s?[a-z ]\s?\)[^()\n]{0,40}\n){5,}").unwrap();
        assert!(lines[0].iter().all(|n| n.times == 5), "{lines:?}");
        let check: Vec<Check> = lines[0].iter().map(Check::new).collect();
        let open = |t: &str| check.iter().all(|c| c.found(t, t.is_ascii()));
        assert!(!open(&"(a) apple\n".repeat(4)) && open(&"(a) apple\n".repeat(5)));
        let twice = gates(r"\d{3}-\d{4}").unwrap();
        assert_eq!(twice[0].iter().map(|n| n.times).max(), Some(7), "{twice:?}");
        assert!(gates(r"\w+").is_none());
        // Two-byte word starts of many lowercase pairs ("de", "ca", ...): the
        // literal the pattern requires instead. Uppercase pairs stay word starts.
        assert_eq!(kinds(r"\b[0-9a-f]{32}-us\d\b"), Some(vec![]));
        assert_eq!(
            gates(r"\b[0-9a-f]{32}-us\d\b").map(|g| g[0][0].clone()),
            Some(lits(&["-us"]))
        );
        assert!(kinds(r"\b[A-Z]{2}\d{2}[A-Z0-9]{12}\b").is_some_and(|k| k.iter().all(|&w| w)));
        assert!(kinds(r"\b[a-z]\d{2}-x").is_some_and(|k| k.iter().all(|&w| w)));
    }
}
