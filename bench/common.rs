//! What the benchmarks share beyond the test support: settings from the environment and a
//! database with the service's schema.

#![allow(dead_code)] // each benchmark uses a different part of it

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use orders_svc::model::Order;
use orders_svc::tools::generate::Generator;
use postgres::Client;
use time::format_description::well_known::Rfc3339;

#[path = "../tests/support/mod.rs"]
pub mod support;

pub use support::{TestDb, brokers, create_topic_on};

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The broker a benchmark runs against.
pub struct BenchBroker {
    /// The run's own broker, stopped when dropped; None for the stack's.
    pub own: Option<support::Broker>,
    pub addr: String,
    /// For the report.
    pub name: &'static str,
    /// Its process, to read its CPU time.
    pub pid: Option<u32>,
}

/// The broker a benchmark runs against, as the environment variable `var` says: `stack`
/// (the default), the stack's Apache Kafka, or `own`, an Apache Kafka of the run's own
/// on new storage, stopped at the end of the run.
pub fn bench_broker(var: &str) -> anyhow::Result<BenchBroker> {
    match std::env::var(var).as_deref() {
        Ok("stack") | Err(_) => {
            let pid_file = std::env::var("STACK_KAFKA_PID_FILE").context("STACK_KAFKA_PID_FILE: run bench/run")?;
            let pid = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse().ok());
            Ok(BenchBroker { own: None, addr: brokers(), name: "the stack's Apache Kafka", pid })
        }
        Ok("own") => {
            let broker = support::Broker::start();
            let (addr, pid) = (broker.addr(), broker.pid());
            Ok(BenchBroker { own: Some(broker), addr, name: "an Apache Kafka of the run's own", pid })
        }
        Ok(other) => anyhow::bail!("{var}={other}: expected stack or own"),
    }
}

/// The CPU time (user and system) process `pid` has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses: utime and stime are
    // the 12th and 13th of them (fields 14 and 15 of proc(5)).
    let (_, after) = stat.rsplit_once(')').context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let [utime, stime] = [11, 12].map(|i| fields.get(i).and_then(|f| f.parse::<u64>().ok()));
    let ticks = utime.zip(stime).map(|(u, s)| u + s).context("no CPU times in /proc/PID/stat")?;
    // SAFETY: sysconf only reads a system setting.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / per_sec as f64)
}

/// The CPU time the whole machine has been busy (not idle, not waiting for I/O) since it
/// started, summed over its cores, in seconds.
pub fn machine_busy_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    // The first line sums the cores: user nice system idle iowait irq softirq steal.
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .take(8)
        .map(|t| t.parse().context("a tick count in /proc/stat"))
        .collect::<anyhow::Result<_>>()?;
    let busy = ticks.iter().sum::<u64>() - ticks.get(3..5).context("no idle times in /proc/stat")?.iter().sum::<u64>();
    // SAFETY: sysconf only reads a system setting.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(busy as f64 / per_sec as f64)
}

/// A database of the run's own with the service's tables, dropped at the end.
pub fn migrated_db() -> anyhow::Result<TestDb> {
    let db = TestDb::new();
    orders_svc::store::migrate(&mut db.client())?;
    Ok(db)
}

/// The service's configuration on `db`, the stack's broker and `topic` (the group named
/// after it), answering HTTP on any free port.
pub fn service_config(db: &TestDb, topic: &str) -> orders_svc::config::Config {
    service_config_on(&db.url, topic)
}

/// As `service_config`, on the database at `url`.
pub fn service_config_on(url: &str, topic: &str) -> orders_svc::config::Config {
    let mut config = orders_svc::config::Config::default();
    config.database.url = url.into();
    config.kafka.brokers = brokers();
    config.kafka.topic = topic.into();
    config.kafka.group_id = topic.into();
    config.http.addr = "127.0.0.1:0".parse().expect("a socket address");
    config
}

/// The database `name`, created with the service's tables if missing; kept after the
/// run, so that the next one need not load it again.
pub fn kept_database(name: &str) -> anyhow::Result<String> {
    let admin = support::admin_url();
    let (base, _) = admin.rsplit_once('/').context("a database URL ends with /name")?;
    let mut client = Client::connect(&admin, postgres::NoTls)?;
    if client.query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])?.is_empty() {
        client.batch_execute(&format!("CREATE DATABASE {name}"))?;
    }
    let url = format!("{base}/{name}");
    orders_svc::store::migrate(&mut Client::connect(&url, postgres::NoTls)?)?;
    Ok(url)
}

/// How many rows `table` has.
pub fn count_rows(client: &mut Client, table: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(&format!("SELECT count(*) AS n FROM {table}"), &[])?.get("n"))
}

