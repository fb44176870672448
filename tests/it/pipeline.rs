//! The whole pipeline: messages put on a real topic by a Kafka producer end up in
//! PostgreSQL, in `rejected_messages`, and at the HTTP endpoints, across restarts.

use std::time::Duration;

use orders_svc::model::{self, Message};
use orders_svc::store;

use crate::support::*;

const UID: &str = "b563feb7b2b84b6test";

/// The canonical order, produced to the topic, comes back from `GET /order/<uid>` equal
/// to what was sent, is shown on the page, and is stored in normalized rows.
#[test]
fn canonical_order_is_served_as_json_and_on_the_page() {
    let setup = Setup::new(1);
    let service = setup.start();
    let addr = service.addr();

    setup.produce(&[MODEL.as_bytes()]);

    let r = wait_until_served(addr, &format!("/order/{UID}"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let expected: serde_json::Value = serde_json::from_str(MODEL).unwrap();
    assert_eq!(r.json(), expected);

    let form = get(addr, &format!("/?uid={UID}"));
    assert_eq!((form.status, form.header("Location")), (303, Some("/order/b563feb7b2b84b6test")));
    let page = http_with(addr, "GET", &format!("/order/{UID}"), &[("Accept", "text/html")]);
    assert_eq!(page.status, 200);
    assert_eq!(page.header("Content-Type"), Some("text/html; charset=utf-8"));
    for shown in [
        "WBILMTESTTRACK",
        "Test Testov",
        "+9720000000",
        "Kiryat Mozkin",
        "wbpay",
        "1,817 USD",
        "Mascaras",
        "Vivienne Sabo",
    ] {
        assert!(page.body.contains(&format!("<td>{shown}</td>")), "page lacks {shown}: {}", page.body);
    }

    let db = &setup.db;
    assert_eq!(db.count("SELECT count(*) FROM orders"), 1);
    assert_eq!(db.count("SELECT count(*) FROM deliveries"), 1);
    assert_eq!(db.count("SELECT count(*) FROM payments"), 1);
    assert_eq!(db.count("SELECT count(*) FROM order_items"), 1);
    assert_eq!(db.count("SELECT amount FROM payments"), 1817);
    assert_eq!(db.count("SELECT extract(epoch FROM date_created)::bigint FROM orders"), 1637907739);
}

/// A message that is not JSON is stored in `rejected_messages` with its reason and
/// position, and the valid order after it on the same partition is still stored.
#[test]
fn non_json_message_becomes_a_dead_letter_and_the_next_order_is_stored() {
    let setup = Setup::new(1);
    let service = setup.start();

    setup.produce(&[b"this is not an order", MODEL.as_bytes()]);

    wait_until_served(service.addr(), &format!("/order/{UID}"));
    let mut client = setup.db.client();
    let rows = client
        .query("SELECT topic, partition, \"offset\", payload, payload_size, rule, detail FROM rejected_messages", &[])
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<_, String>("topic"), setup.topic);
    assert_eq!(row.get::<_, i32>("partition"), 0);
    assert_eq!(row.get::<_, i64>("offset"), 0);
    assert_eq!(row.get::<_, Vec<u8>>("payload"), b"this is not an order");
    assert_eq!(row.get::<_, i64>("payload_size"), 20);
    assert_eq!(row.get::<_, String>("rule"), "json");
    assert_eq!(row.get::<_, String>("detail"), "expected ident at line 1 column 2");
    assert_eq!(setup.db.count("SELECT count(*) FROM orders"), 1);
}

/// Past a batch's wait, the messages already received still join it: with no wait at
/// all, 200 orders waiting on the topic are written in a few batches, not one by one.
#[test]
fn messages_already_received_join_a_batch_past_its_wait() {
    let setup = Setup::new(1);
    let mut generator = orders_svc::tools::generate::Generator::new(17, 2);
    let payloads: Vec<Vec<u8>> = (0..200).map(|_| generator.order().to_json()).collect();
    setup.produce(&payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let mut config = setup.config();
    config.ingest.batch_max_wait_ms = 0;
    let service = Running::start(config);
    wait_for("the 200 orders", Duration::from_secs(60), || {
        (setup.db.count("SELECT count(*) FROM orders") == 200).then_some(())
    });
    // A batch is counted just after its commit: wait until all 200 messages are.
    let histogram = &service.metrics().batch_messages;
    wait_for("the 200 messages counted", Duration::from_secs(10), || {
        (histogram.get_sample_sum() == 200.0).then_some(())
    });
    let batches = histogram.get_sample_count();
    assert!((1..=10).contains(&batches), "{batches} batches for 200 waiting messages");
}

/// After a stop and a start with the same group, the stored order is served from the
/// warmed cache, the committed offset is where the first run left it, and nothing is
/// read twice into a duplicate row.
#[test]
fn restart_serves_stored_orders_and_consumes_no_offset_twice() {
    let setup = Setup::new(1);
    let db = &setup.db;

    let service = setup.start();
    setup.produce(&[MODEL.as_bytes(), b"{\"order_uid\": 1}"]);
    wait_until_served(service.addr(), &format!("/order/{UID}"));
    wait_for("the dead letter", Duration::from_secs(30), || {
        (db.count("SELECT count(*) FROM rejected_messages") == 1).then_some(())
    });
    service.stop();
    assert_eq!(setup.committed(), vec![2]);

    let service = setup.start();
    assert_eq!(service.cache().len(), 1);
    let r = get(service.addr(), &format!("/order/{UID}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payment"]["amount"], 1817);

    let second = MODEL.replace(UID, "second0order0uid");
    setup.produce(&[second.as_bytes()]);
    wait_until_served(service.addr(), "/order/second0order0uid");
    // The commit's notification ends the memory of the id as missing, so a miss can
    // serve it a moment before the consumer counts its batch.
    wait_for("the batch counted", Duration::from_secs(10), || {
        (service.metrics().messages_consumed.get() > 0).then_some(())
    });
    assert_eq!(service.metrics().messages_consumed.get(), 1, "the restarted service read only the new message");
    service.stop();

    assert_eq!(setup.committed(), vec![3]);
    assert_eq!(db.count("SELECT count(*) FROM orders"), 2);
    assert_eq!(db.count("SELECT count(*) FROM order_items"), 2);
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages"), 1);
}

/// An order that reached PostgreSQL without passing through this instance's cache is
/// still served: a cache miss reads the database. Unknown and impossible ids get 404
/// and 400 with JSON bodies.
#[test]
fn cache_miss_reads_postgres_and_unknown_ids_are_404() {
    let setup = Setup::new(1);
    let service = setup.start();
    let addr = service.addr();

    let message = Message { topic: setup.topic.clone(), partition: 0, offset: 0, key: None, payload: None };
    let order = model::decode(Some(MODEL.as_bytes()), &Default::default()).unwrap();
    store::write_batch(&mut setup.db.client(), &setup.group, &[], &[(&message, order.encode())], &[]).unwrap();
    assert_eq!(service.cache().len(), 0);

    let r = get(addr, &format!("/order/{UID}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::from_str::<serde_json::Value>(MODEL).unwrap());
    assert_eq!(service.cache().len(), 1);
    let r = get(addr, &format!("/order/{UID}"));
    assert_eq!(r.status, 200);
    assert_eq!(service.cache().stats.db_reads.get(), 1);

    let r = get(addr, "/order/nosuchorder");
    assert_eq!(r.status, 404);
    assert_eq!(r.body, r#"{"error":"order not found","order_uid":"nosuchorder"}"#);
    let r = http_with(addr, "GET", "/order/nosuchorder", &[("Accept", "text/html")]);
    assert_eq!(r.status, 404);
    assert!(r.body.contains("Order not found"), "{}", r.body);
    assert!(r.body.contains("<form class=\"lookup\""), "{}", r.body);

    let r = get(addr, "/order/bad%20id");
    assert_eq!(r.status, 400);
    assert_eq!(r.body, r#"{"error":"order_uid has '%'; only A-Z, a-z, 0-9, '_' and '-' are allowed"}"#);
}

/// Health and readiness answer with small JSON bodies; once the consumer has joined its
/// group, the service is ready.
#[test]
fn health_and_readiness() {
    let setup = Setup::new(1);
    let service = setup.start();
    let addr = service.addr();
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"alive"}"#));
    let r = wait_until_served(addr, "/readyz");
    assert_eq!(r.body, r#"{"ready":true}"#);
}

/// Orders from a transactional producer, each in a transaction of its own and each
/// stored before the next is sent: every commit leaves a marker at the offset after its
/// order, so each batch's first message comes one past the partition's position. Those
/// gaps lose nothing, and the log's start, which the broker sends with the messages,
/// says so: the consumer does not ask the broker for the partition's watermarks, a round
/// trip the batch would wait for (it asked once a batch), and reports nothing lost.
#[test]
fn a_transactional_producers_commit_markers_are_no_loss_and_cost_no_round_trip() {
    let setup = Setup::new(1);
    let service = setup.start();
    let addr = service.addr();
    let id = unique("transactional");
    let producer =
        orders_svc::tools::produce::Producer::with_settings(&brokers(), &setup.topic, &[("transactional.id", &id)])
            .expect("create a transactional producer");
    producer.begin_transactions().expect("begin transactions");
    let mut generator = orders_svc::tools::generate::Generator::new(67, 1);
    for n in 0..10 {
        let order = generator.order();
        producer.send(Some(order.order_uid.as_bytes()), &order.to_json()).expect("send");
        producer.commit_transaction(n < 9).expect("commit, and begin the next");
        wait_until_served(addr, &format!("/order/{}", order.order_uid));
    }

    assert_eq!(setup.db.count("SELECT count(*) FROM orders"), 10);
    // Orders at offsets 0, 2, ..., 18, each followed by its transaction's marker.
    assert_eq!(setup.db.count("SELECT max(next_offset) FROM consumer_offsets"), 19);
    assert_eq!(metric(addr, "orders_kafka_watermark_queries_total"), Some(0.0));
    let lost = format!("orders_messages_lost_total{{partition=\"0\",topic=\"{}\"}}", setup.topic);
    assert_eq!(metric(addr, &lost), None);
}
