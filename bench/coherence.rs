//! bench/coherence: how long after a commit every instance serves the new version.
//!
//! Two instances of orders-svc on one database both hold order X in their caches. The
//! benchmark then commits new versions of X one after another with the store's batch
//! write (the consumer's own code path) and, for each, measures from the moment COMMIT
//! returned to the moment each instance first answers `GET /order/X` with the new
//! ETag; one poller per instance asks every 0.2 ms on a keep-alive connection. The time
//! of an update is that of the slower instance.
//!
//! Reference, in the same run: a bare client listening on the same channel, timed from
//! the same commits to its receipt of the notification, which is PostgreSQL's own delivery
//! time and the floor of any scheme built on it. The notification often arrives before
//! COMMIT's answer reaches the writer, so the ratio is taken from the moment the batch
//! write is called.
//!
//! Then the listening connection of one instance is cut (its backend terminated): the
//! time until it listens again, having checked every entry it holds against the tables,
//! against a bare client reading every stored order's version.
//!
//! Run with `bench/run coherence`. Settings from the environment: COHERENCE_UPDATES
//! (default 200), COHERENCE_GAP_MS (20, the pause between updates) and COHERENCE_HELD
//! (99,999 other orders, so that with X the instances hold 100,000).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use orders_svc::model::{Encoded, Message, Order};
use orders_svc::service::Service;
use orders_svc::store;
use orders_svc::tools::generate::Generator;
use postgres::fallible_iterator::FallibleIterator;

/// How long a poller waits between two requests.
const POLL_PAUSE: Duration = Duration::from_micros(200);

