//! The HTTP side: routing, status codes and headers, and the tiny_http worker pool.
//! `respond` turns a request into a `Reply` and is tested without sockets.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::Context;
use log::{error, info, warn};
use maud::Markup;
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};
use tiny_http::{Method, Request, StatusCode};

use crate::cache::{Cache, CachedOrder};
use crate::metrics::{Metrics, ROUTES, STATUS_CODES, STATUSES};
use crate::model::{self, Order};
use crate::pages;
use crate::service::{Health, Shutdown};
use crate::store::{self, Pool};

/// What the read path needs; shared by every worker.
pub struct State {
    pub cache: Arc<Cache>,
    pub pool: Arc<Pool>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// A response before it is written to a socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Arc<[u8]>,
}

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Longest request target accepted (414 past it).
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// Most bytes of request headers accepted, names and values (431 past it).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

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

/// The static files, compiled in from `assets/`: nothing else is served as a file,
/// whatever the path says.
const ASSETS: &[(&str, &str, &[u8])] =
    &[("style.css", "text/css; charset=utf-8", include_bytes!("../assets/style.css"))];

/// Orders can be replaced by a later message: caches may keep them but must ask again
/// (with the ETag) before using them.
const ORDER_CACHE_CONTROL: &str = "no-cache";

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Arc<[u8]>>) -> Reply {
        Reply { status, headers: vec![("Content-Type", content_type.into())], body: body.into() }
    }
    fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::new(status, JSON, value.to_string().into_bytes())
    }
    fn html(status: u16, page: Markup) -> Reply {
        Reply::new(status, HTML, page.into_string().into_bytes())
    }
    fn text(status: u16, text: &str) -> Reply {
        Reply::new(status, TEXT, text.as_bytes())
    }
    fn with(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref())
    }
}

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().iter().find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

/// Routes one request.
pub fn respond(state: &State, request: &Request) -> Reply {
    let url = request.url();
    if url.len() > MAX_URL_BYTES {
        return Reply::text(414, "request target too long\n");
    }
    let header_bytes: usize = request.headers().iter().map(|h| h.field.as_str().len() + h.value.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Reply::text(431, "request headers too large\n");
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let known = matches!(path, "/" | "/healthz" | "/readyz" | "/metrics")
        || path.starts_with("/order/")
        || path.starts_with("/assets/");
    if !known {
        return Reply::text(404, "not found\n");
    }
    if !matches!(request.method(), Method::Get | Method::Head) {
        return Reply::text(405, "method not allowed\n").with("Allow", "GET, HEAD");
    }
    match path {
        "/healthz" => Reply::json(200, json!({ "status": "alive" })),
        "/readyz" => readiness(state),
        "/metrics" => {
            Reply::new(200, "text/plain; version=0.0.4; charset=utf-8", state.metrics.render(&state.cache).into_bytes())
        }
        "/" => match query_param(query, "uid") {
            Some(uid) if !uid.trim().is_empty() => lookup_form(uid.trim()),
            _ => index(state),
        },
        _ => match path.strip_prefix("/order/") {
            Some(uid) => order(state, request, uid),
            None => asset(path.trim_start_matches("/assets/")),
        },
    }
}

fn asset(name: &str) -> Reply {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => {
            Reply::new(200, content_type, *bytes).with("Cache-Control", "public, max-age=3600")
        }
        None => Reply::text(404, "not found\n"),
    }
}

/// The form sends `/?uid=…`; a valid id is redirected to the order's own address.
fn lookup_form(uid: &str) -> Reply {
    match model::check_uid(uid) {
        Ok(()) => Reply::text(303, "see the order\n").with("Location", format!("/order/{uid}")),
        Err(reason) => Reply::html(400, pages::bad_request(uid, &reason)),
    }
}

fn index(state: &State) -> Reply {
    let recent = state.pool.with(|client| store::recent_summaries(client, 20));
    if let Err(e) = &recent {
        warn!("event=recent_orders_failed error={e:#}");
    }
    Reply::html(200, pages::index(recent.ok().as_deref()))
}

