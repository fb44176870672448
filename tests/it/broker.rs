//! The broker failing under the service, each on an Apache Kafka broker of the test's
//! own: killed and restarted with its messages kept, restarted empty after losing its
//! data, a topic deleted and created again, and messages deleted by retention before the
//! service read them; and a broker that does not speak the consumer group protocol.

use std::time::{Duration, Instant};

use orders_svc::config::Config;
use orders_svc::model::Order;
use orders_svc::tools::generate::Generator;

use crate::support::*;

fn payloads(orders: &[Order]) -> Vec<Vec<u8>> {
    orders.iter().map(Order::to_json).collect()
}

fn slices(payloads: &[Vec<u8>]) -> Vec<&[u8]> {
    payloads.iter().map(Vec::as_slice).collect()
}

/// A service consuming a one-partition topic of `broker`, with 20 generated orders
/// stored; the generator goes on from there.
fn twenty_orders_stored(broker: &Broker, seed: u64) -> (TestDb, Config, Running, Generator) {
    let db = TestDb::new();
    let topic = unique("broker-topic");
    create_topic_on(&broker.addr(), &topic, 1);
    let config = Setup::config_for(&db, &broker.addr(), &topic, &unique("group"));
    let service = Running::start(config.clone());
    let mut generator = Generator::new(seed, 2);
    let before: Vec<Order> = (0..20).map(|_| generator.order()).collect();
    produce_on(&broker.addr(), &topic, &slices(&payloads(&before)));
    wait_for("the first 20 orders", Duration::from_secs(30), || {
        (db.count("SELECT count(*) FROM orders") == 20).then_some(())
    });
    (db, config, service, generator)
}

/// The topic of `config` starts over beneath the running service (5 new orders on it)
/// while the database's offset is 20. Kafka answers the fetch at 20 with
/// OFFSET_OUT_OF_RANGE and the consumer's position is reset to the partition's start;
/// the service sees messages before its stored offset, pauses the partition and reports
/// its position past the end, as a metric and an error log saying what to do, instead of
/// storing the new messages as if they followed the old ones. `reset-offsets` then sets
/// the stored offset to the partition's start, and the running service reads the 5 new
/// orders.
fn reported_then_reset(db: &TestDb, config: &Config, service: &Running, generator: &mut Generator) {
    let (broker, topic) = (&config.kafka.brokers, &config.kafka.topic);
    let after: Vec<Order> = (0..5).map(|_| generator.order()).collect();
    produce_on(broker, topic, &slices(&payloads(&after)));
    let beyond = format!("orders_partition_position_beyond_end{{partition=\"0\",topic=\"{topic}\"}}");
    wait_for("the service to report its position past the partition's end", Duration::from_secs(60), || {
        (metric(service.addr(), &beyond) == Some(1.0)).then_some(())
    });
    assert_eq!(db.count("SELECT count(*) FROM orders"), 20);

    let out = orders_svc::tools::offsets::reset(config).unwrap();
    assert_eq!(
        out,
        format!(
            "{topic}/0: next offset 0\ngroup {}: 1 partitions reset; 20 orders from {topic} will take the next \
             message for them\n",
            config.kafka.group_id
        )
    );
    wait_for("the 5 orders produced after the topic started over", Duration::from_secs(60), || {
        (db.count("SELECT count(*) FROM orders") == 25).then_some(())
    });
    let r = get(service.addr(), &format!("/order/{}", after[4].order_uid));
    assert_eq!(r.json()["order_uid"], after[4].order_uid.as_str());
    assert_eq!(db.count("SELECT next_offset FROM consumer_offsets"), 5);
}

