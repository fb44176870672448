//! Collecting a batch from `poll`: each message that follows its partition's position
//! joins it, until it is full or its wait is over; then the partitions whose messages
//! came from before or after their position are looked at.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use log::{debug, error, warn};
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;

use super::batch::Collected;
use super::partitions::{Partition, holds};
use super::{BROKER_CALL, Consumer, IDLE_POLL};
use crate::config;
use crate::model::Message;

/// What one poll gave the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// A message, now in the batch.
    Taken,
    /// A message left out: before its position, or of a partition not taken (revoked,
    /// or waiting for its stored offset).
    Skipped,
    /// An error, logged.
    Error,
    /// Nothing within the poll's wait.
    Nothing,
    /// A fatal error: nothing more will come.
    Fatal,
}

/// A batch being collected.
struct Collecting {
    messages: Vec<Message>,
    bytes: usize,
    /// Partitions that delivered a message before their position, with that position.
    behind: BTreeMap<Partition, i64>,
    /// Partitions whose first message came after their position: the position, and
    /// that message's offset.
    ahead: BTreeMap<Partition, (i64, i64)>,
    /// Partitions with a message in the batch: the messages after a partition's first
    /// follow that one, not the position.
    started: BTreeSet<Partition>,
    /// `batch_max_wait` after the first message.
    deadline: Option<Instant>,
    /// `Partitions::generation` as of the messages held.
    generation: u64,
    max_messages: usize,
    max_bytes: usize,
    max_wait: Duration,
}

impl Collecting {
    fn new(ingest: &config::Ingest, generation: u64) -> Collecting {
        Collecting {
            messages: Vec::new(),
            bytes: 0,
            behind: BTreeMap::new(),
            ahead: BTreeMap::new(),
            started: BTreeSet::new(),
            deadline: None,
            generation,
            max_messages: ingest.batch_max_messages,
            max_bytes: ingest.batch_max_bytes,
            max_wait: ingest.batch_max_wait(),
        }
    }

    /// How long the next poll may wait: until the deadline once the batch has begun.
    fn poll_timeout(&self) -> Duration {
        self.deadline.map_or(IDLE_POLL, |d| d.saturating_duration_since(Instant::now()))
    }

    /// Adds `m` of partition `key`, expected at `position` (None: anywhere, the group has
    /// no stored offset), unless it comes before it.
    fn offer(&mut self, key: Partition, m: &BorrowedMessage<'_>, position: Option<i64>) -> Polled {
        if !self.follows(&key, m.offset(), position) {
            return Polled::Skipped;
        }
        self.take(Message {
            topic: key.0,
            partition: key.1,
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        })
    }

    /// Whether a message of `key` at `offset` may join the batch, the partition's
    /// position being `position`: not if it comes before it (the partition is noted as
    /// behind). A partition whose first message in the batch comes after its position is
    /// noted as ahead; the messages after that first one are not compared with the
    /// position, which they are all past.
    fn follows(&mut self, key: &Partition, offset: i64, position: Option<i64>) -> bool {
        let first = !self.started.contains(key);
        if let Some(position) = position {
            if offset < position {
                self.behind.insert(key.clone(), position);
                return false;
            }
            if first && offset > position {
                self.ahead.insert(key.clone(), (position, offset));
            }
        }
        if first {
            self.started.insert(key.clone());
        }
        true
    }

    fn take(&mut self, message: Message) -> Polled {
        self.bytes += message.payload.as_ref().map_or(0, Vec::len);
        self.messages.push(message);
        self.deadline.get_or_insert_with(|| Instant::now() + self.max_wait);
        Polled::Taken
    }

