//! The in-memory copy of stored orders that the HTTP workers read from: each order's
//! JSON already serialized, bounded by a number of orders and of bytes, least recently
//! used out first. A miss reads PostgreSQL once however many requests wait for it, and
//! an id that does not exist is remembered briefly.
//!
//! It only ever holds what PostgreSQL has committed: the consumer publishes after each
//! commit, and the miss path inserts only what it read from the database, never over a
//! newer version the consumer published meanwhile. Other instances' commits arrive as
//! notifications (`listener`): an entry whose version differs from the one notified is
//! dropped. While notifications may be missed (the listening connection lost, or silent
//! for longer than `SILENCE_LIMIT`), entries are not served as they are: each request
//! reads the order again, and only if that fails is the copy served, marked as possibly
//! stale. With `cache.max_age_secs`, an entry older than that is read again as a miss.
//! Locks are held for map operations, never across IO, SQL or rendering.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use prometheus::{IntCounter, IntGauge};

use crate::config::CacheConfig;
use crate::model::{Change, Encoded, Order, StoredOrder, version_of};

/// How long the listening connection may go without a sign of life (a notification, or
/// the answer to the listener's ping) before entries are no longer served as fresh.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(3);

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
        let etag = format!("\"{}\"", encoded.version());
        CachedOrder { uid: encoded.order.order_uid.clone(), json: encoded.json.clone(), etag }
    }

    /// An order as the warm-up read it: its version named by the digest stored with it
    /// (which is its JSON's).
    pub fn stored(stored: StoredOrder) -> CachedOrder {
        let etag = format!("\"{}\"", version_of(&stored.sha256));
        CachedOrder { uid: stored.uid, json: stored.json, etag }
    }

    /// The version this is (`model::version_of`): the ETag without its quotes.
    pub fn version(&self) -> &str {
        &self.etag[1..self.etag.len() - 1]
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
    pub notifications: IntCounter,
    pub invalidations: IntCounter,
    pub listener_reconnects: IntCounter,
    pub listener_up: IntGauge,
    pub stale_served: IntCounter,
    pub database_busy: IntCounter,
    pub expirations: IntCounter,
}

impl Stats {
    /// Every counter and gauge, for the registry: one list, so that none is left out.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let Stats {
            hits,
            misses,
            negative_hits,
            db_reads,
            evictions,
            notifications,
            invalidations,
            listener_reconnects,
            listener_up,
            stale_served,
            database_busy,
            expirations,
        } = self;
        let counters = [
            hits,
            misses,
            negative_hits,
            db_reads,
            evictions,
            notifications,
            invalidations,
            listener_reconnects,
            stale_served,
            database_busy,
            expirations,
        ];
        let mut all: Vec<Box<dyn prometheus::core::Collector>> =
            counters.into_iter().map(|c| Box::new(c.clone()) as Box<dyn prometheus::core::Collector>).collect();
        all.push(Box::new(listener_up.clone()));
        all
    }
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
            notifications: counter(
                "orders_cache_notifications_total",
                "Change notifications received from PostgreSQL (each names up to about 90 orders).",
            ),
            invalidations: counter(
                "orders_cache_invalidations_total",
                "Entries dropped because a notification, or the check after reconnecting, named another version.",
            ),
            listener_reconnects: counter(
                "orders_cache_listener_reconnects_total",
                "Times the listening connection was lost and opened again.",
            ),
            listener_up: IntGauge::new(
                "orders_cache_listener_up",
                "1 while change notifications are received and the cache is served as fresh, else 0.",
            )
            .expect("valid metric"),
            database_busy: counter(
                "orders_cache_database_busy_total",
                "Lookups refused at once because cache.max_database_waits requests already read PostgreSQL.",
            ),
            expirations: counter(
                "orders_cache_expirations_total",
                "Lookups that found their order older than cache.max_age_secs, and read it again.",
            ),
            stale_served: counter(
                "orders_cache_stale_served_total",
                "Orders served from a copy that may be stale: notifications may have been missed and the database \
                 could not be read.",
            ),
        }
    }
}

