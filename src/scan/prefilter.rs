//! Patterns found through their literal prefixes.
//!
//! Every match of a pattern whose prefixes form a finite set of literals starts
//! with one of them (`regex-syntax`'s literal extraction), so one Aho-Corasick pass
//! over the prefixes of all the patterns says where a match can start, and an
//! anchored search at each of those places (`regex-automata`) confirms it, with the
//! whole text as context for look-behind (`\b`). A text with no candidate costs the
//! one pass; a pattern's regex runs only where one of its prefixes occurs.
//!
//! The matches are the ones `Regex::find_iter` finds over the whole text (leftmost
//! first, non-overlapping): no match starts before a pattern's first candidate, and
//! the anchored search at a start prefers what the unanchored one prefers.
//!
//! A pattern whose every match starts at a word boundary with a literal that
//! starts with a letter or digit is not searched for at all: its literals are
//! keyed by the word they start with, and the text's words are looked up in one
//! pass over them (a table probe per word, no automaton per byte).
//!
//! Patterns without such a set (an unbounded class first) or whose prefixes occur
//! everywhere (a space) are searched in full, together, by one `RegexSet`. A
//! pattern with more candidates than [`CANDIDATES`] in one text is searched in full
//! too (one linear pass instead of many anchored ones): dense adversarial text
//! stays linear.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex_automata::{Anchored, Input, meta};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind, Look};

/// Candidates kept per pattern and text; past this the pattern is searched in full.
pub(crate) const CANDIDATES: usize = 64;

/// How one pattern is searched.
struct Pattern {
    /// The pattern as the caller compiled it (searches in full).
    regex: regex::Regex,
    /// The same pattern for anchored searches, when it has usable prefixes.
    anchored: Option<meta::Regex>,
}

/// A set of patterns searched through their literal prefixes; see the module docs.
pub(crate) struct Prefixed {
    patterns: Vec<Pattern>,
    /// The prefixes looked up by word.
    words: WordIndex,
    /// The other usable prefixes, one automaton.
    ac: Option<AhoCorasick>,
    /// For each literal of `ac`: the patterns it begins.
    owners: Vec<Vec<u32>>,
    /// The patterns searched in full, and their set.
    full: Vec<usize>,
    full_set: Option<regex::RegexSet>,
}

impl std::fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("patterns", &self.patterns.len())
            .field("literals", &self.owners.len())
            .field("word_literals", &self.words.len())
            .field("full", &self.full)
            .finish()
    }
}

/// A literal every match of a branch of a pattern starts with, and whether it is
/// looked up by word (the branch starts at a word boundary and the literal, of two
/// bytes or more, with an ASCII letter or digit) or searched for.
type Prefix = (bool, Vec<u8>);

/// Up to eight bytes of `hay` from `at`, little-endian, zero-padded.
fn load(hay: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    match hay.get(at..at + 8) {
        Some(w) => b.copy_from_slice(w),
        None => {
            let rest = &hay[at.min(hay.len())..];
            b[..rest.len()].copy_from_slice(rest);
        }
    }
    u64::from_le_bytes(b)
}

/// Words are bucketed by their first three bytes (zero-padded when shorter).
const HEAD: usize = 3;
const BUCKET_BITS: u32 = 16;

/// The bucket of a word whose first bytes are `bits` and whose length is `len`.
fn bucket(bits: u64, len: usize) -> usize {
    let head = bits & ((1u64 << (8 * len.min(HEAD))) - 1);
    (head.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BUCKET_BITS)) as usize
}

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Literals looked up by the word they start with: a table of buckets by the
/// word's first bytes, each holding the first eight bytes of the literals a word
/// with those bytes can start (compared as one word of memory).
struct WordIndex {
    /// Bucket `b` holds `entries[offsets[b]..offsets[b + 1]]`.
    offsets: Vec<u32>,
    /// (first eight bytes, their mask, pattern).
    entries: Vec<(u64, u64, u32)>,
    /// (bucket, entry) while building.
    pending: Vec<(usize, (u64, u64, u32))>,
}

