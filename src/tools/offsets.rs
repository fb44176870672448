//! `orders-svc reset-offsets`: sets the group's offsets stored in PostgreSQL to the start
//! of each partition of the topic, and forgets where the stored orders came from. For a
//! topic deleted and created again, or a broker that lost its data: the offsets start
//! over, and without this the consumer would wait past the partitions' ends and treat
//! every new message as older than what it stored.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::store;

const BROKER_CALL: Duration = Duration::from_secs(10);

/// The start (low watermark) of each partition of the configured topic.
pub fn partition_starts(config: &Config) -> anyhow::Result<Vec<(i32, i64)>> {
    let k = &config.kafka;
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &k.brokers).create().context("create Kafka client")?;
    let metadata = consumer
        .fetch_metadata(Some(&k.topic), BROKER_CALL)
        .with_context(|| format!("read the metadata of topic {} from {}", k.topic, k.brokers))?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == k.topic) else {
        bail!("the broker does not know topic {}", k.topic);
    };
    if let Some(e) = topic.error() {
        bail!("topic {}: {:?}", k.topic, rdkafka::error::RDKafkaErrorCode::from(e));
    }
    topic
        .partitions()
        .iter()
        .map(|p| {
            let (low, _) = consumer
                .fetch_watermarks(&k.topic, p.id(), BROKER_CALL)
                .with_context(|| format!("read the start of partition {}/{}", k.topic, p.id()))?;
            Ok((p.id(), low))
        })
        .collect()
}

/// Resets the configured group's stored offsets of the configured topic to the
/// partitions' starts; returns what the command prints.
pub fn reset(config: &Config) -> anyhow::Result<String> {
    let mut starts = partition_starts(config)?;
    starts.sort_unstable();
    let (group, topic) = (&config.kafka.group_id, &config.kafka.topic);
    let mut client = store::connect(&config.database)?;
    let done = store::reset_offsets(&mut client, group, topic, &starts)?;
    log::warn!(
        "event=offsets_reset group={group} topic={topic} partitions={} orders_forgotten={}",
        done.partitions,
        done.orders
    );
    let mut out = String::new();
    for (partition, offset) in &starts {
        writeln!(out, "{topic}/{partition}: next offset {offset}")?;
    }
    writeln!(
        out,
        "group {group}: {} partitions reset; {} orders from {topic} will take the next message for them",
        done.partitions, done.orders
    )?;
    Ok(out)
}
