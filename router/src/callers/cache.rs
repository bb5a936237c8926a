//! A bounded cache of TokenReview answers (pure: the caller passes the time), keyed by the
//! token's SHA-256. Each entry lives until its own deadline; when the cache is full the oldest
//! entry goes, so a flood of distinct tokens costs the router a bounded amount of memory.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use super::token::TokenHash;

#[derive(Debug)]
pub struct ReviewCache<V> {
    capacity: usize,
    entries: HashMap<TokenHash, Entry<V>>,
    /// Insertion order: sequence number → key, oldest first.
    order: BTreeMap<u64, TokenHash>,
    next: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    until: Instant,
    seq: u64,
}

impl<V: Clone> ReviewCache<V> {
    /// An empty cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// The answer for `key` if it is still good at `now`; an expired one is dropped.
    pub fn get(&mut self, key: &TokenHash, now: Instant) -> Option<V> {
        let entry = self.entries.get(key)?;
        if now < entry.until {
            return Some(entry.value.clone());
        }
        self.remove(key);
        None
    }

    /// Keeps `value` for `key` until `until`, evicting the oldest entry when full.
    pub fn insert(&mut self, key: TokenHash, value: V, until: Instant) {
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, key);
        self.entries.insert(key, Entry { value, until, seq });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &TokenHash) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(i: u32) -> TokenHash {
        TokenHash::of(&format!("token-{i}"))
    }

    #[test]
    fn an_entry_is_kept_until_its_deadline() {
        let t0 = Instant::now();
        let mut c = ReviewCache::new(10);
        c.insert(key(1), "a", t0 + Duration::from_secs(5));
        assert_eq!(c.get(&key(1), t0), Some("a"));
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(4)), Some("a"));
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(5)), None);
        assert!(c.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn a_full_cache_evicts_the_oldest_entry() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        let mut c = ReviewCache::new(3);
        for i in 0..3 {
            c.insert(key(i), i, until);
        }
        // Re-inserting refreshes the position: 0 is now the newest.
        c.insert(key(0), 0, until);
        c.insert(key(3), 3, until);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&key(1), t0), None, "the oldest went");
        for i in [0, 2, 3] {
            assert_eq!(c.get(&key(i), t0), Some(i));
        }
        for i in 10..1000 {
            c.insert(key(i), i, until);
        }
        assert_eq!(c.len(), 3, "bounded whatever comes");
        assert_eq!(c.order.len(), 3);
    }
}
