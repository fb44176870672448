//! The HTTP side: the tiny_http worker pool and what it shares. A request is parsed into
//! a `route::Route`, answered by `respond` and written by `wire`; each is tested without
//! sockets.

mod respond;
mod route;
mod wire;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use anyhow::Context;
use log::{error, info, warn};
use socket2::{Domain, Protocol, Socket, Type};
use tiny_http::{ConnectionCounts, Limits, Method, Request};

pub use respond::{MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_URL_BYTES, respond};
pub use route::Route;
pub use wire::{Reply, encode};

use crate::cache::Cache;
use crate::config;
use crate::metrics::{Metrics, RouteName};
use crate::runtime::{Health, Shutdown};
use crate::store::{Pool, Readers};

/// What the read path needs; shared by every worker.
pub struct State {
    pub cache: Arc<Cache>,
    pub pool: Arc<Pool>,
    /// The reads of the cache's misses, on the pool's connections.
    pub readers: Readers,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// The server, once it listens: its connection counts are metrics. Not owned: the
    /// server owns the front, which holds the state, and owned both ways neither would
    /// ever be dropped, nor the listening socket closed once the service stops.
    pub server: OnceLock<Weak<tiny_http::Server>>,
}

impl State {
    /// The state, with the threads that read the cache's misses started.
    pub fn new(
        cache: Arc<Cache>,
        pool: Arc<Pool>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<State> {
        let readers = Readers::start(pool.clone(), cache.stats.db_statements.clone())?;
        Ok(State { cache, pool, readers, health, metrics, server: OnceLock::new() })
    }

    /// Connections open now, refused and failed since the start.
    pub fn connections(&self) -> ConnectionCounts {
        self.server.get().and_then(Weak::upgrade).map(|s| s.connection_counts()).unwrap_or_default()
    }
}

/// The listening server and its workers.
pub struct Server {
    server: Arc<tiny_http::Server>,
    state: Arc<State>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `config.addr` and starts `config.workers` threads answering requests.
    pub fn start(config: &config::Http, state: Arc<State>, shutdown: Shutdown) -> anyhow::Result<Server> {
        let listener = listen(config.addr).with_context(|| format!("listen on {}", config.addr))?;
        let addr = listener.local_addr().context("read listening address")?;
        let front: tiny_http::Front = {
            let state = state.clone();
            Arc::new(move |request| in_place(&state, request))
        };
        let server = Arc::new(
            tiny_http::Server::from_listener_with_front(listener, limits(config), front)
                .map_err(|e| anyhow::anyhow!("start HTTP server: {e}"))?,
        );
        let _ = state.server.set(Arc::downgrade(&server));
        let workers = (0..config.workers)
            .map(|i| {
                let (server, state, shutdown) = (server.clone(), state.clone(), shutdown.clone());
                thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || serve(&server, &state, &shutdown))
                    .context("spawn HTTP worker")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        info!("event=http_listening addr={addr} workers={}", workers.len());
        Ok(Server { server, state, addr, workers })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets each worker finish the request in hand, then joins them all; then the
    /// threads reading misses, once they have answered the misses handed to them.
    pub fn stop(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for worker in self.workers {
            if worker.join().is_err() {
                error!("event=http_worker_panicked");
            }
        }
        self.state.readers.stop();
    }
}

/// What one client may hold: the configured connections and timeouts, and the size
/// limits of `respond`, here enforced while the request is read.
fn limits(config: &config::Http) -> Limits {
    Limits {
        max_connections: config.max_connections,
        request_timeout: Some(config.request_timeout()),
        idle_timeout: Some(config.idle_timeout()),
        // The target, and room for the method and the version.
        max_request_line: MAX_URL_BYTES + 64,
        max_header_bytes: MAX_HEADER_BYTES,
        max_body_bytes: Some(MAX_BODY_BYTES),
        event_threads: config.event_threads,
    }
}

/// A listening socket with TCP_NODELAY set, which the sockets it accepts inherit on
/// Linux. Without it, Nagle's algorithm holds back the second write of each response
/// until the client's delayed ACK, about 40 ms, on every keep-alive request.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn serve(server: &tiny_http::Server, state: &State, shutdown: &Shutdown) {
    loop {
        match server.recv() {
            Ok(request) => handle(state, request),
            Err(_) if shutdown.is_signalled() => return,
            Err(e) => warn!("event=http_accept_failed error={e}"),
        }
    }
}

/// On a connection's own thread, before a worker: answers a request for an order the
/// cache holds, which is most of them, or for an id it remembers as missing
/// (`respond::from_memory`), and hands a miss with
/// nothing to wait for to the threads that read PostgreSQL (`respond::to_read`), which
/// answer it. Any other request goes back to be queued for the workers. A hit so costs
/// no hand-off to a worker and back, two wake-ups of threads fewer, and a miss no
/// worker waiting for its read; the connection's thread never waits on PostgreSQL.
fn in_place(state: &Arc<State>, request: Request) -> Option<Request> {
    let started = Instant::now();
    let route = Route::parse(request.url());
    let name = route.name();
    if let Some(reply) = respond::from_memory(state, &request, &route) {
        // An event thread serves every idle connection: an answer too large to write
        // without a wait, to a client that may stop reading, goes to a worker instead.
        if tiny_http::in_event_loop() && reply.body.len() > tiny_http::EVENT_LOOP_ANSWER_MOST {
            return Some(request);
        }
        send(state, request, name, &reply, started);
        return None;
    }
    let Some(read) = respond::to_read(state, &request, &route) else {
        return Some(request);
    };
    let uid = read.uid().to_string();
    let then_state = state.clone();
    state.readers.hand(
        uid,
        Box::new(move |loaded| {
            let reply = read.answer(&request, loaded);
            send(&then_state, request, name, &reply, started);
        }),
    );
    None
}

/// On a worker: answers any request.
fn handle(state: &State, request: Request) {
    let started = Instant::now();
    let route = Route::parse(request.url());
    let reply = respond::respond_to(state, &request, &route);
    let route = route.name();
    send(state, request, route, &reply, started);
}

/// Writes `reply` to `request`'s client and counts it.
fn send(state: &State, request: Request, route: RouteName, reply: &Reply, started: Instant) {
    let status = reply.status;
    let bytes = encode(reply, *request.method() == Method::Head, &wire::http_date());
    // The whole response in one write: tiny_http would write each header in pieces,
    // each through a lock. Whether the connection stays open was settled when the
    // request was read (HTTP/1.0, `Connection: close`), as with `Request::respond`.
    let mut writer = request.into_writer();
    if let Err(e) = writer.write_all(&bytes).and_then(|()| writer.flush()) {
        // The client went away; nothing to do for it.
        log::debug!("event=http_write_failed error={e}");
    }
    drop(writer);
    state.metrics.count_request(route, status);
    state.metrics.http_seconds.observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use tiny_http::TestRequest;

    use super::*;
    use crate::runtime::shutdown_channel;

    /// A server on a loopback port with the given bounds, its database unreachable;
    /// stopped when dropped.
    struct Running(Option<Server>, crate::runtime::ShutdownTrigger);

    impl Drop for Running {
        fn drop(&mut self) {
            self.1.signal();
            if let Some(server) = self.0.take() {
                server.stop();
            }
        }
    }

    fn running(max_connections: usize, timeout_ms: u64) -> (Running, SocketAddr) {
        running_with_workers(2, max_connections, timeout_ms)
    }

    fn running_with_workers(workers: usize, max_connections: usize, timeout_ms: u64) -> (Running, SocketAddr) {
        let config = config::Http {
            addr: "127.0.0.1:0".parse().unwrap(),
            workers,
            max_connections,
            request_timeout_ms: timeout_ms,
            idle_timeout_ms: timeout_ms,
            event_threads: 2,
        };
        let (trigger, shutdown) = shutdown_channel();
        let server = Server::start(&config, Arc::new(respond::tests::state()), shutdown).unwrap();
        let addr = server.addr();
        (Running(Some(server), trigger), addr)
    }

    /// Sends `bytes` and returns all the server sends until it closes the connection.
    fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("the server closes the connection");
        String::from_utf8(answer).unwrap()
    }

