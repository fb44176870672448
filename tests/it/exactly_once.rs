//! Exactly once into PostgreSQL: an instance that lost its partitions never commits, a
//! crash between the database commit and the Kafka commit reads nothing again, and a
//! replay never walks an order back to an older version.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const UID: &str = "b563feb7b2b84b6test";

/// The canonical order with `delivery.name` set to `version`: one version of one order.
fn version(name: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(MODEL).unwrap();
    v["delivery"]["name"] = Value::from(name);
    v.to_string().into_bytes()
}

/// The `delivery.name` of the stored order.
fn stored_version(db: &TestDb) -> Option<String> {
    let row = db
        .client()
        .query_opt("SELECT d.name FROM deliveries d WHERE d.order_uid = $1", &[&UID])
        .expect("read the stored version");
    row.map(|r| r.get("name"))
}

fn served_version(addr: std::net::SocketAddr) -> String {
    let r = get(addr, &format!("/order/{UID}"));
    assert_eq!(r.status, 200, "GET /order/{UID} on {addr}: {}", r.body);
    r.json()["delivery"]["name"].as_str().unwrap().to_string()
}

under_both_protocols! {
/// The zombie: instance A holds the partition and has version 1 of an order in a batch
/// whose write hangs (its PostgreSQL connection stalls behind a proxy), and is frozen
/// (SIGSTOP) long enough for the group to give the partition to B. B stores version 1,
/// then version 2. A thaws and its connection comes back: its batch must not commit.
/// The database and both instances end with version 2.
fn a_fenced_out_instance_that_wakes_late_never_overwrites_a_newer_version() {
    let setup = Setup::new(1);
    let db = &setup.db;
    orders_svc::store::migrate(&mut db.client()).unwrap();
    let proxy = DbProxy::start();
    let dir = temp_dir("zombie");
    let toml = config_toml(&proxy.url(db), &setup.topic, &setup.group, ANY_PORT, "");
    let a = Process::start(&dir, "a", &toml, &[]);
    let a_addr = a.http_addr();
    wait_ready(a_addr);
    wait_for("A to be assigned the partition", Duration::from_secs(30), || {
        (metric(a_addr, "orders_assigned_partitions") == Some(1.0)).then_some(())
    });

    proxy.hold();
    setup.produce(&[&version("Version One")]);
    wait_for("A to start writing its batch", Duration::from_secs(30), || (proxy.held_bytes() > 0).then_some(()));
    // The bytes held may be another of A's connections; give the consumer time to be in
    // its write too (it polls every few milliseconds).
    std::thread::sleep(Duration::from_secs(1));
    a.signal("STOP");

    let b = setup.start();
    wait_for("B to store version 1", Duration::from_secs(60), || {
        (stored_version(db).as_deref() == Some("Version One")).then_some(())
    });
    setup.produce(&[&version("Version Two")]);
    wait_for("B to store version 2", Duration::from_secs(30), || {
        (stored_version(db).as_deref() == Some("Version Two")).then_some(())
    });
    assert_eq!(served_version(b.addr()), "Version Two");

    a.signal("CONT");
    proxy.release();
    wait_for("A to find its batch fenced out", Duration::from_secs(60), || {
        assert_eq!(
            stored_version(db).as_deref(),
            Some("Version Two"),
            "the instance that lost the partition overwrote version 2 with version 1"
        );
        (metric(a_addr, "orders_batches_fenced_total") == Some(1.0)).then_some(())
    });
    assert_eq!(stored_version(db).as_deref(), Some("Version Two"));
    assert_eq!(served_version(b.addr()), "Version Two");
    assert_eq!(served_version(a_addr), "Version Two");
    let row = db
        .client()
        .query_one("SELECT next_offset, messages FROM consumer_offsets WHERE topic = $1", &[&setup.topic])
        .unwrap();
    assert_eq!((row.get::<_, i64>("next_offset"), row.get::<_, i64>("messages")), (2, 2));
}
}

