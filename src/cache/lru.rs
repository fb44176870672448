//! The entries: orders by `order_uid`, bounded in number and bytes, the least recently
//! used evicted first. A hit stamps its entry under the shared lock (an atomic use
//! stamp); only eviction, under the exclusive lock, looks at the stamps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::entry::CachedOrder;
use crate::model::Change;

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

    /// Fills an empty cache at once: each order with when it was kept, given oldest
    /// first. The age index is built in one go from the entries kept (an id given twice
    /// keeps its later order), and then the oldest are evicted until the bounds hold.
    /// Into a cache that holds entries, each is put in turn. Returns how many were
    /// evicted.
    pub(super) fn fill(&mut self, orders: Vec<(i64, Arc<CachedOrder>)>) -> usize {
        self.map.reserve(orders.len().min(self.max_orders));
        if !self.map.is_empty() {
            return orders.into_iter().map(|(kept_at, order)| self.put(order, kept_at)).sum();
        }
        // The age index in the order the entries go in, so already sorted: the tree is
        // built from it in one pass, where the map's order would need a sort.
        let mut by_age = Vec::with_capacity(orders.len());
        let mut replaced = Vec::new();
        for (kept_at, value) in orders {
            let tick = self.tick();
            let key = value.uid.clone();
            self.bytes += value.size();
            by_age.push((tick, key.clone()));
            let entry = Entry { value, last_used: AtomicU64::new(tick), indexed_at: tick, kept_at };
            if let Some(old) = self.map.insert(key, entry) {
                self.bytes -= old.value.size();
                replaced.push(old.indexed_at);
            }
        }
        if !replaced.is_empty() {
            let replaced: std::collections::HashSet<u64> = replaced.into_iter().collect();
            by_age.retain(|(tick, _)| !replaced.contains(tick));
        }
        self.by_age = by_age.into_iter().collect();
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
