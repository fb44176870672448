//! The reads behind the cache's misses, shared: the ids of the requests that must read
//! PostgreSQL at the same time are read together, in one statement (`read::orders`), by
//! threads of their own, one for each connection the pool keeps.
//!
//! A request asks for an id in one of two ways. A worker (`Readers::read`) waits for the
//! answer and then writes its response. A connection's own thread (`Readers::hand`)
//! hands over the id with what to do with its answer, and goes back to reading its
//! connection: the reading thread then writes the response itself. Misses handed over
//! so cost no worker and no thread that sleeps until the answer comes and is woken for
//! it: on two cores, `bench/run miss` saw the machine switch threads 6.6 times a miss
//! when every miss went through a worker (105,000 a second at 16,000 misses), and 3.0
//! times handed over (73,000 at 24,400).
//!
//! A reading thread takes every id waiting, reads them, gives each its answer, and goes
//! on while ids wait. One is woken when an id is asked for and none reads; another
//! starts beside those running only when `ENOUGH` ids wait, or when the first has
//! waited `STALLED` (a thread held up by a client), up to one per connection.
//! So under load the misses of many requests share one round trip to PostgreSQL, where
//! each would otherwise make its own: on two cores, `bench/run miss` served more misses
//! with one statement at a time than with a second beside it once 6 ids wait (10.2 ids a
//! statement against 3.6; 0.59 of the reference's rate against 0.50).
//!
//! How many requests wait at once is bounded before they get here (the cache's
//! permits). A request waits as long as the read that holds its id takes, which the read
//! connection's own limits bound (`read_statement_timeout_ms`, TCP keepalives).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
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

/// How long the first id waiting may wait before the next one asked for starts another
/// read beside the ones running (when a connection is free), however few wait. A read's
/// thread writes its answers to the clients: one that does not take its response holds
/// that thread up to `http.request_timeout_ms`, and the ids asked for meanwhile go on
/// without it. Far above a read's usual wait (about a millisecond at the p99 in
/// `bench/run miss`); a statement slower than this, on a slow database, lets as many
/// run at once as when `ENOUGH` wait.
const STALLED: Duration = Duration::from_millis(50);

/// What one id's read gives: the order, None if PostgreSQL does not have it, or why it
/// could not be read (shared by every id of the statement).
pub type Answer = Result<Option<StoredOrder>, String>;

/// What a request that handed its id over does with the answer, on the reading thread.
pub type Then = Box<dyn FnOnce(Answer) + Send>;

/// Where a worker waits for its answer.
#[derive(Default)]
struct Slot {
    answer: Mutex<Option<Answer>>,
    given: Condvar,
}

impl Slot {
    fn set(&self, answer: Answer) {
        *self.answer.lock() = Some(answer);
        self.given.notify_one();
    }

    fn wait(&self) -> Answer {
        let mut answer = self.answer.lock();
        loop {
            match answer.take() {
                Some(given) => return given,
                None => self.given.wait(&mut answer),
            }
        }
    }
}

/// Who waits for an id's answer.
enum Asker {
    Waiting(Arc<Slot>),
    Handed(Then),
}

impl Asker {
    fn answer(self, uid: &str, answer: Answer) {
        match self {
            Asker::Waiting(slot) => slot.set(answer),
            Asker::Handed(then) => {
                // A request that panics on its answer loses its response (tiny_http
                // answers it 500); the thread goes on with the others.
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(answer))) {
                    error!("event=order_answer_panicked order_uid={uid} panic={:?}", panic_text(&*panic));
                }
            }
        }
    }
}

/// An id waiting to be read, and who waits for it.
type Ask = (String, Asker);

/// The ids waiting to be read, and the reading threads.
#[derive(Default)]
struct Queue {
    waiting: Vec<Ask>,
    /// Since when the first of `waiting` waits.
    since: Option<Instant>,
    /// Threads reading, or woken to read and yet to start.
    reading: usize,
    /// Of those, woken and yet to start.
    woken: usize,
    stopping: bool,
}

struct Shared {
    pool: Arc<Pool>,
    most: usize,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Statements run, for `/metrics`.
    statements: IntCounter,
}

/// The shared reads of one pool's connections.
pub struct Readers {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Readers {
    /// Starts one reading thread for each connection `pool` keeps; each statement is
    /// counted in `statements`.
    pub fn start(pool: Arc<Pool>, statements: IntCounter) -> anyhow::Result<Readers> {
        let most = pool.size().max(1);
        let shared = Arc::new(Shared { pool, most, queue: Mutex::default(), wake: Condvar::new(), statements });
        let readers = Readers { shared, threads: Mutex::new(Vec::new()) };
        for i in 0..most {
            let shared = readers.shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("order-read-{i}"))
                .spawn(move || shared.run())
                .context("spawn an order reading thread")?;
            readers.threads.lock().push(thread);
        }
        Ok(readers)
    }