under_both_protocols! {
/// The process ends right after a batch's database commit, before its Kafka commit (a
/// test-only fault, in debug builds). Started again, it reads none of that batch again:
/// its consumed counter counts only the one order produced after the restart. Kafka's
/// committed offset then catches up with the database's.
fn a_crash_between_the_database_commit_and_the_kafka_commit_reads_nothing_again() {
    let setup = Setup::new(1);
    let db = &setup.db;
    let mut generator = orders_svc::tools::generate::Generator::new(11, 2);
    let orders: Vec<Vec<u8>> = (0..100).map(|_| generator.order().to_json()).collect();
    setup.produce(&orders.iter().map(Vec::as_slice).collect::<Vec<_>>());

    let dir = temp_dir("fault");
    let toml = config_toml(
        &db.url,
        &setup.topic,
        &setup.group,
        ANY_PORT,
        "[ingest]\nbatch_max_messages = 100\nbatch_max_wait_ms = 10000\n",
    );
    let mut crashing = Process::start(&dir, "crashing", &toml, &[("ORDERSVC_FAULT", "exit_after_database_commit")]);
    let status = crashing.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(86), "the fault's exit code; log: {}", crashing.log());
    assert_eq!(db.count("SELECT count(*) FROM orders"), 100);
    assert_eq!(setup.committed(), [0]);

    let service = setup.start();
    let sentinel = generator.order();
    setup.produce(&[&sentinel.to_json()]);
    wait_until_served(service.addr(), &format!("/order/{}", sentinel.order_uid));
    assert_eq!(metric(service.addr(), "orders_messages_consumed_total"), Some(1.0));
    setup.wait_committed(&[101], Duration::from_secs(10));
    let row = db.client().query_one("SELECT next_offset, messages FROM consumer_offsets", &[]).unwrap();
    assert_eq!((row.get::<_, i64>("next_offset"), row.get::<_, i64>("messages")), (101, 101));
}
}

under_both_protocols! {
/// Three versions of one order, stored by one group; then the partition replayed from
/// its start, one message per batch, by a second group writing to the same database (as
/// after a group's offsets are lost). Every read during the replay and the stored row
/// keep version 3, and the replay counts every message as stale.
fn a_replay_of_the_partition_never_walks_an_order_back() {
    let setup = Setup::new(1);
    let db = &setup.db;
    let first = setup.start();
    let versions = [version("Version One"), version("Version Two"), version("Version Three")];
    setup.produce(&versions.iter().map(Vec::as_slice).collect::<Vec<_>>());
    setup.wait_committed(&[3], Duration::from_secs(30));
    assert_eq!(served_version(first.addr()), "Version Three");
    first.stop();

    let mut config = setup.config();
    config.kafka.group_id = unique("replay");
    config.ingest.batch_max_messages = 1;
    let replay = Running::start(config);
    let addr = replay.addr();
    let mut reads = 0;
    wait_for("the replay of 3 messages", Duration::from_secs(60), || {
        assert_eq!(served_version(addr), "Version Three", "after {reads} reads during the replay");
        reads += 1;
        (metric(addr, "orders_messages_consumed_total") == Some(3.0)).then_some(())
    });
    assert_eq!(served_version(addr), "Version Three");
    assert_eq!(stored_version(db).as_deref(), Some("Version Three"));
    assert_eq!(metric(addr, "orders_stored_total{outcome=\"stale\"}"), Some(3.0));
    assert_eq!(metric(addr, "orders_stored_total{outcome=\"replaced\"}"), Some(0.0));
    eprintln!("{reads} reads during the replay, all of version 3");
}
}

