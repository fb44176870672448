//! orders-svc patch 6: keep-alive connections that wait for their next request without a
//! thread each.
//!
//! Upstream, a connection's thread sleeps in `recv` between its requests and is woken for
//! each one: a sleep and a wake-up per request, which an event loop does not pay while
//! any connection is ready. Here a connection with nothing of its next request read is
//! parked: its socket goes into one `epoll` set (`EPOLLONESHOT`), its state into a map,
//! and its thread goes back to the pool. A few event threads wait on the set and take
//! whichever connection is ready, and read what has arrived into its buffer without
//! waiting. One whose next request has all arrived and can be answered without another
//! read is served on the event thread itself; any other goes to a thread of its own, with
//! what was read, as every connection did before, so that a slow client never holds an
//! event thread. A parked connection idle for longer than the idle
//! timeout is closed without an answer, as its thread would have closed it.

use std::collections::HashMap;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::Limits;

/// Connections parked until their socket is readable.
pub(crate) struct Idle<T> {
    epoll: OwnedFd,
    parked: Mutex<HashMap<RawFd, Parked<T>>>,
    idle_timeout: Option<Duration>,
    swept: Mutex<Instant>,
}

struct Parked<T> {
    item: T,
    since: Instant,
}

/// What a readable connection has waiting.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// A whole request that reading cannot block on: answer it here.
    Whole,
    /// Part of a request, or one that may need more reads (a body, a long head), or a
    /// client that has not taken its last answers: a thread of its own.
    Part,
    /// Nothing after all: park it again.
    Nothing,
    /// The client closed the connection, or it failed: drop it.
    Closed,
}

/// How often the parked connections are looked over for the idle timeout, at most.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

impl<T> Idle<T> {
    pub(crate) fn new(idle_timeout: Option<Duration>) -> io::Result<Idle<T>> {
        // SAFETY: epoll_create1 takes no pointer; a valid descriptor is owned from here.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Idle {
            // SAFETY: `fd` was just returned by epoll_create1 and is owned by nothing else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            parked: Mutex::new(HashMap::new()),
            idle_timeout,
            swept: Mutex::new(Instant::now()),
        })
    }

    /// Parks `item`, whose socket is `fd`, until `fd` is readable or hung up. Gives it
    /// back if the socket cannot be watched.
    pub(crate) fn park(&self, fd: RawFd, item: T) -> Result<(), T> {
        // In the map before it is armed: its event may come at once.
        let since = Instant::now();
        self.parked.lock().unwrap().insert(fd, Parked { item, since });
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: fd as u64,
        };
        let epoll = self.epoll.as_raw_fd();
        // SAFETY: `event` outlives the calls; the kernel copies it.
        let mut done = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, &mut event) };
        if done < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
            // SAFETY: as above.
            done = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
        }
        if done < 0 {
            return match self.take(fd) {
                Some(item) => Err(item),
                // Taken already: an event came for a stale registration of this number.
                None => Ok(()),
            };
        }
        Ok(())
    }

    /// Takes the connection parked under `fd`, if it still is.
    pub(crate) fn take(&self, fd: RawFd) -> Option<T> {
        self.parked.lock().unwrap().remove(&fd).map(|p| p.item)
    }

    /// Waits up to `timeout` for sockets to be ready; returns them.
    pub(crate) fn wait(&self, ready: &mut Vec<RawFd>, timeout: Duration) {
        const MOST: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MOST];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `events` holds MOST entries, as the call is told.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), MOST as i32, ms) };
        ready.clear();
        for event in events.iter().take(n.max(0) as usize) {
            ready.push(event.u64 as RawFd);
        }
    }

    /// Closes the connections parked longer than the idle timeout, at most every
    /// `SWEEP_EVERY`.
    pub(crate) fn sweep(&self) {
        let Some(timeout) = self.idle_timeout else { return };
        {
            let Ok(mut swept) = self.swept.try_lock() else { return };
            if swept.elapsed() < SWEEP_EVERY {
                return;
            }
            *swept = Instant::now();
        }
        let expired: Vec<T> = {
            let mut parked = self.parked.lock().unwrap();
            let old: Vec<RawFd> =
                parked.iter().filter(|(_, p)| p.since.elapsed() >= timeout).map(|(fd, _)| *fd).collect();
            old.iter().filter_map(|fd| parked.remove(fd)).map(|p| p.item).collect()
        };
        // Dropped outside the lock: dropping a connection closes its socket.
        drop(expired);
    }

    /// Closes every parked connection.
    pub(crate) fn clear(&self) {
        let all: Vec<T> = self.parked.lock().unwrap().drain().map(|(_, p)| p.item).collect();
        drop(all);
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.parked.lock().unwrap().len()
    }
}

/// Whether the client of socket `fd` has not yet taken all that was sent to it: its next
/// answer could then block the thread that writes it.
pub(crate) fn unsent(fd: RawFd) -> bool {
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int.
    unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unsent) < 0 || unsent > 0 }
}

