//! The batches the consumer is writing, each of its orders with the last version a
//! notification named since: an order another writer committed meanwhile is not
//! published, since that writer's commit may be the later one. More than one batch can be
//! pending: one is published while the next is written.

use std::collections::HashMap;

/// One batch: its order ids, each with the last version notified since it began.
pub(super) struct Batch(HashMap<String, Option<String>>);

impl Batch {
    /// The batch of these ids, none notified yet.
    pub(super) fn new<'a>(uids: impl IntoIterator<Item = &'a str>) -> Batch {
        Batch(uids.into_iter().map(|uid| (uid.to_string(), None)).collect())
    }

    fn notified(&mut self, uid: &str, version: &str) {
        if let Some(last) = self.0.get_mut(uid) {
            *last = Some(version.to_string());
        }
    }

    /// Whether a notification since the batch began named `uid` at a version other than
    /// `version`, the one the consumer stored: another writer committed it.
    fn overtaken(&self, uid: &str, version: &str) -> bool {
        self.0.get(uid).is_some_and(|last| last.as_deref().is_some_and(|v| v != version))
    }
}

/// The batches begun and not yet published or given up, each by its number.
#[derive(Default)]
pub(super) struct Pending {
    batches: Vec<(u64, Batch)>,
    begun: u64,
}

impl Pending {
    /// Adds `batch`; returns its number.
    pub(super) fn add(&mut self, batch: Batch) -> u64 {
        self.begun += 1;
        self.batches.push((self.begun, batch));
        self.begun
    }

    /// A notification: `uid` is now stored at `version`.
    pub(super) fn notified(&mut self, uid: &str, version: &str) {
        for (_, batch) in &mut self.batches {
            batch.notified(uid, version);
        }
    }

    /// Whether batch `number`'s `uid` at `version` was overtaken (see `Batch::overtaken`).
    pub(super) fn overtaken(&self, number: u64, uid: &str, version: &str) -> bool {
        self.batches.iter().any(|(n, batch)| *n == number && batch.overtaken(uid, version))
    }

    /// Takes batch `number` out: notifications no longer concern it.
    pub(super) fn remove(&mut self, number: u64) -> Option<Batch> {
        let at = self.batches.iter().position(|(n, _)| *n == number)?;
        Some(self.batches.swap_remove(at).1)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.batches.len()
    }
}
