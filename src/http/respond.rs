//! From a request to a `Reply`: the checks every request passes, then the handler of
//! its route (orders with content negotiation, the index and lookup form, readiness,
//! metrics, assets). Tested without sockets.

use std::sync::Arc;

use log::{error, warn};
use serde_json::json;
use tiny_http::{Method, Request};

use super::State;
use super::route::Route;
use super::wire::{JSON, Reply};
use crate::cache::{CachedOrder, Found, Lead, Remembered, Unavailable};
use crate::model::{self, Order};
use crate::runtime::LogThrottle;
use crate::{pages, store};

/// Longest request target accepted (414 past it).
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// Most bytes of request headers accepted, names and values (431 past it).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The largest request body accepted (413 past it). No route reads one; this much is
/// read and thrown away so that the connection can go on.
pub const MAX_BODY_BYTES: usize = 1024;

/// The static files, compiled in from `assets/`: nothing else is served as a file,
/// whatever the path says.
const ASSETS: &[(&str, &str, &[u8])] =
    &[("style.css", "text/css; charset=utf-8", include_bytes!("../../assets/style.css"))];

/// The API's OpenAPI 3 description, kept in `assets/openapi.json` and checked against
/// the server by `tests/it/api.rs`.
const OPENAPI: &[u8] = include_bytes!("../../assets/openapi.json");

/// Orders can be replaced by a later message: caches may keep them but must ask again
/// (with the ETag) before using them.
const ORDER_CACHE_CONTROL: &str = "no-cache";

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().iter().find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

/// Answers one request.
pub fn respond(state: &State, request: &Request) -> Reply {
    respond_to(state, request, &Route::parse(request.url()))
}

/// Answers a request whose target was parsed into `route`.
pub(super) fn respond_to(state: &State, request: &Request, route: &Route<'_>) -> Reply {
    if let Some(refused) = oversized(request) {
        return refused;
    }
    // An unknown path is 404 whatever the method; a known one is 405 to anything but a read.
    if *route != Route::Other && !matches!(request.method(), Method::Get | Method::Head) {
        return Reply::text(405, "method not allowed\n").with("Allow", "GET, HEAD");
    }
    match route {
        Route::Healthz => Reply::json(200, json!({ "status": "alive" })),
        Route::Readyz => readiness(state),
        Route::Metrics => {
            state.metrics.ready.set(i64::from(waiting_for(state).is_empty()));
            Reply::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.render(&state.cache, state.connections()).into_bytes(),
            )
        }
        Route::Index => index(state),
        Route::Lookup(uid) => lookup_form(uid),
        Route::Order(uid) => order(state, request, uid, Representation::ByAccept),
        Route::ApiOrder(uid) => order(state, request, uid, Representation::Json),
        Route::Asset(name) => asset(name),
        Route::OpenApi => Reply::new(200, JSON, OPENAPI),
        Route::Other => Reply::text(404, "not found\n"),
    }
}

/// The answer to a request for an order that the cache holds and may serve as it is, or
/// for an id it remembers as missing: nothing to wait for, so the connection's own
/// thread gives it (`super::in_place`). None for any other request, and for an order to
/// be read or refused: `to_read` or a worker's `respond_to`, which answers these the
/// same way, has those.
pub(super) fn from_memory(state: &State, request: &Request, route: &Route<'_>) -> Option<Reply> {
    let (uid, representation) = plain_order(state, request, route)?;
    let remembered = state.cache.from_memory(uid)?;
    let shape = Shape::of(request, representation);
    Some(match remembered {
        Remembered::Held(order) => shape.vary(found_order(request, &order, shape.html)),
        Remembered::Missing => order_reply(request, uid, &shape, Ok(None)),
    })
}

/// The read to hand over for a request `from_memory` left: an order the cache does not
/// hold, with nothing to wait for before reading it (`Cache::lead`). None for any other
/// request: a worker answers it with `respond_to`, which answers these the same way.
pub(super) fn to_read(state: &State, request: &Request, route: &Route<'_>) -> Option<Read> {
    let (uid, representation) = plain_order(state, request, route)?;
    let lead = state.cache.lead(uid)?;
    Some(Read { lead, shape: Shape::of(request, representation) })
}

