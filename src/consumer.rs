//! The Kafka loop: the one thread that takes messages from the topic, writes them to
//! PostgreSQL, commits their offsets and publishes the stored orders to the cache.
//!
//! Its order of effects is the service's main promise: an offset is committed only after
//! the transaction holding its message (as an order or as a dead letter) has committed,
//! and a failed write is retried until it succeeds, so no offset ever passes it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use log::{debug, error, info, warn};
use postgres::Client;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message as _, Offset, Statistics, TopicPartitionList};

use crate::cache::Cache;
use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::model::{self, Encoded, Message, Rules};
use crate::service::{Backoff, Health, Shutdown};
use crate::store::{self, BatchResult, DeadLetter};

/// How long an idle poll waits before looking at the shutdown signal again.
const IDLE_POLL: Duration = Duration::from_millis(100);

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
    db: Option<Client>,
    /// Offsets of written batches whose commit to Kafka has not succeeded yet.
    uncommitted: BTreeMap<(String, i32), i64>,
    /// `GroupContext::revocations` when `uncommitted` was last added to.
    uncommitted_generation: u64,
    /// After a failed commit: when to try again while idle, and the backoff after that.
    commit_retry: Option<(Instant, Backoff)>,
}

/// Follows the consumer group's rebalances. Its callbacks run on the consumer thread,
/// inside `poll`.
pub struct GroupContext {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Counts revocations, so the loop can tell that partitions it held were taken away
    /// while it was collecting a batch.
    revocations: AtomicU64,
    /// Partitions whose end is behind this consumer's position, as last reported.
    beyond_end: parking_lot::Mutex<BTreeSet<(String, i32)>>,
}