    /// Calls `f` until it returns Some, for up to 5 s.
    fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(value) = f() {
                return value;
            }
            assert!(Instant::now() < deadline, "gave up after 5 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn status_line(answer: &str) -> &str {
        answer.lines().next().unwrap_or_default()
    }

    #[test]
    fn past_max_connections_a_connection_is_answered_503_and_closed() {
        let (running, addr) = running(3, 10_000);
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let refused = wait_for(|| {
            let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            answer.starts_with("HTTP/1.1 503").then_some(answer)
        });
        assert!(refused.contains("\r\nRetry-After: 1\r\n") && refused.ends_with("\r\n\r\ntoo many connections\n"));
        assert_eq!(running.0.as_ref().unwrap().server.connection_counts().open, 3);
        drop(held);
        let answer = wait_for(|| {
            let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            answer.starts_with("HTTP/1.1 200").then_some(answer)
        });
        assert!(answer.ends_with(r#"{"status":"alive"}"#), "{answer}");
        assert!(running.0.as_ref().unwrap().server.connection_counts().refused >= 1);
    }

    /// A connection's thread ends with its last request; the worker answering that
    /// request must not care.
    #[test]
    fn answers_outlive_the_connections_they_were_for() {
        let (_running, addr) = running(100, 10_000);
        for _ in 0..6 {
            let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        }
    }

    /// Once stopped, the server closes its listening socket: a service stopped in a
    /// process that goes on (a test, a benchmark) leaves no port taken and no thread
    /// accepting on it.
    #[test]
    fn a_stopped_server_closes_its_listening_socket() {
        let (running, addr) = running(100, 10_000);
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        drop(running);
        // The accept thread closes the socket once woken by the server's drop.
        wait_for(|| match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        });
    }

    /// A miss is handed to the threads that read PostgreSQL, and they answer it: with
    /// no worker at all, the request still gets its answer (the database is unreachable
    /// here: the 503 that says so).
    #[test]
    fn a_miss_is_answered_by_the_thread_that_reads_it_with_no_worker() {
        let (_running, addr) = running_with_workers(0, 100, 10_000);
        let answer = exchange(addr, b"GET /order/b563feb7b2b84b6test HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(status_line(&answer), "HTTP/1.1 503 Service Unavailable");
        assert!(answer.contains("\r\nRetry-After: 1\r\n"), "{answer}");
        assert!(answer.ends_with(r#"{"error":"the database is unavailable; try again shortly"}"#), "{answer}");
    }

    #[test]
    fn a_request_cut_short_is_408_and_an_idle_connection_is_closed_without_a_word() {
        let (_running, addr) = running(100, 300);
        let started = Instant::now();
        let answer = exchange(addr, b"GET /healthz HTT");
        assert_eq!(status_line(&answer), "HTTP/1.1 408 Request Timeout");
        assert!(answer.contains("\r\nConnection: close\r\n"));
        assert!(started.elapsed() < Duration::from_secs(5));
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with(r#"{"status":"alive"}"#), "one answer, then closed when idle: {answer}");
    }

    #[test]
    fn oversized_lines_and_bodies_are_refused_while_reading() {
        let (_running, addr) = running(100, 2000);
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_URL_BYTES + 100));
        assert_eq!(status_line(&exchange(addr, long_target.as_bytes())), "HTTP/1.1 414 URI Too Long");
        let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(MAX_HEADER_BYTES / 8 + 1));
        assert_eq!(
            status_line(&exchange(addr, many_headers.as_bytes())),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        let body = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        assert_eq!(status_line(&exchange(addr, body.as_bytes())), "HTTP/1.1 413 Payload Too Large");
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(status_line(&exchange(addr, chunked)), "HTTP/1.1 411 Length Required");
        let two_lengths = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(status_line(&exchange(addr, two_lengths)), "HTTP/1.1 400 Bad Request");
        // A small body is read and thrown away, and the connection goes on.
        let small = b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n";
        let answer = exchange(addr, small);
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(answer.contains("HTTP/1.1 200 OK"), "{answer}");
    }

    /// Keep-alive connections between requests are served by a few event threads (the
    /// vendored tiny_http's patch 6). Clients that trickle their next request, or ask
    /// for an order too large to write at once and then stop reading, must hold none of
    /// them: another client's hits are answered meanwhile.
    #[test]
    fn clients_that_trickle_or_stop_reading_hold_up_no_one_elses_hits() {
        let limits = crate::cache::Limits { max_bytes: 64 << 20, ..crate::cache::tests::limits() };
        let state = respond::tests::state_with(limits);
        let small = crate::cache::tests::order("small").encode();
        let mut big = crate::cache::tests::order("big");
        big.items = std::iter::repeat_n(big.items[0].clone(), 40_000).collect();
        let big = big.encode();
        assert!(big.json.len() > 4 << 20, "{} bytes", big.json.len());
        crate::cache::tests::publish(&state.cache, &[small, big]);
        let config = config::Http {
            addr: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            max_connections: 100,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
            event_threads: 2,
        };
        let (trigger, shutdown) = shutdown_channel();
        let server = Server::start(&config, Arc::new(state), shutdown).unwrap();
        let addr = server.addr();
        let _running = Running(Some(server), trigger);
        let ask = |c: &mut TcpStream, uid: &str| {
            c.write_all(format!("GET /order/{uid} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        };
        // A keep-alive connection whose first answer has been read: parked.
        let parked = |receive_buffer: Option<usize>| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            if let Some(bytes) = receive_buffer {
                socket.set_recv_buffer_size(bytes).unwrap();
            }
            socket.connect(&addr.into()).unwrap();
            let mut c: TcpStream = socket.into();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            ask(&mut c, "small");
            read_answer(&mut c);
            c
        };
        let stalled: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut c = parked(Some(4096));
                ask(&mut c, "big");
                c
            })
            .collect();
        let trickling: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut c = parked(None);
                c.write_all(b"GET /order/small HTTP/1.1\r\nHo").unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut client = parked(None);
        let started = Instant::now();
        for _ in 0..20 {
            ask(&mut client, "small");
            let answer = read_answer(&mut client);
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "20 hits took {took:?}");
        drop((stalled, trickling));
    }

    /// Reads one answer of `Content-Length` bytes from a keep-alive connection.
    fn read_answer(c: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize =
            head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map(|v| v.trim().parse().unwrap()).unwrap();
        let mut body = vec![0; length];
        c.read_exact(&mut body).unwrap();
        head + &String::from_utf8_lossy(&body)
    }

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    /// The path and the query decide the route once, for the answer and for the count:
    /// `xuid` is not `uid`, so this is the index, served and counted as such.
    #[test]
    fn a_query_that_only_looks_like_a_lookup_is_served_and_counted_as_the_index() {
        let state = respond::tests::state();
        let request = || TestRequest::new().with_method(Method::Get).with_path("/?xuid=1").into();
        let reply = respond(&state, &request());
        assert_eq!((reply.status, reply.header("Location")), (200, None));
        assert!(std::str::from_utf8(&reply.body).unwrap().contains("<form"));
        handle(&state, request());
        let text = state.metrics.render(&state.cache, state.connections());
        assert!(text.contains("orders_http_requests_total{route=\"index\",status=\"200\"} 1\n"), "{text}");
        assert!(!text.contains("route=\"lookup\""), "{text}");
    }
}
