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
//!
//! Its parts: `entry`, the value served (`CachedOrder`); `lru`, the bounded entries;
//! `flight`, one read per missing order and the permits to read PostgreSQL; `missing`,
//! the memory of ids not found; `pending`, the batches the consumer is writing;
//! `freshness`, the state the listener's reports move the cache through; `limits`, the
//! bounds and the clock; `stats`, the counters.
//!
//! # Locks
//!
//! One `RwLock` guards the `State`: the entries, the memory of missing ids, the flights
//! in progress, the consumer's pending batches and the freshness. What must change together
//! changes in one hold of it: a notification drops entries, ends the memory of the ids
//! it names, marks their flights superseded and is recorded against the pending batches;
//! a lost listener ends freshness, every flight's claim to be kept and the memory of
//! missing ids; a read's result is kept, if its flight is still current, as the flight
//! ends. A hit takes the lock shared and only stamps its entry's use, an atomic.
//!
//! Besides it there is one mutex per flight, where the requests that joined the flight
//! wait for its outcome; it is taken only with the state lock released. The permits to
//! read PostgreSQL are an atomic count, taken without waiting. No lock is held across IO,
//! SQL or rendering.

mod entry;
mod flight;
mod freshness;
mod limits;
mod lru;
mod missing;
mod pending;
mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::model::{Change, Encoded, StoredOrder};

pub use entry::{CachedOrder, Etag, Found};
pub use flight::{DatabaseWait, Outcome, Unavailable};
pub use freshness::SILENCE_LIMIT;
pub use limits::{Clock, Limits, SystemClock};
pub use lru::Fill;
pub use stats::Stats;

use flight::{Flight, Flights, Permits};
use freshness::Freshness;
use lru::Lru;
use missing::Missing;
use pending::{Batch, Pending};

/// Orders published under one hold of the write lock.
const PUBLISH_PIECE: usize = 1000;

/// A batch the consumer began writing: see `Cache::writing`.
#[must_use = "a batch begun is published or given up"]
#[derive(Debug)]
pub struct Writing(u64);

/// What memory alone answers for an order (`Cache::from_memory`).
#[derive(Debug)]
pub enum Remembered {
    Held(Arc<CachedOrder>),
    /// Not found by a read within `negative_ttl`.
    Missing,
}

/// A read of one order begun by `Cache::lead` for a request that handed it over: other
/// requests for the order wait for its outcome, and it holds a permit, until `end`. One
/// dropped unended ends as failed, so that none waits for it in vain.
pub struct Lead {
    cache: Arc<Cache>,
    uid: String,
    flight: Arc<Flight>,
    /// Until the read ends.
    permit: Option<DatabaseWait>,
}

impl Lead {
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Ends the read with what it found (the error, for the log): kept if nothing
    /// superseded it meanwhile, given to the requests that joined it, and returned.
    pub fn end(mut self, loaded: Result<Option<StoredOrder>, String>) -> Outcome {
        let outcome = flight::outcome(loaded);
        self.land(&outcome);
        outcome
    }

    fn land(&mut self, outcome: &Outcome) {
        // The permit is given back before the flight ends, as `Cache::load_once` does.
        if self.permit.take().is_some() {
            self.cache.land(&self.uid, &self.flight, outcome);
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.land(&Err(Unavailable::Failed("the read was given up".to_string())));
    }
}

/// The orders the HTTP side serves, shared by the consumer, the listener and the workers.
pub struct Cache {
    state: RwLock<State>,
    /// Requests reading PostgreSQL now: see `Limits::max_database_waits`.
    permits: Permits,
    limits: Limits,
    /// Time, for the age limit.
    time: Box<dyn Clock>,
    pub stats: Stats,
}

/// Everything the cache's lock guards.
struct State {
    entries: Lru,
    missing: Missing,
    flights: Flights,
    pending: Pending,
    freshness: Freshness,
}

impl State {
    /// `version` of `uid` is committed: a read of it in flight may be older, and it is
    /// no longer missing.
    fn supersede(&mut self, uid: &str, version: &str) {
        self.flights.supersede(uid, version);
        self.missing.forget(uid);
    }
}

impl Cache {
    pub fn new(limits: Limits) -> Cache {
        Cache::with_clock(limits, Box::new(SystemClock))
    }

