//! Proof that nothing is lost or doubled when things go wrong: the process killed
//! mid-ingest, PostgreSQL or the broker gone for a while, hostile messages and hostile
//! HTTP.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use orders_svc::model::Order;
use orders_svc::store;
use orders_svc::tools::generate::Generator;
use orders_svc::tools::produce::{Plan, Producer, Sent, send_generated};
use serde_json::Value;

use crate::support::*;

/// Every file of the hostile corpus, put on the topic, ends where its name says: in
/// `rejected_messages` under its rule, or stored and served back exactly.
#[test]
fn hostile_corpus_ends_where_each_message_belongs() {
    let setup = Setup::new(2);
    let db = &setup.db;
    let service = setup.start();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let producer = Producer::new(&brokers(), &setup.topic).unwrap();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        producer.send(Some(name.as_bytes()), &std::fs::read(path).unwrap()).unwrap();
    }
    assert_eq!(producer.flush().unwrap(), files.len() as u64);
    setup.wait_committed(&per_partition(&producer.delivered_ends(), 2), Duration::from_secs(60));

    let mut client = db.client();
    let mut stored = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let expected = name.split_once("--").unwrap().0;
        let rows =
            client.query("SELECT rule FROM rejected_messages WHERE message_key = $1", &[&name.as_bytes()]).unwrap();
        if expected == "stored" {
            assert!(rows.is_empty(), "{name} was rejected");
            // Typed, so unknown fields (one nests 100,000 deep) are skipped, not parsed.
            let sent: Order = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let sent: Value = serde_json::to_value(&sent).unwrap();
            let uid = sent["order_uid"].as_str().unwrap();
            let served = get(service.addr(), &format!("/order/{uid}")).json();
            for field in ["delivery", "payment", "track_number", "internal_signature"] {
                assert_eq!(served[field], sent[field], "{name}: {field}");
            }
            stored += 1;
        } else {
            assert_eq!(rows.len(), 1, "{name} is not one dead letter");
            assert_eq!(rows[0].get::<_, String>("rule"), expected, "{name}");
        }
    }
    assert_eq!(stored, 8);
    assert_eq!(db.count("SELECT count(*) FROM orders"), 8);
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages"), files.len() as i64 - 8);
}

