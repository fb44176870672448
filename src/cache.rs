//! The in-memory copy of stored orders that the HTTP workers read from: each order's
//! JSON already serialized, bounded by a number of orders and of bytes, least recently
//! used out first. A miss reads PostgreSQL once however many requests wait for it, and
//! an id that does not exist is remembered briefly.
//!
//! It only ever holds what PostgreSQL has committed: the consumer publishes after each
//! commit, and the miss path inserts only what it read from the database, never over a
//! newer version the consumer published meanwhile. Locks are held for map operations,
//! never across IO, SQL or rendering.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use prometheus::IntCounter;

use crate::model::{Encoded, Order};

/// An order as the HTTP side sends it.
#[derive(Debug)]
pub struct CachedOrder {
    pub uid: String,
    pub json: Arc<[u8]>,
    /// A strong validator: changes exactly when the JSON does.
    pub etag: String,
}

impl CachedOrder {
    pub fn new(encoded: &Encoded) -> CachedOrder {
        let mut etag = String::with_capacity(26);
        etag.push('"');
        for b in &encoded.sha256[..12] {
            etag.push_str(&format!("{b:02x}"));
        }
        etag.push('"');
        CachedOrder { uid: encoded.order.order_uid.clone(), json: encoded.json.clone(), etag }
    }

    /// What an entry is charged against `max_bytes`: its JSON, its key and validator,
    /// and a fixed allowance for the map entry and its bookkeeping.
    fn size(&self) -> usize {
        const ENTRY_OVERHEAD: usize = 160;
        self.json.len() + 2 * self.uid.len() + self.etag.len() + ENTRY_OVERHEAD
    }
}

/// Counters, for `/metrics` and the benchmarks.
pub struct Stats {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub negative_hits: IntCounter,
    pub db_reads: IntCounter,
    pub evictions: IntCounter,
}

impl Default for Stats {
    fn default() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Stats {
            hits: counter("orders_cache_hits_total", "Order lookups answered from the cache."),
            misses: counter("orders_cache_misses_total", "Order lookups the cache could not answer."),
            negative_hits: counter(
                "orders_cache_negative_hits_total",
                "Misses answered 404 from the memory of unknown ids.",
            ),
            db_reads: counter(
                "orders_cache_db_reads_total",
                "Misses that read PostgreSQL (one per id, however many waited).",
            ),
            evictions: counter("orders_cache_evictions_total", "Orders evicted to keep within the bounds."),
        }
    }
}

pub struct Limits {
    pub max_orders: usize,
    pub max_bytes: usize,
    /// How long an id PostgreSQL does not have is answered "not found" without asking
    /// again. Zero turns the memory off.
    pub negative_ttl: Duration,
}

struct Entry {
    value: Arc<CachedOrder>,
    /// The clock when last read; readers update it under the read lock.
    last_used: AtomicU64,
    /// The key under which `by_age` holds this entry: never after `last_used`.
    indexed_at: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Arc<str>, Entry>,
    /// Entries by a lower bound of their last use. Eviction takes the first, and if it
    /// was used since, files it again under that use: so the entry evicted is always the
    /// one least recently used, while a hit never needs the write lock.
    by_age: BTreeMap<u64, Arc<str>>,
    bytes: usize,
}

/// A database read in progress for one uid; requests for the same uid wait on it.
#[derive(Default)]
struct Flight {
    result: Mutex<Option<Result<Option<Arc<CachedOrder>>, String>>>,
    done: Condvar,
    /// Set when the consumer publishes this uid during the read: the read's result may
    /// be older, so it is returned to its waiters but not remembered.
    superseded: AtomicBool,
}

pub struct Cache {
    inner: RwLock<Inner>,
    clock: AtomicU64,
    limits: Limits,
    negative: Mutex<HashMap<String, Instant>>,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    pub stats: Stats,
}

/// Most ids remembered as missing at once; past it, expired ones are dropped first.
const MAX_NEGATIVE: usize = 100_000;