pub struct Limits {
    pub max_orders: usize,
    pub max_bytes: usize,
    /// How long an id PostgreSQL does not have is answered "not found" without asking
    /// again. Zero turns the memory off.
    pub negative_ttl: Duration,
    /// Most requests that may read PostgreSQL at once; past it a lookup that needs to
    /// read is refused at once. Requests for an order being read wait for that read.
    pub max_database_waits: usize,
    /// Longest a request waits for another request's read of the same order.
    pub database_wait: Duration,
    /// Past this age an entry is not served from memory but read again, as a miss.
    /// None: entries never expire.
    pub max_age: Option<Duration>,
}

impl Limits {
    /// The bounds `config` sets, with `workers` HTTP workers.
    pub fn new(config: &CacheConfig, workers: usize) -> Limits {
        Limits {
            max_orders: config.max_orders,
            max_bytes: config.max_bytes,
            negative_ttl: Duration::from_millis(config.negative_ttl_ms),
            max_database_waits: config.max_database_waits.unwrap_or((workers / 2).max(1)),
            database_wait: Duration::from_millis(config.database_wait_ms),
            max_age: (config.max_age_secs > 0).then(|| Duration::from_secs(config.max_age_secs)),
        }
    }
}

/// The wall clock the age limit reads, in microseconds since 2000-01-01 UTC: the epoch
/// PostgreSQL keeps `ingested_at` in, so that the warm-up's orders are aged by when they
/// were stored. Tests give the cache a clock they move.
pub trait Clock: Send + Sync {
    fn micros(&self) -> i64;
}

/// The system's clock.
pub struct SystemClock;

/// 2000-01-01T00:00:00Z in seconds since the Unix epoch.
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

impl Clock for SystemClock {
    fn micros(&self) -> i64 {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_UNIX_SECS * 1_000_000
    }
}

/// Why an order could not be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// `max_database_waits` requests already read PostgreSQL.
    Busy,
    /// Another request's read of this order did not end within `database_wait`.
    Timeout,
    /// The read failed; the error, for the log.
    Failed(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Busy => write!(f, "too many requests are waiting for the database"),
            Unavailable::Timeout => write!(f, "the database did not answer in time"),
            Unavailable::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// A place among the requests reading PostgreSQL, given back when dropped.
pub struct DatabaseWait<'a>(&'a AtomicUsize);

impl Drop for DatabaseWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Entry {
    value: Arc<CachedOrder>,
    /// The clock when last read; readers update it under the read lock.
    last_used: AtomicU64,
    /// The key under which `by_age` holds this entry: never after `last_used`.
    indexed_at: u64,
    /// When the entry was put in (`Clock::micros`), or for the warm-up's, when its order
    /// was stored: what `Limits::max_age` is measured from.
    kept_at: i64,
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
    result: Mutex<Option<Result<Option<Arc<CachedOrder>>, Unavailable>>>,
    done: Condvar,
    /// Set when the consumer publishes this uid, or a notification names it, during the
    /// read: the read's result may be older, so it is returned to its waiters but not
    /// remembered.
    superseded: AtomicBool,
    /// The cache's `generation` when the read began: a read during which the listening
    /// connection was lost or established is not remembered either.
    generation: u64,
}

/// An order as found: `stale` when it is a cached copy served only because the database
/// could not be read while notifications may have been missed.
#[derive(Debug, Clone)]
pub struct Found {
    pub order: Arc<CachedOrder>,
    pub stale: bool,
}

impl std::ops::Deref for Found {
    type Target = CachedOrder;
    fn deref(&self) -> &CachedOrder {
        &self.order
    }
}

