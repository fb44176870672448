use super::PartitionState::{BeyondEnd, NoStoredOffset, Positioned, Unpositioned};
use super::*;

fn key(partition: i32) -> Partition {
    ("orders".to_string(), partition)
}

fn keys(partitions: &[i32]) -> Vec<Partition> {
    partitions.iter().map(|&p| key(p)).collect()
}

/// Partitions 0 and 1 assigned, the group having stored offset 40 for partition 0 only.
fn assigned() -> Partitions {
    let mut table = Partitions::default();
    table.assign(keys(&[0, 1]), &HashMap::from([(key(0), 40)]));
    table
}

/// A partition with a stored offset is read from it and claimed from it; one without is
/// read from where Kafka starts it. Only the stored offset is handed on to Kafka, once.
#[test]
fn assigned_partitions_start_at_their_stored_offsets() {
    let mut table = assigned();
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 40 }));
    assert_eq!(table.state(&key(1)), Some(NoStoredOffset));
    assert_eq!(table.state(&key(2)), None);
    assert_eq!(table.expected(&key(0)), Some(40));
    assert_eq!(table.expected(&key(1)), None);
    assert!(table.taking(&key(0)) && table.taking(&key(1)));
    assert!(!table.taking(&key(2)));
    assert_eq!(table.take_assigned_offsets(), [(key(0), 40)]);
    assert_eq!(table.take_assigned_offsets(), []);
    assert_eq!(table.waiting(), Vec::<Partition>::new());
}

/// Each committed batch moves the position to one past its last message; a partition
/// without a stored offset has one from its first batch on.
#[test]
fn a_written_batch_moves_the_position() {
    let mut table = assigned();
    table.written(&key(0), 45);
    table.written(&key(1), 7);
    table.written(&key(2), 9);
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 45 }));
    assert_eq!(table.state(&key(1)), Some(Positioned { next: 7 }));
    assert_eq!(table.state(&key(2)), None, "a partition not assigned stays out");
}

/// Assigned while the database is down: paused, its messages not taken and no claim
/// made, until a reread gives it its stored offset (or none).
#[test]
fn an_unpositioned_partition_waits_for_its_stored_offset() {
    let mut table = Partitions::default();
    table.assign_unpositioned(keys(&[0, 1, 2]));
    assert_eq!(table.state(&key(0)), Some(Unpositioned));
    assert!(!table.taking(&key(0)));
    assert_eq!(table.expected(&key(0)), None);
    assert_eq!(table.read_again_from(&key(0), 3), None);
    assert_eq!(table.waiting(), keys(&[0, 1, 2]));
    assert_eq!(table.take_assigned_offsets(), []);
    // A write or a fence does not position it: only a reread does.
    table.written(&key(2), 9);
    assert_eq!(table.restart_from(&key(2), Some(9)), None);
    assert_eq!(table.state(&key(2)), Some(Unpositioned));

    assert_eq!(table.reread(&key(0), Some(12)), Reread::Positioned(Some(12)));
    assert_eq!(table.reread(&key(1), None), Reread::Positioned(None));
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 12 }));
    assert_eq!(table.state(&key(1)), Some(NoStoredOffset));
    assert!(table.taking(&key(0)));
    assert_eq!(table.waiting(), keys(&[2]));
    assert_eq!(table.reread(&key(0), Some(15)), Reread::Unchanged, "no longer waiting");
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 12 }));
}

/// Kafka reset the fetch position back to the partition's start, and the position is
/// past the partition's end: the partition waits, paused, keeping its position, and is
/// reported, until the stored offset moves (`reset-offsets`); then it is read from there.
#[test]
fn a_partition_past_its_end_waits_until_its_stored_offset_moves() {
    let mut table = assigned();
    table.beyond_end(&key(0), 40);
    assert_eq!(table.state(&key(0)), Some(BeyondEnd { next: 40 }));
    assert_eq!(table.beyond_end_partitions(), keys(&[0]));
    assert_eq!(table.waiting(), keys(&[0]));
    assert_eq!(table.expected(&key(0)), Some(40));
    assert_eq!(table.read_again_from(&key(0), 3), Some(40));
    // Reported again: the position it keeps is still its own.
    table.beyond_end(&key(0), 44);
    assert_eq!(table.state(&key(0)), Some(BeyondEnd { next: 40 }));

    assert_eq!(table.reread(&key(0), Some(40)), Reread::Unchanged);
    assert_eq!(table.reread(&key(0), None), Reread::Unchanged);
    assert_eq!(table.state(&key(0)), Some(BeyondEnd { next: 40 }));
    assert_eq!(table.reread(&key(0), Some(0)), Reread::Reset { from: 40, to: 0 });
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 0 }));
    assert_eq!(table.beyond_end_partitions(), Vec::<Partition>::new());
    assert_eq!(table.waiting(), Vec::<Partition>::new());
}

/// A partition without a stored offset found past its end by a batch collected but not
/// yet written (which ends at 13) waits at that batch's end, which the batch then stores;
/// a write keeps a partition past its end paused.
#[test]
fn a_partition_without_a_stored_offset_past_its_end_waits_at_the_held_batch_end() {
    let mut table = assigned();
    table.beyond_end(&key(1), 13);
    assert_eq!(table.state(&key(1)), Some(BeyondEnd { next: 13 }));
    table.written(&key(1), 13);
    assert_eq!(table.state(&key(1)), Some(BeyondEnd { next: 13 }));
    assert_eq!(table.reread(&key(1), Some(13)), Reread::Unchanged);
}

