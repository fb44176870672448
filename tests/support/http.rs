//! The one HTTP/1.1 client of the tests and benchmarks: a request on a connection of its
//! own, raw bytes for hostile requests, and a keep-alive connection for load.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[], None)
}

/// `GET path`, or the error if the answer did not come within `limit`.
pub fn get_within(addr: SocketAddr, path: &str, limit: Duration) -> std::io::Result<HttpResponse> {
    let mut connection = Connection::open(addr, limit)?;
    connection.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    connection.read_response(false)
}

pub fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    request(addr, method, path, &[], None)
}

pub fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(addr, method, path, headers, None)
}

/// One request with headers and an optional JSON body, on a connection of its own.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    let mut connection = Connection::open(addr, Duration::from_secs(30)).expect("connect to the server");
    connection.send(head.as_bytes()).expect("send the request");
    connection.read_response(method == "HEAD").expect("read the response")
}

/// Sends raw bytes as a request and returns the status of the answer, or None when the
/// server closed the connection without one.
pub fn raw_status(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut connection = Connection::open(addr, Duration::from_secs(10)).expect("connect to the server");
    connection.send(bytes).ok()?;
    connection.read_response(false).ok().map(|r| r.status)
}

/// A keep-alive connection.
pub struct Connection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Connection { writer: stream.try_clone()?, reader: BufReader::new(stream) })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// `GET path` on this connection, keeping it open.
    pub fn get(&mut self, path: &str) -> std::io::Result<HttpResponse> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
        self.read_response(false)
    }

    /// Another handle on the connection's socket, for a thread that writes while this
    /// one reads.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().expect("clone the socket")
    }

    /// Reads what the server sends until it closes the connection.
    pub fn read_to_end(&mut self) -> std::io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        Ok(rest)
    }

    /// Reads one response: the head, then as many body bytes as Content-Length says, the
    /// chunks of a chunked body, or to the end of the stream without either.
    pub fn read_response(&mut self, head_request: bool) -> std::io::Result<HttpResponse> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                if lines.is_empty() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                break;
            }
            if line == "\r\n" {
                break;
            }
            lines.push(line.trim_end().to_string());
        }
        let status = lines
            .first()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("no status line"))?;
        let headers: Vec<(String, String)> = lines[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .map(|(_, v)| v.parse::<usize>().map_err(|_| invalid("bad Content-Length")))
            .transpose()?;
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("Transfer-Encoding") && v.eq_ignore_ascii_case("chunked"));
        let mut body = Vec::new();
        match length {
            _ if head_request || status == 304 => {}
            _ if chunked => loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or_default(), 16)
                    .map_err(|_| invalid("bad chunk size"))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            },
            Some(n) => {
                body.resize(n, 0);
                self.reader.read_exact(&mut body)?;
            }
            None => {
                self.reader.read_to_end(&mut body)?;
            }
        }
        let body = String::from_utf8(body).map_err(|_| invalid("body is not UTF-8"))?;
        Ok(HttpResponse { status, headers, body })
    }
}
