//! bench/ingest: how fast orders-svc moves orders from Kafka into PostgreSQL, measured
//! against two references in the same run on the same generated rows:
//!
//! - `psql` running `\copy` of the rows from CSV into the same tables in one
//!   transaction: the database's ceiling on this machine;
//! - the service itself with `ingest.batch_max_messages = 1`: one transaction per
//!   message, as most services of this kind write.
//!
//! The broker is the stack's Apache Kafka, or with INGEST_BROKER=own a Kafka of the
//! run's own on new storage. It shares the two cores with the service and PostgreSQL,
//! and `\copy` has no broker to share them with; the run prints the broker's CPU time.
//!
//! Run with `bench/run ingest` (brings up the local stack first). Settings from the
//! environment: INGEST_N (default 200000 orders), INGEST_BATCH1_N (how many of them the
//! batch-size-1 run ingests, default 20000: at its rate all of them would take minutes),
//! INGEST_BATCH, INGEST_BATCH_BYTES and INGEST_BATCH_WAIT_MS (the service's
//! `ingest.batch_max_messages`, `batch_max_bytes` and `batch_max_wait_ms`, default the
//! config's defaults).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orders_svc::config::Config;
use orders_svc::model::Order;
use orders_svc::service::Service;
use orders_svc::tools::generate::Generator;
use orders_svc::tools::produce::Producer;
use postgres::Client;

#[path = "common.rs"]
mod common;
use common::{bench_broker, copy_in, cpu_secs, create_topic_on, env_number, migrated_db, write_csv};

const SEED: u64 = 20_211_126;
const PARTITIONS: i32 = 4;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let n = env_number("INGEST_N", 200_000);
    let n_batch1 = env_number("INGEST_BATCH1_N", 20_000).min(n);
    let broker = bench_broker("INGEST_BROKER")?;
    let brokers = broker.addr.clone();
    let run = format!("bench_ingest_{}", std::process::id());

    println!(
        "bench/ingest: {n} generated orders (1-3 items each, seed {SEED}), {PARTITIONS} partitions, on {}",
        broker.name
    );
    let mut generator = Generator::new(SEED, 3);
    let orders: Vec<Order> = (0..n).map(|_| generator.order()).collect();
    let items: usize = orders.iter().map(|o| o.items.len()).sum();
    println!("  rows: {n} orders, {n} deliveries, {n} payments, {items} items");

    // Reference 1: psql \copy of the same rows.
    let copy_db = migrated_db()?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-ingest");
    std::fs::create_dir_all(&dir)?;
    write_csv(&dir, &orders)?;
    checkpoint(&copy_db)?;
    let started = Instant::now();
    copy_in(&dir, &copy_db.url)?;
    let copy_secs = started.elapsed().as_secs_f64();
    check_count(&copy_db, n)?;
    // Gone before the service's phase, so that autovacuum does not work through the
    // reference's rows during it.
    drop(copy_db);
    let copy_rate = n as f64 / copy_secs;
    println!("  psql \\copy:           {n:>7} orders in {copy_secs:>6.2} s = {copy_rate:>8.0} orders/s");

    // The messages, on a topic of their own.
    let topic = run.clone();
    create_topic_on(&brokers, &topic, PARTITIONS);
    let producer = Producer::new(&brokers, &topic)?;
    let started = Instant::now();
    for order in &orders {
        producer.send(Some(order.order_uid.as_bytes()), &order.to_json())?;
    }
    producer.flush()?;
    println!("  (produced {n} messages in {:.1} s)", started.elapsed().as_secs_f64());

    // The service as configured.
    let db = migrated_db()?;
    let mut config = service_config(&db, &brokers, &topic, "bench-service");
    if let Some(batch) = std::env::var("INGEST_BATCH").ok().and_then(|v| v.parse().ok()) {
        config.ingest.batch_max_messages = batch;
    }
    if let Some(bytes) = std::env::var("INGEST_BATCH_BYTES").ok().and_then(|v| v.parse().ok()) {
        config.ingest.batch_max_bytes = bytes;
    }
    if let Some(wait) = std::env::var("INGEST_BATCH_WAIT_MS").ok().and_then(|v| v.parse().ok()) {
        config.ingest.batch_max_wait_ms = wait;
    }
    let batch = config.ingest.batch_max_messages;
    let cpu = |pid: Option<u32>| pid.map_or(Ok(f64::NAN), cpu_secs);
    let before = (cpu(broker.pid)?, cpu(Some(std::process::id()))?, Instant::now());
    let service_rate = time_ingest(&db, config, n, &format!("orders-svc, batch {batch}:"))?;
    let secs = before.2.elapsed().as_secs_f64();
    println!(
        "    CPU time over those {secs:.1} s, from start to stop: the broker {:.1} s, orders-svc (this process) {:.1} s",
        cpu(broker.pid)? - before.0,
        cpu(Some(std::process::id()))? - before.1
    );

    // Reference 2: the service writing one message per transaction.
    let db1 = migrated_db()?;
    let mut config = service_config(&db1, &brokers, &topic, "bench-batch1");
    config.ingest.batch_max_messages = 1;
    let batch1_rate = time_ingest(&db1, config, n_batch1, "orders-svc, batch 1:")?;

    println!();
    println!("  orders-svc / psql \\copy  = {:.2}  (target: at least 0.9)", service_rate / copy_rate);
    println!("  orders-svc / batch 1     = {:.1}  (target: at least 10)", service_rate / batch1_rate);
    Ok(())
}

