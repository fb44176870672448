//! Writing a decoded batch: its claims on the partitions, one transaction (retried until
//! it commits), then the cache and Kafka's offsets; a fenced batch's partitions go back
//! to their stored offsets. Also the loop's own connection to PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::consumer::Consumer as _;

use super::Consumer;
use super::batch::{Committed, Decoded};
use super::partitions::{Partition, describe_partitions};
use crate::model::{Encoded, Message};
use crate::runtime::Backoff;
use crate::store::{self, BatchResult, Claim, Conn, DeadLetter, Written};

/// What became of a batch given to `Consumer::write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written and committed in PostgreSQL, published to the cache (or handed over to
    /// be), its offsets handed to the commit pacing.
    Committed,
    /// Nothing written: another consumer wrote its partitions further. They are read
    /// again from the stored offsets.
    Fenced,
    /// Nothing written: shutdown came while the database was failing. Its messages are
    /// read again at the next start.
    Abandoned,
}

impl Consumer {
    /// Writes a decoded batch, commits its offsets and publishes its orders.
    pub(super) fn write(&mut self, batch: Decoded) -> BatchOutcome {
        let Decoded { messages, orders, dead, decode_took, full, .. } = batch;
        let started = Instant::now();
        // From the positions as they are now, after the batch before this one.
        let claims = self.claims(&messages);
        let orders: Vec<(&Message, Encoded)> = orders.into_iter().map(|(i, e)| (&messages[i], e)).collect();
        let batch = self.cache.writing(orders.iter().map(|(_, e)| e.order.order_uid.as_str()));
        self.metrics.writing(true);
        let result = self.write_with_retry(&claims, &orders, &dead);
        self.metrics.writing(false);
        let mut result = match result {
            None => {
                self.cache.not_written(batch);
                info!("event=batch_abandoned reason=shutdown_during_retry messages={}", messages.len());
                return BatchOutcome::Abandoned;
            }
            Some(Written::Fenced(fenced)) => {
                self.cache.not_written(batch);
                self.fenced(&claims, &fenced);
                return BatchOutcome::Fenced;
            }
            Some(Written::Committed(result)) => result,
        };
        let mut partitions = self.partitions();
        for c in &claims {
            partitions.written(&(c.topic.clone(), c.partition), c.next);
        }
        drop(partitions);
        let written = Instant::now();
        #[cfg(debug_assertions)]
        crate::fault::point("exit_after_database_commit");
        // Committed in PostgreSQL, so served at once: Kafka's offsets are only for lag
        // tools, and no reader should wait for them.
        let count = messages.len();
        let orders = orders.into_iter().map(|(_, encoded)| encoded).collect();
        let stored = std::mem::take(&mut result.stored);
        self.publish(Committed { messages, orders, stored, batch }, full);
        let committing = Instant::now();
        self.commit_offsets(claims.iter().map(|c| ((c.topic.clone(), c.partition), c.next)));
        let timings = [decode_took, written - started, committing.elapsed()];
        self.record(count, &result, timings);
        log_batch(count, &result, timings);
        BatchOutcome::Committed
    }

    /// Publishes a committed batch: see `Publisher::publish`.
    fn publish(&self, committed: Committed, full: bool) {
        match &self.publisher {
            Some(publisher) => publisher.publish(committed, full, &self.cache, &self.metrics),
            None => committed.publish(&self.cache, &self.metrics),
        }
    }

    /// For each partition of the batch: where this consumer started reading it, one past
    /// its last message, and how many messages it has.
    fn claims(&self, batch: &[Message]) -> Vec<Claim> {
        let partitions = self.partitions();
        let mut claims: BTreeMap<Partition, Claim> = BTreeMap::new();
        for m in batch {
            let key = (m.topic.clone(), m.partition);
            let claim = claims.entry(key.clone()).or_insert_with(|| Claim {
                topic: m.topic.clone(),
                partition: m.partition,
                expected: partitions.expected(&key),
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
            describe_partitions(fenced)
        );
        let keys: Vec<Partition> = claims.iter().map(|c| (c.topic.clone(), c.partition)).collect();
        let stored = match self.read_stored(&keys) {
            Ok(stored) => stored,
            Err(e) => {
                // Read again at the next reconcile; until then these partitions wait.
                warn!("event=stored_offsets_unavailable error={e:#}");
                self.pause(&keys);
                self.partitions().unposition(&keys);
                return;
            }
        };
        for key in keys {
            let seek_to = self.partitions().restart_from(&key, stored.get(&key).copied());
            if let Some(offset) = seek_to {
                self.seek(&key, offset);
            }
        }
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
                    if self.db.as_ref().is_some_and(|db| db.is_closed()) {
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
        store::write_batch_on(self.connection()?, &group, claims, orders, dead)
    }

    /// Counts a committed batch of `messages` messages.
    fn record(&self, messages: usize, result: &BatchResult, timings: [Duration; 3]) {
        let m = &self.metrics;
        m.messages_consumed.inc_by(messages as u64);
        m.orders_stored.with_label_values(&["inserted"]).inc_by(result.inserted as u64);
        m.orders_stored.with_label_values(&["replaced"]).inc_by(result.replaced as u64);
        m.orders_stored.with_label_values(&["unchanged"]).inc_by(result.unchanged as u64);
        m.orders_stored.with_label_values(&["stale"]).inc_by(result.stale as u64);
        for dead in &result.dead_letters {
            m.messages_rejected.with_label_values(&[dead.rule.as_str()]).inc();
        }
        m.batch_messages.observe(messages as f64);
        // `Committed::publish` times "publish", on whichever thread it runs.
        for (phase, took) in ["decode", "write", "commit"].into_iter().zip(timings) {
            m.batch_seconds.with_label_values(&[phase]).observe(took.as_secs_f64());
        }
    }

    /// The group's stored offsets, on the consumer's own connection.
    pub(super) fn read_stored(&mut self, keys: &[Partition]) -> anyhow::Result<HashMap<Partition, i64>> {
        let group = self.consumer.context().group.clone();
        let result = self.connection().and_then(|db| store::stored_offsets(db, &group, keys));
        if result.is_err() && self.db.as_ref().is_some_and(|db| db.is_closed()) {
            self.db = None;
        }
        result
    }

    fn connection(&mut self) -> anyhow::Result<&mut Conn> {
        if self.db.is_none() {
            self.db = Some(Conn::from(store::connect_writer(&self.database)?));
        }
        Ok(self.db.as_mut().expect("connected above"))
    }
}

/// `timings`: decoding, the database transaction, the offset commit.
fn log_batch(messages: usize, result: &BatchResult, timings: [Duration; 3]) {
    let [decode, write, commit] = timings.map(|d| d.as_secs_f64() * 1000.0);
    info!(
        "event=batch_committed messages={messages} inserted={} replaced={} unchanged={} stale={} rejected={} \
         decode_ms={decode:.1} write_ms={write:.1} commit_ms={commit:.1}",
        result.inserted,
        result.replaced,
        result.unchanged,
        result.stale,
        result.dead_letters.len()
    );
}