/// After a fenced batch, each partition is read from the stored offset the other
/// consumer left; one past its end stays paused there. If the stored offsets cannot be
/// read, the partitions wait for them.
#[test]
fn a_fenced_batch_sends_its_partitions_to_the_stored_offsets() {
    let mut table = assigned();
    table.assign(keys(&[2]), &HashMap::from([(key(2), 70)]));
    table.beyond_end(&key(2), 70);
    assert_eq!(table.restart_from(&key(0), Some(52)), Some(52));
    assert_eq!(table.restart_from(&key(1), Some(8)), Some(8));
    assert_eq!(table.restart_from(&key(2), Some(75)), Some(75));
    assert_eq!(table.restart_from(&key(3), Some(1)), None, "not assigned");
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 52 }));
    assert_eq!(table.state(&key(1)), Some(Positioned { next: 8 }));
    assert_eq!(table.state(&key(2)), Some(BeyondEnd { next: 75 }));
    assert_eq!(table.restart_from(&key(1), None), None);
    assert_eq!(table.state(&key(1)), Some(NoStoredOffset));

    table.unposition(&keys(&[0, 1, 3]));
    assert_eq!(table.state(&key(0)), Some(Unpositioned));
    assert_eq!(table.state(&key(1)), Some(Unpositioned));
    assert_eq!(table.state(&key(3)), None, "not assigned");
    assert_eq!(table.waiting(), keys(&[0, 1, 2]));
}

/// Dropped messages are read again from the partition's position, or, without a stored
/// offset, from the first of them; not at all once the partition is revoked.
#[test]
fn dropped_messages_are_read_again_from_the_position() {
    let table = assigned();
    assert_eq!(table.read_again_from(&key(0), 43), Some(40));
    assert_eq!(table.read_again_from(&key(1), 5), Some(5));
    assert_eq!(table.read_again_from(&key(2), 5), None);
}

/// A revocation under the consumer protocol takes the partitions it names; an eager
/// one takes every partition, in whatever state. Each is recorded, so that a batch
/// collected before can tell what it lost.
#[test]
fn revocations_take_partitions_out_and_are_recorded_in_order() {
    let mut table = assigned();
    table.assign_unpositioned(keys(&[2]));
    table.assign(keys(&[3]), &HashMap::from([(key(3), 9)]));
    table.beyond_end(&key(3), 9);
    assert_eq!(table.generation(), 0);

    let revoked = table.revoke(keys(&[1]), false);
    assert_eq!(revoked, BTreeSet::from([key(1)]));
    assert_eq!(table.generation(), 1);
    assert_eq!(table.state(&key(1)), None);
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 40 }));

    let revoked = table.revoke(keys(&[0]), true);
    assert_eq!(revoked, BTreeSet::from([key(0), key(2), key(3)]));
    assert_eq!(table.generation(), 2);
    for p in 0..4 {
        assert_eq!(table.state(&key(p)), None);
    }
    assert_eq!(table.waiting(), Vec::<Partition>::new());
    assert_eq!(table.beyond_end_partitions(), Vec::<Partition>::new());

    assert_eq!(table.revoked_since(0), BTreeSet::from([key(0), key(1), key(2), key(3)]));
    assert_eq!(table.revoked_since(1), BTreeSet::from([key(0), key(2), key(3)]));
    assert_eq!(table.revoked_since(2), BTreeSet::new());
    // What is done to a revoked partition does not bring it back.
    table.written(&key(0), 50);
    table.beyond_end(&key(0), 50);
    assert_eq!(table.reread(&key(0), Some(1)), Reread::Unchanged);
    assert_eq!(table.state(&key(0)), None);
}

/// One partition through its life: assigned at its stored offset, written, found past
/// its end, reset by an operator, written again, revoked.
#[test]
fn a_partition_from_assignment_to_revocation() {
    let mut table = Partitions::default();
    table.assign(keys(&[0]), &HashMap::from([(key(0), 20)]));
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 20 }));
    table.written(&key(0), 25);
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 25 }));
    table.beyond_end(&key(0), 25);
    assert_eq!(table.state(&key(0)), Some(BeyondEnd { next: 25 }));
    assert_eq!(table.reread(&key(0), Some(0)), Reread::Reset { from: 25, to: 0 });
    table.written(&key(0), 5);
    assert_eq!(table.state(&key(0)), Some(Positioned { next: 5 }));
    assert_eq!(table.revoke(keys(&[0]), false), BTreeSet::from([key(0)]));
    assert_eq!(table.state(&key(0)), None);
    assert_eq!(table.generation(), 1);
}

#[test]
fn partitions_and_offsets_are_named_for_the_log() {
    assert_eq!(describe_partitions(&keys(&[0, 2])), "orders/0,orders/2");
    assert_eq!(describe_offsets(&BTreeMap::from([(key(1), 7), (key(0), 3)])), "orders/0@3,orders/1@7");
    assert_eq!(describe_list(&partition_list(&keys(&[1, 0]))), "orders/1,orders/0");
    assert_eq!(partition_keys(&partition_list(&keys(&[1, 0]))), keys(&[1, 0]));
    assert!(holds(&BTreeSet::from([key(1)]), "orders", 1));
    assert!(!holds(&BTreeSet::from([key(1)]), "orders", 0));
}

/// What is held is what was assigned, positioned or not, less what was revoked: the
/// count the rebalance callback reports as the assignment.
#[test]
fn the_partitions_held_are_those_assigned_and_not_revoked() {
    let mut table = assigned();
    table.assign_unpositioned(keys(&[2, 3]));
    assert_eq!(table.held(), 4);
    table.revoke(keys(&[1]), false);
    assert_eq!(table.held(), 3);
    table.revoke(keys(&[2]), true);
    assert_eq!(table.held(), 0);
}
