//! Putting messages on the topic: the `produce` command, the demo script and the tests
//! use this synchronous producer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

use crate::config;
use crate::consumer::client_config;

/// The longest wait for the broker in setting up, or committing, a transaction.
const TRANSACTION_WAIT: Duration = Duration::from_secs(30);
use crate::model::Rule;
use rdkafka::{ClientContext, Message as _};

/// Counts deliveries the broker confirmed and those it refused, and remembers where
/// each partition's last confirmed message went.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    ends: parking_lot::Mutex<BTreeMap<i32, i64>>,
}

/// Hands librdkafka's delivery reports to `Deliveries`.
struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
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
    producer: BaseProducer<DeliveryContext>,
    topic: String,
    deliveries: Arc<Deliveries>,
}

impl Producer {
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<Producer> {
        Producer::with_settings(brokers, topic, &[])
    }

    /// A producer with extra librdkafka settings, such as `batch.num.messages`.
    pub fn with_settings(brokers: &str, topic: &str, settings: &[(&str, &str)]) -> anyhow::Result<Producer> {
        let kafka = config::Kafka { brokers: brokers.to_string(), ..config::Kafka::default() };
        Producer::with_config(&kafka, topic, settings)
    }

    /// A producer to `topic` with the service's Kafka settings: its brokers and
    /// `kafka.properties` (TLS, SASL), then `settings`.
    pub fn with_config(kafka: &config::Kafka, topic: &str, settings: &[(&str, &str)]) -> anyhow::Result<Producer> {
        let deliveries = Arc::new(Deliveries::default());
        let mut client = client_config(kafka);
        client.set("enable.idempotence", "true").set("linger.ms", "5");
        for (key, value) in settings {
            client.set(*key, *value);
        }
        let producer = client
            .create_with_context(DeliveryContext(deliveries.clone()))
            .map_err(|e| config::kafka_error(e, kafka).context("create Kafka producer"))?;
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
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
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

    /// For a producer given a `transactional.id`: registers it with the broker and opens
    /// its first transaction.
    pub fn begin_transactions(&self) -> anyhow::Result<()> {
        self.producer.init_transactions(TRANSACTION_WAIT).context("set up the producer's transactions")?;
        self.producer.begin_transaction().context("begin a transaction")
    }

    /// Commits the open transaction (once its messages are delivered), then, with `more`,
    /// opens the next.
    pub fn commit_transaction(&self, more: bool) -> anyhow::Result<()> {
        self.producer.commit_transaction(TRANSACTION_WAIT).context("commit a transaction")?;
        if more {
            self.producer.begin_transaction().context("begin a transaction")?;
        }
        Ok(())
    }

    /// For each partition written to, one past the offset of its last confirmed message.
    pub fn delivered_ends(&self) -> BTreeMap<i32, i64> {
        self.deliveries.ends.lock().clone()
    }

    /// Waits until every queued message is acknowledged (for at most 5 minutes: one
    /// message per record batch against a loaded local broker can take minutes for tens
    /// of thousands); fails if any was refused.
    pub fn flush(&self) -> anyhow::Result<u64> {
        self.producer.flush(Duration::from_secs(300)).context("flush producer")?;
        let failed = self.deliveries.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} messages were not delivered to topic {}", self.topic);
        }
        Ok(self.deliveries.ok.load(Ordering::Relaxed))
    }
}

/// What `produce --count` sends.
pub struct Plan {
    pub count: u64,
    pub seed: u64,
    pub max_items: u64,
    /// Share of messages that are bad on purpose, each kind in turn at random.
    pub invalid_rate: f64,
    /// Messages per second at most; None for as fast as the broker takes them.
    pub rate: Option<u64>,
}

/// What a generated stream contained.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub valid: u64,
    pub invalid: u64,
}

/// Sends `plan.count` generated messages, writing the uid of each valid order to `uids`
/// and progress to stderr: a bar with the rate on a terminal, a line every two seconds
/// otherwise. The same seed gives the same messages.
pub fn send_generated(producer: &Producer, plan: &Plan, uids: &mut dyn std::io::Write) -> anyhow::Result<Sent> {
    use std::io::IsTerminal;
    use std::time::Instant;

    use super::generate::Generator;
    // Bad messages, and which messages are bad, come from generators of their own, so
    // that the valid orders of a seed are the same whatever the invalid rate.
    let mut generator = Generator::new(plan.seed, plan.max_items);
    let mut bad = Generator::new(plan.seed ^ 0xbad, plan.max_items);
    let mut dice = Generator::new(plan.seed ^ 0x5eed, 1);
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_report = started;
    let mut sent = Sent::default();
    for i in 0..plan.count {
        if let Some(rate) = plan.rate.filter(|r| *r > 0) {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if dice.chance(plan.invalid_rate) {
            let (kind, payload) = bad.invalid();
            self::send_invalid(producer, kind, &payload)?;
            sent.invalid += 1;
        } else {
            let order = generator.order();
            producer.send(Some(order.order_uid.as_bytes()), &order.to_json())?;
            writeln!(uids, "{}", order.order_uid).context("write uid")?;
            sent.valid += 1;
        }
        let now = Instant::now();
        let every = if terminal { Duration::from_millis(100) } else { Duration::from_secs(2) };
        if now - last_report >= every || i + 1 == plan.count {
            last_report = now;
            report(i + 1, plan.count, now - started, terminal);
        }
    }
    if terminal {
        eprintln!();
    }
    Ok(sent)
}

/// Bad messages are keyed by their kind, so they are easy to find among dead letters.
fn send_invalid(producer: &Producer, kind: Rule, payload: &[u8]) -> anyhow::Result<()> {
    producer.send(Some(format!("invalid-{kind}").as_bytes()), payload)
}

fn report(done: u64, total: u64, elapsed: Duration, terminal: bool) {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    if terminal {
        const WIDTH: u64 = 30;
        let filled = (done * WIDTH / total.max(1)) as usize;
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
        eprint!("\r[{bar}] {done}/{total} {:>3}% {rate:>8.0} msg/s", done * 100 / total.max(1));
    } else {
        eprintln!("produced={done}/{total} rate={rate:.0}/s elapsed_s={:.1}", elapsed.as_secs_f64());
    }
}