/// The broker killed with SIGKILL in the middle of an ingest of 6,000
/// orders and started again: cached orders and `/healthz` are served throughout, the
/// consumer reconnects by itself, every order is stored once with all its items, the
/// topic holds each message once, and orders produced after the restart are stored too.
#[test]
fn broker_killed_mid_ingest_and_restarted_loses_nothing() {
    let mut broker = Broker::start();
    let db = TestDb::new();
    let topic = unique("broker-kill");
    create_topic_on(&broker.addr(), &topic, 2);
    let mut cfg = Setup::config_for(&db, &broker.addr(), &topic, &unique("group"));
    cfg.ingest.batch_max_messages = 200;
    let service = Running::start(cfg);
    let addr = service.addr();

    let mut generator = Generator::new(41, 3);
    let early: Vec<Order> = (0..10).map(|_| generator.order()).collect();
    produce_on(&broker.addr(), &topic, &slices(&payloads(&early)));
    wait_for("the first orders", Duration::from_secs(30), || {
        (db.count("SELECT count(*) FROM orders") == 10).then_some(())
    });

    let bulk: Vec<Order> = (0..6000).map(|_| generator.order()).collect();
    produce_on(&broker.addr(), &topic, &slices(&payloads(&bulk)));
    wait_for("the ingest to be under way", Duration::from_secs(60), || {
        (db.count("SELECT count(*) FROM orders") > 10).then_some(())
    });
    let pid = broker.pid().unwrap();
    broker.kill();
    let stored_at_kill = db.count("SELECT count(*) FROM orders");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the broker's process is gone");
    // Killed in the middle of the ingest, not after it.
    assert!(stored_at_kill < 6010, "the broker was killed after all 6,010 orders were stored");
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        for o in &early {
            assert_eq!(get(addr, &format!("/order/{}", o.order_uid)).status, 200, "a cached order during the outage");
        }
        assert_eq!(get(addr, "/healthz").status, 200);
    }
    broker.restart();

    let late: Vec<Order> = (0..10).map(|_| generator.order()).collect();
    produce_on(&broker.addr(), &topic, &slices(&payloads(&late)));
    let all: Vec<&Order> = early.iter().chain(&bulk).chain(&late).collect();
    wait_for("every order stored", Duration::from_secs(120), || {
        (db.count("SELECT count(*) FROM orders") == all.len() as i64).then_some(())
    });
    // Each message is on the topic once: the partitions' ends add up to what was sent.
    assert_eq!(partition_ends(&broker.addr(), &topic, 2).iter().sum::<i64>(), 6020);
    let items: usize = all.iter().map(|o| o.items.len()).sum();
    assert_eq!(db.count("SELECT count(*) FROM order_items"), items as i64);
    let r = get(addr, &format!("/order/{}", late[9].order_uid));
    assert_eq!(r.json()["order_uid"], late[9].order_uid.as_str());
    eprintln!("broker killed with {stored_at_kill} of 6,010 orders stored");
}

/// A broker that lost its disk, restarted beneath a running service, comes back as a new
/// cluster without the topic, the group, its committed offsets or the messages already
/// read; the offsets start over. What the service stored before stays.
#[test]
fn broker_that_lost_its_data_restarted_empty_beneath_the_service() {
    let mut broker = Broker::start();
    let (db, config, service, mut generator) = twenty_orders_stored(&broker, 43);

    broker.wipe();
    create_topic_on(&broker.addr(), &config.kafka.topic, 1);
    reported_then_reset(&db, &config, &service, &mut generator);
}

/// A topic deleted and created again on a broker that keeps the group's committed
/// offsets: the stored offset 20 is past the new partition's end.
#[test]
fn topic_recreated_beneath_the_service_is_reported_and_reset() {
    let broker = Broker::start();
    let (db, config, service, mut generator) = twenty_orders_stored(&broker, 47);

    delete_topic_on(&broker.addr(), &config.kafka.topic);
    create_topic_on(&broker.addr(), &config.kafka.topic, 1);
    reported_then_reset(&db, &config, &service, &mut generator);
}