under_both_protocols! {
/// 50,000 generated messages (2 % bad) and the service binary killed with SIGKILL at
/// five random moments while it ingests, started again each time: at the end every
/// valid order is stored and equal to what was produced, every bad message is one dead
/// letter, no message was written twice (the stored offsets count every message written,
/// and they add up to exactly 50,000), and Kafka's committed offsets reach the end of
/// each partition within seconds of the last write.
fn sigkill_five_times_during_ingest_loses_nothing_and_writes_nothing_twice() {
    let setup = Setup::new(4);
    let (db, topic, group) = (&setup.db, &setup.topic, &setup.group);
    store::migrate(&mut db.client()).unwrap();
    // The producer batches as it normally does, so kills land inside record batches and
    // a restarted consumer resumes in the middle of one.
    let producer = Producer::new(&brokers(), topic).unwrap();
    let mut uids = Vec::new();
    let plan = Plan { count: 50_000, seed: 2026, max_items: 3, invalid_rate: 0.02, rate: None };
    let sent = send_generated(&producer, &plan, &mut uids).unwrap();
    assert_eq!(producer.flush().unwrap(), 50_000);
    assert_eq!(sent, Sent { valid: 49_045, invalid: 955 });
    let ends = per_partition(&producer.delivered_ends(), 4);

    let dir = temp_dir("crash");
    // Any free port, chosen at each start: a port chosen once could be taken, between a
    // kill and the next start, by another test's server (it was, once).
    let toml = config_toml(&db.url, topic, group, ANY_PORT, "[ingest]\nbatch_max_messages = 500\n");
    let count = || db.count("SELECT count(*) FROM orders") + db.count("SELECT count(*) FROM rejected_messages");
    let written = || db.count("SELECT coalesce(sum(messages), 0)::bigint FROM consumer_offsets");

    let mut random = Generator::new(7, 1);
    for run in 0..5 {
        let mut process = Process::start(&dir, &format!("run-{run}"), &toml, &[]);
        let before = count();
        // Kill at a random moment after this run has started to write.
        wait_for("the run to write", Duration::from_secs(60), || (count() > before).then_some(()));
        std::thread::sleep(Duration::from_millis(50 + random.order().items[0].sale as u64 * 20));
        process.signal("KILL");
        process.wait();
        // Every message is one row (an order by its uid, a dead letter by its position and
        // payload), written in the same transaction as the stored offsets that count it.
        assert_eq!(written(), count(), "run {run}: the stored offsets and the rows disagree");
        assert!(count() < 50_000, "run {run} finished the stream before it was killed");
    }
    let mut last = Process::start(&dir, "run-5", &toml, &[]);
    wait_for("every message written", Duration::from_secs(180), || (count() == 50_000).then_some(()));
    setup.wait_committed(&ends, Duration::from_secs(10));
    last.signal("TERM");
    assert!(last.wait().success());

    assert_eq!(db.count("SELECT count(*) FROM orders"), 49_045);
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages"), 955);
    // Redelivered: messages written more than once. Each batch adds its message count to
    // its partitions' rows, so a message written twice would count twice.
    assert_eq!(written() - 50_000, 0, "messages written more than once");
    let stored = db.next_offsets();
    assert_eq!(stored, ends);
    let uids = String::from_utf8(uids).unwrap();
    assert_eq!(uids.lines().count(), 49_045);
    // The same seed regenerates the valid orders: compare a sample field for field.
    let mut generator = Generator::new(2026, 3);
    let mut conn = store::Conn::from(db.client());
    for (i, order) in std::iter::from_fn(|| Some(generator.order())).take(49_045).enumerate() {
        if i % 97 == 0 {
            let stored = store::order(&mut conn, &order.order_uid).unwrap().expect("stored");
            assert_eq!(serde_json::from_slice::<Order>(&stored.json).unwrap(), order);
        }
    }
}
}

/// PostgreSQL gone for 15 s in the middle of ingest: cached orders are served all the
/// while without a single 5xx, readiness says why it is not ready, and afterwards the
/// stream is ingested with nothing lost or doubled.
#[test]
fn postgres_gone_for_15_seconds_mid_ingest() {
    let setup = Setup::new(2);
    let db = &setup.db;
    let proxy = DbProxy::start();
    let mut cfg = setup.config_through(&proxy);
    cfg.ingest.retry_max_ms = 1000;
    let service = Running::start(cfg);
    let addr = service.addr();

    let mut generator = Generator::new(15, 3);
    let orders: Vec<Order> = (0..3000).map(|_| generator.order()).collect();
    let payloads: Vec<Vec<u8>> = orders.iter().map(Order::to_json).collect();
    let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let first = setup.produce(&payloads[..1000]);
    wait_for("the first 1,000 in the cache", Duration::from_secs(30), || (service.cache().len() == 1000).then_some(()));

    proxy.cut();
    let rest = setup.produce(&payloads[1000..]);
    let outage = Instant::now();
    let (mut reads, mut not_ready) = (0, false);
    while outage.elapsed() < Duration::from_secs(15) {
        for o in orders[..1000].iter().step_by(25) {
            let r = get(addr, &format!("/order/{}", o.order_uid));
            assert_eq!(r.status, 200, "a cached order during the outage");
            reads += 1;
        }
        let ready = get(addr, "/readyz");
        not_ready |= ready.status == 503 && ready.body.contains("database: ");
    }
    assert!(not_ready, "readiness never said the database was down");
    assert!(reads > 100);
    assert_eq!(db.count("SELECT count(*) FROM orders"), 1000);
    proxy.restore();

    let ends: Vec<i64> = (0..2).map(|p| rest.get(&p).or(first.get(&p)).copied().unwrap_or(0)).collect();
    setup.wait_committed(&ends, Duration::from_secs(90));
    assert_eq!(db.count("SELECT count(*) FROM orders"), 3000);
    let items: usize = orders.iter().map(|o| o.items.len()).sum();
    assert_eq!(db.count("SELECT count(*) FROM order_items"), items as i64);
}

