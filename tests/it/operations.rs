//! What an operator relies on: starting before PostgreSQL is up, metrics that count
//! what happened, and several instances sharing one topic.

use std::collections::HashSet;
use std::time::Duration;

use orders_svc::model::Order;
use orders_svc::tools::generate::Generator;

use crate::support::*;

/// Started while PostgreSQL is unreachable, the service answers liveness at once,
/// readiness says it waits for PostgreSQL, and it becomes ready and ingests once the
/// database is there.
#[test]
fn starts_before_postgres_and_waits_for_it() {
    let setup = Setup::new(1);
    let proxy = DbProxy::start();
    proxy.cut();
    let mut cfg = setup.config_through(&proxy);
    cfg.ingest.retry_max_ms = 300;
    let service = Running::spawn(cfg);
    let addr = service.addr();

    assert_eq!(get(addr, "/healthz").status, 200);
    let r = wait_for("readiness to name PostgreSQL", Duration::from_secs(10), || {
        let r = get(addr, "/readyz");
        r.body.contains("waiting for PostgreSQL").then_some(r)
    });
    assert_eq!(r.status, 503);
    assert_eq!(get(addr, "/order/b563feb7b2b84b6test").status, 503);

    proxy.restore();
    wait_until_served(addr, "/readyz");
    setup.produce(&[MODEL.as_bytes()]);
    let r = wait_until_served(addr, "/order/b563feb7b2b84b6test");
    assert_eq!(r.json()["payment"]["amount"], 1817);
}

/// After a stream with valid orders, a redelivery and a bad message, `/metrics` counts
/// each, by outcome and by rule, and counts the HTTP requests by route and status.
#[test]
fn metrics_count_what_happened() {
    let setup = Setup::new(1);
    let service = setup.start();
    let addr = service.addr();
    let mut generator = Generator::new(5, 2);
    let a = generator.order().to_json();
    let b = generator.order().to_json();
    setup.produce(&[&a, &b, &a, b"not json"]);
    setup.wait_committed(&[4], Duration::from_secs(30));
    get(addr, "/order/nosuchorder1");

    let text = get(addr, "/metrics").body;
    for line in [
        "orders_messages_consumed_total 4",
        "orders_stored_total{outcome=\"inserted\"} 2",
        "orders_stored_total{outcome=\"unchanged\"} 1",
        "orders_messages_rejected_total{rule=\"json\"} 1",
        "orders_db_retries_total 0",
        "orders_cache_entries 2",
        "orders_assigned_partitions 1",
        "orders_http_requests_total{route=\"order\",status=\"404\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    assert!(text.contains("orders_batch_seconds_bucket{phase=\"write\""), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    // The lag librdkafka reports, against the broker's true end of the partition.
    assert_eq!(partition_ends(&brokers(), &setup.topic, 1), vec![4]);
    let lag = format!("orders_consumer_lag_messages{{partition=\"0\",topic=\"{}\"}}", setup.topic);
    wait_for("the lag to be reported as 0", Duration::from_secs(20), || {
        (metric(addr, &lag) == Some(0.0)).then_some(())
    });
}

under_both_protocols! {
/// Two instances in one consumer group split a 4-partition topic: 2,000 orders are
/// each stored once, both instances consume, and each serves every order, its own
/// from its cache and the other's from PostgreSQL.
fn two_instances_share_the_partitions_and_serve_every_order() {
    let setup = Setup::new(4);
    let db = &setup.db;
    let first = setup.start();
    let second = setup.start();
    wait_for("both instances to hold partitions", Duration::from_secs(60), || {
        let (a, b) = (first.health().assigned_partitions(), second.health().assigned_partitions());
        (a > 0 && b > 0 && a + b == 4).then_some(())
    });

    let mut generator = Generator::new(99, 3);
    let orders: Vec<Order> = (0..2000).map(|_| generator.order()).collect();
    let payloads: Vec<Vec<u8>> = orders.iter().map(Order::to_json).collect();
    let ends = per_partition(&setup.produce(&payloads.iter().map(Vec::as_slice).collect::<Vec<_>>()), 4);
    setup.wait_committed(&ends, Duration::from_secs(60));

    let stored: HashSet<String> =
        db.client().query("SELECT order_uid FROM orders", &[]).unwrap().iter().map(|r| r.get("order_uid")).collect();
    assert_eq!(stored.len(), 2000);
    assert!(orders.iter().all(|o| stored.contains(&o.order_uid)));
    let consumed = |s: &Running| s.metrics().messages_consumed.get();
    assert_eq!(consumed(&first) + consumed(&second), 2000);
    assert!(consumed(&first) > 0 && consumed(&second) > 0);

    for service in [&first, &second] {
        for order in orders.iter().step_by(50) {
            let r = get(service.addr(), &format!("/order/{}", order.order_uid));
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["order_uid"], order.order_uid.as_str());
        }
        assert!(service.cache().stats.db_reads.get() > 0, "every instance served some orders from PostgreSQL");
    }
}
}

/// `produce --count N --invalid-rate R`: every valid order it reports is stored, and
/// every bad message is a dead letter under the rule its kind names (its key says the
/// kind). The same seed gives the same split.
#[test]
fn generated_stream_with_bad_messages_ends_where_each_belongs() {
    use orders_svc::tools::produce::{Plan, Producer, Sent, send_generated};
    let setup = Setup::new(2);
    let db = &setup.db;
    let _service = setup.start();

    let producer = Producer::new(&brokers(), &setup.topic).unwrap();
    let mut uids = Vec::new();
    let plan = Plan { count: 500, seed: 8, max_items: 5, invalid_rate: 0.2, rate: None };
    let sent = send_generated(&producer, &plan, &mut uids).unwrap();
    assert_eq!(producer.flush().unwrap(), 500);
    assert_eq!(sent, Sent { valid: 404, invalid: 96 });

    setup.wait_committed(&per_partition(&producer.delivered_ends(), 2), Duration::from_secs(60));
    let uids = String::from_utf8(uids).unwrap();
    assert_eq!(uids.lines().count(), 404);
    assert_eq!(db.count("SELECT count(*) FROM orders"), 404);
    let mut client = db.client();
    for uid in uids.lines().step_by(20) {
        assert_eq!(client.query("SELECT 1 FROM orders WHERE order_uid = $1", &[&uid]).unwrap().len(), 1, "{uid}");
    }
    let rows = client.query("SELECT message_key, rule FROM rejected_messages", &[]).unwrap();
    assert_eq!(rows.len(), 96);
    for row in rows {
        let key = String::from_utf8(row.get::<_, Vec<u8>>("message_key")).unwrap();
        let rule: String = row.get("rule");
        assert_eq!(key, format!("invalid-{rule}"));
    }
}
