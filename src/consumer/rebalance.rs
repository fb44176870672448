//! `GroupContext`: what librdkafka calls back into on the consumer thread, inside `poll`.
//! Its rebalance callback assigns each partition at the group's offset stored in
//! PostgreSQL and keeps the table of partitions; its other callbacks report the
//! brokers' errors and librdkafka's statistics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use super::partitions::{Partition, Partitions, describe_list, describe_offsets, describe_partitions, partition_keys};
use crate::config;
use crate::metrics::Metrics;
use crate::runtime::Health;
use crate::store;

/// Follows the consumer group's rebalances. Its callbacks run on the consumer thread,
/// inside `poll`.
pub struct GroupContext {
    pub(super) health: Arc<Health>,
    metrics: Arc<Metrics>,
    pub(super) group: String,
    protocol: config::GroupProtocol,
    database: config::Database,
    /// The partitions assigned, each in its state, and the revocations so far. The one
    /// lock of the consumer: never held across a call to the broker or the database.
    pub(super) partitions: parking_lot::Mutex<Partitions>,
}

impl GroupContext {
    pub fn new(health: Arc<Health>, metrics: Arc<Metrics>, kafka: &config::Kafka, database: &config::Database) -> Self {
        GroupContext {
            health,
            metrics,
            group: kafka.group_id.clone(),
            protocol: kafka.group_protocol,
            database: database.clone(),
            partitions: parking_lot::Mutex::new(Partitions::default()),
        }
    }
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
        let beyond_end = self.partitions.lock().beyond_end_partitions();
        for (topic, partition) in beyond_end {
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
        // Counted from what this callback recorded, not asked of librdkafka: its
        // `assignment` waits, without a timeout, for its main thread, which during the
        // consumer's close may never answer (a stop hung there, in a revocation).
        let assigned = self.partitions.lock().held();
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
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let assign = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
        if let Err(e) = assign {
            error!("event=assign_failed partitions={} error={e}", describe_list(tpl));
            return;
        }
        if cooperative {
            wake_fetchers(consumer);
        }
        match stored {
            Ok(stored) => {
                info!(
                    "event=partitions_assigned count={} partitions={} stored_offsets={} read_ms={read_ms} \
                     assign_ms={}",
                    tpl.count(),
                    describe_list(tpl),
                    describe_offsets(&stored.iter().map(|(k, v)| (k.clone(), *v)).collect()),
                    started.elapsed().as_millis() - read_ms
                );
                self.partitions.lock().assign(assigned, &stored);
            }
            Err(e) => {
                warn!(
                    "event=partitions_assigned_unpositioned partitions={} action=paused_until_the_database_answers \
                     error={e:#}",
                    describe_list(tpl)
                );
                if let Err(e) = consumer.pause(tpl) {
                    error!("event=pause_failed partitions={} error={e}", describe_list(tpl));
                }
                self.partitions.lock().assign_unpositioned(assigned);
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        // Eager revocation takes every partition held, whatever the list names.
        let revoked = self.partitions.lock().revoke(partition_keys(tpl), !cooperative);
        info!("event=partitions_revoked count={} partitions={}", revoked.len(), describe_partitions(&revoked));
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

/// How long the requests that wake the fetchers may take.
const WAKE_CALL: Duration = Duration::from_millis(500);

/// Wakes the threads that fetch the partitions kept through an incremental rebalance.
///
/// While the application's rebalance callback runs, librdkafka pauses every assigned
/// partition, kept ones included, and resumes them when `incremental_assign` ends it.
/// Resuming only clears a flag: a broker's thread that had nothing in flight when it saw
/// its partitions paused sleeps until something else wakes it, up to a second
/// (`rd_kafka_max_block_ms`), and the partitions that stayed wait that long
/// (`bench/run rebalance` measured 1,024-1,044 ms). A request to a broker wakes its
/// thread: one watermark query per leader of the partitions held.
fn wake_fetchers<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    let Ok(held) = consumer.assignment() else { return };
    let mut topics: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for e in held.elements() {
        topics.entry(e.topic().to_string()).or_default().insert(e.partition());
    }
    for (topic, partitions) in topics {
        let leaders = match consumer.fetch_metadata(Some(&topic), WAKE_CALL) {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| (p.leader(), p.id())))
                .filter(|(_, id)| partitions.contains(id))
                .collect::<BTreeMap<i32, i32>>(),
            Err(e) => {
                debug!("event=wake_fetchers_skipped topic={topic} error={e}");
                continue;
            }
        };
        for partition in leaders.into_values() {
            if let Err(e) = consumer.fetch_watermarks(&topic, partition, WAKE_CALL) {
                debug!("event=wake_fetchers_failed partition={topic}/{partition} error={e}");
            }
        }
    }
}
