//! bench/rebalance: what a deploy costs ingest, under each consumer group protocol.
//!
//! A producer sends generated orders at REBALANCE_RATE a second (default 1,000) to an
//! 8-partition topic, open loop, while orders-svc processes (the binary, each its own
//! process) consume it as one group. Two instances run; then, REBALANCE_PHASE seconds
//! apart (default 15), a third starts, one is stopped with SIGTERM, one is restarted
//! (SIGTERM, then started again), and one is killed with SIGKILL. Before them, as a
//! control, an instance of another group starts, on a topic of its own: the same start
//! on the same machine (reading the same orders into its cache) without a rebalance of
//! the group measured. Each phase is measured
//! from PostgreSQL afterwards: every order's `ingested_at` (its transaction's time)
//! against when its send was due gives its freshness; per partition, the longest time
//! between two commits (at 125 orders a second a partition, messages wait at every
//! moment) gives its stall. A stall or an order belongs to the phase in which it ended:
//! the commit after the gap, the order's own commit. Each event's figures are printed
//! beside the steady state's, the phase before the first event:
//!
//! - the longest freshness of the orders committed in the phase;
//! - the partitions the event revoked or assigned (taken from an instance or given to
//!   one, as the instances' own logs say: `event=partitions_revoked` and
//!   `event=partitions_assigned`, logged during the phase; under eager rebalancing every
//!   partition, even one given back to the instance it was taken from) and their longest
//!   stall;
//! - the partitions that stayed where they were: their longest stall, and how many
//!   stalled longer than any partition did in the steady state. The steady state's p99
//!   of the time between commits is printed too, but the comparison is with its longest:
//!   one gap in a hundred exceeds the p99 by definition, event or not, and a phase has
//!   about 2,000 of them.
//!
//! Both protocols run in turn (REBALANCE_PROTOCOLS=classic,consumer). Under `consumer`
//! the broker's session timeout applies to the SIGKILLed member (`scripts/kafka-node`
//! sets 6 s on the local broker); under `classic` the service's `session_timeout_ms`,
//! set to the same 6 s here.
//!
//! With REBALANCE_STATIC=1 every instance has a `kafka.instance_id` (static
//! membership): the restarted one comes back under its old id, so that its restart moves
//! nothing if it is back within the session timeout.
//!
//! To see why a partition stalled: REBALANCE_EXTRA is appended to each instance's
//! config (`[kafka.properties]` with `debug = "cgrp,fetch"` shows librdkafka's group and
//! fetch decisions) and REBALANCE_RUST_LOG replaces its `RUST_LOG` (`info,librdkafka=debug`
//! lets those lines through); each instance's log is in the directory the run names.
//!
//! Run with `bench/run rebalance`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use orders_svc::config::GroupProtocol;
use orders_svc::tools::generate::Generator;
use orders_svc::tools::produce::Producer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod common;
use common::support::{self, Process, config_toml, free_addr, temp_dir, under, unique, wait_ready};
use common::{brokers, create_topic_on, env_number, migrated_db};

const PARTITIONS: i32 = 8;

fn main() -> anyhow::Result<()> {
    let rate = env_number("REBALANCE_RATE", 1000);
    let phase = Duration::from_secs(env_number("REBALANCE_PHASE", 15) as u64);
    let protocols = std::env::var("REBALANCE_PROTOCOLS").unwrap_or_else(|_| "classic,consumer".into());
    println!(
        "bench/rebalance: {rate} orders/s to {PARTITIONS} partitions, phases of {} s: steady (2 instances), another \
         group's instance starts (the control), a third starts, one stopped (SIGTERM), one restarted, one killed (SIGKILL)",
        phase.as_secs()
    );
    for protocol in protocols.split(',') {
        let protocol = match protocol {
            "classic" => GroupProtocol::Classic,
            "consumer" => GroupProtocol::Consumer,
            other => anyhow::bail!("REBALANCE_PROTOCOLS: unknown protocol {other:?}"),
        };
        let mut result = None;
        under(protocol, || result = Some(run(protocol, rate, phase)));
        result.expect("ran")?;
    }
    Ok(())
}