impl Cache {
    pub fn new(limits: Limits) -> Cache {
        Cache {
            inner: RwLock::new(Inner::default()),
            clock: AtomicU64::new(1),
            limits,
            negative: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The cached order, marking it used. Counts nothing: `lookup` counts.
    fn get(&self, uid: &str) -> Option<Arc<CachedOrder>> {
        let inner = self.inner.read();
        let entry = inner.map.get(uid)?;
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        Some(entry.value.clone())
    }

    /// The consumer's write: orders PostgreSQL has just committed replace whatever the
    /// cache had for them, end any memory of their absence, and make reads in flight for
    /// them forget their (possibly older) result.
    pub fn publish<'a>(&self, orders: impl IntoIterator<Item = &'a Encoded>) {
        let fresh: Vec<Arc<CachedOrder>> = orders.into_iter().map(|e| Arc::new(CachedOrder::new(e))).collect();
        if fresh.is_empty() {
            return;
        }
        {
            let flights = self.flights.lock();
            for order in &fresh {
                if let Some(flight) = flights.get(&order.uid) {
                    flight.superseded.store(true, Ordering::SeqCst);
                }
            }
        }
        {
            let mut negative = self.negative.lock();
            if !negative.is_empty() {
                for order in &fresh {
                    negative.remove(&order.uid);
                }
            }
        }
        let mut inner = self.inner.write();
        for order in fresh {
            let tick = self.tick();
            self.put(&mut inner, order, tick);
        }
    }

    /// Fills the cache at start; `orders` newest first, so the newest are kept when
    /// they do not all fit.
    pub fn warm(&self, orders: Vec<Order>) {
        let fresh: Vec<Arc<CachedOrder>> =
            orders.into_iter().rev().map(|o| Arc::new(CachedOrder::new(&o.encode()))).collect();
        let mut inner = self.inner.write();
        for order in fresh {
            let tick = self.tick();
            self.put(&mut inner, order, tick);
        }
    }

    fn put(&self, inner: &mut Inner, value: Arc<CachedOrder>, tick: u64) {
        let key: Arc<str> = value.uid.as_str().into();
        if let Some(old) = inner.map.remove(&key) {
            inner.by_age.remove(&old.indexed_at);
            inner.bytes -= old.value.size();
        }
        inner.bytes += value.size();
        inner.by_age.insert(tick, key.clone());
        inner.map.insert(key, Entry { value, last_used: AtomicU64::new(tick), indexed_at: tick });
        self.evict(inner);
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.map.len() > self.limits.max_orders || inner.bytes > self.limits.max_bytes {
            let Some((tick, key)) = inner.by_age.pop_first() else { break };
            let entry = inner.map.get_mut(&key).expect("by_age and map hold the same keys");
            let used = entry.last_used.load(Ordering::Relaxed);
            if used > tick {
                entry.indexed_at = used;
                inner.by_age.insert(used, key);
                continue;
            }
            let entry = inner.map.remove(&key).expect("present");
            inner.bytes -= entry.value.size();
            self.stats.evictions.inc();
        }
    }

    /// The order for `uid`: from memory, or else from `load` (PostgreSQL). Concurrent
    /// lookups of one missing uid share one `load`. Found orders are kept; ids `load`
    /// does not find are remembered as missing for `negative_ttl`.
    pub fn lookup(
        &self,
        uid: &str,
        load: impl FnOnce() -> anyhow::Result<Option<Order>>,
    ) -> Result<Option<Arc<CachedOrder>>, String> {
        if let Some(hit) = self.get(uid) {
            self.stats.hits.inc();
            return Ok(Some(hit));
        }
        self.stats.misses.inc();
        if self.remembered_missing(uid) {
            self.stats.negative_hits.inc();
            return Ok(None);
        }
        let (flight, leader) = {
            let mut flights = self.flights.lock();
            match flights.get(uid) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Arc::new(Flight::default());
                    flights.insert(uid.to_string(), flight.clone());
                    (flight, true)
                }
            }
        };
        if !leader {
            let mut result = flight.result.lock();
            while result.is_none() {
                flight.done.wait(&mut result);
            }
            return result.clone().expect("set before notify");
        }

