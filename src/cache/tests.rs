//! Unit tests of the cache: bounds and eviction, the miss path and its single flight, the
//! age limit; `lead` those of reads led for a request that hands its miss over;
//! `listener` those of how it follows other writers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::model::{Order, StoredOrder};

mod lead;
mod listener;

pub(crate) fn order(uid: &str) -> Order {
    let mut o = crate::model::decode(Some(include_bytes!("../../demo/model.json")), &Default::default()).unwrap();
    o.order_uid = uid.to_string();
    o.payment.transaction = uid.to_string();
    o
}

#[test]
fn database_waits_leave_a_worker_free() {
    let waits = |toml: &str, workers| Limits::new(&crate::config::Config::parse(toml).unwrap().cache, workers);
    assert_eq!(waits("", 4).max_database_waits, 2);
    assert_eq!(waits("[http]\nworkers = 1\n", 1).max_database_waits, 1);
    assert_eq!(waits("[cache]\nmax_database_waits = 3\n", 4).max_database_waits, 3);
}

fn enc(uid: &str) -> Encoded {
    order(uid).encode()
}

/// Publishes `orders` as a batch of their own, nothing notified while it was written.
pub(crate) fn publish(c: &Cache, orders: &[Encoded]) {
    let batch = c.writing(orders.iter().map(|e| e.order.order_uid.as_str()));
    c.publish(batch, orders);
}

fn cache(max_orders: usize) -> Cache {
    Cache::new(Limits { max_orders, max_bytes: usize::MAX, negative_ttl: Duration::from_secs(60), ..limits() })
}

/// Bounds for tests: room for 16 requests on the database, waits of 5 s.
pub(crate) fn limits() -> Limits {
    Limits {
        max_orders: 10,
        max_bytes: 1 << 20,
        negative_ttl: Duration::ZERO,
        max_database_waits: 16,
        database_wait: Duration::from_secs(5),
        max_age: None,
    }
}

/// `o` as PostgreSQL gives it back: its document, with the digest stored with it.
fn from_db(o: Order) -> StoredOrder {
    let e = o.encode();
    StoredOrder { uid: e.order.order_uid, json: e.json, sha256: e.sha256.to_vec(), stored_at: 0 }
}

fn never() -> anyhow::Result<Option<StoredOrder>> {
    panic!("the database must not be read")
}

fn hit(cache: &Cache, uid: &str) -> Option<Arc<CachedOrder>> {
    cache.lookup(uid, never).unwrap().map(|found| {
        assert!(!found.stale);
        found.order
    })
}

/// The entry for `uid`, marked used, as a lookup finds it; counts nothing.
fn held(cache: &Cache, uid: &str) -> Option<Arc<CachedOrder>> {
    cache.held(&cache.state.read(), uid).map(|(order, _)| order)
}

fn change(uid: &str, encoded: &Encoded) -> Change {
    Change { uid: uid.into(), version: encoded.version() }
}

fn city(found: &CachedOrder) -> String {
    serde_json::from_slice::<Order>(&found.json).unwrap().delivery.city
}

fn moved(uid: &str, to: &str) -> Order {
    let mut o = order(uid);
    o.delivery.city = to.into();
    o
}

#[test]
fn published_order_is_served_as_its_json() {
    let c = cache(10);
    publish(&c, &[enc("a")]);
    let got = hit(&c, "a").unwrap();
    assert_eq!(&got.json[..], order("a").to_json().as_slice());
    assert_eq!(got.etag.len(), 26);
    assert_eq!(c.stats.hits.get(), 1);
}

#[test]
fn newer_version_replaces_older_and_changes_the_etag() {
    let c = cache(10);
    publish(&c, &[enc("a")]);
    let first = hit(&c, "a").unwrap();
    let mut changed = order("a");
    changed.delivery.city = "Haifa".into();
    publish(&c, &[changed.encode()]);
    let second = hit(&c, "a").unwrap();
    assert_ne!(first.etag, second.etag);
    assert!(std::str::from_utf8(&second.json).unwrap().contains("\"city\":\"Haifa\""));
    assert_eq!(c.len(), 1);
}

