//! Ingest that loses nothing: validation rules and dead letters, redelivery and
//! replacement, a database refusing one order, and replay. (A database outage is in
//! `reliability`.)

use std::time::Duration;

use orders_svc::model::{Order, Rules};
use orders_svc::tools::generate::Generator;
use orders_svc::tools::rejected::{self, Target};
use serde_json::{Value, json};

use crate::support::*;

fn json_of(order: &Order) -> Value {
    serde_json::from_slice(&order.to_json()).unwrap()
}

fn changed(order: &Order, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = json_of(order);
    change(&mut v);
    v.to_string().into_bytes()
}

/// A stream of valid orders, one violation of each rule, non-JSON, invalid UTF-8, an
/// oversize message, redeliveries and a changed version: every valid order is stored
/// once (the changed one as changed), every invalid message is a dead letter with the
/// right rule, and the committed offsets reach the end of every partition.
#[test]
fn mixed_stream_stores_valid_orders_once_and_dead_letters_with_their_rule() {
    let setup = Setup::new(3);
    let db = &setup.db;
    let mut cfg = setup.config();
    cfg.validation.max_message_bytes = 10_000;
    let service = Running::start(cfg.clone());

    let mut generator = Generator::new(11, 3);
    let valid: Vec<Order> = (0..30).map(|_| generator.order()).collect();
    let base = generator.order();
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"hello, world".to_vec(), "json"),
        ("truncated", base.to_json()[..60].to_vec(), "json"),
        ("bad-utf8", b"{\"order_uid\": \"\xff\xfe\"}".to_vec(), "utf8"),
        ("oversize", vec![b' '; 100_000], "size"),
        ("schema", changed(&base, |v| v["payment"]["amount"] = json!("1817")), "schema"),
        ("order-uid", changed(&base, |v| v["order_uid"] = json!("has space")), "order_uid"),
        ("date-created", changed(&base, |v| v["date_created"] = json!("26.11.2021")), "date_created"),
        ("text-length", changed(&base, |v| v["delivery"]["name"] = json!("n".repeat(300))), "text_length"),
        ("text-nul", changed(&base, |v| v["delivery"]["city"] = json!("a\u{0}b")), "text_nul"),
        ("currency", changed(&base, |v| v["payment"]["currency"] = json!("DOLLAR")), "currency"),
        ("items", changed(&base, |v| v["items"] = json!([])), "items"),
        ("money", changed(&base, |v| v["payment"]["delivery_cost"] = json!(-1)), "money"),
        ("sale", changed(&base, |v| v["items"][0]["sale"] = json!(120)), "sale"),
        ("positive", changed(&base, |v| v["items"][0]["nm_id"] = json!(0)), "positive"),
        ("payment-transaction", changed(&base, |v| v["payment"]["transaction"] = json!("x")), "payment_transaction"),
        ("item-track-number", changed(&base, |v| v["items"][0]["track_number"] = json!("X")), "item_track_number"),
        ("goods-total", changed(&base, |v| v["payment"]["goods_total"] = json!(1)), "goods_total"),
        ("amount", changed(&base, |v| v["payment"]["amount"] = json!(1)), "amount"),
    ];

    let producer = orders_svc::tools::produce::Producer::new(&brokers(), &setup.topic).unwrap();
    for order in &valid {
        producer.send(Some(order.order_uid.as_bytes()), &order.to_json()).unwrap();
    }
    for (key, payload, _) in &bad {
        producer.send(Some(key.as_bytes()), payload).unwrap();
    }
    // Redeliveries of five stored orders, then a new version of another.
    for order in &valid[..5] {
        producer.send(Some(order.order_uid.as_bytes()), &order.to_json()).unwrap();
    }
    let new_city = changed(&valid[5], |v| v["delivery"]["city"] = json!("Changed City"));
    producer.send(Some(valid[5].order_uid.as_bytes()), &new_city).unwrap();
    assert_eq!(producer.flush().unwrap(), 30 + 18 + 5 + 1);

    // Where the stream ends on each partition, from the broker's delivery reports.
    let ends = per_partition(&producer.delivered_ends(), 3);
    assert_eq!(ends.iter().sum::<i64>(), 54);
    setup.wait_committed(&ends, Duration::from_secs(60));

    assert_eq!(db.count("SELECT count(*) FROM orders"), 30);
    let items: usize = valid.iter().map(|o| o.items.len()).sum();
    assert_eq!(db.count("SELECT count(*) FROM order_items"), items as i64);
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages"), 18);
    let mut client = db.client();
    for (key, _, rule) in &bad {
        let row = client
            .query_one("SELECT rule FROM rejected_messages WHERE message_key = $1", &[&key.as_bytes()])
            .unwrap_or_else(|e| panic!("dead letter {key}: {e}"));
        assert_eq!(row.get::<_, String>("rule"), *rule, "dead letter {key}");
    }
    let row = client
        .query_one(
            "SELECT length(payload) AS kept, payload_size FROM rejected_messages WHERE message_key = 'oversize'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i32>("kept"), row.get::<_, i64>("payload_size")), (65_536, 100_000));

    let addr = service.addr();
    let r = get(addr, &format!("/order/{}", valid[5].order_uid));
    assert_eq!(r.json()["delivery"]["city"], "Changed City");
    let r = get(addr, &format!("/order/{}", valid[0].order_uid));
    assert_eq!(r.json(), json_of(&valid[0]));
    service.stop();

    // A fresh start of the same group reads only what comes after: one new order, once.
    let service = Running::start(cfg);
    let extra = generator.order();
    setup.produce(&[&extra.to_json()]);
    wait_until_served(service.addr(), &format!("/order/{}", extra.order_uid));
    // The commit's notification lets a miss serve the order a moment before the
    // consumer counts its batch.
    wait_for("the batch counted", Duration::from_secs(10), || {
        (service.metrics().messages_consumed.get() > 0).then_some(())
    });
    assert_eq!(service.metrics().messages_consumed.get(), 1);
    service.stop();
    assert_eq!(db.count("SELECT count(*) FROM orders"), 31);
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages"), 18);
}