    pub fn with_clock(limits: Limits, time: Box<dyn Clock>) -> Cache {
        let state = State {
            entries: Lru::new(limits.max_orders, limits.max_bytes),
            missing: Missing::default(),
            flights: Flights::default(),
            pending: Pending::default(),
            freshness: Freshness::Alone,
        };
        Cache {
            state: RwLock::new(state),
            permits: Permits::new(limits.max_database_waits),
            time,
            limits,
            stats: Stats::default(),
        }
    }

    /// A place among the requests reading PostgreSQL, if one is free. Every request that
    /// reads the database on the HTTP side holds one while it does.
    pub fn database_wait(&self) -> Option<DatabaseWait> {
        self.permits.take()
    }

    /// Whether entries can be served as they are: no notification can have been missed.
    /// A cache no listener reports to (a single process, a test) is always fresh.
    pub fn fresh(&self) -> bool {
        self.state.read().freshness.fresh(Instant::now())
    }

    /// The listening connection proved alive just now.
    pub fn heard(&self) {
        self.state.write().freshness.heard(Instant::now());
    }

    /// The listening connection is lost: notifications may be missed from now on, so
    /// entries stop being served as fresh, reads in flight are not remembered, and the
    /// memory of missing ids is dropped.
    pub fn listener_lost(&self) {
        let mut state = self.state.write();
        state.freshness.lost();
        state.flights.supersede_all();
        state.missing.clear();
        drop(state);
        self.stats.listener_up.set(0);
    }

    /// A listening connection is established: reads begun before it are not remembered
    /// (what they read may have changed unnoticed). `keep_only` (or `warm`) and
    /// `listening` follow.
    pub fn listener_established(&self) {
        let mut state = self.state.write();
        state.freshness.established();
        state.flights.supersede_all();
    }

    /// Entries are served as fresh again: every change from now on is notified, and every
    /// entry held has been checked.
    pub fn listening(&self) {
        self.state.write().freshness.listening(Instant::now());
        self.stats.listener_up.set(1);
    }

    /// The consumer is about to write these orders, and will `publish` those it stored
    /// once committed, or else give the batch up (`not_written`). Should a notification
    /// meanwhile name one of them at a version other than the one it publishes, another
    /// writer committed that order, possibly after this one (from another partition), so
    /// that order is not published: the next request reads whichever version PostgreSQL
    /// has. Batches are published in the order they began.
    pub fn writing<'a>(&self, uids: impl IntoIterator<Item = &'a str>) -> Writing {
        let batch = Batch::new(uids);
        Writing(self.state.write().pending.add(batch))
    }

    /// A batch begun with `writing` will not be published: nothing of it was committed.
    pub fn not_written(&self, batch: Writing) {
        let removed = self.state.write().pending.remove(batch.0);
        drop(removed);
    }

    /// Applies a notification: orders now stored at these versions. An entry of another
    /// version is dropped, and so is the memory of the id as missing; a read in flight
    /// for it is remembered only if it found the version named. Returns how many entries
    /// were dropped.
    pub fn changed(&self, changes: &[Change]) -> usize {
        let mut state = self.state.write();
        for change in changes {
            state.pending.notified(&change.uid, &change.version);
            state.supersede(&change.uid, &change.version);
        }
        let dropped = state.entries.drop_other_versions(changes);
        drop(state);
        self.stats.invalidations.inc_by(dropped as u64);
        dropped
    }

    /// Every entry's id and version, to be checked against the database.
    pub fn versions(&self) -> Vec<(Arc<str>, String)> {
        self.state.read().entries.versions()
    }