pub struct Cache {
    inner: RwLock<Inner>,
    /// The order of uses, for least-recently-used eviction; not time.
    clock: AtomicU64,
    /// Time, for the age limit.
    time: Box<dyn Clock>,
    limits: Limits,
    negative: Mutex<HashMap<String, Instant>>,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// False from when the listening connection is lost until it listens again and every
    /// entry has been checked.
    listening: AtomicBool,
    /// Set once a listener reports: from then on its silence counts.
    watched: AtomicBool,
    /// When the listening connection last proved alive, in ms since `started`.
    heard_at_ms: AtomicU64,
    started: Instant,
    /// Bumped whenever the listening connection is lost or established.
    generation: AtomicU64,
    /// The orders of the batch the consumer is writing, each with the last version a
    /// notification named since: see `writing`.
    pending: Mutex<HashMap<String, Option<String>>>,
    /// Requests reading PostgreSQL now: see `Limits::max_database_waits`.
    database_waits: AtomicUsize,
    pub stats: Stats,
}

/// Orders published under one hold of the write lock.
const PUBLISH_PIECE: usize = 1000;

/// Most ids remembered as missing at once; past it, expired ones are dropped first.
const MAX_NEGATIVE: usize = 100_000;

impl Cache {
    pub fn new(limits: Limits) -> Cache {
        Cache::with_clock(limits, Box::new(SystemClock))
    }

    pub fn with_clock(limits: Limits, time: Box<dyn Clock>) -> Cache {
        Cache {
            inner: RwLock::new(Inner::default()),
            clock: AtomicU64::new(1),
            time,
            limits,
            negative: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(true),
            watched: AtomicBool::new(false),
            heard_at_ms: AtomicU64::new(0),
            started: Instant::now(),
            generation: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            database_waits: AtomicUsize::new(0),
            stats: Stats::default(),
        }
    }