        self.stats.db_reads.inc();
        let result = match load() {
            Ok(Some(order)) => Ok(Some(Arc::new(CachedOrder::new(&order.encode())))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{e:#}")),
        };
        // Remember before the flight ends, so no request in between reads again.
        if !flight.superseded.load(Ordering::SeqCst) {
            match &result {
                Ok(Some(order)) => self.insert_if_absent(order.clone()),
                Ok(None) => self.remember_missing(uid),
                Err(_) => {}
            }
        }
        self.flights.lock().remove(uid);
        *flight.result.lock() = Some(result.clone());
        flight.done.notify_all();
        result
    }

    /// The miss path's write: never over an entry the consumer published meanwhile.
    fn insert_if_absent(&self, value: Arc<CachedOrder>) {
        let mut inner = self.inner.write();
        if !inner.map.contains_key(value.uid.as_str()) {
            let tick = self.tick();
            self.put(&mut inner, value, tick);
        }
    }

    fn remembered_missing(&self, uid: &str) -> bool {
        let mut negative = self.negative.lock();
        match negative.get(uid) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                negative.remove(uid);
                false
            }
            None => false,
        }
    }

    fn remember_missing(&self, uid: &str) {
        if self.limits.negative_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut negative = self.negative.lock();
        if negative.len() >= MAX_NEGATIVE {
            negative.retain(|_, until| *until > now);
            if negative.len() >= MAX_NEGATIVE {
                negative.clear();
            }
        }
        negative.insert(uid.to_string(), now + self.limits.negative_ttl);
    }

    pub fn len(&self) -> usize {
        self.inner.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.inner.read().bytes
    }

    /// Whether `uid` is held, without marking it used.
    pub fn contains(&self, uid: &str) -> bool {
        self.inner.read().map.contains_key(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn order(uid: &str) -> Order {
        let mut o = crate::model::decode(Some(include_bytes!("../demo/model.json")), &Default::default()).unwrap();
        o.order_uid = uid.to_string();
        o.payment.transaction = uid.to_string();
        o
    }

    fn enc(uid: &str) -> Encoded {
        order(uid).encode()
    }

    fn cache(max_orders: usize) -> Cache {
        Cache::new(Limits { max_orders, max_bytes: usize::MAX, negative_ttl: Duration::from_secs(60) })
    }

    fn never() -> anyhow::Result<Option<Order>> {
        panic!("the database must not be read")
    }

    fn hit(cache: &Cache, uid: &str) -> Option<Arc<CachedOrder>> {
        cache.lookup(uid, never).unwrap()
    }

    #[test]
    fn published_order_is_served_as_its_json() {
        let c = cache(10);
        c.publish(&[enc("a")]);
        let got = hit(&c, "a").unwrap();
        assert_eq!(&got.json[..], order("a").to_json().as_slice());
        assert_eq!(got.etag.len(), 26);
        assert_eq!(c.stats.hits.get(), 1);
    }

    #[test]
    fn newer_version_replaces_older_and_changes_the_etag() {
        let c = cache(10);
        c.publish(&[enc("a")]);
        let first = hit(&c, "a").unwrap();
        let mut changed = order("a");
        changed.delivery.city = "Haifa".into();
        c.publish(&[changed.encode()]);
        let second = hit(&c, "a").unwrap();
        assert_ne!(first.etag, second.etag);
        assert!(std::str::from_utf8(&second.json).unwrap().contains("\"city\":\"Haifa\""));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn least_recently_used_goes_first() {
        let c = cache(3);
        c.publish(&[enc("a"), enc("b"), enc("c")]);
        hit(&c, "a");
        c.publish(&[enc("d")]);
        assert!(c.contains("a") && c.contains("c") && c.contains("d"));
        assert!(!c.contains("b"));
        hit(&c, "c");
        c.publish(&[enc("e")]);
        assert!(!c.contains("a"));
        assert_eq!(c.len(), 3);
        assert_eq!(c.stats.evictions.get(), 2);
    }

    #[test]
    fn byte_bound_holds() {
        let one = CachedOrder::new(&enc("a")).size();
        let c = Cache::new(Limits { max_orders: 100, max_bytes: one * 2 + one / 2, negative_ttl: Duration::ZERO });
        c.publish(&[enc("a"), enc("b"), enc("c")]);
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= one * 2 + one / 2);
        assert!(!c.contains("a"));
    }

    #[test]
    fn warm_keeps_the_newest_when_they_do_not_all_fit() {
        let c = cache(2);
        c.warm(vec![order("newest"), order("middle"), order("oldest")]);
        assert!(c.contains("newest") && c.contains("middle") && !c.contains("oldest"));
    }

    #[test]
    fn miss_reads_once_then_serves_from_memory() {
        let c = cache(10);
        let got = c.lookup("a", || Ok(Some(order("a")))).unwrap().unwrap();
        assert_eq!(got.uid, "a");
        assert_eq!(hit(&c, "a").unwrap().uid, "a");
        assert_eq!(c.stats.db_reads.get(), 1);
    }

    #[test]
    fn unknown_id_is_remembered_until_the_consumer_stores_it() {
        let c = cache(10);
        assert!(c.lookup("x", || Ok(None)).unwrap().is_none());
        assert!(c.lookup("x", never).unwrap().is_none());
        assert_eq!(c.stats.negative_hits.get(), 1);
        c.publish(&[enc("x")]);
        assert_eq!(hit(&c, "x").unwrap().uid, "x");
    }

    #[test]
    fn database_errors_are_not_remembered() {
        let c = cache(10);
        assert_eq!(c.lookup("x", || Err(anyhow::anyhow!("down"))).unwrap_err(), "down");
        assert!(c.lookup("x", || Ok(None)).unwrap().is_none());
        assert_eq!(c.stats.db_reads.get(), 2);
    }

    #[test]
    fn concurrent_misses_for_one_uid_read_the_database_once() {
        let c = Arc::new(cache(10));
        let loads = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (c, loads, start) = (c.clone(), loads.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    c.lookup("slow", || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        Ok(Some(order("slow")))
                    })
                    .unwrap()
                    .unwrap()
                    .uid
                    .clone()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), "slow");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_read_overtaken_by_the_consumer_is_not_kept() {
        let c = cache(10);
        let mut newer = order("a");
        newer.delivery.city = "Newer".into();
        let got = c
            .lookup("a", || {
                // The consumer commits and publishes a newer version while we read.
                c.publish(&[newer.clone().encode()]);
                Ok(Some(order("a")))
            })
            .unwrap()
            .unwrap();
        assert!(!std::str::from_utf8(&got.json).unwrap().contains("Newer"));
        assert!(std::str::from_utf8(&hit(&c, "a").unwrap().json).unwrap().contains("Newer"));
    }
}
