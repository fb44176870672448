//! The HTTP side: routing, status codes and headers, and the tiny_http worker pool.
//! `respond` turns a method and URL into a `Reply` and is tested without sockets.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::Context;
use log::{error, info, warn};
use maud::Markup;
use serde_json::json;
use tiny_http::{Header, Method, Request, Response};

use crate::cache::Cache;
use crate::model::{self, Order};
use crate::store::Pool;
use crate::{Health, Shutdown, pages};

/// What the read path needs; shared by every worker.
pub struct State {
    pub cache: Arc<Cache>,
    pub pool: Arc<Pool>,
    pub health: Arc<Health>,
}

/// A response before it is written to a socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// For 405: the methods the resource accepts.
    pub allow: Option<&'static str>,
}

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const STYLE_CSS: &[u8] = include_bytes!("../assets/style.css");

impl Reply {
    fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply { status, content_type: JSON, body: value.to_string().into_bytes(), allow: None }
    }
    fn html(status: u16, page: Markup) -> Reply {
        Reply { status, content_type: HTML, body: page.into_string().into_bytes(), allow: None }
    }
    fn text(status: u16, text: &str) -> Reply {
        Reply { status, content_type: TEXT, body: text.as_bytes().to_vec(), allow: None }
    }
    fn method_not_allowed() -> Reply {
        Reply { allow: Some("GET, HEAD"), ..Reply::text(405, "method not allowed\n") }
    }
}

/// Routes one request.
pub fn respond(state: &State, method: &Method, url: &str) -> Reply {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let readable = matches!(method, Method::Get | Method::Head);
    match path {
        "/healthz" | "/readyz" | "/" | "/assets/style.css" if !readable => Reply::method_not_allowed(),
        "/healthz" => Reply::json(200, json!({ "status": "alive" })),
        "/readyz" => readiness(state),
        "/assets/style.css" => Reply { status: 200, content_type: CSS, body: STYLE_CSS.to_vec(), allow: None },
        "/" => match query_param(query, "uid") {
            Some(uid) if !uid.trim().is_empty() => order_page(state, uid.trim()),
            _ => Reply::html(200, pages::index()),
        },
        _ => match path.strip_prefix("/order/") {
            Some(_) if !readable => Reply::method_not_allowed(),
            Some(uid) => order_json(state, uid),
            None => Reply::text(404, "not found\n"),
        },
    }
}

/// The outcome of looking an order up, in the cache first and then in PostgreSQL.
enum Lookup {
    Found(Arc<Order>),
    Missing,
    Invalid(String),
    NotReady,
    Failed,
}

fn lookup(state: &State, uid: &str) -> Lookup {
    if let Err(reason) = model::check_uid(uid) {
        return Lookup::Invalid(reason);
    }
    if !state.health.cache_warm() {
        return Lookup::NotReady;
    }
    if let Some(order) = state.cache.get(uid) {
        return Lookup::Found(order);
    }
    match state.pool.with(|client| crate::store::order(client, uid)) {
        Ok(Some(order)) => Lookup::Found(Arc::new(order)),
        Ok(None) => Lookup::Missing,
        Err(e) => {
            error!("event=order_read_failed order_uid={uid} error={e:#}");
            Lookup::Failed
        }
    }
}

fn order_json(state: &State, uid: &str) -> Reply {
    match lookup(state, uid) {
        Lookup::Found(order) => Reply { status: 200, content_type: JSON, body: order.to_json(), allow: None },
        Lookup::Missing => Reply::json(404, json!({ "error": "order not found", "order_uid": uid })),
        Lookup::Invalid(reason) => Reply::json(400, json!({ "error": reason })),
        Lookup::NotReady => Reply::json(503, json!({ "error": "the cache is still being filled; try again shortly" })),
        Lookup::Failed => Reply::json(503, json!({ "error": "the database is unavailable; try again shortly" })),
    }
}

fn order_page(state: &State, uid: &str) -> Reply {
    match lookup(state, uid) {
        Lookup::Found(order) => Reply::html(200, pages::order(&order)),
        Lookup::Missing => Reply::html(404, pages::not_found(uid)),
        Lookup::Invalid(reason) => Reply::html(400, pages::bad_request(uid, &reason)),
        Lookup::NotReady => Reply::html(503, pages::unavailable("The service is still starting.")),
        Lookup::Failed => Reply::html(503, pages::unavailable("The database is unavailable.")),
    }
}

