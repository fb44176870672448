//! Commit pacing: the offsets written to PostgreSQL that Kafka has not been told yet, and
//! when to tell it. Kafka's committed offsets are only for lag tools (the offsets that
//! count are stored in PostgreSQL), so a commit, a round trip to the broker, waits for a
//! later batch or an idle moment: it is due `COMMIT_EVERY` after the last, or after a
//! failed one when its backoff says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::{debug, warn};
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::Consumer;
use super::partitions::{Partition, Partitions, describe_offsets};
use crate::runtime::Backoff;

/// The longest a written batch's offsets wait to be committed to Kafka, busy or idle.
pub const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// The offsets to commit to Kafka, and when.
#[derive(Debug)]
pub struct CommitPacing {
    /// Per partition, the offset to commit: one past the last message written.
    pending: BTreeMap<Partition, i64>,
    /// `Partitions::generation` when `pending` was last added to.
    generation: u64,
    /// After a failed commit: when to try again, and the backoff after that.
    retry: Option<(Instant, Backoff)>,
    /// When offsets were last committed.
    committed_at: Instant,
    retry_initial: Duration,
    retry_max: Duration,
}

impl CommitPacing {
    /// Nothing to commit; the first commit is due `COMMIT_EVERY` after `now`.
    pub fn new(now: Instant, retry_initial: Duration, retry_max: Duration) -> CommitPacing {
        CommitPacing {
            pending: BTreeMap::new(),
            generation: 0,
            retry: None,
            committed_at: now,
            retry_initial,
            retry_max,
        }
    }

    /// The offsets waiting to be committed.
    pub fn pending(&self) -> &BTreeMap<Partition, i64> {
        &self.pending
    }

    /// Adds offsets to commit: each partition's highest stays. With `fresh`, a failed
    /// commit's backoff is forgotten, and the next commit is due as if none had failed.
    pub fn add(&mut self, offsets: impl IntoIterator<Item = (Partition, i64)>, fresh: bool, partitions: &Partitions) {
        self.forget_revoked(partitions);
        for (key, offset) in offsets {
            let next = self.pending.entry(key).or_insert(0);
            *next = (*next).max(offset);
        }
        if fresh {
            self.retry = None;
        }
    }

    /// Partitions revoked since offsets were last added leave: their new owner commits
    /// them.
    fn forget_revoked(&mut self, partitions: &Partitions) {
        let now = partitions.generation();
        if now != self.generation {
            let revoked = partitions.revoked_since(self.generation);
            self.pending.retain(|key, _| !revoked.contains(key));
            self.generation = now;
        }
    }

    /// Whether to commit `pending` at `now`: there is something to commit, and `force`,
    /// or it is due (after a failed commit's backoff, else `COMMIT_EVERY` after the
    /// last).
    pub fn due(&mut self, now: Instant, force: bool, partitions: &Partitions) -> bool {
        if self.pending.is_empty() {
            self.retry = None;
            return false;
        }
        let due = match &self.retry {
            Some((at, _)) => *at,
            None => self.committed_at + COMMIT_EVERY,
        };
        if !force && now < due {
            return false;
        }
        self.forget_revoked(partitions);
        !self.pending.is_empty()
    }

    /// `pending` was committed at `now`.
    pub fn committed(&mut self, now: Instant) {
        self.pending.clear();
        self.retry = None;
        self.committed_at = now;
    }

    /// Committing `pending` failed at `now`: it is tried again after a backoff. Returns
    /// the attempt that failed and the wait before the next.
    pub fn failed(&mut self, now: Instant) -> (u32, Duration) {
        let (_, mut backoff) =
            self.retry.take().unwrap_or_else(|| (now, Backoff::new(self.retry_initial, self.retry_max)));
        let (attempt, delay) = (backoff.attempt(), backoff.next_delay());
        self.retry = Some((now + delay, backoff));
        (attempt, delay)
    }
}

impl Consumer {
    /// Stored offsets read at assignment go to Kafka too, so that its committed offsets
    /// (what lag tools read) catch up with the database's even before anything new comes.
    pub(super) fn take_assigned_offsets(&mut self) {
        let mut partitions = self.consumer.context().partitions.lock();
        let assigned = partitions.take_assigned_offsets();
        if !assigned.is_empty() {
            self.pacing.add(assigned, true, &partitions);
        }
    }

    /// Commits, per partition, the highest of `offsets` (each one past a batch's last
    /// message): at once if the last commit was `COMMIT_EVERY` ago, else with a later
    /// batch or while idle. A commit that fails is tried again after a backoff;
    /// committing a later offset also covers it.
    pub(super) fn commit_offsets(&mut self, offsets: impl IntoIterator<Item = (Partition, i64)>) {
        self.pacing.add(offsets, false, &self.consumer.context().partitions.lock());
        self.commit_pending(false);
    }

    /// Commits the offsets written but not committed yet. Unless `force`, waits out the
    /// backoff of a commit that failed before, or else `COMMIT_EVERY` since the last.
    pub(super) fn commit_pending(&mut self, force: bool) {
        if !self.pacing.due(Instant::now(), force, &self.consumer.context().partitions.lock()) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in self.pacing.pending() {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).expect("a non-negative offset is valid");
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                debug!("event=offsets_committed offsets={}", describe_offsets(self.pacing.pending()));
                self.pacing.committed(Instant::now());
            }
            Err(e) => {
                self.metrics.kafka_commit_failures.inc();
                let (attempt, delay) = self.pacing.failed(Instant::now());
                warn!(
                    "event=offset_commit_failed attempt={attempt} retry_in_ms={} offsets={} error={e}",
                    delay.as_millis(),
                    describe_offsets(self.pacing.pending())
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
