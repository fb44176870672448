//! The warm-up's entries, gathered while PostgreSQL streams them, so that when the last
//! one arrives the map is built and the age index all but done.
//!
//! The age index must hold the entries oldest first: by when each order was stored, and
//! of equal age in the order they came. The stream comes in the table's order, which is
//! mostly the order the orders were stored in. An entry not older than every one before
//! it joins the *run*, and is given its use stamp as it comes: (its place in the run + 1)
//! × 2^32. The few that come after a newer one, *late* entries, wait for the end: then,
//! sorted, each is given a stamp in the gap before the first entry of the run that is
//! newer than it (the gap is 2^32 stamps wide, more than there can be late entries). So
//! the only work left once the stream ends is on the late ones: on a table of 1,000,000
//! orders copied in as they were stored, 15,408 of them.

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::{CachedOrder, Entry};

/// Bits of a use stamp below an entry's place in the run: room for the late entries.
const GAP_BITS: u32 = 32;

/// At most this many entries, so that stamps fit in 64 bits.
const MOST: u64 = 1 << 31;

/// The stamp of late entries until they are placed.
const LATE: u64 = 0;

/// Entries to fill an empty cache with: see the module's notes.
#[derive(Default)]
pub struct Fill {
    map: HashMap<Arc<str>, Entry>,
    /// The run's (kept_at, arrival), in order.
    run: Vec<(i64, u64)>,
    by_age: BTreeMap<u64, Arc<str>>,
    /// (kept_at, arrival, id) of each late entry.
    late: Vec<(i64, u64, Arc<str>)>,
    bytes: usize,
    arrivals: u64,
}

impl Fill {
    /// Room for `orders` more.
    pub fn reserve(&mut self, orders: usize) {
        self.map.reserve(orders);
        self.run.reserve(orders);
    }

    /// Adds `value`, kept at `kept_at`. Of an id given twice the later is kept: the one
    /// stored later, or of equal age, the one given later.
    pub fn add(&mut self, kept_at: i64, value: Arc<CachedOrder>) {
        let arrival = self.arrivals;
        assert!(arrival < MOST, "a cache of at most {MOST} orders");
        self.arrivals += 1;
        let key = value.uid.clone();
        let in_run = self.run.last().is_none_or(|&(last, _)| kept_at >= last);
        let slot = match self.map.entry(key) {
            Slot::Vacant(slot) => slot,
            Slot::Occupied(held) if held.get().kept_at > kept_at => return,
            Slot::Occupied(held) => {
                let (key, old) = held.remove_entry();
                self.bytes -= old.value.size();
                if old.indexed_at == LATE {
                    self.late.retain(|(_, _, late)| *late != key);
                } else {
                    self.by_age.remove(&old.indexed_at);
                }
                match self.map.entry(key) {
                    Slot::Vacant(slot) => slot,
                    Slot::Occupied(_) => unreachable!("just removed"),
                }
            }
        };
        let tick = if in_run {
            self.run.push((kept_at, arrival));
            let tick = (self.run.len() as u64) << GAP_BITS;
            self.by_age.insert(tick, slot.key().clone());
            tick
        } else {
            self.late.push((kept_at, arrival, slot.key().clone()));
            LATE
        };
        self.bytes += value.size();
        slot.insert(Entry { value, last_used: AtomicU64::new(tick), indexed_at: tick, kept_at });
    }

    /// Places the late entries.
    pub(super) fn finish(mut self) -> Placed {
        log::debug!("event=warm_fill_placed run={} late={}", self.run.len(), self.late.len());
        self.late.sort_unstable_by_key(|&(kept_at, arrival, _)| (kept_at, arrival));
        let mut previous = (u64::MAX, 0);
        for (kept_at, arrival, key) in self.late {
            // How many of the run come before it: the gap it goes in.
            let gap = self.run.partition_point(|&age| age < (kept_at, arrival)) as u64;
            let within = if previous.0 == gap { previous.1 + 1 } else { 1 };
            previous = (gap, within);
            let tick = (gap << GAP_BITS) + within;
            let entry = self.map.get_mut(&key).expect("a late entry is held");
            entry.indexed_at = tick;
            *entry.last_used.get_mut() = tick;
            self.by_age.insert(tick, key);
        }
        let next = (self.run.len() as u64 + 1) << GAP_BITS;
        Placed { map: self.map, by_age: self.by_age, bytes: self.bytes, next }
    }
}

