//! The Kafka loop: the one thread that takes messages from the topic, writes them to
//! PostgreSQL, commits their offsets and publishes the stored orders to the cache.
//!
//! Its order of effects is the service's main promise. The group's position lives in
//! PostgreSQL (`consumer_offsets`) and advances in the same transaction as the rows of
//! each batch, by compare-and-set from where this consumer started reading: a batch is
//! written once, by the partition's current owner, or not at all. On assignment each
//! partition is read from its stored offset. A failed write is retried until it succeeds,
//! so no offset ever passes it. Kafka's committed offsets follow, for lag tools.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use log::{debug, error, info, warn};
use postgres::Client;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, Statistics, TopicPartitionList};

use crate::cache::Cache;
use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::model::{self, Encoded, Message, Rules};
use crate::runtime::{Backoff, Health, Shutdown};
use crate::store::{self, BatchResult, Claim, DeadLetter, Written};

/// How long an idle poll waits before looking at the shutdown signal again.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often partitions waiting on the database or past their end are looked at again.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// The longest a written batch's offsets wait to be committed to Kafka, busy or idle.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// The longest wait for the broker in a seek or a watermark query.
const BROKER_CALL: Duration = Duration::from_secs(5);

type Partition = (String, i32);

/// The settings every Kafka client of the service starts from: the brokers and
/// `kafka.properties`. A TLS connection without `ssl.ca.location` trusts the system's
/// CAs (`probe`): librdkafka's OpenSSL is built into the binary, and its own default
/// paths are not the system's.
pub fn client_config(kafka: &config::Kafka) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &kafka.brokers);
    for (name, value) in &kafka.properties {
        client.set(name, value);
    }
    let tls = kafka.properties.get("security.protocol").is_some_and(|p| p.to_ascii_uppercase().ends_with("SSL"));
    if tls && !kafka.properties.contains_key("ssl.ca.location") && !kafka.properties.contains_key("ssl.ca.pem") {
        client.set("ssl.ca.location", "probe");
    }
    client
}

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
    uncommitted: BTreeMap<Partition, i64>,
    /// `GroupContext::revocations` when `uncommitted` was last added to.
    uncommitted_generation: u64,
    /// After a failed commit: when to try again while idle, and the backoff after that.
    commit_retry: Option<(Instant, Backoff)>,
    /// When offsets were last committed to Kafka.
    committed_at: Instant,
    /// When partitions waiting on something were last looked at.
    reconciled: Instant,
    /// Set by a fatal error: librdkafka delivers nothing more, and the loop ends.
    stopped: bool,
    /// For each partition, the position from which a loss was last reported, so that a
    /// batch dropped and read again does not report it twice.
    losses_reported: HashMap<Partition, i64>,
}

/// Follows the consumer group's rebalances. Its callbacks run on the consumer thread,
/// inside `poll`.
pub struct GroupContext {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    group: String,
    protocol: config::GroupProtocol,
    database: config::Database,
    /// Counts revocations, so the loop can tell that partitions it held were taken away
    /// while it was collecting a batch.
    revocations: AtomicU64,
    /// The partitions each revocation took, in order: entry `i` is revocation `i + 1`'s.
    /// Under the classic protocol every revocation takes every partition; under the
    /// consumer protocol only those that move, and batches keep the others.
    revoked: parking_lot::Mutex<Vec<Vec<Partition>>>,
    /// For each assigned partition, where this consumer reads next as the database has
    /// it: the stored offset at assignment, then one past each batch written. None while
    /// the group has no stored offset for it (it starts from Kafka's committed offset,
    /// else `auto_offset_reset`).
    positions: parking_lot::Mutex<HashMap<Partition, Option<i64>>>,
    /// Assigned partitions whose stored offset could not be read: paused until it is.
    unpositioned: parking_lot::Mutex<BTreeSet<Partition>>,
    /// Stored offsets read at assignment, to be committed to Kafka too (for lag tools).
    assigned_offsets: parking_lot::Mutex<Vec<(Partition, i64)>>,
    /// Partitions paused because the database's offset is past the broker's end.
    blocked: parking_lot::Mutex<BTreeSet<Partition>>,
}

impl ClientContext for GroupContext {
    /// An error librdkafka reports about the brokers: logged, and named by `/readyz`
    /// until the group is joined (a refused TLS handshake or SASL login never ends by
    /// itself).
    fn error(&self, error: KafkaError, reason: &str) {
        error!("event=kafka_client_error error=\"{error}\" reason=\"{reason}\"");
        // "All brokers are down" follows every failure and says less than the failure
        // itself (a refused login, a failed handshake): it does not replace one.
        let all_down = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        if !all_down || self.health.broker_problem().is_none() {
            self.health.set_broker_problem(reason.to_string());
        }
    }

