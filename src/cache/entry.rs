//! The value the cache holds and serves: an order's JSON, serialized once, with its ETag.

use std::sync::Arc;

use crate::model::{Encoded, StoredOrder, VERSION_BYTES, version_digits};

/// An order as the HTTP side sends it.
#[derive(Debug)]
pub struct CachedOrder {
    /// Shared with the cache's map, whose key it is.
    pub uid: Arc<str>,
    pub json: Arc<[u8]>,
    /// A strong validator: changes exactly when the JSON does.
    pub etag: Etag,
}

impl CachedOrder {
    pub fn new(encoded: &Encoded) -> CachedOrder {
        CachedOrder {
            uid: encoded.order.order_uid.as_str().into(),
            json: encoded.json.clone(),
            etag: Etag::of(&encoded.sha256),
        }
    }

    /// An order as read from PostgreSQL (at start, or on a miss): its version named by the
    /// digest stored with it (which is its JSON's).
    pub fn stored(stored: StoredOrder) -> CachedOrder {
        CachedOrder::from_parts(&stored.uid, stored.json, &stored.sha256)
    }

    /// `stored` from the parts of a stored order, the id and digest borrowed.
    pub fn from_parts(uid: &str, json: Arc<[u8]>, sha256: &[u8]) -> CachedOrder {
        CachedOrder { uid: uid.into(), json, etag: Etag::of(sha256) }
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

/// An ETag: the version, quoted. Held in place, not allocated: one allocation fewer
/// for each order the cache holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Etag {
    bytes: [u8; 2 * VERSION_BYTES + 2],
    len: u8,
}

impl Etag {
    /// The ETag of the version whose digest is `sha256`.
    pub fn of(sha256: &[u8]) -> Etag {
        let mut bytes = [b'"'; 2 * VERSION_BYTES + 2];
        let mut len = 1;
        for digit in version_digits(sha256) {
            bytes[len] = digit;
            len += 1;
        }
        Etag { bytes, len: len as u8 + 1 }
    }
}

impl std::ops::Deref for Etag {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("hex digits and quotes")
    }
}

impl std::fmt::Debug for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
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

#[cfg(test)]
mod tests {
    use super::Etag;

    #[test]
    fn an_etag_is_the_version_quoted() {
        let sha256: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(17)).collect();
        assert_eq!(&*Etag::of(&sha256), "\"00112233445566778899aabb\"");
        assert_eq!(format!("{:?}", Etag::of(&sha256)), "\"\\\"00112233445566778899aabb\\\"\"");
        // A digest shorter than a version (never stored so) gives what it has.
        assert_eq!(&*Etag::of(&[0xab, 0xcd]), "\"abcd\"");
        assert_eq!(&*Etag::of(&[]), "\"\"");
    }
}
