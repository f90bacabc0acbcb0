//! A small bounded memo for per-string results (user agents): most hits of a site come from a few
//! hundred distinct agents, so parsing each one once saves almost all the parsing work.
//!
//! Two generations per shard instead of a true LRU: new entries go into `hot`; when `hot` is full
//! it becomes `cold` (dropping the old `cold`), and an entry found in `cold` moves back to `hot`.
//! Everything used within the last generation survives, memory is bounded by
//! `2 × per_generation` entries per shard, and every operation is one hash lookup under a short
//! lock. Shards keep pipeline workers from queueing on one mutex.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 8;

pub(super) struct BoundedCache<V> {
    shards: [Mutex<Shard<V>>; SHARDS],
    per_generation: usize,
    hasher: RandomState,
}

struct Shard<V> {
    hot: HashMap<Box<str>, V>,
    cold: HashMap<Box<str>, V>,
}

impl<V: Clone> BoundedCache<V> {
    /// A cache holding at least `capacity / 2` and at most `capacity` entries once warm.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    hot: HashMap::new(),
                    cold: HashMap::new(),
                })
            }),
            per_generation: (capacity / SHARDS / 2).max(1),
            hasher: RandomState::new(),
        }
    }

    /// The cached value for `key`, or `make()`'s, which is then cached. `make` runs without the
    /// lock held, so two threads may compute the same value once each; both get equal results.
    pub(super) fn get_or_insert_with(&self, key: &str, make: impl FnOnce() -> V) -> V {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        {
            let mut guard = lock(shard);
            if let Some(value) = guard.hot.get(key) {
                return value.clone();
            }
            if let Some(value) = guard.cold.remove(key) {
                self.insert_hot(&mut guard, key, value.clone());
                return value;
            }
        }
        let value = make();
        self.insert_hot(&mut lock(shard), key, value.clone());
        value
    }

    fn insert_hot(&self, shard: &mut Shard<V>, key: &str, value: V) {
        if shard.hot.len() >= self.per_generation {
            shard.cold = std::mem::take(&mut shard.hot);
        }
        shard.hot.insert(key.into(), value);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = lock(s);
                s.hot.len() + s.cold.len()
            })
            .sum()
    }
}

/// A poisoned shard only means another thread panicked mid-insert; the maps are still valid.
fn lock<V>(shard: &Mutex<Shard<V>>) -> MutexGuard<'_, Shard<V>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn computes_each_key_once_while_it_stays_in_use() {
        let cache = BoundedCache::new(64);
        let calls = AtomicUsize::new(0);
        let make = |v: u32| {
            calls.fetch_add(1, Ordering::Relaxed);
            v
        };
        assert_eq!(cache.get_or_insert_with("a", || make(1)), 1);
        assert_eq!(cache.get_or_insert_with("a", || make(2)), 1);
        assert_eq!(cache.get_or_insert_with("b", || make(3)), 3);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn stays_bounded_and_keeps_recently_used_keys() {
        let cache = BoundedCache::new(64);
        cache.get_or_insert_with("keep", || 0_u32);
        for i in 0..10_000_u32 {
            cache.get_or_insert_with(&i.to_string(), || i);
            // A key in steady use is promoted back to `hot` before its generation is dropped.
            assert_eq!(cache.get_or_insert_with("keep", || u32::MAX), 0);
        }
        assert!(cache.len() <= 64, "{} entries", cache.len());
    }
}
