//! bench/freshness: how long an order takes from the producer to a 200 at
//! `/order/<uid>`, under a steady stream.
//!
//! An open-loop producer sends generated orders at FRESHNESS_RATE a second (default
//! 500: at 2,000 the local broker itself falls behind) for FRESHNESS_SECONDS (30) to a
//! 4-partition topic. Every FRESHNESS_SAMPLE-th
//! order (10) is followed: four readers ask for it, on keep-alive connections, until it
//! is answered 200: each order at most every millisecond (FRESHNESS_POLL_US sets it),
//! and each reader at most 1,000 times a second, so that the readers stay a small load
//! whatever the backlog. Its freshness is the time from the moment its
//! send was due (the open-loop schedule, so a producer running late does not hide the
//! delay) to that first 200.
//!
//! Reference, in the same run: a bare librdkafka consumer of the same topic, timed from
//! the same moments to its receipt of each followed message: the broker's own delivery
//! time, the floor of anything that consumes from it. The service runs with the default
//! batch settings unless FRESHNESS_BATCH_WAIT_MS (ingest.batch_max_wait_ms) is given.
//! The broker is the stack's Apache Kafka, or with FRESHNESS_BROKER=own a Kafka of the
//! run's own on new storage. The producer is idempotent, as Kafka's producers are by
//! default, unless FRESHNESS_IDEMPOTENT=0. With FRESHNESS_TRANSACTION_MS=n, the orders are
//! sent by a transactional producer that commits every n ms (each commit leaves a marker
//! in each partition written to; both consumers read committed messages only).
//!
//! Run with `bench/run freshness`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use orders_svc::service::Service;
use orders_svc::tools::generate::Generator;
use orders_svc::tools::produce::Producer;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[path = "common.rs"]
mod common;
use common::support::http::Connection;
use common::{bench_broker, create_topic_on, env_number, migrated_db, service_config};

const READERS: usize = 4;
/// The soonest an order is asked for again, unless FRESHNESS_POLL_US says otherwise.
const POLL_EVERY: Duration = Duration::from_millis(1);
/// The pause of a reader after each request: 4 readers ask at most 4,000 times a
/// second, so that the readers cannot take the cores from what they measure when many
/// orders are pending (each is then asked less often).
const READER_PAUSE: Duration = Duration::from_millis(1);

