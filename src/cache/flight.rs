//! Single flight and the database permit: a miss reads PostgreSQL once however many
//! requests ask for that order at the same time, and at most
//! `Limits::max_database_waits` requests read PostgreSQL at once.
//!
//! The first request for an order (the leader) takes a permit and begins a flight; the
//! others join it and wait for its result, up to `Limits::database_wait`. The flights
//! are kept in the cache's state, under its lock: a version committed marks a flight
//! there so that only a read of that very version is kept, the listener coming or going
//! so that none is, and the leader keeps its result and ends the flight in one hold of
//! that lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::entry::CachedOrder;
use crate::model::StoredOrder;

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

/// What a read of one order gives: the order, None if PostgreSQL does not have it, or
/// why it could not be read.
pub type Outcome = Result<Option<Arc<CachedOrder>>, Unavailable>;

/// The permits to read PostgreSQL from the HTTP side.
pub(super) struct Permits {
    taken: Arc<AtomicUsize>,
    max: usize,
}

impl Permits {
    pub(super) fn new(max: usize) -> Permits {
        Permits { taken: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A permit, if one is free.
    pub(super) fn take(&self) -> Option<DatabaseWait> {
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| DatabaseWait(self.taken.clone()))
    }
}

/// A place among the requests reading PostgreSQL, given back when dropped. It may go
/// with the request to another thread.
pub struct DatabaseWait(Arc<AtomicUsize>);

impl Drop for DatabaseWait {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A database read in progress for one uid: where the requests that joined it wait for
/// its outcome.
#[derive(Default)]
pub(super) struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

impl Flight {
    /// The flight's outcome, once the leader has it; `Timeout` past `deadline`.
    pub(super) fn wait(&self, deadline: Instant) -> Outcome {
        let mut outcome = self.outcome.lock();
        while outcome.is_none() {
            if self.done.wait_until(&mut outcome, deadline).timed_out() && outcome.is_none() {
                return Err(Unavailable::Timeout);
            }
        }
        outcome.clone().expect("set before notify")
    }

    /// Gives the outcome to every request waiting, and to any that joined and has yet to
    /// wait.
    pub(super) fn finish(&self, outcome: Outcome) {
        *self.outcome.lock() = Some(outcome);
        self.done.notify_all();
    }
}

/// A flight begun, and whether its outcome may still be kept.
struct Begun {
    flight: Arc<Flight>,
    since: Since,
}

/// What happened to an order while a flight read it.
#[derive(Debug, PartialEq, Eq)]
enum Since {
    /// Nothing: what the read finds is current.
    Nothing,
    /// This version was committed (published by the consumer, or notified): only a read
    /// that found this very version is current.
    Committed(String),
    /// The listener came or went: anything may have changed unnoticed.
    Unknown,
}

/// The flights in progress, by uid.
#[derive(Default)]
pub(super) struct Flights(HashMap<String, Begun>);

impl Flights {
    /// The flight in progress for `uid`, to wait on.
    pub(super) fn join(&self, uid: &str) -> Option<Arc<Flight>> {
        self.0.get(uid).map(|begun| begun.flight.clone())
    }

    /// Begins the flight for `uid`; there is none.
    pub(super) fn begin(&mut self, uid: &str) -> Arc<Flight> {
        let flight = Arc::new(Flight::default());
        self.0.insert(uid.to_string(), Begun { flight: flight.clone(), since: Since::Nothing });
        flight
    }

    /// Ends the flight for `uid`, whose read found `version` (None: no order). Returns
    /// whether its outcome may be kept: if nothing was committed meanwhile, or what was
    /// is the version it found.
    pub(super) fn end(&mut self, uid: &str, version: Option<&str>) -> bool {
        self.0.remove(uid).is_some_and(|begun| match begun.since {
            Since::Nothing => true,
            Since::Committed(committed) => version == Some(committed.as_str()),
            Since::Unknown => false,
        })
    }

    /// `version` of `uid` is committed: what its flight reads may be older.
    pub(super) fn supersede(&mut self, uid: &str, version: &str) {
        if let Some(begun) = self.0.get_mut(uid)
            && begun.since != Since::Unknown
        {
            begun.since = Since::Committed(version.to_string());
        }
    }

    /// The listener came or went: what any flight reads may have changed unnoticed.
    pub(super) fn supersede_all(&mut self) {
        for begun in self.0.values_mut() {
            begun.since = Since::Unknown;
        }
    }

    /// How many requests wait on the flight for `uid`, besides its leader.
    #[cfg(test)]
    pub(super) fn waiting(&self, uid: &str) -> usize {
        // The map and the leader hold one reference each; every other is a waiter's.
        self.0.get(uid).map_or(0, |begun| Arc::strong_count(&begun.flight) - 2)
    }
}

/// Runs `load` for `uid`. A read that panics is answered as failed, and its waiters
/// with it.
pub(super) fn read(uid: &str, load: impl FnOnce() -> anyhow::Result<Option<StoredOrder>>) -> Outcome {
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|panic| {
        log::error!("event=order_read_panicked order_uid={uid} panic={:?}", crate::runtime::panic_text(&*panic));
        Err(anyhow::anyhow!("the read of order {uid} panicked"))
    });
    outcome(loaded.map_err(|e| format!("{e:#}")))
}

/// What a read that found `loaded` gives (the error, for the log).
pub(super) fn outcome(loaded: Result<Option<StoredOrder>, String>) -> Outcome {
    match loaded {
        Ok(Some(order)) => Ok(Some(Arc::new(CachedOrder::stored(order)))),
        Ok(None) => Ok(None),
        Err(e) => Err(Unavailable::Failed(e)),
    }
}
