//! orders-svc: takes orders from a Kafka topic, keeps them in PostgreSQL and serves them
//! over HTTP from an in-memory cache. `Service::start` runs the whole pipeline in-process;
//! the binary and the integration tests both use it.

pub mod cache;
pub mod config;
pub mod generate;
pub mod consumer;
pub mod http;
pub mod model;
pub mod pages;
pub mod produce;
pub mod rejected;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{error, info};

use crate::cache::Cache;
use crate::config::Config;
use crate::store::Pool;

/// What `/readyz` reports, set by the threads that know.
#[derive(Debug, Default)]
pub struct Health {
    cache_warm: AtomicBool,
    consumer_joined: AtomicBool,
    assigned_partitions: AtomicUsize,
}

impl Health {
    pub fn cache_warm(&self) -> bool {
        self.cache_warm.load(Ordering::SeqCst)
    }
    pub fn set_cache_warm(&self) {
        self.cache_warm.store(true, Ordering::SeqCst);
    }
    /// True once the consumer has had its first assignment, even of zero partitions
    /// (a group can have more members than the topic has partitions).
    pub fn consumer_joined(&self) -> bool {
        self.consumer_joined.load(Ordering::SeqCst)
    }
    pub fn assigned_partitions(&self) -> usize {
        self.assigned_partitions.load(Ordering::SeqCst)
    }
    pub fn set_assigned_partitions(&self, n: usize) {
        self.assigned_partitions.store(n, Ordering::SeqCst);
        self.consumer_joined.store(true, Ordering::SeqCst);
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

/// The running service: HTTP workers and the consumer thread.
pub struct Service {
    http: http::Server,
    consumer: JoinHandle<()>,
    trigger: ShutdownTrigger,
    health: Arc<Health>,
    cache: Arc<Cache>,
}

impl Service {
    /// Applies migrations, starts answering HTTP, fills the cache from PostgreSQL (order
    /// requests wait for it), then starts consuming.
    pub fn start(config: Config) -> anyhow::Result<Service> {
        let db = &config.database;
        let timeout = Duration::from_secs(db.connect_timeout_secs);
        let mut client = store::connect(&db.url, timeout)?;
        store::migrate(&mut client)?;

        let (trigger, shutdown) = shutdown_channel();
        let health = Arc::new(Health::default());
        let cache = Arc::new(Cache::new(config.cache.limits()));
        let pool = Arc::new(Pool::new(&db.url, timeout, db.pool_size));
        let state = Arc::new(http::State { cache: cache.clone(), pool, health: health.clone() });
        let http = http::Server::start(config.http.addr, config.http.workers, state, shutdown.clone())?;

        let started = Instant::now();
        let recent = store::recent_orders(&mut client, config.cache.max_orders)?;
        let read = recent.len();
        cache.warm(recent);
        health.set_cache_warm();
        info!(
            "event=cache_warmed orders={} read={read} bytes={} ms={}",
            cache.len(),
            cache.bytes(),
            started.elapsed().as_millis()
        );
        drop(client);

        let consumer = consumer::Consumer::new(&config, cache.clone(), health.clone(), shutdown)?;
        let consumer = thread::Builder::new()
            .name("consumer".into())
            .spawn(move || consumer.run())
            .context("spawn consumer thread")?;
        Ok(Service { http, consumer, trigger, health, cache })
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

    /// Stops consuming (the batch in hand is written and committed first), then lets the
    /// HTTP workers finish their requests, and joins every thread.
    pub fn shutdown(mut self) {
        let started = Instant::now();
        self.trigger.signal();
        if self.consumer.join().is_err() {
            error!("event=consumer_panicked");
        }
        self.http.stop();
        info!("event=shutdown_complete ms={}", started.elapsed().as_millis());
    }
}
