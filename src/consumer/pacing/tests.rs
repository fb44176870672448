use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::CommitPacing;
use crate::consumer::partitions::{Partition, Partitions};

fn key(partition: i32) -> Partition {
    ("orders".to_string(), partition)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A pacing started at `t0` (returned too), retrying failed commits after 100 ms,
/// doubling up to 400 ms; and a table of partitions 0, 1 and 2, none revoked yet.
fn start() -> (Instant, CommitPacing, Partitions) {
    let t0 = Instant::now();
    let mut table = Partitions::default();
    table.assign(vec![key(0), key(1), key(2)], &HashMap::new());
    (t0, CommitPacing::new(t0, ms(100), ms(400)), table)
}

/// Nothing written, nothing to commit: not even at shutdown.
#[test]
fn nothing_pending_is_never_due() {
    let (t0, mut pacing, table) = start();
    assert!(!pacing.due(t0 + ms(5000), false, &table));
    assert!(!pacing.due(t0, true, &table));
}

/// A batch's offsets wait for a commit one second after the last; shutdown commits them
/// at once. Each partition keeps its highest offset.
#[test]
fn written_offsets_are_committed_a_second_after_the_last_commit() {
    let (t0, mut pacing, table) = start();
    pacing.add([(key(0), 11), (key(1), 4)], false, &table);
    pacing.add([(key(0), 8), (key(1), 6)], false, &table);
    assert_eq!(pacing.pending(), &BTreeMap::from([(key(0), 11), (key(1), 6)]));
    assert!(!pacing.due(t0 + ms(999), false, &table));
    assert!(pacing.due(t0 + ms(999), true, &table));
    assert!(pacing.due(t0 + ms(1000), false, &table));

    pacing.committed(t0 + ms(1200));
    assert_eq!(pacing.pending(), &BTreeMap::new());
    pacing.add([(key(2), 30)], false, &table);
    assert!(!pacing.due(t0 + ms(2199), false, &table));
    assert!(pacing.due(t0 + ms(2200), false, &table));
}

/// A failed commit is tried again after 100 ms, then 200, then 400, and 400 after that;
/// a success ends the backoff.
#[test]
fn a_failed_commit_is_retried_after_a_growing_backoff() {
    let (t0, mut pacing, table) = start();
    pacing.add([(key(0), 11)], false, &table);
    let t1 = t0 + ms(1000);
    assert!(pacing.due(t1, false, &table));
    assert_eq!(pacing.failed(t1), (1, ms(100)));
    assert!(!pacing.due(t1 + ms(99), false, &table));
    assert!(pacing.due(t1 + ms(100), false, &table));
    assert_eq!(pacing.failed(t1 + ms(100)), (2, ms(200)));
    assert!(!pacing.due(t1 + ms(299), false, &table));
    assert_eq!(pacing.failed(t1 + ms(300)), (3, ms(400)));
    assert_eq!(pacing.failed(t1 + ms(700)), (4, ms(400)));
    assert!(!pacing.due(t1 + ms(1099), false, &table));
    assert!(pacing.due(t1 + ms(1100), false, &table));
    assert_eq!(pacing.pending(), &BTreeMap::from([(key(0), 11)]), "kept for the next attempt");

    pacing.committed(t1 + ms(1100));
    pacing.add([(key(0), 12)], false, &table);
    assert!(!pacing.due(t1 + ms(2099), false, &table));
    assert!(pacing.due(t1 + ms(2100), false, &table));
    assert_eq!(pacing.failed(t1 + ms(2100)), (1, ms(100)), "a new backoff");
}

/// Offsets read at assignment are fresh: a failed commit's backoff is forgotten, and they
/// are due a second after the last commit. A batch's offsets keep the backoff.
#[test]
fn offsets_read_at_assignment_forget_the_backoff() {
    let (t0, mut pacing, table) = start();
    pacing.add([(key(0), 11)], false, &table);
    assert_eq!(pacing.failed(t0 + ms(1000)), (1, ms(100)));
    assert_eq!(pacing.failed(t0 + ms(1100)), (2, ms(200)));
    pacing.add([(key(1), 5)], false, &table);
    assert!(!pacing.due(t0 + ms(1299), false, &table));
    pacing.add([(key(2), 40)], true, &table);
    assert!(pacing.due(t0 + ms(1000), false, &table));
    assert_eq!(pacing.failed(t0 + ms(1000)), (1, ms(100)));
}

/// With nothing left to commit, a failed commit's backoff ends.
#[test]
fn the_backoff_ends_when_nothing_is_left() {
    let (t0, mut pacing, mut table) = start();
    pacing.add([(key(0), 11)], false, &table);
    assert_eq!(pacing.failed(t0 + ms(1000)), (1, ms(100)));
    table.revoke(vec![key(0)], false);
    assert!(!pacing.due(t0 + ms(1100), false, &table), "revoked: nothing left");
    assert!(!pacing.due(t0 + ms(1100), false, &table));
    pacing.add([(key(1), 3)], false, &table);
    assert!(pacing.due(t0 + ms(1100), false, &table), "due a second after the last commit, not after a backoff");
    assert_eq!(pacing.failed(t0 + ms(1100)), (1, ms(100)));
}

/// Offsets of partitions revoked since they were added are not committed: the
/// partitions' new owner commits them. Those of partitions still held are.
#[test]
fn revoked_partitions_leave_the_pending_offsets() {
    let (t0, mut pacing, mut table) = start();
    pacing.add([(key(0), 11), (key(1), 4), (key(2), 9)], false, &table);
    table.revoke(vec![key(1)], false);
    assert!(!pacing.due(t0 + ms(500), false, &table));
    assert_eq!(pacing.pending().len(), 3, "looked at only when due");
    assert!(pacing.due(t0 + ms(1000), false, &table));
    assert_eq!(pacing.pending(), &BTreeMap::from([(key(0), 11), (key(2), 9)]));

    table.revoke(vec![key(0)], true);
    pacing.add([(key(1), 6)], false, &table);
    assert_eq!(pacing.pending(), &BTreeMap::from([(key(1), 6)]), "added after the revocation");
    table.revoke(vec![key(1)], false);
    assert!(!pacing.due(t0 + ms(1000), true, &table), "every partition revoked");
    assert_eq!(pacing.pending(), &BTreeMap::new());
}