/// The entries, each with its place in the age index.
pub(super) struct Placed {
    pub(super) map: HashMap<Arc<str>, Entry>,
    pub(super) by_age: BTreeMap<u64, Arc<str>>,
    pub(super) bytes: usize,
    /// The first use stamp after theirs.
    pub(super) next: u64,
}

impl FromIterator<(i64, Arc<CachedOrder>)> for Fill {
    fn from_iter<I: IntoIterator<Item = (i64, Arc<CachedOrder>)>>(orders: I) -> Fill {
        let mut fill = Fill::default();
        for (kept_at, value) in orders {
            fill.add(kept_at, value);
        }
        fill
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StoredOrder;

    fn order(uid: &str, json: &str) -> Arc<CachedOrder> {
        let json: Arc<[u8]> = json.as_bytes().into();
        Arc::new(CachedOrder::stored(StoredOrder { uid: uid.into(), json, sha256: vec![7; 32], stored_at: 0 }))
    }

    /// The ids in the age index's order, after checking that each entry is filed under
    /// its own stamp and that `next` is past them all.
    fn oldest_first(fill: Fill) -> Vec<String> {
        let Placed { map, by_age, next, .. } = fill.finish();
        assert_eq!(map.len(), by_age.len());
        for (tick, key) in &by_age {
            let entry = &map[key];
            assert_eq!((entry.indexed_at, entry.last_used.load(std::sync::atomic::Ordering::Relaxed)), (*tick, *tick));
            assert!(*tick < next);
        }
        by_age.into_values().map(|k| k.to_string()).collect()
    }

    #[test]
    fn late_entries_go_between_the_run_by_age_and_then_as_given() {
        // Ages as a table mostly in the order stored would give them: a run, with some
        // that come after newer ones, some of equal age.
        let given = [(10, "a"), (20, "b"), (15, "late1"), (20, "c"), (30, "d"), (5, "late0"), (20, "late2"), (40, "e")];
        let fill: Fill = given.iter().map(|&(at, uid)| (at, order(uid, "{}"))).collect();
        assert_eq!(fill.late.len(), 3);
        assert_eq!(oldest_first(fill), ["late0", "a", "late1", "b", "c", "late2", "d", "e"]);
    }

    #[test]
    fn any_order_given_comes_out_as_a_stable_sort_by_age() {
        // 3,000 ids with ages from 0 to 99 in a scrambled order (a fixed sequence).
        let mut x: u64 = 12_345;
        let given: Vec<(i64, String)> = (0..3000)
            .map(|i| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (((x >> 33) % 100) as i64, format!("o{i}"))
            })
            .collect();
        let fill: Fill = given.iter().map(|(at, uid)| (*at, order(uid, "{}"))).collect();
        let mut expected = given.clone();
        expected.sort_by_key(|(at, _)| *at);
        let expected: Vec<String> = expected.into_iter().map(|(_, uid)| uid).collect();
        assert_eq!(oldest_first(fill), expected);
    }

    #[test]
    fn an_id_given_twice_keeps_the_later_once() {
        let mut fill = Fill::default();
        fill.add(10, order("a", "{\"v\":1}"));
        fill.add(20, order("b", "{}"));
        fill.add(15, order("a", "{\"v\":2}")); // late, replaces the one in the run
        fill.add(12, order("a", "{\"v\":3}")); // older than the one held: not kept
        fill.add(15, order("c", "{}")); // late
        fill.add(15, order("c", "{\"v\":4}")); // of equal age, given later: replaces a late one
        let bytes = order("a", "{\"v\":2}").size() + order("b", "{}").size() + order("c", "{\"v\":4}").size();
        assert_eq!(fill.bytes, bytes);
        let jsons: Vec<(String, String)> =
            fill.map.iter().map(|(k, e)| (k.to_string(), String::from_utf8(e.value.json.to_vec()).unwrap())).collect();
        let mut jsons = jsons;
        jsons.sort();
        assert_eq!(
            jsons,
            [("a".into(), "{\"v\":2}".into()), ("b".into(), "{}".into()), ("c".into(), "{\"v\":4}".into())]
        );
        assert_eq!(oldest_first(fill), ["a", "c", "b"]);
    }
}
