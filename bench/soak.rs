//! bench/soak: the service binary under steady load for a while: generated orders
//! produced at a fixed rate while readers ask for stored orders at a fixed rate, over
//! loopback. Reports the resident memory of the service over time (it must level off
//! once the cache is full), errors (5xx, broken connections), and read latency.
//!
//! Readers ask for orders among the 40,000 most recently produced (lookups favour recent
//! orders), produced at least two seconds earlier.
//!
//! Run with `bench/run soak`. Settings from the environment: SOAK_SECONDS (300),
//! SOAK_ORDERS_PER_SEC (1000), SOAK_READS_PER_SEC (5000), SOAK_CACHE_ORDERS (50000:
//! small enough that the cache fills within the run).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orders_svc::tools::generate::Generator;
use orders_svc::tools::produce::Producer;

#[path = "common.rs"]
mod common;
use common::support::http::Connection;
use common::{brokers, create_topic_on, env_number, migrated_db};

const READERS: usize = 8;
/// Readers ask for one of this many most recently produced orders: fewer than the cache
/// holds, so reads are mostly hits, while ingest keeps the cache evicting.
const RECENT: usize = 40_000;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let seconds = env_number("SOAK_SECONDS", 300) as u64;
    let orders_per_sec = env_number("SOAK_ORDERS_PER_SEC", 1000) as u64;
    let reads_per_sec = env_number("SOAK_READS_PER_SEC", 5000) as u64;
    let cache_orders = env_number("SOAK_CACHE_ORDERS", 50_000);
    let run = format!("bench_soak_{}", std::process::id());
    println!(
        "bench/soak: {seconds} s, {orders_per_sec} orders/s produced, {reads_per_sec} reads/s over {READERS} keep-alive connections, cache of {cache_orders} orders"
    );

    let db = migrated_db()?;
    create_topic_on(&brokers(), &run, 4);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-soak");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("orders.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[kafka]\nbrokers = \"{}\"\ntopic = \"{run}\"\ngroup_id = \"{run}\"\n\
             [http]\naddr = \"127.0.0.1:{port}\"\n[cache]\nmax_orders = {cache_orders}\n",
            db.url,
            brokers()
        ),
    )?;
    let mut service = Command::new(env!("CARGO_BIN_EXE_orders-svc"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("service.log"))?)
        .spawn()
        .context("start orders-svc")?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let started = Instant::now();
    let ready = || Connection::open(addr, Duration::from_secs(1)).and_then(|mut c| c.get("/readyz")).map(|r| r.status);
    while ready().ok() != Some(200) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the service was not ready after 60 s; see {}", dir.join("service.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The producer: generated orders at a fixed pace; their uids become readable.
    let uids: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (uids, stop) = (uids.clone(), stop.clone());
        let topic = run.clone();
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let producer = Producer::new(&brokers(), &topic)?;
            let mut generator = Generator::new(2027, 5);
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(sent as f64 / orders_per_sec as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let order = generator.order();
                producer.send(Some(order.order_uid.as_bytes()), &order.to_json())?;
                uids.lock().unwrap().push(order.order_uid);
                sent += 1;
            }
            producer.flush()?;
            Ok(sent)
        })
    };

    // Readers: each paced, on one keep-alive connection, asking for orders produced at
    // least two seconds ago.
    let errors = Arc::new(AtomicU64::new(0));
    let first_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let not_found = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (uids, stop, errors, not_found) = (uids.clone(), stop.clone(), errors.clone(), not_found.clone());
            let first_errors = first_errors.clone();
            let per_reader = reads_per_sec as f64 / READERS as f64;
            std::thread::spawn(move || -> Vec<u32> {
                let mut latencies = Vec::new();
                let mut random = Generator::new(r as u64, 1);
                let mut connection: Option<Connection> = None;
                let start = Instant::now();
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + Duration::from_secs_f64(done as f64 / per_reader);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    done += 1;
                    let readable = uids.lock().unwrap().len().saturating_sub(2 * orders_per_sec as usize);
                    if readable == 0 {
                        continue;
                    }
                    // Lookups favour recent orders: one of the RECENT newest readable ones.
                    let uid = {
                        let all = uids.lock().unwrap();
                        let back = (random.order().sm_id as usize * 7919 + done as usize) % readable.min(RECENT);
                        all[readable - 1 - back].clone()
                    };
                    let asked = Instant::now();
                    match get(&mut connection, addr, &uid) {
                        Ok(200) => latencies.push(asked.elapsed().as_micros() as u32),
                        Ok(404) => {
                            not_found.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_errors.lock().unwrap();
                            if first.len() < 5 {
                                first.push(format!("t={:.1}s {other:?}", start.elapsed().as_secs_f64()));
                            }
                            connection = None;
                        }
                    }
                }
                latencies
            })
        })
        .collect();

    // Resident memory of the service, every 10 s.
    let mut samples = Vec::new();
    let soak_start = Instant::now();
    while soak_start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(
            Duration::from_secs(10).min(Duration::from_secs(seconds).saturating_sub(soak_start.elapsed())),
        );
        let rss = resident_kib(service.id())?;
        let t = soak_start.elapsed().as_secs();
        println!("  t={t:>4} s  rss={:>7.1} MiB  produced={}", rss as f64 / 1024.0, uids.lock().unwrap().len());
        samples.push((t, rss));
    }
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().expect("producer thread")?;
    let mut latencies: Vec<u32> = readers.into_iter().flat_map(|r| r.join().expect("reader thread")).collect();
    latencies.sort_unstable();

    let metrics = common::support::get(addr, "/metrics").body;
    let metric = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default()
    };
    Command::new("kill").arg(service.id().to_string()).status()?;
    let exit = service.wait()?;
    let stored = common::count_rows(&mut db.client(), "orders")?;

    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let (first, last) = (samples.first().map_or(0, |s| s.1), samples.last().map_or(0, |s| s.1));
    let middle = samples.get(samples.len() / 2).map_or(0, |s| s.1);
    println!();
    println!("  orders produced {produced}, stored {stored}");
    println!(
        "  reads answered 200: {}, 404 (not stored yet): {}, errors: {}",
        latencies.len(),
        not_found.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    for e in first_errors.lock().unwrap().iter() {
        println!("  error: {e}");
    }
    println!(
        "  read latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    println!(
        "  resident memory: {:.1} MiB at 10 s, {:.1} MiB at the middle, {:.1} MiB at the end",
        first as f64 / 1024.0,
        middle as f64 / 1024.0,
        last as f64 / 1024.0
    );
    println!(
        "  cache at the end: {} orders, {} bytes, {} evictions",
        metric("orders_cache_entries "),
        metric("orders_cache_bytes "),
        metric("orders_cache_evictions_total ")
    );
    println!("  service exit after SIGTERM: {exit}");
    Ok(())
}

/// One keep-alive GET; reconnects when there is no connection.
fn get(connection: &mut Option<Connection>, addr: std::net::SocketAddr, uid: &str) -> anyhow::Result<u16> {
    if connection.is_none() {
        *connection = Some(Connection::open(addr, Duration::from_secs(5))?);
    }
    let response = connection.as_mut().expect("connected").get(&format!("/order/{uid}"))?;
    Ok(response.status)
}

fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read the service's /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
