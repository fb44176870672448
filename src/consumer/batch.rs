//! A batch between collecting and writing: as collected (`Collected`), then decoded
//! (`Decoded`) by the `Decoder` thread, so that the consumer thread can write one batch
//! while the next is decoded.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::partitions::{Partition, holds};
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
/// while the next is decoded. It holds no offsets and no connection: it only turns
/// messages into orders and dead letters, and hands each batch back in turn.
pub struct Decoder {
    batches: Option<crossbeam_channel::Sender<Collected>>,
    decoded: crossbeam_channel::Receiver<Decoded>,
    spent: crossbeam_channel::Sender<Spent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A written batch's messages and orders, for the decoder thread to free. Freeing 20,000
/// orders took the consumer thread about 40 ms a batch, most of it in the allocator
/// giving back memory that the decoder thread had taken: done there, it no longer
/// holds up the next batch's write.
pub type Spent = (Vec<Message>, Vec<Encoded>);

impl Decoder {
    pub fn start(rules: Rules) -> Decoder {
        let (batches, to_decode) = crossbeam_channel::bounded::<Collected>(1);
        let (done, decoded) = crossbeam_channel::bounded(1);
        let (spent, to_free) = crossbeam_channel::unbounded::<Spent>();
        let thread = std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || {
                loop {
                    let batch = crossbeam_channel::select_biased! {
                        recv(to_free) -> spent => {
                            drop(spent);
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
        Decoder { batches: Some(batches), decoded, spent, thread: Some(thread) }
    }

    /// Hands a batch to the thread. Each is taken back with `next` before the next is given.
    pub fn decode(&self, batch: Collected) {
        self.batches.as_ref().expect("open until dropped").send(batch).expect("the decoder thread is running");
    }

    /// The batch given last, decoded.
    pub fn next(&self) -> Decoded {
        self.decoded.recv().expect("the decoder thread is running")
    }

    /// Where written batches go to be freed.
    pub fn spent(&self) -> crossbeam_channel::Sender<Spent> {
        self.spent.clone()
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
}