/// Starts the service on `db` and measures its rate from the first stored order to the
/// `target`-th, so the consumer group's join time is reported apart.
fn time_ingest(db: &common::TestDb, config: Config, target: usize, label: &str) -> anyhow::Result<f64> {
    let group = config.kafka.group_id.clone();
    checkpoint(db)?;
    let started = Instant::now();
    let service = Service::start(config)?;
    let mut client = db.client();
    // The messages the group has committed, read from its few rows of stored offsets
    // (written in the same transaction as the orders): counting the orders table
    // instead, 20 times a second, would scan it each time and take a share of the
    // cores from the service being measured.
    let count = |client: &mut Client| -> anyhow::Result<usize> {
        let row = client.query_one(
            "SELECT coalesce(sum(messages), 0)::int8 AS messages FROM consumer_offsets WHERE group_id = $1",
            &[&group],
        )?;
        Ok(row.get::<_, i64>("messages") as usize)
    };
    let (first_at, first_count) = loop {
        let c = count(&mut client)?;
        if c > 0 {
            break (Instant::now(), c);
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("no order was stored within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let join_secs = (first_at - started).as_secs_f64();
    loop {
        let c = count(&mut client)?;
        if c >= target {
            break;
        }
        if first_at.elapsed() > Duration::from_secs(900) {
            bail!("only {c} of {target} orders stored after 900 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = first_at.elapsed().as_secs_f64();
    service.shutdown();
    // Every message is a distinct valid order: each one counted is an order stored.
    let stored = common::count_rows(&mut client, "orders")?;
    if (stored as usize) < target {
        bail!("the group committed {target} messages but only {stored} orders are stored");
    }
    let rate = (target - first_count) as f64 / secs;
    println!(
        "  {label:<21} {target:>7} orders in {secs:>6.2} s = {rate:>8.0} orders/s  (group join and first batch: {join_secs:.1} s)"
    );
    Ok(rate)
}

fn service_config(db: &common::TestDb, brokers: &str, topic: &str, group: &str) -> Config {
    let mut config = Config::default();
    config.database.url = db.url.clone();
    config.kafka.brokers = brokers.into();
    config.kafka.topic = topic.into();
    config.kafka.group_id = format!("{group}-{}", std::process::id());
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config
}

/// Writes out what the phases before left in PostgreSQL's WAL, so that each phase starts
/// alike: a checkpoint that the `\copy` set off would otherwise run during the service's
/// ingest after it, and the other way round.
fn checkpoint(db: &common::TestDb) -> anyhow::Result<()> {
    db.client().batch_execute("CHECKPOINT").context("CHECKPOINT (the benchmark connects as a superuser)")
}

fn check_count(db: &common::TestDb, n: usize) -> anyhow::Result<()> {
    let got = common::count_rows(&mut db.client(), "orders")?;
    if got as usize != n {
        bail!("expected {n} orders, found {got}");
    }
    Ok(())
}
