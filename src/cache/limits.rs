//! What bounds the cache, read from `[cache]` once at start, and the clock its age limit
//! is measured by.

use std::time::Duration;

use crate::config::CacheConfig;

/// The cache's bounds: its size, how long an id is remembered as missing, how many
/// requests read PostgreSQL at once and for how long others wait on them, and the age
/// past which an entry is read again.
pub struct Limits {
    pub max_orders: usize,
    pub max_bytes: usize,
    /// How long an id PostgreSQL does not have is answered "not found" without asking
    /// again. Zero turns the memory off.
    pub negative_ttl: Duration,
    /// Most requests that may read PostgreSQL at once; past it a lookup that needs to
    /// read is refused at once. Requests for an order being read wait for that read.
    pub max_database_waits: usize,
    /// Longest a request waits for another request's read of the same order.
    pub database_wait: Duration,
    /// Past this age an entry is not served from memory but read again, as a miss.
    /// None: entries never expire.
    pub max_age: Option<Duration>,
}

impl Limits {
    /// The bounds `config` sets, with `workers` HTTP workers.
    pub fn new(config: &CacheConfig, workers: usize) -> Limits {
        Limits {
            max_orders: config.max_orders,
            max_bytes: config.max_bytes,
            negative_ttl: Duration::from_millis(config.negative_ttl_ms),
            max_database_waits: config.max_database_waits.unwrap_or((workers / 2).max(1)),
            database_wait: Duration::from_millis(config.database_wait_ms),
            max_age: (config.max_age_secs > 0).then(|| Duration::from_secs(config.max_age_secs)),
        }
    }

    /// Whether an entry kept at `kept_at` is past `max_age` at `now` (both
    /// `Clock::micros`).
    pub(super) fn expired(&self, kept_at: i64, now: i64) -> bool {
        self.max_age.is_some_and(|age| {
            let age = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
            now.saturating_sub(kept_at) > age
        })
    }
}

/// The wall clock the age limit reads, in microseconds since 2000-01-01 UTC: the epoch
/// PostgreSQL keeps `ingested_at` in, so that the warm-up's orders are aged by when they
/// were stored. Tests give the cache a clock they move.
pub trait Clock: Send + Sync {
    fn micros(&self) -> i64;
}

/// The system's clock.
pub struct SystemClock;

/// 2000-01-01T00:00:00Z in seconds since the Unix epoch.
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

impl Clock for SystemClock {
    fn micros(&self) -> i64 {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_UNIX_SECS * 1_000_000
    }
}
