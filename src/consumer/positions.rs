//! Moving the partitions' fetch positions on the broker: seeking back what was collected
//! and dropped, pausing and resuming, and `reconcile`, which looks again at the
//! partitions waiting on the database or on `reset-offsets`.

use std::collections::BTreeMap;
use std::time::Instant;

use log::{debug, info, warn};
use rdkafka::Offset;
use rdkafka::consumer::Consumer as _;

use super::partitions::{Partition, Reread, describe_list, partition_list};
use super::{BROKER_CALL, Consumer};
use crate::model::Message;

impl Consumer {
    /// Drops collected messages that will not be written: each partition they came from
    /// that is still assigned is sought back to its position (or, with none stored yet,
    /// to the first message dropped), so that they are read again. Their fetch position
    /// had moved past them; without the seek a later batch would claim the partition from
    /// its position and skip them.
    pub(super) fn discard(&mut self, messages: &[Message], reason: &str) {
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
            let Some(position) = self.partitions().read_again_from(&key, offset) else { continue };
            self.seek(&key, position);
        }
    }

    pub(super) fn seek(&self, key: &Partition, offset: i64) {
        if let Err(e) = self.consumer.seek(&key.0, key.1, Offset::Offset(offset), BROKER_CALL) {
            warn!("event=seek_failed partition={}/{} offset={offset} error={e}", key.0, key.1);
        }
    }

    pub(super) fn pause(&self, keys: &[Partition]) {
        let tpl = partition_list(keys);
        if let Err(e) = self.consumer.pause(&tpl) {
            warn!("event=pause_failed partitions={} error={e}", describe_list(&tpl));
        }
    }

    fn resume(&self, key: Partition) {
        let tpl = partition_list(std::slice::from_ref(&key));
        if let Err(e) = self.consumer.resume(&tpl) {
            warn!("event=resume_failed partition={}/{} error={e}", key.0, key.1);
        }
    }

    /// Partitions that wait on something are looked at again: those whose stored offset
    /// could not be read (at assignment, or after a fenced batch), and those whose
    /// position is past the broker's end (until `reset-offsets` moves the stored offset).
    pub(super) fn reconcile(&mut self) {
        self.reconciled = Instant::now();
        let waiting = self.partitions().waiting();
        if waiting.is_empty() {
            return;
        }
        let stored = match self.read_stored(&waiting) {
            Ok(stored) => stored,
            Err(e) => {
                debug!("event=stored_offsets_unavailable error={e:#}");
                return;
            }
        };
        for key in waiting {
            let reread = self.partitions().reread(&key, stored.get(&key).copied());
            match reread {
                Reread::Unchanged => continue,
                Reread::Positioned(None) => {}
                Reread::Positioned(Some(offset)) => self.seek(&key, offset),
                Reread::Reset { from, to } => {
                    info!(
                        "event=partition_position_reset topic={} partition={} from={:?} to={:?}",
                        key.0,
                        key.1,
                        Some(from),
                        Some(to)
                    );
                    self.metrics.position_beyond_end.with_label_values(&[key.0.as_str(), &key.1.to_string()]).set(0);
                    self.seek(&key, to);
                }
            }
            self.resume(key);
        }
    }
}
