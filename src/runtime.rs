//! What every thread of the service shares: `Health` is what `/readyz` reports;
//! `Shutdown` is the stop signal every thread watches; `Backoff` paces every retry;
//! `LogThrottle` keeps a flood of one event to a line a second; `panic_text` says what a
//! caught panic said.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

/// What `/readyz` reports, set by the threads that know.
#[derive(Debug, Default)]
pub struct Health {
    cache_warm: AtomicBool,
    consumer_joined: AtomicBool,
    assigned_partitions: AtomicUsize,
    /// Why the start is not done yet, while the listener thread waits for PostgreSQL.
    startup_problem: parking_lot::Mutex<Option<String>>,
    /// Why change notifications are not being received, since the listening connection
    /// was lost and until it is back.
    listener_problem: parking_lot::Mutex<Option<String>>,
    /// The last error librdkafka reported about the brokers (unreachable, a refused TLS
    /// handshake or SASL login), until the group is joined.
    broker_problem: parking_lot::Mutex<Option<String>>,
    /// Why the consumer stopped for good (a fatal error), if it did.
    consumer_stopped: parking_lot::Mutex<Option<String>>,
}

impl Health {
    pub fn cache_warm(&self) -> bool {
        self.cache_warm.load(Ordering::SeqCst)
    }
    pub fn set_cache_warm(&self) {
        *self.startup_problem.lock() = None;
        self.cache_warm.store(true, Ordering::SeqCst);
    }
    pub fn startup_problem(&self) -> Option<String> {
        self.startup_problem.lock().clone()
    }
    pub fn set_startup_problem(&self, problem: String) {
        *self.startup_problem.lock() = Some(problem);
    }
    pub fn listener_problem(&self) -> Option<String> {
        self.listener_problem.lock().clone()
    }
    pub fn set_listener_problem(&self, problem: Option<String>) {
        *self.listener_problem.lock() = problem;
    }
    /// True once the consumer has had its first assignment, even of zero partitions
    /// (a group can have more members than the topic has partitions).
    pub fn consumer_joined(&self) -> bool {
        self.consumer_joined.load(Ordering::SeqCst)
    }
    pub fn assigned_partitions(&self) -> usize {
        self.assigned_partitions.load(Ordering::SeqCst)
    }
    /// Records a rebalance's outcome: `n` partitions held now, and the group joined.
    pub fn record_assignment(&self, n: usize) {
        self.assigned_partitions.store(n, Ordering::SeqCst);
        self.consumer_joined.store(true, Ordering::SeqCst);
        *self.broker_problem.lock() = None;
    }
    /// The consumer will consume no more (a fatal error); `why` says why.
    pub fn set_consumer_stopped(&self, why: String) {
        *self.consumer_stopped.lock() = Some(why);
    }
    pub fn consumer_stopped(&self) -> Option<String> {
        self.consumer_stopped.lock().clone()
    }
    /// The group joined, whatever it assigned (the rebalance callback may not run for an
    /// empty assignment).
    pub fn record_joined(&self) {
        if !self.consumer_joined.swap(true, Ordering::SeqCst) {
            *self.broker_problem.lock() = None;
        }
    }
    pub fn broker_problem(&self) -> Option<String> {
        self.broker_problem.lock().clone()
    }
    pub fn set_broker_problem(&self, problem: String) {
        *self.broker_problem.lock() = Some(problem);
    }
}

/// The stop signal every thread watches. It is a channel nobody sends on: dropping the
/// `ShutdownTrigger` disconnects it, which wakes every waiting `sleep` at once.
#[derive(Clone)]
pub struct Shutdown(Receiver<()>);

pub struct ShutdownTrigger(Option<Sender<()>>);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = crossbeam_channel::bounded(0);
    (ShutdownTrigger(Some(tx)), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn signal(&mut self) {
        self.0.take();
    }
}

impl Shutdown {
    pub fn is_signalled(&self) -> bool {
        matches!(self.0.try_recv(), Err(TryRecvError::Disconnected))
    }
    /// Sleeps for `d` or until shutdown is signalled; returns true in the latter case.
    pub fn sleep(&self, d: Duration) -> bool {
        matches!(self.0.recv_timeout(d), Err(RecvTimeoutError::Disconnected))
    }
}

/// At most one log line a second for an event that requests can cause at any rate (a
/// flood of misses refused for want of a database place, say): `allow` says whether to
/// log now, and how many lines it held back since the last.
pub struct LogThrottle {
    /// The second (since the process's first use of any throttle) last logged in, plus one.
    logged: AtomicU64,
    held_back: AtomicU64,
}

impl Default for LogThrottle {
    fn default() -> LogThrottle {
        LogThrottle::new()
    }
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle { logged: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// `Some(held back)` if a line may be logged now, else None (and counts it).
    pub fn allow(&self) -> Option<u64> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let second = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1;
        let last = self.logged.load(Ordering::Relaxed);
        if last != second && self.logged.compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Capped exponential backoff, for operations retried until they succeed: the wait
/// doubles after each failed attempt, up to `max`.
#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { delay: initial, max, attempt: 1 }
    }

    /// The attempt under way, counted from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How long `next_delay` will wait.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The wait before the next attempt. Moves on to that attempt and doubles the
    /// following wait, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (delay * 2).min(self.max);
        self.attempt += 1;
        delay
    }
}

/// What a panic caught with `catch_unwind` said, for the log.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or(panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_event_is_logged_once_a_second_with_the_count_held_back() {
        let throttle = LogThrottle::new();
        assert_eq!(throttle.allow(), Some(0));
        let lines = (0..1000).filter(|_| throttle.allow().is_some()).count();
        std::thread::sleep(Duration::from_millis(1100));
        let held_back = throttle.allow().expect("a line a second later");
        // The first second may end during the loop and let one line through.
        assert!(lines <= 1, "{lines}");
        if lines == 0 {
            assert_eq!(held_back, 1000);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_counts_attempts() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        assert_eq!((b.attempt(), b.delay()), (1, Duration::from_millis(100)));
        let waits: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(b.attempt(), 6);
    }

    #[test]
    fn health_records_an_assignment_of_zero_partitions_as_joined() {
        let h = Health::default();
        assert!(!h.consumer_joined());
        h.record_assignment(0);
        assert!(h.consumer_joined());
        assert_eq!(h.assigned_partitions(), 0);
    }

    #[test]
    fn dropping_the_trigger_wakes_a_sleeper() {
        let (mut trigger, shutdown) = shutdown_channel();
        assert!(!shutdown.is_signalled());
        trigger.signal();
        assert!(shutdown.is_signalled());
        assert!(shutdown.sleep(Duration::from_secs(60)));
    }
}
