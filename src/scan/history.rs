//! The scanner's cache of what it found in a conversation's earlier messages.
//!
//! A chat request carries the whole conversation so far: every message before the
//! newest was in the caller's previous request, and was scanned there. The cache
//! keeps what the scanner found in a message (usually nothing), keyed by the
//! SHA-256 digest of the caller's qualified id, whether the heuristics read it,
//! and the text, so the next request's copy of that message is not read again.
//! What the scanner finds in a message is a function of its text; pseudonyms,
//! numbered per request, are given again to a served message's values (read from
//! the text at the findings' spans) in the order a scan gives them.
//!
//! Kept in a [`Fifo`]: a message evicted is only read again. Entries hold findings
//! (rule ids, spans, masked replacements), never the text.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::{Fifo, Key};
use crate::finding::{Finding, Location};

/// How a scanner's cache of earlier messages has served
/// ([`Scanner::history_stats`](super::Scanner::history_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryStats {
    /// Earlier messages served from the cache (not read again).
    pub hits: u64,
    /// Earlier messages looked up and not found (read, and kept).
    pub misses: u64,
}

/// A message whose scan found more than this is read again each time (an
/// attack's findings are few; this bounds an entry's memory).
const MAX_FINDINGS: usize = 16;

pub(crate) struct HistoryCache {
    map: Fifo<Box<[Finding]>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HistoryCache {
    /// A cache of about `entries` messages; `None` for 0.
    pub(crate) fn new(entries: usize) -> Option<Self> {
        Fifo::new(entries).map(|map| Self {
            map,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The key of `text` sent by `principal`, read with or without the
    /// heuristics; `None` for an anonymous caller.
    pub(crate) fn key(principal: &crate::Principal, heuristics: bool, text: &str) -> Option<Key> {
        crate::cache::key(principal, u8::from(heuristics), text)
    }

    /// What the scan found in the message of `key`, at `at`, if it is cached.
    pub(crate) fn get(&self, key: &Key, at: Location, out: &mut Vec<Finding>) -> bool {
        let hit = self
            .map
            .with(key, |found| {
                out.extend(found.iter().map(|f| f.clone().at(at)))
            })
            .is_some();
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Keeps what the scan found in the message of `key`.
    pub(crate) fn insert(&self, key: Key, found: &[Finding]) {
        if found.len() <= MAX_FINDINGS {
            self.map.insert(key, found.into());
        }
    }

    pub(crate) fn stats(&self) -> HistoryStats {
        HistoryStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Category, Severity};
    use crate::principal::{CredentialKind, Principal};

    fn finding(i: usize) -> Finding {
        Finding::new(
            "injection.test",
            Category::PromptInjection,
            Severity::High,
            Location::Message(0),
            0..i,
        )
    }

    #[test]
    fn hits_are_served_at_their_place_and_many_findings_are_not_kept() {
        let c = HistoryCache::new(64).unwrap();
        let p = Principal::builder("svc", CredentialKind::ApiKey).build();
        let k = HistoryCache::key(&p, true, "one").unwrap();
        c.insert(k, &[finding(3)]);
        let mut out = Vec::new();
        assert!(c.get(&k, Location::Message(7), &mut out));
        assert_eq!(out[0].span(), 0..3);
        assert_eq!(out[0].location(), Location::Message(7));
        assert!(!c.get(
            &HistoryCache::key(&p, false, "one").unwrap(),
            Location::Message(0),
            &mut out
        ));
        assert_eq!(c.stats(), HistoryStats { hits: 1, misses: 1 });
        // A message with many findings is read again each time.
        let many: Vec<Finding> = (0..=MAX_FINDINGS).map(finding).collect();
        let k = HistoryCache::key(&p, true, "many").unwrap();
        c.insert(k, &many);
        assert!(!c.get(&k, Location::Message(0), &mut out));
        c.insert(k, &many[..MAX_FINDINGS]);
        assert!(c.get(&k, Location::Message(0), &mut out));
    }
}
