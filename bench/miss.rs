//! bench/miss: cold misses, `GET /order/<uid>` for orders PostgreSQL has and the cache
//! does not, against a bare client running the service's miss statement in the same run:
//!
//! - the reference: `cache.max_database_waits` threads, each with a connection of its own
//!   (opened as the service opens its readers, `store::connect_reader`), running the
//!   prepared `MISS_SELECT` for one id after another. `MISS_SELECT` mirrors the statement
//!   behind the service's miss, the order's document by id: keep the two the same;
//! - orders-svc (in this process, as bench/http runs it): as many closed-loop HTTP clients,
//!   each on a keep-alive connection of its own, so that no request finds every place
//!   among the requests waiting on the database taken (a 503 is counted, and printed, as
//!   a failure). Its misses are read on `database.pool_size` connections (4 by default),
//!   the ids waiting together in one statement (`store::Readers`);
//! - the ceiling, once before the rounds: the same clients asking for orders the cache
//!   holds, what the HTTP side itself costs in this run.
//!
//! The service is set up as a deployment whose cache is smaller than its data would be:
//! `max_database_waits` 15, which bounds the misses in flight (a miss handed over by its
//! connection's thread holds one of these places, and no worker), and 16 `http.workers`,
//! the fewest that allow 15.
//!
//! The database, kept from one run to the next (`psql \copy` of generated orders, as
//! bench/warm loads it), holds MISS_ORDERS orders; the service caches at most MISS_CACHE
//! of them (`cache.max_bytes` set high enough not to bound it first). Its warm-up keeps the most recently stored (`store::warm`: newest first, then
//! by id); the ids of all the others, shuffled once, are dealt out one after another to
//! the two sides' threads, so that each request is for a uniformly random id among the
//! stored orders the cache does not hold, and no id is asked for twice until every one
//! has been. An id only comes round again after all the others (the run says when):
//! with more of them than the cache holds, it has long been evicted by then, and the
//! misses, each of which fills the cache, stay misses. The service's `/metrics` counters
//! over each of its rounds say what fraction of its lookups missed.
//!
//! Each round runs the reference, then the service (idle meanwhile), each for
//! MISS_WARMUP_SECONDS not counted and MISS_SECONDS counted; the run prints each round
//! and the median over the rounds of requests/s, p50, p99 and the ratios.
//!
//! Run with `bench/run miss`. Settings from the environment: MISS_ORDERS (default
//! 1000000 stored orders), MISS_CACHE (100000, `cache.max_orders`), MISS_WORKERS (16,
//! `http.workers`), MISS_WAITS (`cache.max_database_waits`, 15; `default` for the
//! service's own, half of `http.workers`), MISS_CLIENTS (as many as MISS_WAITS), MISS_POOL
//! (`database.pool_size`, the service's default unless given), MISS_SECONDS (10),
//! MISS_WARMUP_SECONDS (2), MISS_ROUNDS (3), MISS_DB (the kept database's name, default
//! `bench_miss_<MISS_ORDERS>`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orders_svc::cache::Limits;
use orders_svc::service::Service;
use orders_svc::store;
use postgres::Client;

#[path = "common.rs"]
mod common;
use common::support::get;
use common::support::http::Connection;
use common::{brokers, create_topic_on, env_number, kept_database, load_generated, service_config_on};

/// The orders bench/warm generates, so that a database either loads can serve both.
const SEED: u64 = 20_211_126;

/// The statement behind a miss of the service: one order's document (and the digest its
/// ETag is made of) by id.
const MISS_SELECT: &str = "SELECT document, content_sha256 FROM orders WHERE order_uid = $1";

