//! What the store hands the cache: an order as stored, and a change another instance
//! announced.

use std::sync::Arc;

/// An order as read: its id, its JSON (the bytes `Order::to_json` gives for it), the
/// SHA-256 of that JSON as stored, and when it was stored, in microseconds since 2000
/// (PostgreSQL's own count), which orders only.
#[derive(Clone)]
pub struct StoredOrder {
    pub uid: String,
    pub json: Arc<[u8]>,
    pub sha256: Vec<u8>,
    pub stored_at: i64,
}

/// One order named by a notification: its id and the version now stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub uid: String,
    pub version: String,
}
