//! A minimal HTTP client for health probes: the `probe` command (container
//! healthchecks) and the benchmarks ask a running service with it.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context;

/// `GET path` on the service at `addr`, for health probes: the status and the body.
/// An unspecified listening address (0.0.0.0, ::) is probed on loopback.
pub fn get(addr: SocketAddr, path: &str, timeout: std::time::Duration) -> anyhow::Result<(u16, String)> {
    use std::io::Read as _;
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let mut stream =
        std::net::TcpStream::connect_timeout(&target, timeout).with_context(|| format!("connect to {target}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("read the answer of {target}"))?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no HTTP status line")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}
