//! The Kafka loop: the one thread that takes messages from the topic, writes them to
//! PostgreSQL and commits their offsets, and hands the stored orders over to be
//! published to the cache (by the decoder thread, in the order they were written).
//!
//! Its order of effects is the service's main promise. The group's position lives in
//! PostgreSQL (`consumer_offsets`) and advances in the same transaction as the rows of
//! each batch, by compare-and-set from where this consumer started reading: a batch is
//! written once, by the partition's current owner, or not at all. On assignment each
//! partition is read from its stored offset. A failed write is retried until it succeeds,
//! so no offset ever passes it. Kafka's committed offsets follow, for lag tools.
//!
//! Here is the loop (`Consumer::run`) and the module's face; beside it, one file a part:
//! `client` the Kafka client's settings, `rebalance` the group's callbacks,
//! `partitions` the table of partitions and their states, `collect` taking a batch from
//! `poll`, `batch` a batch as collected, decoded and committed (and the decoder thread,
//! which decodes and publishes), `write`
//! writing one, `pacing` committing offsets to Kafka, and `positions` seeking, pausing
//! and resuming partitions.

mod batch;
mod client;
mod collect;
mod pacing;
mod partitions;
mod positions;
mod rebalance;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use log::info;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use self::batch::{Decoded, Decoder, Publisher};
pub use self::client::client_config;
use self::pacing::CommitPacing;
use self::partitions::{Partition, Partitions};
use self::rebalance::GroupContext;
use self::write::BatchOutcome;
use crate::cache::Cache;
use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::model::Rules;
use crate::runtime::{Health, Shutdown};
use crate::store::Conn;

/// How long an idle poll waits before looking at the shutdown signal again.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often partitions waiting on the database or past their end are looked at again.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// The longest wait for the broker in a seek or a watermark query.
const BROKER_CALL: Duration = Duration::from_secs(5);

pub struct Consumer {
    consumer: BaseConsumer<GroupContext>,
    /// Of the config, only what the loop reads: batching and retries, the validation
    /// rules, and the database it writes to.
    ingest: config::Ingest,
    rules: Rules,
    database: config::Database,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    db: Option<Conn>,
    /// Offsets of written batches not committed to Kafka yet, and when to commit them.
    pacing: CommitPacing,
    /// When partitions waiting on something were last looked at.
    reconciled: Instant,
    /// Set by a fatal error: librdkafka delivers nothing more, and the loop ends.
    stopped: bool,
    /// For each partition, the position from which a loss was last reported, so that a
    /// batch dropped and read again does not report it twice.
    losses_reported: HashMap<Partition, i64>,
    /// Where committed batches are published (and the full ones handed to the decoder
    /// thread); while the loop runs.
    publisher: Option<Publisher>,
}

impl Consumer {
    /// Joins the consumer group and subscribes to the topic. Nothing is read yet.
    pub fn new(
        config: &Config,
        cache: Arc<Cache>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Consumer> {
        let k = &config.kafka;
        let context = GroupContext::new(health, metrics.clone(), k, &config.database);
        let consumer: BaseConsumer<GroupContext> = client::consumer_config(k)
            .create_with_context(context)
            // librdkafka quotes the value of a property it refuses: never a secret's.
            .map_err(|e| config::kafka_error(e, k).context("create Kafka consumer"))?;
        consumer.subscribe(&[&k.topic]).with_context(|| format!("subscribe to topic {}", k.topic))?;
        info!("event=consumer_subscribed brokers={} topic={} group_id={}", k.brokers, k.topic, k.group_id);
        Ok(Consumer {
            consumer,
            ingest: config.ingest.clone(),
            rules: config.validation.clone(),
            database: config.database.clone(),
            cache,
            metrics,
            shutdown,
            db: None,
            pacing: CommitPacing::new(Instant::now(), config.ingest.retry_initial(), config.ingest.retry_max()),
            reconciled: Instant::now(),
            stopped: false,
            losses_reported: HashMap::new(),
            publisher: None,
        })
    }

    /// The loop. Returns when shutdown is signalled, after the batch in hand is written
    /// and its offsets committed (or, if the database is down then, not written at all:
    /// its messages are read again at the next start).
    ///
    /// Batches are decoded by a helper thread. A batch that ended full (so that more
    /// messages are likely waiting) is held while the next one is collected and handed
    /// to the helper, and written while the helper decodes: the database and the
    /// decoding then work at the same time. A batch that ended by its wait is written at
    /// once, so that a quiet topic's orders are never held back for the next batch. The
    /// helper also publishes each committed full batch to the cache, before it decodes
    /// another, while this thread goes on to the next write.
    pub fn run(mut self) {
        let decoder = Decoder::start(self.rules.clone(), self.cache.clone(), self.metrics.clone());
        self.publisher = Some(decoder.publisher());
        let mut ready: Option<Decoded> = None;
        while !self.shutdown.is_signalled() && !self.stopped {
            let after = ready.as_ref().map(Decoded::ends).unwrap_or_default();
            let batch = self.collect_batch(&after);
            self.take_assigned_offsets();
            if self.reconciled.elapsed() >= RECONCILE_EVERY {
                self.reconcile();
            }
            if let Some(held) = ready.as_mut() {
                self.drop_revoked(held);
            }
            ready = ready.filter(|held| !held.messages.is_empty());
            let decoding = !batch.messages.is_empty();
            if decoding {
                decoder.decode(batch);
            }
            let mut fenced = false;
            match ready.take().map(|held| self.write(held)) {
                Some(BatchOutcome::Committed) => {}
                Some(BatchOutcome::Fenced) => fenced = true,
                Some(BatchOutcome::Abandoned) => break,
                // Idle: a commit that failed is tried again, paced by its backoff, so the
                // committed offsets reach the end of the topic even when nothing new comes.
                None if !decoding => self.commit_pending(false),
                None => {}
            }
            if !decoding {
                continue;
            }
            let mut next = decoder.next();
            if fenced {
                // Collected from positions that no longer hold.
                self.discard(&next.messages, "batch_before_fenced");
                continue;
            }
            self.drop_revoked(&mut next);
            if next.messages.is_empty() {
                continue;
            } else if next.full {
                ready = Some(next);
            } else if self.write(next) == BatchOutcome::Abandoned {
                break;
            }
        }
        if let Some(mut held) = ready.take() {
            self.drop_revoked(&mut held);
            if !held.messages.is_empty() {
                self.write(held);
            }
        }
        if !self.stopped {
            self.commit_pending(true);
        }
        info!("event=consumer_stopped");
    }

    /// The table of partitions, locked: never held across a call to the broker or the
    /// database.
    fn partitions(&self) -> parking_lot::MutexGuard<'_, Partitions> {
        self.consumer.context().partitions.lock()
    }

    fn generation(&self) -> u64 {
        self.partitions().generation()
    }

    /// The partitions revoked since revocation number `generation`.
    fn revoked_since(&self, generation: u64) -> BTreeSet<Partition> {
        self.partitions().revoked_since(generation)
    }

    /// Takes out of a decoded batch the messages of partitions revoked since it was
    /// collected: their new owner reads them again from the stored offset. The other
    /// partitions' messages stay, to be written.
    fn drop_revoked(&mut self, batch: &mut Decoded) {
        let now = self.generation();
        if batch.generation == now {
            return;
        }
        let revoked = self.revoked_since(batch.generation);
        batch.generation = now;
        let dropped = batch.take_partitions(&revoked);
        self.discard(&dropped, "partitions_revoked");
    }
}