    /// A place among the requests reading PostgreSQL, if one is free. Every request that
    /// reads the database on the HTTP side holds one while it does.
    pub fn database_wait(&self) -> Option<DatabaseWait<'_>> {
        self.database_waits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.limits.max_database_waits).then_some(n + 1))
            .ok()
            .map(|_| DatabaseWait(&self.database_waits))
    }

    /// Whether entries can be served as they are: no notification can have been missed.
    /// A cache no listener reports to (a single process, a test) is always fresh.
    pub fn fresh(&self) -> bool {
        if !self.listening.load(Ordering::SeqCst) {
            return false;
        }
        !self.watched.load(Ordering::Relaxed)
            || self.started.elapsed().as_millis() as u64 - self.heard_at_ms.load(Ordering::Relaxed)
                < SILENCE_LIMIT.as_millis() as u64
    }

    /// The listening connection proved alive just now.
    pub fn heard(&self) {
        self.heard_at_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.watched.store(true, Ordering::Relaxed);
    }

    /// The listening connection is lost: notifications may be missed from now on, so
    /// entries stop being served as fresh, and the memory of missing ids is dropped.
    pub fn listener_lost(&self) {
        self.listening.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.negative.lock().clear();
        self.stats.listener_up.set(0);
    }

    /// A listening connection is established: reads begun before it are not remembered
    /// (what they read may have changed unnoticed). `check` and `listening` follow.
    pub fn listener_established(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Entries are served as fresh again: every change from now on is notified, and every
    /// entry held has been checked.
    pub fn listening(&self) {
        self.heard();
        self.listening.store(true, Ordering::SeqCst);
        self.stats.listener_up.set(1);
    }

    /// The consumer is about to write these orders, and will `publish` those it stored
    /// once committed. Should a notification meanwhile name one of them at a version other
    /// than the one it publishes, another writer committed that order, possibly after
    /// this one (from another partition), so that order is not published: the next
    /// request reads whichever version PostgreSQL has.
    pub fn writing<'a>(&self, uids: impl IntoIterator<Item = &'a str>) {
        let mut pending = self.pending.lock();
        pending.clear();
        pending.extend(uids.into_iter().map(|uid| (uid.to_string(), None)));
    }

    /// Applies a notification: orders now stored at these versions. An entry of another
    /// version is dropped, and so is the memory of the id as missing; a read in flight
    /// for it is not remembered. Returns how many entries were dropped.
    pub fn changed(&self, changes: &[Change]) -> usize {
        {
            let mut pending = self.pending.lock();
            if !pending.is_empty() {
                for change in changes {
                    if let Some(last) = pending.get_mut(change.uid.as_str()) {
                        *last = Some(change.version.clone());
                    }
                }
            }
        }
        self.supersede(changes.iter().map(|c| c.uid.as_str()));
        let mut inner = self.inner.write();
        let stale: Vec<&str> = changes
            .iter()
            .filter(|c| inner.map.get(c.uid.as_str()).is_some_and(|e| e.value.version() != c.version))
            .map(|c| c.uid.as_str())
            .collect();
        for uid in &stale {
            Self::remove(&mut inner, uid);
        }
        self.stats.invalidations.inc_by(stale.len() as u64);
        stale.len()
    }

    /// A newer version of each of `uids` is committed: reads of them in flight are not
    /// remembered, nor is any memory of them as missing kept. Called before the entries
    /// change: a read that takes the entries' lock after this sees its mark.
    fn supersede<'a>(&self, uids: impl Iterator<Item = &'a str> + Clone) {
        {
            let flights = self.flights.lock();
            for uid in uids.clone() {
                if let Some(flight) = flights.get(uid) {
                    flight.superseded.store(true, Ordering::SeqCst);
                }
            }
        }
        let mut negative = self.negative.lock();
        if !negative.is_empty() {
            for uid in uids {
                negative.remove(uid);
            }
        }
    }

    /// Every entry's id and version, to be checked against the database.
    pub fn versions(&self) -> Vec<(Arc<str>, String)> {
        self.inner.read().map.iter().map(|(k, e)| (k.clone(), e.value.version().to_string())).collect()
    }

    /// Drops each entry whose version is not the one `stored` gives (or that the database
    /// does not have). Returns how many were dropped.
    pub fn keep_only(&self, stored: &HashMap<String, String>) -> usize {
        let mut inner = self.inner.write();
        let stale: Vec<Arc<str>> = inner
            .map
            .iter()
            .filter(|(k, e)| stored.get(&***k).is_none_or(|v| v != e.value.version()))
            .map(|(k, _)| k.clone())
            .collect();
        for uid in &stale {
            Self::remove(&mut inner, uid);
        }
        self.stats.invalidations.inc_by(stale.len() as u64);
        stale.len()
    }

    fn remove(inner: &mut Inner, uid: &str) {
        if let Some(old) = inner.map.remove(uid) {
            inner.by_age.remove(&old.indexed_at);
            inner.bytes -= old.value.size();
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The cached order, marking it used, and whether it is past the age limit. Counts
    /// nothing: `lookup` counts.
    fn get(&self, uid: &str) -> Option<(Arc<CachedOrder>, bool)> {
        let inner = self.inner.read();
        let entry = inner.map.get(uid)?;
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        Some((entry.value.clone(), self.expired(entry.kept_at)))
    }

    fn expired(&self, kept_at: i64) -> bool {
        self.limits.max_age.is_some_and(|age| {
            let age = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
            self.time.micros().saturating_sub(kept_at) > age
        })
    }

    /// The consumer's write: orders PostgreSQL has just committed replace whatever the
    /// cache had for them, end any memory of their absence, and make reads in flight for
    /// them forget their (possibly older) result. An order another writer was notified
    /// to have committed since `writing` is left out.
    pub fn publish<'a>(&self, orders: impl IntoIterator<Item = &'a Encoded>) {
        let pending = std::mem::take(&mut *self.pending.lock());
        let overtaken = |e: &Encoded| {
            pending.get(e.order.order_uid.as_str()).is_some_and(|last| last.as_ref().is_some_and(|v| *v != e.version()))
        };
        let fresh: Vec<Arc<CachedOrder>> =
            orders.into_iter().filter(|e| !overtaken(e)).map(|e| Arc::new(CachedOrder::new(e))).collect();
        if fresh.is_empty() {
            return;
        }
        self.supersede(fresh.iter().map(|o| o.uid.as_str()));
        // In pieces, so that readers wait for a piece of a large batch, not for all of it.
        let mut fresh = fresh.into_iter().peekable();
        while fresh.peek().is_some() {
            let mut inner = self.inner.write();
            for order in fresh.by_ref().take(PUBLISH_PIECE) {
                let tick = self.tick();
                self.put(&mut inner, order, tick);
            }
        }
    }

    /// Fills the cache at start with orders in any order, each with when it was stored
    /// (`Clock::micros`, as PostgreSQL's `ingested_at`). They go in oldest first (of
    /// equal age, as given): so the newest are kept when they do not all fit, and evicted
    /// last. Their age counts from when they were stored.
    pub fn warm(&self, mut orders: Vec<(i64, Arc<CachedOrder>)>) {
        orders.sort_by_key(|(stored_at, _)| *stored_at);
        let mut inner = self.inner.write();
        inner.map.reserve(orders.len().min(self.limits.max_orders));
        if !inner.map.is_empty() {
            for (stored_at, order) in orders {
                let tick = self.tick();
                self.put_kept_at(&mut inner, order, tick, stored_at);
            }
            return;
        }
        // Into an empty cache (the start): every order at once, the age index built in
        // one go from the entries kept (an id given twice keeps its later order), and
        // then the oldest evicted until the bounds hold.
        for (kept_at, value) in orders {
            let tick = self.tick();
            let key: Arc<str> = value.uid.as_str().into();
            inner.bytes += value.size();
            let entry = Entry { value, last_used: AtomicU64::new(tick), indexed_at: tick, kept_at };
            if let Some(old) = inner.map.insert(key, entry) {
                inner.bytes -= old.value.size();
            }
        }
        inner.by_age = inner.map.iter().map(|(key, entry)| (entry.indexed_at, key.clone())).collect();
        self.evict(&mut inner);
    }

    fn put(&self, inner: &mut Inner, value: Arc<CachedOrder>, tick: u64) {
        let now = self.time.micros();
        self.put_kept_at(inner, value, tick, now);
    }

    fn put_kept_at(&self, inner: &mut Inner, value: Arc<CachedOrder>, tick: u64, kept_at: i64) {
        let key: Arc<str> = value.uid.as_str().into();
        Self::remove(inner, &key);
        inner.bytes += value.size();
        inner.by_age.insert(tick, key.clone());
        inner.map.insert(key, Entry { value, last_used: AtomicU64::new(tick), indexed_at: tick, kept_at });
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
    /// does not find are remembered as missing for `negative_ttl`. While the cache is not
    /// `fresh`, every lookup loads, and a held copy is served (as `stale`) only if the
    /// load fails; so does a lookup whose entry is past `max_age`.
    pub fn lookup(
        &self,
        uid: &str,
        load: impl FnOnce() -> anyhow::Result<Option<Order>>,
    ) -> Result<Option<Found>, Unavailable> {
        let fresh = self.fresh();
        let held = match self.get(uid) {
            Some((hit, false)) if fresh => {
                self.stats.hits.inc();
                return Ok(Some(Found { order: hit, stale: false }));
            }
            Some((copy, expired)) => {
                if expired {
                    self.stats.expirations.inc();
                }
                Some(copy)
            }
            None => None,
        };
        self.stats.misses.inc();
        if fresh && self.remembered_missing(uid) {
            self.stats.negative_hits.inc();
            return Ok(None);
        }
        match (self.load_once(uid, fresh, load), held) {
            (Ok(order), _) => Ok(order.map(|order| Found { order, stale: false })),
            (Err(_), Some(copy)) => {
                self.stats.stale_served.inc();
                Ok(Some(Found { order: copy, stale: true }))
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Runs `load` for `uid` once however many ask at the same time, and remembers what
    /// it found unless the order changed, or the listener came or went, meanwhile.
    fn load_once(
        &self,
        uid: &str,
        fresh: bool,
        load: impl FnOnce() -> anyhow::Result<Option<Order>>,
    ) -> Result<Option<Arc<CachedOrder>>, Unavailable> {
        // The leader holds a place among the requests waiting on PostgreSQL for as long
        // as it reads; a request for the same order waits for it, up to `database_wait`.
        let (flight, place) = {
            let mut flights = self.flights.lock();
            match flights.get(uid) {
                Some(flight) => (flight.clone(), None),
                None => {
                    // A read of it may have ended since this request looked at the cache
                    // and the memory of missing ids: what it found is there now.
                    if fresh {
                        if self.remembered_missing(uid) {
                            self.stats.negative_hits.inc();
                            return Ok(None);
                        }
                        if let Some((hit, false)) = self.get(uid) {
                            return Ok(Some(hit));
                        }
                    }
                    let Some(wait) = self.database_wait() else {
                        self.stats.database_busy.inc();
                        return Err(Unavailable::Busy);
                    };
                    let generation = self.generation.load(Ordering::SeqCst);
                    let flight = Arc::new(Flight { generation, ..Flight::default() });
                    flights.insert(uid.to_string(), flight.clone());
                    (flight, Some(wait))
                }
            }
        };
        if place.is_none() {
            let deadline = Instant::now() + self.limits.database_wait;
            let mut result = flight.result.lock();
            while result.is_none() {
                if flight.done.wait_until(&mut result, deadline).timed_out() && result.is_none() {
                    return Err(Unavailable::Timeout);
                }
            }
            return result.clone().expect("set before notify");
        }

        self.stats.db_reads.inc();
        // A read that panics is answered as failed, and its waiters with it.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|panic| {
            let what = panic.downcast_ref::<&str>().copied().or(panic.downcast_ref::<String>().map(String::as_str));
            log::error!("event=order_read_panicked order_uid={uid} panic={:?}", what.unwrap_or("(not a string)"));
            Err(anyhow::anyhow!("the read of order {uid} panicked"))
        });
        let result = match loaded {
            Ok(Some(order)) => Ok(Some(Arc::new(CachedOrder::new(&order.encode())))),
            Ok(None) => Ok(None),
            Err(e) => Err(Unavailable::Failed(format!("{e:#}"))),
        };
        // Remembered before the flight ends, so that no request in between reads again.
        match &result {
            Ok(Some(order)) => self.keep_read(&flight, order.clone()),
            Ok(None) => self.remember_missing(&flight, uid),
            Err(_) => {}
        }
        // The place is given back before the flight ends: a request that finds no flight
        // then also finds the place free.
        drop(place);
        self.flights.lock().remove(uid);
        *flight.result.lock() = Some(result.clone());
        flight.done.notify_all();
        result
    }

    /// Whether what `flight` read may be remembered. Checked under the lock the result
    /// goes in with: whoever supersedes it sets the flag before taking that lock.
    fn still_current(&self, flight: &Flight) -> bool {
        !flight.superseded.load(Ordering::SeqCst) && self.generation.load(Ordering::SeqCst) == flight.generation
    }

    /// The miss path's write, over any entry held (which it was reading again), unless
    /// the read was superseded.
    fn keep_read(&self, flight: &Flight, value: Arc<CachedOrder>) {
        let mut inner = self.inner.write();
        if self.still_current(flight) {
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

    fn remember_missing(&self, flight: &Flight, uid: &str) {
        if self.limits.negative_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut negative = self.negative.lock();
        if !self.still_current(flight) {
            return;
        }
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
pub(crate) mod tests;
