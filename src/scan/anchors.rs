//! The credential and personal-data anchors: every occurrence of any of them,
//! case-insensitively (ASCII), in one walk of a transition table of our own.
//!
//! The table is read off an `aho_corasick` DFA of the lowercased anchors (its
//! states, transitions and matches, through the `Automaton` trait), with a byte
//! map that sends an uppercase letter to its lowercase one's column: the text is
//! read as it is (no lowercased copy) and each byte costs two loads from memory
//! that stay in this loop. A text of [`STRIPED`] bytes or more is walked as
//! [`LANES`] stretches side by side (independent chains of loads: the processor
//! overlaps them).

use std::collections::HashMap;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind, StartKind};
use smallvec::SmallVec;

/// Texts from this long are walked as [`LANES`] stretches side by side.
pub(crate) const STRIPED: usize = 256;
/// How many stretches.
const LANES: usize = 4;
/// The bit of a transition that says the state it leads to reports matches.
const MATCH: u32 = 1 << 31;
/// The start state (numbered first when the table is read off the DFA).
const START: u32 = 0;

/// What the lanes after the first found, kept to be reported after it.
type Kept = [SmallVec<[(usize, usize, usize); 16]>; LANES - 1];

/// The anchors' automaton; see the [module docs](self).
#[derive(Clone)]
pub(crate) struct Anchors {
    /// Each byte's column (an uppercase ASCII letter has its lowercase one's).
    classes: [u8; 256],
    /// Columns per state.
    stride: u32,
    /// `trans[s + column]` for state `s` (a multiple of `stride`): the next
    /// state, with [`MATCH`] set when it reports matches.
    trans: Vec<u32>,
    /// Per state (`s / stride`): the (pattern, length) of what it reports.
    matches: Vec<SmallVec<[(u32, u32); 2]>>,
    /// The longest anchor's length.
    longest: usize,
}

impl std::fmt::Debug for Anchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchors")
            .field("states", &self.matches.len())
            .field("columns", &self.stride)
            .finish_non_exhaustive()
    }
}

impl Anchors {
    /// The automaton of `anchors` (pattern `i` is `anchors[i]`, matched
    /// case-insensitively); `None` when it cannot be built.
    pub(crate) fn new(anchors: &[String]) -> Option<Self> {
        let lowered: Vec<Vec<u8>> = anchors
            .iter()
            .map(|a| a.as_bytes().to_ascii_lowercase())
            .collect();
        let dfa = aho_corasick::dfa::Builder::new()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .build(&lowered)
            .ok()?;
        let start = dfa.start_state(Anchored::No).ok()?;
        // A byte that occurs in no anchor moves every state as any other such byte
        // does: they share column 0. Each byte an anchor has gets its own.
        let mut used = [false; 256];
        for a in &lowered {
            for &b in a {
                used[usize::from(b)] = true;
            }
        }
        let mut column = [0u8; 256];
        let mut reps: Vec<Option<u8>> =
            vec![(0..=255u8).find(|b| !used[usize::from(*b)] && !b.is_ascii_uppercase())];
        for b in 0..=255u8 {
            if used[usize::from(b)] {
                column[usize::from(b)] = u8::try_from(reps.len()).ok()?;
                reps.push(Some(b));
            }
        }
        let mut classes = [0u8; 256];
        for b in 0..=255u8 {
            classes[usize::from(b)] = column[usize::from(b.to_ascii_lowercase())];
        }
        let stride = reps.len();
        // The states reachable from the start, numbered as found.
        let mut number: HashMap<usize, u32> = HashMap::new();
        let mut order: Vec<StateID> = vec![start];
        number.insert(start.as_usize(), 0);
        let mut trans: Vec<u32> = Vec::new();
        let mut matches = Vec::new();
        let mut i = 0;
        while let Some(&sid) = order.get(i) {
            i += 1;
            let mut m = SmallVec::new();
            if dfa.is_match(sid) {
                for k in 0..dfa.match_len(sid) {
                    let p = dfa.match_pattern(sid, k);
                    m.push((p.as_u32(), u32::try_from(dfa.pattern_len(p)).ok()?));
                }
            }
            matches.push(m);
            for rep in &reps {
                let next = match rep {
                    Some(b) => dfa.next_state(Anchored::No, sid, *b),
                    None => start,
                };
                if dfa.is_dead(next) {
                    return None;
                }
                let n = match number.get(&next.as_usize()) {
                    Some(&n) => n,
                    None => {
                        let n = u32::try_from(order.len()).ok()?;
                        number.insert(next.as_usize(), n);
                        order.push(next);
                        n
                    }
                };
                let s = n.checked_mul(u32::try_from(stride).ok()?)?;
                if s >= MATCH {
                    return None;
                }
                let flag = if dfa.is_match(next) { MATCH } else { 0 };
                trans.push(s | flag);
            }
        }
        Some(Self {
            classes,
            stride: u32::try_from(stride).ok()?,
            trans,
            matches,
            longest: lowered.iter().map(Vec::len).max().unwrap_or(0),
        })
    }

