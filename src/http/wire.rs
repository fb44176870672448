//! Replies as bytes on the wire: the `Reply` type, the headers every response carries,
//! and the HTTP/1.1 encoding that is written to the socket in one write.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::Arc;

use maud::Markup;
use tiny_http::StatusCode;

/// A response before it is written to a socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Arc<[u8]>,
}

pub(super) const JSON: &str = "application/json";
pub(super) const HTML: &str = "text/html; charset=utf-8";
pub(super) const TEXT: &str = "text/plain; charset=utf-8";

/// Sent with every response. The pages load one stylesheet from this origin and run no
/// script, so the policy allows nothing else; `frame-ancestors 'none'` also keeps them
/// out of frames.
const SECURITY_HEADERS: [(&str, &str); 3] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

impl Reply {
    pub(super) fn new(status: u16, content_type: &'static str, body: impl Into<Arc<[u8]>>) -> Reply {
        Reply { status, headers: vec![("Content-Type", content_type.into())], body: body.into() }
    }
    pub(super) fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::new(status, JSON, value.to_string().into_bytes())
    }
    pub(super) fn html(status: u16, page: Markup) -> Reply {
        Reply::new(status, HTML, page.into_string().into_bytes())
    }
    pub(super) fn text(status: u16, text: &str) -> Reply {
        Reply::new(status, TEXT, text.as_bytes())
    }
    pub(super) fn with(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref())
    }
}

/// The reply as HTTP/1.1 bytes, with `Date`, the security headers and `Content-Length`.
/// A HEAD reply has the GET's headers and no body; a 304 has neither body nor length.
pub fn encode(reply: &Reply, head_only: bool, date: &str) -> Vec<u8> {
    let no_body = reply.status == 304;
    let body: &[u8] = if head_only || no_body { &[] } else { &reply.body };
    let length = reply.body.len().to_string();
    let headers = || {
        std::iter::once(("Date", date))
            .chain(reply.headers.iter().map(|(name, value)| (*name, value.as_ref())))
            .chain(SECURITY_HEADERS)
            .chain((!no_body).then_some(("Content-Length", length.as_str())))
    };
    let reason = StatusCode(reply.status).default_reason_phrase();
    // In one allocation of the size it ends with: every hit is encoded here.
    let size = "HTTP/1.1 200 \r\n".len()
        + reason.len()
        + headers().map(|(name, value)| name.len() + value.len() + 4).sum::<usize>()
        + 2
        + body.len();
    let mut out = Vec::with_capacity(size);
    write!(out, "HTTP/1.1 {} {reason}\r\n", reply.status).expect("a Vec takes every write");
    for (name, value) in headers() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    debug_assert_eq!(out.len(), size, "a status of three digits");
    out
}

/// The current time as an HTTP date, formatted once a second per thread.
pub(super) fn http_date() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != second {
            *last = (second, httpdate::fmt_http_date(now));
        }
        last.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_response_has_date_security_headers_and_length() {
        let date = "Sat, 21 Nov 2026 20:00:00 GMT";
        let bytes = encode(&Reply::text(404, "not found\n"), false, date);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 404 Not Found\r\n\
             Date: Sat, 21 Nov 2026 20:00:00 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Security-Policy: default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'\r\n\
             X-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\n\
             Content-Length: 10\r\n\
             \r\n\
             not found\n"
        );
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body_and_304_has_neither() {
        let date = "Sat, 21 Nov 2026 20:00:00 GMT";
        let head = String::from_utf8(encode(&Reply::text(200, "hello"), true, date)).unwrap();
        assert!(head.ends_with("Content-Length: 5\r\n\r\n"), "{head}");
        let not_modified = Reply { status: 304, headers: Vec::new(), body: Arc::from(&b""[..]) };
        let text = String::from_utf8(encode(&not_modified, false, date)).unwrap();
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(!text.contains("Content-Length"));
    }
}