/// Makes the database at `url` hold the `n` orders `Generator::new(seed, 3)` makes (1-3
/// items each), dated as `write_csv` dates them, unless it already holds `n` orders:
/// then it is left as it is, so that a kept database is loaded once. The rows go in by
/// `copy_in` through CSV files in `dir`, and are vacuumed and analyzed after.
pub fn load_generated(url: &str, n: usize, seed: u64, dir: &Path) -> anyhow::Result<()> {
    let mut client = Client::connect(url, postgres::NoTls)?;
    if count_rows(&mut client, "orders")? != n as i64 {
        client.batch_execute("TRUNCATE orders CASCADE")?;
        let started = std::time::Instant::now();
        let mut generator = Generator::new(seed, 3);
        let orders: Vec<_> = (0..n).map(|_| generator.order()).collect();
        write_csv(dir, &orders)?;
        drop(orders);
        copy_in(dir, url)?;
        // Sets the rows' hint bits and statistics now, so that no round pays for them.
        client.batch_execute("VACUUM ANALYZE")?;
        println!("  loaded in {:.1} s", started.elapsed().as_secs_f64());
    }
    println!("  {} orders with {} items", count_rows(&mut client, "orders")?, count_rows(&mut client, "order_items")?);
    Ok(())
}

/// Runs `psql` on the `copy.sql` that `write_csv` wrote in `dir`, in one transaction, into
/// the database at `url`.
pub fn copy_in(dir: &Path, url: &str) -> anyhow::Result<()> {
    let status = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", url, "-f"])
        .arg(dir.join("copy.sql"))
        .current_dir(dir)
        .status()
        .context("run psql (is PostgreSQL's client installed?)")?;
    if !status.success() {
        bail!("psql \\copy failed: {status}");
    }
    Ok(())
}

/// The rows as four CSV files (each order with its document) and a psql script that
/// copies them in. The orders are dated as if ingested in batches of 500, one
/// millisecond apart, the last batch newest.
pub fn write_csv(dir: &Path, orders: &[Order]) -> anyhow::Result<()> {
    fn q(s: &str) -> String {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
    let (mut o, mut d, mut p, mut i) = (String::new(), String::new(), String::new(), String::new());
    let base = time::OffsetDateTime::now_utc() - time::Duration::milliseconds((orders.len() / 500) as i64 + 1);
    for (n, x) in orders.iter().enumerate() {
        let ingested = (base + time::Duration::milliseconds((n / 500) as i64)).format(&Rfc3339)?;
        let created = x.date_created.format(&Rfc3339)?;
        let encoded = x.clone().encode();
        let fingerprint: String = encoded.sha256.iter().map(|b| format!("{b:02x}")).collect();
        let document = std::str::from_utf8(&encoded.json)?;
        writeln!(
            o,
            "{},{},{},{},{},{},{},{},{},{},{},\\x{},{ingested},{}",
            q(&x.order_uid),
            q(&x.track_number),
            q(&x.entry),
            q(&x.locale),
            q(&x.internal_signature),
            q(&x.customer_id),
            q(&x.delivery_service),
            q(&x.shardkey),
            x.sm_id,
            created,
            q(&x.oof_shard),
            fingerprint,
            q(document)
        )?;
        let v = &x.delivery;
        writeln!(
            d,
            "{},{},{},{},{},{},{},{}",
            q(&x.order_uid),
            q(&v.name),
            q(&v.phone),
            q(&v.zip),
            q(&v.city),
            q(&v.address),
            q(&v.region),
            q(&v.email)
        )?;
        let y = &x.payment;
        writeln!(
            p,
            "{},{},{},{},{},{},{},{},{},{},{}",
            q(&x.order_uid),
            q(&y.transaction),
            q(&y.request_id),
            q(&y.currency),
            q(&y.provider),
            y.amount,
            y.payment_dt,
            q(&y.bank),
            y.delivery_cost,
            y.goods_total,
            y.custom_fee
        )?;
        for (n, it) in x.items.iter().enumerate() {
            writeln!(
                i,
                "{},{n},{},{},{},{},{},{},{},{},{},{},{}",
                q(&x.order_uid),
                it.chrt_id,
                q(&it.track_number),
                it.price,
                q(&it.rid),
                q(&it.name),
                it.sale,
                q(&it.size),
                it.total_price,
                it.nm_id,
                q(&it.brand),
                it.status
            )?;
        }
    }
    std::fs::write(dir.join("orders.csv"), o)?;
    std::fs::write(dir.join("deliveries.csv"), d)?;
    std::fs::write(dir.join("payments.csv"), p)?;
    std::fs::write(dir.join("items.csv"), i)?;
    std::fs::write(
        dir.join("copy.sql"),
        "\\copy orders (order_uid, track_number, entry, locale, internal_signature, customer_id, delivery_service, shardkey, sm_id, date_created, oof_shard, content_sha256, ingested_at, document) FROM 'orders.csv' CSV\n\
         \\copy deliveries (order_uid, name, phone, zip, city, address, region, email) FROM 'deliveries.csv' CSV\n\
         \\copy payments (order_uid, transaction, request_id, currency, provider, amount, payment_dt, bank, delivery_cost, goods_total, custom_fee) FROM 'payments.csv' CSV\n\
         \\copy order_items (order_uid, position, chrt_id, track_number, price, rid, name, sale, size, total_price, nm_id, brand, status) FROM 'items.csv' CSV\n",
    )?;
    Ok(())
}