under_both_protocols! {
    /// The topic grows from one partition to two while PostgreSQL is unreachable: the
    /// partitions assigned then (the new one, or under the classic protocol both) wait,
    /// paused, for their stored offsets. Once PostgreSQL answers they are read from
    /// there, and every order produced after is stored.
    fn partitions_assigned_while_postgres_is_down_are_read_once_it_answers() {
        let _ = env_logger::builder().is_test(true).try_init();
        let setup = Setup::new(1);
        let proxy = DbProxy::start();
        let mut cfg = setup.config_through(&proxy);
        cfg.ingest.retry_max_ms = 300;
        let service = Running::start(cfg);
        let addr = service.addr();
        let mut generator = Generator::new(23, 2);
        let first = generator.order();
        setup.produce(&[&first.to_json()]);
        // Its offset committed to Kafka: the consumer is done with it, and idle.
        setup.wait_committed(&[1], Duration::from_secs(30));

        proxy.cut();
        add_partitions(&setup.topic, 2);
        wait_for("both partitions assigned", Duration::from_secs(60), || {
            (metric(addr, "orders_assigned_partitions") == Some(2.0)).then_some(())
        });
        proxy.restore();

        let orders: Vec<Order> = (0..20).map(|_| generator.order()).collect();
        let payloads: Vec<Vec<u8>> = orders.iter().map(Order::to_json).collect();
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let ends = setup.produce(&payloads);
        assert_eq!(ends.keys().copied().collect::<Vec<i32>>(), [0, 1], "orders on both partitions");
        wait_for("all 21 orders stored", Duration::from_secs(30), || {
            (setup.db.count("SELECT count(*) FROM orders") == 21).then_some(())
        });
        let r = get(addr, &format!("/order/{}", orders[19].order_uid));
        assert_eq!(r.json()["order_uid"], orders[19].order_uid.as_str());
    }
}

/// PostgreSQL hangs (a proxy holds every byte, so no connection fails) while 16 misses
/// for unknown ids arrive at once: a cached order, `/healthz`, `/readyz` and `/metrics`
/// each answer within 1 s, then and after the listener has gone quiet. The misses past
/// `cache.max_database_waits` (2 of 4 workers) are answered 503 at once; released, the
/// database answers the other two 404.
#[test]
fn a_hanging_database_blocks_neither_cached_orders_nor_health() {
    let setup = Setup::new(1);
    let proxy = DbProxy::start();
    let mut cfg = setup.config();
    cfg.database.url = proxy.url(&setup.db);
    cfg.http.workers = 4;
    let service = Running::start(cfg);
    let addr = service.addr();
    setup.produce(&[MODEL.as_bytes()]);
    wait_until_served(addr, "/order/b563feb7b2b84b6test");
    wait_ready(addr);

    proxy.hold();
    // Released before the service stops, also when an assertion fails.
    let _release = Released(&proxy);
    let misses: Vec<_> =
        (0..16).map(|i| std::thread::spawn(move || get(addr, &format!("/order/unknown{i:02}")).status)).collect();
    wait_for("the misses to reach the held database", Duration::from_secs(10), || {
        (proxy.held_bytes() > 0).then_some(())
    });
    let answers = |when: &str| -> Vec<(u16, Option<String>)> {
        ["/order/b563feb7b2b84b6test", "/healthz", "/readyz", "/metrics"]
            .iter()
            .map(|path| {
                let r = get_within(addr, path, Duration::from_secs(1))
                    .unwrap_or_else(|e| panic!("{path} {when}: no answer within 1 s ({e})"));
                (r.status, r.header("Cache-Status").map(str::to_string))
            })
            .collect()
    };
    let first = answers("with the database held");
    assert_eq!((first[0].0, first[1].0, first[3].0), (200, 200, 200));
    // Past the silence limit the listener's ping has had no answer: the cached copy is
    // still served, marked, and readiness says why it is not ready.
    std::thread::sleep(Duration::from_secs(4));
    let later = answers("after 4 s more");
    assert_eq!(
        later[0],
        (
            200,
            Some(
                r#"orders-svc; hit; fwd=stale; detail="database unavailable, changes may have been missed""#
                    .to_string()
            )
        )
    );
    assert_eq!((later[1].0, later[2].0, later[3].0), (200, 503, 200));
    let readyz = get(addr, "/readyz").body;
    assert!(readyz.contains("database: no answer on the connection for change notifications"), "{readyz}");

    proxy.release();
    let mut statuses: Vec<u16> = misses.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [[404; 2].as_slice(), &[503; 14]].concat());
    wait_ready(addr);
}

