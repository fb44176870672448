//! Hostile clients at the socket, against the service as a process of its own (its own
//! descriptor limit, its own memory): descriptors run out, thousands of slow
//! connections, half-sent requests, a 16 MiB header line, a body it never asked for.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::http::Connection;
use crate::support::*;

const ORDER: &str = "/order/b563feb7b2b84b6test";

/// A service process with the canonical order stored and cached; `extra` is appended to
/// its `[http]` section.
struct Served {
    process: Process,
    addr: SocketAddr,
    _setup: Setup,
    _dir: PathBuf,
}

fn serve(name: &str, extra: &str, descriptors: Option<u32>) -> Served {
    let setup = Setup::new(1);
    let dir = temp_dir(name);
    let toml = config_toml(&setup.db.url, &setup.topic, &setup.group, ANY_PORT, extra);
    let process = match descriptors {
        Some(n) => Process::start_with_descriptors(&dir, name, &toml, n),
        None => Process::start(&dir, name, &toml, &[]),
    };
    let addr = process.http_addr();
    wait_ready(addr);
    setup.produce(&[MODEL.as_bytes()]);
    wait_until_served(addr, ORDER);
    Served { process, addr, _setup: setup, _dir: dir }
}

/// With 256 descriptors, 400 connections use up every one. Once they are closed, the
/// server answers again, and it said so in a few log lines, not one per failed accept.
#[test]
fn out_of_descriptors_the_server_answers_again_once_some_are_closed() {
    let s = serve("descriptors", "", Some(256));
    let held: Vec<TcpStream> = (0..400).map(|_| TcpStream::connect(s.addr).expect("connect")).collect();
    wait_for("the service to use up its descriptors", Duration::from_secs(10), || {
        (s.process.open_files() >= 250).then_some(())
    });
    wait_for("the service to log that accepting failed", Duration::from_secs(10), || {
        s.process.log().contains("Too many open files").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    drop(held);

    let r = wait_for("/healthz to answer again", Duration::from_secs(10), || {
        get_within(s.addr, "/healthz", Duration::from_secs(1)).ok()
    });
    assert_eq!(r.status, 200);
    assert_eq!(get(s.addr, ORDER).status, 200);
    let log = s.process.log();
    let lines = log.lines().filter(|l| l.contains("Too many open files")).count();
    assert!((1..=10).contains(&lines), "{lines} log lines about failed accepts in about 2 s:\n{log}");
}

/// 2,000 connections each sending a header a byte at a time: each of 100 normal requests,
/// on a new connection each time, is answered. A server whose workers the slow
/// connections hold answers after seconds or not at all; the 5 s each request is given
/// only keeps a failure from hanging the test. How fast they are answered is a figure
/// for benchmarks: the test prints the slowest.
#[test]
fn two_thousand_slow_connections_leave_normal_requests_answered() {
    let s = serve("slow", "", None);
    let before = s.process.open_files();
    let slow: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).expect("connect");
            c.write_all(b"GET /order/b563feb7b2b84b6test HTTP/1.1\r\nHost: slow\r\nX-Slow: ").unwrap();
            c
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut slow = slow;
            while !stop.load(Ordering::Relaxed) {
                for c in &mut slow {
                    let _ = c.write_all(b"s");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    wait_for("the service to hold the 2,000 connections", Duration::from_secs(20), || {
        (s.process.open_files() >= before + 2000).then_some(())
    });

    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let started = Instant::now();
        let r = get_within(s.addr, ORDER, Duration::from_secs(5)).expect("an answer");
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["order_uid"], "b563feb7b2b84b6test");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    eprintln!("with 2,000 slow connections, the slowest of 100 normal requests took {slowest:?}");
}

/// A request that stops half way is answered 408 and closed once the request timeout
/// (5 s by default) has passed; the client waits up to 10 s for it.
#[test]
fn a_half_sent_request_is_closed_after_the_request_timeout() {
    let s = serve("half", "", None);
    let mut c = Connection::open(s.addr, Duration::from_secs(10)).unwrap();
    c.send(b"GET /order/b563feb7b2b84b6test HTT").unwrap();
    let r = c.read_response(false).expect("an answer within 10 s");
    assert_eq!(r.status, 408);
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(c.read_to_end().expect("the connection closed"), b"");
}

/// A 16 MiB header line gets 431 after the first kilobytes; the server's memory grows by
/// less than 32 MiB.
#[test]
fn a_16_mib_header_line_is_refused_without_being_read_into_memory() {
    let s = serve("header", "", None);
    let before = s.process.peak_resident_bytes();
    let mut c = Connection::open(s.addr, Duration::from_secs(10)).unwrap();
    let mut writer = c.writer();
    let sender = std::thread::spawn(move || -> std::io::Result<usize> {
        writer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")?;
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < 16 << 20 {
            writer.write_all(&chunk)?;
            sent += chunk.len();
        }
        writer.write_all(b"\r\n\r\n")?;
        Ok(sent)
    });
    let r = c.read_response(false).expect("an answer");
    let _ = sender.join().unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(get(s.addr, "/healthz").status, 200);
    let growth = s.process.peak_resident_bytes().saturating_sub(before);
    eprintln!("peak resident memory grew by {} KiB", growth / 1024);
    assert!(growth < 32 << 20, "peak resident memory grew by {} MiB", growth >> 20);
}

/// A body the API never reads: a declared length past 1 KiB is refused with 413, a
/// body of unknown length with 411, before any worker sees the request.
#[test]
fn a_huge_declared_body_is_refused_and_the_server_stays_up() {
    let s = serve("body", "", None);
    let huge = b"POST /order/b563feb7b2b84b6test HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n";
    assert_eq!(raw_status(s.addr, huge), Some(413));
    let chunked = b"POST /order/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(raw_status(s.addr, chunked), Some(411));
    let bad_length = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n";
    assert_eq!(raw_status(s.addr, bad_length), Some(400));
    assert_eq!(get(s.addr, ORDER).status, 200);
}
