use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{HTTPVersion, Header, Method};
use crate::limits::{closing_response, Limits, ReadDeadline};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // orders-svc patch: the bounds on this connection, and its read deadline.
    limits: Limits,
    deadline: Arc<ReadDeadline>,

    // orders-svc patch 6: the socket read from, if plain TCP on Linux.
    #[cfg(target_os = "linux")]
    tcp_fd: Option<std::os::unix::io::RawFd>,
}

/// orders-svc patch: after an answer that closes the connection, what the client still
/// sends is read and thrown away for up to this long (or `LINGER_BYTES`), so that
/// closing does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    // orders-svc patch: the bounds of `Limits`.
    /// nothing of a next request came (the connection is closed without an answer)
    NoRequest,
    RequestLineTooLong,
    HeadersTooLarge,
    BodyTooLarge,
    LengthRequired,
    BadContentLength,
}

/// orders-svc patch: a line longer than its limit.
enum LineError {
    Io(IoError),
    TooLong,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        #[cfg(target_os = "linux")]
        let tcp_fd = read_socket.tcp_fd();
        let deadline = ReadDeadline::new(&limits);
        read_socket.follow(deadline.clone());

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            deadline,
            #[cfg(target_os = "linux")]
            tcp_fd,
        }
    }

    /// orders-svc patch 6: the connection's socket, if the connection can wait for its
    /// next request without a thread: plain TCP, more requests may come, and nothing of
    /// the next one has been read yet (the request before has given its reader back).
    #[cfg(target_os = "linux")]
    pub(crate) fn idle_socket(&mut self) -> Option<std::os::unix::io::RawFd> {
        if self.no_more_requests || self.secure {
            return None;
        }
        let fd = self.tcp_fd?;
        let reader = self.next_header_source.ready()?;
        reader.buffer().is_empty().then_some(fd)
    }

    /// orders-svc patch 6: for an event thread, what a parked connection that became
    /// readable has waiting. What has arrived is read into the connection's buffer without
    /// waiting (nothing is read from a client that has not taken its last answers), and
    /// the thread that serves the connection next starts from it.
    #[cfg(target_os = "linux")]
    pub(crate) fn read_waiting(&mut self) -> crate::util::idle::Waiting {
        use crate::util::idle::{unsent, waiting, Waiting};
        use std::io::BufRead;
        let (Some(fd), Some(reader)) = (self.tcp_fd, self.next_header_source.ready()) else {
            return Waiting::Part;
        };
        if unsent(fd) {
            return Waiting::Part;
        }
        reader.get_mut().dont_wait(true);
        let read = reader.fill_buf().map(|bytes| bytes.len());
        reader.get_mut().dont_wait(false);
        waiting(read.map(|_| reader.buffer()), &self.limits)
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// orders-svc patch: at most `limit` bytes, CRLF included, are read (`TooLong` past
    /// them, with the rest left unread). With `first`, the request timeout starts at the
    /// line's first byte.
    fn read_next_line(&mut self, limit: usize, first: bool) -> Result<AsciiString, LineError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            if buf.len() >= limit {
                return Err(LineError::TooLong);
            }
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(LineError::Io)?,
                None => {
                    return Err(LineError::Io(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };
            if first && buf.is_empty() {
                self.deadline.request_started();
            }

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf).map_err(|_| {
                    LineError::Io(IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII"))
                });
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// orders-svc patch: refuses a body the limits do not allow, before it is read.
    fn check_body(&self, headers: &[Header]) -> Result<(), ReadError> {
        let Some(most) = self.limits.max_body_bytes else {
            return Ok(());
        };
        if headers.iter().any(|h| h.field.equiv("Transfer-Encoding")) {
            return Err(ReadError::LengthRequired);
        }
        let mut declared = None;
        for h in headers.iter().filter(|h| h.field.equiv("Content-Length")) {
            let length: usize = h.value.as_str().trim().parse().map_err(|_| ReadError::BadContentLength)?;
            if declared.is_some_and(|d| d != length) {
                return Err(ReadError::BadContentLength);
            }
            declared = Some(length);
        }
        match declared {
            Some(length) if length > most => Err(ReadError::BodyTooLarge),
            _ => Ok(()),
        }
    }

    /// orders-svc patch: writes an answer that ends the connection, then throws away
    /// what the client still sends for a while.
    fn close_with(&mut self, status: u16, message: &str) {
        use std::io::Write;
        let mut writer = self.sink.next().unwrap();
        if writer
            .write_all(&closing_response(status, message))
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
        drop(writer);
        self.deadline.linger(LINGER);
        let mut buf = [0; 8192];
        let mut thrown = 0;
        while thrown < LINGER_BYTES {
            match self.next_header_source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => thrown += n,
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            self.deadline.between_requests();
            let (method, path, version) = {
                let line = match self.read_next_line(self.limits.max_request_line, true) {
                    Ok(line) => line,
                    Err(LineError::TooLong) => return Err(ReadError::RequestLineTooLong),
                    Err(LineError::Io(_)) if self.deadline.request_not_started() => {
                        return Err(ReadError::NoRequest)
                    }
                    Err(LineError::Io(e)) => return Err(ReadError::ReadIoError(e)),
                };

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                let mut budget = self.limits.max_header_bytes;
                loop {
                    let line = match self.read_next_line(budget, false) {
                        Ok(line) => line,
                        Err(LineError::TooLong) => return Err(ReadError::HeadersTooLarge),
                        Err(LineError::Io(e)) => return Err(ReadError::ReadIoError(e)),
                    };
                    budget = budget.saturating_sub(line.len() + 2);

                    if line.is_empty() {
                        break;
                    };
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };
            self.check_body(&headers)?;

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            self.limits.max_body_bytes,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    self.close_with(408, "the request did not arrive in time\n");
                    return None; // closing the connection
                }

                // orders-svc patch: the bounds of `Limits`.
                Err(ReadError::NoRequest) => return None,
                Err(ReadError::RequestLineTooLong) => {
                    self.close_with(414, "request target too long\n");
                    return None;
                }
                Err(ReadError::HeadersTooLarge) => {
                    self.close_with(431, "request headers too large\n");
                    return None;
                }
                Err(ReadError::BodyTooLarge) => {
                    self.close_with(413, "request body too large\n");
                    return None;
                }
                Err(ReadError::LengthRequired) => {
                    self.close_with(411, "a request body needs a Content-Length\n");
                    return None;
                }
                Err(ReadError::BadContentLength) => {
                    self.close_with(400, "invalid Content-Length\n");
                    return None;
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
