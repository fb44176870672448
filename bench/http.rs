//! bench/http: `GET /order/<uid>` served by orders-svc from its cache, measured with
//! wrk against two references in the same run serving the same bytes:
//!
//! - a bare tiny_http server with the same number of workers, answering from a
//!   HashMap: the library's ceiling;
//! - nginx serving the JSON as static files: the machine's ceiling.
//!
//! The three take turns under wrk for HTTP_ROUNDS (3) rounds of HTTP_SECONDS each; the
//! ratios are the medians of the rounds' ratios, each of servers measured seconds apart.
//!
//! Then misses: unknown ids, with the database reads they caused.
//!
//! Then latency under a fixed load, open loop: each of the three servers is sent half the
//! hit rate that the slower of orders-svc and bare tiny_http reached under wrk (so that
//! neither runs near its capacity), for HTTP_OPEN_SECONDS (10), over
//! HTTP_OPEN_CONNECTIONS (16) keep-alive connections, the three in turn for
//! HTTP_OPEN_ROUNDS (3) rounds; each figure is the median over the rounds. orders-svc
//! stays up, idle, while the references are measured. Each request is sent when it is
//! due, or at once if its connection is still busy with an earlier one, and its latency
//! is taken from when it was due: coordinated omission is corrected, as wrk2 does. (The
//! generator is part of the benchmark: wrk2 is not packaged by Debian, and oha would be
//! a long `cargo install`; both would be a client of another design than the rest.)
//!
//! Run with `bench/run http` (brings up the local stack first; needs wrk and nginx,
//! which it installs with apt-get when missing). Settings from the environment:
//! HTTP_ORDERS (default 10000), HTTP_SECONDS (5), HTTP_CONNECTIONS (64), HTTP_WORKERS
//! (4, the service's default, for both servers), HTTP_WRK_THREADS (2: with one, wrk itself
//! is the bottleneck on two cores).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orders_svc::model::{Encoded, Message, Order};
use orders_svc::service::Service;
use orders_svc::store;
use orders_svc::tools::generate::Generator;
use tiny_http::{Header, Response};