/// An order that passes validation but that the database refuses (here, a check
/// constraint added for the test) becomes a dead letter with the database's message;
/// the rest of its batch is stored.
#[test]
fn order_refused_by_the_database_is_a_dead_letter_and_its_batch_is_stored() {
    let setup = Setup::new(1);
    let db = &setup.db;
    let _service = setup.start();
    db.client().batch_execute("ALTER TABLE payments ADD CONSTRAINT refuse_bank CHECK (bank <> 'refused')").unwrap();

    let mut generator = Generator::new(3, 2);
    let mut orders: Vec<Order> = (0..10).map(|_| generator.order()).collect();
    orders[4].payment.bank = "refused".into();
    let payloads: Vec<Vec<u8>> = orders.iter().map(Order::to_json).collect();
    setup.produce(&payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());

    setup.wait_committed(&[10], Duration::from_secs(30));
    assert_eq!(db.count("SELECT count(*) FROM orders"), 9);
    let row = db.client().query_one("SELECT \"offset\", rule, detail FROM rejected_messages", &[]).unwrap();
    assert_eq!(row.get::<_, i64>("offset"), 4);
    assert_eq!(row.get::<_, String>("rule"), "database");
    assert_eq!(
        row.get::<_, String>("detail"),
        "new row for relation \"payments\" violates check constraint \"refuse_bank\" (23514)"
    );
}

/// A dead letter rejected by a cross-field rule is stored as an order once that rule
/// is switched off and it is replayed; it is marked replayed and not replayed twice.
#[test]
fn replay_after_switching_the_rule_off_stores_the_order() {
    let setup = Setup::new(1);
    let db = &setup.db;
    let service = setup.start();
    let odd = MODEL.replace("\"amount\": 1817", "\"amount\": 1900");
    setup.produce(&[odd.as_bytes()]);
    wait_for("the dead letter", Duration::from_secs(30), || {
        (db.count("SELECT count(*) FROM rejected_messages") == 1).then_some(())
    });

    let mut client = db.client();
    let out = rejected::replay(&mut client, Target::All, &Rules::default()).unwrap();
    assert_eq!(
        out,
        "1: still rejected: amount: payment.amount is 1900, goods_total + delivery_cost + custom_fee is 1817\n\
         0 of 1 dead letters stored as orders\n"
    );
    let lenient = Rules { amount: false, ..Rules::default() };
    let out = rejected::replay(&mut client, Target::All, &lenient).unwrap();
    assert_eq!(out, "1: stored as order b563feb7b2b84b6test\n1 of 1 dead letters stored as orders\n");
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages WHERE replayed_at IS NOT NULL"), 1);
    let out = rejected::replay(&mut client, Target::One(1), &lenient).unwrap();
    assert_eq!(out, "1: already replayed\n0 of 1 dead letters stored as orders\n");

    let r = get(service.addr(), "/order/b563feb7b2b84b6test");
    assert_eq!(r.json()["payment"]["amount"], 1900);
    let listing = rejected::list(&mut client, 10).unwrap();
    assert!(listing.contains("  amount  "), "{listing}");
    assert!(listing.ends_with("1 dead letters shown\n"), "{listing}");
}