/// Messages deleted by retention before the service read them: 5 orders are stored, the
/// service stops, 10 more are produced and then deleted by a 1 s `retention.ms`, and 3
/// more follow. Started again from its stored offset 5, the service meets Kafka's
/// OFFSET_OUT_OF_RANGE (the log now starts at 15) and goes on from the log's start; it
/// says what was lost, offsets 5 to 14, in its log and in
/// `orders_messages_lost_total`, and stores the 3 that are left.
#[test]
fn messages_deleted_by_retention_before_they_were_read_are_reported_as_lost() {
    let OwnBroker { broker, db, topic, dir, group } =
        OwnBroker::start(&[("log.retention.check.interval.ms", "500")], "retention");
    let start = |name: &str| {
        let toml = broker.config_toml(&db.url, &topic, &group, ANY_PORT);
        Process::serving(&dir, name, &toml)
    };
    let mut generator = Generator::new(53, 2);
    let mut produce = |n: usize| -> Vec<Order> {
        let orders: Vec<Order> = (0..n).map(|_| generator.order()).collect();
        produce_on(&broker.addr(), &topic, &slices(&payloads(&orders)));
        orders
    };

    let (first, addr) = start("first");
    wait_ready(addr);
    produce(5);
    wait_for("the first 5 orders", Duration::from_secs(30), || {
        (db.count("SELECT count(*) FROM orders") == 5).then_some(())
    });
    drop(first);

    let deleted = produce(10);
    alter_topic_on(&broker.addr(), &topic, &[("retention.ms", "1000")]);
    wait_for("retention to delete the first 15 messages", Duration::from_secs(60), || {
        (watermarks(&broker.addr(), &topic, 1)[&0] == (15, 15)).then_some(())
    });
    alter_topic_on(&broker.addr(), &topic, &[("retention.ms", "604800000")]);
    let kept = produce(3);

    let (second, addr) = start("second");
    wait_for("the 3 orders left on the topic", Duration::from_secs(60), || {
        (db.count("SELECT count(*) FROM orders") == 8).then_some(())
    });
    assert_eq!(db.count("SELECT next_offset FROM consumer_offsets"), 18);
    let lost = format!("orders_messages_lost_total{{partition=\"0\",topic=\"{topic}\"}}");
    assert_eq!(metric(addr, &lost), Some(10.0));
    let log = second.log();
    let line =
        log.lines().find(|l| l.contains("event=messages_lost")).unwrap_or_else(|| panic!("no loss logged:\n{log}"));
    assert!(line.contains("from=5 to=14 lost=10"), "{line}");
    assert_eq!(get(addr, &format!("/order/{}", deleted[0].order_uid)).status, 404);
    assert_eq!(get(addr, &format!("/order/{}", kept[2].order_uid)).status, 200);
}

/// A broker with the consumer group protocol disabled (as one before Kafka 4.0 lacks it),
/// and the service on its default `kafka.group_protocol = "consumer"`: it does not retry
/// forever in silence, it stops consuming and `/readyz` says why and what to set.
/// Started again with `classic`, it consumes.
#[test]
fn a_broker_without_the_consumer_protocol_is_named_with_the_way_out() {
    let OwnBroker { broker, db, topic, dir, group } =
        OwnBroker::start(&[("group.coordinator.rebalance.protocols", "classic")], "classic-only");
    let start = |name: &str, protocol: &str| {
        let toml = broker.config_toml(&db.url, &topic, &group, ANY_PORT);
        // The protocol the file names: the default when it names none.
        let toml: String = toml
            .lines()
            .filter(|l| !l.starts_with("group_protocol") && !l.starts_with("session_timeout_ms"))
            .map(|l| format!("{l}\n"))
            .collect();
        let toml = toml.replace("[http]", &format!("{protocol}[http]"));
        Process::serving(&dir, name, &toml)
    };
    let (first, addr) = start("default", "");
    let body = wait_for("/readyz to say why the consumer stopped", Duration::from_secs(60), || {
        let r = get_within(addr, "/readyz", Duration::from_secs(2)).ok()?;
        (r.status == 503 && r.body.contains("stopped consuming")).then_some(r.body)
    });
    assert!(
        body.contains(
            "consumer: stopped consuming: the broker does not speak the consumer group protocol (UnsupportedVersion \
             (Broker: API version not supported)); it needs Apache Kafka 4.0 or later with the consumer protocol \
             enabled; otherwise set kafka.group_protocol = \\\"classic\\\" and restart"
        ),
        "{body}"
    );
    drop(first);

    let (second, addr) = start("classic", "group_protocol = \"classic\"\n");
    wait_ready(addr);
    produce_on(&broker.addr(), &topic, &[MODEL.as_bytes()]);
    wait_for("the order stored", Duration::from_secs(30), || {
        (db.count("SELECT count(*) FROM orders") == 1).then_some(())
    });
    drop(second);
}

/// A broker of the test's own with these properties, a database, a one-partition topic
/// on the broker, a directory for the service's files and a group name.
struct OwnBroker {
    broker: Broker,
    db: TestDb,
    topic: String,
    dir: std::path::PathBuf,
    group: String,
}

impl OwnBroker {
    fn start(properties: &[(&str, &str)], name: &str) -> OwnBroker {
        let broker = Broker::start_with(properties);
        let topic = unique(name);
        create_topic_on(&broker.addr(), &topic, 1);
        OwnBroker {
            broker,
            db: TestDb::new(),
            topic,
            dir: temp_dir(&format!("{name}-service")),
            group: unique("group"),
        }
    }
}
