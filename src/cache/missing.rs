//! The memory of ids PostgreSQL does not have, so that repeated requests for an unknown
//! order are answered "not found" for `cache.negative_ttl_ms` without asking again.
//! Publishing an id, or a notification naming it, ends its memory; losing the listening
//! connection ends all of it.

use std::collections::HashMap;
use std::time::Instant;

/// Most ids remembered as missing at once; past it, expired ones are dropped first.
const MAX_MISSING: usize = 100_000;

/// Ids not found, each with when its memory ends.
#[derive(Default)]
pub(super) struct Missing(HashMap<String, Instant>);

impl Missing {
    /// Whether `uid` is remembered as missing at `now`.
    pub(super) fn remembered(&self, uid: &str, now: Instant) -> bool {
        self.0.get(uid).is_some_and(|until| *until > now)
    }

    /// Whether `uid` is remembered as missing at `now`; a memory that has ended is
    /// dropped.
    pub(super) fn check(&mut self, uid: &str, now: Instant) -> bool {
        let remembered = self.remembered(uid, now);
        if !remembered {
            self.0.remove(uid);
        }
        remembered
    }

    /// Remembers `uid` as missing until `until`.
    pub(super) fn remember(&mut self, uid: &str, now: Instant, until: Instant) {
        if self.0.len() >= MAX_MISSING {
            self.0.retain(|_, until| *until > now);
            if self.0.len() >= MAX_MISSING {
                self.0.clear();
            }
        }
        self.0.insert(uid.to_string(), until);
    }

    /// Forgets `uid`: a version of it is committed.
    pub(super) fn forget(&mut self, uid: &str) {
        if !self.0.is_empty() {
            self.0.remove(uid);
        }
    }

    /// Forgets every id: notifications may be missed, so none is known to be missing.
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}
