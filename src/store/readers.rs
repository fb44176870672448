//! The reads behind the cache's misses, shared: the ids of the requests that must read
//! PostgreSQL at the same time are read together, in one statement (`read::orders`).
//!
//! A request that finds no read running reads at once, on its own thread. One that finds
//! a read running waits for its answer, and the request that ends a read and finds ids
//! waiting takes them all out and hands them, with its place, to the first of them,
//! which reads them. Another read starts beside those running only when `ENOUGH` ids
//! wait, up to `most` at once, one per connection the pool keeps. So a miss alone costs
//! one statement and no hand-off between threads, and under load the misses of many
//! requests share one round trip to PostgreSQL, where each would otherwise make its own:
//! on two cores, `bench/run miss` served more misses with one statement at a time (8.6
//! ids each) than with four (1.6 ids each), 17,558 against 14,219 a second.
//!
//! How many requests wait at once is bounded before they get here (the cache's
//! permits). A request waits as long as the read that holds its id takes, which the read
//! connection's own limits bound (`read_statement_timeout_ms`, TCP keepalives).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use log::error;
use parking_lot::{Condvar, Mutex};
use prometheus::IntCounter;

use super::pool::Pool;
use super::read;
use crate::model::StoredOrder;
use crate::runtime::panic_text;

/// Ids waiting that start another read beside the ones running (when a connection is
/// free): fewer wait for the read that runs to end, and share the next one.
const ENOUGH: usize = 16;

/// What one id's read gives: the order, None if PostgreSQL does not have it, or why it
/// could not be read (shared by every id of the statement).
type Answer = Result<Option<StoredOrder>, String>;

/// Where a waiting request learns what to do.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    /// A read ended with these ids waiting, this one first: its request reads them now.
    YourTurn(Vec<Ask>),
    Answered(Answer),
}

/// An id waiting to be read, and where its request waits.
type Ask = (String, Arc<Slot>);

impl Slot {
    fn set(&self, state: SlotState) {
        *self.state.lock() = state;
        self.changed.notify_one();
    }

    /// Its turn or its answer, once given; its lock is released before it returns.
    fn wait(&self) -> SlotState {
        let mut state = self.state.lock();
        loop {
            match std::mem::take(&mut *state) {
                SlotState::Waiting => self.changed.wait(&mut state),
                given => return given,
            }
        }
    }
}

/// The ids waiting to be read, and how many reads run.
#[derive(Default)]
struct Queue {
    waiting: Vec<Ask>,
    reading: usize,
}

/// The shared reads of one pool's connections.
pub struct Readers {
    pool: Arc<Pool>,
    most: usize,
    queue: Mutex<Queue>,
    /// Statements run, for `/metrics`.
    statements: IntCounter,
}

impl Readers {
    /// Reads on `pool`'s connections, at most as many at once as it keeps, each statement
    /// counted in `statements`.
    pub fn new(pool: Arc<Pool>, statements: IntCounter) -> Readers {
        let most = pool.size().max(1);
        Readers { pool, most, queue: Mutex::new(Queue::default()), statements }
    }

    /// How many reads run now, and how many ids wait for one.
    pub fn in_progress(&self) -> (usize, usize) {
        let queue = self.queue.lock();
        (queue.reading, queue.waiting.len())
    }

    /// The order `uid` as PostgreSQL has it, or None; read together with whatever other
    /// ids wait at the same time.
    pub fn read(&self, uid: &str) -> anyhow::Result<Option<StoredOrder>> {
        let slot = Arc::new(Slot::default());
        let free = {
            let mut queue = self.queue.lock();
            queue.waiting.push((uid.to_string(), slot.clone()));
            // With no read running, no read has ended with ids waiting: this one is alone.
            let free = queue.reading == 0 || (queue.reading < self.most && queue.waiting.len() >= ENOUGH);
            if free {
                queue.reading += 1;
            }
            free.then(|| std::mem::take(&mut queue.waiting))
        };
        let ids = match free {
            Some(ids) => ids,
            None => match slot.wait() {
                SlotState::Answered(answer) => return answer.map_err(|e| anyhow!(e)),
                SlotState::YourTurn(ids) => ids,
                SlotState::Waiting => unreachable!("wait returns what was given"),
            },
        };
        let mut mine = None;
        for ((_, other), answer) in self.read_all(&ids) {
            if Arc::ptr_eq(other, &slot) {
                mine = Some(answer);
            } else {
                other.set(SlotState::Answered(answer));
            }
        }
        {
            // The queue's lock, then a slot's: never the other way round. The ids waiting
            // leave the queue with the place, so that no other read hands them on again.
            let mut queue = self.queue.lock();
            if queue.waiting.is_empty() {
                queue.reading -= 1;
            } else {
                let next = std::mem::take(&mut queue.waiting);
                let first = next[0].1.clone();
                first.set(SlotState::YourTurn(next));
            }
        }
        mine.expect("the ids read include the reader's own").map_err(|e| anyhow!(e))
    }

    /// Reads `ids` in one statement; each with its answer.
    fn read_all<'a>(&self, ids: &'a [Ask]) -> impl Iterator<Item = (&'a Ask, Answer)> {
        self.statements.inc();
        // A read that panics fails its ids; the place is handed on all the same.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let uids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
            self.pool.with(|conn| read::orders(conn, &uids))
        }));
        let found: Result<HashMap<String, StoredOrder>, String> = match read {
            Ok(Ok(orders)) => Ok(orders.into_iter().map(|o| (o.uid.clone(), o)).collect()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(panic) => {
                error!("event=order_read_panicked orders={} panic={:?}", ids.len(), panic_text(&*panic));
                Err(format!("the read of {} orders panicked", ids.len()))
            }
        };
        ids.iter().map(move |ask| {
            let answer = match &found {
                Ok(orders) => Ok(orders.get(&ask.0).cloned()),
                Err(e) => Err(e.clone()),
            };
            (ask, answer)
        })
    }
}
