//! The service's Prometheus metrics: what the consumer, the cache and the HTTP side
//! count, and their rendering as the text format for `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use tiny_http::ConnectionCounts;

use crate::cache::Cache;

/// The statuses HTTP requests are counted by; any other is counted as "other".
const COUNTED_STATUSES: [u16; 10] = [200, 303, 304, 400, 404, 405, 414, 431, 500, 503];

/// Where a status's counters are: its place in `COUNTED_STATUSES`, or past the end for
/// "other".
fn status_slot(status: u16) -> usize {
    COUNTED_STATUSES.iter().position(|&code| code == status).unwrap_or(COUNTED_STATUSES.len())
}

/// The `status` label: the code, or "other" for a status not counted by itself.
fn status_label(status: u16) -> String {
    if COUNTED_STATUSES.contains(&status) { status.to_string() } else { "other".to_string() }
}

/// An HTTP route without its data: the `route` label of `orders_http_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteName {
    Order,
    ApiOrder,
    Index,
    Lookup,
    Asset,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Other,
}

impl RouteName {
    /// Every name, each at the index of its discriminant (`name as usize`).
    pub const ALL: [RouteName; 10] = [
        RouteName::Order,
        RouteName::ApiOrder,
        RouteName::Index,
        RouteName::Lookup,
        RouteName::Asset,
        RouteName::Healthz,
        RouteName::Readyz,
        RouteName::Metrics,
        RouteName::OpenApi,
        RouteName::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RouteName::Order => "order",
            RouteName::ApiOrder => "api_order",
            RouteName::Index => "index",
            RouteName::Lookup => "lookup",
            RouteName::Asset => "asset",
            RouteName::Healthz => "healthz",
            RouteName::Readyz => "readyz",
            RouteName::Metrics => "metrics",
            RouteName::OpenApi => "openapi",
            RouteName::Other => "other",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub messages_consumed: IntCounter,
    pub orders_stored: IntCounterVec,
    pub messages_rejected: IntCounterVec,
    pub db_retries: IntCounter,
    pub batches_fenced: IntCounter,
    pub kafka_commit_failures: IntCounter,
    pub batch_messages: Histogram,
    pub batch_seconds: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    pub position_beyond_end: IntGaugeVec,
    pub messages_lost: IntCounterVec,
    pub kafka_watermark_queries: IntCounter,
    pub assigned_partitions: IntGauge,
    pub ready: IntGauge,
    /// When the batch write in progress began, in ms since the Unix epoch; 0 when none.
    /// Kept by the consumer thread, turned into a duration when `/metrics` is read: a
    /// write that hangs stops that thread, and with it every gauge it would update.
    write_started_ms: std::sync::atomic::AtomicU64,
    batch_write_in_flight: prometheus::Gauge,
    pub http_requests: IntCounterVec,
    http_by_route_status: Vec<std::sync::OnceLock<IntCounter>>,
    pub http_seconds: Histogram,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    accept_errors: IntCounter,
}

impl Metrics {
    /// The metrics, registered together with the cache's counters and, on Linux, the
    /// process's own (`process_resident_memory_bytes`, CPU, open files).
    pub fn new(cache: &Cache) -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let m = Metrics {
            messages_consumed: counter(
                "orders_messages_consumed_total",
                "Messages taken from the topic and written (as orders or dead letters).",
            ),
            orders_stored: IntCounterVec::new(
                Opts::new(
                    "orders_stored_total",
                    "Orders in written batches, by outcome: inserted, replaced (a newer version), unchanged (the same \
                     content), stale (the stored version came from a later message; left alone).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            messages_rejected: IntCounterVec::new(
                Opts::new("orders_messages_rejected_total", "Messages kept as dead letters, by the rule they broke."),
                &["rule"],
            )
            .expect("valid metric"),
            db_retries: counter("orders_db_retries_total", "Batch writes that failed and were retried."),
            batches_fenced: counter(
                "orders_batches_fenced_total",
                "Batches not written because another consumer had written past where this one started reading.",
            ),
            kafka_commit_failures: counter(
                "orders_kafka_commit_failures_total",
                "Commits of offsets to Kafka (for lag tools) that failed and were retried.",
            ),
            batch_messages: Histogram::with_opts(
                HistogramOpts::new("orders_batch_messages", "Messages per written batch.")
                    .buckets(vec![1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0]),
            )
            .expect("valid metric"),
            batch_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "orders_batch_seconds",
                    "Time per batch, by phase: decode, write (the transaction), publish (to the cache), commit (the offsets).",
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
                &["phase"],
            )
            .expect("valid metric"),
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "orders_consumer_lag_messages",
                    "Messages on each assigned partition not yet committed, as librdkafka last saw it.",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            position_beyond_end: IntGaugeVec::new(
                Opts::new(
                    "orders_partition_position_beyond_end",
                    "1 for each assigned partition whose end the broker reports behind this consumer's position.",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            ready: IntGauge::new(
                "orders_ready",
                "1 while /readyz answers 200 (cache filled, change notifications heard, consumer in its group), else 0; \
                 set when /metrics is read.",
            )
            .expect("valid metric"),
            write_started_ms: std::sync::atomic::AtomicU64::new(0),
            batch_write_in_flight: prometheus::Gauge::new(
                "orders_batch_write_in_flight_seconds",
                "How long the batch write in progress has taken so far, retries included; 0 between writes.",
            )
            .expect("valid metric"),
            messages_lost: IntCounterVec::new(
                Opts::new(
                    "orders_messages_lost_total",
                    "Messages the broker deleted (retention, truncation) before this group read them: never stored.",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            kafka_watermark_queries: counter(
                "orders_kafka_watermark_queries_total",
                "Times the consumer thread asked the broker for a partition's watermarks, a round trip the batch \
                 waits for: a partition's offsets that skip, not explained by the partition's start as last \
                 fetched, or a partition that went back.",
            ),
            assigned_partitions: IntGauge::new("orders_assigned_partitions", "Partitions this instance consumes.")
                .expect("valid metric"),
            http_requests: IntCounterVec::new(
                Opts::new("orders_http_requests_total", "HTTP requests, by route and status."),
                &["route", "status"],
            )
            .expect("valid metric"),
            http_by_route_status: (0..RouteName::ALL.len() * (COUNTED_STATUSES.len() + 1))
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            http_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "orders_http_request_seconds",
                    "Time from a request's arrival at a worker to its response written.",
                )
                .buckets(prometheus::exponential_buckets(0.00005, 2.0, 16).expect("valid buckets")),
            )
            .expect("valid metric"),
            cache_entries: IntGauge::new("orders_cache_entries", "Orders in the cache.").expect("valid metric"),
            cache_bytes: IntGauge::new("orders_cache_bytes", "Bytes the cache counts against cache.max_bytes.")
                .expect("valid metric"),
            connections_open: IntGauge::new("orders_http_connections_open", "HTTP connections open now.")
                .expect("valid metric"),
            connections_refused: counter(
                "orders_http_connections_refused_total",
                "HTTP connections answered 503 and closed because http.max_connections were open.",
            ),
            accept_errors: counter(
                "orders_http_accept_errors_total",
                "Failures to accept an HTTP connection or to start its thread (such as running out of descriptors).",
            ),
            registry,
        };
        // Every series of a known label value exists from the start, at 0: a counter
        // that first appears already counting is invisible to rate() and increase(), so
        // the first dead letters of a rule would not raise an alert.
        for rule in crate::model::Rule::ALL {
            m.messages_rejected.with_label_values(&[rule.as_str()]);
        }
        for outcome in ["inserted", "replaced", "unchanged", "stale"] {
            m.orders_stored.with_label_values(&[outcome]);
        }
        let s = &cache.stats;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.messages_consumed.clone()),
            Box::new(m.orders_stored.clone()),
            Box::new(m.messages_rejected.clone()),
            Box::new(m.db_retries.clone()),
            Box::new(m.batches_fenced.clone()),
            Box::new(m.kafka_commit_failures.clone()),
            Box::new(m.batch_messages.clone()),
            Box::new(m.batch_seconds.clone()),
            Box::new(m.consumer_lag.clone()),
            Box::new(m.position_beyond_end.clone()),
            Box::new(m.messages_lost.clone()),
            Box::new(m.kafka_watermark_queries.clone()),
            Box::new(m.assigned_partitions.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.batch_write_in_flight.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_seconds.clone()),
            Box::new(m.cache_entries.clone()),
            Box::new(m.cache_bytes.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.accept_errors.clone()),
        ];
        for c in collectors.into_iter().chain(s.collectors()) {
            m.registry.register(c).expect("each metric registered once");
        }
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metrics registered once");
        m
    }