impl ClientContext for GroupContext {
    /// librdkafka's statistics, every `statistics.interval.ms`: the lag of each
    /// assigned partition, from the broker's high watermark and the committed offset,
    /// and any partition whose end is behind the position this consumer fetches from.
    fn stats(&self, statistics: Statistics) {
        self.metrics.consumer_lag.reset();
        self.metrics.position_beyond_end.reset();
        let mut beyond = BTreeSet::new();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                // Partition -1 is librdkafka's own bookkeeping; -1 lag means unknown.
                if partition < 0 {
                    continue;
                }
                let labels = [topic.as_str(), &partition.to_string()];
                if p.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&labels).set(p.consumer_lag);
                }
                // A broker that lost messages this consumer already read (one with memory
                // storage restarted, or the topic recreated) may answer fetches past its
                // end with nothing at all, rather than with an out-of-range error that
                // would reset the position: without this, the consumer waits in silence.
                if p.fetch_state == "active" && p.hi_offset >= 0 && p.next_offset > p.hi_offset {
                    self.metrics.position_beyond_end.with_label_values(&labels).set(1);
                    if !self.beyond_end.lock().contains(&(topic.clone(), partition)) {
                        error!(
                            "event=partition_position_beyond_end topic={topic} partition={partition} position={} \
                             end={} hint=\"the broker has fewer messages than this consumer already read: the topic \
                             was deleted and created again, or the broker lost its data. Messages below the position \
                             are not read. Stop the group's instances, reset the group's offset for this partition to \
                             its start (kafka-consumer-groups.sh --reset-offsets --to-earliest --execute), and start \
                             them again: orders already stored are recognised and left unchanged\"",
                            p.next_offset, p.hi_offset
                        );
                    }
                    beyond.insert((topic.clone(), partition));
                }
            }
        }
        *self.beyond_end.lock() = beyond;
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.revocations.fetch_add(1, Ordering::SeqCst);
            info!("event=partitions_revoked count={}", tpl.count());
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|tpl| tpl.count()).unwrap_or(0);
        self.health.record_assignment(assigned);
        self.metrics.assigned_partitions.set(assigned as i64);
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!("event=partitions_assigned count={} partitions={}", tpl.count(), partitions(tpl))
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!("event=rebalance_error error={e}"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> String {
    let list: Vec<String> = tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
    list.join(",")
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
        let context = GroupContext {
            health,
            metrics: metrics.clone(),
            revocations: AtomicU64::new(0),
            beyond_end: parking_lot::Mutex::new(BTreeSet::new()),
        };
        let consumer: BaseConsumer<GroupContext> = ClientConfig::new()
            .set("bootstrap.servers", &k.brokers)
            .set("group.id", &k.group_id)
            .set("client.id", "orders-svc")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", k.auto_offset_reset.as_str())
            .set("fetch.wait.max.ms", k.fetch_wait_max_ms.to_string())
            .set("session.timeout.ms", k.session_timeout_ms.to_string())
            .set("statistics.interval.ms", "5000")
            // librdkafka's default is 5 minutes: a topic created, recreated or given more
            // partitions while the service runs would wait that long to be consumed.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .create_with_context(context)
            .context("create Kafka consumer")?;
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
            uncommitted: BTreeMap::new(),
            uncommitted_generation: 0,
            commit_retry: None,
        })
    }

    /// The loop. Returns when shutdown is signalled, after the batch in hand is written
    /// and its offsets committed (or, if the database is down then, not written at all:
    /// its messages are read again at the next start).
    pub fn run(mut self) {
        while !self.shutdown.is_signalled() {
            let batch = self.collect_batch();
            if batch.is_empty() {
                // Idle: a commit that failed is tried again, paced by its backoff, so the
                // committed offsets reach the end of the topic even when nothing new comes.
                self.commit_pending(false);
                continue;
            }
            let started = Instant::now();
            let (orders, dead) = decode_all(&batch, &self.rules);
            let decoded = Instant::now();
            let Some(result) = self.write_with_retry(&orders, &dead) else {
                info!("event=batch_abandoned reason=shutdown_during_retry messages={}", batch.len());
                break;
            };
            let written = Instant::now();
            #[cfg(debug_assertions)]
            crate::fault::point("exit_after_database_commit");
            self.commit_offsets(&batch);
            let timings = [decoded - started, written - decoded, written.elapsed()];
            self.record(&batch, &result, timings);
            log_batch(&batch, &result, timings);
            self.cache.publish(result.stored.iter().map(|&i| &orders[i].1));
        }
        self.commit_pending(true);
        info!("event=consumer_stopped");
    }

    /// Takes messages until the batch is full or `batch_max_wait` has passed since its
    /// first message; returns an empty batch when a poll finds nothing to start one. If
    /// partitions are revoked meanwhile, what was collected is dropped: their new owner
    /// reads it again from the committed offset.
    fn collect_batch(&mut self) -> Vec<Message> {
        let max = self.ingest.batch_max_messages;
        let max_wait = self.ingest.batch_max_wait();
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut generation = self.consumer.context().revocations.load(Ordering::SeqCst);
        loop {
            let timeout = deadline.map_or(IDLE_POLL, |d| d.saturating_duration_since(Instant::now()));
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    batch.push(Message {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                    deadline.get_or_insert_with(|| Instant::now() + max_wait);
                }
                Some(Err(e)) => warn!("event=kafka_error error={e}"),
                None if batch.is_empty() => return batch,
                None => {}
            }
            let now_generation = self.consumer.context().revocations.load(Ordering::SeqCst);
            if now_generation != generation {
                if !batch.is_empty() {
                    info!("event=batch_dropped reason=partitions_revoked messages={}", batch.len());
                }
                batch.clear();
                deadline = None;
                generation = now_generation;
            }
            if batch.len() >= max || deadline.is_some_and(|d| Instant::now() >= d) {
                return batch;
            }
            if batch.is_empty() && self.shutdown.is_signalled() {
                return batch;
            }
        }
    }

    /// Writes the batch, retrying with capped exponential backoff until it commits.
    /// Returns None only when shutdown is signalled while the database is failing.
    fn write_with_retry(&mut self, orders: &[(&Message, Encoded)], dead: &[DeadLetter]) -> Option<BatchResult> {
        let mut backoff = Backoff::new(self.ingest.retry_initial(), self.ingest.retry_max());
        loop {
            match self.write_once(orders, dead) {
                Ok(result) => {
                    if backoff.attempt() > 1 {
                        info!("event=database_recovered attempts={}", backoff.attempt());
                    }
                    return Some(result);
                }
                Err(e) => {
                    self.metrics.db_retries.inc();
                    warn!(
                        "event=batch_write_failed attempt={} retry_in_ms={} error={e:#}",
                        backoff.attempt(),
                        backoff.delay().as_millis()
                    );
                    if self.db.as_ref().is_some_and(Client::is_closed) {
                        self.db = None;
                    }
                }
            }
            if self.shutdown.sleep(backoff.next_delay()) {
                return None;
            }
        }
    }

    fn write_once(&mut self, orders: &[(&Message, Encoded)], dead: &[DeadLetter]) -> anyhow::Result<BatchResult> {
        let db = match &mut self.db {
            Some(client) => client,
            None => self.db.insert(store::connect(&self.database)?),
        };
        store::write_batch(db, orders, dead)
    }

    fn record(&self, batch: &[Message], result: &BatchResult, timings: [Duration; 3]) {
        let m = &self.metrics;
        m.messages_consumed.inc_by(batch.len() as u64);
        m.orders_stored.with_label_values(&["inserted"]).inc_by(result.inserted as u64);
        m.orders_stored.with_label_values(&["replaced"]).inc_by(result.replaced as u64);
        m.orders_stored.with_label_values(&["unchanged"]).inc_by(result.unchanged as u64);
        for dead in &result.dead_letters {
            m.messages_rejected.with_label_values(&[dead.rule.as_str()]).inc();
        }
        m.batch_messages.observe(batch.len() as f64);
        for (phase, took) in ["decode", "write", "commit"].into_iter().zip(timings) {
            m.batch_seconds.with_label_values(&[phase]).observe(took.as_secs_f64());
        }
    }

    /// Commits, per partition, one past the highest offset of the batch. A commit that
    /// fails is tried again with the next batch, or while idle after a backoff; committing
    /// a later offset also covers it.
    fn commit_offsets(&mut self, batch: &[Message]) {
        let generation = self.consumer.context().revocations.load(Ordering::SeqCst);
        if generation != self.uncommitted_generation {
            // Partitions were revoked since these were written: their new owner commits.
            self.uncommitted.clear();
            self.uncommitted_generation = generation;
        }
        for m in batch {
            let next = self.uncommitted.entry((m.topic.clone(), m.partition)).or_insert(0);
            *next = (*next).max(m.offset + 1);
        }
        self.commit_pending(true);
    }

    /// Commits the offsets written but not committed yet. Unless `now`, waits out the
    /// backoff of a commit that failed before.
    fn commit_pending(&mut self, now: bool) {
        if self.uncommitted.is_empty() {
            self.commit_retry = None;
            return;
        }
        if !now && self.commit_retry.as_ref().is_some_and(|(at, _)| Instant::now() < *at) {
            return;
        }
        if self.consumer.context().revocations.load(Ordering::SeqCst) != self.uncommitted_generation {
            self.uncommitted.clear();
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.uncommitted {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).expect("a non-negative offset is valid");
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                debug!("event=offsets_committed offsets={}", describe_offsets(&self.uncommitted));
                self.uncommitted.clear();
                self.commit_retry = None;
            }
            Err(e) => {
                let (_, mut backoff) = self.commit_retry.take().unwrap_or_else(|| {
                    (Instant::now(), Backoff::new(self.ingest.retry_initial(), self.ingest.retry_max()))
                });
                let (attempt, delay) = (backoff.attempt(), backoff.next_delay());
                warn!(
                    "event=offset_commit_failed attempt={attempt} retry_in_ms={} offsets={} error={e}",
                    delay.as_millis(),
                    describe_offsets(&self.uncommitted)
                );
                self.commit_retry = Some((Instant::now() + delay, backoff));
            }
        }
    }
}