#[test]
fn least_recently_used_goes_first() {
    let c = cache(3);
    publish(&c, &[enc("a"), enc("b"), enc("c")]);
    hit(&c, "a");
    publish(&c, &[enc("d")]);
    assert!(c.contains("a") && c.contains("c") && c.contains("d"));
    assert!(!c.contains("b"));
    hit(&c, "c");
    publish(&c, &[enc("e")]);
    assert!(!c.contains("a"));
    assert_eq!(c.len(), 3);
    assert_eq!(c.stats.evictions.get(), 2);
}

/// A batch larger than one hold of the lock goes in, piece after piece, in its order:
/// past the bound, its first orders are the ones evicted.
#[test]
fn a_large_batch_is_published_whole_and_in_order() {
    let c = cache(2 * PUBLISH_PIECE);
    let batch: Vec<Encoded> = (0..2 * PUBLISH_PIECE + 500).map(|i| enc(&format!("o{i}"))).collect();
    publish(&c, &batch);
    assert_eq!(c.len(), 2000);
    assert!(!c.contains("o0") && !c.contains("o499"));
    assert!(c.contains("o500") && c.contains("o1000") && c.contains("o2499"));
    assert_eq!(c.stats.evictions.get(), 500);
}

#[test]
fn byte_bound_holds() {
    let one = CachedOrder::new(&enc("a")).size();
    let c =
        Cache::new(Limits { max_orders: 100, max_bytes: one * 2 + one / 2, negative_ttl: Duration::ZERO, ..limits() });
    publish(&c, &[enc("a"), enc("b"), enc("c")]);
    assert_eq!(c.len(), 2);
    assert!(c.bytes() <= one * 2 + one / 2);
    assert!(!c.contains("a"));
}

#[test]
fn warm_keeps_the_newest_when_they_do_not_all_fit() {
    let c = cache(3);
    let stored = |uid: &str| {
        let e = enc(uid);
        let stored = StoredOrder { uid: uid.into(), json: e.json, sha256: e.sha256.to_vec(), stored_at: 0 };
        Arc::new(CachedOrder::stored(stored))
    };
    c.warm(
        vec![(2, stored("b")), (3, stored("newest")), (1, stored("oldest")), (2, stored("a"))].into_iter().collect(),
    );
    assert!(c.contains("newest") && c.contains("a") && c.contains("b") && !c.contains("oldest"));
    // Of the two of equal age, "b" was given first: it goes first.
    publish(&c, &[enc("new")]);
    assert!(c.contains("newest") && c.contains("a") && !c.contains("b"));
    let e = enc("a");
    assert_eq!(&*held(&c, "a").unwrap().json, &*e.json);
    assert_eq!(held(&c, "a").unwrap().etag, CachedOrder::new(&e).etag);
}

/// Into a cache that already holds orders (published before the warm-up ended), the
/// warm-up's orders are put in oldest first, after those held: an order held is replaced
/// by the warm-up's copy, and the oldest of the warm-up's are evicted first.
#[test]
fn warm_into_a_cache_that_holds_orders_puts_them_in_oldest_first() {
    let c = cache(3);
    publish(&c, &[enc("held"), enc("a")]);
    let stored = |uid: &str| Arc::new(CachedOrder::new(&moved(uid, "Haifa").encode()));
    c.warm(vec![(5, stored("b")), (1, stored("a")), (3, stored("c"))].into_iter().collect());
    // "held" was the least recently used: evicted for "c", then "b".
    assert_eq!(c.len(), 3);
    assert!(!c.contains("held") && c.contains("a") && c.contains("b") && c.contains("c"));
    assert_eq!(city(&held(&c, "a").unwrap()), "Haifa");
    assert_eq!(c.stats.evictions.get(), 1);
    // Of the warm-up's, "a" went in first and "c" next: "a" was read since, so "c" goes.
    publish(&c, &[enc("d")]);
    assert!(!c.contains("c") && c.contains("a") && c.contains("b") && c.contains("d"));
}

