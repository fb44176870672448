//! A batch between collecting and writing: as collected (`Collected`), then decoded
//! (`Decoded`) by the `Decoder` thread, so that the consumer thread can write one batch
//! while the next is decoded; once committed (`Committed`), published to the cache and
//! freed by that same thread.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::partitions::{Partition, holds};
use crate::cache::{Cache, Writing};
use crate::metrics::Metrics;
use crate::model::{self, Encoded, Message, Rules};
use crate::store::DeadLetter;

/// A batch as collected.
pub struct Collected {
    pub messages: Vec<Message>,
    /// `Partitions::generation` when it was collected.
    pub generation: u64,
    /// It ended full rather than by its wait: more messages are likely waiting.
    pub full: bool,
}

/// A batch collected and decoded, not yet written.
pub struct Decoded {
    pub messages: Vec<Message>,
    /// The orders, each with the index of its message.
    pub orders: Vec<(usize, Encoded)>,
    pub dead: Vec<DeadLetter>,
    pub generation: u64,
    pub full: bool,
    pub decode_took: Duration,
}

impl Decoded {
    /// Takes out the messages of `partitions`, with their orders and dead letters, and
    /// returns those messages; the rest keep their order.
    pub fn take_partitions(&mut self, partitions: &BTreeSet<Partition>) -> Vec<Message> {
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
    pub fn ends(&self) -> HashMap<Partition, i64> {
        let mut ends = HashMap::new();
        for m in &self.messages {
            let end = ends.entry((m.topic.clone(), m.partition)).or_insert(0);
            *end = (*end).max(m.offset + 1);
        }
        ends
    }
}

/// The thread that decodes batches, so that the consumer thread can write one batch
/// while the next is decoded, and publishes the committed ones. It holds no offsets and
/// no connection: it only turns messages into orders and dead letters, hands each batch
/// back in turn, and takes committed batches to the cache, in the order they come,
/// before any batch still to decode.
pub struct Decoder {
    batches: Option<crossbeam_channel::Sender<Collected>>,
    decoded: crossbeam_channel::Receiver<Decoded>,
    publisher: Publisher,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where committed batches go to be published and freed: see `Publisher::publish`.
#[derive(Clone)]
pub struct Publisher {
    to_publish: crossbeam_channel::Sender<Committed>,
    /// Batches handed over and not yet published.
    unpublished: Arc<AtomicUsize>,
}

impl Publisher {
    /// Publishes a committed batch. A full one (more are likely waiting) goes to the
    /// decoder thread, so that this thread can go on with the next write at once. One
    /// that ended by its wait (a quiet topic, whose readers wait for it) is published
    /// here, unless a batch handed over before it is still unpublished: it then goes to
    /// the decoder thread too, behind that one. Batches are so published in the order
    /// they were committed. If the decoder thread is gone, it is published here.
    pub fn publish(&self, committed: Committed, full: bool, cache: &Cache, metrics: &Metrics) {
        if !full && self.unpublished.load(Ordering::Acquire) == 0 {
            return committed.publish(cache, metrics);
        }
        self.unpublished.fetch_add(1, Ordering::AcqRel);
        if let Err(unsent) = self.to_publish.send(committed) {
            self.unpublished.fetch_sub(1, Ordering::AcqRel);
            unsent.into_inner().publish(cache, metrics);
        }
    }
}

/// A batch committed in PostgreSQL, to be published to the cache and then freed, by the
/// decoder thread when it is full: on the consumer thread, publishing 20,000 orders took
/// 17-73 ms a batch and freeing them about 40 ms (most of it in the allocator giving back
/// memory that the decoder thread had taken), while PostgreSQL waited for the next write.
pub struct Committed {
    pub messages: Vec<Message>,
    pub orders: Vec<Encoded>,
    /// Which of `orders` were stored: the others were older than PostgreSQL's.
    pub stored: Vec<usize>,
    pub batch: Writing,
}

impl Committed {
    /// Publishes the stored orders, and frees the batch.
    pub fn publish(self, cache: &Cache, metrics: &Metrics) {
        let started = Instant::now();
        let Committed { messages, orders, stored, batch } = self;
        cache.publish(batch, stored.iter().map(|&i| &orders[i]));
        metrics.batch_seconds.with_label_values(&["publish"]).observe(started.elapsed().as_secs_f64());
        drop((messages, orders));
    }
}

impl Decoder {
    pub fn start(rules: Rules, cache: Arc<Cache>, metrics: Arc<Metrics>) -> Decoder {
        let (batches, to_decode) = crossbeam_channel::bounded::<Collected>(1);
        let (done, decoded) = crossbeam_channel::bounded(1);
        let (to_publish, published) = crossbeam_channel::unbounded::<Committed>();
        let publisher = Publisher { to_publish, unpublished: Arc::new(AtomicUsize::new(0)) };
        let unpublished = publisher.unpublished.clone();
        let thread = std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || {
                loop {
                    // Committed batches first: they are what readers wait for. When the
                    // consumer is done, those it handed over before are published too.
                    let batch = crossbeam_channel::select_biased! {
                        recv(published) -> committed => {
                            if let Ok(committed) = committed {
                                committed.publish(&cache, &metrics);
                                unpublished.fetch_sub(1, Ordering::AcqRel);
                            }
                            continue;
                        }
                        recv(to_decode) -> batch => match batch {
                            Ok(batch) => batch,
                            Err(_) => return,
                        },
                    };
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
        Decoder { batches: Some(batches), decoded, publisher, thread: Some(thread) }
    }

    /// Hands a batch to the thread. Each is taken back with `next` before the next is given.
    pub fn decode(&self, batch: Collected) {
        self.batches.as_ref().expect("open until dropped").send(batch).expect("the decoder thread is running");
    }

    /// The batch given last, decoded.
    pub fn next(&self) -> Decoded {
        self.decoded.recv().expect("the decoder thread is running")
    }

    /// Where committed batches go to be published and freed.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64, payload: &[u8]) -> Message {
        Message { topic: "t".into(), partition, offset, key: None, payload: Some(payload.to_vec()) }
    }

    fn order(uid: &str) -> Vec<u8> {
        let model = include_str!("../../demo/model.json");
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

    /// A batch that ended by its wait is published at once, here, unless one handed over
    /// before it is still unpublished; then it goes behind that one, and the two are
    /// published in the order they were committed.
    #[test]
    fn a_quiet_batch_is_published_in_place_only_with_none_handed_over_before_it() {
        let cache = Cache::new(crate::cache::tests::limits());
        let metrics = Metrics::new(&cache);
        let (to_publish, handed_over) = crossbeam_channel::unbounded();
        let publisher = Publisher { to_publish, unpublished: Arc::new(AtomicUsize::new(0)) };
        let committed = |uid: &str| {
            let encoded = model::decode(Some(&order(uid)), &Rules::default()).unwrap().encode();
            Committed { messages: Vec::new(), orders: vec![encoded], stored: vec![0], batch: cache.writing([uid]) }
        };
        publisher.publish(committed("quiet"), false, &cache, &metrics);
        assert!(cache.contains("quiet"));
        assert!(handed_over.is_empty());

        publisher.publish(committed("full"), true, &cache, &metrics);
        publisher.publish(committed("after"), false, &cache, &metrics);
        assert!(!cache.contains("full") && !cache.contains("after"));
        let queued: Vec<Committed> = handed_over.try_iter().collect();
        let uids: Vec<&str> = queued.iter().map(|c| c.orders[0].order.order_uid.as_str()).collect();
        assert_eq!(uids, ["full", "after"]);
        // As the decoder thread does.
        for committed in queued {
            committed.publish(&cache, &metrics);
            publisher.unpublished.fetch_sub(1, Ordering::AcqRel);
        }
        assert!(cache.contains("full") && cache.contains("after"));

        publisher.publish(committed("quiet2"), false, &cache, &metrics);
        assert!(cache.contains("quiet2"));
        assert!(handed_over.is_empty());
    }
}
