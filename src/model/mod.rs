//! The order as it travels on the topic and over HTTP: types, decoding, and the checks
//! that decide whether a message becomes an order or a dead letter. No IO here.
//!
//! `decode` turns a payload into an order or a `Rejection` naming the `Rule` it breaks.

mod decode;
mod rule;
mod stored;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use decode::{MAX_TEXT_LEN, MAX_UID_LEN, Rules, check_uid, decode, validate};
pub use rule::Rule;
pub use stored::{Change, StoredOrder};

/// One order, field for field as in the canonical message. Serializing it gives back the
/// same JSON shape (and key order) the producer sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_uid: String,
    pub track_number: String,
    pub entry: String,
    pub delivery: Delivery,
    pub payment: Payment,
    pub items: Vec<Item>,
    pub locale: String,
    pub internal_signature: String,
    pub customer_id: String,
    pub delivery_service: String,
    pub shardkey: String,
    pub sm_id: i64,
    #[serde(serialize_with = "time::serde::rfc3339::serialize", deserialize_with = "decode::rfc3339")]
    pub date_created: OffsetDateTime,
    pub oof_shard: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub name: String,
    pub phone: String,
    pub zip: String,
    pub city: String,
    pub address: String,
    pub region: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub transaction: String,
    pub request_id: String,
    pub currency: String,
    pub provider: String,
    pub amount: i64,
    pub payment_dt: i64,
    pub bank: String,
    pub delivery_cost: i64,
    pub goods_total: i64,
    pub custom_fee: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub chrt_id: i64,
    pub track_number: String,
    pub price: i64,
    pub rid: String,
    pub name: String,
    pub sale: i32,
    pub size: String,
    pub total_price: i64,
    pub nm_id: i64,
    pub brand: String,
    pub status: i32,
}

/// A line in the list of recent orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSummary {
    pub order_uid: String,
    pub date_created: OffsetDateTime,
    pub amount: i64,
    pub currency: String,
    pub items: i64,
    pub ingested_at: OffsetDateTime,
}

/// A message as it came off the topic, with its position there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Why a message cannot become an order: the rule it breaks, stored with the dead
/// letter, and `detail`, which says what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub rule: Rule,
    pub detail: String,
}

impl Rejection {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Rejection { rule, detail: detail.into() }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// An order with its canonical JSON and that JSON's SHA-256, computed once: the store
/// keeps the digest to recognise redeliveries, the cache serves the JSON and derives its
/// ETag from the digest.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub order: Order,
    pub json: std::sync::Arc<[u8]>,
    pub sha256: [u8; 32],
}

/// How many bytes of the digest name a version: the ETag, and the change notifications
/// between instances.
pub const VERSION_BYTES: usize = 12;

/// An order's version as text: the first `VERSION_BYTES` of its JSON's SHA-256, in hex.
pub fn version_of(sha256: &[u8]) -> String {
    let mut hex = String::with_capacity(2 * VERSION_BYTES);
    push_version(&mut hex, sha256);
    hex
}

/// Appends `version_of(sha256)` to `out`.
pub fn push_version(out: &mut String, sha256: &[u8]) {
    out.extend(version_digits(sha256).map(char::from));
}

/// The hex digits of `version_of(sha256)`.
pub fn version_digits(sha256: &[u8]) -> impl Iterator<Item = u8> + '_ {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    sha256[..VERSION_BYTES.min(sha256.len())]
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
}

impl Encoded {
    /// This version's name: see `version_of`.
    pub fn version(&self) -> String {
        version_of(&self.sha256)
    }
}

impl Order {
    /// The order's JSON as served over HTTP.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an order always serializes")
    }

    /// The order encoded once for storing and serving.
    pub fn encode(self) -> Encoded {
        let json: std::sync::Arc<[u8]> = self.to_json().into();
        let sha256 = Sha256::digest(&json).into();
        Encoded { order: self, json, sha256 }
    }
}
