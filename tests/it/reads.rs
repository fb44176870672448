//! The reads against PostgreSQL alone: the read of an order, prepared once per
//! connection; the shared reads behind the cache's misses (`store::Readers`); and the
//! read that fills the cache at start.

use std::sync::Arc;
use std::time::Duration;

use orders_svc::model::{Message, Order};
use orders_svc::store;
use orders_svc::tools::generate::Generator;

use crate::store::{at, migrated, write};
use crate::support::*;

/// The read of an order is prepared once per connection; if a migration changes a table
/// under it, the next read fails once and the one after prepares it again.
#[test]
fn a_prepared_read_that_fails_is_prepared_again() {
    let db = migrated();
    let x = Generator::new(6, 2).order();
    write(&db, &[(&at(0, 1), &x)]);
    let json = x.clone().encode().json;
    let mut conn = store::Conn::from(db.client());
    let read = |conn: &mut store::Conn| store::order(conn, &x.order_uid).map(|o| o.map(|o| o.json));
    assert_eq!(read(&mut conn).unwrap(), Some(json.clone()));
    db.client().batch_execute("ALTER TABLE orders ALTER COLUMN document TYPE varchar(1000000)").unwrap();
    let error = format!("{:#}", read(&mut conn).unwrap_err());
    assert!(error.contains("cached plan must not change result type"), "{error}");
    assert_eq!(read(&mut conn).unwrap(), Some(json));
}

/// `n` generated orders (from `seed`), written in one batch.
fn written_orders(db: &TestDb, seed: u64, n: i64) -> Vec<Order> {
    let mut generator = Generator::new(seed, 2);
    let orders: Vec<Order> = (0..n).map(|_| generator.order()).collect();
    let messages: Vec<Message> = (0..n).map(|i| at(0, i)).collect();
    write(db, &orders.iter().zip(&messages).map(|(o, m)| (m, o)).collect::<Vec<_>>());
    orders
}

/// Shared reads on a pool of two connections to `url`, and the count of their statements.
fn readers_on_two_connections(url: String) -> (Arc<store::Readers>, prometheus::IntCounter) {
    let database = orders_svc::config::Database { url, pool_size: 2, ..Default::default() };
    let statements = prometheus::IntCounter::new("statements", "statements").unwrap();
    (Arc::new(store::Readers::start(Arc::new(store::Pool::new(&database)), statements.clone()).unwrap()), statements)
}

/// The misses of requests waiting at the same time are read together. With one read
/// running (the database held), 15 more requests wait for it; the 16th starts a second
/// read, of all 16, beside it; with both connections taken, the next waits. Released,
/// the first read to end goes on with it: 18 ids in 3 statements. Each request gets its own
/// order, or none for an id PostgreSQL does not have.
#[test]
fn misses_waiting_together_are_read_in_one_statement() {
    let db = migrated();
    let orders = written_orders(&db, 8, 12);
    let proxy = DbProxy::start();
    let (readers, statements) = readers_on_two_connections(proxy.url(&db));
    let mut ids: Vec<String> = orders.iter().map(|o| o.order_uid.clone()).collect();
    ids.extend((0..6).map(|i| format!("unknown{i}")));
    let read = |uid: &String| {
        let (readers, uid) = (readers.clone(), uid.clone());
        std::thread::spawn(move || readers.read(&uid).unwrap().map(|o| (o.uid, o.json)))
    };

    proxy.hold();
    let mut threads = vec![read(&ids[0])];
    wait_for("one read running", Duration::from_secs(10), || (readers.in_progress() == (1, 0)).then_some(()));
    threads.extend(ids[1..16].iter().map(read));
    wait_for("15 ids waiting", Duration::from_secs(10), || (readers.in_progress() == (1, 15)).then_some(()));
    threads.push(read(&ids[16]));
    wait_for("a second read, of all 16", Duration::from_secs(10), || (readers.in_progress() == (2, 0)).then_some(()));
    threads.push(read(&ids[17]));
    wait_for("one id waiting", Duration::from_secs(10), || (readers.in_progress() == (2, 1)).then_some(()));
    proxy.release();
    let answers: Vec<Option<(String, Arc<[u8]>)>> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let expected: Vec<Option<(String, Arc<[u8]>)>> = ids
        .iter()
        .map(|id| orders.iter().find(|o| &o.order_uid == id).map(|o| (id.clone(), o.clone().encode().json)))
        .collect();
    assert_eq!(answers, expected);
    assert_eq!((answers.iter().filter(|a| a.is_none()).count(), statements.get()), (6, 3));
    assert_eq!(readers.in_progress(), (0, 0));
}

