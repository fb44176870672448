//! The consumer's positions, kept in `consumer_offsets` and advanced in each batch's own
//! transaction by compare-and-set: a batch commits only if every partition it read still
//! stands where this consumer started reading it. An instance that lost a partition to
//! another (a rebalance, a frozen process, a stalled connection) finds the row moved on
//! and commits nothing, however late it wakes.

use std::collections::HashMap;

use anyhow::Context;
use postgres::{Client, Transaction};

use super::prepared::Prepared;

/// One partition's part in a batch: where the consumer started reading it (`expected`,
/// None where the group had no stored offset), one past its last message (`next`), and
/// how many of its messages the batch writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub topic: String,
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
    pub messages: i64,
}

/// Advances each claimed partition's stored offset, under the row's lock, only where it
/// still is `expected`; returns the partitions where it is not. If any, the caller must
/// roll the transaction back: another consumer has written past this one.
pub(super) fn advance(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    group: &str,
    claims: &[Claim],
) -> Result<Vec<(String, i32)>, postgres::Error> {
    let mut fenced = Vec::new();
    for c in claims {
        let moved = match c.expected {
            Some(expected) => {
                tx.execute(&prepared.advance, &[&group, &c.topic, &c.partition, &c.next, &c.messages, &expected])?
            }
            None => tx.execute(&prepared.first_claim, &[&group, &c.topic, &c.partition, &c.next, &c.messages])?,
        };
        if moved != 1 {
            fenced.push((c.topic.clone(), c.partition));
        }
    }
    Ok(fenced)
}

/// The group's stored offsets for these partitions; a partition without one is absent.
pub fn stored_offsets(
    client: &mut Client,
    group: &str,
    partitions: &[(String, i32)],
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
    let numbers: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let rows = client
        .query(
            "SELECT o.topic, o.partition, o.next_offset FROM consumer_offsets o \
             JOIN UNNEST($2::text[], $3::int4[]) AS w (topic, partition) \
               ON w.topic = o.topic AND w.partition = o.partition \
             WHERE o.group_id = $1",
            &[&group, &topics, &numbers],
        )
        .with_context(|| format!("read the stored offsets of group {group}"))?;
    Ok(rows.iter().map(|r| ((r.get("topic"), r.get("partition")), r.get("next_offset"))).collect())
}

/// What `reset_offsets` changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Reset {
    pub partitions: u64,
    /// Orders whose source position was forgotten, so that any message replaces them.
    pub orders: u64,
}

/// Sets the group's stored offset of each partition of `topic` to the one given, and
/// forgets the source position of every order that came from `topic`: for a topic
/// deleted and created again (its offsets start over), or a broker that lost its data.
pub fn reset_offsets(client: &mut Client, group: &str, topic: &str, offsets: &[(i32, i64)]) -> anyhow::Result<Reset> {
    let mut tx = client.transaction().context("begin offset reset")?;
    let mut partitions = 0;
    for (partition, offset) in offsets {
        partitions += tx
            .execute(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (group_id, topic, partition) \
                 DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                &[&group, &topic, partition, offset],
            )
            .context("store the reset offset")?;
    }
    let orders = tx
        .execute(
            "UPDATE orders SET source_topic = NULL, source_partition = NULL, source_offset = NULL \
             WHERE source_topic = $1",
            &[&topic],
        )
        .context("forget the orders' source positions")?;
    tx.commit().context("commit offset reset")?;
    Ok(Reset { partitions, orders })
}
