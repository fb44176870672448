//! The composition root: `Service` starts the HTTP workers, the listener thread (which
//! fills the cache and keeps it in step) and the consumer thread, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{error, info};

use crate::cache::{Cache, Limits};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime::{Health, ShutdownTrigger, shutdown_channel};
use crate::store::Pool;
use crate::{consumer, http, listener};

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
        let cache = Arc::new(Cache::new(Limits::new(&config.cache, config.http.workers)));
        let metrics = Arc::new(Metrics::new(&cache));
        let pool = Arc::new(Pool::new(&config.database));
        let state = Arc::new(http::State::new(cache.clone(), pool, health.clone(), metrics.clone())?);
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