/// An id handed over (`Readers::hand`) waits with the others and is read with them; the
/// reading thread gives each its answer (the order, or None for an id PostgreSQL does
/// not have). Once the readers stop, an id handed over is answered at once, as failed.
#[test]
fn ids_handed_over_are_read_with_those_waiting_and_answered_where_read() {
    let db = migrated();
    let orders = written_orders(&db, 10, 2);
    let proxy = DbProxy::start();
    let (readers, statements) = readers_on_two_connections(proxy.url(&db));
    let (uid0, uid1) = (orders[0].order_uid.clone(), orders[1].order_uid.clone());
    proxy.hold();
    let first = {
        let readers = readers.clone();
        std::thread::spawn(move || readers.read(&uid0).unwrap().map(|o| o.uid))
    };
    wait_for("one read running", Duration::from_secs(10), || (readers.in_progress() == (1, 0)).then_some(()));
    let (sender, answers) = crossbeam_channel::unbounded();
    let hand = |uid: &str| {
        let (sender, asked) = (sender.clone(), uid.to_string());
        readers.hand(
            uid.to_string(),
            Box::new(move |answer| {
                let thread = std::thread::current().name().unwrap_or_default().to_string();
                sender.send((asked, answer.map(|o| o.map(|o| o.uid)), thread)).unwrap();
            }),
        );
    };
    hand(&uid1);
    hand("unknown1");
    wait_for("two ids waiting", Duration::from_secs(10), || (readers.in_progress() == (1, 2)).then_some(()));
    proxy.release();
    assert_eq!(first.join().unwrap(), Some(orders[0].order_uid.clone()));
    let mut got: Vec<_> = answers.iter().take(2).collect();
    got.sort();
    let reader = |(uid, answer, thread): (String, Result<Option<String>, String>, String)| {
        assert!(thread.starts_with("order-read-"), "answered on {thread}");
        (uid, answer)
    };
    let got: Vec<_> = got.into_iter().map(reader).collect();
    let mut expected = vec![(uid1.clone(), Ok(Some(uid1.clone()))), ("unknown1".to_string(), Ok(None))];
    expected.sort();
    assert_eq!((got, statements.get()), (expected, 2));

    readers.stop();
    hand(&uid1);
    let (_, answer, _) = answers.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(answer, Err("the service is stopping".to_string()));
}

