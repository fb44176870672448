//! Decoding and validation, from the canonical message and from broken variants of it.

use super::*;

const MODEL: &str = include_str!("../../demo/model.json");

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
    assert_eq!(rejected(|v| v["sm_id"] = json!(-5)), pair("positive", "sm_id is -5, expected a number greater than 0"));
}

#[test]
fn each_cross_field_rule_has_its_name() {
    use serde_json::json;
    assert_eq!(
        rejected(|v| v["payment"]["transaction"] = json!("other")),
        pair("payment_transaction", "payment.transaction is \"other\", expected the order_uid \"b563feb7b2b84b6test\"")
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
    assert_eq!(r, Rejection::new(Rule::Size, format!("message is {} bytes, more than the 100 allowed", MODEL.len())));
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
/// bytes, truncation), 20,000 times from a fixed seed: decoding never panics, and every
/// verdict is an order that passes validation or a rejection under a known rule.
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
    let (runs, mut accepted) = (20_000u64, 0u64);
    let interesting: &[&[u8]] = &[
        b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b"-", b"0", b"1e999", b"null", b"\\u0000", b"\xff", b"\xc3",
        b" ",
    ];
    for _ in 0..runs {
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
    }
    // Some damage leaves a valid order (a changed digit, a repeated space); most does not.
    assert!(0 < accepted && accepted < runs / 2, "{accepted} of {runs} damaged messages were accepted");
}

#[test]
fn a_version_is_the_digest_s_first_twelve_bytes_in_hex() {
    let digest: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(17)).collect();
    assert_eq!(version_of(&digest), "00112233445566778899aabb");
    assert_eq!(version_of(&[0x0f, 0xf0]), "0ff0");
}
