//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
// orders-svc patch 6: denied rather than forbidden, so that `util::idle` alone may call
// epoll (upstream forbids it).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use limits::{ConnectionCounts, Limits};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;

mod client;
mod common;
mod connection;
mod limits;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // orders-svc patch: what happened to connections, for `connection_counts`.
    counters: Arc<limits::Counters>,
}

/// orders-svc patch: answers a request on its connection's own thread, or hands it back
/// to be queued for `Server::recv` (see `Server::from_listener_with_front`).
pub type Front = Arc<dyn Fn(Request) -> Option<Request> + Send + Sync>;

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

/// orders-svc patch 6: what every connection's serving shares.
struct Shared {
    messages: Arc<MessagesQueue<Message>>,
    front: Option<Front>,
    pool: Arc<util::TaskPool>,
    #[cfg(target_os = "linux")]
    idle: Option<Arc<util::idle::Idle<Live>>>,
}

/// orders-svc patch 6: a connection, between the threads that serve it.
struct Live {
    client: ClientConnection,
    _open: limits::OpenConnection,
    /// Given to each request, which sends on it once answered.
    notices: mpsc::Sender<()>,
    answered: mpsc::Receiver<()>,
    /// A request of this connection was handed on and its notice not yet received.
    unanswered: bool,
}

/// orders-svc patch 6: the largest answer a front should write on an event thread.
/// An event thread serves every parked connection: an answer that can fill the socket's
/// buffers would hold it, and all of them, for as long as a client that stopped reading
/// lets it (up to the request timeout). A connection is served there only once its
/// client has taken every answer before (nothing unsent), so its receive window and the
/// socket's send buffer take this much without a wait. A front hands on (returns) a
/// request whose answer is larger, for a worker, when `in_event_loop()`.
pub const EVENT_LOOP_ANSWER_MOST: usize = 32 * 1024;

