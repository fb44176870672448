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
    #[serde(serialize_with = "time::serde::rfc3339::serialize", deserialize_with = "rfc3339")]
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

/// Longest `order_uid` accepted, on the topic and in URLs.
pub const MAX_UID_LEN: usize = 64;

/// A rule a message can break, named in the dead letter's `rule` column and in the
/// `rule` label of `orders_messages_rejected_total`: so `as_str` must never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Size,
    Empty,
    Utf8,
    Json,
    Schema,
    DateCreated,
    OrderUid,
    TextLength,
    TextNul,
    Currency,
    Items,
    Sale,
    Money,
    Positive,
    PaymentTransaction,
    ItemTrackNumber,
    GoodsTotal,
    Amount,
    Database,
}

impl Rule {
    /// Every rule, in the order `decode` checks them (`Database` is the store's: the
    /// database refused the order's rows).
    pub const ALL: [Rule; 19] = [
        Rule::Size,
        Rule::Empty,
        Rule::Utf8,
        Rule::Json,
        Rule::Schema,
        Rule::DateCreated,
        Rule::OrderUid,
        Rule::TextLength,
        Rule::TextNul,
        Rule::Currency,
        Rule::Items,
        Rule::Sale,
        Rule::Money,
        Rule::Positive,
        Rule::PaymentTransaction,
        Rule::ItemTrackNumber,
        Rule::GoodsTotal,
        Rule::Amount,
        Rule::Database,
    ];

    /// The stable name stored and counted.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Size => "size",
            Rule::Empty => "empty",
            Rule::Utf8 => "utf8",
            Rule::Json => "json",
            Rule::Schema => "schema",
            Rule::DateCreated => "date_created",
            Rule::OrderUid => "order_uid",
            Rule::TextLength => "text_length",
            Rule::TextNul => "text_nul",
            Rule::Currency => "currency",
            Rule::Items => "items",
            Rule::Sale => "sale",
            Rule::Money => "money",
            Rule::Positive => "positive",
            Rule::PaymentTransaction => "payment_transaction",
            Rule::ItemTrackNumber => "item_track_number",
            Rule::GoodsTotal => "goods_total",
            Rule::Amount => "amount",
            Rule::Database => "database",
        }
    }

    /// The rule of a stored name, or None for a name this version does not know.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`, so that width and alignment apply (`{:<20}`).
        f.pad(self.as_str())
    }
}

/// Longest value of any other text field, in characters.
pub const MAX_TEXT_LEN: usize = 255;

/// The checks a message must pass, as configured. The cross-field rules are on by
/// default and can each be switched off: producers in the wild differ.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Larger messages are rejected by the `size` rule without being parsed.
    pub max_message_bytes: usize,
    /// `payment.transaction == order_uid`
    pub payment_transaction: bool,
    /// every `item.track_number == track_number`
    pub item_track_number: bool,
    /// `payment.goods_total == Σ item.total_price`
    pub goods_total: bool,
    /// `payment.amount == goods_total + delivery_cost + custom_fee`
    pub amount: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_message_bytes: 1 << 20,
            payment_transaction: true,
            item_track_number: true,
            goods_total: true,
            amount: true,
        }
    }
}

/// The start of the error `date_created` gives when it is not a time; `decode` files
/// such errors under their own rule.
const BAD_TIME: &str = "date_created is not an RFC 3339 time";

fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| serde::de::Error::custom(format!("{BAD_TIME}: {e}")))
}

/// Turns a message payload into an order, or says which rule it breaks. The rules are
/// checked in the order the README lists them; the first broken one is reported.
pub fn decode(payload: Option<&[u8]>, rules: &Rules) -> Result<Order, Rejection> {
    let bytes = payload.unwrap_or_default();
    if bytes.len() > rules.max_message_bytes {
        return Err(Rejection::new(
            Rule::Size,
            format!("message is {} bytes, more than the {} allowed", bytes.len(), rules.max_message_bytes),
        ));
    }
    if bytes.is_empty() {
        return Err(Rejection::new(Rule::Empty, "message has no payload"));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| Rejection::new(Rule::Utf8, format!("payload is not UTF-8: {e}")))?;
    let mut order: Order = serde_json::from_str(text).map_err(|e| {
        let detail = e.to_string();
        let rule = match e.classify() {
            serde_json::error::Category::Data if detail.starts_with(BAD_TIME) => Rule::DateCreated,
            serde_json::error::Category::Data => Rule::Schema,
            // Valid JSON (RFC 8259 sets no range), but no number type here holds it.
            serde_json::error::Category::Syntax if detail.starts_with("number out of range") => Rule::Schema,
            _ => Rule::Json,
        };
        Rejection::new(rule, detail)
    })?;
    validate(&order, rules)?;
    order.date_created = normalize_time(order.date_created);
    Ok(order)
}

