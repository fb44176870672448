//! bench/warm: how long orders-svc takes, from its start, to fill its cache from
//! PostgreSQL, and how much memory it then holds, against references in the same run:
//!
//! - the time: PostgreSQL streaming what the warm-up reads to a client that throws it
//!   away, each order's id, document, digest and age (`COPY (SELECT …) TO STDOUT
//!   BINARY`): the stream the warm-up cannot be faster than, timed the second of two
//!   reads in a row, as the service's start finds the table. Also printed, not a target:
//!   the service's time against streaming the order's rows joined
//!   (`COPY (orders joined with deliveries and payments) TO STDOUT`, then
//!   `COPY order_items TO STDOUT`), which is what the warm-up read before every order had
//!   its document;
//! - the memory: the bytes the cache counts (`orders_cache_bytes`: each order's JSON, its
//!   id, its ETag and 160 bytes of bookkeeping).
//!
//! Each round also prints the CPU time spent while each was timed, the machine's (its
//! cores' busy time, from `/proc/stat`) and the reading process's: the reference's client
//! is this benchmark, whose read is the warm-up's without the cache built from it.
//!
//! The orders are generated (1-3 items each) and copied in once by `psql \copy`; then
//! each round times the reference and a start of the `orders-svc` binary, which is
//! stopped once its log says `event=cache_warmed`.
//!
//! Run with `bench/run warm`. Settings from the environment: WARM_N (default 1000000
//! orders), WARM_ROUNDS (default 3), WARM_KEEP_DB (see below).

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postgres::Client;

#[path = "common.rs"]
mod common;
use common::support::process::{Process, config_toml, free_addr};
use common::{
    brokers, cpu_secs, create_topic_on, env_number, kept_database, load_generated, machine_busy_secs, migrated_db,
};

const SEED: u64 = 20_211_126;

/// CPU seconds over a timed interval: all the machine's cores, and one process's.
#[derive(Clone, Copy)]
struct Cpu {
    machine: f64,
    process: f64,
}

impl Cpu {
    /// The machine's busy core-seconds and the process's, so far.
    fn now(pid: u32) -> anyhow::Result<Cpu> {
        Ok(Cpu { machine: machine_busy_secs()?, process: cpu_secs(pid)? })
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu { machine: self.machine - start.machine, process: self.process - start.process }
    }
}

/// The rows the orders are kept in, as PostgreSQL streams them.
const ROWS: [&str; 2] = [
    "COPY (SELECT * FROM orders JOIN deliveries USING (order_uid) JOIN payments USING (order_uid)) TO STDOUT",
    "COPY order_items TO STDOUT",
];

/// The reference: what the warm-up itself reads of each order.
const DOCUMENTS: [&str; 1] =
    ["COPY (SELECT order_uid, document, content_sha256, ingested_at FROM orders) TO STDOUT BINARY"];

struct Round {
    rows_secs: f64,
    documents_secs: f64,
    /// What the machine's cores and this client spent on the reference's second read.
    documents_cpu: Cpu,
    service_secs: f64,
    /// What the cores and orders-svc spent from its start until its cache was warm.
    service_cpu: Cpu,
    cache_bytes: u64,
    resident_bytes: u64,
    peak_resident_bytes: u64,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let n = env_number("WARM_N", 1_000_000);
    let rounds = env_number("WARM_ROUNDS", 3);
    println!("bench/warm: {n} generated orders (1-3 items each, seed {SEED}), {rounds} rounds");

