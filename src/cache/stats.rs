//! The cache's counters and its one gauge, registered with the service's metrics.

use prometheus::{IntCounter, IntGauge};

/// Counters, for `/metrics` and the benchmarks.
pub struct Stats {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub negative_hits: IntCounter,
    pub db_reads: IntCounter,
    pub db_statements: IntCounter,
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
            db_statements,
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
            db_statements,
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
            db_statements: counter(
                "orders_cache_db_read_statements_total",
                "Statements that read misses' orders: the ids waiting when a reader is free share one.",
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