/// The field checks and the cross-field rules, on an order that has every field.
pub fn validate(o: &Order, rules: &Rules) -> Result<(), Rejection> {
    check_uid(&o.order_uid).map_err(|detail| Rejection::new(Rule::OrderUid, detail))?;
    // Field names are formatted only for the message of a broken rule: valid orders,
    // the common case, allocate nothing here.
    let d = &o.delivery;
    let p = &o.payment;
    let top: [(&str, &str); 20] = [
        ("track_number", &o.track_number),
        ("entry", &o.entry),
        ("locale", &o.locale),
        ("internal_signature", &o.internal_signature),
        ("customer_id", &o.customer_id),
        ("delivery_service", &o.delivery_service),
        ("shardkey", &o.shardkey),
        ("oof_shard", &o.oof_shard),
        ("delivery.name", &d.name),
        ("delivery.phone", &d.phone),
        ("delivery.zip", &d.zip),
        ("delivery.city", &d.city),
        ("delivery.address", &d.address),
        ("delivery.region", &d.region),
        ("delivery.email", &d.email),
        ("payment.transaction", &p.transaction),
        ("payment.request_id", &p.request_id),
        ("payment.currency", &p.currency),
        ("payment.provider", &p.provider),
        ("payment.bank", &p.bank),
    ];
    for (field, value) in top {
        check_text(value, || field.to_string())?;
    }
    for (n, i) in o.items.iter().enumerate() {
        for (k, v) in [
            ("track_number", &i.track_number),
            ("rid", &i.rid),
            ("name", &i.name),
            ("size", &i.size),
            ("brand", &i.brand),
        ] {
            check_text(v, || format!("items[{n}].{k}"))?;
        }
    }
    if !(p.currency.len() == 3 && p.currency.bytes().all(|b| b.is_ascii_alphabetic())) {
        return Err(Rejection::new(
            Rule::Currency,
            format!("payment.currency is {:?}, expected three letters", p.currency),
        ));
    }
    if o.items.is_empty() {
        return Err(Rejection::new(Rule::Items, "the order has no items"));
    }
    if let Some((n, i)) = o.items.iter().enumerate().find(|(_, i)| !(0..=100).contains(&i.sale)) {
        return Err(Rejection::new(Rule::Sale, format!("items[{n}].sale is {}, expected 0 to 100", i.sale)));
    }
    let negative = |field: String, value: i64| {
        Rejection::new(Rule::Money, format!("{field} is {value}, money cannot be negative"))
    };
    let payment_money = [
        ("payment.amount", p.amount),
        ("payment.delivery_cost", p.delivery_cost),
        ("payment.goods_total", p.goods_total),
        ("payment.custom_fee", p.custom_fee),
    ];
    if let Some((field, value)) = payment_money.into_iter().find(|(_, v)| *v < 0) {
        return Err(negative(field.to_string(), value));
    }
    for (n, i) in o.items.iter().enumerate() {
        if let Some((k, v)) = [("price", i.price), ("total_price", i.total_price)].into_iter().find(|(_, v)| *v < 0) {
            return Err(negative(format!("items[{n}].{k}"), v));
        }
    }
    let not_positive = |field: String, value: i64| {
        Rejection::new(Rule::Positive, format!("{field} is {value}, expected a number greater than 0"))
    };
    if let Some((field, value)) =
        [("sm_id", o.sm_id), ("payment.payment_dt", p.payment_dt)].into_iter().find(|(_, v)| *v <= 0)
    {
        return Err(not_positive(field.to_string(), value));
    }
    for (n, i) in o.items.iter().enumerate() {
        let ids = [("chrt_id", i.chrt_id), ("nm_id", i.nm_id), ("status", i64::from(i.status))];
        if let Some((k, v)) = ids.into_iter().find(|(_, v)| *v <= 0) {
            return Err(not_positive(format!("items[{n}].{k}"), v));
        }
    }

    if rules.payment_transaction && p.transaction != o.order_uid {
        return Err(Rejection::new(
            Rule::PaymentTransaction,
            format!("payment.transaction is {:?}, expected the order_uid {:?}", p.transaction, o.order_uid),
        ));
    }
    if rules.item_track_number {
        if let Some((n, i)) = o.items.iter().enumerate().find(|(_, i)| i.track_number != o.track_number) {
            return Err(Rejection::new(
                Rule::ItemTrackNumber,
                format!("items[{n}].track_number is {:?}, expected the order's {:?}", i.track_number, o.track_number),
            ));
        }
    }
    // Every amount is non-negative by now, so a sum can only overflow upwards.
    let goods = o.items.iter().try_fold(0i64, |sum, i| sum.checked_add(i.total_price));
    if rules.goods_total && goods != Some(p.goods_total) {
        return Err(Rejection::new(
            Rule::GoodsTotal,
            format!("payment.goods_total is {}, the items' total_price add up to {}", p.goods_total, show_sum(goods)),
        ));
    }
    let expected = p.goods_total.checked_add(p.delivery_cost).and_then(|s| s.checked_add(p.custom_fee));
    if rules.amount && expected != Some(p.amount) {
        return Err(Rejection::new(
            Rule::Amount,
            format!(
                "payment.amount is {}, goods_total + delivery_cost + custom_fee is {}",
                p.amount,
                show_sum(expected)
            ),
        ));
    }
    Ok(())
}

