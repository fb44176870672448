//! Unit tests of how the cache follows other writers: notifications, the listener's
//! protocol, and the consumer's batch overtaken by another writer.

use super::*;

#[test]
fn a_notification_drops_other_versions_and_the_memory_of_absence() {
    let c = cache(10);
    publish(&c, &[enc("a"), enc("b")]);
    assert!(c.lookup("x", || Ok(None)).unwrap().is_none());
    let newer = moved("a", "Haifa").encode();
    let dropped = c.changed(&[change("a", &newer), change("b", &enc("b")), change("x", &enc("x"))]);
    assert_eq!((dropped, c.stats.invalidations.get()), (1, 1));
    assert!(!c.contains("a") && c.contains("b"));
    let got = c.lookup("a", || Ok(Some(from_db(moved("a", "Haifa"))))).unwrap().unwrap();
    assert_eq!(city(&got), "Haifa");
    assert_eq!(&*c.lookup("x", || Ok(Some(from_db(order("x"))))).unwrap().unwrap().uid, "x");
}

#[test]
fn a_read_overtaken_by_a_notification_is_not_kept() {
    let c = cache(10);
    let got = c
        .lookup("a", || {
            c.changed(&[change("a", &moved("a", "Newer").encode())]);
            Ok(Some(from_db(order("a"))))
        })
        .unwrap()
        .unwrap();
    assert_eq!(city(&got), "Kiryat Mozkin");
    assert!(!c.contains("a"));
}

#[test]
fn while_not_listening_entries_are_read_again_and_served_stale_only_if_that_fails() {
    let c = cache(10);
    publish(&c, &[enc("a")]);
    c.listener_lost();
    assert!(!c.fresh());
    let got = c.lookup("a", || Ok(Some(from_db(moved("a", "Haifa"))))).unwrap().unwrap();
    assert_eq!((city(&got), got.stale), ("Haifa".to_string(), false));
    // Read during the outage: kept, to be checked when listening again.
    assert!(c.contains("a"));
    let got = c.lookup("a", || Err(anyhow::anyhow!("down"))).unwrap().unwrap();
    assert_eq!((city(&got), got.stale), ("Haifa".to_string(), true));
    assert_eq!(c.stats.stale_served.get(), 1);
    assert_eq!(c.lookup("b", || Err(anyhow::anyhow!("down"))).unwrap_err(), Unavailable::Failed("down".into()));
    assert_eq!(c.stats.hits.get(), 0);
}

#[test]
fn a_read_begun_before_the_listener_was_established_is_not_kept() {
    let c = cache(10);
    c.listener_lost();
    let got = c
        .lookup("a", || {
            c.listener_established();
            Ok(Some(from_db(order("a"))))
        })
        .unwrap();
    assert_eq!(&*got.unwrap().uid, "a");
    assert!(!c.contains("a"));
}

#[test]
fn the_check_after_reconnecting_keeps_only_the_stored_versions() {
    let c = cache(10);
    publish(&c, &[enc("a"), enc("b"), enc("c")]);
    c.listener_lost();
    c.listener_established();
    let held = c.versions();
    assert_eq!(held.len(), 3);
    let stored: HashMap<String, String> =
        [("a".to_string(), enc("a").version()), ("b".to_string(), moved("b", "Haifa").encode().version())].into();
    assert_eq!(c.keep_only(&stored), 2);
    c.listening();
    assert!(c.fresh());
    assert!(c.contains("a") && !c.contains("b") && !c.contains("c"));
    assert_eq!(c.stats.listener_up.get(), 1);
}

#[test]
fn a_silent_listener_stops_entries_being_served_as_fresh() {
    let c = cache(10);
    assert!(c.fresh()); // nobody listens: a cache of its own
    c.state.write().freshness = Freshness::Listening { heard: Instant::now() - SILENCE_LIMIT * 2 };
    assert!(!c.fresh());
    c.heard();
    assert!(c.fresh());
}

