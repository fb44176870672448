//! The consumer's partitions: one table of those assigned to it, each in one
//! `PartitionState`, and the record of what each revocation took away. `GroupContext`
//! keeps the table under one lock: the rebalance callbacks change it inside `poll`, the
//! loop reads and moves it between polls. No IO here; the callers act on the broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rdkafka::TopicPartitionList;

/// A topic and one of its partitions.
pub type Partition = (String, i32);

/// Where the consumer stands with an assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Its stored offset could not be read (at assignment, or after a fenced batch): the
    /// partition is paused and its messages are not taken until `reconcile` reads it.
    Unpositioned,
    /// The group has no stored offset for it: it is read from Kafka's committed offset,
    /// else from `auto_offset_reset`, and its first batch stores one.
    NoStoredOffset,
    /// Read from `next`, where the database has the group's position: the stored offset
    /// at assignment, then one past each batch written.
    Positioned { next: i64 },
    /// Paused: Kafka's out-of-range answer moved its fetch position back, and `next` is
    /// past the partition's end (the topic was created again, or the broker lost its
    /// data). It waits until the stored offset moves away from `next` (`reset-offsets`).
    BeyondEnd { next: i64 },
}

/// What reading a partition's stored offset again did to it (`Partitions::reread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reread {
    /// Nothing: it was not waiting, or is past its end and its stored offset has not moved.
    Unchanged,
    /// It was unpositioned and is read from its stored offset now: seek there, if the
    /// group has one, and resume.
    Positioned(Option<i64>),
    /// Its stored offset moved from `from` to `to` while it was past its end: seek to
    /// `to` and resume.
    Reset { from: i64, to: i64 },
}

/// The partitions assigned to this consumer and the revocations so far.
#[derive(Debug, Default)]
pub struct Partitions {
    states: BTreeMap<Partition, PartitionState>,
    /// Stored offsets read at assignment and not yet taken by the loop, to be committed
    /// to Kafka too (for lag tools).
    assigned_offsets: Vec<(Partition, i64)>,
    /// The partitions each revocation took, in order: entry `i` is revocation `i + 1`'s.
    /// Under the classic protocol every revocation takes every partition; under the
    /// consumer protocol only those that move, and batches keep the others.
    revoked: Vec<Vec<Partition>>,
}

impl Partitions {
    pub fn state(&self, key: &Partition) -> Option<PartitionState> {
        self.states.get(key).copied()
    }

    /// How many revocations there have been. A batch records it when it is collected,
    /// to tell later which of its partitions were taken away meanwhile.
    pub fn generation(&self) -> u64 {
        self.revoked.len() as u64
    }

    /// The partitions revoked since revocation number `generation`.
    pub fn revoked_since(&self, generation: u64) -> BTreeSet<Partition> {
        self.revoked.iter().skip(generation as usize).flatten().cloned().collect()
    }

    /// `keys` were assigned and their stored offsets read: `stored` has those the group
    /// has one for. Each is read from there; the offsets also wait for the loop to commit
    /// them to Kafka.
    pub fn assign(&mut self, keys: Vec<Partition>, stored: &HashMap<Partition, i64>) {
        for key in keys {
            let state = match stored.get(&key) {
                Some(&next) => {
                    self.assigned_offsets.push((key.clone(), next));
                    PartitionState::Positioned { next }
                }
                None => PartitionState::NoStoredOffset,
            };
            self.states.insert(key, state);
        }
    }

    /// `keys` were assigned, and paused because their stored offsets could not be read.
    pub fn assign_unpositioned(&mut self, keys: Vec<Partition>) {
        for key in keys {
            self.states.insert(key, PartitionState::Unpositioned);
        }
    }

    /// Takes `keys` out of the table, or every partition held as well if `every` (an
    /// eager revocation takes them all, whatever its list names), and records them as
    /// the next revocation. Returns the partitions revoked.
    pub fn revoke(&mut self, keys: Vec<Partition>, every: bool) -> BTreeSet<Partition> {
        let mut revoked: BTreeSet<Partition> = keys.into_iter().collect();
        if every {
            revoked.extend(self.states.keys().cloned());
        }
        self.states.retain(|key, _| !revoked.contains(key));
        self.revoked.push(revoked.iter().cloned().collect());
        revoked
    }

    /// How many partitions are held: assigned and not revoked since.
    pub fn held(&self) -> usize {
        self.states.len()
    }

    /// The stored offsets read at assignment since the last call.
    pub fn take_assigned_offsets(&mut self) -> Vec<(Partition, i64)> {
        std::mem::take(&mut self.assigned_offsets)
    }

    /// Whether a polled message of `key` may join a batch: the partition is assigned and
    /// not waiting for its stored offset.
    pub fn taking(&self, key: &Partition) -> bool {
        matches!(self.state(key), Some(state) if state != PartitionState::Unpositioned)
    }

    /// The group's stored offset of `key` as this consumer has it: where its next batch
    /// must start, and where the database must still be for that batch to commit. None
    /// if there is none (or the partition is not assigned, or not positioned).
    pub fn expected(&self, key: &Partition) -> Option<i64> {
        match self.state(key)? {
            PartitionState::Positioned { next } | PartitionState::BeyondEnd { next } => Some(next),
            PartitionState::Unpositioned | PartitionState::NoStoredOffset => None,
        }
    }

