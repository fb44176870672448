//! The orders of the batch the consumer is writing, each with the last version a
//! notification named since: an order another writer committed meanwhile is not
//! published, since that writer's commit may be the later one.

use std::collections::HashMap;

/// The batch being written: its order ids, each with the last version notified since
/// `Cache::writing`.
#[derive(Default)]
pub(super) struct Pending(HashMap<String, Option<String>>);

impl Pending {
    /// The batch of these ids, none notified yet.
    pub(super) fn new<'a>(uids: impl IntoIterator<Item = &'a str>) -> Pending {
        Pending(uids.into_iter().map(|uid| (uid.to_string(), None)).collect())
    }

    /// A notification: `uid` is now stored at `version`.
    pub(super) fn notified(&mut self, uid: &str, version: &str) {
        if let Some(last) = self.0.get_mut(uid) {
            *last = Some(version.to_string());
        }
    }

    /// Whether a notification since the batch began named `uid` at a version other than
    /// `version`, the one the consumer stored: another writer committed it.
    pub(super) fn overtaken(&self, uid: &str, version: &str) -> bool {
        self.0.get(uid).is_some_and(|last| last.as_deref().is_some_and(|v| v != version))
    }
}
