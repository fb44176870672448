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
use crate::model::{Change, Encoded, StoredOrder, version_of};

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

    /// An order as read from PostgreSQL (at start, or on a miss): its version named by the
    /// digest stored with it (which is its JSON's).
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
        load: impl FnOnce() -> anyhow::Result<Option<StoredOrder>>,
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
        load: impl FnOnce() -> anyhow::Result<Option<StoredOrder>>,
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
            Ok(Some(order)) => Ok(Some(Arc::new(CachedOrder::stored(order)))),
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
pub(crate) mod tests {
    use super::*;
    use crate::model::Order;
    use std::sync::atomic::AtomicUsize;

    fn order(uid: &str) -> Order {
        let mut o = crate::model::decode(Some(include_bytes!("../demo/model.json")), &Default::default()).unwrap();
        o.order_uid = uid.to_string();
        o.payment.transaction = uid.to_string();
        o
    }

    #[test]
    fn database_waits_leave_a_worker_free() {
        let waits = |toml: &str, workers| Limits::new(&crate::config::Config::parse(toml).unwrap().cache, workers);
        assert_eq!(waits("", 4).max_database_waits, 2);
        assert_eq!(waits("[http]\nworkers = 1\n", 1).max_database_waits, 1);
        assert_eq!(waits("[cache]\nmax_database_waits = 3\n", 4).max_database_waits, 3);
    }

    fn enc(uid: &str) -> Encoded {
        order(uid).encode()
    }

    fn cache(max_orders: usize) -> Cache {
        Cache::new(Limits { max_orders, max_bytes: usize::MAX, negative_ttl: Duration::from_secs(60), ..limits() })
    }

    /// Bounds for tests: room for 16 requests on the database, waits of 5 s.
    pub(crate) fn limits() -> Limits {
        Limits {
            max_orders: 10,
            max_bytes: 1 << 20,
            negative_ttl: Duration::ZERO,
            max_database_waits: 16,
            database_wait: Duration::from_secs(5),
            max_age: None,
        }
    }

    /// `o` as PostgreSQL gives it back: its document, with the digest stored with it.
    fn from_db(o: Order) -> StoredOrder {
        let e = o.encode();
        StoredOrder { uid: e.order.order_uid, json: e.json, sha256: e.sha256.to_vec(), stored_at: 0 }
    }

    fn never() -> anyhow::Result<Option<StoredOrder>> {
        panic!("the database must not be read")
    }

    fn hit(cache: &Cache, uid: &str) -> Option<Arc<CachedOrder>> {
        cache.lookup(uid, never).unwrap().map(|found| {
            assert!(!found.stale);
            found.order
        })
    }

    fn change(uid: &str, encoded: &Encoded) -> Change {
        Change { uid: uid.into(), version: encoded.version() }
    }

    fn city(found: &CachedOrder) -> String {
        serde_json::from_slice::<Order>(&found.json).unwrap().delivery.city
    }

    fn moved(uid: &str, to: &str) -> Order {
        let mut o = order(uid);
        o.delivery.city = to.into();
        o
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

    /// A batch larger than one hold of the lock goes in, piece after piece, in its order:
    /// past the bound, its first orders are the ones evicted.
    #[test]
    fn a_large_batch_is_published_whole_and_in_order() {
        let c = cache(2 * PUBLISH_PIECE);
        let batch: Vec<Encoded> = (0..2 * PUBLISH_PIECE + 500).map(|i| enc(&format!("o{i}"))).collect();
        c.publish(&batch);
        assert_eq!(c.len(), 2000);
        assert!(!c.contains("o0") && !c.contains("o499"));
        assert!(c.contains("o500") && c.contains("o1000") && c.contains("o2499"));
        assert_eq!(c.stats.evictions.get(), 500);
    }

    #[test]
    fn byte_bound_holds() {
        let one = CachedOrder::new(&enc("a")).size();
        let c = Cache::new(Limits {
            max_orders: 100,
            max_bytes: one * 2 + one / 2,
            negative_ttl: Duration::ZERO,
            ..limits()
        });
        c.publish(&[enc("a"), enc("b"), enc("c")]);
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= one * 2 + one / 2);
        assert!(!c.contains("a"));
    }

