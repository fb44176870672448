//! Unit tests of `respond`: routing, statuses and headers, with `tiny_http::TestRequest`.

use tiny_http::TestRequest;

use super::*;
use crate::cache::Cache;
use crate::cache::tests::publish;
use crate::http::wire::HTML;
use crate::metrics::Metrics;
use crate::runtime::Health;
use crate::store::Pool;

/// A state whose database is never reachable: these routes answer without it, or
/// show how its absence is answered.
pub(in crate::http) fn state() -> State {
    state_with(crate::cache::tests::limits())
}

/// As `state`, with the cache bounded by `limits`.
pub(in crate::http) fn state_with(limits: crate::cache::Limits) -> State {
    let health = Arc::new(Health::default());
    health.set_cache_warm();
    let cache = Arc::new(Cache::new(limits));
    let metrics = Arc::new(Metrics::new(&cache));
    State::new(cache, Arc::new(Pool::new(&unreachable_database())), health, metrics).expect("the reading threads start")
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
    model::decode(Some(include_bytes!("../../../demo/model.json")), &Default::default()).unwrap()
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
    publish(&s.cache, &[canonical().encode()]);
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
    publish(&s.cache, &[canonical().encode()]);
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
    publish(&s.cache, &[canonical().encode()]);
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
    assert_eq!(&r.body[..], include_bytes!("../../../assets/style.css"));
    for path in ["/assets/../Cargo.toml", "/assets/%2e%2e/Cargo.toml", "/assets/", "/assets/style.css/..", "/nope"] {
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
    publish(&s.cache, &[canonical().encode()]);
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
    publish(&s.cache, &[canonical().encode()]);
    assert_eq!(get(&s, "/order/b563feb7b2b84b6test").header("Cache-Status"), None);
    s.cache.listener_lost();
    let r = get(&s, "/order/b563feb7b2b84b6test");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], canonical().to_json().as_slice());
    assert!(r.header("Cache-Status").unwrap().contains("fwd=stale"));
}

/// What the connection's thread answers from memory is what a worker would answer, to
/// the byte; anything that needs more than a held order is left to a worker.
#[test]
fn from_memory_answers_a_held_order_as_a_worker_would_and_nothing_else() {
    let s = state();
    publish(&s.cache, &[canonical().encode()]);
    let uid = "b563feb7b2b84b6test";
    let path = format!("/order/{uid}");
    let api = format!("/api/order/{uid}");
    let in_place = |method: Method, path: &str, headers: &[(&str, &str)]| {
        let request = request(method, path, headers);
        from_memory(&s, &request, &Route::parse(request.url()))
    };
    let etag = get(&s, &path).header("ETag").unwrap().to_string();
    let weak = format!("W/{etag}");
    for (method, path, headers) in [
        (Method::Get, path.as_str(), &[][..]),
        (Method::Head, path.as_str(), &[][..]),
        (Method::Get, path.as_str(), &[("Accept", FIREFOX)][..]),
        (Method::Get, path.as_str(), &[("If-None-Match", etag.as_str())][..]),
        (Method::Get, path.as_str(), &[("Accept", FIREFOX), ("If-None-Match", weak.as_str())][..]),
        (Method::Get, api.as_str(), &[("Accept", FIREFOX)][..]),
    ] {
        let reply = in_place(method.clone(), path, headers).unwrap_or_else(|| panic!("{method} {path} {headers:?}"));
        let worker = respond(&s, &request(method, path, headers));
        assert_eq!(format!("{reply:?}"), format!("{worker:?}"), "{path} {headers:?}");
    }
    assert_eq!(in_place(Method::Get, &path, &[]).unwrap().status, 200);
    assert_eq!(in_place(Method::Get, &path, &[("If-None-Match", etag.as_str())]).unwrap().status, 304);

    // Left to a worker: another route, another method, an id not held or not valid,
    // headers past the limit.
    let big = "x".repeat(MAX_HEADER_BYTES);
    for (method, path, headers) in [
        (Method::Get, "/", &[][..]),
        (Method::Get, "/healthz", &[][..]),
        (Method::Post, path.as_str(), &[][..]),
        (Method::Get, "/order/not-held", &[][..]),
        (Method::Get, "/order/%3Cscript%3E", &[][..]),
        (Method::Get, path.as_str(), &[("X-Big", big.as_str())][..]),
    ] {
        assert!(in_place(method.clone(), path, headers).is_none(), "{method} {path}");
    }

    // Nor while the cache cannot vouch for its copies: the listener lost, changes may
    // have been missed, so a worker reads the order again.
    s.cache.listener_lost();
    assert!(in_place(Method::Get, &path, &[]).is_none());
    s.cache.listener_established();
    s.cache.listening();
    assert_eq!(in_place(Method::Get, &path, &[]).unwrap().status, 200);
}

/// An id remembered as missing is answered 404 in place, as a worker would (JSON, or
/// the page for a browser), and counted as a worker counts it.
#[test]
fn from_memory_answers_an_id_remembered_as_missing_as_a_worker_would() {
    let limits =
        crate::cache::Limits { negative_ttl: std::time::Duration::from_secs(60), ..crate::cache::tests::limits() };
    let s = state_with(limits);
    assert!(s.cache.lookup("nosuchorder", || Ok(None)).unwrap().is_none());
    for (path, headers) in [
        ("/order/nosuchorder", &[][..]),
        ("/order/nosuchorder", &[("Accept", FIREFOX)][..]),
        ("/api/order/nosuchorder", &[("Accept", FIREFOX)][..]),
    ] {
        let asked = request(Method::Get, path, headers);
        let reply = from_memory(&s, &asked, &Route::parse(asked.url())).unwrap_or_else(|| panic!("{path}"));
        let worker = respond(&s, &request(Method::Get, path, headers));
        assert_eq!(format!("{reply:?}"), format!("{worker:?}"), "{path} {headers:?}");
        assert_eq!(reply.status, 404);
    }
    assert_eq!((s.cache.stats.misses.get(), s.cache.stats.negative_hits.get()), (7, 6));
}

/// Before the warm-up ends, the 503 that says so comes from a worker.
#[test]
fn from_memory_leaves_a_cold_cache_to_a_worker() {
    let s = state();
    publish(&s.cache, &[canonical().encode()]);
    let cold = State::new(s.cache.clone(), s.pool.clone(), Arc::new(Health::default()), s.metrics.clone())
        .expect("the reading threads start");
    let request = request(Method::Get, "/order/b563feb7b2b84b6test", &[]);
    assert!(from_memory(&cold, &request, &Route::parse(request.url())).is_none());
    assert_eq!(respond(&cold, &request).status, 503);
}