/// At the start, into an empty cache: an id given twice is held once, counted once,
/// and the later of the two is kept.
#[test]
fn warm_holds_an_id_given_twice_once() {
    let c = cache(10);
    let stored = |uid: &str, json: &str| {
        let sha256 = vec![json.len() as u8; 32];
        let json: Arc<[u8]> = json.as_bytes().into();
        Arc::new(CachedOrder::stored(StoredOrder { uid: uid.into(), json, sha256, stored_at: 0 }))
    };
    let (first, later, other) = (stored("a", "{\"v\":1}"), stored("a", "{\"v\":22}"), stored("b", "{}"));
    c.warm(vec![(1, first), (2, later.clone()), (1, other.clone())].into_iter().collect());
    assert_eq!(c.len(), 2);
    assert_eq!(c.bytes(), later.size() + other.size());
    assert_eq!(&*held(&c, "a").unwrap().json, b"{\"v\":22}");
    // The age index holds each entry once: both are evicted in turn, "b" first ("a"
    // was read since).
    publish(&c, &(0..9).map(|i| enc(&format!("n{i}"))).collect::<Vec<_>>());
    assert!(!c.contains("b") && c.contains("a") && c.len() == 10);
    publish(&c, &[enc("last")]);
    assert!(!c.contains("a") && c.len() == 10);
}

#[test]
fn miss_reads_once_then_serves_from_memory() {
    let c = cache(10);
    let got = c.lookup("a", || Ok(Some(from_db(order("a"))))).unwrap().unwrap();
    assert_eq!(&*got.uid, "a");
    assert_eq!(&*hit(&c, "a").unwrap().uid, "a");
    assert_eq!(c.stats.db_reads.get(), 1);
}

#[test]
fn unknown_id_is_remembered_until_the_consumer_stores_it() {
    let c = cache(10);
    assert!(c.lookup("x", || Ok(None)).unwrap().is_none());
    assert!(c.lookup("x", never).unwrap().is_none());
    assert_eq!(c.stats.negative_hits.get(), 1);
    publish(&c, &[enc("x")]);
    assert_eq!(&*hit(&c, "x").unwrap().uid, "x");
}

#[test]
fn database_errors_are_not_remembered() {
    let c = cache(10);
    assert_eq!(c.lookup("x", || Err(anyhow::anyhow!("down"))).unwrap_err(), Unavailable::Failed("down".into()));
    assert!(c.lookup("x", || Ok(None)).unwrap().is_none());
    assert_eq!(c.stats.db_reads.get(), 2);
}

/// A request that looked at the cache while another read the order, and reaches
/// the flights once that read has ended, takes what the read found instead of
/// reading again (`read_path::concurrent_misses_for_an_unknown_id_read_postgres_once`
/// saw two reads under load).
#[test]
fn a_request_late_for_a_read_takes_what_it_found() {
    let c = cache(10);
    c.listening();
    assert!(c.lookup("gone", || Ok(None)).unwrap().is_none());
    assert!(c.lookup("here", || Ok(Some(from_db(order("here"))))).unwrap().is_some());
    let again = || -> anyhow::Result<Option<StoredOrder>> { panic!("read again") };
    assert!(c.load_once("gone", true, again).unwrap().is_none());
    assert_eq!(&*c.load_once("here", true, again).unwrap().unwrap().uid, "here");
    assert_eq!(c.stats.db_reads.get(), 2);
}