/// One instance of the group: its process and HTTP address.
struct Instance {
    process: Process,
    addr: std::net::SocketAddr,
}

fn run(protocol: GroupProtocol, rate: usize, phase: Duration) -> anyhow::Result<()> {
    let db = migrated_db()?;
    let topic = unique("rebalance");
    create_topic_on(&brokers(), &topic, PARTITIONS);
    let group = unique("rebalance-group");
    let dir = temp_dir("rebalance");
    println!("  the instances' logs: {}", dir.display());
    let static_ids = std::env::var_os("REBALANCE_STATIC").is_some_and(|v| v == "1");
    // `id` names the instance for good under static membership.
    let start_in = |topic: &str, group: &str, name: &str, id: &str| {
        let addr = free_addr();
        let toml = config_toml(&db.url, topic, group, addr, &std::env::var("REBALANCE_EXTRA").unwrap_or_default());
        let rust_log = std::env::var("REBALANCE_RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut env: Vec<(&str, &str)> = vec![("RUST_LOG", rust_log.as_str())];
        if static_ids {
            env.push(("ORDERS_KAFKA_INSTANCE_ID", id));
        }
        let env = env.as_slice();
        Instance { process: Process::start(&dir, name, &toml, env), addr }
    };
    let start_instance = |name: &str, id: &str| start_in(&topic, &group, name, id);
    if static_ids {
        println!("  static membership: each instance has a kafka.instance_id; the restarted one keeps its own");
    }
    let mut instances = vec![start_instance("a", "a"), start_instance("b", "b")];
    // Every instance of the group measured, to read what moved from their logs.
    let mut logs: Vec<PathBuf> = instances.iter().map(|i| i.process.log.clone()).collect();
    for i in &instances {
        wait_ready(i.addr);
    }

    // The producer runs open loop on a thread of its own, recording when each send was
    // due (wall clock, to compare with PostgreSQL's ingested_at).
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (topic, producing) = (topic.clone(), producing.clone());
        std::thread::spawn(move || -> anyhow::Result<BTreeMap<String, SystemTime>> {
            let producer = Producer::new(&brokers(), &topic)?;
            producer.send(Some(b"warm-up"), &Generator::new(1, 1).order().to_json())?;
            producer.flush()?;
            let mut generator = Generator::new(848, 2);
            let mut due = BTreeMap::new();
            let (start, wall) = (Instant::now(), SystemTime::now());
            let mut i = 0u64;
            while producing.load(Ordering::Relaxed) {
                let offset = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = (start + offset).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let order = generator.order();
                producer.send(Some(order.order_uid.as_bytes()), &order.to_json())?;
                due.insert(order.order_uid, wall + offset);
                i += 1;
            }
            producer.flush()?;
            Ok(due)
        })
    };

    // The phases, each with the wall-clock time it began.
    let mut phases: Vec<(&str, SystemTime)> = Vec::new();
    let mut mark = |name: &'static str| phases.push((name, SystemTime::now()));
    std::thread::sleep(phase);
    mark("steady");
    std::thread::sleep(phase);
    // The control: the same start (its warm-up from the same database, its client)
    // without a rebalance of this group, to tell the cost of a start on a shared machine
    // from the protocol's. It consumes a topic of its own, which stays empty: it writes
    // nothing beside the group measured.
    mark("another group's instance starts");
    let quiet = unique("rebalance-quiet");
    create_topic_on(&brokers(), &quiet, 1);
    let elsewhere = start_in(&quiet, &unique("rebalance-other"), "x", "x");
    std::thread::sleep(phase);
    mark("a third instance starts");
    instances.push(start_instance("c", "c"));
    logs.push(instances.last().expect("just started").process.log.clone());
    std::thread::sleep(phase);
    mark("one stopped (SIGTERM)");
    let stopped = instances.remove(0);
    stopped.process.signal("TERM");
    std::thread::sleep(phase);
    mark("one restarted");
    let mut restarted = instances.remove(0);
    restarted.process.signal("TERM");
    restarted.process.wait_exit(Duration::from_secs(30));
    instances.push(start_instance("b2", "b"));
    logs.push(instances.last().expect("just started").process.log.clone());
    std::thread::sleep(phase);
    mark("one killed (SIGKILL)");
    let killed = instances.remove(0);
    killed.process.signal("KILL");
    std::thread::sleep(phase);
    mark("end");
    producing.store(false, Ordering::Relaxed);
    let due = producer.join().expect("producer thread")?;
    let sent = due.len() as i64;
    support::wait_for("every order stored", Duration::from_secs(120), || {
        (db.count("SELECT count(*) FROM orders") >= sent).then_some(())
    });
    drop((instances, stopped, restarted, killed, elsewhere));

    // Each stored order: its partition, offset and commit time.
    let mut client = db.client();
    let rows = client
        .query("SELECT order_uid, source_partition, source_offset, ingested_at FROM orders", &[])
        .context("read the stored orders")?;
    let mut stored: Vec<Stored> = Vec::with_capacity(rows.len());
    for row in rows {
        let uid: String = row.get("order_uid");
        let Some(&due) = due.get(&uid) else { continue }; // the warm-up order
        let at: OffsetDateTime = row.get("ingested_at");
        stored.push(Stored {
            partition: row.get("source_partition"),
            offset: row.get("source_offset"),
            due,
            at: SystemTime::from(at),
        });
    }
    let mut moves = Vec::new();
    for log in &logs {
        moves.extend(partition_moves(log, &topic)?);
    }
    report(protocol, &phases, &stored, &moves);
    Ok(())
}