    /// librdkafka's statistics, every `statistics.interval.ms`: the lag of each
    /// assigned partition, from the broker's high watermark and the committed offset, and
    /// the partitions paused past their end.
    fn stats(&self, statistics: Statistics) {
        // Under the consumer protocol a member the broker gives no partition gets no
        // rebalance callback, and librdkafka's join state stays "init": the group
        // coordinator's connection being up (its heartbeats answered) says it has joined.
        if let Some(group) = &statistics.cgrp
            && group.state == "up"
            && (group.join_state == "steady" || self.protocol == config::GroupProtocol::Consumer)
        {
            self.health.record_joined();
        }
        self.metrics.consumer_lag.reset();
        self.metrics.position_beyond_end.reset();
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
            }
        }
        // Paused by `seek_back`: still past the end until `reset-offsets` moves the stored
        // offset.
        for (topic, partition) in self.blocked.lock().iter() {
            self.metrics.position_beyond_end.with_label_values(&[topic.as_str(), &partition.to_string()]).set(1);
        }
    }
}

impl ConsumerContext for GroupContext {
    /// Replaces rdkafka's default: each assigned partition starts at the group's offset
    /// stored in PostgreSQL, not at Kafka's committed one, which may lag behind it.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                warn!("event=rebalance_error error={}", RDKafkaErrorCode::from(other));
                self.revoke(consumer, tpl);
            }
        }
        let assigned = consumer.assignment().map(|tpl| tpl.count()).unwrap_or(0);
        self.health.record_assignment(assigned);
        self.metrics.assigned_partitions.set(assigned as i64);
    }
}

