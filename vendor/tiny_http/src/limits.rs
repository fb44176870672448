//! orders-svc patch: what one client may hold of the server, and how the server goes on
//! when accepting fails. See PATCHED.md.

use std::io::{Error as IoError, ErrorKind, Result as IoResult};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::StatusCode;

/// Bounds on the server's clients, given to `Server::from_listener_with_limits`.
/// `Limits::default()` is upstream's behaviour: no bound at all.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once; past it a new connection is answered 503 and closed.
    pub max_connections: usize,
    /// From the first byte of a request to the end of its body; also the longest a
    /// write of a response may block. `408 Request Timeout` past it.
    pub request_timeout: Option<Duration>,
    /// How long an open connection may wait for the first byte of its next request;
    /// past it the connection is closed without an answer.
    pub idle_timeout: Option<Duration>,
    /// The longest request line, method and version included (414 past it).
    pub max_request_line: usize,
    /// The most bytes of header lines (431 past it).
    pub max_header_bytes: usize,
    /// The largest body accepted, read whole before the request is handed on (413 past
    /// it; a body of unknown length is 411).
    pub max_body_bytes: Option<usize>,
    /// orders-svc patch 6: threads that serve the keep-alive connections waiting for
    /// their next request, for a server with a front on Linux; 0 leaves each connection
    /// its own thread throughout.
    pub event_threads: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: usize::MAX,
            request_timeout: None,
            idle_timeout: None,
            max_request_line: usize::MAX,
            max_header_bytes: usize::MAX,
            max_body_bytes: None,
            event_threads: 0,
        }
    }
}

/// What the server has done with its connections, for its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: usize,
    /// Connections refused since the start because `max_connections` were open.
    pub refused: u64,
    /// Failures to accept a connection or to start its thread since the start.
    pub accept_errors: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    open: AtomicUsize,
    refused: AtomicU64,
    accept_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.open.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn accept_failed(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a connection as open for as long as it lives.
pub(crate) struct OpenConnection(Arc<Counters>);

impl OpenConnection {
    pub(crate) fn new(counters: &Arc<Counters>) -> OpenConnection {
        counters.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(counters.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A whole response that closes the connection: for the answers the server gives by
/// itself (a refused connection, a request it will not read).
pub(crate) fn closing_response(status: u16, message: &str) -> Vec<u8> {
    let reason = StatusCode(status).default_reason_phrase();
    let retry = if status == 503 { "Retry-After: 1\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\n{retry}Connection: close\r\nContent-Length: {}\r\n\r\n{message}",
        message.len()
    )
    .into_bytes()
}

/// The read deadline of one connection, set by its reading thread and applied by its
/// socket before each read: the idle timeout between requests, the request timeout
/// from a request's first byte.
pub(crate) struct ReadDeadline {
    idle: Option<Duration>,
    request: Option<Duration>,
    state: Mutex<DeadlineState>,
}

#[derive(Clone, Copy)]
struct DeadlineState {
    until: Option<Instant>,
    /// A byte of the current request has arrived.
    started: bool,
    /// Set by `linger`: the socket stops sending before its next read.
    close_write: bool,
}

impl ReadDeadline {
    pub(crate) fn new(limits: &Limits) -> Arc<ReadDeadline> {
        Arc::new(ReadDeadline {
            idle: limits.idle_timeout,
            request: limits.request_timeout,
            state: Mutex::new(DeadlineState { until: None, started: false, close_write: false }),
        })
    }

    /// Between requests: reads wait up to the idle timeout.
    pub(crate) fn between_requests(&self) {
        self.set(DeadlineState { until: None, started: false, close_write: false });
    }

    /// No byte of the next request has arrived yet.
    pub(crate) fn request_not_started(&self) -> bool {
        !self.state.lock().unwrap_or_else(|e| e.into_inner()).started
    }

    /// A request began now: everything of it must arrive within the request timeout.
    pub(crate) fn request_started(&self) {
        self.set(DeadlineState { until: self.request.map(|t| Instant::now() + t), started: true, close_write: false });
    }

    /// The answer was the last: stop sending, and read (to throw away) for at most `for_`.
    pub(crate) fn linger(&self, for_: Duration) {
        self.set(DeadlineState { until: Some(Instant::now() + for_), started: true, close_write: true });
    }

    fn set(&self, state: DeadlineState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The timeout for the next read, or `TimedOut` when the deadline has passed; and
    /// whether to shut the sending side first.
    pub(crate) fn next_read(&self) -> IoResult<(Option<Duration>, bool)> {
        let state = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = match state.until {
            None => self.idle,
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(IoError::new(ErrorKind::TimedOut, "request timeout")),
            },
        };
        Ok((timeout, state.close_write))
    }
}

/// For the accept loop: after a failure, wait a little longer each time (10 ms to
/// 500 ms) and log at most once a second, with how many failures the line stands for.
pub(crate) struct Backoff {
    delay: Duration,
    unlogged: u64,
    logged_at: Option<Instant>,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MOST: Duration = Duration::from_millis(500);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { delay: BACKOFF_FIRST, unlogged: 0, logged_at: None }
    }

    /// Logs (rate limited) that `step` failed with `error`, then sleeps.
    pub(crate) fn failed(&mut self, step: &str, error: &IoError) {
        self.unlogged += 1;
        if self.logged_at.map_or(true, |at| at.elapsed() >= Duration::from_secs(1)) {
            log::error!(
                "event=http_accept_failed step=\"{step}\" error=\"{error}\" failures={} retry_in_ms={}",
                self.unlogged,
                self.delay.as_millis()
            );
            self.unlogged = 0;
            self.logged_at = Some(Instant::now());
        }
        std::thread::sleep(self.delay);
        self.delay = (self.delay * 2).min(BACKOFF_MOST);
    }

    /// A connection was accepted and started: the next failure waits the shortest time.
    pub(crate) fn succeeded(&mut self) {
        self.delay = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closing_response_is_complete_http() {
        assert_eq!(
            String::from_utf8(closing_response(503, "too many connections\n")).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 21\r\n\r\n\
             too many connections\n"
        );
    }

    #[test]
    fn the_deadline_is_the_idle_timeout_between_requests_and_runs_out_within_one() {
        let limits = Limits {
            idle_timeout: Some(Duration::from_secs(30)),
            request_timeout: Some(Duration::from_millis(50)),
            ..Limits::default()
        };
        let deadline = ReadDeadline::new(&limits);
        assert_eq!(deadline.next_read().unwrap(), (Some(Duration::from_secs(30)), false));
        assert!(deadline.request_not_started());
        deadline.request_started();
        assert!(!deadline.request_not_started());
        let (left, close_write) = deadline.next_read().unwrap();
        assert!(left.unwrap() <= Duration::from_millis(50) && !close_write);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(deadline.next_read().unwrap_err().kind(), ErrorKind::TimedOut);
        deadline.between_requests();
        assert_eq!(deadline.next_read().unwrap(), (Some(Duration::from_secs(30)), false));
        deadline.linger(Duration::from_secs(1));
        assert!(deadline.next_read().unwrap().1);
    }

    #[test]
    fn backoff_doubles_to_its_most_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new();
        let error = IoError::from_raw_os_error(24);
        for _ in 0..8 {
            backoff.failed("accept", &error);
        }
        assert_eq!(backoff.delay, BACKOFF_MOST);
        backoff.succeeded();
        assert_eq!(backoff.delay, BACKOFF_FIRST);
    }
}