/// Reads what has arrived on socket `fd` into `buf`, without waiting: `WouldBlock` if
/// nothing has, 0 if the client closed the connection.
pub(crate) fn read_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` holds `buf.len()` bytes, as the call is told.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What a read of a readable connection, done with `read_now`, found: `Whole` for the
/// `bytes` that begin a whole request the event thread may answer.
pub(crate) fn waiting(read: io::Result<&[u8]>, limits: &Limits) -> Waiting {
    match read {
        Ok([]) => Waiting::Closed,
        Ok(bytes) => whole_request(bytes, limits),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Waiting::Nothing,
            _ => Waiting::Closed,
        },
    }
}

/// `Whole` if `bytes` start with a whole `GET` or `HEAD` head, within the limits, that
/// declares no body and expects nothing.
fn whole_request(bytes: &[u8], limits: &Limits) -> Waiting {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Waiting::Part;
    };
    let head = &bytes[..end + 2];
    let line = head.iter().position(|&b| b == b'\n').map_or(head.len(), |at| at + 1);
    if line > limits.max_request_line || head.len() - line > limits.max_header_bytes {
        return Waiting::Part;
    }
    if !(head.starts_with(b"GET ") || head.starts_with(b"HEAD ")) {
        return Waiting::Part;
    }
    let lower = head.to_ascii_lowercase();
    let declares = |name: &[u8]| lower.windows(name.len()).any(|w| w == name);
    if declares(b"\ncontent-length:") || declares(b"\ntransfer-encoding:") || declares(b"\nexpect:") {
        return Waiting::Part;
    }
    Waiting::Whole
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_request_line: 64, max_header_bytes: 256, ..Limits::default() }
    }

    #[test]
    fn only_a_whole_get_or_head_without_a_body_is_answered_on_the_event_thread() {
        let l = limits();
        assert_eq!(whole_request(b"GET /order/a HTTP/1.1\r\nHost: x\r\n\r\n", &l), Waiting::Whole);
        assert_eq!(whole_request(b"HEAD / HTTP/1.1\r\n\r\n", &l), Waiting::Whole);
        assert_eq!(whole_request(b"GET /order/a HTTP/1.1\r\nHost: x\r\n", &l), Waiting::Part);
        assert_eq!(whole_request(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", &l), Waiting::Part);
        assert_eq!(whole_request(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", &l), Waiting::Part);
        assert_eq!(whole_request(b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", &l), Waiting::Part);
        assert_eq!(whole_request(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", &l), Waiting::Part);
    }

    #[test]
    fn a_head_past_the_limits_goes_to_a_thread_that_refuses_it() {
        let l = limits();
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64));
        assert_eq!(whole_request(long_line.as_bytes(), &l), Waiting::Part);
        let big_headers = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(256));
        assert_eq!(whole_request(big_headers.as_bytes(), &l), Waiting::Part);
    }

    #[test]
    fn a_parked_socket_is_given_back_once_readable_read_without_waiting_and_an_idle_one_is_closed() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let fd = server.as_raw_fd();
        let idle = Idle::new(Some(Duration::from_millis(200))).unwrap();
        idle.park(fd, server).map_err(|_| "parked").unwrap();
        let mut ready = Vec::new();
        idle.wait(&mut ready, Duration::from_millis(50));
        assert_eq!(ready, Vec::<RawFd>::new());

        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        idle.wait(&mut ready, Duration::from_secs(5));
        assert_eq!(ready, vec![fd]);
        let server = idle.take(fd).unwrap();
        // Read without waiting: what came, then nothing.
        let mut buf = [0u8; 64];
        let read = read_now(fd, &mut buf).map(|n| &buf[..n]);
        assert_eq!(read.as_deref().ok(), Some(&b"GET / HTTP/1.1\r\n\r\n"[..]));
        assert_eq!(waiting(read, &limits()), Waiting::Whole);
        assert_eq!(waiting(read_now(fd, &mut buf).map(|n| &buf[..n]), &limits()), Waiting::Nothing);
        // Parked again, it is reported again once more arrives, and not before.
        idle.park(fd, server).map_err(|_| "parked again").unwrap();
        idle.wait(&mut ready, Duration::from_millis(50));
        assert_eq!(ready, Vec::<RawFd>::new());
        client.write_all(b"GET /").unwrap();
        idle.wait(&mut ready, Duration::from_secs(5));
        assert_eq!(ready, vec![fd]);
        let server = idle.take(fd).unwrap();
        assert_eq!(waiting(read_now(fd, &mut buf).map(|n| &buf[..n]), &limits()), Waiting::Part);
        // The client closes: read as closed.
        drop(client);
        idle.park(fd, server).map_err(|_| "parked at last").unwrap();
        idle.wait(&mut ready, Duration::from_secs(5));
        assert_eq!(ready, vec![fd]);
        assert_eq!(waiting(read_now(fd, &mut buf).map(|n| &buf[..n]), &limits()), Waiting::Closed);
        drop(idle.take(fd));

        // A connection parked past the idle timeout is closed, without an answer.
        let mut quiet = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        idle.park(server.as_raw_fd(), server).map_err(|_| "parked").unwrap();
        assert_eq!(idle.len(), 1);
        idle.sweep();
        assert_eq!(idle.len(), 1, "not yet idle for long");
        std::thread::sleep(Duration::from_millis(350));
        idle.sweep();
        assert_eq!(idle.len(), 0);
        let mut rest = Vec::new();
        use std::io::Read;
        quiet.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(quiet.read_to_end(&mut rest).unwrap(), 0, "closed without an answer");
    }
}
