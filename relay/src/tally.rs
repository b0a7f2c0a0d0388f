//! Counting holders per key against a cap: connections per source address, opens in their
//! handshake per source address, channels a viewer token waits on. A holder gets a [`Slot`] and
//! gives its place back by dropping it, so no exit path of a connection can leak a count, and a
//! key whose count falls to zero is forgotten (the map holds only keys that hold something).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Holders per key, at most `cap` each.
#[derive(Debug)]
pub struct Tally<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Tally<K> {
    pub fn new(cap: usize) -> Self {
        Tally { counts: Arc::default(), cap }
    }

    /// A place for `key`, or `None` when it already holds `cap`.
    pub fn try_acquire(&self, key: K) -> Option<Slot<K>> {
        let mut counts = lock(&self.counts);
        if counts.get(&key).copied().unwrap_or(0) >= self.cap {
            return None;
        }
        *counts.entry(key.clone()).or_insert(0) += 1;
        Some(Slot { counts: self.counts.clone(), key })
    }

    /// Places `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        lock(&self.counts).get(key).copied().unwrap_or(0)
    }

    /// Keys holding at least one place.
    pub fn keys(&self) -> usize {
        lock(&self.counts).len()
    }
}

/// One place in a [`Tally`]; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(held) = counts.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

fn lock<K>(counts: &Mutex<HashMap<K, usize>>) -> MutexGuard<'_, HashMap<K, usize>> {
    // Every critical section is one map update that cannot panic half way.
    counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_cap_and_dropping_a_slot_gives_the_place_back() {
        let tally = Tally::new(2);
        let a1 = tally.try_acquire("a").unwrap();
        let _a2 = tally.try_acquire("a").unwrap();
        assert!(tally.try_acquire("a").is_none(), "a third place for the same key");
        let b = tally.try_acquire("b").expect("other keys are counted apart");
        assert_eq!((tally.held(&"a"), tally.held(&"b"), tally.keys()), (2, 1, 2));
        drop(a1);
        assert!(tally.try_acquire("a").is_some(), "the place came back");
        drop(b);
        assert_eq!((tally.held(&"b"), tally.keys()), (0, 1), "an empty key is forgotten");
    }
}