/// A reading thread held up giving an answer (a client that does not take its
/// response, say) does not hold up the ids asked for after it: once one has waited long
/// enough, the next id asked for wakes another thread, which reads them.
#[test]
fn an_answer_held_up_does_not_hold_up_the_ids_asked_for_after_it() {
    let db = migrated();
    let orders = written_orders(&db, 11, 3);
    let (readers, _) = readers_on_two_connections(db.url.clone());
    let (held_sender, held) = crossbeam_channel::bounded::<()>(1);
    let (release_sender, release) = crossbeam_channel::bounded::<()>(1);
    readers.hand(
        orders[0].order_uid.clone(),
        Box::new(move |_| {
            held_sender.send(()).unwrap();
            release.recv().unwrap();
        }),
    );
    held.recv_timeout(Duration::from_secs(10)).expect("the first answer is being given");
    let (sender, answers) = crossbeam_channel::unbounded();
    for order in &orders[1..] {
        let sender = sender.clone();
        readers
            .hand(order.order_uid.clone(), Box::new(move |answer| sender.send(answer.unwrap().unwrap().uid).unwrap()));
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut got: Vec<String> = (0..2).filter_map(|_| answers.recv_timeout(Duration::from_secs(5)).ok()).collect();
    release_sender.send(()).unwrap();
    got.sort();
    let mut expected = vec![orders[1].order_uid.clone(), orders[2].order_uid.clone()];
    expected.sort();
    assert_eq!(got, expected, "answered while the first answer is held up");
}

/// Many requests missing at once, over and over, on two connections: every request gets
/// its own answer, and when all have, no read is left counted as running (a place handed
/// on twice would be, and the ids waiting for it would wait for ever).
#[test]
fn readers_under_load_answer_everyone_and_give_back_every_place() {
    let db = migrated();
    let orders = written_orders(&db, 9, 20);
    let (readers, _) = readers_on_two_connections(db.url.clone());
    let uids: Arc<Vec<String>> = Arc::new(orders.iter().map(|o| o.order_uid.clone()).collect());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (readers, uids) = (readers.clone(), uids.clone());
            std::thread::spawn(move || {
                let mut wrong = 0;
                for i in 0..300 {
                    let uid = if (t + i) % 5 == 0 { format!("unknown{t}x{i}") } else { uids[(t * 7 + i) % 20].clone() };
                    let found = readers.read(&uid).unwrap();
                    if found.as_ref().map(|o| o.uid.as_str()) != uids.contains(&uid).then_some(uid.as_str()) {
                        wrong += 1;
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(wrong, 0);
    // A reading thread counts its read as ended once it finds nothing more waiting, a
    // moment after its last answer was given.
    wait_for("every read to be counted as ended", Duration::from_secs(5), || {
        (readers.in_progress() == (0, 0)).then_some(())
    });
}

/// The read that fills the cache gives every stored order as the read of one order does:
/// its document, which is its JSON, with the digest it was stored with. With more stored
/// than the limit, it gives the most recently stored, ties broken by id.
#[test]
fn the_warm_read_gives_each_stored_order_whole() {
    let db = migrated();
    let mut generator = Generator::new(7, 3);
    let orders: Vec<Order> = (0..300).map(|_| generator.order()).collect();
    assert!(orders.iter().any(|o| o.items.len() == 3), "some orders have several items");
    let messages: Vec<Message> = (0..300).map(|i| at(0, i)).collect();
    // Three batches, so three ages: 0..100 oldest, 200..300 newest.
    for part in 0..3 {
        let batch: Vec<(&Message, &Order)> =
            (part * 100..part * 100 + 100).map(|i| (&messages[i], &orders[i])).collect();
        write(&db, &batch);
    }
    let mut client = db.client();
    let mut conn = store::Conn::from(db.client());
    let by_uid: std::collections::HashMap<&str, &Order> = orders.iter().map(|o| (o.order_uid.as_str(), o)).collect();
    let mut read_all = |limit: usize| {
        let mut all = Vec::new();
        assert_eq!(store::stored_orders(&mut client, limit, None, &mut all).unwrap(), all.len());
        all
    };
    let all = read_all(1000);
    assert_eq!(all.len(), 300);
    for stored in &all {
        let encoded = by_uid[stored.uid.as_str()].clone().encode();
        assert_eq!((&*stored.json, &stored.sha256[..]), (&*encoded.json, &encoded.sha256[..]), "{}", stored.uid);
        let single = store::order(&mut conn, &stored.uid).unwrap().expect("stored");
        assert_eq!(
            (single.uid.as_str(), &*single.json, &single.sha256[..], single.stored_at),
            (stored.uid.as_str(), &*stored.json, &stored.sha256[..], stored.stored_at)
        );
    }
    let ages: std::collections::BTreeSet<i64> = all.iter().map(|s| s.stored_at).collect();
    assert_eq!(ages.len(), 3);

    // The newest batch whole, and of the middle one the 50 first by id.
    let kept = read_all(150);
    assert_eq!(kept.len(), 150);
    let mut middle: Vec<&str> = orders[100..200].iter().map(|o| o.order_uid.as_str()).collect();
    middle.sort_unstable();
    let mut expected: Vec<&str> = orders[200..].iter().map(|o| o.order_uid.as_str()).collect();
    expected.extend(&middle[..50]);
    expected.sort_unstable();
    let mut got: Vec<&str> = kept.iter().map(|s| s.uid.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, expected);
}

/// With an age limit, the read that fills the cache skips orders stored longer ago, and
/// the count limit applies to the orders within it.
#[test]
fn the_warm_read_skips_orders_stored_before_the_age_limit() {
    let db = migrated();
    let mut generator = Generator::new(11, 1);
    let orders: Vec<Order> = (0..30).map(|_| generator.order()).collect();
    let messages: Vec<Message> = (0..30).map(|i| at(0, i)).collect();
    let batch: Vec<(&Message, &Order)> = messages.iter().zip(&orders).collect();
    write(&db, &batch);
    // 10 stored two hours ago, 10 half an hour ago, 10 now.
    let uids = |range: std::ops::Range<usize>| orders[range].iter().map(|o| o.order_uid.clone()).collect::<Vec<_>>();
    for (range, ago) in [(0..10, "2 hours"), (10..20, "30 minutes")] {
        db.client()
            .execute(
                &format!("UPDATE orders SET ingested_at = now() - interval '{ago}' WHERE order_uid = ANY($1)"),
                &[&uids(range)],
            )
            .unwrap();
    }
    let mut client = db.client();
    let mut read = |limit: usize, age: Option<Duration>| {
        let mut all = Vec::new();
        store::stored_orders(&mut client, limit, age, &mut all).unwrap();
        let mut got: Vec<String> = all.into_iter().map(|s| s.uid).collect();
        got.sort_unstable();
        got
    };
    let sorted = |mut v: Vec<String>| {
        v.sort_unstable();
        v
    };
    assert_eq!(read(100, None).len(), 30);
    assert_eq!(read(100, Some(Duration::from_secs(3600))), sorted(uids(10..30)));
    assert_eq!(read(100, Some(Duration::from_secs(600))), sorted(uids(20..30)));
    assert_eq!(read(5, Some(Duration::from_secs(3600))).len(), 5);
    assert!(read(5, Some(Duration::from_secs(3600))).iter().all(|uid| uids(20..30).contains(uid)));
}
