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
use crate::cache::{CachedOrder, Unavailable};
use crate::model::{self, Order};
use crate::service::LogThrottle;
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
    if request.url().len() > MAX_URL_BYTES {
        return Reply::text(414, "request target too long\n");
    }
    let header_bytes: usize = request.headers().iter().map(|h| h.field.as_str().len() + h.value.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Reply::text(431, "request headers too large\n");
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

/// `GET /order/<uid>` and `GET /api/order/<uid>`: the order as JSON, or its page.
fn order(state: &State, request: &Request, uid: &str, representation: Representation) -> Reply {
    let by_accept = representation == Representation::ByAccept;
    let html = by_accept && prefers_html(header(request, "Accept"));
    // Only an answer chosen by `Accept` varies with it.
    let vary = |r: Reply| if by_accept { r.with("Vary", "Accept") } else { r };
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
    vary(reply)
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
pub(super) mod tests {
    use tiny_http::TestRequest;

    use super::*;
    use crate::cache::Cache;
    use crate::http::wire::HTML;
    use crate::metrics::Metrics;
    use crate::service::Health;
    use crate::store::Pool;

    /// A state whose database is never reachable: these routes answer without it, or
    /// show how its absence is answered.
    pub(in crate::http) fn state() -> State {
        let health = Arc::new(Health::default());
        health.set_cache_warm();
        let cache = Arc::new(Cache::new(crate::cache::tests::limits()));
        let metrics = Arc::new(Metrics::new(&cache));
        State::new(cache, Arc::new(Pool::new(&unreachable_database())), health, metrics)
    }

    /// Nothing listens on port 1: connecting fails at once.
    fn unreachable_database() -> crate::config::Database {
        crate::config::Database {
            url: "postgres://nobody@127.0.0.1:1/none".into(),
            pool_size: 1,
            connect_timeout_secs: 1,
            ..Default::default()
        }
    }

    fn canonical() -> Order {
        model::decode(Some(include_bytes!("../../demo/model.json")), &Default::default()).unwrap()
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
        assert_eq!(&r.body[..], include_bytes!("../../assets/style.css"));
        for path in ["/assets/../Cargo.toml", "/assets/%2e%2e/Cargo.toml", "/assets/", "/assets/style.css/..", "/nope"]
        {
            assert_eq!(get(&s, path).status, 404, "{path}");
        }
    }

    /// The document is served as it is kept, and it describes each route there is and
    /// no other.
    #[test]
    fn the_openapi_document_names_every_route() {
        let s = state();
        let r = get(&s, "/openapi.json");
        assert_eq!((r.status, r.header("Content-Type")), (200, Some(JSON)));
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        let mut named: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(|path| {
                let url = path.replace("{order_uid}", "x").replace("{name}", "style.css");
                Route::parse(&url).name().label()
            })
            .collect();
        named.sort();
        assert_eq!(named, ["api_order", "asset", "healthz", "index", "metrics", "openapi", "order", "readyz"]);
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
    fn readiness_names_a_lost_listener_without_asking_the_database() {
        let s = state();
        s.health.record_assignment(1);
        assert_eq!(body(&get(&s, "/readyz")), r#"{"ready":true}"#); // its database is unreachable
        let ready = |s: &State| body(&get(s, "/metrics")).lines().any(|l| l == "orders_ready 1");
        assert!(ready(&s));
        s.health.set_listener_problem(Some("the connection for change notifications was lost: gone".into()));
        let r = get(&s, "/readyz");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(
            body["waiting_for"],
            json!(["database: the connection for change notifications was lost: gone; cached orders are served only \
                 after reading them again"])
        );
        assert!(!ready(&s));
    }

    #[test]
    fn a_copy_that_may_be_stale_says_so() {
        let s = state();
        s.cache.publish(&[canonical().encode()]);
        assert_eq!(get(&s, "/order/b563feb7b2b84b6test").header("Cache-Status"), None);
        s.cache.listener_lost();
        let r = get(&s, "/order/b563feb7b2b84b6test");
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], canonical().to_json().as_slice());
        assert!(r.header("Cache-Status").unwrap().contains("fwd=stale"));
    }
}