/// Decodes each message into an order or a dead letter with its reason.
/// Each order is encoded here, once, for both the database and the cache.
fn decode_all<'a>(batch: &'a [Message], rules: &Rules) -> (Vec<(&'a Message, Encoded)>, Vec<DeadLetter>) {
    let mut orders = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for m in batch {
        match model::decode(m.payload.as_deref(), rules) {
            Ok(order) => orders.push((m, order.encode())),
            Err(rejection) => {
                // The detail can quote the message, and so a person's name or address:
                // it goes to the dead letter, and to the log only at debug level.
                warn!(
                    "event=message_rejected topic={} partition={} offset={} rule={}",
                    m.topic, m.partition, m.offset, rejection.rule
                );
                debug!("event=message_rejected offset={} detail={:?}", m.offset, rejection.detail);
                dead.push(DeadLetter::new(m, rejection, rules.max_message_bytes));
            }
        }
    }
    (orders, dead)
}

fn describe_offsets(offsets: &BTreeMap<(String, i32), i64>) -> String {
    let list: Vec<String> = offsets.iter().map(|((t, p), o)| format!("{t}/{p}@{o}")).collect();
    list.join(",")
}

/// `timings`: decoding, the database transaction, the offset commit.
fn log_batch(batch: &[Message], result: &BatchResult, timings: [Duration; 3]) {
    let [decode, write, commit] = timings.map(|d| d.as_secs_f64() * 1000.0);
    info!(
        "event=batch_committed messages={} inserted={} replaced={} unchanged={} rejected={} \
         decode_ms={decode:.1} write_ms={write:.1} commit_ms={commit:.1}",
        batch.len(),
        result.inserted,
        result.replaced,
        result.unchanged,
        result.dead_letters.len()
    );
}
