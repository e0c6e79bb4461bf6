//! What the guard keeps of texts a caller sends again: a bounded map from the
//! SHA-256 digest of the caller and a text to what was made of the text (the
//! scanner's findings in a conversation's earlier messages, the answer
//! validator's shingles of a system prompt).
//!
//! Keys are per caller: a hit is faster than a miss, and a caller must not learn
//! from that what another sent. Anonymous callers (one principal) get no key.
//! Sharded, each shard a map with first-in first-out eviction: an entry evicted is
//! only made again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::principal::{CredentialKind, Principal};

/// The SHA-256 digest of a caller, what the text is read for, and the text.
pub(crate) type Key = [u8; 32];

/// The key of `text` sent by `principal`, read for `purpose` (each use of a text
/// its own); `None` for an anonymous caller.
pub(crate) fn key(principal: &Principal, purpose: u8, text: &str) -> Option<Key> {
    if principal.kind() == CredentialKind::Anonymous {
        return None;
    }
    let id = principal.qualified_id();
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    d.update(&(id.len() as u64).to_le_bytes());
    d.update(id.as_bytes());
    d.update(&[purpose]);
    d.update(text.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(d.finish().as_ref());
    Some(key)
}

/// Shards (a power of two).
const SHARDS: usize = 16;

struct Shard<V> {
    map: HashMap<Key, V>,
    order: VecDeque<Key>,
}

/// A bounded, sharded map from [`Key`]s, oldest entries evicted first.
pub(crate) struct Fifo<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    /// Entries per shard, at most.
    per_shard: usize,
}

impl<V> Fifo<V> {
    /// A map of about `entries` entries (at least one per shard); `None` for 0.
    pub(crate) fn new(entries: usize) -> Option<Self> {
        (entries > 0).then(|| Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard: entries.div_ceil(SHARDS),
        })
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard<V>> {
        // A panic while a shard was held left at worst an entry without its place
        // in the order: the map still holds correct entries.
        self.shards[usize::from(key[0]) & (SHARDS - 1)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `f` of the entry of `key`, if there is one.
    pub(crate) fn with<T>(&self, key: &Key, f: impl FnOnce(&V) -> T) -> Option<T> {
        self.shard(key).map.get(key).map(f)
    }

    /// Keeps `value` under `key` (an entry already there stays).
    pub(crate) fn insert(&self, key: Key, value: V) {
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
        shard.map.insert(key, value);
        shard.order.push_back(key);
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

    #[test]
    fn keys_differ_by_caller_purpose_and_text_and_anonymous_has_none() {
        let a = Principal::builder("svc-a", CredentialKind::ApiKey).build();
        let b = Principal::builder("svc-b", CredentialKind::ApiKey).build();
        assert_ne!(key(&a, 1, "x"), key(&b, 1, "x"));
        assert_ne!(key(&a, 1, "x"), key(&a, 1, "y"));
        assert_eq!(key(&a, 1, "x"), key(&a, 1, "x"));
        assert_ne!(key(&a, 1, "x"), key(&a, 0, "x"));
        assert!(key(&Principal::anonymous(), 1, "x").is_none());
    }

    #[test]
    fn the_map_keeps_at_most_its_size_and_evicts_the_oldest() {
        assert!(Fifo::<u32>::new(0).is_none());
        let c = Fifo::new(64).unwrap();
        let p = Principal::builder("svc", CredentialKind::ApiKey).build();
        let keys: Vec<Key> = (0..2000)
            .map(|i| key(&p, 0, &format!("message {i}")).unwrap())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            c.insert(*k, i);
            assert!(c.len() <= 64);
        }
        assert!(c.len() > 48, "{}", c.len());
        assert_eq!(c.with(&keys[1999], |v| *v), Some(1999));
        assert_eq!(c.with(&keys[0], |v| *v), None);
        // An entry already there stays.
        c.insert(keys[1999], 7);
        assert_eq!(c.with(&keys[1999], |v| *v), Some(1999));
    }
}