    /// One step from state `s` on byte `b`: the next state, and whether it
    /// reports matches.
    #[inline(always)]
    fn step(&self, s: u32, b: u8) -> u32 {
        self.trans[(s + u32::from(self.classes[usize::from(b)])) as usize]
    }

    /// Calls `f(pattern, start, end)` with what state `t` (a transition, its flag
    /// set) reports at `end`.
    #[inline(never)]
    fn report(&self, t: u32, end: usize, f: &mut impl FnMut(usize, usize, usize)) {
        for &(p, len) in &self.matches[((t & !MATCH) / self.stride) as usize] {
            f(p as usize, end - len as usize, end);
        }
    }

    /// Whether an anchor occurs in `hay` (ASCII case ignored): the walk stops at
    /// the first.
    pub(crate) fn any(&self, hay: &[u8]) -> bool {
        let mut s = START;
        for &b in hay {
            s = self.step(s, b);
            if s & MATCH != 0 {
                return true;
            }
        }
        false
    }

    /// Calls `f(pattern, start, end)` for every occurrence of an anchor in `hay`,
    /// ASCII case ignored, overlapping ones included, in the order of their ends
    /// (as `AhoCorasick::find_overlapping_iter` gives them over the lowercased text).
    ///
    /// A text of [`STRIPED`] bytes or more is cut into [`LANES`] stretches walked
    /// side by side, each but the first from the longest anchor's length before it
    /// (so that its state is exact where its stretch starts) and reporting only what
    /// ends in its stretch; the later stretches' matches are kept and reported in
    /// order after the first's.
    pub(crate) fn for_each(&self, hay: &[u8], mut f: impl FnMut(usize, usize, usize)) {
        if hay.len() < STRIPED {
            let mut s = START;
            for (i, &b) in hay.iter().enumerate() {
                let t = self.step(s, b);
                if t & MATCH != 0 {
                    self.report(t, i + 1, &mut f);
                }
                s = t & !MATCH;
            }
            return;
        }
        let part = hay.len() / LANES;
        // Lane k reads hay[from[k]..to[k]] and reports ends past bound[k].
        let mut bound = [0usize; LANES];
        let mut from = [0usize; LANES];
        let mut to = [0usize; LANES];
        for k in 0..LANES {
            bound[k] = k * part;
            from[k] = bound[k].saturating_sub(self.longest);
            to[k] = if k + 1 == LANES {
                hay.len()
            } else {
                (k + 1) * part
            };
        }
        let common = (0..LANES).map(|k| to[k] - from[k]).min().unwrap_or(0);
        let mut later: Kept = Default::default();
        let mut s = [START; LANES];
        let lanes: [&[u8]; LANES] = std::array::from_fn(|k| &hay[from[k]..from[k] + common]);
        #[allow(clippy::needless_range_loop)] // the same index into every lane
        for i in 0..common {
            let t: [u32; LANES] = std::array::from_fn(|k| self.step(s[k], lanes[k][i]));
            if t.iter().fold(0, |a, b| a | b) & MATCH != 0 {
                for k in 0..LANES {
                    if t[k] & MATCH != 0 {
                        self.lane_report(k, t[k], from[k] + i + 1, &bound, &mut later, &mut f);
                    }
                }
            }
            s = std::array::from_fn(|k| t[k] & !MATCH);
        }
        // What each lane has left (the longer ones).
        for k in 0..LANES {
            let mut st = s[k];
            for (i, &b) in hay[from[k] + common..to[k]].iter().enumerate() {
                let t = self.step(st, b);
                if t & MATCH != 0 {
                    self.lane_report(k, t, from[k] + common + i + 1, &bound, &mut later, &mut f);
                }
                st = t & !MATCH;
            }
        }
        for lane in later {
            for (p, s, e) in lane {
                f(p, s, e);
            }
        }
    }

