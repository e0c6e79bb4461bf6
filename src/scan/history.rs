//! The scanner's cache of what it found in a conversation's earlier messages.
//!
//! A chat request carries the whole conversation so far: every message before the
//! newest was in the caller's previous request, and was scanned there. The cache
//! keeps what the scanner found in a message (usually nothing), keyed by the
//! SHA-256 digest of the caller's qualified id, whether the heuristics read it,
//! and the text, so the next request's copy of that message is not read again.
//! What the scanner finds in a message is a function of its text, but for
//! pseudonyms, which are numbered per request: with
//! [`Redaction::pseudonymize`](super::Redaction::pseudonymize) only the
//! heuristics' findings are kept, and credentials, personal data and smuggling are
//! looked for again.
//!
//! Sharded, each shard a map with first-in first-out eviction: a message evicted
//! is only read again. Entries hold findings (rule ids, spans, masked
//! replacements), never the text.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::finding::{Finding, Location};
use crate::principal::{CredentialKind, Principal};

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

/// Shards of the cache (a power of two).
const SHARDS: usize = 16;
/// A message whose heuristics found more than this is read again each time (an
/// attack's findings are few; this bounds an entry's memory).
const MAX_FINDINGS: usize = 16;

/// The key of a message: the SHA-256 digest of who sent it and what it says.
pub(crate) type Key = [u8; 32];

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Box<[Finding]>>,
    order: VecDeque<Key>,
}

pub(crate) struct HistoryCache {
    shards: Box<[Mutex<Shard>]>,
    /// Entries per shard, at most.
    per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HistoryCache {
    /// A cache of about `entries` messages; `None` for 0.
    pub(crate) fn new(entries: usize) -> Option<Self> {
        (entries > 0).then(|| Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: entries.div_ceil(SHARDS),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The key of `text` sent by `principal`, read with or without the
    /// heuristics; `None` for an anonymous caller (all anonymous callers are one
    /// principal: a hit would tell one of them what another sent).
    pub(crate) fn key(principal: &Principal, heuristics: bool, text: &str) -> Option<Key> {
        if principal.kind() == CredentialKind::Anonymous {
            return None;
        }
        let id = principal.qualified_id();
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        d.update(&(id.len() as u64).to_le_bytes());
        d.update(id.as_bytes());
        d.update(&[u8::from(heuristics)]);
        d.update(text.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(d.finish().as_ref());
        Some(key)
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        let s = &self.shards[usize::from(key[0]) & (SHARDS - 1)];
        // A panic while a shard was held left at worst an entry without its place
        // in the order: the map is still a cache of correct findings.
        s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the heuristics found in the message of `key`, at `at`, if it is cached.
    pub(crate) fn get(&self, key: &Key, at: Location, out: &mut Vec<Finding>) -> bool {
        let shard = self.shard(key);
        let Some(found) = shard.map.get(key) else {
            drop(shard);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        out.extend(found.iter().map(|f| f.clone().at(at)));
        drop(shard);
        self.hits.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Keeps what the heuristics found in the message of `key`.
    pub(crate) fn insert(&self, key: Key, found: &[Finding]) {
        if found.len() > MAX_FINDINGS {
            return;
        }
        let mut shard = self.shard(&key);
        if shard.map.contains_key(&key) {
            return;
        }
        while shard.order.len() >= self.per_shard {
            match shard.order.pop_front() {
                Some(old) => {
                    shard.map.remove(&old);
                }
                None => break,
            }
        }
        shard.map.insert(key, found.into());
        shard.order.push_back(key);
    }

    pub(crate) fn stats(&self) -> HistoryStats {
        HistoryStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Category, Severity};

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
    fn the_cache_keeps_at_most_its_size_and_evicts_the_oldest() {
        assert!(HistoryCache::new(0).is_none());
        let c = HistoryCache::new(64).unwrap();
        let p = Principal::builder("svc", CredentialKind::ApiKey).build();
        let keys: Vec<Key> = (0..2000)
            .map(|i| HistoryCache::key(&p, true, &format!("message {i}")).unwrap())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            c.insert(*k, &[finding(i)]);
            assert!(c.len() <= 64);
        }
        assert!(c.len() > 48, "{}", c.len());
        // The newest are there, with their findings at the place asked for.
        let mut out = Vec::new();
        assert!(c.get(&keys[1999], Location::Message(7), &mut out));
        assert_eq!(out[0].span(), 0..1999);
        assert_eq!(out[0].location(), Location::Message(7));
        // The oldest are gone.
        assert!(!c.get(&keys[0], Location::Message(0), &mut out));
        assert_eq!(c.stats(), HistoryStats { hits: 1, misses: 1 });
        // A message with many findings is read again each time.
        let many: Vec<Finding> = (0..=MAX_FINDINGS).map(finding).collect();
        let k = HistoryCache::key(&p, true, "many").unwrap();
        c.insert(k, &many);
        assert!(!c.get(&k, Location::Message(0), &mut out));
        c.insert(k, &many[..MAX_FINDINGS]);
        assert!(c.get(&k, Location::Message(0), &mut out));
    }

    #[test]
    fn keys_differ_by_caller_and_text_and_anonymous_has_none() {
        let a = Principal::builder("svc-a", CredentialKind::ApiKey).build();
        let b = Principal::builder("svc-b", CredentialKind::ApiKey).build();
        assert_ne!(
            HistoryCache::key(&a, true, "x"),
            HistoryCache::key(&b, true, "x")
        );
        assert_ne!(
            HistoryCache::key(&a, true, "x"),
            HistoryCache::key(&a, true, "y")
        );
        assert_eq!(
            HistoryCache::key(&a, true, "x"),
            HistoryCache::key(&a, true, "x")
        );
        assert_ne!(
            HistoryCache::key(&a, true, "x"),
            HistoryCache::key(&a, false, "x")
        );
        assert!(HistoryCache::key(&Principal::anonymous(), true, "x").is_none());
    }
}