    #[test]
    fn warm_keeps_the_newest_when_they_do_not_all_fit() {
        let c = cache(3);
        let stored = |uid: &str| {
            let e = enc(uid);
            let stored = StoredOrder { uid: uid.into(), json: e.json, sha256: e.sha256.to_vec(), stored_at: 0 };
            Arc::new(CachedOrder::stored(stored))
        };
        c.warm(vec![(2, stored("b")), (3, stored("newest")), (1, stored("oldest")), (2, stored("a"))]);
        assert!(c.contains("newest") && c.contains("a") && c.contains("b") && !c.contains("oldest"));
        // Of the two of equal age, "b" was given first: it goes first.
        c.publish(&[enc("new")]);
        assert!(c.contains("newest") && c.contains("a") && !c.contains("b"));
        let e = enc("a");
        assert_eq!(&*c.get("a").unwrap().0.json, &*e.json);
        assert_eq!(c.get("a").unwrap().0.etag, CachedOrder::new(&e).etag);
    }

    /// At the start, into an empty cache: an id given twice is held once, counted once,
    /// and the later of the two is kept.
    #[test]
    fn warm_holds_an_id_given_twice_once() {
        let c = cache(10);
        let stored = |uid: &str, json: &str| {
            let sha256 = vec![json.len() as u8; 32];
            let json: Arc<[u8]> = json.as_bytes().into();
            Arc::new(CachedOrder::stored(StoredOrder { uid: uid.into(), json, sha256, stored_at: 0 }))
        };
        let (first, later, other) = (stored("a", "{\"v\":1}"), stored("a", "{\"v\":22}"), stored("b", "{}"));
        c.warm(vec![(1, first), (2, later.clone()), (1, other.clone())]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), later.size() + other.size());
        assert_eq!(&*c.get("a").unwrap().0.json, b"{\"v\":22}");
        // The age index holds each entry once: both are evicted in turn, "b" first ("a"
        // was read since).
        c.publish(&(0..9).map(|i| enc(&format!("n{i}"))).collect::<Vec<_>>());
        assert!(!c.contains("b") && c.contains("a") && c.len() == 10);
        c.publish(&[enc("last")]);
        assert!(!c.contains("a") && c.len() == 10);
    }

    #[test]
    fn miss_reads_once_then_serves_from_memory() {
        let c = cache(10);
        let got = c.lookup("a", || Ok(Some(from_db(order("a"))))).unwrap().unwrap();
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
        assert_eq!(c.lookup("x", || Err(anyhow::anyhow!("down"))).unwrap_err(), Unavailable::Failed("down".into()));
        assert!(c.lookup("x", || Ok(None)).unwrap().is_none());
        assert_eq!(c.stats.db_reads.get(), 2);
    }

    /// A request that looked at the cache while another read the order, and reaches
    /// the flights once that read has ended, takes what the read found instead of
    /// reading again (`read_path::concurrent_misses_for_an_unknown_id_read_postgres_once`
    /// saw two reads under load).
    #[test]
    fn a_request_late_for_a_read_takes_what_it_found() {
        let c = cache(10);
        c.listening();
        assert!(c.lookup("gone", || Ok(None)).unwrap().is_none());
        assert!(c.lookup("here", || Ok(Some(from_db(order("here"))))).unwrap().is_some());
        let again = || -> anyhow::Result<Option<StoredOrder>> { panic!("read again") };
        assert!(c.load_once("gone", true, again).unwrap().is_none());
        assert_eq!(c.load_once("here", true, again).unwrap().unwrap().uid, "here");
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
                        Ok(Some(from_db(order("slow"))))
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
                Ok(Some(from_db(order("a"))))
            })
            .unwrap()
            .unwrap();
        assert!(!std::str::from_utf8(&got.json).unwrap().contains("Newer"));
        assert!(std::str::from_utf8(&hit(&c, "a").unwrap().json).unwrap().contains("Newer"));
    }

    #[test]
    fn a_notification_drops_other_versions_and_the_memory_of_absence() {
        let c = cache(10);
        c.publish(&[enc("a"), enc("b")]);
        assert!(c.lookup("x", || Ok(None)).unwrap().is_none());
        let newer = moved("a", "Haifa").encode();
        let dropped = c.changed(&[change("a", &newer), change("b", &enc("b")), change("x", &enc("x"))]);
        assert_eq!((dropped, c.stats.invalidations.get()), (1, 1));
        assert!(!c.contains("a") && c.contains("b"));
        let got = c.lookup("a", || Ok(Some(from_db(moved("a", "Haifa"))))).unwrap().unwrap();
        assert_eq!(city(&got), "Haifa");
        assert_eq!(c.lookup("x", || Ok(Some(from_db(order("x"))))).unwrap().unwrap().uid, "x");
    }

    #[test]
    fn a_read_overtaken_by_a_notification_is_not_kept() {
        let c = cache(10);
        let got = c
            .lookup("a", || {
                c.changed(&[change("a", &moved("a", "Newer").encode())]);
                Ok(Some(from_db(order("a"))))
            })
            .unwrap()
            .unwrap();
        assert_eq!(city(&got), "Kiryat Mozkin");
        assert!(!c.contains("a"));
    }

    #[test]
    fn while_not_listening_entries_are_read_again_and_served_stale_only_if_that_fails() {
        let c = cache(10);
        c.publish(&[enc("a")]);
        c.listener_lost();
        assert!(!c.fresh());
        let got = c.lookup("a", || Ok(Some(from_db(moved("a", "Haifa"))))).unwrap().unwrap();
        assert_eq!((city(&got), got.stale), ("Haifa".to_string(), false));
        // Read during the outage: kept, to be checked when listening again.
        assert!(c.contains("a"));
        let got = c.lookup("a", || Err(anyhow::anyhow!("down"))).unwrap().unwrap();
        assert_eq!((city(&got), got.stale), ("Haifa".to_string(), true));
        assert_eq!(c.stats.stale_served.get(), 1);
        assert_eq!(c.lookup("b", || Err(anyhow::anyhow!("down"))).unwrap_err(), Unavailable::Failed("down".into()));
        assert_eq!(c.stats.hits.get(), 0);
    }

    /// A clock the test moves: `Clock::micros` starts at 1,000 s past the epoch.
    #[derive(Clone, Default)]
    struct TestClock(Arc<std::sync::atomic::AtomicI64>);

    impl TestClock {
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn micros(&self) -> i64 {
            1_000_000_000 + self.0.load(Ordering::SeqCst)
        }
    }

    fn cache_with_max_age(secs: u64) -> (Cache, TestClock) {
        let clock = TestClock::default();
        let limits = Limits { max_age: Some(Duration::from_secs(secs)), ..limits() };
        (Cache::with_clock(limits, Box::new(clock.clone())), clock)
    }

    #[test]
    fn an_entry_past_the_age_limit_is_read_again_and_kept_afresh() {
        let (c, clock) = cache_with_max_age(60);
        c.publish(&[enc("a")]);
        clock.advance(Duration::from_secs(60));
        assert_eq!(city(&hit(&c, "a").unwrap()), "Kiryat Mozkin");
        clock.advance(Duration::from_secs(1));
        let got = c.lookup("a", || Ok(Some(from_db(moved("a", "Haifa"))))).unwrap().unwrap();
        assert_eq!((city(&got), got.stale), ("Haifa".to_string(), false));
        assert_eq!((c.stats.expirations.get(), c.stats.db_reads.get(), c.stats.hits.get()), (1, 1, 1));
        // Kept afresh: its age counts from the read.
        clock.advance(Duration::from_secs(59));
        assert_eq!(city(&hit(&c, "a").unwrap()), "Haifa");
        assert_eq!(c.stats.expirations.get(), 1);
    }

    #[test]
    fn an_expired_entry_is_served_only_as_stale_when_the_read_fails() {
        let (c, clock) = cache_with_max_age(60);
        c.publish(&[enc("a")]);
        clock.advance(Duration::from_secs(61));
        let got = c.lookup("a", || Err(anyhow::anyhow!("down"))).unwrap().unwrap();
        assert_eq!((city(&got), got.stale), ("Kiryat Mozkin".to_string(), true));
        assert_eq!((c.stats.expirations.get(), c.stats.stale_served.get()), (1, 1));
    }

    #[test]
    fn warmed_orders_are_aged_from_when_they_were_stored() {
        let (c, clock) = cache_with_max_age(30);
        let now = clock.micros();
        let stored = |uid: &str| Arc::new(CachedOrder::new(&enc(uid)));
        c.warm(vec![(now - 25_000_000, stored("older")), (now - 5_000_000, stored("newer"))]);
        clock.advance(Duration::from_secs(10));
        assert!(hit(&c, "newer").is_some());
        let got = c.lookup("older", || Ok(Some(from_db(moved("older", "Haifa"))))).unwrap().unwrap();
        assert_eq!(city(&got), "Haifa");
        assert_eq!(c.stats.expirations.get(), 1);
    }

    #[test]
    fn without_an_age_limit_entries_never_expire() {
        let clock = TestClock::default();
        let c = Cache::with_clock(limits(), Box::new(clock.clone()));
        c.publish(&[enc("a")]);
        clock.advance(Duration::from_secs(10 * 365 * 24 * 3600));
        assert!(hit(&c, "a").is_some());
        assert_eq!(c.stats.expirations.get(), 0);
    }

    #[test]
    fn a_read_begun_before_the_listener_was_established_is_not_kept() {
        let c = cache(10);
        c.listener_lost();
        let got = c
            .lookup("a", || {
                c.listener_established();
                Ok(Some(from_db(order("a"))))
            })
            .unwrap();
        assert_eq!(got.unwrap().uid, "a");
        assert!(!c.contains("a"));
    }

    #[test]
    fn the_check_after_reconnecting_keeps_only_the_stored_versions() {
        let c = cache(10);
        c.publish(&[enc("a"), enc("b"), enc("c")]);
        c.listener_lost();
        c.listener_established();
        let held = c.versions();
        assert_eq!(held.len(), 3);
        let stored: HashMap<String, String> =
            [("a".to_string(), enc("a").version()), ("b".to_string(), moved("b", "Haifa").encode().version())].into();
        assert_eq!(c.keep_only(&stored), 2);
        c.listening();
        assert!(c.fresh());
        assert!(c.contains("a") && !c.contains("b") && !c.contains("c"));
        assert_eq!(c.stats.listener_up.get(), 1);
    }

    #[test]
    fn a_silent_listener_stops_entries_being_served_as_fresh() {
        let mut c = cache(10);
        assert!(c.fresh()); // nobody listens: a cache of its own
        c.started = Instant::now() - SILENCE_LIMIT * 2;
        c.heard_at_ms.store(0, Ordering::Relaxed);
        c.watched.store(true, Ordering::Relaxed);
        assert!(!c.fresh());
        c.heard();
        assert!(c.fresh());
    }

    #[test]
    fn an_order_another_writer_committed_meanwhile_is_not_published() {
        let c = cache(10);
        let (mine, theirs) = (moved("a", "Mine").encode(), moved("a", "Theirs").encode());
        c.writing(["a", "b"]);
        c.changed(&[change("a", &mine), change("a", &theirs)]);
        c.publish(&[mine.clone(), enc("b")]);
        assert!(!c.contains("a") && c.contains("b"));

        // Notified in commit order: another version before this one is no reason.
        c.writing(["a"]);
        c.changed(&[change("a", &theirs), change("a", &mine)]);
        c.publish(std::slice::from_ref(&mine));
        assert_eq!(city(&hit(&c, "a").unwrap()), "Mine");
    }

    /// A leader holding the database for 300 ms, and `then` run while it does.
    fn while_reading<T>(c: &Arc<Cache>, uid: &str, then: impl FnOnce() -> T) -> T {
        let (c2, uid2) = (c.clone(), uid.to_string());
        let started = Arc::new(std::sync::Barrier::new(2));
        let started2 = started.clone();
        let leader = std::thread::spawn(move || {
            c2.lookup(&uid2, || {
                started2.wait();
                std::thread::sleep(Duration::from_millis(300));
                Ok(Some(from_db(order(&uid2))))
            })
            .unwrap()
        });
        started.wait();
        let result = then();
        assert_eq!(leader.join().unwrap().unwrap().uid, uid);
        result
    }

    #[test]
    fn past_the_budget_a_miss_is_refused_at_once_and_a_held_copy_served() {
        let c = Arc::new(Cache::new(Limits { max_database_waits: 1, ..limits() }));
        c.publish(&[enc("held")]);
        c.listener_lost();
        let (busy, copy) = while_reading(&c, "slow", || {
            (c.lookup("other", never).unwrap_err(), c.lookup("held", never).unwrap().unwrap())
        });
        assert_eq!(busy, Unavailable::Busy);
        assert!(copy.stale);
        assert_eq!(c.stats.database_busy.get(), 2);
        // The place is free again.
        assert_eq!(c.lookup("other", || Ok(Some(from_db(order("other"))))).unwrap().unwrap().uid, "other");
    }

    #[test]
    fn a_request_waits_for_another_ones_read_only_until_its_deadline() {
        let c = Arc::new(Cache::new(Limits { database_wait: Duration::from_millis(50), ..limits() }));
        let waited = while_reading(&c, "slow", || c.lookup("slow", never));
        assert_eq!(waited.unwrap_err(), Unavailable::Timeout);
    }

    #[test]
    fn a_read_that_panics_fails_its_waiters_instead_of_leaving_them_waiting() {
        let c = Arc::new(cache(10));
        let start = Arc::new(std::sync::Barrier::new(2));
        let (c2, start2) = (c.clone(), start.clone());
        let waiter = std::thread::spawn(move || {
            start2.wait();
            std::thread::sleep(Duration::from_millis(50));
            c2.lookup("p", never)
        });
        let leader = c.lookup("p", || {
            start.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!("a bug in the read")
        });
        assert_eq!(leader.unwrap_err(), Unavailable::Failed("the read of order p panicked".into()));
        assert_eq!(waiter.join().unwrap().unwrap_err(), Unavailable::Failed("the read of order p panicked".into()));
        assert_eq!(c.lookup("p", || Ok(Some(from_db(order("p"))))).unwrap().unwrap().uid, "p");
    }
}
