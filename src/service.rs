//! The running service and what its threads share: `Service` starts the HTTP workers, the
//! listener thread (which fills the cache and keeps it in step) and the consumer thread,
//! and stops them in order; `Health` is what `/readyz` reports;
//! `Shutdown` is the stop signal every thread watches; `Backoff` paces every retry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{error, info};

use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Pool;
use crate::{consumer, http, listener};

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

/// The running service: HTTP workers, the listener thread and the consumer thread.
pub struct Service {
    http: http::Server,
    listener: JoinHandle<()>,
    consumer: JoinHandle<()>,
    trigger: ShutdownTrigger,
    health: Arc<Health>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// Starts answering HTTP and returns. The listener thread then connects to
    /// PostgreSQL (retrying with backoff while it is not there), applies the migrations,
    /// listens for changes and fills the cache; the consumer thread waits for that, then
    /// consumes. Meanwhile `/healthz` answers and `/readyz` says what the service waits
    /// for; order requests wait for the cache.
    pub fn spawn(config: Config) -> anyhow::Result<Service> {
        let (trigger, shutdown) = shutdown_channel();
        let health = Arc::new(Health::default());
        let cache = Arc::new(Cache::new(config.cache.limits(config.http.workers)));
        let metrics = Arc::new(Metrics::new(&cache));
        let pool = Arc::new(Pool::new(&config.database));
        let state = Arc::new(http::State::new(cache.clone(), pool, health.clone(), metrics.clone()));
        let http = http::Server::start(&config.http, state, shutdown.clone())?;

        // Created here so that a bad Kafka setting stops the start; it reaches no broker
        // yet, so a broker that is not up does not.
        let consumer =
            consumer::Consumer::new(&config, cache.clone(), health.clone(), metrics.clone(), shutdown.clone())?;
        let listener = {
            let (config, cache, health, shutdown) = (config.clone(), cache.clone(), health.clone(), shutdown.clone());
            let name = format!("orders-svc listener {}", http.addr());
            thread::Builder::new()
                .name("listener".into())
                .spawn(move || listener::run(&config, &name, &cache, &health, &shutdown))
                .context("spawn listener thread")?
        };
        let health_for_thread = health.clone();
        let consumer = thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                while !health_for_thread.cache_warm() {
                    if shutdown.sleep(Duration::from_millis(10)) {
                        return;
                    }
                }
                consumer.run();
            })
            .context("spawn consumer thread")?;
        Ok(Service { http, listener, consumer, trigger, health, cache, metrics })
    }

    /// `spawn`, then waits until the cache is filled, for callers (tests, benchmarks)
    /// that want to use the service at once. Fails after `limit` with what it waited for.
    pub fn start(config: Config) -> anyhow::Result<Service> {
        let limit = Duration::from_secs(60);
        let service = Service::spawn(config)?;
        let started = Instant::now();
        while !service.health.cache_warm() {
            if started.elapsed() > limit {
                let problem = service.health.startup_problem().unwrap_or_else(|| "no reason given".into());
                service.shutdown();
                anyhow::bail!("the service was not ready after {limit:?}: {problem}");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(service)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops consuming (the batch in hand is written and committed first) and listening,
    /// then lets the HTTP workers finish their requests, and joins every thread.
    pub fn shutdown(mut self) {
        let started = Instant::now();
        self.trigger.signal();
        if self.consumer.join().is_err() {
            error!("event=consumer_panicked");
        }
        if self.listener.join().is_err() {
            error!("event=listener_panicked");
        }
        self.http.stop();
        info!("event=shutdown_complete ms={}", started.elapsed().as_millis());
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
