//! The value the cache holds and serves: an order's JSON, serialized once, with its ETag.

use std::sync::Arc;

use crate::model::{Encoded, StoredOrder, version_of};

/// An order as the HTTP side sends it.
#[derive(Debug)]
pub struct CachedOrder {
    pub uid: String,
    pub json: Arc<[u8]>,
    /// A strong validator: changes exactly when the JSON does.
    pub etag: String,
}

impl CachedOrder {
    pub fn new(encoded: &Encoded) -> CachedOrder {
        let etag = format!("\"{}\"", encoded.version());
        CachedOrder { uid: encoded.order.order_uid.clone(), json: encoded.json.clone(), etag }
    }

    /// An order as read from PostgreSQL (at start, or on a miss): its version named by the
    /// digest stored with it (which is its JSON's).
    pub fn stored(stored: StoredOrder) -> CachedOrder {
        let etag = format!("\"{}\"", version_of(&stored.sha256));
        CachedOrder { uid: stored.uid, json: stored.json, etag }
    }

    /// The version this is (`model::version_of`): the ETag without its quotes.
    pub fn version(&self) -> &str {
        &self.etag[1..self.etag.len() - 1]
    }

    /// What an entry is charged against `max_bytes`: its JSON, its key and validator,
    /// and a fixed allowance for the map entry and its bookkeeping.
    pub(super) fn size(&self) -> usize {
        const ENTRY_OVERHEAD: usize = 160;
        self.json.len() + 2 * self.uid.len() + self.etag.len() + ENTRY_OVERHEAD
    }
}

/// An order as found: `stale` when it is a cached copy served only because the database
/// could not be read while notifications may have been missed.
#[derive(Debug, Clone)]
pub struct Found {
    pub order: Arc<CachedOrder>,
    pub stale: bool,
}

impl std::ops::Deref for Found {
    type Target = CachedOrder;
    fn deref(&self) -> &CachedOrder {
        &self.order
    }
}