    /// Reports (lane 0) or keeps (the others, when past their bound) what
    /// transition `t` of lane `k` reports at `end`.
    #[inline(never)]
    fn lane_report(
        &self,
        k: usize,
        t: u32,
        end: usize,
        bound: &[usize; LANES],
        later: &mut Kept,
        f: &mut impl FnMut(usize, usize, usize),
    ) {
        if k == 0 {
            self.report(t, end, f);
        } else if end > bound[k] {
            self.report(t, end, &mut |p, s, e| later[k - 1].push((p, s, e)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(anchors: &[String], hay: &[u8]) -> Vec<(usize, usize, usize)> {
        let ac = aho_corasick::AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(anchors.iter().map(|a| a.to_ascii_lowercase()))
            .unwrap();
        ac.find_overlapping_iter(hay.to_ascii_lowercase().as_slice())
            .map(|m| (m.pattern().as_usize(), m.start(), m.end()))
            .collect()
    }

    fn walk(set: &Anchors, hay: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut got = Vec::new();
        set.for_each(hay, |p, s, e| got.push((p, s, e)));
        got
    }

    /// The table finds what Aho-Corasick's overlapping search finds over the
    /// lowercased text, in the same order: on generated texts in mixed case, and
    /// with every anchor across every lane's bound, around the striping length.
    #[test]
    fn finds_what_overlapping_search_finds() {
        let anchors: Vec<String> = crate::scan::secrets::builtin_anchors();
        let set = Anchors::new(&anchors).unwrap();
        let mut texts: Vec<Vec<u8>> =
            crate::scan::testgen::strings(b"sK-Ant_ApikeYtoenpwd:/.= \xc3\xa9", 1200, 600)
                .collect();
        texts.push(b"sk-ant-API_KEY Token ".repeat(40));
        for a in &anchors {
            for len in [STRIPED, STRIPED + 1, STRIPED + 3, 301, 1030] {
                let part = len / LANES;
                for k in 1..LANES {
                    let bound = k * part;
                    for at in bound.saturating_sub(a.len())..=bound {
                        let mut t = vec![b'x'; len];
                        t[at..at + a.len()].copy_from_slice(a.to_ascii_uppercase().as_bytes());
                        texts.push(t);
                    }
                }
            }
        }
        let mut total = 0;
        for t in &texts {
            let got = walk(&set, t);
            assert_eq!(
                got,
                reference(&anchors, t),
                "{}",
                String::from_utf8_lossy(t)
            );
            total += got.len();
        }
        assert!(total > 20_000, "{total}");
    }

    /// Anchors with bytes outside ASCII, and every byte value around them.
    #[test]
    fn any_byte() {
        let anchors = vec!["é:".to_owned(), "ab".to_owned(), "\u{7f}x".to_owned()];
        let set = Anchors::new(&anchors).unwrap();
        let mut t: Vec<u8> = (0..=255u8).collect();
        t.extend_from_slice("Abé:AB\u{7f}X".as_bytes());
        t.extend((0..=255u8).rev());
        for n in 0..t.len() {
            assert_eq!(walk(&set, &t[..n]), reference(&anchors, &t[..n]));
        }
        let long = t.repeat(3);
        assert_eq!(walk(&set, &long), reference(&anchors, &long));
        assert!(!walk(&set, &long).is_empty());
    }
}