/// A partition of the topic measured taken or given up by an instance, and when its log
/// says it was (to the millisecond, rounded down).
struct Move {
    partition: i32,
    at: SystemTime,
}

/// The partitions of `topic` that an instance's log says it was given or gave up.
fn partition_moves(log: &Path, topic: &str) -> anyhow::Result<Vec<Move>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    let mut moves = Vec::new();
    for line in text.lines() {
        let moved =
            ["event=partitions_assigned ", "event=partitions_assigned_unpositioned ", "event=partitions_revoked "]
                .iter()
                .any(|event| line.contains(event));
        // `[2026-12-05T01:11:10.123Z INFO  orders_svc::consumer::rebalance] event=…`
        let stamp = line.get(1..).and_then(|l| l.split(' ').next());
        let (Some(stamp), Some(list)) = (stamp, line.split(" partitions=").nth(1)) else { continue };
        if !moved {
            continue;
        }
        let at = OffsetDateTime::parse(stamp, &Rfc3339).with_context(|| format!("a timestamp in {line:?}"))?;
        for named in list.split(' ').next().unwrap_or("").split(',').filter(|p| !p.is_empty()) {
            let Some((t, partition)) = named.rsplit_once('/') else { continue };
            if t == topic {
                moves.push(Move { partition: partition.parse()?, at: SystemTime::from(at) });
            }
        }
    }
    Ok(moves)
}

struct Stored {
    partition: i32,
    offset: i64,
    due: SystemTime,
    at: SystemTime,
}

