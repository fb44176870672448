//! The entries: orders by `order_uid`, bounded in number and bytes, the least recently
//! used evicted first. A hit stamps its entry under the shared lock (an atomic use
//! stamp); only eviction, under the exclusive lock, looks at the stamps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::entry::CachedOrder;
use crate::model::Change;

mod fill;
pub use fill::Fill;

pub(super) struct Entry {
    pub(super) value: Arc<CachedOrder>,
    /// The use stamp when last read; readers update it under the shared lock.
    last_used: AtomicU64,
    /// The key under which `by_age` holds this entry: never after `last_used`.
    indexed_at: u64,
    /// When the entry was put in (`Clock::micros`), or for the warm-up's, when its order
    /// was stored: what `Limits::max_age` is measured from.
    pub(super) kept_at: i64,
}

pub(super) struct Lru {
    map: HashMap<Arc<str>, Entry>,
    /// Entries by a lower bound of their last use. Eviction takes the first, and if it
    /// was used since, files it again under that use: so the entry evicted is always the
    /// one least recently used, while a hit never needs the exclusive lock.
    by_age: BTreeMap<u64, Arc<str>>,
    bytes: usize,
    /// The order of uses; not time.
    uses: AtomicU64,
    max_orders: usize,
    max_bytes: usize,
}

impl Lru {
    pub(super) fn new(max_orders: usize, max_bytes: usize) -> Lru {
        Lru { map: HashMap::new(), by_age: BTreeMap::new(), bytes: 0, uses: AtomicU64::new(1), max_orders, max_bytes }
    }

    fn tick(&self) -> u64 {
        self.uses.fetch_add(1, Ordering::Relaxed)
    }

    /// The entry for `uid`, marked used.
    pub(super) fn get(&self, uid: &str) -> Option<&Entry> {
        let entry = self.map.get(uid)?;
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        Some(entry)
    }

    /// Whether `uid` is held, without marking it used.
    pub(super) fn contains(&self, uid: &str) -> bool {
        self.map.contains_key(uid)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every entry's id and version.
    pub(super) fn versions(&self) -> Vec<(Arc<str>, String)> {
        self.map.iter().map(|(k, e)| (k.clone(), e.value.version().to_string())).collect()
    }

    /// Puts `value` in as the most recently used, over any entry for its id, kept at
    /// `kept_at`. Returns how many entries were evicted to stay within the bounds.
    pub(super) fn put(&mut self, value: Arc<CachedOrder>, kept_at: i64) -> usize {
        let tick = self.tick();
        let key = value.uid.clone();
        self.remove(&key);
        self.bytes += value.size();
        self.by_age.insert(tick, key.clone());
        self.map.insert(key, Entry { value, last_used: AtomicU64::new(tick), indexed_at: tick, kept_at });
        self.evict()
    }

    /// Fills the cache with the warm-up's entries. Into an empty cache they go as they
    /// are, and then the oldest are evicted until the bounds hold; into a cache that holds
    /// entries, each is put in turn, oldest first. Returns how many were evicted.
    pub(super) fn fill(&mut self, fill: Fill) -> usize {
        let fill::Placed { mut map, by_age, bytes, next } = fill.finish();
        if !self.map.is_empty() {
            let puts = by_age.into_values().map(|key| {
                let entry = map.remove(&key).expect("by_age and map hold the same keys");
                (entry.kept_at, entry.value)
            });
            return puts.map(|(kept_at, value)| self.put(value, kept_at)).sum();
        }
        (self.map, self.by_age, self.bytes) = (map, by_age, bytes);
        let uses = self.uses.get_mut();
        *uses = (*uses).max(next);
        self.evict()
    }

    /// Drops each entry of another version than a change names. Returns how many
    /// changes named an entry of another version.
    pub(super) fn drop_other_versions(&mut self, changes: &[Change]) -> usize {
        let stale: Vec<&str> = changes
            .iter()
            .filter(|c| self.map.get(c.uid.as_str()).is_some_and(|e| e.value.version() != c.version))
            .map(|c| c.uid.as_str())
            .collect();
        for uid in &stale {
            self.remove(uid);
        }
        stale.len()
    }

    /// Drops each entry whose version is not the one `stored` gives (or that `stored`
    /// does not have). Returns how many were dropped.
    pub(super) fn keep_only(&mut self, stored: &HashMap<String, String>) -> usize {
        let stale: Vec<Arc<str>> = self
            .map
            .iter()
            .filter(|(k, e)| stored.get(&***k).is_none_or(|v| v != e.value.version()))
            .map(|(k, _)| k.clone())
            .collect();
        for uid in &stale {
            self.remove(uid);
        }
        stale.len()
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.map.remove(uid) {
            self.by_age.remove(&old.indexed_at);
            self.bytes -= old.value.size();
        }
    }

    /// Evicts the least recently used until the bounds hold; returns how many.
    fn evict(&mut self) -> usize {
        let mut evicted = 0;
        while self.map.len() > self.max_orders || self.bytes > self.max_bytes {
            let Some((tick, key)) = self.by_age.pop_first() else { break };
            let entry = self.map.get_mut(&key).expect("by_age and map hold the same keys");
            let used = entry.last_used.load(Ordering::Relaxed);
            if used > tick {
                entry.indexed_at = used;
                self.by_age.insert(used, key);
                continue;
            }
            let entry = self.map.remove(&key).expect("present");
            self.bytes -= entry.value.size();
            evicted += 1;
        }
        evicted
    }
}
