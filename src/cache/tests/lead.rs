//! Unit tests of reads led for a request that does not wait for them (`Cache::lead`):
//! when one is led, how others join it, and how it ends.

use std::time::Duration;

use super::*;

/// A miss is handed over (`Cache::lead`) only when nothing is to be waited for or
/// refused: every other request is left to `lookup`, and counted by it, not here.
#[test]
fn a_read_is_led_only_for_a_miss_with_nothing_to_wait_for() {
    let c = Arc::new(Cache::new(Limits { max_database_waits: 2, negative_ttl: Duration::from_secs(60), ..limits() }));
    publish(&c, &[enc("held")]);
    assert!(c.lookup("gone", || Ok(None)).unwrap().is_none());
    assert!(c.lead("held").is_none(), "held");
    assert!(c.lead("gone").is_none(), "remembered as missing");
    let (misses, reads) = (c.stats.misses.get(), c.stats.db_reads.get());

    let lead = c.lead("a").expect("a miss with nothing to wait for");
    assert_eq!((lead.uid(), c.stats.misses.get(), c.stats.db_reads.get()), ("a", misses + 1, reads + 1));
    assert!(c.lead("a").is_none(), "its read is in flight");
    let other = c.lead("b").expect("the second permit");
    assert!(c.lead("c").is_none(), "both permits are taken");
    assert_eq!(c.lookup("c", never).unwrap_err(), Unavailable::Busy);
    let found = lead.end(Ok(Some(from_db(order("a"))))).unwrap().unwrap();
    assert_eq!(&*found.uid, "a");
    assert_eq!(&*hit(&c, "a").unwrap().uid, "a");
    assert!(other.end(Ok(None)).unwrap().is_none());
    assert!(c.lead("b").is_none(), "remembered as missing once read");

    c.listener_lost();
    assert!(c.lead("c").is_none(), "not fresh: a worker reads, and may serve a copy");
    assert_eq!((c.stats.misses.get(), c.stats.db_reads.get()), (misses + 3, reads + 2));
}

/// A request that joins a read led elsewhere gets its outcome; what it found is kept
/// unless the consumer committed another version meanwhile, as for `lookup`'s reads.
#[test]
fn a_led_read_is_joined_and_kept_as_a_lookup_s_read_is() {
    let c = Arc::new(cache(10));
    let lead = c.lead("a").unwrap();
    let c2 = c.clone();
    let joined = std::thread::spawn(move || c2.lookup("a", never).unwrap().unwrap().order.uid.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.state.read().flights.waiting("a") == 0 {
        assert!(Instant::now() < deadline, "the request joined the read");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = lead.end(Ok(Some(from_db(order("a")))));
    assert_eq!(&*joined.join().unwrap(), "a");
    assert_eq!(c.stats.db_reads.get(), 1);

    let lead = c.lead("b").unwrap();
    publish(&c, &[moved("b", "Newer").encode()]);
    let found = lead.end(Ok(Some(from_db(order("b"))))).unwrap().unwrap();
    assert_ne!(city(&found), "Newer");
    assert_eq!(city(&hit(&c, "b").unwrap()), "Newer");
}

/// A read led and dropped without an end (its request's answer panicked) fails the
/// requests that joined it and gives its permit back: the order can be read again.
#[test]
fn a_led_read_dropped_unended_fails_its_joiners_and_frees_its_place() {
    let c = Arc::new(Cache::new(Limits { max_database_waits: 1, ..limits() }));
    let lead = c.lead("a").unwrap();
    let c2 = c.clone();
    let joined = std::thread::spawn(move || c2.lookup("a", never));
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.state.read().flights.waiting("a") == 0 {
        assert!(Instant::now() < deadline, "the request joined the read");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(lead);
    assert_eq!(joined.join().unwrap().unwrap_err(), Unavailable::Failed("the read was given up".into()));
    assert!(held(&c, "a").is_none());
    assert!(c.lead("a").is_some());
}