    /// Takes out the messages of `revoked`, and forgets what was seen of them, as of
    /// `generation`. Returns the messages taken out.
    fn take_revoked(&mut self, revoked: &BTreeSet<Partition>, generation: u64) -> Vec<Message> {
        let (dropped, kept): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.messages).into_iter().partition(|m| holds(revoked, &m.topic, m.partition));
        self.messages = kept;
        self.bytes = self.messages.iter().map(|m| m.payload.as_ref().map_or(0, Vec::len)).sum();
        if self.messages.is_empty() {
            self.deadline = None;
        }
        self.generation = generation;
        self.ahead.retain(|key, _| !revoked.contains(key));
        self.started.retain(|key| !revoked.contains(key));
        self.behind.retain(|key, _| !revoked.contains(key));
        dropped
    }

    fn full(&self) -> bool {
        self.messages.len() >= self.max_messages || self.bytes >= self.max_bytes
    }

    /// Full, or past its wait with no more messages here. Past the wait, the messages
    /// already here still join the batch: it ends when a poll finds no more, so the wait
    /// can be short without batches of one.
    fn ended(&self, polled: Polled) -> bool {
        self.full() || (polled == Polled::Nothing && self.deadline.is_some_and(|d| Instant::now() >= d))
    }
}

impl Consumer {
    /// Takes messages until the batch holds `batch_max_messages` or `batch_max_bytes`, or
    /// `batch_max_wait` has passed since its first message and no more are already here;
    /// returns an empty batch when a poll finds nothing to start one. If partitions are
    /// revoked meanwhile, their messages are dropped: their new owner reads them again
    /// from the stored offset. A message before this consumer's position, or before `after`
    /// (where a batch collected but not yet written ends), is skipped: the broker reset the
    /// position backwards. Its partition is sought back to where it should be. A
    /// partition whose first message comes after the position may have lost messages to
    /// retention: `report_loss` looks.
    pub(super) fn collect_batch(&mut self, after: &HashMap<Partition, i64>) -> Collected {
        let mut batch = Collecting::new(&self.ingest, self.generation());
        loop {
            let polled = self.poll_into(&mut batch, after);
            match polled {
                Polled::Fatal => break,
                Polled::Skipped => continue,
                Polled::Nothing if batch.messages.is_empty() => break,
                Polled::Taken | Polled::Error | Polled::Nothing => {}
            }
            self.drop_revoked_from(&mut batch);
            if batch.ended(polled) || (batch.messages.is_empty() && self.shutdown.is_signalled()) {
                break;
            }
        }
        for (key, position) in std::mem::take(&mut batch.behind) {
            self.seek_back(key, position);
        }
        for (key, (position, first)) in std::mem::take(&mut batch.ahead) {
            self.report_loss(key, position, first);
        }
        let full = batch.full();
        Collected { messages: batch.messages, generation: batch.generation, full }
    }