    /// Counts one request. Their counters are looked up once per route and status, here,
    /// not per request (a labelled lookup hashes under a lock), and kept; pairs never seen
    /// stay out of the output.
    pub fn count_request(&self, route: RouteName, status: u16) {
        self.http_by_route_status[route as usize * (COUNTED_STATUSES.len() + 1) + status_slot(status)]
            .get_or_init(|| self.http_requests.with_label_values(&[route.label(), &status_label(status)]))
            .inc();
    }

    /// The text exposition format, with the cache's size and the server's connection
    /// counts read now.
    /// A batch write begins (`true`) or ends (`false`).
    pub fn writing(&self, begins: bool) {
        let now = if begins { unix_ms() } else { 0 };
        self.write_started_ms.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn render(&self, cache: &Cache, connections: ConnectionCounts) -> String {
        let started = self.write_started_ms.load(std::sync::atomic::Ordering::Relaxed);
        let in_flight = if started == 0 { 0 } else { unix_ms().saturating_sub(started) };
        self.batch_write_in_flight.set(in_flight as f64 / 1000.0);
        self.cache_entries.set(cache.len() as i64);
        self.cache_bytes.set(cache.bytes() as i64);
        self.connections_open.set(connections.open as i64);
        // The server counts these itself; the counters catch up with it.
        self.connections_refused.inc_by(connections.refused.saturating_sub(self.connections_refused.get()));
        self.accept_errors.inc_by(connections.accept_errors.saturating_sub(self.accept_errors.get()));
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("metrics encode to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_not_listed_count_as_other() {
        assert_eq!(status_label(431), "431");
        assert_eq!(status_label(418), "other");
        assert_eq!(status_slot(418), status_slot(599));
        assert_ne!(status_slot(200), status_slot(503));
    }
}
