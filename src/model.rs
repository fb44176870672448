//! The order as it travels on the topic and over HTTP: types, decoding, and the checks
//! that decide whether a message becomes an order or a dead letter. No IO here.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, UtcOffset};

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
    #[serde(with = "time::serde::rfc3339")]
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

/// A message as it came off the topic, with its position there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Why a message cannot become an order. `rule` is a stable name stored with the dead
/// letter; `detail` says what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub rule: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(rule: &'static str, detail: impl Into<String>) -> Self {
        Rejection { rule, detail: detail.into() }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// Longest `order_uid` accepted, on the topic and in URLs.
pub const MAX_UID_LEN: usize = 64;

/// Turns a message payload into an order, or says why it cannot be one.
pub fn decode(payload: Option<&[u8]>) -> Result<Order, Rejection> {
    let bytes = payload.ok_or_else(|| Rejection::new("empty", "message has no payload"))?;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::new("utf8", format!("payload is not UTF-8: {e}")))?;
    let mut order: Order =
        serde_json::from_str(text).map_err(|e| Rejection::new("json", e.to_string()))?;
    check_uid(&order.order_uid).map_err(|detail| Rejection::new("order_uid", detail))?;
    order.date_created = normalize_time(order.date_created);
    Ok(order)
}

/// Checks that `uid` can be an order id: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn check_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() {
        return Err("order_uid is empty".into());
    }
    if uid.len() > MAX_UID_LEN {
        return Err(format!("order_uid is {} characters, at most {MAX_UID_LEN} allowed", uid.len()));
    }
    if let Some(c) = uid.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!("order_uid has {c:?}; only A-Z, a-z, 0-9, '_' and '-' are allowed"));
    }
    Ok(())
}

/// PostgreSQL keeps timestamps in UTC to the microsecond. Holding the order in that form
/// from the start means the cache, the database and every reply agree.
fn normalize_time(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).expect("a truncated nanosecond is in range")
}

impl Order {
    /// The order's JSON as served over HTTP.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an order always serializes")
    }

    /// SHA-256 of the order's JSON: equal for equal content, so a redelivered message is
    /// recognised without comparing every column.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.to_json()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = include_str!("../demo/model.json");

    #[test]
    fn canonical_order_decodes_with_every_field() {
        let order = decode(Some(MODEL.as_bytes())).unwrap();
        assert_eq!(order.order_uid, "b563feb7b2b84b6test");
        assert_eq!(order.delivery.city, "Kiryat Mozkin");
        assert_eq!(order.payment.amount, 1817);
        assert_eq!(order.payment.payment_dt, 1637907727);
        assert_eq!(order.items.len(), 1);
        assert_eq!(order.items[0].chrt_id, 9934930);
        assert_eq!(order.items[0].sale, 30);
        assert_eq!(order.sm_id, 99);
        assert_eq!(order.date_created.unix_timestamp(), 1637907739);
    }

    #[test]
    fn canonical_order_serializes_back_to_the_same_json() {
        let order = decode(Some(MODEL.as_bytes())).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&order.to_json()).unwrap();
        let original: serde_json::Value = serde_json::from_str(MODEL).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn json_keys_keep_the_canonical_order() {
        let order = decode(Some(MODEL.as_bytes())).unwrap();
        let json = String::from_utf8(order.to_json()).unwrap();
        assert!(json.starts_with(r#"{"order_uid":"b563feb7b2b84b6test","track_number":"WBILMTESTTRACK","entry":"WBIL","delivery":{"name":"Test Testov""#), "{json}");
        assert!(json.ends_with(r#""sm_id":99,"date_created":"2021-11-26T06:22:19Z","oof_shard":"1"}"#), "{json}");
    }

    #[test]
    fn time_with_offset_is_held_in_utc() {
        let msg = MODEL.replace("2021-11-26T06:22:19Z", "2021-11-26T09:22:19.1234567+03:00");
        let order = decode(Some(msg.as_bytes())).unwrap();
        let json = String::from_utf8(order.to_json()).unwrap();
        assert!(json.contains(r#""date_created":"2021-11-26T06:22:19.123456Z""#), "{json}");
    }

    #[test]
    fn non_json_is_rejected_by_the_json_rule() {
        let err = decode(Some(b"hello")).unwrap_err();
        assert_eq!(err.rule, "json");
        assert_eq!(err.detail, "expected value at line 1 column 1");
    }

    #[test]
    fn missing_payload_and_invalid_utf8_have_their_own_rules() {
        assert_eq!(decode(None).unwrap_err().rule, "empty");
        assert_eq!(decode(Some(b"{\"a\":\"\xff\"}")).unwrap_err().rule, "utf8");
    }

    #[test]
    fn missing_field_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(MODEL).unwrap();
        v["payment"].as_object_mut().unwrap().remove("amount");
        let err = decode(Some(v.to_string().as_bytes())).unwrap_err();
        assert_eq!(err.rule, "json");
        assert!(err.detail.starts_with("missing field `amount`"), "{}", err.detail);
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = MODEL.replace("\"amount\": 1817", "\"amount\": \"1817\"");
        let err = decode(Some(msg.as_bytes())).unwrap_err();
        assert!(err.detail.starts_with("invalid type: string \"1817\", expected i64"), "{}", err.detail);
    }

    #[test]
    fn uid_rules() {
        assert_eq!(check_uid("b563feb7b2b84b6test"), Ok(()));
        assert_eq!(check_uid("a-B_9"), Ok(()));
        assert_eq!(check_uid(""), Err("order_uid is empty".to_string()));
        assert_eq!(check_uid(&"x".repeat(65)), Err("order_uid is 65 characters, at most 64 allowed".to_string()));
        assert_eq!(check_uid("a/b"), Err("order_uid has '/'; only A-Z, a-z, 0-9, '_' and '-' are allowed".to_string()));
        let bad_uid = MODEL.replace("\"order_uid\": \"b563feb7b2b84b6test\"", "\"order_uid\": \"<x>\"");
        assert_eq!(decode(Some(bad_uid.as_bytes())).unwrap_err().rule, "order_uid");
    }

    #[test]
    fn equal_orders_have_equal_fingerprints() {
        let a = decode(Some(MODEL.as_bytes())).unwrap();
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.payment.amount += 1;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