    /// Drops each entry whose version is not the one `stored` gives (or that the database
    /// does not have). Returns how many were dropped.
    pub fn keep_only(&self, stored: &HashMap<String, String>) -> usize {
        let dropped = self.state.write().entries.keep_only(stored);
        self.stats.invalidations.inc_by(dropped as u64);
        dropped
    }

    /// The consumer's write, `batch`: orders PostgreSQL has just committed replace
    /// whatever the cache had for them, end any memory of their absence, and make reads
    /// in flight for them forget their (possibly older) result. An order another writer
    /// was notified to have committed since `writing` is left out.
    pub fn publish<'a>(&self, batch: Writing, orders: impl IntoIterator<Item = &'a Encoded>) {
        let mut orders = orders.into_iter().map(|e| Arc::new(CachedOrder::new(e))).peekable();
        // In pieces, so that readers wait for a piece of a large batch, not for all of it.
        loop {
            let piece: Vec<Arc<CachedOrder>> = orders.by_ref().take(PUBLISH_PIECE).collect();
            let last = orders.peek().is_none();
            let now = self.time.micros();
            let mut evicted = 0;
            let mut state = self.state.write();
            for order in piece {
                if !state.pending.overtaken(batch.0, &order.uid, order.version()) {
                    state.supersede(&order.uid, order.version());
                    evicted += state.entries.put(order, now);
                }
            }
            // The batch is published: notifications no longer concern it.
            let written = if last { state.pending.remove(batch.0) } else { None };
            drop(state);
            drop(written);
            self.stats.evictions.inc_by(evicted as u64);
            if last {
                return;
            }
        }
    }

    /// Fills the cache at start with orders gathered in any order, each with when it was
    /// stored (`Clock::micros`, as PostgreSQL's `ingested_at`). They go in oldest first
    /// (of equal age, as given): so the newest are kept when they do not all fit, and
    /// evicted last. Their age counts from when they were stored.
    pub fn warm(&self, orders: Fill) {
        let evicted = self.state.write().entries.fill(orders);
        self.stats.evictions.inc_by(evicted as u64);
    }

    /// What memory alone answers for `uid`, when it is enough: the order held, if it may
    /// be served as it is (within the age limit), or that the id is remembered as
    /// missing; both only while the cache is fresh, as `lookup` would answer them.
    /// Counted as `lookup` counts them; when None nothing is counted, and `lead` or
    /// `lookup` decides.
    pub fn from_memory(&self, uid: &str) -> Option<Remembered> {
        let state = self.state.read();
        let now = Instant::now();
        if !state.freshness.fresh(now) {
            return None;
        }
        match self.held(&state, uid) {
            Some((order, false)) => {
                drop(state);
                self.stats.hits.inc();
                Some(Remembered::Held(order))
            }
            None if state.missing.remembered(uid, now) => {
                drop(state);
                self.stats.misses.inc();
                self.stats.negative_hits.inc();
                Some(Remembered::Missing)
            }
            // Past the age limit, or not known: read.
            Some((_, true)) | None => None,
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
        let now = Instant::now();
        let (fresh, held, missing) = {
            let state = self.state.read();
            let fresh = state.freshness.fresh(now);
            let held = self.held(&state, uid);
            let hit = fresh && matches!(held, Some((_, false)));
            (fresh, held, fresh && !hit && state.missing.remembered(uid, now))
        };
        let held = match held {
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
        if missing {
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

    /// The entry for `uid`, marked used, and whether it is past the age limit. Counts
    /// nothing: `lookup` counts.
    fn held(&self, state: &State, uid: &str) -> Option<(Arc<CachedOrder>, bool)> {
        let entry = state.entries.get(uid)?;
        Some((entry.value.clone(), self.limits.expired(entry.kept_at, self.time.micros())))
    }

    /// Runs `load` for `uid` once however many ask at the same time, and remembers what
    /// it found unless the order changed, or the listener came or went, meanwhile.
    fn load_once(&self, uid: &str, fresh: bool, load: impl FnOnce() -> anyhow::Result<Option<StoredOrder>>) -> Outcome {
        // The leader holds a permit for as long as it reads; a request for the same order
        // waits for it, up to `database_wait`.
        let (flight, permit) = {
            let mut state = self.state.write();
            match state.flights.join(uid) {
                Some(flight) => (flight, None),
                None => {
                    // A read of it may have ended since this request looked at the cache
                    // and the memory of missing ids: what it found is there now.
                    if fresh {
                        if state.missing.check(uid, Instant::now()) {
                            self.stats.negative_hits.inc();
                            return Ok(None);
                        }
                        if let Some((hit, false)) = self.held(&state, uid) {
                            return Ok(Some(hit));
                        }
                    }
                    let Some(permit) = self.permits.take() else {
                        self.stats.database_busy.inc();
                        return Err(Unavailable::Busy);
                    };
                    (state.flights.begin(uid), Some(permit))
                }
            }
        };
        if permit.is_none() {
            return flight.wait(Instant::now() + self.limits.database_wait);
        }

        self.stats.db_reads.inc();
        let outcome = flight::read(uid, load);
        // The permit is given back before the flight ends: a request that finds no flight
        // then also finds the permit free.
        drop(permit);
        self.land(uid, &flight, &outcome);
        outcome
    }

    /// Begins the read of `uid` for a request that does not wait for it but hands it over
    /// (`store::Readers::hand`), and ends it with `Lead::end`. Only for a miss with
    /// nothing else to wait for: the cache fresh, no copy of the order held, the id not
    /// remembered as missing, no read of it in flight and a permit free. Any other
    /// request is `lookup`'s (None here, nothing counted). Counted as a miss and a read.
    pub fn lead(self: &Arc<Self>, uid: &str) -> Option<Lead> {
        let flight = {
            let mut state = self.state.write();
            let now = Instant::now();
            let nothing_to_wait_for = state.freshness.fresh(now)
                && !state.entries.contains(uid)
                && !state.missing.remembered(uid, now)
                && state.flights.join(uid).is_none();
            if !nothing_to_wait_for {
                return None;
            }
            let permit = self.permits.take()?;
            (state.flights.begin(uid), permit)
        };
        self.stats.misses.inc();
        self.stats.db_reads.inc();
        let (flight, permit) = flight;
        Some(Lead { cache: self.clone(), uid: uid.to_string(), flight, permit: Some(permit) })
    }

    /// Ends `uid`'s flight with `outcome`: kept, in the same hold of the lock, if the
    /// flight is still current (no request in between reads again, and whatever
    /// superseded the read meanwhile has marked the flight), then given to every request
    /// that joined it.
    fn land(&self, uid: &str, flight: &Flight, outcome: &Outcome) {
        let mut state = self.state.write();
        let mut evicted = 0;
        let found = outcome.as_ref().ok().and_then(|order| order.as_ref()).map(|order| order.version());
        if state.flights.end(uid, found) {
            match outcome {
                Ok(Some(order)) => evicted = state.entries.put(order.clone(), self.time.micros()),
                Ok(None) if !self.limits.negative_ttl.is_zero() => {
                    let now = Instant::now();
                    state.missing.remember(uid, now, now + self.limits.negative_ttl);
                }
                Ok(None) | Err(_) => {}
            }
        }
        drop(state);
        self.stats.evictions.inc_by(evicted as u64);
        flight.finish(outcome.clone());
    }

    pub fn len(&self) -> usize {
        self.state.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.state.read().entries.bytes()
    }

    /// Whether `uid` is held, without marking it used.
    pub fn contains(&self, uid: &str) -> bool {
        self.state.read().entries.contains(uid)
    }
}

#[cfg(test)]
pub(crate) mod tests;