/// The listener's round: lost and then listening again, the entries are not fresh until
/// they are checked; the connection heard meanwhile changes nothing; silence past the
/// limit ends freshness, and a sign of life brings it back.
#[test]
fn freshness_moves_only_along_the_listeners_protocol() {
    let t0 = Instant::now();
    let mut f = Freshness::Alone;
    assert!(f.fresh(t0 + SILENCE_LIMIT * 10));
    f.lost();
    f.heard(t0);
    assert_eq!(f, Freshness::Lost);
    f.established();
    f.heard(t0);
    assert_eq!(f, Freshness::Checking);
    assert!(!f.fresh(t0));
    f.listening(t0);
    assert!(f.fresh(t0 + SILENCE_LIMIT - Duration::from_millis(1)));
    assert!(!f.fresh(t0 + SILENCE_LIMIT));
    f.heard(t0 + SILENCE_LIMIT);
    assert_eq!(f, Freshness::Listening { heard: t0 + SILENCE_LIMIT });
    assert!(f.fresh(t0 + SILENCE_LIMIT));
}

/// A read in flight when the listener comes or goes is returned but not kept, nor is an
/// absence it found remembered.
#[test]
fn a_read_in_flight_across_a_lost_listener_is_not_kept() {
    let c = cache(10);
    c.listening();
    let got = c.lookup("a", || {
        c.listener_lost();
        Ok(Some(from_db(order("a"))))
    });
    assert_eq!(&*got.unwrap().unwrap().uid, "a");
    assert!(!c.contains("a"));
    c.listener_established();
    c.listening();
    assert!(
        c.lookup("x", || {
            c.listener_established();
            Ok(None)
        })
        .unwrap()
        .is_none()
    );
    c.listening();
    assert_eq!(&*c.lookup("x", || Ok(Some(from_db(order("x"))))).unwrap().unwrap().uid, "x");
    assert_eq!(c.stats.negative_hits.get(), 0);
}

#[test]
fn an_order_another_writer_committed_meanwhile_is_not_published() {
    let c = cache(10);
    let (mine, theirs) = (moved("a", "Mine").encode(), moved("a", "Theirs").encode());
    let batch = c.writing(["a", "b"]);
    c.changed(&[change("a", &mine), change("a", &theirs)]);
    c.publish(batch, &[mine.clone(), enc("b")]);
    assert!(!c.contains("a") && c.contains("b"));

    // Notified in commit order: another version before this one is no reason.
    let batch = c.writing(["a"]);
    c.changed(&[change("a", &theirs), change("a", &mine)]);
    c.publish(batch, std::slice::from_ref(&mine));
    assert_eq!(city(&hit(&c, "a").unwrap()), "Mine");
}

/// The consumer begins writing a batch while the one before is still to be published:
/// each keeps the notifications that concern it.
#[test]
fn each_batch_still_to_be_published_keeps_its_own_notifications() {
    let c = cache(10);
    let (mine, theirs) = (moved("a", "Mine").encode(), moved("a", "Theirs").encode());
    let first = c.writing(["a"]);
    let second = c.writing(["b"]);
    c.changed(&[change("a", &theirs)]);
    c.publish(first, std::slice::from_ref(&mine));
    c.publish(second, &[enc("b")]);
    assert!(!c.contains("a") && c.contains("b"));

    // The same order in both, both committed (and notified, in commit order) before the
    // first is published: the first's version is the older, and only the second's is kept.
    let (older, newer) = (moved("x", "Older").encode(), moved("x", "Newer").encode());
    let first = c.writing(["x"]);
    let second = c.writing(["x"]);
    c.changed(&[change("x", &older), change("x", &newer)]);
    c.publish(first, std::slice::from_ref(&older));
    assert!(!c.contains("x"));
    c.publish(second, std::slice::from_ref(&newer));
    assert_eq!(city(&hit(&c, "x").unwrap()), "Newer");

    // A batch given up, like a published one, is no longer pending.
    let given_up = c.writing(["y"]);
    assert_eq!(c.state.read().pending.len(), 1);
    c.not_written(given_up);
    assert_eq!(c.state.read().pending.len(), 0);
}
