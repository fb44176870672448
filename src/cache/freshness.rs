//! Whether entries can be served as they are: the one state the listener's reports move
//! the cache through. Entries are fresh only while no notification can have been missed.
//!
//! The listener's round is `Alone` → `Checking` → `Listening` → `Lost` → `Checking` → …
//!
//! | from                 | report        | to                         |
//! |----------------------|---------------|----------------------------|
//! | any                  | `established` | `Checking`                 |
//! | any                  | `listening`   | `Listening { heard: now }` |
//! | any                  | `lost`        | `Lost`                     |
//! | `Alone`, `Listening` | `heard`       | `Listening { heard: now }` |
//! | `Checking`, `Lost`   | `heard`       | unchanged                  |
//!
//! A cache no listener reports to (a single process, a test) stays `Alone`, and fresh.
//! The listener listens (`established`), fills or checks the entries, and then reports
//! `listening`; from then on each notification or answered ping is `heard`, and past
//! `SILENCE_LIMIT` without one the entries are not fresh until the next. A lost
//! connection is `Lost` until the listener listens again and the round goes on at
//! `Checking`. On `established` and `lost` the cache also forgets the reads in flight
//! (what they read may have changed unnoticed), and on `lost` the memory of missing ids.

use std::time::{Duration, Instant};

/// How long the listening connection may go without a sign of life (a notification, or
/// the answer to the listener's ping) before entries are no longer served as fresh.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(3);

/// Whether a notification can have been missed, and since when the connection is quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freshness {
    /// No listener has reported: nothing can be missed. Fresh.
    Alone,
    /// Listening, and every entry held was checked or read since: fresh while the
    /// connection proved alive (`heard`) within `SILENCE_LIMIT`.
    Listening { heard: Instant },
    /// The listening connection is lost: notifications are being missed. Not fresh.
    Lost,
    /// Listening (again), but the entries are not yet checked (or filled) against the
    /// tables: what changed before is unknown. Not fresh.
    Checking,
}

impl Freshness {
    /// Whether entries can be served as they are at `now`.
    pub(super) fn fresh(&self, now: Instant) -> bool {
        match self {
            Freshness::Alone => true,
            Freshness::Listening { heard } => now.saturating_duration_since(*heard) < SILENCE_LIMIT,
            Freshness::Lost | Freshness::Checking => false,
        }
    }

    /// The listening connection is lost, from any state.
    pub(super) fn lost(&mut self) {
        *self = Freshness::Lost;
    }

    /// A listening connection is established, from any state (at start, after a loss,
    /// or again after a failed check): the entries are checked next.
    pub(super) fn established(&mut self) {
        *self = Freshness::Checking;
    }

    /// Every entry has been checked and every change from now on is notified.
    pub(super) fn listening(&mut self, now: Instant) {
        *self = Freshness::Listening { heard: now };
    }

    /// The listening connection proved alive at `now`. Before a listener reports this
    /// starts the silence counting; without a connection it changes nothing.
    pub(super) fn heard(&mut self, now: Instant) {
        match self {
            Freshness::Alone | Freshness::Listening { .. } => *self = Freshness::Listening { heard: now },
            Freshness::Lost | Freshness::Checking => {}
        }
    }
}