/// `GET /order/<uid>`: JSON, or the order's page for a client that prefers HTML.
fn order(state: &State, request: &Request, uid: &str) -> Reply {
    let html = prefers_html(header(request, "Accept"));
    let vary = |r: Reply| r.with("Vary", "Accept");
    if let Err(reason) = model::check_uid(uid) {
        return vary(if html {
            Reply::html(400, pages::bad_request(uid, &reason))
        } else {
            Reply::json(400, json!({ "error": reason }))
        });
    }
    if !state.health.cache_warm() {
        let reason = "the service is still loading orders; try again shortly";
        return vary(if html {
            Reply::html(503, pages::unavailable(reason))
        } else {
            Reply::json(503, json!({ "error": reason }))
        })
        .with("Retry-After", "1");
    }
    let found = state.cache.lookup(uid, || state.pool.with(|client| store::order(client, uid)));
    let reply = match found {
        Ok(Some(order)) => found_order(request, &order, html),
        Ok(None) if html => Reply::html(404, pages::not_found(uid)),
        Ok(None) => Reply::json(404, json!({ "error": "order not found", "order_uid": uid })),
        Err(e) => {
            error!("event=order_read_failed order_uid={uid} error={e}");
            let reason = "the database is unavailable; try again shortly";
            let reply = if html {
                Reply::html(503, pages::unavailable(reason))
            } else {
                Reply::json(503, json!({ "error": reason }))
            };
            reply.with("Retry-After", "1")
        }
    };
    vary(reply)
}

fn found_order(request: &Request, order: &CachedOrder, html: bool) -> Reply {
    let reply = if header(request, "If-None-Match").is_some_and(|tags| etag_matches(tags, &order.etag)) {
        Reply { status: 304, headers: Vec::new(), body: Arc::from(&[][..]) }
    } else if html {
        match serde_json::from_slice::<Order>(&order.json) {
            Ok(parsed) => Reply::html(200, pages::order(&parsed)),
            Err(e) => {
                error!("event=cached_order_unreadable order_uid={} error={e}", order.uid);
                Reply::text(500, "internal error\n")
            }
        }
    } else {
        Reply { status: 200, headers: vec![("Content-Type", JSON.into())], body: order.json.clone() }
    };
    // The HTML page is derived from the same JSON, so one validator serves both; the
    // Vary header keeps caches from mixing them up.
    let etag = if html { format!("W/{}", order.etag) } else { order.etag.clone() };
    reply.with("ETag", etag).with("Cache-Control", ORDER_CACHE_CONTROL)
}

/// Whether `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks for GET).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// Whether the client ranks `text/html` above `application/json`: browsers do, curl
/// (`*/*`) and API clients do not.
fn prefers_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let ranges: Vec<(&str, f32)> = accept
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().filter(|m| !m.is_empty())?;
            let q = parts.find_map(|p| p.strip_prefix("q=")).and_then(|q| q.parse().ok()).unwrap_or(1.0);
            Some((media, q))
        })
        .collect();
    let quality = |media: &str| {
        let kind = media.split('/').next().unwrap_or_default();
        let find = |want: &str| ranges.iter().find(|(m, _)| m.eq_ignore_ascii_case(want)).map(|(_, q)| *q);
        find(media).or_else(|| find(&format!("{kind}/*"))).or_else(|| find("*/*")).unwrap_or(0.0)
    };
    quality("text/html") > quality("application/json")
}

fn readiness(state: &State) -> Reply {
    let mut waiting = Vec::new();
    if !state.health.cache_warm() {
        let why = state.health.startup_problem().unwrap_or_else(|| "loading orders from PostgreSQL".into());
        waiting.push(format!("cache: {why}"));
    }
    if let Err(e) = state.pool.with(store::ping) {
        waiting.push(format!("database: {e:#}"));
    }
    if !state.health.consumer_joined() {
        waiting.push("consumer: has not joined its group yet".to_string());
    }
    if waiting.is_empty() {
        Reply::json(200, json!({ "ready": true }))
    } else {
        Reply::json(503, json!({ "ready": false, "waiting_for": waiting }))
    }
}

/// The value of `name` in an `application/x-www-form-urlencoded` query, decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| form_decode(v))
}

fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                out.push((hex(bytes[i + 1]).unwrap() * 16 + hex(bytes[i + 2]).unwrap()) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET path` on the service at `addr`, for health probes: the status and the body.
/// An unspecified listening address (0.0.0.0, ::) is probed on loopback.
pub fn probe(addr: SocketAddr, path: &str, timeout: std::time::Duration) -> anyhow::Result<(u16, String)> {
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

/// The listening server and its workers.
pub struct Server {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and starts `workers` threads answering requests.
    pub fn start(addr: SocketAddr, workers: usize, state: Arc<State>, shutdown: Shutdown) -> anyhow::Result<Server> {
        let listener = listen(addr).with_context(|| format!("listen on {addr}"))?;
        let addr = listener.local_addr().context("read listening address")?;
        let server = Arc::new(
            tiny_http::Server::from_listener(listener, None).map_err(|e| anyhow::anyhow!("start HTTP server: {e}"))?,
        );
        let workers = (0..workers)
            .map(|i| {
                let (server, state, shutdown) = (server.clone(), state.clone(), shutdown.clone());
                thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || serve(&server, &state, &shutdown))
                    .context("spawn HTTP worker")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        info!("event=http_listening addr={addr} workers={}", workers.len());
        Ok(Server { server, addr, workers })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets each worker finish the request in hand, then joins them all.
    pub fn stop(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for worker in self.workers {
            if worker.join().is_err() {
                error!("event=http_worker_panicked");
            }
        }
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

fn handle(state: &State, request: Request) {
    let started = std::time::Instant::now();
    let route = route(request.url());
    let reply = respond(state, &request);
    let status = reply.status;
    let bytes = encode(&reply, *request.method() == Method::Head, &http_date());
    // The whole response in one write: tiny_http would write each header in pieces,
    // each through a lock. Whether the connection stays open was settled when the
    // request was read (HTTP/1.0, `Connection: close`), as with `Request::respond`.
    let mut writer = request.into_writer();
    if let Err(e) = writer.write_all(&bytes).and_then(|()| writer.flush()) {
        // The client went away; nothing to do for it.
        log::debug!("event=http_write_failed error={e}");
    }
    drop(writer);
    state.metrics.count_request(route, status_index(status));
    state.metrics.http_seconds.observe(started.elapsed().as_secs_f64());
}

/// The route a request went to, for metrics, as an index into `metrics::ROUTES`: a
/// fixed set of names, never the raw path.
fn route(url: &str) -> usize {
    let path = url.split_once('?').map_or(url, |(p, _)| p);
    let name = match path {
        "/" if url.contains("uid=") => "lookup",
        "/" => "index",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ if path.starts_with("/order/") => "order",
        _ if path.starts_with("/assets/") => "asset",
        _ => "other",
    };
    ROUTES.iter().position(|r| *r == name).expect("every name is in ROUTES")
}

/// The status as an index into `metrics::STATUSES`; statuses not listed count as other.
fn status_index(status: u16) -> usize {
    STATUS_CODES.iter().position(|&code| code == status).unwrap_or(STATUSES.len() - 1)
}

/// The reply as HTTP/1.1 bytes, with `Date`, the security headers and `Content-Length`.
/// A HEAD reply has the GET's headers and no body; a 304 has neither body nor length.
pub fn encode(reply: &Reply, head_only: bool, date: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + reply.body.len());
    let reason = StatusCode(reply.status).default_reason_phrase();
    let mut line = |name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    line("Date", date);
    for (name, value) in &reply.headers {
        line(name, value);
    }
    for (name, value) in SECURITY_HEADERS {
        line(name, value);
    }
    let no_body = reply.status == 304;
    if !no_body {
        line("Content-Length", &reply.body.len().to_string());
    }
    let mut response = format!("HTTP/1.1 {} {reason}\r\n", reply.status).into_bytes();
    response.append(&mut out);
    response.extend_from_slice(b"\r\n");
    if !(head_only || no_body) {
        response.extend_from_slice(&reply.body);
    }
    response
}

/// The current time as an HTTP date, formatted once a second per thread.
fn http_date() -> String {
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
    use crate::cache::Limits;
    use std::time::Duration;
    use tiny_http::TestRequest;

    /// A state whose database is never reachable: these routes answer without it, or
    /// show how its absence is answered.
    fn state() -> State {
        let health = Arc::new(Health::default());
        health.set_cache_warm();
        let cache = Arc::new(Cache::new(Limits { max_orders: 10, max_bytes: 1 << 20, negative_ttl: Duration::ZERO }));
        State {
            metrics: Arc::new(Metrics::new(&cache)),
            cache,
            pool: Arc::new(Pool::new("postgres://nobody@127.0.0.1:1/none", Duration::from_millis(100), 1)),
            health,
        }
    }

    fn canonical() -> Order {
        model::decode(Some(include_bytes!("../demo/model.json")), &Default::default()).unwrap()
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        use tiny_http::Header;
        let mut r = TestRequest::new().with_method(method).with_path(path);
        for (n, v) in headers {
            r = r.with_header(Header::from_bytes(n.as_bytes(), v.as_bytes()).unwrap());
        }
        r.into()
    }

    fn get(state: &State, path: &str) -> Reply {
        respond(state, &request(Method::Get, path, &[]))
    }

    fn body(r: &Reply) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    const FIREFOX: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    #[test]
    fn cached_order_is_its_json_with_etag_and_cache_control() {
        let s = state();
        s.cache.publish(&[canonical().encode()]);
        let r = get(&s, "/order/b563feb7b2b84b6test");
        assert_eq!((r.status, r.header("Content-Type")), (200, Some(JSON)));
        assert_eq!(&r.body[..], canonical().to_json().as_slice());
        assert_eq!(r.header("Cache-Control"), Some("no-cache"));
        assert_eq!(r.header("Vary"), Some("Accept"));
        assert_eq!(r.header("ETag").unwrap().len(), 26);
    }

    #[test]
    fn matching_if_none_match_is_304_without_body() {
        let s = state();
        s.cache.publish(&[canonical().encode()]);
        let etag = get(&s, "/order/b563feb7b2b84b6test").header("ETag").unwrap().to_string();
        let r = respond(
            &s,
            &request(Method::Get, "/order/b563feb7b2b84b6test", &[("If-None-Match", &format!("\"x\", {etag}"))]),
        );
        assert_eq!((r.status, r.body.len()), (304, 0));
        assert_eq!(r.header("ETag"), Some(etag.as_str()));
        let r = respond(&s, &request(Method::Get, "/order/b563feb7b2b84b6test", &[("If-None-Match", "\"other\"")]));
        assert_eq!(r.status, 200);
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_json() {
        let s = state();
        s.cache.publish(&[canonical().encode()]);
        let r = respond(&s, &request(Method::Get, "/order/b563feb7b2b84b6test", &[("Accept", FIREFOX)]));
        assert_eq!((r.status, r.header("Content-Type")), (200, Some(HTML)));
        assert!(body(&r).contains("<td>Kiryat Mozkin</td>"));
        assert!(r.header("ETag").unwrap().starts_with("W/\""));
        for accept in ["*/*", "application/json", "application/json, text/html;q=0.5"] {
            let r = respond(&s, &request(Method::Get, "/order/b563feb7b2b84b6test", &[("Accept", accept)]));
            assert_eq!(r.header("Content-Type"), Some(JSON), "{accept}");
        }
    }

    #[test]
    fn accept_ranking() {
        assert!(prefers_html(Some(FIREFOX)));
        assert!(prefers_html(Some("text/html")));
        assert!(prefers_html(Some("text/*;q=0.9, application/json;q=0.5")));
        assert!(!prefers_html(Some("*/*")));
        assert!(!prefers_html(None));
        assert!(!prefers_html(Some("text/html;q=0.4, */*;q=0.5")));
    }

    #[test]
    fn impossible_uids_are_400_with_a_json_reason() {
        let s = state();
        let r = get(&s, "/order/");
        assert_eq!((r.status, body(&r)), (400, r#"{"error":"order_uid is empty"}"#));
        assert_eq!(get(&s, &format!("/order/{}", "a".repeat(65))).status, 400);
        assert_eq!(get(&s, "/order/a%2Fb").status, 400);
        let r = get(&s, "/?uid=%3Cscript%3E");
        assert_eq!((r.status, r.header("Content-Type")), (400, Some(HTML)));
        assert!(body(&r).contains("value=\"&lt;script&gt;\""));
    }

    #[test]
    fn form_submission_redirects_to_the_order() {
        let r = get(&state(), "/?uid=+b563feb7b2b84b6test+");
        assert_eq!((r.status, r.header("Location")), (303, Some("/order/b563feb7b2b84b6test")));
    }

    #[test]
    fn database_failure_on_a_miss_is_503() {
        let r = get(&state(), "/order/unknown1");
        assert_eq!(r.status, 503);
        assert_eq!(body(&r), r#"{"error":"the database is unavailable; try again shortly"}"#);
        assert_eq!(r.header("Retry-After"), Some("1"));
    }

    #[test]
    fn order_requests_wait_for_the_warm_cache() {
        let s = State { health: Arc::new(Health::default()), ..state() };
        assert_eq!(get(&s, "/order/b563feb7b2b84b6test").status, 503);
        assert_eq!(get(&s, "/healthz").status, 200);
    }

    #[test]
    fn assets_come_only_from_the_compiled_in_list() {
        let s = state();
        let r = get(&s, "/assets/style.css");
        assert_eq!((r.status, r.header("Content-Type")), (200, Some("text/css; charset=utf-8")));
        assert_eq!(&r.body[..], include_bytes!("../assets/style.css"));
        for path in ["/assets/../Cargo.toml", "/assets/%2e%2e/Cargo.toml", "/assets/", "/assets/style.css/..", "/nope"]
        {
            assert_eq!(get(&s, path).status, 404, "{path}");
        }
    }

    #[test]
    fn writes_are_405_with_allow() {
        let s = state();
        for url in ["/", "/order/abc", "/healthz", "/assets/style.css"] {
            let r = respond(&s, &request(Method::Post, url, &[]));
            assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")), "{url}");
        }
        assert_eq!(respond(&s, &request(Method::Delete, "/elsewhere", &[])).status, 404);
    }

    #[test]
    fn oversize_url_and_headers_are_414_and_431() {
        let s = state();
        assert_eq!(get(&s, &format!("/order/{}", "a".repeat(MAX_URL_BYTES))).status, 414);
        let big = "x".repeat(MAX_HEADER_BYTES);
        assert_eq!(respond(&s, &request(Method::Get, "/", &[("X-Big", &big)])).status, 431);
    }

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

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn metrics_are_the_prometheus_text_format() {
        let s = state();
        s.cache.publish(&[canonical().encode()]);
        get(&s, "/order/b563feb7b2b84b6test");
        let r = get(&s, "/metrics");
        assert_eq!((r.status, r.header("Content-Type")), (200, Some("text/plain; version=0.0.4; charset=utf-8")));
        let text = body(&r);
        assert!(text.contains("\norders_cache_hits_total 1\n"), "{text}");
        assert!(text.contains("\norders_cache_entries 1\n"), "{text}");
        assert!(text.contains("# TYPE orders_batch_messages histogram"), "{text}");
    }

    #[test]
    fn routes_are_named_for_metrics_without_raw_paths() {
        let name = |url: &str| ROUTES[route(url)];
        assert_eq!(name("/order/abc"), "order");
        assert_eq!(name("/?uid=x"), "lookup");
        assert_eq!(name("/"), "index");
        assert_eq!(name("/assets/style.css"), "asset");
        assert_eq!(name("/wp-admin"), "other");
        assert_eq!(STATUSES[status_index(431)], "431");
        assert_eq!(STATUSES[status_index(418)], "other");
        for (i, code) in STATUS_CODES.iter().enumerate() {
            assert_eq!(STATUSES[i], code.to_string());
        }
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(query_param("uid=a%20b+c&x=1", "uid").as_deref(), Some("a b c"));
        assert_eq!(query_param("x=1", "uid"), None);
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
        assert_eq!(form_decode("%41"), "A");
    }
}
