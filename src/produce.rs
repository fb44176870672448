//! Putting messages on the topic: the `produce` command, the demo script and the tests
//! use this synchronous producer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::{ClientContext, Message as _};
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

/// Counts deliveries the broker confirmed and those it refused, and remembers where
/// each partition's last confirmed message went.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    ends: parking_lot::Mutex<BTreeMap<i32, i64>>,
}

struct Context_(Arc<Deliveries>);

impl ClientContext for Context_ {}

impl ProducerContext for Context_ {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut ends = self.0.ends.lock();
                let end = ends.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
                self.0.ok.fetch_add(1, Ordering::Relaxed)
            }
            Err((e, _)) => {
                log::error!("event=delivery_failed error={e}");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

pub struct Producer {
    producer: BaseProducer<Context_>,
    topic: String,
    deliveries: Arc<Deliveries>,
}

impl Producer {
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<Producer> {
        let deliveries = Arc::new(Deliveries::default());
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create_with_context(Context_(deliveries.clone()))
            .context("create Kafka producer")?;
        Ok(Producer { producer, topic: topic.to_string(), deliveries })
    }

    /// Queues one message; waits while the local queue is full.
    pub fn send(&self, key: Option<&[u8]>, payload: &[u8]) -> anyhow::Result<()> {
        let mut record = BaseRecord::to(&self.topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e).with_context(|| format!("send to topic {}", self.topic)),
            }
        }
    }

    /// Sends an order's JSON keyed by its `order_uid`, so every version of one order
    /// lands on one partition and keeps its order there.
    pub fn send_order_json(&self, payload: &[u8]) -> anyhow::Result<()> {
        let key = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("order_uid").and_then(|u| u.as_str()).map(str::to_owned));
        self.send(key.as_deref().map(str::as_bytes), payload)
    }

    /// For each partition written to, one past the offset of its last confirmed message.
    pub fn delivered_ends(&self) -> BTreeMap<i32, i64> {
        self.deliveries.ends.lock().clone()
    }

    /// Waits until every queued message is acknowledged; fails if any was refused.
    pub fn flush(&self) -> anyhow::Result<u64> {
        self.producer.flush(Duration::from_secs(30)).context("flush producer")?;
        let failed = self.deliveries.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} messages were not delivered to topic {}", self.topic);
        }
        Ok(self.deliveries.ok.load(Ordering::Relaxed))
    }
}