/// A miss handed over to be read (`to_read`), and how its answer is shaped.
pub(super) struct Read {
    lead: Lead,
    shape: Shape,
}

impl Read {
    pub(super) fn uid(&self) -> &str {
        self.lead.uid()
    }

    /// Ends the read with what it found (`Lead::end`) and answers `request` as
    /// `respond_to` would have.
    pub(super) fn answer(self, request: &Request, loaded: store::Answer) -> Reply {
        let uid = self.lead.uid().to_string();
        let found = self.lead.end(loaded).map(|order| order.map(|order| Found { order, stale: false }));
        order_reply(request, &uid, &self.shape, found)
    }
}

/// The order and representation asked for, if the request is a plain read of an order
/// (GET or HEAD, within the limits, a valid id) and the cache is warm: the requests
/// answered on the connection's own thread, from memory or once read.
fn plain_order<'u>(state: &State, request: &Request, route: &Route<'u>) -> Option<(&'u str, Representation)> {
    let (uid, representation) = match *route {
        Route::Order(uid) => (uid, Representation::ByAccept),
        Route::ApiOrder(uid) => (uid, Representation::Json),
        _ => return None,
    };
    let plain = matches!(request.method(), Method::Get | Method::Head)
        && oversized(request).is_none()
        && state.health.cache_warm()
        && model::check_uid(uid).is_ok();
    plain.then_some((uid, representation))
}

/// 414 or 431 for a request target or headers past the limits.
fn oversized(request: &Request) -> Option<Reply> {
    if request.url().len() > MAX_URL_BYTES {
        return Some(Reply::text(414, "request target too long\n"));
    }
    let header_bytes: usize = request.headers().iter().map(|h| h.field.as_str().len() + h.value.len() + 4).sum();
    (header_bytes > MAX_HEADER_BYTES).then(|| Reply::text(431, "request headers too large\n"))
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

/// The form, and the recent orders when the database can be asked (it is one of the
/// requests that may read it at once).
fn index(state: &State) -> Reply {
    let recent = match state.cache.database_wait() {
        Some(_wait) => state.pool.with(|client| store::recent_summaries(client, 20)),
        None => Err(anyhow::anyhow!("too many requests are waiting for the database")),
    };
    static FAILED: LogThrottle = LogThrottle::new();
    if let Err(e) = &recent
        && let Some(held) = FAILED.allow()
    {
        warn!("event=recent_orders_failed error={e:#} held_back={held}");
    }
    Reply::html(200, pages::index(recent.ok().as_deref()))
}

/// How an order's address chooses between its JSON and its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Representation {
    /// `/order/<uid>`: the page for a client that prefers HTML, JSON for any other.
    ByAccept,
    /// `/api/order/<uid>`: JSON, whatever the client asks for.
    Json,
}

/// What an order's answer is to this request: its page or its JSON, and whether the
/// choice was the `Accept` header's.
struct Shape {
    html: bool,
    by_accept: bool,
}

impl Shape {
    fn of(request: &Request, representation: Representation) -> Shape {
        let by_accept = representation == Representation::ByAccept;
        Shape { html: by_accept && prefers_html(header(request, "Accept")), by_accept }
    }

    /// Only an answer chosen by `Accept` varies with it.
    fn vary(&self, reply: Reply) -> Reply {
        if self.by_accept { reply.with("Vary", "Accept") } else { reply }
    }
}

/// `GET /order/<uid>` and `GET /api/order/<uid>`: the order as JSON, or its page.
fn order(state: &State, request: &Request, uid: &str, representation: Representation) -> Reply {
    let shape = Shape::of(request, representation);
    let html = shape.html;
    let vary = |r: Reply| shape.vary(r);
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
    let found = state.cache.lookup(uid, || state.readers.read(uid));
    order_reply(request, uid, &shape, found)
}