impl GroupContext {
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let assigned = partition_keys(tpl);
        // An incremental rebalance that only revoked ends with an empty assignment: no
        // offsets to read, and no connection to open while every partition waits.
        let started = Instant::now();
        let stored = if assigned.is_empty() { Ok(HashMap::new()) } else { self.read_stored(&assigned) };
        let read_ms = started.elapsed().as_millis();
        if let Ok(stored) = &stored {
            for ((topic, partition), offset) in stored {
                tpl.set_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .expect("the partition is in the list");
            }
        }
        let assign = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = assign {
            error!("event=assign_failed partitions={} error={e}", partitions(tpl));
            return;
        }
        match stored {
            Ok(stored) => {
                info!(
                    "event=partitions_assigned count={} partitions={} stored_offsets={} read_ms={read_ms} \
                     assign_ms={}",
                    tpl.count(),
                    partitions(tpl),
                    describe_offsets(&stored.iter().map(|(k, v)| (k.clone(), *v)).collect()),
                    started.elapsed().as_millis() - read_ms
                );
                let mut positions = self.positions.lock();
                for key in assigned {
                    let offset = stored.get(&key).copied();
                    if let Some(offset) = offset {
                        self.assigned_offsets.lock().push((key.clone(), offset));
                    }
                    positions.insert(key, offset);
                }
            }
            Err(e) => {
                warn!(
                    "event=partitions_assigned_unpositioned partitions={} action=paused_until_the_database_answers \
                     error={e:#}",
                    partitions(tpl)
                );
                if let Err(e) = consumer.pause(tpl) {
                    error!("event=pause_failed partitions={} error={e}", partitions(tpl));
                }
                self.unpositioned.lock().extend(assigned);
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        // Eager revocation takes every partition held, whatever the list names.
        let mut revoked: BTreeSet<Partition> = partition_keys(tpl).into_iter().collect();
        if !cooperative {
            revoked.extend(self.positions.lock().keys().cloned());
            revoked.extend(self.unpositioned.lock().iter().cloned());
        }
        info!("event=partitions_revoked count={} partitions={}", revoked.len(), describe_partitions(&revoked));
        self.positions.lock().retain(|k, _| !revoked.contains(k));
        self.unpositioned.lock().retain(|k| !revoked.contains(k));
        // Recorded before it is counted: a reader that sees the count finds the record.
        self.revoked.lock().push(revoked.into_iter().collect());
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let result = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
        if let Err(e) = result {
            error!("event=unassign_failed error={e}");
        }
    }

    /// The group's stored offsets of `partitions`, on a connection of its own: this runs
    /// inside `poll`, in the middle of a rebalance.
    fn read_stored(&self, partitions: &[Partition]) -> anyhow::Result<HashMap<Partition, i64>> {
        let mut client = store::connect_writer(&self.database)?;
        store::stored_offsets(&mut client, &self.group, partitions)
    }
}

/// Whether `partitions` holds `topic`/`partition`, without making a key.
fn holds(partitions: &BTreeSet<Partition>, topic: &str, partition: i32) -> bool {
    partitions.iter().any(|(t, p)| t == topic && *p == partition)
}

fn partition_keys(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

fn describe_partitions(keys: &BTreeSet<Partition>) -> String {
    keys.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(",")
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
            group: k.group_id.clone(),
            protocol: k.group_protocol,
            database: config.database.clone(),
            revocations: AtomicU64::new(0),
            revoked: parking_lot::Mutex::new(Vec::new()),
            positions: parking_lot::Mutex::new(HashMap::new()),
            unpositioned: parking_lot::Mutex::new(BTreeSet::new()),
            assigned_offsets: parking_lot::Mutex::new(Vec::new()),
            blocked: parking_lot::Mutex::new(BTreeSet::new()),
        };
        let mut client = client_config(k);
        client.set("group.protocol", k.group_protocol.as_str());
        if k.group_protocol == config::GroupProtocol::Classic {
            client.set("session.timeout.ms", k.session_timeout_ms.unwrap_or(45_000).to_string());
        }
        if let Some(id) = &k.instance_id {
            client.set("group.instance.id", id);
        }
        let consumer: BaseConsumer<GroupContext> = client
            .set("group.id", &k.group_id)
            .set("client.id", "orders-svc")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", k.auto_offset_reset.as_str())
            .set("fetch.wait.max.ms", k.fetch_wait_max_ms.to_string())
            .set("statistics.interval.ms", "5000")
            // librdkafka's default is 5 minutes: a topic created, recreated or given more
            // partitions while the service runs would wait that long to be consumed.
            .set("topic.metadata.refresh.interval.ms", "10000")
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
            uncommitted: BTreeMap::new(),
            uncommitted_generation: 0,
            commit_retry: None,
            committed_at: Instant::now(),
            reconciled: Instant::now(),
            stopped: false,
            losses_reported: HashMap::new(),
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
    /// once, so that a quiet topic's orders are never held back for the next batch.
    pub fn run(mut self) {
        let decoder = Decoder::start(self.rules.clone());
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
            match ready.take() {
                Some(held) => match self.write(held) {
                    Some(written) => fenced = !written,
                    None => break,
                },
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
            } else if self.write(next).is_none() {
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

    fn revocations(&self) -> u64 {
        self.consumer.context().revocations.load(Ordering::SeqCst)
    }

    /// The partitions revoked since revocation number `generation`.
    fn revoked_since(&self, generation: u64) -> BTreeSet<Partition> {
        let revoked = self.consumer.context().revoked.lock();
        revoked.iter().skip(generation as usize).flatten().cloned().collect()
    }

    /// Takes out of a decoded batch the messages of partitions revoked since it was
    /// collected: their new owner reads them again from the stored offset. The other
    /// partitions' messages stay, to be written.
    fn drop_revoked(&mut self, batch: &mut Decoded) {
        let now = self.revocations();
        if batch.generation == now {
            return;
        }
        let revoked = self.revoked_since(batch.generation);
        batch.generation = now;
        let dropped = batch.take_partitions(&revoked);
        self.discard(&dropped, "partitions_revoked");
    }

    /// Writes a decoded batch, commits its offsets and publishes its orders. Some(true)
    /// once written, Some(false) if it was fenced (nothing written, its partitions sought
    /// to their stored offsets), None if shutdown came while the database was failing.
    fn write(&mut self, batch: Decoded) -> Option<bool> {
        let Decoded { messages, orders, dead, decode_took, .. } = batch;
        let started = Instant::now();
        // From the positions as they are now, after the batch before this one.
        let claims = self.claims(&messages);
        let orders: Vec<(&Message, Encoded)> = orders.into_iter().map(|(i, e)| (&messages[i], e)).collect();
        self.cache.writing(orders.iter().map(|(_, e)| e.order.order_uid.as_str()));
        self.metrics.writing(true);
        let result = self.write_with_retry(&claims, &orders, &dead);
        self.metrics.writing(false);
        let result = match result {
            None => {
                info!("event=batch_abandoned reason=shutdown_during_retry messages={}", messages.len());
                return None;
            }
            Some(Written::Fenced(fenced)) => {
                self.fenced(&claims, &fenced);
                return Some(false);
            }
            Some(Written::Committed(result)) => result,
        };
        let mut positions = self.consumer.context().positions.lock();
        for c in &claims {
            if let Some(position) = positions.get_mut(&(c.topic.clone(), c.partition)) {
                *position = Some(c.next);
            }
        }
        drop(positions);
        let written = Instant::now();
        #[cfg(debug_assertions)]
        crate::fault::point("exit_after_database_commit");
        // Committed in PostgreSQL, so served at once: Kafka's offsets are only for lag
        // tools, and no reader should wait for them.
        self.cache.publish(result.stored.iter().map(|&i| &orders[i].1));
        let committing = Instant::now();
        self.commit_offsets(&messages);
        let timings = [decode_took, written - started, committing.elapsed()];
        self.record(&messages, &result, timings);
        log_batch(&messages, &result, timings);
        Some(true)
    }

    /// Drops collected messages that will not be written: each partition they came from
    /// that is still assigned is sought back to its position (or, with none stored yet,
    /// to the first message dropped), so that they are read again. Their fetch position
    /// had moved past them; without the seek a later batch would claim the partition from
    /// its position and skip them.
    fn discard(&mut self, messages: &[Message], reason: &str) {
        if messages.is_empty() {
            return;
        }
        info!("event=batch_dropped reason={reason} messages={}", messages.len());
        let mut first: BTreeMap<Partition, i64> = BTreeMap::new();
        for m in messages {
            let offset = first.entry((m.topic.clone(), m.partition)).or_insert(m.offset);
            *offset = (*offset).min(m.offset);
        }
        for (key, offset) in first {
            let Some(position) = self.consumer.context().positions.lock().get(&key).copied() else { continue };
            self.seek(&key, position.unwrap_or(offset));
        }
    }

    fn seek(&self, key: &Partition, offset: i64) {
        if let Err(e) = self.consumer.seek(&key.0, key.1, Offset::Offset(offset), BROKER_CALL) {
            warn!("event=seek_failed partition={}/{} offset={offset} error={e}", key.0, key.1);
        }
    }

    /// Takes messages until the batch holds `batch_max_messages` or `batch_max_bytes`, or
    /// `batch_max_wait` has passed since its first message and no more are already here;
    /// returns an empty batch when a poll finds nothing to start one. If partitions are
    /// revoked meanwhile, what was collected is dropped: their new owner reads it again
    /// from the stored offset. A message before this consumer's position, or before `after`
    /// (where a batch collected but not yet written ends), is skipped: the broker reset the
    /// position backwards. Its partition is sought back to where it should be. A
    /// partition whose first message comes after the position may have lost messages to
    /// retention: `report_loss` looks.
    fn collect_batch(&mut self, after: &HashMap<Partition, i64>) -> Collected {
        let (max, max_bytes) = (self.ingest.batch_max_messages, self.ingest.batch_max_bytes);
        let max_wait = self.ingest.batch_max_wait();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut behind = BTreeMap::new();
        let mut ahead = BTreeMap::new();
        let mut deadline: Option<Instant> = None;
        let mut generation = self.revocations();
        loop {
            let timeout = deadline.map_or(IDLE_POLL, |d| d.saturating_duration_since(Instant::now()));
            let polled = self.consumer.poll(timeout);
            let found = polled.is_some();
            match polled {
                Some(Ok(m)) => {
                    let key = (m.topic().to_string(), m.partition());
                    let position = match self.consumer.context().positions.lock().get(&key) {
                        Some(position) => after.get(&key).copied().or(*position),
                        // Not assigned any more, or waiting for its stored offset.
                        None => continue,
                    };
                    if let Some(position) = position
                        && m.offset() < position
                    {
                        behind.insert(key, position);
                        continue;
                    }
                    if let Some(position) = position
                        && m.offset() > position
                    {
                        ahead.entry(key.clone()).or_insert((position, m.offset()));
                    }
                    bytes += m.payload_len();
                    batch.push(Message {
                        topic: key.0,
                        partition: key.1,
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                    deadline.get_or_insert_with(|| Instant::now() + max_wait);
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    self.stop_on_fatal(code);
                    break;
                }
                Some(Err(e)) => warn!("event=kafka_error error={e}"),
                None if batch.is_empty() => break,
                None => {}
            }
            let now_generation = self.revocations();
            if now_generation != generation {
                let revoked = self.revoked_since(generation);
                let (dropped, kept): (Vec<Message>, Vec<Message>) =
                    batch.into_iter().partition(|m| holds(&revoked, &m.topic, m.partition));
                self.discard(&dropped, "partitions_revoked");
                batch = kept;
                bytes = batch.iter().map(|m| m.payload.as_ref().map_or(0, Vec::len)).sum();
                if batch.is_empty() {
                    deadline = None;
                }
                generation = now_generation;
                ahead.retain(|key, _| !revoked.contains(key));
                behind.retain(|key, _| !revoked.contains(key));
            }
            // Past the wait, the messages already here still join the batch: it ends when
            // a poll finds no more, so the wait can be short without batches of one.
            if batch.len() >= max || bytes >= max_bytes || (!found && deadline.is_some_and(|d| Instant::now() >= d)) {
                break;
            }
            if batch.is_empty() && self.shutdown.is_signalled() {
                break;
            }
        }
        for (key, position) in behind {
            self.seek_back(key, position);
        }
        for (key, (position, first)) in ahead {
            self.report_loss(key, position, first);
        }
        let full = batch.len() >= max || bytes >= max_bytes;
        Collected { messages: batch, generation, full }
    }

    /// For each partition of the batch: where this consumer started reading it, one past
    /// its last message, and how many messages it has.
    fn claims(&self, batch: &[Message]) -> Vec<Claim> {
        let positions = self.consumer.context().positions.lock();
        let mut claims: BTreeMap<Partition, Claim> = BTreeMap::new();
        for m in batch {
            let key = (m.topic.clone(), m.partition);
            let claim = claims.entry(key.clone()).or_insert_with(|| Claim {
                topic: m.topic.clone(),
                partition: m.partition,
                expected: positions.get(&key).copied().flatten(),
                next: 0,
                messages: 0,
            });
            claim.next = claim.next.max(m.offset + 1);
            claim.messages += 1;
        }
        claims.into_values().collect()
    }

    /// A batch was fenced: another consumer wrote past where this one started. Nothing
    /// of it was written; each of its partitions is read again from the stored offset.
    fn fenced(&mut self, claims: &[Claim], fenced: &[Partition]) {
        self.metrics.batches_fenced.inc();
        let messages: i64 = claims.iter().map(|c| c.messages).sum();
        warn!(
            "event=batch_fenced messages={messages} partitions={} reason=\"another consumer of the group wrote these \
             partitions past where this one started reading (a rebalance while this batch was in flight)\" \
             action=read_again_from_stored_offsets",
            fenced.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(",")
        );
        let keys: Vec<Partition> = claims.iter().map(|c| (c.topic.clone(), c.partition)).collect();
        let stored = match self.read_stored(&keys) {
            Ok(stored) => stored,
            Err(e) => {
                // Read again at the next reconcile; until then these partitions wait.
                warn!("event=stored_offsets_unavailable error={e:#}");
                self.pause(&keys);
                self.consumer.context().unpositioned.lock().extend(keys);
                return;
            }
        };
        for key in keys {
            let offset = stored.get(&key).copied();
            self.seek_to_stored(key, offset);
        }
    }

    /// Moves an assigned partition to its stored offset (or, with none stored, leaves it
    /// where it is) and records that as its position.
    fn seek_to_stored(&mut self, key: Partition, stored: Option<i64>) {
        let mut positions = self.consumer.context().positions.lock();
        let Some(position) = positions.get_mut(&key) else { return };
        *position = stored;
        drop(positions);
        if let Some(offset) = stored {
            self.seek(&key, offset);
        }
    }

    /// A partition delivered messages before this consumer's position: the broker moved
    /// it back (an out-of-range reset, as after the topic was recreated). If the position
    /// is past the partition's end, the partition is paused and the operator told what to
    /// do; otherwise it is sought back to the position.
    fn seek_back(&mut self, key: Partition, position: i64) {
        let end = self.consumer.fetch_watermarks(&key.0, key.1, BROKER_CALL).map(|(_, high)| high);
        match end {
            Ok(end) if position > end => {
                error!(
                    "event=partition_position_beyond_end topic={} partition={} position={position} end={end} \
                     action=paused hint=\"the database's offset for this group is past the partition's end: the \
                     topic was deleted and created again, or the broker lost its data. Run orders-svc reset-offsets \
                     --config <file> to set the group's stored offsets to the partitions' starts\"",
                    key.0, key.1
                );
                self.metrics.position_beyond_end.with_label_values(&[key.0.as_str(), &key.1.to_string()]).set(1);
                self.pause(std::slice::from_ref(&key));
                self.consumer.context().blocked.lock().insert(key);
            }
            _ => self.seek(&key, position),
        }
    }

    /// A fatal error: the consumer will deliver nothing more. The likeliest cause is
    /// another process with this instance's `kafka.instance_id`: under the classic
    /// protocol it took this member's place (FENCED_INSTANCE_ID), under the consumer
    /// protocol this one was refused because the other holds the id
    /// (UNRELEASED_INSTANCE_ID). The loop ends, so nothing more is written; the HTTP side
    /// goes on serving, and `/readyz` says why the instance is not ready.
    fn stop_on_fatal(&mut self, code: RDKafkaErrorCode) {
        let reason = match code {
            RDKafkaErrorCode::FencedInstanceId => {
                "another process joined the group with this kafka.instance_id and took this one's place".to_string()
            }
            RDKafkaErrorCode::UnreleasedInstanceId => {
                "another process of the group holds this kafka.instance_id; this one was refused".to_string()
            }
            other => format!("librdkafka reported a fatal error ({other})"),
        };
        error!(
            "event=consumer_fatal_error code={code:?} reason=\"{reason}\" action=stopped_consuming hint=\"give each \
             instance its own kafka.instance_id, then restart this one\""
        );
        self.consumer.context().health.set_consumer_stopped(format!("stopped consuming: {reason}"));
        self.stopped = true;
    }

    /// A partition's first message came after this consumer's position. Offsets may be
    /// missing for good reasons (a transaction's commit marker, compaction), but if the
    /// partition now starts past the position, the broker deleted messages this group
    /// never read (retention, or records deleted by an operator): Kafka answered the fetch
    /// out of range and the consumer went on from the partition's start. Those messages
    /// are lost to this service; it says so once, in the log and as a metric.
    fn report_loss(&mut self, key: Partition, position: i64, first: i64) {
        if self.losses_reported.get(&key) == Some(&position) {
            return;
        }
        let start = match self.consumer.fetch_watermarks(&key.0, key.1, BROKER_CALL) {
            Ok((low, _)) => low,
            Err(e) => {
                warn!("event=watermarks_unavailable partition={}/{} error={e}", key.0, key.1);
                return;
            }
        };
        if start <= position {
            debug!("event=offsets_skipped partition={}/{} from={position} to={}", key.0, key.1, first - 1);
            return;
        }
        let to = start.min(first) - 1;
        let lost = to - position + 1;
        error!(
            "event=messages_lost topic={} partition={} from={position} to={to} lost={lost} hint=\"the broker deleted \
             these messages (retention.ms or retention.bytes, or records deleted by an operator) before this group \
             read them: they were never stored. Produce them again to recover them; raise the topic's retention \
             above the longest time the service may be down or behind\"",
            key.0, key.1
        );
        self.metrics.messages_lost.with_label_values(&[key.0.as_str(), &key.1.to_string()]).inc_by(lost as u64);
        self.losses_reported.insert(key, position);
    }

    fn pause(&self, keys: &[Partition]) {
        let tpl = partition_list(keys);
        if let Err(e) = self.consumer.pause(&tpl) {
            warn!("event=pause_failed partitions={} error={e}", partitions(&tpl));
        }
    }

    /// Partitions that wait on something are looked at again: those whose stored offset
    /// could not be read at assignment, and those whose position is past the broker's end
    /// (until `reset-offsets` moves the stored offset).
    fn reconcile(&mut self) {
        self.reconciled = Instant::now();
        let context = self.consumer.context();
        let unpositioned: Vec<Partition> = context.unpositioned.lock().iter().cloned().collect();
        let waiting: BTreeSet<Partition> = context.blocked.lock().clone();
        if unpositioned.is_empty() && waiting.is_empty() {
            return;
        }
        let keys: Vec<Partition> = unpositioned.iter().chain(&waiting).cloned().collect();
        let stored = match self.read_stored(&keys) {
            Ok(stored) => stored,
            Err(e) => {
                debug!("event=stored_offsets_unavailable error={e:#}");
                return;
            }
        };
        for key in unpositioned {
            let offset = stored.get(&key).copied();
            self.consumer.context().unpositioned.lock().remove(&key);
            self.seek_to_stored(key.clone(), offset);
            self.resume(key);
        }
        for key in waiting {
            let position = self.consumer.context().positions.lock().get(&key).copied().flatten();
            let offset = stored.get(&key).copied();
            if offset.is_some() && offset != position {
                info!(
                    "event=partition_position_reset topic={} partition={} from={position:?} to={offset:?}",
                    key.0, key.1
                );
                self.metrics.position_beyond_end.with_label_values(&[key.0.as_str(), &key.1.to_string()]).set(0);
                self.consumer.context().blocked.lock().remove(&key);
                self.seek_to_stored(key.clone(), offset);
                self.resume(key);
            }
        }
    }

    fn resume(&self, key: Partition) {
        let tpl = partition_list(std::slice::from_ref(&key));
        if let Err(e) = self.consumer.resume(&tpl) {
            warn!("event=resume_failed partition={}/{} error={e}", key.0, key.1);
        }
    }

    /// The group's stored offsets, on the consumer's own connection.
    fn read_stored(&mut self, keys: &[Partition]) -> anyhow::Result<HashMap<Partition, i64>> {
        let group = self.consumer.context().group.clone();
        let result = self.connection().and_then(|db| store::stored_offsets(db, &group, keys));
        if result.is_err() && self.db.as_ref().is_some_and(Client::is_closed) {
            self.db = None;
        }
        result
    }

    fn connection(&mut self) -> anyhow::Result<&mut Client> {
        if self.db.is_none() {
            self.db = Some(store::connect_writer(&self.database)?);
        }
        Ok(self.db.as_mut().expect("connected above"))
    }

    /// Stored offsets read at assignment go to Kafka too, so that its committed offsets
    /// (what lag tools read) catch up with the database's even before anything new comes.
    fn take_assigned_offsets(&mut self) {
        let assigned = std::mem::take(&mut *self.consumer.context().assigned_offsets.lock());
        if assigned.is_empty() {
            return;
        }
        self.forget_revoked_uncommitted();
        for (key, offset) in assigned {
            let next = self.uncommitted.entry(key).or_insert(0);
            *next = (*next).max(offset);
        }
        self.commit_retry = None;
    }

    /// Writes the batch, retrying with capped exponential backoff until it commits.
    /// Returns None only when shutdown is signalled while the database is failing.
    fn write_with_retry(
        &mut self,
        claims: &[Claim],
        orders: &[(&Message, Encoded)],
        dead: &[DeadLetter],
    ) -> Option<Written> {
        let mut backoff = Backoff::new(self.ingest.retry_initial(), self.ingest.retry_max());
        loop {
            match self.write_once(claims, orders, dead) {
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

    fn write_once(
        &mut self,
        claims: &[Claim],
        orders: &[(&Message, Encoded)],
        dead: &[DeadLetter],
    ) -> anyhow::Result<Written> {
        let group = self.consumer.context().group.clone();
        store::write_batch(self.connection()?, &group, claims, orders, dead)
    }

    fn record(&self, batch: &[Message], result: &BatchResult, timings: [Duration; 3]) {
        let m = &self.metrics;
        m.messages_consumed.inc_by(batch.len() as u64);
        m.orders_stored.with_label_values(&["inserted"]).inc_by(result.inserted as u64);
        m.orders_stored.with_label_values(&["replaced"]).inc_by(result.replaced as u64);
        m.orders_stored.with_label_values(&["unchanged"]).inc_by(result.unchanged as u64);
        m.orders_stored.with_label_values(&["stale"]).inc_by(result.stale as u64);
        for dead in &result.dead_letters {
            m.messages_rejected.with_label_values(&[dead.rule.as_str()]).inc();
        }
        m.batch_messages.observe(batch.len() as f64);
        for (phase, took) in ["decode", "write", "commit"].into_iter().zip(timings) {
            m.batch_seconds.with_label_values(&[phase]).observe(took.as_secs_f64());
        }
    }

    /// Commits, per partition, one past the highest offset of the batch: at once if the
    /// last commit was `COMMIT_EVERY` ago, else with a later batch or while idle (a
    /// commit is a round trip to the broker, and the offsets that count are stored in
    /// PostgreSQL). A commit that fails is tried again after a backoff; committing a
    /// later offset also covers it.
    fn commit_offsets(&mut self, batch: &[Message]) {
        self.forget_revoked_uncommitted();
        for m in batch {
            let next = self.uncommitted.entry((m.topic.clone(), m.partition)).or_insert(0);
            *next = (*next).max(m.offset + 1);
        }
        self.commit_pending(false);
    }

    /// Partitions revoked since offsets were last added to `uncommitted` leave it: their
    /// new owner commits them.
    fn forget_revoked_uncommitted(&mut self) {
        let now = self.revocations();
        if now != self.uncommitted_generation {
            let revoked = self.revoked_since(self.uncommitted_generation);
            self.uncommitted.retain(|key, _| !revoked.contains(key));
            self.uncommitted_generation = now;
        }
    }

    /// Commits the offsets written but not committed yet. Unless `now`, waits out the
    /// backoff of a commit that failed before, or else `COMMIT_EVERY` since the last.
    fn commit_pending(&mut self, now: bool) {
        if self.uncommitted.is_empty() {
            self.commit_retry = None;
            return;
        }
        let due = match &self.commit_retry {
            Some((at, _)) => *at,
            None => self.committed_at + COMMIT_EVERY,
        };
        if !now && Instant::now() < due {
            return;
        }
        self.forget_revoked_uncommitted();
        if self.uncommitted.is_empty() {
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
                self.committed_at = Instant::now();
            }
            Err(e) => {
                self.metrics.kafka_commit_failures.inc();
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

/// A batch as collected.
struct Collected {
    messages: Vec<Message>,
    /// `GroupContext::revocations` when it was collected.
    generation: u64,
    /// It ended full rather than by its wait: more messages are likely waiting.
    full: bool,
}

/// A batch collected and decoded, not yet written.
struct Decoded {
    messages: Vec<Message>,
    /// The orders, each with the index of its message.
    orders: Vec<(usize, Encoded)>,
    dead: Vec<DeadLetter>,
    generation: u64,
    full: bool,
    decode_took: Duration,
}

impl Decoded {
    /// Takes out the messages of `partitions`, with their orders and dead letters, and
    /// returns those messages; the rest keep their order.
    fn take_partitions(&mut self, partitions: &BTreeSet<Partition>) -> Vec<Message> {
        if partitions.is_empty() {
            return Vec::new();
        }
        let mut new_index = vec![None; self.messages.len()];
        let (mut kept, mut taken) = (Vec::new(), Vec::new());
        for (i, m) in std::mem::take(&mut self.messages).into_iter().enumerate() {
            if holds(partitions, &m.topic, m.partition) {
                taken.push(m);
            } else {
                new_index[i] = Some(kept.len());
                kept.push(m);
            }
        }
        self.messages = kept;
        self.orders =
            std::mem::take(&mut self.orders).into_iter().filter_map(|(i, e)| Some((new_index[i]?, e))).collect();
        self.dead.retain(|d| !holds(partitions, &d.topic, d.partition));
        taken
    }

    /// Per partition, one past its last message.
    fn ends(&self) -> HashMap<Partition, i64> {
        let mut ends = HashMap::new();
        for m in &self.messages {
            let end = ends.entry((m.topic.clone(), m.partition)).or_insert(0);
            *end = (*end).max(m.offset + 1);
        }
        ends
    }
}

/// The thread that decodes batches, so that the consumer thread can write one batch
/// while the next is decoded. It holds no offsets and no connection: it only turns
/// messages into orders and dead letters, and hands each batch back in turn.
struct Decoder {
    batches: Option<crossbeam_channel::Sender<Collected>>,
    decoded: crossbeam_channel::Receiver<Decoded>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Decoder {
    fn start(rules: Rules) -> Decoder {
        let (batches, to_decode) = crossbeam_channel::bounded::<Collected>(1);
        let (done, decoded) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || {
                for batch in to_decode {
                    let started = Instant::now();
                    let (orders, dead) = decode_all(&batch.messages, &rules);
                    let decoded = Decoded {
                        messages: batch.messages,
                        orders,
                        dead,
                        generation: batch.generation,
                        full: batch.full,
                        decode_took: started.elapsed(),
                    };
                    if done.send(decoded).is_err() {
                        return;
                    }
                }
            })
            .expect("start the decoder thread");
        Decoder { batches: Some(batches), decoded, thread: Some(thread) }
    }

    /// Hands a batch to the thread. Each is taken back with `next` before the next is given.
    fn decode(&self, batch: Collected) {
        self.batches.as_ref().expect("open until dropped").send(batch).expect("the decoder thread is running");
    }

    /// The batch given last, decoded.
    fn next(&self) -> Decoded {
        self.decoded.recv().expect("the decoder thread is running")
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.batches.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Decodes each message into an order or a dead letter with its reason.
/// Each order is encoded here, once, for both the database and the cache.
fn decode_all(batch: &[Message], rules: &Rules) -> (Vec<(usize, Encoded)>, Vec<DeadLetter>) {
    let mut orders = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        match model::decode(m.payload.as_deref(), rules) {
            Ok(order) => orders.push((i, order.encode())),
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

fn describe_offsets(offsets: &BTreeMap<Partition, i64>) -> String {
    let list: Vec<String> = offsets.iter().map(|((t, p), o)| format!("{t}/{p}@{o}")).collect();
    list.join(",")
}

/// `timings`: decoding, the database transaction, the offset commit.
fn log_batch(batch: &[Message], result: &BatchResult, timings: [Duration; 3]) {
    let [decode, write, commit] = timings.map(|d| d.as_secs_f64() * 1000.0);
    info!(
        "event=batch_committed messages={} inserted={} replaced={} unchanged={} stale={} rejected={} \
         decode_ms={decode:.1} write_ms={write:.1} commit_ms={commit:.1}",
        batch.len(),
        result.inserted,
        result.replaced,
        result.unchanged,
        result.stale,
        result.dead_letters.len()
    );
}

fn partition_list(keys: &[Partition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in keys {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64, payload: &[u8]) -> Message {
        Message { topic: "t".into(), partition, offset, key: None, payload: Some(payload.to_vec()) }
    }

    fn order(uid: &str) -> Vec<u8> {
        let model = include_str!("../demo/model.json");
        model.replace("b563feb7b2b84b6test", uid).into_bytes()
    }

    /// A batch of partitions 0 and 1, each with two orders and a dead letter, loses
    /// partition 1: its orders and dead letter go with it, and partition 0's orders still
    /// point at their own messages.
    #[test]
    fn a_revoked_partition_leaves_a_batch_with_its_orders_and_dead_letters() {
        let messages = vec![
            message(0, 10, &order("a0")),
            message(1, 20, &order("b0")),
            message(1, 21, b"not json"),
            message(0, 11, b"not json"),
            message(1, 22, &order("b1")),
            message(0, 12, &order("a1")),
        ];
        let (orders, dead) = decode_all(&messages, &Rules::default());
        let mut batch = Decoded { messages, orders, dead, generation: 0, full: false, decode_took: Duration::ZERO };
        let revoked = BTreeSet::from([("t".to_string(), 1)]);
        let taken = batch.take_partitions(&revoked);
        assert_eq!(taken.iter().map(|m| m.offset).collect::<Vec<_>>(), [20, 21, 22]);
        assert_eq!(batch.messages.iter().map(|m| m.offset).collect::<Vec<_>>(), [10, 11, 12]);
        let orders: Vec<(i64, &str)> =
            batch.orders.iter().map(|(i, e)| (batch.messages[*i].offset, e.order.order_uid.as_str())).collect();
        assert_eq!(orders, [(10, "a0"), (12, "a1")]);
        assert_eq!(batch.dead.iter().map(|d| (d.partition, d.offset)).collect::<Vec<_>>(), [(0, 11)]);
        assert_eq!(batch.ends(), HashMap::from([(("t".to_string(), 0), 13)]));
        assert!(batch.take_partitions(&BTreeSet::new()).is_empty());
        assert_eq!(batch.messages.len(), 3);
    }
}