impl WordIndex {
    fn new() -> Self {
        Self {
            offsets: Vec::new(),
            entries: Vec::new(),
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
        let head = literal[..w.min(HEAD)].to_vec();
        // The text's word is this literal's word, or (when the literal ends inside
        // it) any longer word that starts with it.
        self.pending
            .push((bucket(load(&head, 0), head.len()), entry));
        if w == literal.len() && w < HEAD {
            let mut heads = vec![head];
            while heads[0].len() < HEAD {
                heads = heads
                    .iter()
                    .flat_map(|h| {
                        ALNUM.iter().map(move |&c| {
                            let mut h = h.clone();
                            h.push(c);
                            h
                        })
                    })
                    .collect();
                for h in &heads {
                    self.pending.push((bucket(load(h, 0), h.len()), entry));
                }
            }
        }
    }

    fn seal(&mut self) {
        self.pending.sort_unstable();
        self.pending.dedup();
        self.offsets = vec![0; (1 << BUCKET_BITS) + 1];
        for &(b, _) in &self.pending {
            self.offsets[b + 1] += 1;
        }
        for b in 0..1 << BUCKET_BITS {
            self.offsets[b + 1] += self.offsets[b];
        }
        self.entries = self.pending.iter().map(|&(_, e)| e).collect();
        self.pending = Vec::new();
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Calls `f(pattern, start)` for each word of `hay` (a run of ASCII letters and
    /// digits) that starts with the first eight bytes of a pattern's literal.
    fn search(&self, hay: &[u8], mut f: impl FnMut(u32, usize)) {
        if self.entries.is_empty() {
            return;
        }
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
            let bits = load(hay, s);
            let b = bucket(bits, i - s);
            let (from, to) = (self.offsets[b] as usize, self.offsets[b + 1] as usize);
            let mut last = u32::MAX;
            for &(stem, mask, pattern) in &self.entries[from..to] {
                if bits & mask == stem && pattern != last {
                    f(pattern, s);
                    last = pattern;
                }
            }
        }
    }
}

/// The prefixes of `pattern`'s top-level branches, when every match of each
/// starts with one of a finite set of literals and none of those searched for
/// (rather than looked up by word) is frequent in ordinary text (empty, or a
/// single space, letter or digit).
fn prefixes(pattern: &str) -> Option<Vec<Prefix>> {
    let hir = regex_syntax::ParserBuilder::new()
        .nest_limit(64)
        .build()
        .parse(pattern)
        .ok()?;
    // Top-level branches, with what they share written out (the parser factors a
    // common `\b` out of `\ba|\bb`).
    let branches: Vec<Hir> = match hir.kind() {
        HirKind::Alternation(bs) => bs.clone(),
        HirKind::Concat(parts) => {
            match parts
                .iter()
                .position(|h| !matches!(h.kind(), HirKind::Look(_)))
            {
                Some(k) => match parts[k].kind() {
                    HirKind::Alternation(bs) => bs
                        .iter()
                        .map(|b| {
                            let mut v = parts[..k].to_vec();
                            v.push(b.clone());
                            v.extend_from_slice(&parts[k + 1..]);
                            Hir::concat(v)
                        })
                        .collect(),
                    _ => vec![hir.clone()],
                },
                None => vec![hir.clone()],
            }
        }
        _ => vec![hir.clone()],
    };
    let frequent = |l: &[u8]| match l {
        [] => true,
        [b] => b.is_ascii_alphanumeric() || b.is_ascii_whitespace(),
        [a, _] => a.is_ascii_whitespace(),
        _ => false,
    };
    let mut out = Vec::new();
    for branch in &branches {
        let seq = Extractor::new()
            .kind(ExtractKind::Prefix)
            .limit_total(2048)
            .extract(branch);
        let lits = seq.literals()?;
        if lits.is_empty() {
            return None;
        }
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
        let by_word = at_word
            && lits.iter().all(|l| {
                let l = l.as_bytes();
                l.len() >= 2 && l[0].is_ascii_alphanumeric()
            });
        if !by_word && lits.iter().any(|l| frequent(l.as_bytes())) {
            return None;
        }
        out.extend(lits.iter().map(|l| (by_word, l.as_bytes().to_vec())));
    }
    Some(out)
}

impl Prefixed {
    /// Compiles the search for `regexes` (the caller's compiled patterns; their
    /// indices are the pattern numbers reported). `limit` bounds each anchored
    /// regex's compiled size and lazy-DFA cache, as the caller bounded its own.
    pub(crate) fn new(regexes: Vec<regex::Regex>, limit: usize) -> Self {
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<u32>> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let mut patterns = Vec::with_capacity(regexes.len());
        let mut full = Vec::new();
        let mut words = WordIndex::new();
        for (i, regex) in regexes.into_iter().enumerate() {
            let anchored = prefixes(regex.as_str()).and_then(|found| {
                let re = meta::Regex::builder()
                    .syntax(regex_automata::util::syntax::Config::new().nest_limit(64))
                    .configure(
                        meta::Config::new()
                            .nfa_size_limit(Some(limit))
                            .hybrid_cache_capacity(limit)
                            .dfa_size_limit(Some(limit)),
                    )
                    .build(regex.as_str())
                    .ok()?;
                for (by_word, l) in found {
                    if by_word {
                        words.add(&l, i as u32);
                        continue;
                    }
                    let k = *index.entry(l.clone()).or_insert_with(|| {
                        literals.push(l);
                        owners.push(Vec::new());
                        owners.len() - 1
                    });
                    owners[k].push(i as u32);
                }
                Some(re)
            });
            if anchored.is_none() {
                full.push(i);
            }
            patterns.push(Pattern { regex, anchored });
        }
        let ac = (!literals.is_empty())
            .then(|| {
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&literals)
                    .ok()
            })
            .flatten();
        if ac.is_none() && !literals.is_empty() {
            // No automaton (it could not be built): every pattern in full.
            full = (0..patterns.len()).collect();
            owners.clear();
            words = WordIndex::new();
            for p in &mut patterns {
                p.anchored = None;
            }
        }
        words.seal();
        let full_set =
            regex::RegexSetBuilder::new(full.iter().map(|&i| patterns[i].regex.as_str()))
                .size_limit(limit.max(1 << 26))
                .dfa_size_limit(limit.max(1 << 26))
                .nest_limit(64)
                .build()
                .ok()
                .filter(|_| !full.is_empty());
        Self {
            patterns,
            words,
            ac,
            owners,
            full,
            full_set,
        }
    }

    /// Calls `f(pattern, span)` for each match of each pattern in `hay`, pattern
    /// after pattern in ascending order, each pattern's matches in order as
    /// `find_iter` finds them; `f` returns whether it wants that pattern's next match.
    pub(crate) fn for_each_match(&self, hay: &str, mut f: impl FnMut(usize, Range<usize>) -> bool) {
        let n = self.patterns.len();
        // Per pattern: its candidate starts (up to CANDIDATES), or None when dense.
        let mut starts: Vec<Option<smallvec::SmallVec<[u32; 4]>>> =
            vec![Some(Default::default()); n];
        let mut any = vec![false; n];
        let mut candidate = |p: u32, at: usize| {
            let p = p as usize;
            any[p] = true;
            if let Some(s) = &mut starts[p] {
                if s.len() == CANDIDATES {
                    starts[p] = None;
                } else {
                    s.push(at as u32);
                }
            }
        };
        self.words.search(hay.as_bytes(), &mut candidate);
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(hay) {
                for &p in &self.owners[m.pattern().as_usize()] {
                    candidate(p, m.start());
                }
            }
        }
        let mut full_hit = vec![false; n];
        match &self.full_set {
            Some(set) => {
                for k in set.matches(hay).iter() {
                    full_hit[self.full[k]] = true;
                }
            }
            None => {
                for &i in &self.full {
                    full_hit[i] = true;
                }
            }
        }
        for (i, p) in self.patterns.iter().enumerate() {
            match (&p.anchored, &mut starts[i]) {
                (None, _) | (Some(_), None) => {
                    if p.anchored.is_none() && !full_hit[i] || p.anchored.is_some() && !any[i] {
                        continue;
                    }
                    let mut at = 0;
                    while let Some(m) = p.regex.find_at(hay, at) {
                        if !f(i, m.range()) {
                            break;
                        }
                        at = if m.is_empty() {
                            match hay[m.end()..].chars().next() {
                                Some(c) => m.end() + c.len_utf8(),
                                None => break,
                            }
                        } else {
                            m.end()
                        };
                    }
                }
                (Some(re), Some(s)) => {
                    s.sort_unstable();
                    s.dedup();
                    let mut from = 0;
                    for &start in s.iter() {
                        let start = start as usize;
                        if start < from {
                            continue;
                        }
                        let input = Input::new(hay).range(start..).anchored(Anchored::Yes);
                        if let Some(m) = re.find(input) {
                            if !f(i, m.range()) {
                                break;
                            }
                            from = m.end().max(start + 1);
                        }
                    }
                }
            }
        }
    }