    /// Where dropped messages of `key`, the first of them at `first`, are read again
    /// from: its stored offset, or with none stored yet, the first message dropped. None
    /// if the partition is no longer assigned or waits for its stored offset (it is
    /// sought there once that is read).
    pub fn read_again_from(&self, key: &Partition, first: i64) -> Option<i64> {
        match self.state(key)? {
            PartitionState::Positioned { next } | PartitionState::BeyondEnd { next } => Some(next),
            PartitionState::NoStoredOffset => Some(first),
            PartitionState::Unpositioned => None,
        }
    }

    /// A batch reading `key` up to `next` (exclusive) was committed: the stored offset
    /// is `next` now. A partition past its end stays paused.
    pub fn written(&mut self, key: &Partition, next: i64) {
        let Some(state) = self.states.get_mut(key) else { return };
        *state = match *state {
            PartitionState::NoStoredOffset | PartitionState::Positioned { .. } => PartitionState::Positioned { next },
            PartitionState::BeyondEnd { .. } => PartitionState::BeyondEnd { next },
            PartitionState::Unpositioned => PartitionState::Unpositioned,
        };
    }

    /// A batch was fenced and `key`'s stored offset read again: the partition is read
    /// from there. Returns the offset to seek it to. A partition past its end stays
    /// paused at the stored offset; one waiting for its stored offset is left to
    /// `reread`.
    pub fn restart_from(&mut self, key: &Partition, stored: Option<i64>) -> Option<i64> {
        let state = self.states.get_mut(key)?;
        match (*state, stored) {
            (PartitionState::NoStoredOffset | PartitionState::Positioned { .. }, None) => {
                *state = PartitionState::NoStoredOffset;
            }
            (PartitionState::NoStoredOffset | PartitionState::Positioned { .. }, Some(next)) => {
                *state = PartitionState::Positioned { next };
            }
            (PartitionState::BeyondEnd { .. }, Some(next)) => *state = PartitionState::BeyondEnd { next },
            (PartitionState::BeyondEnd { .. } | PartitionState::Unpositioned, _) => return None,
        }
        stored
    }

    /// `keys`' stored offsets could not be read after a fenced batch: they wait (paused
    /// by the caller) until `reconcile` reads them.
    pub fn unposition(&mut self, keys: &[Partition]) {
        for key in keys {
            if let Some(state) = self.states.get_mut(key) {
                *state = PartitionState::Unpositioned;
            }
        }
    }

    /// Kafka moved `key`'s fetch position back to before `position` (its stored offset,
    /// or the end of a batch collected but not yet written), and `position` is past the
    /// partition's end: it is paused (by the caller) until its stored offset moves.
    pub fn beyond_end(&mut self, key: &Partition, position: i64) {
        let Some(state) = self.states.get_mut(key) else { return };
        *state = match *state {
            PartitionState::Positioned { next } | PartitionState::BeyondEnd { next } => {
                PartitionState::BeyondEnd { next }
            }
            // The batch that reached `position` is written next, and stores it.
            PartitionState::NoStoredOffset => PartitionState::BeyondEnd { next: position },
            PartitionState::Unpositioned => PartitionState::Unpositioned,
        };
    }

    /// The partitions waiting on something: their stored offset, or, past their end, a
    /// stored offset that moves.
    pub fn waiting(&self) -> Vec<Partition> {
        let waits = |s: &PartitionState| matches!(s, PartitionState::Unpositioned | PartitionState::BeyondEnd { .. });
        self.states.iter().filter(|(_, s)| waits(s)).map(|(key, _)| key.clone()).collect()
    }

    /// The partitions paused past their end.
    pub fn beyond_end_partitions(&self) -> Vec<Partition> {
        let beyond = |s: &PartitionState| matches!(s, PartitionState::BeyondEnd { .. });
        self.states.iter().filter(|(_, s)| beyond(s)).map(|(key, _)| key.clone()).collect()
    }

    /// A waiting partition's stored offset, read again (`stored`, None where the group
    /// has none): an unpositioned partition is read from there, and one past its end
    /// too if its stored offset moved.
    pub fn reread(&mut self, key: &Partition, stored: Option<i64>) -> Reread {
        let Some(state) = self.states.get_mut(key) else { return Reread::Unchanged };
        match (*state, stored) {
            (PartitionState::Unpositioned, None) => *state = PartitionState::NoStoredOffset,
            (PartitionState::Unpositioned, Some(next)) => *state = PartitionState::Positioned { next },
            (PartitionState::BeyondEnd { next: from }, Some(to)) if to != from => {
                *state = PartitionState::Positioned { next: to };
                return Reread::Reset { from, to };
            }
            _ => return Reread::Unchanged,
        }
        Reread::Positioned(stored)
    }
}

/// Whether `partitions` holds `topic`/`partition`, without making a key.
pub fn holds(partitions: &BTreeSet<Partition>, topic: &str, partition: i32) -> bool {
    partitions.iter().any(|(t, p)| t == topic && *p == partition)
}

pub fn partition_keys(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

/// A list of partitions as Kafka takes them, without offsets.
pub fn partition_list(keys: &[Partition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in keys {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

/// `topic/partition,…`, for the log.
pub fn describe_partitions<'a>(keys: impl IntoIterator<Item = &'a Partition>) -> String {
    keys.into_iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(",")
}

/// `topic/partition,…` of a Kafka list, for the log.
pub fn describe_list(tpl: &TopicPartitionList) -> String {
    let list: Vec<String> = tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
    list.join(",")
}

/// `topic/partition@offset,…`, for the log.
pub fn describe_offsets(offsets: &BTreeMap<Partition, i64>) -> String {
    let list: Vec<String> = offsets.iter().map(|((t, p), o)| format!("{t}/{p}@{o}")).collect();
    list.join(",")
}

#[cfg(test)]
mod tests;