fn readiness(state: &State) -> Reply {
    let mut waiting = Vec::new();
    if !state.health.cache_warm() {
        waiting.push("cache: still loading orders from PostgreSQL".to_string());
    }
    if let Err(e) = state.pool.with(|client| Ok(client.simple_query("SELECT 1")?)) {
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

/// The listening server and its workers.
pub struct Server {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and starts `workers` threads answering requests.
    pub fn start(addr: SocketAddr, workers: usize, state: Arc<State>, shutdown: Shutdown) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
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
    let reply = respond(state, request.method(), request.url());
    let mut response = Response::from_data(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", reply.content_type));
    if let Some(allow) = reply.allow {
        response.add_header(header("Allow", allow));
    }
    if let Err(e) = request.respond(response) {
        // The client went away; nothing to do for it.
        log::debug!("event=http_write_failed error={e}");
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header names and values are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A state whose database is never reached: these routes answer before a lookup.
    fn state() -> State {
        let health = Arc::new(Health::default());
        health.set_cache_warm();
        State {
            cache: Arc::new(Cache::new(10)),
            pool: Arc::new(Pool::new("postgres://nobody@127.0.0.1:1/none", Duration::from_millis(100), 1)),
            health,
        }
    }

    fn get(state: &State, url: &str) -> Reply {
        respond(state, &Method::Get, url)
    }

    #[test]
    fn cached_order_is_served_as_json() {
        let s = state();
        let order = model::decode(Some(include_bytes!("../demo/model.json")), &Default::default()).unwrap();
        s.cache.insert_all([order.clone()]);
        let r = get(&s, "/order/b563feb7b2b84b6test");
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        assert_eq!(r.body, order.to_json());
    }

    #[test]
    fn impossible_uids_are_400_with_a_json_reason() {
        let s = state();
        let r = get(&s, "/order/");
        assert_eq!((r.status, String::from_utf8(r.body).unwrap()), (400, r#"{"error":"order_uid is empty"}"#.into()));
        let r = get(&s, &format!("/order/{}", "a".repeat(65)));
        assert_eq!(r.status, 400);
        let r = get(&s, "/order/a%2Fb");
        assert_eq!(r.status, 400);
        let r = get(&s, "/?uid=%3Cscript%3E");
        assert_eq!((r.status, r.content_type), (400, HTML));
        assert!(String::from_utf8(r.body).unwrap().contains("value=\"&lt;script&gt;\""));
    }

    #[test]
    fn database_failure_on_a_miss_is_503() {
        let r = get(&state(), "/order/unknown1");
        assert_eq!(r.status, 503);
        assert_eq!(String::from_utf8(r.body).unwrap(), r#"{"error":"the database is unavailable; try again shortly"}"#);
    }

    #[test]
    fn order_requests_wait_for_the_warm_cache() {
        let s = State { health: Arc::new(Health::default()), ..state() };
        assert_eq!(get(&s, "/order/b563feb7b2b84b6test").status, 503);
        assert_eq!(get(&s, "/healthz").status, 200);
    }

    #[test]
    fn index_stylesheet_and_unknown_paths() {
        let s = state();
        let r = get(&s, "/");
        assert_eq!((r.status, r.content_type), (200, HTML));
        assert!(String::from_utf8(r.body).unwrap().contains("<form class=\"lookup\" method=\"get\" action=\"/\">"));
        let r = get(&s, "/assets/style.css");
        assert_eq!((r.status, r.content_type, r.body.as_slice()), (200, CSS, STYLE_CSS));
        assert_eq!(get(&s, "/nope").status, 404);
        assert_eq!(get(&s, "/assets/../Cargo.toml").status, 404);
    }

    #[test]
    fn writes_are_405_with_allow() {
        let s = state();
        for url in ["/", "/order/abc", "/healthz"] {
            let r = respond(&s, &Method::Post, url);
            assert_eq!((r.status, r.allow), (405, Some("GET, HEAD")), "{url}");
        }
        assert_eq!(respond(&s, &Method::Delete, "/elsewhere").status, 404);
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