#[test]
fn concurrent_misses_for_one_uid_read_the_database_once() {
    let c = Arc::new(cache(10));
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (c, loads, start) = (c.clone(), loads.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                c.lookup("slow", || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(Some(from_db(order("slow"))))
                })
                .unwrap()
                .unwrap()
                .uid
                .clone()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(&*t.join().unwrap(), "slow");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[test]
fn a_read_overtaken_by_the_consumer_is_not_kept() {
    let c = cache(10);
    let mut newer = order("a");
    newer.delivery.city = "Newer".into();
    let got = c
        .lookup("a", || {
            // The consumer commits and publishes a newer version while we read.
            publish(&c, &[newer.clone().encode()]);
            Ok(Some(from_db(order("a"))))
        })
        .unwrap()
        .unwrap();
    assert!(!std::str::from_utf8(&got.json).unwrap().contains("Newer"));
    assert!(std::str::from_utf8(&hit(&c, "a").unwrap().json).unwrap().contains("Newer"));
}

/// A notification that arrives while a miss reads (the order was written just before)
/// names a version: a read that found that very version is kept, one that found
/// another is not.
#[test]
fn a_read_of_the_version_notified_meanwhile_is_kept_and_of_another_is_not() {
    let c = cache(10);
    let stored = order("a");
    let got = c
        .lookup("a", || {
            c.changed(&[change("a", &stored.clone().encode())]);
            Ok(Some(from_db(stored.clone())))
        })
        .unwrap()
        .unwrap();
    assert_eq!(city(&got.order), city(&held(&c, "a").unwrap()));
    assert_eq!(c.stats.db_reads.get(), 1);

    let newer = moved("b", "Newer");
    c.lookup("b", || {
        c.changed(&[change("b", &newer.clone().encode())]);
        Ok(Some(from_db(order("b"))))
    })
    .unwrap();
    assert!(held(&c, "b").is_none());
}

/// A clock the test moves: `Clock::micros` starts at 1,000 s past the epoch.
#[derive(Clone, Default)]
struct TestClock(Arc<std::sync::atomic::AtomicI64>);

impl TestClock {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn micros(&self) -> i64 {
        1_000_000_000 + self.0.load(Ordering::SeqCst)
    }
}

fn cache_with_max_age(secs: u64) -> (Cache, TestClock) {
    let clock = TestClock::default();
    let limits = Limits { max_age: Some(Duration::from_secs(secs)), ..limits() };
    (Cache::with_clock(limits, Box::new(clock.clone())), clock)
}

#[test]
fn an_entry_past_the_age_limit_is_read_again_and_kept_afresh() {
    let (c, clock) = cache_with_max_age(60);
    publish(&c, &[enc("a")]);
    clock.advance(Duration::from_secs(60));
    assert_eq!(city(&hit(&c, "a").unwrap()), "Kiryat Mozkin");
    clock.advance(Duration::from_secs(1));
    let got = c.lookup("a", || Ok(Some(from_db(moved("a", "Haifa"))))).unwrap().unwrap();
    assert_eq!((city(&got), got.stale), ("Haifa".to_string(), false));
    assert_eq!((c.stats.expirations.get(), c.stats.db_reads.get(), c.stats.hits.get()), (1, 1, 1));
    // Kept afresh: its age counts from the read.
    clock.advance(Duration::from_secs(59));
    assert_eq!(city(&hit(&c, "a").unwrap()), "Haifa");
    assert_eq!(c.stats.expirations.get(), 1);
}

#[test]
fn an_expired_entry_is_served_only_as_stale_when_the_read_fails() {
    let (c, clock) = cache_with_max_age(60);
    publish(&c, &[enc("a")]);
    clock.advance(Duration::from_secs(61));
    let got = c.lookup("a", || Err(anyhow::anyhow!("down"))).unwrap().unwrap();
    assert_eq!((city(&got), got.stale), ("Kiryat Mozkin".to_string(), true));
    assert_eq!((c.stats.expirations.get(), c.stats.stale_served.get()), (1, 1));
}

#[test]
fn warmed_orders_are_aged_from_when_they_were_stored() {
    let (c, clock) = cache_with_max_age(30);
    let now = clock.micros();
    let stored = |uid: &str| Arc::new(CachedOrder::new(&enc(uid)));
    c.warm(vec![(now - 25_000_000, stored("older")), (now - 5_000_000, stored("newer"))].into_iter().collect());
    clock.advance(Duration::from_secs(10));
    assert!(hit(&c, "newer").is_some());
    let got = c.lookup("older", || Ok(Some(from_db(moved("older", "Haifa"))))).unwrap().unwrap();
    assert_eq!(city(&got), "Haifa");
    assert_eq!(c.stats.expirations.get(), 1);
}

#[test]
fn without_an_age_limit_entries_never_expire() {
    let clock = TestClock::default();
    let c = Cache::with_clock(limits(), Box::new(clock.clone()));
    publish(&c, &[enc("a")]);
    clock.advance(Duration::from_secs(10 * 365 * 24 * 3600));
    assert!(hit(&c, "a").is_some());
    assert_eq!(c.stats.expirations.get(), 0);
}

/// A leader holding the database for 300 ms, and `then` run while it does.
fn while_reading<T>(c: &Arc<Cache>, uid: &str, then: impl FnOnce() -> T) -> T {
    let (c2, uid2) = (c.clone(), uid.to_string());
    let started = Arc::new(std::sync::Barrier::new(2));
    let started2 = started.clone();
    let leader = std::thread::spawn(move || {
        c2.lookup(&uid2, || {
            started2.wait();
            std::thread::sleep(Duration::from_millis(300));
            Ok(Some(from_db(order(&uid2))))
        })
        .unwrap()
    });
    started.wait();
    let result = then();
    assert_eq!(&*leader.join().unwrap().unwrap().uid, uid);
    result
}

#[test]
fn past_the_budget_a_miss_is_refused_at_once_and_a_held_copy_served() {
    let c = Arc::new(Cache::new(Limits { max_database_waits: 1, ..limits() }));
    publish(&c, &[enc("held")]);
    c.listener_lost();
    let (busy, copy) = while_reading(&c, "slow", || {
        (c.lookup("other", never).unwrap_err(), c.lookup("held", never).unwrap().unwrap())
    });
    assert_eq!(busy, Unavailable::Busy);
    assert!(copy.stale);
    assert_eq!(c.stats.database_busy.get(), 2);
    // The place is free again.
    assert_eq!(&*c.lookup("other", || Ok(Some(from_db(order("other"))))).unwrap().unwrap().uid, "other");
}

#[test]
fn a_request_waits_for_another_ones_read_only_until_its_deadline() {
    let c = Arc::new(Cache::new(Limits { database_wait: Duration::from_millis(50), ..limits() }));
    let waited = while_reading(&c, "slow", || c.lookup("slow", never));
    assert_eq!(waited.unwrap_err(), Unavailable::Timeout);
}

/// A request that joined a read which then panicked gets that read's failure: it does
/// not read for itself (its own read would find the order), nor wait until its deadline.
#[test]
fn a_read_that_panics_fails_its_waiters_instead_of_leaving_them_waiting() {
    let c = Arc::new(cache(10));
    let own_reads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(std::sync::Barrier::new(2));
    let (c2, own_reads2, start2) = (c.clone(), own_reads.clone(), start.clone());
    let waiter = std::thread::spawn(move || {
        start2.wait();
        c2.lookup("p", || {
            own_reads2.fetch_add(1, Ordering::SeqCst);
            Ok(Some(from_db(order("p"))))
        })
    });
    let leader = c.lookup("p", || {
        start.wait();
        // Fails only once the other request waits on this read (or after 5 s, when the
        // assertions below fail).
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.state.read().flights.waiting("p") == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("a bug in the read")
    });
    assert_eq!(leader.unwrap_err(), Unavailable::Failed("the read of order p panicked".into()));
    assert_eq!(waiter.join().unwrap().unwrap_err(), Unavailable::Failed("the read of order p panicked".into()));
    assert_eq!((own_reads.load(Ordering::SeqCst), c.stats.db_reads.get()), (0, 1));
    assert_eq!(&*c.lookup("p", || Ok(Some(from_db(order("p"))))).unwrap().unwrap().uid, "p");
}
