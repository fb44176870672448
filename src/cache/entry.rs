//! The value the cache holds and serves: an order's JSON, serialized once, with its ETag.

use std::sync::Arc;

use crate::model::{Encoded, StoredOrder, VERSION_BYTES, push_version};

/// An order as the HTTP side sends it.
#[derive(Debug)]
pub struct CachedOrder {
    /// Shared with the cache's map, whose key it is.
    pub uid: Arc<str>,
    pub json: Arc<[u8]>,
    /// A strong validator: changes exactly when the JSON does.
    pub etag: String,
}

impl CachedOrder {
    pub fn new(encoded: &Encoded) -> CachedOrder {
        CachedOrder {
            uid: encoded.order.order_uid.as_str().into(),
            json: encoded.json.clone(),
            etag: etag(&encoded.sha256),
        }
    }

    /// An order as read from PostgreSQL (at start, or on a miss): its version named by the
    /// digest stored with it (which is its JSON's).
    pub fn stored(stored: StoredOrder) -> CachedOrder {
        CachedOrder { uid: stored.uid.into(), json: stored.json, etag: etag(&stored.sha256) }
    }

    /// `stored` from the parts of a stored order, the id and digest borrowed.
    pub fn from_parts(uid: &str, json: Arc<[u8]>, sha256: &[u8]) -> CachedOrder {
        CachedOrder { uid: uid.into(), json, etag: etag(sha256) }
    }

    /// The version this is (`model::version_of`): the ETag without its quotes.
    pub fn version(&self) -> &str {
        &self.etag[1..self.etag.len() - 1]
    }

    /// What an entry is charged against `max_bytes`: its JSON, its id (held once, as
    /// the map's key too) and validator, and a fixed allowance for the map entry and its
    /// bookkeeping.
    pub(super) fn size(&self) -> usize {
        const ENTRY_OVERHEAD: usize = 160;
        self.json.len() + self.uid.len() + self.etag.len() + ENTRY_OVERHEAD
    }
}

/// The ETag of the version whose digest is `sha256`: its version, quoted.
fn etag(sha256: &[u8]) -> String {
    let mut etag = String::with_capacity(2 * VERSION_BYTES + 2);
    etag.push('"');
    push_version(&mut etag, sha256);
    etag.push('"');
    etag
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
