//! The thread that keeps the cache in step with PostgreSQL. At start it applies the
//! migrations, begins listening for change notifications, and only then fills the cache
//! (so no commit falls between the two unseen). From then on it applies each
//! notification: an entry of another version than the one committed is dropped, on
//! every instance, whichever instance committed it.
//!
//! When the listening connection is lost, notifications are missed until it is back: the
//! cache stops serving entries as fresh at once; once listening again, every entry's
//! version is checked against the tables before they are served as fresh. A connection
//! that stays open but goes quiet (a database that hangs) is pinged; past
//! `cache::SILENCE_LIMIT` without an answer the cache stops serving entries as fresh
//! until it answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use crate::cache::{Cache, CachedOrder, Fill, Limits};
use crate::config::Config;
use crate::runtime::{Backoff, Health, Shutdown};
use crate::store;

/// How long the listener waits for a notification before it looks at the shutdown
/// signal, and how long a quiet connection goes before it is pinged.
const WAIT: Duration = Duration::from_millis(250);
const PING_AFTER: Duration = Duration::from_secs(1);

/// Runs the listener until shutdown. `name` is the listening connection's
/// `application_name`, so that an operator can tell the instances' apart.
pub fn run(config: &Config, name: &str, cache: &Cache, health: &Health, shutdown: &Shutdown) {
    let Some(mut client) = start(config, name, cache, health, shutdown) else { return };
    loop {
        let lost = match listen(&mut client, cache, shutdown) {
            Ok(()) => return,
            Err(e) => e,
        };
        let since = Instant::now();
        cache.listener_lost();
        health.set_listener_problem(Some(format!("the connection for change notifications was lost: {lost:#}")));
        warn!("event=listener_lost error={lost:#} action=serve_cached_orders_only_after_reading_them_again");
        match reconnect(config, name, cache, health, shutdown) {
            Some(c) => client = c,
            None => return,
        }
        info!("event=listener_back after_ms={}", since.elapsed().as_millis());
    }
}

/// Migrates, listens and fills the cache, retrying with backoff until it succeeds.
/// Returns the listening connection, or None if shutdown came first.
fn start(config: &Config, name: &str, cache: &Cache, health: &Health, shutdown: &Shutdown) -> Option<Client> {
    let mut backoff = Backoff::new(config.ingest.retry_initial(), config.ingest.retry_max());
    loop {
        let started = Instant::now();
        let heap = WarmUpHeap::begin();
        let ready = store::connect(&config.database).and_then(|mut client| {
            store::migrate(&mut client)?;
            let listener = store::listen(&config.database, name)?;
            cache.listener_established();
            let limits = Limits::new(&config.cache, config.http.workers);
            let mut stored = Warming::start();
            let read = store::stored_orders(&mut client, limits.max_orders, limits.max_age, &mut stored);
            let stored = stored.finish();
            Ok((listener, stored, read?))
        });
        match ready {
            Ok((listener, stored, read)) => {
                cache.warm(stored);
                drop(heap);
                cache.listening();
                health.set_cache_warm();
                info!(
                    "event=cache_warmed orders={} read={read} bytes={} ms={}",
                    cache.len(),
                    cache.bytes(),
                    started.elapsed().as_millis()
                );
                return Some(listener);
            }
            Err(e) => {
                let attempt = backoff.attempt();
                warn!(
                    "event=startup_waiting for=postgresql attempt={attempt} retry_in_ms={} error={e:#}",
                    backoff.delay().as_millis()
                );
                health.set_startup_problem(format!("waiting for PostgreSQL (attempt {attempt}): {e:#}"));
            }
        }
        if shutdown.sleep(backoff.next_delay()) {
            return None;
        }
    }
}

/// The warm-up's orders, put in the cache's map as they come by a thread of its own,
/// while this one reads the next. Done after the read, the inserts and the age index
/// took 0.4 s after a read of 1.8 s (1,000,000 orders); done in the reading loop itself,
/// they made the read 0.7 s longer.
struct Warming {
    piece: Vec<(i64, Arc<CachedOrder>)>,
    to_builder: Option<crossbeam_channel::Sender<Piece>>,
    builder: Option<std::thread::JoinHandle<Fill>>,
}

/// What the builder is sent: how many orders will come, or some of them.
enum Piece {
    Expect(usize),
    Orders(Vec<(i64, Arc<CachedOrder>)>),
}

/// Orders handed to the builder at a time.
const PIECE: usize = 1024;

impl Warming {
    fn start() -> Warming {
        let (to_builder, pieces) = crossbeam_channel::bounded::<Piece>(64);
        let builder = std::thread::Builder::new()
            .name("warm-up".into())
            .spawn(move || {
                let mut fill = Fill::default();
                for piece in pieces {
                    match piece {
                        Piece::Expect(orders) => fill.reserve(orders),
                        Piece::Orders(orders) => orders.into_iter().for_each(|(at, order)| fill.add(at, order)),
                    }
                }
                fill
            })
            .expect("start the warm-up's thread");
        Warming { piece: Vec::with_capacity(PIECE), to_builder: Some(to_builder), builder: Some(builder) }
    }