thread_local! {
    static IN_EVENT_LOOP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// orders-svc patch 6: whether this thread is one of the event threads, which serve
/// every parked connection: a front must not write more than `EVENT_LOOP_ANSWER_MOST`
/// on it.
pub fn in_event_loop() -> bool {
    IN_EVENT_LOOP.with(|flag| flag.get())
}

/// Serves `live`'s requests until it ends, it is parked, or (`on_event_thread`) its next
/// request may need more than a whole request's worth of reading, which it then leaves
/// to a thread of its own. With `woken`, a request is read first: it has begun to
/// arrive (or, for a new connection, is awaited).
///
/// orders-svc patch: one request of a connection in the workers' hands at a time
/// (upstream: any number, but for HTTPS): the next one, once read, waits for the answer
/// to the one before, so a client that sends many without reading the answers holds one
/// worker at most. Waiting after the read, not before it, keeps the usual client from
/// waiting at all: it sends its next request only once it has the answer.
fn serve(mut live: Live, shared: &Arc<Shared>, mut woken: bool, on_event_thread: bool) {
    loop {
        if !woken {
            #[cfg(target_os = "linux")]
            if let Some(idle) = &shared.idle {
                if live.unanswered && live.answered.try_recv().is_ok() {
                    live.unanswered = false;
                }
                if !live.unanswered {
                    if let Some(fd) = live.client.idle_socket() {
                        match idle.park(fd, live) {
                            Ok(()) => return,
                            Err(back) => live = back,
                        }
                    }
                }
            }
            #[cfg(target_os = "linux")]
            if on_event_thread {
                return hand_on(live, shared);
            }
        }
        woken = false;
        let Some(rq) = live.client.next() else { return };
        if live.unanswered && live.answered.recv().is_err() {
            return;
        }
        let rq = rq.with_notify_sender(live.notices.clone());
        live.unanswered = true;
        // orders-svc patch: what the front answers here costs no hand-off to a worker
        // and back; what it keeps to answer from another thread holds the next request
        // as a worker's would (see `from_listener_with_front`).
        let rq = match &shared.front {
            Some(front) => match front(rq) {
                Some(rq) => rq,
                None => continue,
            },
            None => rq,
        };
        shared.messages.push(rq.into());
    }
}

/// orders-svc patch 6: serves `live` on a thread of the pool, its next request first.
/// If no thread can be had, the connection is dropped (closed) with the task.
fn spawn_serve(live: Live, shared: &Arc<Shared>) -> IoResult<()> {
    let mut task = Some((live, shared.clone()));
    shared.pool.spawn(Box::new(move || {
        if let Some((live, shared)) = task.take() {
            serve(live, &shared, true, false);
        }
    }))
}

/// orders-svc patch 6: `spawn_serve` from an event thread, which says why it closed a
/// connection it could not hand on.
#[cfg(target_os = "linux")]
fn hand_on(live: Live, shared: &Arc<Shared>) {
    if let Err(e) = spawn_serve(live, shared) {
        log::warn!("event=http_thread_spawn_failed error=\"{e}\" action=close_connection");
    }
}

/// orders-svc patch 6: an event thread. Takes each parked connection that becomes
/// readable: answers a whole request there, hands a partial one to a thread of its own,
/// closes one the client closed; closes the idle ones; at shutdown, closes them all.
#[cfg(target_os = "linux")]
fn run_events(shared: &Arc<Shared>, idle: &util::idle::Idle<Live>, close: &AtomicBool) {
    use util::idle::Waiting;
    IN_EVENT_LOOP.with(|flag| flag.set(true));
    let mut ready = Vec::new();
    while !close.load(Relaxed) {
        idle.wait(&mut ready, Duration::from_millis(100));
        for &fd in &ready {
            let Some(mut live) = idle.take(fd) else { continue };
            match live.client.read_waiting() {
                Waiting::Whole => serve(live, shared, true, true),
                Waiting::Part => hand_on(live, shared),
                Waiting::Nothing => {
                    if let Err(live) = idle.park(fd, live) {
                        hand_on(live, shared);
                    }
                }
                Waiting::Closed => drop(live),
            }
        }
        idle.sweep();
    }
    idle.clear();
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with(listener.into(), ssl_config, Limits::default(), None)
    }

    /// orders-svc patch: a server on `listener` whose clients are bounded by `limits`.
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with(listener.into(), None, limits, None)
    }

    /// orders-svc patch: as `from_listener_with_limits`, and each request is first given
    /// to `front` on its connection's own thread, once the connection's request before it
    /// is answered. What `front` takes (None) never reaches `recv`: it answers it there,
    /// or keeps it to answer from another thread, and the connection's next request waits
    /// for that answer as it would for a worker's. What it hands back is queued for
    /// `recv` as usual. `front` must not wait on anything slow: while it runs, its
    /// connection reads nothing.
    pub fn from_listener_with_front<L: Into<Listener>>(
        listener: L,
        limits: Limits,
        front: Front,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with(listener.into(), None, limits, Some(front))
    }

    /// orders-svc patch: connections open now, refused and failed since the start.
    pub fn connection_counts(&self) -> ConnectionCounts {
        self.counters.snapshot()
    }

    fn from_listener_with(
        listener: Listener,
        ssl_config: Option<SslConfig>,
        limits: Limits,
        front: Option<Front>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
        type SslContext = ();
        #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
        type SslContext = crate::ssl::SslContextImpl;
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let counters = Arc::new(limits::Counters::default());
        let inside_counters = counters.clone();
        // a tasks pool is used to dispatch the connections into threads
        let tasks_pool = Arc::new(util::TaskPool::new());
        // orders-svc patch 6: with a front, connections between requests wait in `epoll`
        // rather than each on a thread of its own (see `util::idle`).
        #[cfg(target_os = "linux")]
        let idle = match &front {
            Some(_) if limits.event_threads > 0 => match util::idle::Idle::new(limits.idle_timeout) {
                Ok(idle) => Some(Arc::new(idle)),
                Err(e) => {
                    log::warn!("event=http_epoll_unavailable error=\"{e}\"");
                    None
                }
            },
            _ => None,
        };
        let shared = Arc::new(Shared {
            messages: messages.clone(),
            front: front.clone(),
            pool: tasks_pool,
            #[cfg(target_os = "linux")]
            idle: idle.clone(),
        });
        #[cfg(target_os = "linux")]
        if let Some(idle) = idle {
            for n in 0..limits.event_threads {
                let (shared, idle, close) = (shared.clone(), idle.clone(), close_trigger.clone());
                thread::Builder::new()
                    .name(format!("http-events-{n}"))
                    .spawn(move || run_events(&shared, &idle, &close))?;
            }
        }
        thread::spawn(move || {
            let shared = shared;
            // orders-svc patch: an error (out of descriptors, a thread that cannot start)
            // is logged, waited out and survived; upstream ended the loop for good.
            let mut backoff = limits::Backoff::new();
            let counters = inside_counters;

            log::debug!("Running accept thread");
            while !inside_close_trigger.load(Relaxed) {
                let sock = match server.accept() {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        counters.accept_failed();
                        backoff.failed("accept", &e);
                        continue;
                    }
                };
                // orders-svc patch: past `max_connections`, a short answer and close.
                if counters.open() >= limits.max_connections {
                    counters.refused();
                    sock.refuse(&limits::closing_response(503, "too many connections\n"));
                    continue;
                }
                if let Err(e) = sock.set_write_timeout(limits.request_timeout) {
                    log::debug!("cannot set a write timeout: {}", e);
                }
                let open = limits::OpenConnection::new(&counters);

                use util::RefinedTcpStream;
                let (read_closable, write_closable) = match ssl {
                    None => match RefinedTcpStream::new(sock) {
                        Ok(halves) => halves,
                        Err(e) => {
                            counters.accept_failed();
                            backoff.failed("clone the socket", &e);
                            continue;
                        }
                    },
                    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                    Some(ref ssl) => {
                        // trying to apply SSL over the connection
                        // if an error occurs, we just close the socket and resume listening
                        let sock = match ssl.accept(sock) {
                            Ok(s) => s,
                            Err(_) => continue,
                        };

                        match RefinedTcpStream::new(sock) {
                            Ok(halves) => halves,
                            Err(_) => continue,
                        }
                    }
                    #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                    Some(ref _ssl) => unreachable!(),
                };

                let client = ClientConnection::new(write_closable, read_closable, limits.clone());
                let (notices, answered) = mpsc::channel();
                let live = Live { client, _open: open, notices, answered, unanswered: false };
                match spawn_serve(live, &shared) {
                    Ok(()) => backoff.succeeded(),
                    Err(e) => {
                        counters.accept_failed();
                        backoff.failed("start a thread for a connection", &e);
                    }
                }
            }
            log::debug!("Terminating accept thread");
        });

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
            counters,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// orders-svc patch 5: a request the front answers never reaches `recv`, the others
    /// do, and the answers keep the order of the requests.
    #[test]
    fn the_front_answers_in_place_and_hands_on_the_rest_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let front: Front = Arc::new(|rq: Request| {
            if rq.url() != "/front" {
                return Some(rq);
            }
            rq.respond(Response::from_string("from the front")).unwrap();
            None
        });
        let server = Server::from_listener_with_front(listener, Limits::default(), front).unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Three requests at once on one connection: for a worker, the front, a worker.
        client
            .write_all(
                b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
                  GET /front HTTP/1.1\r\nHost: x\r\n\r\n\
                  GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let wait = Duration::from_secs(10);
        let first = server.recv_timeout(wait).unwrap().expect("the first request");
        assert_eq!(first.url(), "/first");
        // Until it is answered, the connection hands nothing else on.
        std::thread::sleep(Duration::from_millis(50));
        assert!(server.try_recv().unwrap().is_none());
        first.respond(Response::from_string("from the first worker")).unwrap();
        // The next to reach recv is the last: the front answered the one between.
        let last = server.recv_timeout(wait).unwrap().expect("the last request");
        assert_eq!(last.url(), "/last");
        last.respond(Response::from_string("from the last worker")).unwrap();

        let mut answers = String::new();
        client.read_to_string(&mut answers).unwrap();
        let at = |body: &str| answers.find(body).unwrap_or_else(|| panic!("{body:?} in {answers:?}"));
        assert!(at("from the first worker") < at("from the front"), "{answers}");
        assert!(at("from the front") < at("from the last worker"), "{answers}");
        assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 3, "{answers}");
    }

    /// orders-svc patch 5: a request the front keeps, to answer from another thread,
    /// holds the connection's next request until it is answered, as a worker's does.
    #[test]
    fn a_request_the_front_keeps_holds_the_next_until_it_is_answered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (kept_sender, kept) = mpsc::channel::<Request>();
        let kept_sender = Mutex::new(kept_sender);
        let offered = Arc::new(AtomicUsize::new(0));
        let front: Front = {
            let offered = offered.clone();
            Arc::new(move |rq: Request| {
                offered.fetch_add(1, Ordering::SeqCst);
                if rq.url() == "/kept" {
                    kept_sender.lock().unwrap().send(rq).unwrap();
                } else {
                    rq.respond(Response::from_string("from the front")).unwrap();
                }
                None
            })
        };
        let _server = Server::from_listener_with_front(listener, Limits::default(), front).unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client
            .write_all(
                b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n\
                  GET /front HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let first = kept.recv_timeout(Duration::from_secs(10)).expect("the kept request");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(offered.load(Ordering::SeqCst), 1, "the next request waits for the kept one's answer");
        std::thread::spawn(move || first.respond(Response::from_string("kept, answered elsewhere")).unwrap())
            .join()
            .unwrap();
        let mut answers = String::new();
        client.read_to_string(&mut answers).unwrap();
        let at = |body: &str| answers.find(body).unwrap_or_else(|| panic!("{body:?} in {answers:?}"));
        assert!(at("kept, answered elsewhere") < at("from the front"), "{answers}");
        assert_eq!(offered.load(Ordering::SeqCst), 2);
    }

    /// orders-svc patch 6: a parked connection's next request, read on an event thread,
    /// is answered there when it has all come, and by a thread of its own, from what the
    /// event thread read, when only part of it has.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_parked_connections_request_is_read_on_an_event_thread_and_part_of_one_is_not_lost() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let front: Front = Arc::new(|rq: Request| {
            let body = format!("{} on an event thread: {}", rq.url(), in_event_loop());
            rq.respond(Response::from_string(body)).unwrap();
            None
        });
        let limits = Limits { event_threads: 1, ..Limits::default() };
        let _server = Server::from_listener_with_front(listener, limits, front).unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut ask = |parts: &[&[u8]]| -> String {
            for part in parts {
                client.write_all(part).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while !answer.ends_with(b"true") && !answer.ends_with(b"false") {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
            let answer = String::from_utf8(answer).unwrap();
            answer[answer.find("\r\n\r\n").unwrap() + 4..].to_string()
        };
        // A new connection's first request is read by a thread of its own.
        assert_eq!(ask(&[b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"]), "/first on an event thread: false");
        // Then parked: a whole request is answered on the event thread.
        assert_eq!(ask(&[b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"]), "/second on an event thread: true");
        // Half of one, read on the event thread, then the rest: a thread of its own.
        assert_eq!(
            ask(&[b"GET /thi", b"rd HTTP/1.1\r\nHost: x\r\n\r\n"]),
            "/third on an event thread: false"
        );
        assert_eq!(ask(&[b"GET /fourth HTTP/1.1\r\nHost: x\r\n\r\n"]), "/fourth on an event thread: true");
    }
}