    // WARM_KEEP_DB names a database to load once and keep for the next runs (to profile
    // one part at a time); by default the run has a database of its own, dropped at the end.
    let (url, _dropped_at_end) = match std::env::var("WARM_KEEP_DB") {
        Ok(name) => (kept_database(&name)?, None),
        Err(_) => {
            let db = migrated_db()?;
            (db.url.clone(), Some(db))
        }
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-warm");
    std::fs::create_dir_all(&dir)?;
    load_generated(&url, n, SEED, &dir)?;
    let mut client = Client::connect(&url, postgres::NoTls)?;

    let topic = format!("bench_warm_{}", std::process::id());
    create_topic_on(&brokers(), &topic, 1);
    let extra = format!("[cache]\nmax_orders = {}\nmax_bytes = {}\n", n + 1, 64u64 << 30);
    let cores = std::thread::available_parallelism()?.get() as f64;
    let mut results = Vec::new();
    for round in 1..=rounds {
        let rows_secs = stream(&mut client, &ROWS)?;
        // Twice, timing the second: the service's start, next, finds the table as this
        // read leaves it (read just before, its pages in memory), and so does the reference.
        stream(&mut client, &DOCUMENTS)?;
        let before = Cpu::now(std::process::id())?;
        let documents_secs = stream(&mut client, &DOCUMENTS)?;
        let documents_cpu = Cpu::now(std::process::id())?.since(before);
        let toml = config_toml(&url, &topic, &topic, free_addr(), &extra);
        let r = start_service(&dir, &toml, rows_secs, (documents_secs, documents_cpu))?;
        println!(
            "  round {round}: PostgreSQL streams the rows in {:.2} s, the documents in {:.2} s; orders-svc warm \
             in {:.2} s = {:.2}x the rows, {:.2}x the documents; resident {} MiB after, {} MiB at peak, \
             for {} MiB in the cache = {:.2}x after, {:.2}x at peak",
            r.rows_secs,
            r.documents_secs,
            r.service_secs,
            r.service_secs / r.rows_secs,
            r.service_secs / r.documents_secs,
            r.resident_bytes >> 20,
            r.peak_resident_bytes >> 20,
            r.cache_bytes >> 20,
            r.resident_bytes as f64 / r.cache_bytes as f64,
            r.peak_resident_bytes as f64 / r.cache_bytes as f64,
        );
        println!(
            "           CPU: while the documents streamed, the cores were busy {:.2} s of {:.2} (this client {:.2} s, \
             the rest mostly PostgreSQL {:.2} s); while orders-svc warmed, {:.2} s of {:.2} (orders-svc {:.2} s, \
             the rest {:.2} s)",
            r.documents_cpu.machine,
            r.documents_secs * cores,
            r.documents_cpu.process,
            r.documents_cpu.machine - r.documents_cpu.process,
            r.service_cpu.machine,
            r.service_secs * cores,
            r.service_cpu.process,
            r.service_cpu.machine - r.service_cpu.process,
        );
        results.push(r);
    }

    println!();
    let spread = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        format!("{:.2} (min {:.2}, max {:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "  warm time / streaming the documents  = {}  (target: at most 1.1)",
        spread(&|r| r.service_secs / r.documents_secs)
    );
    println!("  warm time / streaming the rows       = {}", spread(&|r| r.service_secs / r.rows_secs));
    println!(
        "  orders-svc's CPU / this client's     = {}  (the same read, and the cache built)",
        spread(&|r| r.service_cpu.process / r.documents_cpu.process)
    );
    println!(
        "  cores busy: warm / the reference     = {} and {}  (of {cores} cores)",
        spread(&|r| r.service_cpu.machine / r.service_secs),
        spread(&|r| r.documents_cpu.machine / r.documents_secs)
    );
    println!(
        "  resident after warm / cache bytes    = {}  (target: at most 1.2)",
        spread(&|r| r.resident_bytes as f64 / r.cache_bytes as f64)
    );
    println!(
        "  peak resident / cache bytes          = {}",
        spread(&|r| r.peak_resident_bytes as f64 / r.cache_bytes as f64)
    );
    Ok(())
}

/// Streams the rows of `statements` to nowhere; returns the seconds it took.
fn stream(client: &mut Client, statements: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut buffer = vec![0u8; 1 << 16];
    for statement in statements {
        let mut reader = client.copy_out(*statement).with_context(|| statement.to_string())?;
        while reader.read(&mut buffer)? > 0 {}
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Starts orders-svc, waits for its cache to be warm, reads its memory, and stops it.
fn start_service(dir: &Path, toml: &str, rows_secs: f64, documents: (f64, Cpu)) -> anyhow::Result<Round> {
    let (documents_secs, documents_cpu) = documents;
    let machine_before = machine_busy_secs()?;
    let started = Instant::now();
    let process = Process::start(dir, "orders-svc", toml, &[]);
    let line = loop {
        if let Some(line) = process.log().lines().find(|l| l.contains("event=cache_warmed")) {
            break line.to_string();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("orders-svc did not warm within 600 s; its log:\n{}", process.log());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let service_secs = started.elapsed().as_secs_f64();
    let service_cpu = Cpu { machine: machine_busy_secs()? - machine_before, process: cpu_secs(process.id())? };
    let cache_bytes: u64 = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("bytes="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no bytes= in {line:?}"))?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.id()))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
            .with_context(|| format!("{key} in /proc/PID/status"))
    };
    let round = Round {
        rows_secs,
        documents_secs,
        documents_cpu,
        service_secs,
        service_cpu,
        cache_bytes,
        resident_bytes: kib("VmRSS:")?,
        peak_resident_bytes: kib("VmHWM:")?,
    };
    process.signal("TERM");
    Ok(round)
}
