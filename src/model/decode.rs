//! From payload to order: parsing, the field checks and the cross-field rules, each
//! broken rule reported as a `Rejection`.

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

use super::{Order, Rejection, Rule};

/// Longest `order_uid` accepted, on the topic and in URLs.
pub const MAX_UID_LEN: usize = 64;

/// Longest value of any other text field, in characters.
pub const MAX_TEXT_LEN: usize = 255;

/// The checks a message must pass, as configured. The cross-field rules are on by
/// default and can each be switched off: producers in the wild differ.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

pub(super) fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| serde::de::Error::custom(format!("{BAD_TIME}: {e}")))
}

/// Turns a message payload into an order, or says which rule it breaks. The rules are
/// checked in the order docs/exactly-once.md lists them; the first broken one is reported.
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