/// The counters of `/metrics` a round of the service is judged by.
const COUNTERS: [&str; 6] = [
    "orders_cache_hits_total",
    "orders_cache_misses_total",
    "orders_cache_db_reads_total",
    "orders_cache_db_read_statements_total",
    "orders_cache_database_busy_total",
    "orders_cache_evictions_total",
];

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let n = env_number("MISS_ORDERS", 1_000_000);
    let cached = env_number("MISS_CACHE", 100_000);
    let timing = Timing {
        warmup: Duration::from_secs(env_number("MISS_WARMUP_SECONDS", 2) as u64),
        counted: Duration::from_secs(env_number("MISS_SECONDS", 10).max(1) as u64),
    };
    let rounds = env_number("MISS_ROUNDS", 3).max(1);
    let name = std::env::var("MISS_DB").unwrap_or_else(|_| format!("bench_miss_{n}"));
    if cached >= n {
        bail!("MISS_CACHE={cached} holds every one of MISS_ORDERS={n}: no request would miss");
    }
    println!("bench/miss: {n} stored orders (1-3 items each, seed {SEED}), at most {cached} cached");

    let url = kept_database(&name)?;
    println!("  kept database {name}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-miss");
    std::fs::create_dir_all(&dir)?;
    load_generated(&url, n, SEED, &dir)?;

    let deck = Deck::new(cold_ids(&url, cached)?);
    let topic = format!("bench_miss_{}", std::process::id());
    create_topic_on(&brokers(), &topic, 1);
    let mut config = service_config_on(&url, &topic);
    config.cache.max_orders = cached;
    config.cache.max_age_secs = 0;
    // So that the number of orders is the bound that holds, not their bytes.
    config.cache.max_bytes = 64 << 30;
    config.http.workers = env_number("MISS_WORKERS", 16);
    if let Ok(pool) = std::env::var("MISS_POOL") {
        config.database.pool_size = pool.parse().context("MISS_POOL: a number")?;
    }
    config.cache.max_database_waits = match std::env::var("MISS_WAITS").as_deref() {
        Ok("default") => None,
        Ok(waits) => Some(waits.parse().context("MISS_WAITS: a number, or default")?),
        Err(_) => Some(15),
    };
    let waits = Limits::new(&config.cache, config.http.workers).max_database_waits;
    let clients = env_number("MISS_CLIENTS", waits);
    println!(
        "  orders-svc: http.workers {}, cache.max_database_waits {waits}{}, cache.max_orders {}, \
         cache.max_age_secs {}, cache.max_bytes {} GiB, database.pool_size {}",
        config.http.workers,
        if config.cache.max_database_waits.is_none() { " (half the workers)" } else { "" },
        config.cache.max_orders,
        config.cache.max_age_secs,
        config.cache.max_bytes >> 30,
        config.database.pool_size,
    );
    let reader = || -> anyhow::Result<(Client, postgres::Statement)> {
        let mut client = store::connect_reader(&config.database)?;
        let statement = client.prepare(MISS_SELECT).context("prepare the reference's statement")?;
        Ok((client, statement))
    };
    let started = Instant::now();
    let service = Service::start(config.clone())?;
    let addr = service.http_addr();
    let warmed = metrics(addr)?;
    let value = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap_or_default();
    println!(
        "  orders-svc warm in {:.1} s: {} orders, {} MiB in its cache; the {} ids the warm-up left out dealt out \
         shuffled to both sides",
        started.elapsed().as_secs_f64(),
        value(&warmed, "orders_cache_entries"),
        value(&warmed, "orders_cache_bytes") as u64 >> 20,
        deck.ids.len()
    );
    println!(
        "  {rounds} rounds of {waits} clients a side, each {} s not counted then {} s counted",
        timing.warmup.as_secs(),
        timing.counted.as_secs()
    );
    println!();

    // The ceiling, before any miss evicts them: the same clients asking for orders the
    // cache holds, so that the HTTP side's own cost is measured in the same run.
    let hot = Deck::new(ids(&url, "ORDER BY ingested_at DESC, order_uid LIMIT $1", cached)?);
    let open_http = || Ok(Connection::open(addr, Duration::from_secs(30))?);
    let get_order =
        |connection: &mut Connection, uid: &str| Ok(connection.get(&format!("/order/{uid}"))?.status.to_string());
    let ceiling = closed_loop(clients, &timing, &hot, "200", open_http, get_order)?;
    println!(
        "  ceiling: cache hits over the same {clients} clients {:>7.0} hits/s  p50 {:>7.3} ms  p99 {:>7.3} ms  (status {})",
        ceiling.rate(),
        ceiling.p50,
        ceiling.p99,
        ceiling.outcomes()
    );
    let mut results: Vec<[Sample; 2]> = Vec::new();
    for round in 1..=rounds {
        let bare = closed_loop(waits, &timing, &deck, "found", reader, |(client, statement), uid| {
            Ok(match client.query_opt(statement, &[&uid])? {
                Some(row) => {
                    let document: &str = row.get("document");
                    let sha256: &[u8] = row.get("content_sha256");
                    std::hint::black_box((document.len(), sha256.len()));
                    "found".to_string()
                }
                None => "not found".to_string(),
            })
        })?;
        let before = metrics(addr)?;
        let svc = closed_loop(clients, &timing, &deck, "200", open_http, get_order)?;
        let after = metrics(addr)?;
        let [hits, misses, reads, statements, busy, evictions] =
            COUNTERS.map(|name| value(&after, name) - value(&before, name));
        println!(
            "  round {round}: bare SELECT {:>7.0} ops/s     p50 {:>7.3} ms  p99 {:>7.3} ms  ({})",
            bare.rate(),
            bare.p50,
            bare.p99,
            bare.outcomes()
        );
        println!(
            "           orders-svc  {:>7.0} misses/s  p50 {:>7.3} ms  p99 {:>7.3} ms  (status {})",
            svc.rate(),
            svc.p50,
            svc.p99,
            svc.outcomes()
        );
        println!(
            "           = {:.2}x the ops/s, p99 {:.2}x; of its lookups (warm-up included) {:.3} missed: {misses} \
             misses, {hits} hits, {reads} database reads in {statements} statements, {busy} refused as busy, {evictions} \
             evictions",
            svc.rate() / bare.rate(),
            svc.p99 / bare.p99,
            misses / (hits + misses).max(1.0),
        );
        results.push([bare, svc]);
    }
    service.shutdown();

    println!();
    // The median over the rounds, with the least and the most.
    let over_rounds = |f: &dyn Fn(&[Sample; 2]) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let spread = |f: &dyn Fn(&[Sample; 2]) -> f64| {
        let (median, least, most) = over_rounds(f);
        format!("{median:.2} (min {least:.2}, max {most:.2})")
    };
    println!("  {:<24} {:>12} {:>10} {:>10}   (medians over {rounds} rounds)", "", "requests/s", "p50", "p99");
    for (side, label) in ["bare SELECT", "orders-svc, cold misses"].into_iter().enumerate() {
        let (rate, p50, p99) =
            (over_rounds(&|r| r[side].rate()).0, over_rounds(&|r| r[side].p50).0, over_rounds(&|r| r[side].p99).0);
        println!("  {label:<24} {rate:>12.0} {p50:>8.3}ms {p99:>8.3}ms");
    }
    println!();
    println!("  misses/s / bare SELECTs/s = {}  (target: at least 0.8)", spread(&|r| r[1].rate() / r[0].rate()));
    println!(
        "  misses/s / hits/s          = {}  (the ceiling: the same clients, every order cached)",
        spread(&|r| r[1].rate() / ceiling.rate())
    );
    println!(
        "  hits/s / bare SELECTs/s    = {}  (what a miss could reach were it free)",
        spread(&|r| ceiling.rate() / r[0].rate())
    );
    println!("  p99 orders-svc / bare      = {}", spread(&|r| r[1].p99 / r[0].p99));
    println!("  p50 orders-svc / bare      = {}", spread(&|r| r[1].p50 / r[0].p50));
    let dealt = deck.next.load(Ordering::Relaxed);
    if dealt > deck.ids.len() {
        println!("  ids came round again: {dealt} dealt of {}, each repeat after every other id", deck.ids.len());
    }
    let failures: usize = results.iter().flatten().map(Sample::failures).sum();
    if failures > 0 {
        println!("  FAILURES: {failures} requests did not get their order (see the rounds above)");
    }
    Ok(())
}