    /// Polls once, and offers the batch the message polled, if its partition is taken.
    fn poll_into(&mut self, batch: &mut Collecting, after: &HashMap<Partition, i64>) -> Polled {
        let m = match self.consumer.poll(batch.poll_timeout()) {
            Some(Ok(m)) => m,
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                self.stop_on_fatal(code);
                return Polled::Fatal;
            }
            Some(Err(e)) => {
                warn!("event=kafka_error error={e}");
                return Polled::Error;
            }
            None => return Polled::Nothing,
        };
        let key = (m.topic().to_string(), m.partition());
        let (taking, expected) = {
            let partitions = self.partitions();
            (partitions.taking(&key), partitions.expected(&key))
        };
        if !taking {
            return Polled::Skipped;
        }
        let position = after.get(&key).copied().or(expected);
        batch.offer(key, &m, position)
    }

    /// Drops from the batch the messages of partitions revoked since its generation.
    fn drop_revoked_from(&mut self, batch: &mut Collecting) {
        let generation = self.generation();
        if generation == batch.generation {
            return;
        }
        let revoked = self.revoked_since(batch.generation);
        let dropped = batch.take_revoked(&revoked, generation);
        self.discard(&dropped, "partitions_revoked");
    }

    /// A partition delivered messages before this consumer's position: the broker moved
    /// it back (an out-of-range reset, as after the topic was recreated). If the position
    /// is past the partition's end, the partition is paused and the operator told what to
    /// do; otherwise it is sought back to the position.
    fn seek_back(&mut self, key: Partition, position: i64) {
        let end = self.ask_watermarks(&key).map(|(_, high)| high);
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
                self.partitions().beyond_end(&key, position);
            }
            _ => self.seek(&key, position),
        }
    }

    /// A fatal error: the consumer will deliver nothing more. The loop ends, so nothing
    /// more is written; the HTTP side goes on serving, and `/readyz` says why the instance
    /// is not ready (see `fatal_reason`).
    fn stop_on_fatal(&mut self, code: RDKafkaErrorCode) {
        let (reason, hint) = fatal_reason(code);
        error!("event=consumer_fatal_error code={code:?} reason=\"{reason}\" action=stopped_consuming hint=\"{hint}\"");
        self.consumer.context().health.set_consumer_stopped(format!("stopped consuming: {reason}; {hint}"));
        self.stopped = true;
    }

    /// The partition's start as the broker sent it with its last fetch response, as
    /// librdkafka keeps it (no round trip; negative while unknown). The `rdkafka` crate
    /// does not wrap this call.
    fn fetched_start(&self, key: &Partition) -> Option<i64> {
        let topic = std::ffi::CString::new(key.0.as_str()).ok()?;
        let (mut start, mut end) = (-1_i64, -1_i64);
        // SAFETY: the client handle lives as long as `self.consumer`; `topic` is a
        // NUL-terminated string that outlives the call, which only reads it; `start` and
        // `end` are two i64s the call writes.
        let code = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                key.1,
                &mut start,
                &mut end,
            )
        };
        (code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then_some(start)
    }

    /// The partition's watermarks (start, end), from the broker: a round trip, counted.
    fn ask_watermarks(&self, key: &Partition) -> KafkaResult<(i64, i64)> {
        self.metrics.kafka_watermark_queries.inc();
        self.consumer.fetch_watermarks(&key.0, key.1, BROKER_CALL)
    }

    /// A partition's first message came after this consumer's position. Offsets may be
    /// missing for good reasons (a transaction's commit marker, compaction), but if the
    /// partition now starts past the position, the broker deleted messages this group
    /// never read (retention, or records deleted by an operator): Kafka answered the fetch
    /// out of range and the consumer went on from the partition's start. Those messages
    /// are lost to this service; it says so once, in the log and as a metric. The broker
    /// is asked for the partition's start only when the start it sent with the messages
    /// does not explain the gap: a transactional producer leaves one before each batch.
    fn report_loss(&mut self, key: Partition, position: i64, first: i64) {
        if self.losses_reported.get(&key) == Some(&position) {
            return;
        }
        // The partition's start as the broker sent it with the last messages fetched (no
        // round trip): a start at or before the position explains the gap, the usual case
        // of a transactional producer's markers. Past it, or unknown, the broker is asked.
        let start = match self.fetched_start(&key).filter(|start| (0..=position).contains(start)) {
            Some(start) => start,
            None => match self.ask_watermarks(&key) {
                Ok((low, _)) => low,
                Err(e) => {
                    warn!("event=watermarks_unavailable partition={}/{} error={e}", key.0, key.1);
                    return;
                }
            },
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
}

/// Why a fatal error stopped the consumer, and what to do about it. The likely ones:
/// another process with this instance's `kafka.instance_id` (under the classic protocol
/// it took this member's place, FENCED_INSTANCE_ID; under the consumer protocol this one
/// was refused while the other holds the id, UNRELEASED_INSTANCE_ID), and a broker that
/// does not speak the consumer protocol (UNSUPPORTED_VERSION, or librdkafka's
/// UNSUPPORTED_FEATURE when the broker lacks its API).
pub(super) fn fatal_reason(code: RDKafkaErrorCode) -> (String, &'static str) {
    const RESTART: &str = "give each instance its own kafka.instance_id, then restart this one";
    match code {
        RDKafkaErrorCode::FencedInstanceId => {
            ("another process joined the group with this kafka.instance_id and took this one's place".into(), RESTART)
        }
        RDKafkaErrorCode::UnreleasedInstanceId => {
            ("another process of the group holds this kafka.instance_id; this one was refused".into(), RESTART)
        }
        RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedFeature => (
            format!("the broker does not speak the consumer group protocol ({code})"),
            "it needs Apache Kafka 4.0 or later with the consumer protocol enabled; otherwise set \
             kafka.group_protocol = \"classic\" and restart",
        ),
        other => {
            (format!("librdkafka reported a fatal error ({other})"), "restart this instance; if it recurs, see its log")
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;

    fn offered(batch: &mut Collecting, partition: i32, offset: i64, position: Option<i64>) -> bool {
        let key = ("orders".to_string(), partition);
        let follows = batch.follows(&key, offset, position);
        if follows {
            batch.take(Message { topic: key.0, partition, offset, key: None, payload: Some(b"{}".to_vec()) });
        }
        follows
    }

    /// Only a partition's first message in a batch can show that the broker skipped
    /// past the position (retention): the ones after it follow that message, not the
    /// position the batch began at. Each partition found ahead costs a call to the
    /// broker before the batch is written.
    #[test]
    fn a_partition_is_ahead_only_if_its_first_message_in_the_batch_is() {
        let mut batch = Collecting::new(&config::Ingest::default(), 0);
        // Partition 0 at its position 5, then 6 and 7, the position still 5: in order.
        for offset in [5, 6, 7] {
            assert!(offered(&mut batch, 0, offset, Some(5)));
        }
        // Partition 1 starts at 12 where its position is 10: ahead, whatever follows.
        for offset in [12, 13] {
            assert!(offered(&mut batch, 1, offset, Some(10)));
        }
        // Partition 2 has no stored offset: anywhere goes.
        assert!(offered(&mut batch, 2, 40, None));
        // Partition 3 behind its position: left out.
        assert!(!offered(&mut batch, 3, 3, Some(4)));
        assert_eq!(batch.messages.len(), 6);
        assert_eq!(batch.bytes, 12);
        assert_eq!(batch.ahead, BTreeMap::from([(("orders".to_string(), 1), (10, 12))]));
        assert_eq!(batch.behind, BTreeMap::from([(("orders".to_string(), 3), 4)]));

        // Partition 0 revoked, then assigned again: its next message is a first again.
        let dropped = batch.take_revoked(&BTreeSet::from([("orders".to_string(), 0)]), 1);
        assert_eq!(dropped.iter().map(|m| m.offset).collect::<Vec<_>>(), [5, 6, 7]);
        assert!(offered(&mut batch, 0, 9, Some(8)));
        assert_eq!(batch.ahead.get(&("orders".to_string(), 0)), Some(&(8, 9)));
    }

    #[test]
    fn each_fatal_error_says_what_to_do() {
        assert_eq!(
            fatal_reason(RDKafkaErrorCode::FencedInstanceId),
            (
                "another process joined the group with this kafka.instance_id and took this one's place".to_string(),
                "give each instance its own kafka.instance_id, then restart this one"
            )
        );
        assert_eq!(
            fatal_reason(RDKafkaErrorCode::UnreleasedInstanceId).1,
            "give each instance its own kafka.instance_id, then restart this one"
        );
        let (reason, hint) = fatal_reason(RDKafkaErrorCode::UnsupportedVersion);
        assert_eq!(
            reason,
            "the broker does not speak the consumer group protocol (UnsupportedVersion (Broker: API version not supported))"
        );
        assert_eq!(
            hint,
            "it needs Apache Kafka 4.0 or later with the consumer protocol enabled; otherwise set \
             kafka.group_protocol = \"classic\" and restart"
        );
        assert_eq!(fatal_reason(RDKafkaErrorCode::UnsupportedFeature).1, hint);
        assert_eq!(
            fatal_reason(RDKafkaErrorCode::InvalidRequest),
            (
                "librdkafka reported a fatal error (InvalidRequest (Broker: Invalid request))".to_string(),
                "restart this instance; if it recurs, see its log"
            )
        );
    }
}