    /// How many reads run now, and how many ids wait for one.
    pub fn in_progress(&self) -> (usize, usize) {
        let queue = self.shared.queue.lock();
        (queue.reading, queue.waiting.len())
    }

    /// The order `uid` as PostgreSQL has it, or None; read together with whatever other
    /// ids wait at the same time. The calling thread waits for it.
    pub fn read(&self, uid: &str) -> anyhow::Result<Option<StoredOrder>> {
        let slot = Arc::new(Slot::default());
        self.ask(uid.to_string(), Asker::Waiting(slot.clone()));
        slot.wait().map_err(|e| anyhow!(e))
    }

    /// Reads `uid` as `read` does, without waiting: `then` gets the answer, on the thread
    /// that read it. It must not wait on anything slow: the ids asked for meanwhile wait
    /// for it, up to `STALLED` when a connection is free.
    pub fn hand(&self, uid: String, then: Then) {
        self.ask(uid, Asker::Handed(then));
    }

    fn ask(&self, uid: String, asker: Asker) {
        let mut queue = self.shared.queue.lock();
        if queue.stopping {
            drop(queue);
            return asker.answer(&uid, Err("the service is stopping".to_string()));
        }
        if queue.waiting.is_empty() {
            queue.since = Some(Instant::now());
        }
        queue.waiting.push((uid, asker));
        self.shared.start_if_due(&mut queue);
    }

    /// Lets the reading threads answer the ids waiting, then joins them. Ids asked for
    /// afterwards are answered at once, as failed.
    pub fn stop(&self) {
        self.shared.queue.lock().stopping = true;
        self.shared.wake.notify_all();
        for thread in self.threads.lock().drain(..) {
            if thread.join().is_err() {
                error!("event=order_reader_panicked");
            }
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    /// Wakes a thread to read the ids waiting, if none reads, or if a connection is free
    /// and `ENOUGH` wait or the first has waited `STALLED`.
    fn start_if_due(&self, queue: &mut Queue) {
        let beside = || queue.waiting.len() >= ENOUGH || queue.since.is_some_and(|since| since.elapsed() >= STALLED);
        let due = !queue.waiting.is_empty() && (queue.reading == 0 || (queue.reading < self.most && beside()));
        if due {
            queue.reading += 1;
            queue.woken += 1;
            self.wake.notify_one();
        }
    }

    /// A reading thread: woken, it reads every id waiting in one statement, gives each
    /// its answer, and goes on while ids wait. (Waking another thread to read the ids
    /// that waited while this one gives its answers made smaller statements and served
    /// fewer misses, in `bench/run miss`: 5.7 ids a statement against 9.9, 0.51 of the
    /// reference's rate against 0.60.)
    fn run(&self) {
        let mut queue = self.queue.lock();
        loop {
            while queue.woken == 0 {
                if queue.stopping && queue.waiting.is_empty() && queue.reading == 0 {
                    return;
                }
                self.wake.wait(&mut queue);
            }
            queue.woken -= 1;
            loop {
                let ids = std::mem::take(&mut queue.waiting);
                queue.since = None;
                if ids.is_empty() {
                    queue.reading -= 1;
                    if queue.stopping {
                        self.wake.notify_all();
                    }
                    break;
                }
                drop(queue);
                let found = self.read_all(&ids);
                answer_all(ids, found);
                queue = self.queue.lock();
            }
        }
    }

    /// Reads `ids` in one statement: the orders found, by id, or why they could not be.
    fn read_all(&self, ids: &[Ask]) -> Result<HashMap<String, StoredOrder>, String> {
        self.statements.inc();
        // A read that panics fails its ids; the thread goes on.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let uids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
            self.pool.with(|conn| read::orders(conn, &uids))
        }));
        match read {
            Ok(Ok(orders)) => Ok(orders.into_iter().map(|o| (o.uid.clone(), o)).collect()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(panic) => {
                error!("event=order_read_panicked orders={} panic={:?}", ids.len(), panic_text(&*panic));
                Err(format!("the read of {} orders panicked", ids.len()))
            }
        }
    }
}

/// Gives each of `ids` its answer from what their statement `found`.
fn answer_all(ids: Vec<Ask>, found: Result<HashMap<String, StoredOrder>, String>) {
    for (uid, asker) in ids {
        let answer = match &found {
            // An id asked for twice gets the order both times.
            Ok(orders) => Ok(orders.get(&uid).cloned()),
            Err(e) => Err(e.clone()),
        };
        asker.answer(&uid, answer);
    }
}