/// Releases a held proxy when dropped.
struct Released<'a>(&'a DbProxy);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Requests meant to hurt: each gets a clean 4xx, and the service keeps answering a
/// normal client, also while 1,000 idle connections are held open.
#[test]
fn hostile_http_gets_clean_4xx_and_the_service_stays_up() {
    let (_setup, service) = service_with_canonical_order();
    let addr = service.addr();

    let get_raw = |target: &[u8]| {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        raw_status(addr, &request)
    };
    for target in [
        &b"/assets/../Cargo.toml"[..],
        b"/assets/..%2f..%2fCargo.toml",
        b"/assets/%2e%2e/%2e%2e/etc/passwd",
        b"/../../etc/passwd",
        b"/assets/style.css%00.txt",
        b"/assets//etc/passwd",
    ] {
        assert_eq!(get_raw(target), Some(404), "{}", String::from_utf8_lossy(target));
    }
    assert_eq!(get_raw(b"/order/%zz%"), Some(400));
    assert_eq!(get_raw(b"/order/%C3%28"), Some(400));
    // Raw bytes outside ASCII: tiny_http refuses the request line itself and closes
    // the connection without an answer; percent-encoded, they reach the route (400).
    assert!(matches!(get_raw(b"/order/\xff\xfe"), None | Some(400)));
    assert_eq!(get_raw(format!("/order/{}", "a".repeat(100 * 1024)).as_bytes()), Some(414));
    let big_header =
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "b".repeat(100 * 1024));
    assert_eq!(raw_status(addr, big_header.as_bytes()), Some(431));
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        let request = format!(
            "{method} /order/b563feb7b2b84b6test HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw_status(addr, request.as_bytes()), Some(405), "{method}");
    }
    assert_eq!(raw_status(addr, b"BREW /coffee HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), Some(404));
    assert_eq!(raw_status(addr, b"this is not http\r\n\r\n"), Some(400));

    let idle: Vec<std::net::TcpStream> =
        (0..1000).map(|_| std::net::TcpStream::connect(addr).expect("an idle connection")).collect();
    let started = Instant::now();
    let r = get(addr, "/order/b563feb7b2b84b6test");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["order_uid"], "b563feb7b2b84b6test");
    eprintln!("with 1000 idle connections open, a normal request took {:?}", started.elapsed());
    // Half-sent requests on some of them, then silence: still no effect on others.
    for mut s in idle.iter().take(100) {
        let _ = s.write_all(b"GET /order/b563feb7b2b84b6test HTTP/1.1\r\nHost:");
    }
    assert_eq!(get(addr, "/healthz").status, 200);
    drop(idle);
    assert_eq!(get(addr, "/readyz").status, 200);
}