fn show_sum(sum: Option<i64>) -> String {
    sum.map_or_else(|| "more than a 64-bit integer holds".to_string(), |s| s.to_string())
}

/// The length and NUL rules for one text field; `field` names it in the message.
fn check_text(value: &str, field: impl FnOnce() -> String) -> Result<(), Rejection> {
    // A string of at most MAX_TEXT_LEN bytes has at most that many characters.
    if value.len() > MAX_TEXT_LEN {
        let chars = value.chars().count();
        if chars > MAX_TEXT_LEN {
            return Err(Rejection::new(
                Rule::TextLength,
                format!("{} is {chars} characters, at most {MAX_TEXT_LEN} allowed", field()),
            ));
        }
    }
    if value.contains('\0') {
        return Err(Rejection::new(Rule::TextNul, format!("{} contains a NUL character", field())));
    }
    Ok(())
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

/// An order with its canonical JSON and that JSON's SHA-256, computed once: the store
/// keeps the digest to recognise redeliveries, the cache serves the JSON and derives its
/// ETag from the digest.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub order: Order,
    pub json: std::sync::Arc<[u8]>,
    pub sha256: [u8; 32],
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

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = include_str!("../demo/model.json");

    #[test]
    fn canonical_order_decodes_with_every_field() {
        let order = decode(Some(MODEL.as_bytes()), &Rules::default()).unwrap();
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
        let order = decode(Some(MODEL.as_bytes()), &Rules::default()).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&order.to_json()).unwrap();
        let original: serde_json::Value = serde_json::from_str(MODEL).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn json_keys_keep_the_canonical_order() {
        let order = decode(Some(MODEL.as_bytes()), &Rules::default()).unwrap();
        let json = String::from_utf8(order.to_json()).unwrap();
        assert!(json.starts_with(r#"{"order_uid":"b563feb7b2b84b6test","track_number":"WBILMTESTTRACK","entry":"WBIL","delivery":{"name":"Test Testov""#), "{json}");
        assert!(json.ends_with(r#""sm_id":99,"date_created":"2021-11-26T06:22:19Z","oof_shard":"1"}"#), "{json}");
    }

    #[test]
    fn time_with_offset_is_held_in_utc() {
        let msg = MODEL.replace("2021-11-26T06:22:19Z", "2021-11-26T09:22:19.1234567+03:00");
        let order = decode(Some(msg.as_bytes()), &Rules::default()).unwrap();
        let json = String::from_utf8(order.to_json()).unwrap();
        assert!(json.contains(r#""date_created":"2021-11-26T06:22:19.123456Z""#), "{json}");
    }

    #[test]
    fn non_json_is_rejected_by_the_json_rule() {
        let err = decode(Some(b"hello"), &Rules::default()).unwrap_err();
        assert_eq!(err.rule, Rule::Json);
        assert_eq!(err.detail, "expected value at line 1 column 1");
    }

    #[test]
    fn missing_payload_and_invalid_utf8_have_their_own_rules() {
        assert_eq!(decode(None, &Rules::default()).unwrap_err().rule, Rule::Empty);
        assert_eq!(decode(Some(b"{\"a\":\"\xff\"}"), &Rules::default()).unwrap_err().rule, Rule::Utf8);
    }

    #[test]
    fn missing_field_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(MODEL).unwrap();
        v["payment"].as_object_mut().unwrap().remove("amount");
        let err = decode(Some(v.to_string().as_bytes()), &Rules::default()).unwrap_err();
        assert_eq!(err.rule, Rule::Schema);
        assert!(err.detail.starts_with("missing field `amount`"), "{}", err.detail);
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = MODEL.replace("\"amount\": 1817", "\"amount\": \"1817\"");
        let err = decode(Some(msg.as_bytes()), &Rules::default()).unwrap_err();
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
        assert_eq!(decode(Some(bad_uid.as_bytes()), &Rules::default()).unwrap_err().rule, Rule::OrderUid);
    }

    #[test]
    fn equal_orders_have_equal_digests() {
        let a = decode(Some(MODEL.as_bytes()), &Rules::default()).unwrap();
        let mut b = a.clone();
        assert_eq!(a.clone().encode().sha256, b.clone().encode().sha256);
        b.payment.amount += 1;
        assert_ne!(a.encode().sha256, b.encode().sha256);
    }

    /// The canonical order with `change` applied to its JSON, decoded with `rules`.
    fn decode_changed(change: impl FnOnce(&mut serde_json::Value), rules: &Rules) -> Result<Order, Rejection> {
        let mut v: serde_json::Value = serde_json::from_str(MODEL).unwrap();
        change(&mut v);
        decode(Some(v.to_string().as_bytes()), rules)
    }

    fn rejected(change: impl FnOnce(&mut serde_json::Value)) -> (String, String) {
        let r = decode_changed(change, &Rules::default()).unwrap_err();
        (r.rule.to_string(), r.detail)
    }

    fn pair(rule: &str, detail: &str) -> (String, String) {
        (rule.to_string(), detail.to_string())
    }

    #[test]
    fn each_field_rule_names_the_field() {
        use serde_json::json;
        assert_eq!(rejected(|v| v["date_created"] = json!("yesterday")).0, "date_created");
        assert_eq!(rejected(|v| v["date_created"] = json!("2021-02-30T00:00:00Z")).0, "date_created");
        assert_eq!(
            rejected(|v| v["delivery"]["city"] = json!("x".repeat(256))),
            pair("text_length", "delivery.city is 256 characters, at most 255 allowed")
        );
        assert_eq!(
            rejected(|v| v["items"][0]["brand"] = json!("a\u{0}b")),
            pair("text_nul", "items[0].brand contains a NUL character")
        );
        assert_eq!(
            rejected(|v| v["payment"]["currency"] = json!("US")),
            pair("currency", "payment.currency is \"US\", expected three letters")
        );
        assert_eq!(rejected(|v| v["items"] = json!([])), pair("items", "the order has no items"));
        assert_eq!(
            rejected(|v| v["payment"]["custom_fee"] = json!(-1)),
            pair("money", "payment.custom_fee is -1, money cannot be negative")
        );
        assert_eq!(
            rejected(|v| v["items"][0]["price"] = json!(-453)),
            pair("money", "items[0].price is -453, money cannot be negative")
        );
        assert_eq!(
            rejected(|v| v["items"][0]["sale"] = json!(101)),
            pair("sale", "items[0].sale is 101, expected 0 to 100")
        );
        assert_eq!(
            rejected(|v| v["items"][0]["status"] = json!(0)),
            pair("positive", "items[0].status is 0, expected a number greater than 0")
        );
        assert_eq!(
            rejected(|v| v["sm_id"] = json!(-5)),
            pair("positive", "sm_id is -5, expected a number greater than 0")
        );
    }

    #[test]
    fn each_cross_field_rule_has_its_name() {
        use serde_json::json;
        assert_eq!(
            rejected(|v| v["payment"]["transaction"] = json!("other")),
            pair(
                "payment_transaction",
                "payment.transaction is \"other\", expected the order_uid \"b563feb7b2b84b6test\""
            )
        );
        assert_eq!(
            rejected(|v| v["items"][0]["track_number"] = json!("OTHER")),
            pair("item_track_number", "items[0].track_number is \"OTHER\", expected the order's \"WBILMTESTTRACK\"")
        );
        assert_eq!(
            rejected(|v| v["payment"]["goods_total"] = json!(318)),
            pair("goods_total", "payment.goods_total is 318, the items' total_price add up to 317")
        );
        assert_eq!(
            rejected(|v| v["payment"]["amount"] = json!(1816)),
            pair("amount", "payment.amount is 1816, goods_total + delivery_cost + custom_fee is 1817")
        );
        assert_eq!(
            rejected(|v| {
                v["payment"]["amount"] = json!(i64::MAX);
                v["payment"]["delivery_cost"] = json!(i64::MAX);
            }),
            pair(
                "amount",
                "payment.amount is 9223372036854775807, goods_total + delivery_cost + custom_fee is more than a 64-bit integer holds"
            )
        );
    }

    #[test]
    fn cross_field_rules_can_each_be_switched_off() {
        use serde_json::json;
        let off = Rules {
            payment_transaction: false,
            item_track_number: false,
            goods_total: false,
            amount: false,
            ..Rules::default()
        };
        let order = decode_changed(
            |v| {
                v["payment"]["transaction"] = json!("other");
                v["items"][0]["track_number"] = json!("OTHER");
                v["payment"]["goods_total"] = json!(1);
                v["payment"]["amount"] = json!(2);
            },
            &off,
        )
        .unwrap();
        assert_eq!(order.payment.amount, 2);
        let only_amount_off = Rules { amount: false, ..Rules::default() };
        let r = decode_changed(|v| v["payment"]["goods_total"] = json!(1), &only_amount_off).unwrap_err();
        assert_eq!(r.rule, Rule::GoodsTotal);
    }

    #[test]
    fn oversize_is_rejected_before_parsing_and_unknown_fields_are_ignored() {
        let rules = Rules { max_message_bytes: 100, ..Rules::default() };
        let r = decode(Some(MODEL.as_bytes()), &rules).unwrap_err();
        assert_eq!(
            r,
            Rejection::new(Rule::Size, format!("message is {} bytes, more than the 100 allowed", MODEL.len()))
        );
        let r = decode(Some(&[b'{'; 101]), &rules).unwrap_err();
        assert_eq!(r.rule, Rule::Size);
        let order = decode_changed(|v| v["extra"] = serde_json::json!({"nested": [1, 2]}), &Rules::default()).unwrap();
        assert_eq!(order.order_uid, "b563feb7b2b84b6test");
    }

    #[test]
    fn type_and_presence_errors_are_the_schema_rule_and_syntax_errors_the_json_rule() {
        use serde_json::json;
        let (rule, detail) = rejected(|v| v["sm_id"] = json!(1.5));
        assert_eq!(rule, "schema");
        assert!(detail.starts_with("invalid type: floating point `1.5`, expected i64 at line 1 column "), "{detail}");
        assert_eq!(rejected(|v| v["items"][0]["sale"] = json!(4294967296u64)).0, "schema");
        assert_eq!(
            rejected(|v| {
                v.as_object_mut().unwrap().remove("delivery");
            })
            .0,
            "schema"
        );
        let duplicate = MODEL.replacen("\"entry\": \"WBIL\",", "\"entry\": \"WBIL\", \"entry\": \"X\",", 1);
        let r = decode(Some(duplicate.as_bytes()), &Rules::default()).unwrap_err();
        assert_eq!((r.rule, r.detail.starts_with("duplicate field `entry`")), (Rule::Schema, true));
        let r = decode(Some(&MODEL.as_bytes()[..100]), &Rules::default()).unwrap_err();
        assert_eq!(r.rule, Rule::Json);
        let r = decode(Some(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]"), &Rules::default()).unwrap_err();
        assert_eq!(r.rule, Rule::Schema);
    }

    /// Each file of the committed corpus of hostile messages ends where its name says:
    /// `<rule>--<case>` is rejected by that rule, `stored--<case>` becomes an order.
    #[test]
    fn corpus_messages_end_where_their_names_say() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(files.len() >= 40, "the corpus has {} files", files.len());
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let (expected, _) = name.split_once("--").unwrap_or_else(|| panic!("{name} has no rule prefix"));
            let payload = std::fs::read(&path).unwrap();
            match decode(Some(&payload), &Rules::default()) {
                Ok(order) => assert_eq!(expected, "stored", "{name} was accepted as {}", order.order_uid),
                Err(r) => assert_eq!(r.rule.as_str(), expected, "{name}: {}", r.detail),
            }
        }
    }

    #[test]
    fn ten_mebibytes_is_rejected_by_size_unread() {
        let mut payload = MODEL.as_bytes().to_vec();
        payload.resize(10 << 20, b' ');
        let r = decode(Some(&payload), &Rules::default()).unwrap_err();
        assert_eq!(r, Rejection::new(Rule::Size, "message is 10485760 bytes, more than the 1048576 allowed"));
    }

    /// Random damage to the canonical message (flipped, dropped, repeated and inserted
    /// bytes, truncation), for a bounded time: decoding never panics, and every verdict
    /// is an order that passes validation or a rejection under a known rule.
    #[test]
    fn random_mutations_never_panic_and_always_name_a_rule() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = MODEL.as_bytes();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let (mut runs, mut accepted) = (0u64, 0u64);
        let interesting: &[&[u8]] = &[
            b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b"-", b"0", b"1e999", b"null", b"\\u0000", b"\xff",
            b"\xc3", b" ",
        ];
        while std::time::Instant::now() < deadline {
            let mut m = base.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % m.len().max(1);
                match next() % 5 {
                    0 => m[at] ^= 1 << (next() % 8),
                    1 => {
                        let end = (at + 1 + (next() as usize) % 16).min(m.len());
                        m.drain(at..end);
                    }
                    2 => {
                        let piece = interesting[(next() as usize) % interesting.len()];
                        m.splice(at..at, piece.iter().copied());
                    }
                    3 => {
                        let end = (at + 1 + (next() as usize) % 32).min(m.len());
                        let copy = m[at..end].to_vec();
                        m.splice(at..at, copy);
                    }
                    _ => m.truncate(at),
                }
                if m.is_empty() {
                    break;
                }
            }
            match decode(Some(&m), &Rules::default()) {
                Ok(order) => {
                    validate(&order, &Rules::default()).unwrap();
                    accepted += 1;
                }
                Err(r) => assert!(Rule::ALL.contains(&r.rule), "unknown rule {}", r.rule),
            }
            runs += 1;
        }
        assert!(runs > 1000, "only {runs} mutations in the time given");
        assert!(accepted < runs);
    }

    #[test]
    fn rules_keep_their_stored_names_in_check_order() {
        let names: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "size",
                "empty",
                "utf8",
                "json",
                "schema",
                "date_created",
                "order_uid",
                "text_length",
                "text_nul",
                "currency",
                "items",
                "sale",
                "money",
                "positive",
                "payment_transaction",
                "item_track_number",
                "goods_total",
                "amount",
                "database",
            ]
        );
        for rule in Rule::ALL {
            assert_eq!(Rule::from_name(rule.as_str()), Some(rule));
        }
        assert_eq!(Rule::from_name("Amount"), None);
        assert_eq!(format!("[{:<8}]", Rule::Sale), "[sale    ]");
    }

    /// The README's table of rules lists them in the order they are checked.
    #[test]
    fn readme_lists_the_rules_in_check_order() {
        let readme = include_str!("../README.md");
        let section = readme.split("## Validation and dead letters").nth(1).unwrap();
        let listed: Vec<&str> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(name, _)| name))
            .collect();
        let names: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(listed, names);
    }
}