    fn send(&mut self, piece: Piece) {
        let to_builder = self.to_builder.as_ref().expect("sending until finished");
        if to_builder.send(piece).is_err() {
            // The builder stopped before it was told to: it panicked. Its panic goes on here.
            self.join();
            unreachable!("the warm-up's thread ends when told to, or by a panic");
        }
    }

    /// What the builder made of the orders handed over.
    fn finish(mut self) -> Fill {
        let last = std::mem::take(&mut self.piece);
        self.send(Piece::Orders(last));
        self.join()
    }

    /// Waits for the builder, and passes on its panic if it panicked.
    fn join(&mut self) -> Fill {
        drop(self.to_builder.take());
        match self.builder.take().expect("joined once").join() {
            Ok(fill) => fill,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl store::Keep for Warming {
    fn expect(&mut self, orders: usize) {
        self.send(Piece::Expect(orders));
    }

    fn keep(&mut self, order: store::Stored<'_>) {
        let cached = CachedOrder::from_parts(order.uid, Arc::from(order.json), order.sha256);
        self.piece.push((order.stored_at, Arc::new(cached)));
        if self.piece.len() == PIECE {
            let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(PIECE));
            self.send(Piece::Orders(piece));
        }
    }
}

/// glibc's allocator as the warm-up wants it. While the stream is read, the connection's
/// read buffers are freed as fast as the documents are allocated; by default the
/// allocator gives the freed top of its heap back to the system at once (past 128 KiB)
/// and faults it in again, zeroed, a moment later: in a profile of a warm-up of 1,000,000
/// orders, zeroing pages was 43 % of the samples. Kept (up to 1 GiB, grown 64 MiB at a
/// time) the memory is reused; the read took 1.95 s instead of 2.16–2.25 s. When the
/// warm-up ends, the defaults come back and the pages freed are given back to the system:
/// the warm-up's buffers (the list of orders read, before the cache took them) are gone,
/// and the allocator would otherwise keep much of their memory resident.
struct WarmUpHeap;

impl WarmUpHeap {
    fn begin() -> WarmUpHeap {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt sets two of glibc's allocator parameters; it takes no pointer.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
        WarmUpHeap
    }
}

impl Drop for WarmUpHeap {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: as above; malloc_trim only walks glibc's own free lists.
        unsafe {
            // glibc's defaults (mallopt(3)).
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_TOP_PAD, 128 * 1024);
            libc::malloc_trim(0);
        }
    }
}

/// Applies notifications until shutdown (Ok) or until the connection fails (the error).
fn listen(client: &mut Client, cache: &Cache, shutdown: &Shutdown) -> anyhow::Result<()> {
    let mut quiet_since = Instant::now();
    while !shutdown.is_signalled() {
        let next = client.notifications().timeout_iter(WAIT).next();
        match next {
            Ok(Some(notification)) => {
                cache.heard();
                cache.stats.notifications.inc();
                cache.changed(&store::parse_payload(notification.payload()));
                quiet_since = Instant::now();
            }
            Err(e) => return Err(e.into()),
            Ok(None) if quiet_since.elapsed() >= PING_AFTER => {
                store::ping(client)?;
                cache.heard();
                quiet_since = Instant::now();
            }
            Ok(None) => {}
        }
    }
    Ok(())
}

/// Listens again, with backoff, and checks every entry's version against the tables
/// before the cache is served as fresh again. None if shutdown came first.
fn reconnect(config: &Config, name: &str, cache: &Cache, health: &Health, shutdown: &Shutdown) -> Option<Client> {
    let mut backoff = Backoff::new(config.ingest.retry_initial(), config.ingest.retry_max());
    loop {
        let started = Instant::now();
        let checked = store::listen(&config.database, name).and_then(|mut client| {
            cache.listener_established();
            let held = cache.versions();
            let uids: Vec<&str> = held.iter().map(|(uid, _)| &**uid).collect();
            let stored = store::stored_versions(&mut client, &uids)?;
            Ok((client, held.len(), cache.keep_only(&stored)))
        });
        match checked {
            Ok((client, held, dropped)) => {
                cache.listening();
                cache.stats.listener_reconnects.inc();
                health.set_listener_problem(None);
                info!(
                    "event=listener_reconnected checked={held} dropped={dropped} ms={}",
                    started.elapsed().as_millis()
                );
                return Some(client);
            }
            Err(e) => {
                warn!(
                    "event=listener_reconnect_failed attempt={} retry_in_ms={} error={e:#}",
                    backoff.attempt(),
                    backoff.delay().as_millis()
                );
                health.set_listener_problem(Some(format!(
                    "the connection for change notifications is lost; reconnecting (attempt {}): {e:#}",
                    backoff.attempt()
                )));
            }
        }
        if shutdown.sleep(backoff.next_delay()) {
            return None;
        }
    }
}