#[path = "common.rs"]
mod common;
use common::support::http::Connection;
use common::{brokers, create_topic_on, env_number, migrated_db, service_config};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let updates = env_number("COHERENCE_UPDATES", 200);
    let gap = Duration::from_millis(env_number("COHERENCE_GAP_MS", 20) as u64);
    let held = env_number("COHERENCE_HELD", 99_999);
    let run = format!("bench_coherence_{}", std::process::id());
    let db = migrated_db()?;
    create_topic_on(&brokers(), &run, 1);

    let x = Generator::new(21, 3).order();
    let versions: Vec<Encoded> = (0..=updates)
        .map(|i| {
            let mut o: Order = x.clone();
            o.delivery.name = format!("Version {i}");
            o.encode()
        })
        .collect();
    // As the consumer writes: its statements prepared once on its connection.
    let mut writer = store::Conn::from(db.client());
    let write = |writer: &mut store::Conn, i: usize| -> anyhow::Result<Instant> {
        let message = Message { topic: run.clone(), partition: 0, offset: i as i64, key: None, payload: None };
        store::write_batch_on(writer, "bench", &[], &[(&message, versions[i].clone())], &[])?;
        Ok(Instant::now())
    };
    write(&mut writer, 0)?;
    // Other orders, for the instances to hold.
    let mut generator = Generator::new(22, 3);
    let mut offset = 0;
    while offset < held {
        let n = (held - offset).min(5000);
        let message =
            Message { topic: format!("{run}_held"), partition: 0, offset: offset as i64, key: None, payload: None };
        let batch: Vec<(&Message, Encoded)> = (0..n).map(|_| (&message, generator.order().encode())).collect();
        store::write_batch_on(&mut writer, "bench", &[], &batch, &[])?;
        offset += n;
    }

    let instances = [Service::start(service_config(&db, &run))?, Service::start(service_config(&db, &run))?];
    let path = format!("/order/{}", x.order_uid);
    for s in &instances {
        let r = Connection::open(s.http_addr(), Duration::from_secs(5))?.get(&path)?;
        anyhow::ensure!(r.status == 200 && s.cache().contains(&x.order_uid), "{} does not hold X", s.http_addr());
    }
    println!(
        "bench/coherence: {updates} updates of one order, {} ms apart, two instances holding {} orders each",
        gap.as_millis(),
        instances[0].cache().len()
    );

    // Which version is current, and when each observer first saw it.
    let current = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Vec<Option<Instant>>>>> =
        (0..3).map(|_| Arc::new(Mutex::new(vec![None; updates + 1]))).collect();
    let etags: Arc<Vec<String>> = Arc::new(versions.iter().map(|v| format!("\"{}\"", v.version())).collect());
    let mut threads = Vec::new();
    for (s, seen) in instances.iter().zip(&seen) {
        let (addr, path, current, stop, seen, etags) =
            (s.http_addr(), path.clone(), current.clone(), stop.clone(), seen.clone(), etags.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut connection = Connection::open(addr, Duration::from_secs(5))?;
            while !stop.load(Ordering::SeqCst) {
                let want = current.load(Ordering::SeqCst);
                let r = connection.get(&path)?;
                if r.header("ETag") == Some(etags[want].as_str()) {
                    seen.lock().unwrap()[want].get_or_insert_with(Instant::now);
                }
                // Two pollers spinning would take both cores from PostgreSQL.
                std::thread::sleep(POLL_PAUSE);
            }
            Ok(())
        }));
    }
    let (listening_tx, listening) = std::sync::mpsc::channel();
    {
        let (db_url, stop, seen, etags) = (db.url.clone(), stop.clone(), seen[2].clone(), etags.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut listener = postgres::Client::connect(&db_url, postgres::NoTls)?;
            listener.batch_execute(&format!("LISTEN {}", store::CHANNEL))?;
            listening_tx.send(()).expect("the benchmark waits for this");
            while !stop.load(Ordering::SeqCst) {
                let mut notifications = listener.notifications();
                let mut it = notifications.timeout_iter(Duration::from_millis(100));
                while let Some(n) = it.next()? {
                    let at = Instant::now();
                    for change in store::parse_payload(n.payload()) {
                        if let Some(i) = etags.iter().position(|e| e[1..e.len() - 1] == change.version) {
                            seen.lock().unwrap()[i].get_or_insert(at);
                        }
                    }
                }
            }
            Ok(())
        }));
    }

    listening.recv_timeout(Duration::from_secs(10)).context("the bare listener did not start")?;
    let mut began = vec![None; updates + 1];
    let mut committed = vec![None; updates + 1];
    for i in 1..=updates {
        current.store(i, Ordering::SeqCst);
        began[i] = Some(Instant::now());
        committed[i] = Some(write(&mut writer, i)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen[..2].iter().any(|s| s.lock().unwrap()[i].is_none()) {
            anyhow::ensure!(Instant::now() < deadline, "update {i} not served by both instances within 10 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(gap);
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("observer thread").context("observer")?;
    }

    // A lost listening connection: from its backend terminated to the instance listening
    // again, every entry checked. Reference: a bare client reading every order's version.
    let first = &instances[0];
    let name = format!("orders-svc listener {}", first.http_addr());
    let reconnects = first.cache().stats.listener_reconnects.get();
    let entries = first.cache().len();
    let mut admin = db.client();
    let cut = Instant::now();
    let terminated: i64 = admin
        .query_one(
            "WITH listener AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1) \
             SELECT count(*) AS terminated FROM listener WHERE pg_terminate_backend(pid)",
            &[&name],
        )?
        .get("terminated");
    anyhow::ensure!(terminated == 1, "no listening backend named {name:?}");
    while first.cache().stats.listener_reconnects.get() == reconnects {
        anyhow::ensure!(cut.elapsed() < Duration::from_secs(60), "the listener was not back within 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let back = cut.elapsed();
    let scan = Instant::now();
    let rows = admin.query("SELECT order_uid, content_sha256 FROM orders", &[])?.len();
    let scan = scan.elapsed();
    for s in instances {
        s.shutdown();
    }

    // Milliseconds from `from` to `to` for each update, sorted.
    let between = |from: &[Option<Instant>], to: &dyn Fn(usize) -> Instant| -> Vec<f64> {
        let mut ms: Vec<f64> =
            (1..=updates).map(|i| to(i).saturating_duration_since(from[i].unwrap()).as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let seen: Vec<Vec<Option<Instant>>> = seen.iter().map(|s| s.lock().unwrap().clone()).collect();
    anyhow::ensure!(seen[2][1..].iter().all(Option::is_some), "the bare listener missed a notification");
    let both = |i: usize| seen[0][i].unwrap().max(seen[1][i].unwrap());
    let notified = |i: usize| seen[2][i].unwrap();
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let row = |name: &str, v: &[f64]| {
        println!("  {name:<46} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>6}", pct(v, 0.5), pct(v, 0.99), v[v.len() - 1], v.len())
    };
    println!();
    println!("  {:<46} {:>9} {:>9} {:>9} {:>6}", "", "p50", "p99", "max", "n");
    println!("  from COMMIT returned to the writer:");
    let from_commit = between(&committed, &both);
    row("  both instances serving the new ETag", &from_commit);
    row("  a bare LISTEN client notified", &between(&committed, &notified));
    println!("  from the batch write called (BEGIN … COMMIT):");
    let service = between(&began, &both);
    let bare = between(&began, &notified);
    row("  both instances serving the new ETag", &service);
    row("  a bare LISTEN client notified", &bare);
    println!();
    println!(
        "  every instance serving it, from COMMIT: p50 {:.2} ms, max {:.2} ms  (target: 500 ms)",
        pct(&from_commit, 0.5),
        from_commit[from_commit.len() - 1]
    );
    println!(
        "  orders-svc / bare LISTEN, from the write called: p50 {:.2}, p99 {:.2}, max {:.2}",
        pct(&service, 0.5) / pct(&bare, 0.5),
        pct(&service, 0.99) / pct(&bare, 0.99),
        service[service.len() - 1] / bare[bare.len() - 1]
    );
    println!();
    println!(
        "  listening connection lost: back, {entries} entries checked, in {:.1} ms; a bare read of all {rows} \
         orders' versions {:.1} ms; ratio {:.2}",
        back.as_secs_f64() * 1000.0,
        scan.as_secs_f64() * 1000.0,
        back.as_secs_f64() / scan.as_secs_f64()
    );
    Ok(())
}