#[path = "common.rs"]
mod common;
use common::support::http::Connection;
use common::{brokers, create_topic_on, env_number, migrated_db, service_config};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let n = env_number("HTTP_ORDERS", 10_000);
    let seconds = env_number("HTTP_SECONDS", 5);
    let connections = env_number("HTTP_CONNECTIONS", 64);
    let workers = env_number("HTTP_WORKERS", 4);
    let wrk_threads = env_number("HTTP_WRK_THREADS", 2);
    let closed_rounds = env_number("HTTP_ROUNDS", 3).max(1);
    let open = OpenLoop {
        seconds: env_number("HTTP_OPEN_SECONDS", 10) as u64,
        connections: env_number("HTTP_OPEN_CONNECTIONS", 16),
        rounds: env_number("HTTP_OPEN_ROUNDS", 3).max(1),
    };
    let brokers = brokers();
    let run = format!("bench_http_{}", std::process::id());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-http");
    std::fs::create_dir_all(&dir)?;

    println!(
        "bench/http: {n} stored orders, wrk {closed_rounds} rounds of {seconds} s per server with {connections} connections and {wrk_threads} wrk threads, {workers} workers each"
    );
    let mut generator = Generator::new(7, 3);
    let orders: Vec<Order> = (0..n).map(|_| generator.order()).collect();
    let uids: Vec<&str> = orders.iter().map(|o| o.order_uid.as_str()).collect();
    std::fs::write(dir.join("uids.txt"), uids.join("\n") + "\n")?;
    let unknown: Vec<String> = (0..n).map(|i| format!("unknown{i:08}")).collect();
    std::fs::write(dir.join("unknown.txt"), unknown.join("\n") + "\n")?;
    std::fs::write(dir.join("random.lua"), WRK_SCRIPT)?;

    // orders-svc, its cache warmed from PostgreSQL.
    let db = migrated_db()?;
    {
        let mut client = db.client();
        let message = Message { topic: run.clone(), partition: 0, offset: 0, key: None, payload: None };
        let batch: Vec<(&Message, Encoded)> = orders.iter().map(|o| (&message, o.clone().encode())).collect();
        store::write_batch(&mut client, "bench", &[], &batch, &[])?;
        create_topic_on(&brokers, &run, 1);

        let mut config = service_config(&db, &run);
        config.http.workers = workers;
        let service = Service::start(config)?;

        // The references run beside orders-svc, all three up (the one not measured idle,
        // orders-svc's consumer waiting on an empty topic): bare tiny_http with the same
        // bytes, and nginx with the same bytes as files.
        let bodies: HashMap<String, Arc<[u8]>> =
            orders.iter().map(|o| (o.order_uid.clone(), o.to_json().into())).collect();
        let bare = BareServer::start(bodies, workers)?;
        let nginx = Nginx::start(&dir, &orders)?;

        // Hits, the three servers in turn, round after round: the machine's pace moves
        // between runs and within one (nginx alone from 78,000 to 116,500 a second in
        // runs a minute apart), so each round's ratio compares servers measured seconds
        // apart, and the median of the rounds' ratios is the figure.
        let servers = [service.http_addr().to_string(), bare.addr.clone(), nginx.addr.clone()];
        let mut closed: Vec<[WrkResult; 3]> = Vec::new();
        for _ in 0..closed_rounds {
            let mut round = Vec::new();
            for addr in &servers {
                round.push(wrk(&dir, wrk_threads, addr.clone(), "uids.txt", seconds, connections)?);
            }
            closed.push(round.try_into().map_err(|_| anyhow::anyhow!("three servers"))?);
        }

        // Misses: ids PostgreSQL does not have.
        let stats = &service.cache().stats;
        let (reads_before, busy_before) = (stats.db_reads.get(), stats.database_busy.get());
        let miss = wrk(&dir, wrk_threads, service.http_addr().to_string(), "unknown.txt", seconds, connections)?;
        let reads = stats.db_reads.get() - reads_before;
        let busy = stats.database_busy.get() - busy_before;

        // The fixed load, the three servers in turn, round after round, so that a change
        // of the machine's pace during the run touches all three alike.
        // Half the slower of orders-svc and bare tiny_http, so that neither is near its
        // capacity: past it, latency measures the queue, not the server.
        let median_rps = |server: usize| median_of(closed.iter().map(|r| r[server].rps).collect());
        let open_rate = median_rps(0).min(median_rps(1)) / 2.0;
        let mut rounds: Vec<[Latencies; 3]> = Vec::new();
        for _ in 0..open.rounds {
            let mut round = Vec::new();
            for addr in &servers {
                round.push(open_loop(addr.clone(), &owned(&uids), open_rate, &open)?);
            }
            rounds.push(round.try_into().map_err(|_| anyhow::anyhow!("three servers"))?);
        }
        drop(nginx);
        bare.stop();
        service.shutdown();

        println!();
        println!("  {:<28} {:>12} {:>10} {:>10}", "GET /order/<uid>", "requests/s", "p50", "p99");
        let names = ["orders-svc", "bare tiny_http", "nginx static files"];
        for (n, round) in closed.iter().enumerate() {
            for (name, r) in names.iter().zip(round) {
                let name = format!("{name}, round {}", n + 1);
                println!("  {name:<28} {:>12.0} {:>8.3}ms {:>8.3}ms", r.rps, r.p50_ms, r.p99_ms);
            }
        }
        let name = "orders-svc (unknown ids)";
        println!("  {name:<28} {:>12.0} {:>8.3}ms {:>8.3}ms", miss.rps, miss.p50_ms, miss.p99_ms);
        println!();
        let ratios = |to: usize| -> (f64, String) {
            let by_round: Vec<f64> = closed.iter().map(|r| r[0].rps / r[to].rps).collect();
            let text: Vec<String> = by_round.iter().map(|r| format!("{r:.2}")).collect();
            (median_of(by_round), text.join(", "))
        };
        let ((to_tiny, tiny_rounds), (to_nginx, nginx_rounds)) = (ratios(1), ratios(2));
        println!("  orders-svc / bare tiny_http = {to_tiny:.2}  (median; by round: {tiny_rounds})");
        println!(
            "  orders-svc / nginx          = {to_nginx:.2}  (median; by round: {nginx_rounds})  (target: at least 0.90)"
        );
        println!(
            "  unknown ids: {} requests over {} distinct ids caused {reads} database reads; {busy} were answered \
             503 because cache.max_database_waits requests already read the database",
            miss.requests,
            unknown.len()
        );
        println!();
        println!(
            "  open loop, {open_rate:.0} requests/s (half the hits/s of the slower of orders-svc and bare tiny_http), {} rounds of {} s per server over {} \
             connections:",
            open.rounds, open.seconds, open.connections
        );
        println!("  {:<28} {:>10} {:>10} {:>10} {:>10}", "GET /order/<uid>", "p50", "p99", "p99.9", "max");
        for (n, round) in rounds.iter().enumerate() {
            for (name, l) in names.iter().zip(round) {
                let name = format!("{name}, round {}", n + 1);
                println!("  {name:<28} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>8.3}ms", l.p50, l.p99, l.p999, l.max);
            }
        }
        // Per server, the median over the rounds of each figure.
        let median =
            |server: usize, f: fn(&Latencies) -> f64| median_of(rounds.iter().map(|r| f(&r[server])).collect());
        let summary = |server: usize| Latencies {
            p50: median(server, |l| l.p50),
            p99: median(server, |l| l.p99),
            p999: median(server, |l| l.p999),
            max: median(server, |l| l.max),
        };
        let (svc_open, tiny_open, nginx_open) = (summary(0), summary(1), summary(2));
        for (name, l) in names.iter().zip([&svc_open, &tiny_open, &nginx_open]) {
            let name = format!("{name}, median");
            println!("  {name:<28} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>8.3}ms", l.p50, l.p99, l.p999, l.max);
        }
        let per_round: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r[0].p99 / r[1].p99)).collect();
        println!(
            "  orders-svc / bare tiny_http: p50 {:.2}, p99 {:.2}, p99.9 {:.2}  (medians; p99 by round: {})  \
             (target: p99 and p99.9 at most 1.1)",
            svc_open.p50 / tiny_open.p50,
            svc_open.p99 / tiny_open.p99,
            svc_open.p999 / tiny_open.p999,
            per_round.join(", ")
        );
        println!(
            "  orders-svc / nginx:          p50 {:.2}, p99 {:.2}, p99.9 {:.2}",
            svc_open.p50 / nginx_open.p50,
            svc_open.p99 / nginx_open.p99,
            svc_open.p999 / nginx_open.p999
        );
        // wrk counts the misses' 404s as non-2xx; those are expected, so only hits count.
        let errors = |server: usize| closed.iter().map(|r| r[server].errors).sum::<u64>();
        if (0..3).map(errors).sum::<u64>() > 0 {
            println!(
                "  errors (socket errors or non-2xx answers): orders-svc {} tiny_http {} nginx {}",
                errors(0),
                errors(1),
                errors(2)
            );
            for round in &closed {
                for (name, result) in ["orders-svc", "tiny_http", "nginx"].iter().zip(round) {
                    if let Some(line) = &result.socket_errors {
                        println!("    {name}, wrk: {line}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// The median of `values` (the upper one of an even count).
fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct OpenLoop {
    seconds: u64,
    connections: usize,
    rounds: usize,
}

struct Latencies {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn owned(uids: &[&str]) -> Arc<Vec<String>> {
    Arc::new(uids.iter().map(|u| u.to_string()).collect())
}

/// `rate` requests a second in all, `GET /order/<a random uid>`, each sent when due
/// (see the top of this file); latencies in milliseconds from when each was due.
fn open_loop(addr: String, uids: &Arc<Vec<String>>, rate: f64, open: &OpenLoop) -> anyhow::Result<Latencies> {
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(open.seconds);
    // Connection i sends its k-th request at start + (k * connections + i) / rate.
    let interval = Duration::from_secs_f64(open.connections as f64 / rate);
    let threads: Vec<_> = (0..open.connections)
        .map(|i| {
            let (addr, uids) = (addr.clone(), uids.clone());
            let offset = Duration::from_secs_f64(i as f64 / rate);
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut connection = Connection::open(addr.parse()?, Duration::from_secs(10))?;
                let mut latencies = Vec::new();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                for k in 0.. {
                    let due = start + offset + interval * k;
                    if due >= end {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    // xorshift: a uid at random, without a shared generator.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let uid = &uids[(seed % uids.len() as u64) as usize];
                    let response = connection.get(&format!("/order/{uid}"))?;
                    if response.status != 200 {
                        bail!("open loop: {} for /order/{uid}", response.status);
                    }
                    latencies.push(due.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        all.extend(thread.join().expect("an open-loop connection")?);
    }
    let mut ms: Vec<f64> = all.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok(Latencies { p50: at(0.5), p99: at(0.99), p999: at(0.999), max: at(1.0) })
}

/// Each request asks for a random id from the file named by UIDS.
const WRK_SCRIPT: &str = r#"
local ids = {}
for line in io.lines(os.getenv("UIDS")) do ids[#ids + 1] = line end
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
request = function()
  return wrk.format("GET", "/order/" .. ids[math.random(#ids)])
end
"#;

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
    /// wrk's own line, when it had any: `Socket errors: connect 0, read 1, write 0, timeout 0`.
    socket_errors: Option<String>,
}

fn wrk(
    dir: &Path,
    threads: usize,
    addr: String,
    ids: &str,
    seconds: usize,
    connections: usize,
) -> anyhow::Result<WrkResult> {
    let out = Command::new("wrk")
        .args([&format!("-t{threads}"), &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(dir.join("random.lua"))
        .arg(format!("http://{addr}"))
        .env("UIDS", dir.join(ids))
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()));
    let rps: f64 = field("Requests/sec:").context("wrk printed no Requests/sec")?.parse()?;
    let p50_ms = parse_latency(&field("50%").context("wrk printed no 50%")?)?;
    let p99_ms = parse_latency(&field("99%").context("wrk printed no 99%")?)?;
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let socket_errors = text.lines().find(|l| l.trim().starts_with("Socket errors:")).map(|l| l.trim().to_string());
    let socket_error_count: u64 =
        socket_errors.iter().flat_map(|l| l.split([' ', ','])).filter_map(|w| w.parse::<u64>().ok()).sum();
    let errors = field("Non-2xx or 3xx responses:").map_or(0, |n| n.parse().unwrap_or(0)) + socket_error_count;
    Ok(WrkResult { rps, p50_ms, p99_ms, requests, errors, socket_errors })
}

/// wrk prints latencies as `512.00us`, `1.23ms` or `1.01s`.
fn parse_latency(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown latency {text:?}")
    };
    Ok(number.parse::<f64>()? * factor)
}

/// tiny_http alone, with the service's listening socket and worker count.
struct BareServer {
    server: Arc<tiny_http::Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
    addr: String,
}

impl BareServer {
    fn start(bodies: HashMap<String, Arc<[u8]>>, workers: usize) -> anyhow::Result<BareServer> {
        let listener = orders_svc::http::listen("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?.to_string();
        let server = Arc::new(tiny_http::Server::from_listener(listener, None).map_err(|e| anyhow::anyhow!("{e}"))?);
        let bodies = Arc::new(bodies);
        let json = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap();
        let workers = (0..workers)
            .map(|_| {
                let (server, bodies, json) = (server.clone(), bodies.clone(), json.clone());
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        let uid = request.url().trim_start_matches("/order/");
                        let response = match bodies.get(uid) {
                            Some(body) => Response::new(
                                200.into(),
                                vec![json.clone()],
                                std::io::Cursor::new(body.clone()),
                                Some(body.len()),
                                None,
                            ),
                            None => Response::new(
                                404.into(),
                                vec![],
                                std::io::Cursor::new(Arc::from(&b""[..])),
                                Some(0),
                                None,
                            ),
                        };
                        let _ = request.respond(response);
                    }
                })
            })
            .collect();
        Ok(BareServer { server, workers, addr })
    }

    fn stop(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// nginx on a free port, serving `www/order/<uid>` files as application/json.
struct Nginx {
    child: Child,
    addr: String,
}

impl Nginx {
    fn start(dir: &Path, orders: &[Order]) -> anyhow::Result<Nginx> {
        let www: PathBuf = dir.join("www/order");
        std::fs::create_dir_all(&www)?;
        for o in orders {
            std::fs::write(www.join(&o.order_uid), o.to_json())?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let conf = format!(
            "daemon off;\nworker_processes auto;\nuser root;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; default_type application/json; sendfile on; tcp_nodelay on; keepalive_requests 1000000;\n\
               client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;\n\
               server {{ listen {addr}; root {dir}/www; location /order/ {{ }} }} }}\n",
            dir = dir.display()
        );
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start nginx (apt-get install nginx)")?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Ok(Nginx { child, addr });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not start; see {}/nginx-error.log", dir.display())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT is nginx's graceful stop; the master takes its workers with it.
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}