/// The ids of the stored orders the warm-up leaves out when it keeps `cached`: all but
/// the most recently stored, ties broken by id, as `store::warm` chooses.
fn cold_ids(url: &str, cached: usize) -> anyhow::Result<Vec<String>> {
    ids(url, "ORDER BY ingested_at DESC, order_uid OFFSET $1", cached)
}

/// The ids of the stored orders, in the order and within the bound `tail` gives (`$1`:
/// `n`).
fn ids(url: &str, tail: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(url, postgres::NoTls)?;
    let rows = client.query(&format!("SELECT order_uid FROM orders {tail}"), &[&(n as i64)])?;
    Ok(rows.iter().map(|r| r.get("order_uid")).collect())
}

/// Ids in a random order, dealt out one at a time to every thread of both sides.
struct Deck {
    ids: Vec<String>,
    next: AtomicUsize,
}

impl Deck {
    /// `ids` shuffled (Fisher-Yates, with a fixed seed: every run asks in the same order).
    fn new(mut ids: Vec<String>) -> Deck {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..ids.len()).rev() {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ids.swap(i, (z % (i as u64 + 1)) as usize);
        }
        Deck { ids, next: AtomicUsize::new(0) }
    }

    fn deal(&self) -> &str {
        &self.ids[self.next.fetch_add(1, Ordering::Relaxed) % self.ids.len()]
    }
}