/// Milliseconds from `a` to `b` (negative if `b` is earlier).
fn ms(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

fn report(protocol: GroupProtocol, phases: &[(&str, SystemTime)], stored: &[Stored], moves: &[Move]) {
    // Per partition, its commits in time order: the distinct commit times.
    let mut by_partition: BTreeMap<i32, Vec<&Stored>> = BTreeMap::new();
    for s in stored {
        by_partition.entry(s.partition).or_default().push(s);
    }
    let commits: BTreeMap<i32, Vec<SystemTime>> = by_partition
        .into_iter()
        .map(|(partition, mut orders)| {
            orders.sort_by_key(|s| s.offset);
            let mut times: Vec<SystemTime> = orders.iter().map(|s| s.at).collect();
            times.dedup();
            (partition, times)
        })
        .collect();
    // The gaps between two commits of a partition that end in a window.
    let gaps = |times: &[SystemTime], from: SystemTime, to: SystemTime| -> Vec<f64> {
        times.windows(2).filter(|w| w[1] > from && w[1] <= to).map(|w| ms(w[0], w[1])).collect()
    };
    // Each partition's stall in a window: the longest gap between two of its commits
    // that ends in the window.
    let stalls = |from: SystemTime, to: SystemTime| -> BTreeMap<i32, f64> {
        commits.iter().map(|(&p, times)| (p, gaps(times, from, to).into_iter().fold(0.0, f64::max))).collect()
    };
    // The p99 and the longest freshness of the orders committed in a window.
    let freshness = |from: SystemTime, to: SystemTime| -> (f64, f64) {
        let mut f: Vec<f64> = stored.iter().filter(|s| s.at > from && s.at <= to).map(|s| ms(s.due, s.at)).collect();
        f.sort_by(f64::total_cmp);
        (percentile(&f, 99), f.last().copied().unwrap_or(0.0))
    };
    let (steady_from, steady_to) = (phases[0].1, phases[1].1);
    let steady_stall = stalls(steady_from, steady_to).into_values().fold(0.0, f64::max);
    let mut steady_gaps: Vec<f64> = commits.values().flat_map(|times| gaps(times, steady_from, steady_to)).collect();
    steady_gaps.sort_by(f64::total_cmp);
    let (steady_p99, steady_max) = freshness(steady_from, steady_to);

    println!("\nprotocol {}: {} orders stored", protocol.as_str(), stored.len());
    println!(
        "  steady state: freshness p99 {steady_p99:.0} ms, max {steady_max:.0} ms; time between a partition's commits \
         p99 {:.0} ms, longest {steady_stall:.0} ms",
        percentile(&steady_gaps, 99)
    );
    println!(
        "  {:<32} {:>13} {:>8}  {:<34} the others: longest stall, how many beyond the steady longest",
        "event", "freshness max", "/ steady", "revoked or assigned: longest stall"
    );
    for w in phases.windows(2).skip(1) {
        let ((name, from), (_, to)) = (w[0], w[1]);
        let (_, fresh_max) = freshness(from, to);
        let moved: BTreeSet<i32> =
            moves.iter().filter(|m| phase_of(phases, m.at) == Some(from)).map(|m| m.partition).collect();
        let (moved_stalls, stayed): (Vec<Stall>, Vec<Stall>) =
            stalls(from, to).into_iter().partition(|(p, _)| moved.contains(p));
        let longest = |list: &[Stall]| list.iter().map(|&(_, s)| s).fold(0.0, f64::max);
        let names: Vec<String> = moved.iter().map(i32::to_string).collect();
        let moved_text = if moved.is_empty() {
            "none".to_string()
        } else {
            format!("{} ({}): {:.0} ms", moved.len(), names.join(","), longest(&moved_stalls))
        };
        let beyond: Vec<String> =
            stayed.iter().filter(|&&(_, s)| s > steady_stall).map(|(p, s)| format!("{p}: {s:.0} ms")).collect();
        println!(
            "  {name:<32} {fresh_max:>10.0} ms {:>8.1}  {moved_text:<34} {} of {}: {:.0} ms, {} beyond{}",
            fresh_max / steady_max.max(1.0),
            stayed.len(),
            PARTITIONS,
            longest(&stayed),
            beyond.len(),
            if beyond.is_empty() { String::new() } else { format!(" ({})", beyond.join(", ")) },
        );
    }
}

/// The start of the phase a move logged at `at` belongs to: the last phase begun by then
/// (the log's time is rounded down to the millisecond).
fn phase_of(phases: &[(&str, SystemTime)], at: SystemTime) -> Option<SystemTime> {
    let end = at + Duration::from_millis(1);
    phases.iter().map(|&(_, start)| start).take_while(|&start| start < end).last()
}

/// A partition and its longest stall in a phase, in milliseconds.
type Stall = (i32, f64);

/// The `p`th percentile of sorted figures (0 if there are none).
fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted.get(sorted.len().saturating_sub(1) * p / 100).copied().unwrap_or(0.0)
}