/// The answer to a request for order `uid`, once looked up.
fn order_reply(request: &Request, uid: &str, shape: &Shape, found: Result<Option<Found>, Unavailable>) -> Reply {
    let html = shape.html;
    let reply = match found {
        Ok(Some(found)) if found.stale => found_order(request, &found, html).with(
            "Cache-Status",
            "orders-svc; hit; fwd=stale; detail=\"database unavailable, changes may have been missed\"",
        ),
        Ok(Some(found)) => found_order(request, &found, html),
        Ok(None) if html => Reply::html(404, pages::not_found(uid)),
        Ok(None) => Reply::json(404, json!({ "error": "order not found", "order_uid": uid })),
        Err(unavailable) => {
            // Requests cause these at any rate: one line a second each, with a count.
            static REFUSED: LogThrottle = LogThrottle::new();
            static TIMED_OUT: LogThrottle = LogThrottle::new();
            static FAILED: LogThrottle = LogThrottle::new();
            let reason = match &unavailable {
                Unavailable::Busy => {
                    if let Some(held) = REFUSED.allow() {
                        warn!("event=order_read_refused order_uid={uid} reason=database_busy held_back={held}");
                    }
                    "too many requests are waiting for the database; try again shortly"
                }
                Unavailable::Timeout => {
                    if let Some(held) = TIMED_OUT.allow() {
                        warn!("event=order_read_timed_out order_uid={uid} held_back={held}");
                    }
                    "the database did not answer in time; try again shortly"
                }
                Unavailable::Failed(e) => {
                    if let Some(held) = FAILED.allow() {
                        error!("event=order_read_failed order_uid={uid} error={e} held_back={held}");
                    }
                    "the database is unavailable; try again shortly"
                }
            };
            let reply = if html {
                Reply::html(503, pages::unavailable(reason))
            } else {
                Reply::json(503, json!({ "error": reason }))
            };
            reply.with("Retry-After", "1")
        }
    };
    shape.vary(reply)
}

fn found_order(request: &Request, order: &CachedOrder, html: bool) -> Reply {
    let reply = if header(request, "If-None-Match").is_some_and(|tags| etag_matches(tags, &order.etag)) {
        Reply { status: 304, headers: Vec::new(), body: Arc::from(&[][..]) }
    } else if html {
        match serde_json::from_slice::<Order>(&order.json) {
            Ok(parsed) => Reply::html(200, pages::order(&parsed, &order.json, &order.etag)),
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
    let etag = if html { format!("W/{}", &*order.etag) } else { order.etag.to_string() };
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

/// Readiness, from what the threads last saw: it never waits on PostgreSQL itself. The
/// listener hears from the database at least every second or so (a notification, or its
/// ping), so its silence or its lost connection is the database's state.
fn readiness(state: &State) -> Reply {
    let waiting = waiting_for(state);
    if waiting.is_empty() {
        Reply::json(200, json!({ "ready": true }))
    } else {
        Reply::json(503, json!({ "ready": false, "waiting_for": waiting }))
    }
}

/// What the service waits for before it is ready, each as a sentence; none when ready.
fn waiting_for(state: &State) -> Vec<String> {
    let mut waiting = Vec::new();
    if !state.health.cache_warm() {
        let why = state.health.startup_problem().unwrap_or_else(|| "loading orders from PostgreSQL".into());
        waiting.push(format!("cache: {why}"));
    } else if let Some(problem) = state.health.listener_problem() {
        waiting.push(format!("database: {problem}; cached orders are served only after reading them again"));
    } else if !state.cache.fresh() {
        waiting.push(format!(
            "database: no answer on the connection for change notifications for over {} s; cached orders are \
             served only after reading them again",
            crate::cache::SILENCE_LIMIT.as_secs()
        ));
    }
    if let Some(why) = state.health.consumer_stopped() {
        waiting.push(format!("consumer: {why}; restart this instance"));
    } else if !state.health.consumer_joined() {
        waiting.push(match state.health.broker_problem() {
            Some(problem) => {
                format!("consumer: has not joined its group yet; the last error from the brokers: {problem}")
            }
            None => "consumer: has not joined its group yet".to_string(),
        });
    }
    waiting
}

#[cfg(test)]
pub(super) mod tests;