struct Timing {
    warmup: Duration,
    counted: Duration,
}

/// What one side did in its counted seconds.
struct Sample {
    /// Requests by outcome: an HTTP status, the reference's `found`, or an error.
    outcomes: BTreeMap<String, usize>,
    /// The outcome of a request that got its order.
    expected: &'static str,
    secs: f64,
    /// Of the requests that got their order, in milliseconds.
    p50: f64,
    p99: f64,
}

impl Sample {
    /// Requests a second that got their order.
    fn rate(&self) -> f64 {
        self.outcomes.get(self.expected).copied().unwrap_or_default() as f64 / self.secs
    }

    /// Requests that did not get their order.
    fn failures(&self) -> usize {
        self.outcomes.iter().filter(|(k, _)| *k != self.expected).map(|(_, n)| n).sum()
    }

    fn outcomes(&self) -> String {
        let each: Vec<String> = self.outcomes.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        each.join(", ")
    }
}

/// `clients` threads, each with what `open` gives it, sending `request` for the next id
/// of `deck` as soon as the one before is answered; counted from `timing.warmup` after
/// all have opened, for `timing.counted`. `request` says how each ended, `expected` when
/// it got its order; after an error the thread opens again.
fn closed_loop<C>(
    clients: usize,
    timing: &Timing,
    deck: &Deck,
    expected: &'static str,
    open: impl Fn() -> anyhow::Result<C> + Sync,
    request: impl Fn(&mut C, &str) -> anyhow::Result<String> + Sync,
) -> anyhow::Result<Sample> {
    let ready = Barrier::new(clients);
    let all: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (open, request, ready, all) = (&open, &request, &ready, &all);
                scope.spawn(move || -> anyhow::Result<()> {
                    let opened = open();
                    // Every thread waits here, so that none is left waiting by one that failed.
                    ready.wait();
                    let mut client = opened?;
                    let counted_from = Instant::now() + timing.warmup;
                    let end = counted_from + timing.counted;
                    let mut mine = Vec::new();
                    loop {
                        let sent = Instant::now();
                        if sent >= end {
                            break;
                        }
                        let answer = request(&mut client, deck.deal());
                        let ms = sent.elapsed().as_secs_f64() * 1000.0;
                        let outcome = match answer {
                            Ok(outcome) => outcome,
                            Err(e) => {
                                client = open().with_context(|| format!("open again after {e:#}"))?;
                                format!("error: {e:#}")
                            }
                        };
                        if sent >= counted_from {
                            mine.push((outcome, ms));
                        }
                    }
                    all.lock().expect("no thread panicked holding it").extend(mine);
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a client thread")?;
        }
        Ok(())
    })?;
    let all = all.into_inner().expect("no thread panicked holding it");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (outcome, _) in &all {
        *outcomes.entry(outcome.clone()).or_default() += 1;
    }
    let mut ms: Vec<f64> = all.iter().filter(|(o, _)| o == expected).map(|(_, ms)| *ms).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| if ms.is_empty() { f64::NAN } else { ms[((ms.len() - 1) as f64 * q).round() as usize] };
    Ok(Sample { outcomes, expected, secs: timing.counted.as_secs_f64(), p50: at(0.5), p99: at(0.99) })
}

/// Every unlabelled metric of the service's `/metrics`, by name.
fn metrics(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let response = get(addr, "/metrics");
    if response.status != 200 {
        bail!("/metrics answered {}", response.status);
    }
    Ok(response
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect())
}