/// Followed orders not yet served: uid → (when its send was due, when to ask next).
type Pending = Mutex<HashMap<String, (Instant, Instant)>>;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let rate = env_number("FRESHNESS_RATE", 500);
    let seconds = env_number("FRESHNESS_SECONDS", 30);
    let sample = env_number("FRESHNESS_SAMPLE", 10).max(1);
    let run = format!("bench_freshness_{}", std::process::id());
    let db = migrated_db()?;
    // With FRESHNESS_BROKER=stack, the stack's broker: a bare consumer's p99 was 0.28 s
    // there against 0.03 s in memory.
    let broker = bench_broker("FRESHNESS_BROKER")?;
    let (brokers, broker_name) = (broker.addr.clone(), broker.name);
    create_topic_on(&brokers, &run, 4);

    // FRESHNESS_KAFKA="name=value,…": librdkafka settings for the service's consumer and
    // the reference consumer alike.
    let kafka_settings: Vec<(String, String)> = std::env::var("FRESHNESS_KAFKA")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).context("FRESHNESS_KAFKA: name=value"))
        .collect::<anyhow::Result<_>>()?;
    let idempotent = std::env::var("FRESHNESS_IDEMPOTENT").map_or(true, |v| v != "0");
    let transaction_every = Duration::from_millis(env_number("FRESHNESS_TRANSACTION_MS", 0) as u64);
    let mut config = service_config(&db, &run);
    config.kafka.brokers = brokers.clone();
    config.kafka.properties.extend(kafka_settings.iter().cloned());
    if let Ok(wait) = std::env::var("FRESHNESS_BATCH_WAIT_MS") {
        config.ingest.batch_max_wait_ms = wait.parse().context("FRESHNESS_BATCH_WAIT_MS")?;
    }
    let (batch_messages, batch_wait) = (config.ingest.batch_max_messages, config.ingest.batch_max_wait_ms);
    let service = Service::start(config)?;
    let addr = service.http_addr();
    wait_until_assigned(&service)?;

    // The reference consumer, at the end of every partition before the first send.
    let mut bare = ClientConfig::new();
    bare.set("bootstrap.servers", &brokers)
        .set("group.id", format!("{run}_bare"))
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    for (name, value) in &kafka_settings {
        bare.set(name, value);
    }
    let bare: BaseConsumer = bare.create()?;
    bare.subscribe(&[&run])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while bare.assignment()?.count() < 4 {
        anyhow::ensure!(Instant::now() < deadline, "the reference consumer got no partitions in 30 s");
        if let Some(message) = bare.poll(Duration::from_millis(100)) {
            message?;
        }
    }

    let due: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let pending: Arc<Pending> = Arc::default();
    let served: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let delivered: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));

    let poll_every = std::env::var("FRESHNESS_POLL_US")
        .map_or(Ok(POLL_EVERY), |us| us.parse().map(Duration::from_micros))
        .context("FRESHNESS_POLL_US")?;
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (pending, served, producing) = (pending.clone(), served.clone(), producing.clone());
            std::thread::spawn(move || read_until_served(addr, poll_every, &pending, &served, &producing))
        })
        .collect();
    let reference = {
        let (due, delivered, producing) = (due.clone(), delivered.clone(), producing.clone());
        std::thread::spawn(move || {
            let quiet_after = Duration::from_secs(5);
            let mut last = Instant::now();
            while producing.load(Ordering::Relaxed) || last.elapsed() < quiet_after {
                let Some(Ok(message)) = bare.poll(Duration::from_millis(50)) else { continue };
                last = Instant::now();
                let uid = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                if let Some(due) = due.lock().unwrap().get(&uid) {
                    delivered.lock().unwrap().push(due.elapsed());
                }
            }
        })
    };

    println!(
        "bench/freshness: {rate} orders/s for {seconds} s, every {sample}th followed; ingest.batch_max_messages = \
         {batch_messages}, ingest.batch_max_wait_ms = {batch_wait}; broker: {broker_name}; idempotent producer: \
         {idempotent}; transactions committed every {} ms (0: none)",
        transaction_every.as_millis()
    );
    let transactional = !transaction_every.is_zero();
    let idempotence = idempotent.to_string();
    let transactional_id = format!("{run}-producer");
    let mut settings = vec![("enable.idempotence", idempotence.as_str())];
    if transactional {
        settings.push(("transactional.id", transactional_id.as_str()));
    }
    let producer = Producer::with_settings(&brokers, &run, &settings)?;
    if transactional {
        producer.begin_transactions()?;
    }
    let mut generator = Generator::new(2026, 3);
    // The producer connects, learns the partitions' leaders and gets its producer id
    // before the schedule starts: one order sent and flushed first, not followed.
    // Otherwise the first second's orders wait for that, and their delay is the start's.
    producer.send(Some(b"warm-up"), &Generator::new(1, 1).order().to_json())?;
    if transactional {
        producer.commit_transaction(true)?;
    }
    producer.flush()?;
    let start = Instant::now();
    let mut transaction_begun = start;
    let total = rate * seconds;
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let order = generator.order();
        if i % sample == 0 {
            due.lock().unwrap().insert(order.order_uid.clone(), at);
            pending.lock().unwrap().insert(order.order_uid.clone(), (at, Instant::now()));
        }
        producer.send(Some(order.order_uid.as_bytes()), &order.to_json())?;
        if transactional && transaction_begun.elapsed() >= transaction_every {
            producer.commit_transaction(true)?;
            transaction_begun = Instant::now();
        }
    }
    if transactional {
        producer.commit_transaction(false)?;
    }
    // Less the warm-up order.
    let sent = producer.flush()? - 1;
    let late = start.elapsed().as_secs_f64() - seconds as f64;
    producing.store(false, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("reader");
    }
    reference.join().expect("reference consumer");
    service.shutdown();

    let followed = due.lock().unwrap().len();
    let served = std::mem::take(&mut *served.lock().unwrap());
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    println!("  sent {sent} orders ({late:.1} s behind the schedule at the end); followed {followed}");
    println!("  {:<34} {:>8} {:>10} {:>10} {:>10}", "from the send to", "orders", "p50", "p99", "max");
    let (svc, reference) = (summary(&served), summary(&delivered));
    for (name, s) in [("a 200 from orders-svc", &svc), ("the bare consumer's receipt", &reference)] {
        println!("  {name:<34} {:>8} {:>8.1}ms {:>8.1}ms {:>8.1}ms", s.count, s.p50, s.p99, s.max);
    }
    println!(
        "  orders-svc / bare consumer: p50 {:.2}, p99 {:.2}  (target: orders-svc p99 under 100 ms)",
        svc.p50 / reference.p50,
        svc.p99 / reference.p99
    );
    if served.len() < followed {
        println!("  NOT SERVED within 10 s of the last send: {}", followed - served.len());
    }
    Ok(())
}

/// Asks for each pending order every `poll_every` until it is answered 200; stops when
/// production is over and nothing is pending, or 10 s after production ended.
fn read_until_served(
    addr: std::net::SocketAddr,
    poll_every: Duration,
    pending: &Pending,
    served: &Mutex<Vec<Duration>>,
    producing: &AtomicBool,
) {
    let mut connection = Connection::open(addr, Duration::from_secs(10)).expect("connect to the service");
    let mut ended: Option<Instant> = None;
    loop {
        if !producing.load(Ordering::Relaxed) {
            let ended = *ended.get_or_insert_with(Instant::now);
            if pending.lock().unwrap().is_empty() || ended.elapsed() > Duration::from_secs(10) {
                return;
            }
        }
        // The pending order whose turn came first, taken out while it is asked for.
        let next = {
            let mut pending = pending.lock().unwrap();
            let now = Instant::now();
            let uid =
                pending.iter().filter(|(_, (_, at))| *at <= now).min_by_key(|(_, (_, at))| *at).map(|(u, _)| u.clone());
            uid.and_then(|uid| pending.remove_entry(&uid))
        };
        let Some((uid, (due, _))) = next else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let response = connection.get(&format!("/order/{uid}")).expect("an answer");
        if response.status == 200 {
            served.lock().unwrap().push(due.elapsed());
        } else {
            pending.lock().unwrap().insert(uid, (due, Instant::now() + poll_every));
        }
        std::thread::sleep(READER_PAUSE);
    }
}

fn wait_until_assigned(service: &Service) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.health().assigned_partitions() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the service got no partitions in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct Summary {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Percentiles in milliseconds.
fn summary(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| if ms.is_empty() { f64::NAN } else { ms[((ms.len() - 1) as f64 * q).round() as usize] };
    Summary { count: ms.len(), p50: at(0.5), p99: at(0.99), max: at(1.0) }
}