under_both_protocols! {
/// A backlog of 20,000 orders on 4 partitions, written in full batches of 200 (each held
/// while the next is collected and decoded; each batch's write takes at least 200 ms, so
/// that the backlog lasts while a third instance joins under the classic protocol's
/// cooperative rebalancing), while instances join and leave the group:
/// every message is written exactly once, and the stored offsets end at the partitions'
/// ends. Under the classic protocol, run with both of librdkafka's assignment strategies:
/// eager (`range`: every revocation takes every partition) and cooperative
/// (`cooperative-sticky`); the consumer protocol is incremental as the latter. When a
/// revocation takes only some of an instance's partitions, a batch keeps the messages
/// of the others and drops those of the partitions that moved, which their new owner
/// reads again from the stored offset.
fn instances_joining_and_leaving_during_a_backlog_write_every_message_once() {
    let strategies: &[Option<&str>] = match group_protocol() {
        orders_svc::config::GroupProtocol::Classic => &[Some("range"), Some("cooperative-sticky")],
        orders_svc::config::GroupProtocol::Consumer => &[None],
    };
    for &strategy in strategies {
        let setup = Setup::new(4);
        let db = &setup.db;
        orders_svc::store::migrate(&mut db.client()).unwrap();
        db.client()
            .batch_execute(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); \
                 RETURN NULL; END $$; \
                 CREATE TRIGGER slow AFTER INSERT ON orders FOR EACH STATEMENT EXECUTE FUNCTION slow();",
            )
            .unwrap();
        let mut generator = orders_svc::tools::generate::Generator::new(31, 3);
        let payloads: Vec<Vec<u8>> = (0..20_000).map(|_| generator.order().to_json()).collect();
        let ends = per_partition(&setup.produce(&payloads.iter().map(Vec::as_slice).collect::<Vec<_>>()), 4);
        let config = || {
            let mut config = setup.config();
            config.ingest.batch_max_messages = 200;
            if let Some(strategy) = strategy {
                config.kafka.properties.insert("partition.assignment.strategy".into(), strategy.into());
            }
            config
        };
        let written = || db.count("SELECT coalesce(sum(messages), 0)::bigint FROM consumer_offsets");

        let first = Running::start(config());
        wait_for("the first batches", Duration::from_secs(60), || (written() > 0).then_some(()));
        let second = Running::start(config());
        wait_for("a rebalance to give the second instance partitions", Duration::from_secs(60), || {
            (second.health().assigned_partitions() > 0).then_some(())
        });
        let third = Running::start(config());
        wait_for("a rebalance to give the third instance partitions", Duration::from_secs(60), || {
            (third.health().assigned_partitions() > 0).then_some(())
        });
        assert!(written() < 20_000, "{strategy:?}: the backlog was written before the instances joined");
        second.stop();
        setup.wait_committed(&ends, Duration::from_secs(120));
        first.stop();
        third.stop();

        assert_eq!(written(), 20_000, "{strategy:?}: messages written, each exactly once");
        assert_eq!(db.count("SELECT count(*) FROM orders"), 20_000, "{strategy:?}");
        let stored = db.next_offsets();
        assert_eq!(stored, ends, "{strategy:?}");
    }
}
}

under_both_protocols! {
/// Static membership: a second process started with the `kafka.instance_id` of a
/// running one. Under the classic protocol the newcomer takes the member's place and
/// the first is fenced; under the consumer protocol the newcomer is refused while the
/// first lives. Either way, one of them ends ready and consuming, the other is not ready
/// (its `/readyz` says why) and writes nothing more, and every order is stored once.
fn a_second_process_with_the_same_instance_id_never_writes_beside_the_first() {
    let setup = Setup::new(1);
    let dir = temp_dir("static-member");
    let start = |name: &str| {
        let toml = config_toml(&setup.db.url, &setup.topic, &setup.group, ANY_PORT, "")
            .replace("[http]", "instance_id = \"orders-1\"\n[http]");
        Process::serving(&dir, name, &toml)
    };
    let consumed = |addr| metric(addr, "orders_messages_consumed_total").unwrap_or(0.0);
    let ready = |addr| get_within(addr, "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200);
    let mut generator = orders_svc::tools::generate::Generator::new(71, 1);
    let mut produce = |n: usize| {
        let payloads: Vec<Vec<u8>> = (0..n).map(|_| generator.order().to_json()).collect();
        setup.produce(&payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());
    };

    let (first, a) = start("first");
    wait_ready(a);
    produce(5);
    wait_for("5 orders stored", Duration::from_secs(30), || {
        (setup.db.count("SELECT count(*) FROM orders") == 5).then_some(())
    });
    let (second, b) = start("second");
    // One of the two ready, the other not, for 3 s in a row.
    let (owner, other) = wait_for("one instance ready and the other not", Duration::from_secs(60), || {
        let both = [(a, ready(a)), (b, ready(b))];
        let settled = match both {
            [(a, true), (b, false)] => Some((a, b)),
            [(a, false), (b, true)] => Some((b, a)),
            _ => None,
        }?;
        std::thread::sleep(Duration::from_secs(3));
        (ready(settled.0) && !ready(settled.1)).then_some(settled)
    });
    let readyz = get(other, "/readyz").body;
    assert!(readyz.contains("consumer"), "{readyz}");
    let before = consumed(other);
    produce(5);
    wait_for("10 orders stored", Duration::from_secs(60), || {
        (setup.db.count("SELECT count(*) FROM orders") == 10).then_some(())
    });
    assert_eq!(consumed(other), before, "the instance that is not ready consumed");
    // A batch is counted once its transaction has committed, a moment after its rows
    // can be seen.
    wait_for("the owner to count what it consumed", Duration::from_secs(10), || {
        (consumed(owner) >= 5.0).then_some(())
    });
    assert_eq!(setup.db.count("SELECT next_offset FROM consumer_offsets"), 10);
    drop((first, second));
}
}
