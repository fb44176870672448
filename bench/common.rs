//! What the benchmarks share beyond the test support: settings from the environment and a
//! database with the service's schema.

#![allow(dead_code)] // each benchmark uses a different part of it

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use orders_svc::model::Order;
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

/// A database of the run's own with the service's tables, dropped at the end.
pub fn migrated_db() -> anyhow::Result<TestDb> {
    let db = TestDb::new();
    orders_svc::store::migrate(&mut db.client())?;
    Ok(db)
}

/// The service's configuration on `db`, the stack's broker and `topic` (the group named
/// after it), answering HTTP on any free port.
pub fn service_config(db: &TestDb, topic: &str) -> orders_svc::config::Config {
    let mut config = orders_svc::config::Config::default();
    config.database.url = db.url.clone();
    config.kafka.brokers = brokers();
    config.kafka.topic = topic.into();
    config.kafka.group_id = topic.into();
    config.http.addr = "127.0.0.1:0".parse().expect("a socket address");
    config
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