    /// The first match of each pattern that matches, in pattern order (what
    /// `Regex::find` returns for each).
    pub(crate) fn first_matches(&self, hay: &str) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        self.for_each_match(hay, |i, m| {
            out.push((i, m));
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(regexes: &[regex::Regex], hay: &str) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        for (i, r) in regexes.iter().enumerate() {
            for m in r.find_iter(hay) {
                out.push((i, m.range()));
            }
        }
        out
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
        ];
        let regexes: Vec<regex::Regex> = patterns
            .iter()
            .map(|p| regex::Regex::new(p).unwrap())
            .collect();
        let set = Prefixed::new(regexes.clone(), 1 << 22);
        const WORDS: &[&str] = &[
            "ignore",
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
            }
            let mut ours = Vec::new();
            set.for_each_match(&hay, |i, m| {
                ours.push((i, m));
                true
            });
            assert_eq!(ours, reference(&regexes, &hay), "{hay:?}");
            for (i, _) in &ours {
                total[*i] += 1;
            }
            let first: Vec<(usize, Range<usize>)> = regexes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.find(&hay).map(|m| (i, m.range())))
                .collect();
            assert_eq!(set.first_matches(&hay), first, "{hay:?}");
        }
        // Every pattern matched somewhere: the comparison was not vacuous.
        assert!(total.iter().all(|&t| t > 3), "{total:?}");
    }

    #[test]
    fn frequent_or_unbounded_prefixes_are_searched_in_full() {
        let kinds = |p: &str| prefixes(p).map(|v| v.iter().map(|(w, _)| *w).collect::<Vec<bool>>());
        assert_eq!(kinds(r"\bignore\b"), Some(vec![true]));
        assert_eq!(kinds(r"\bignore\b|<\|"), Some(vec![true, false]));
        assert_eq!(kinds(r"ignore"), Some(vec![false]));
        assert!(prefixes(r"(?:^|\s)system:").is_none());
        assert!(prefixes(r"\w+@example").is_none());
        assert!(prefixes(r"a|bcd").is_none());
    }
}
