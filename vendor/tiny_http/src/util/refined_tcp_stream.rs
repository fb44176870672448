use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::connection::Connection;
use crate::limits::ReadDeadline;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    // orders-svc patch: a failed clone (out of descriptors) is an error, not a panic.
    fn try_clone(&self) -> IoResult<Stream> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }

    // orders-svc patch: the read deadline (limits.rs). Not applied to TLS streams.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(timeout),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // orders-svc patch: the read half applies its connection's deadline before each read.
    deadline: Option<Arc<ReadDeadline>>,
    timeout_set: Option<Duration>,
    write_closed: bool,
    // orders-svc patch 6: reads return what has arrived, or `WouldBlock`, without waiting
    // (an event thread's read of a parked connection).
    #[cfg(target_os = "linux")]
    dont_wait: bool,
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            deadline: None,
            timeout_set: None,
            write_closed: false,
            #[cfg(target_os = "linux")]
            dont_wait: false,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            deadline: None,
            timeout_set: None,
            write_closed: false,
            #[cfg(target_os = "linux")]
            dont_wait: false,
        };

        Ok((read, write))
    }

    /// orders-svc patch: reads on this half follow `deadline`.
    pub(crate) fn follow(&mut self, deadline: Arc<ReadDeadline>) {
        self.deadline = Some(deadline);
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// orders-svc patch 6: the socket of a plain TCP connection, for `epoll`.
    #[cfg(target_os = "linux")]
    pub(crate) fn tcp_fd(&self) -> Option<std::os::unix::io::RawFd> {
        use std::os::unix::io::AsRawFd;
        match &self.stream {
            Stream::Http(crate::connection::Connection::Tcp(tcp)) => Some(tcp.as_raw_fd()),
            _ => None,
        }
    }

    /// orders-svc patch 6: with `dont_wait`, a read of a plain TCP connection takes what
    /// has arrived and says `WouldBlock` if nothing has, whatever the deadline.
    #[cfg(target_os = "linux")]
    pub(crate) fn dont_wait(&mut self, dont_wait: bool) {
        self.dont_wait = dont_wait;
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        #[cfg(target_os = "linux")]
        if self.dont_wait {
            if let Some(fd) = self.tcp_fd() {
                return crate::util::idle::read_now(fd, buf);
            }
        }
        if let Some(deadline) = &self.deadline {
            let (timeout, close_write) = deadline.next_read()?;
            if close_write && !self.write_closed {
                self.write_closed = true;
                self.stream.shutdown(Shutdown::Write).ok();
            }
            if timeout != self.timeout_set {
                self.stream.set_read_timeout(timeout)?;
                self.timeout_set = timeout;
            }
        }
        match self.stream.read(buf) {
            // A blocking socket says WouldBlock only when its read timeout ran out.
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(IoError::new(ErrorKind::TimedOut, e)),
            result => result,
        }
    }
}

impl Write for RefinedTcpStream {
    // orders-svc patch: a write that fails (the client went away, or took no bytes for
    // the write timeout) shuts the whole connection down, so that its reading thread
    // stops too and no later response waits on the same socket.
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        let result = self.stream.write(buf);
        if result.is_err() {
            self.stream.shutdown(Shutdown::Both).ok();
        }
        result
    }

    fn flush(&mut self) -> IoResult<()> {
        let result = self.stream.flush();
        if result.is_err() {
            self.stream.shutdown(Shutdown::Both).ok();
        }
        result
    }
}
