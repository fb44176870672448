//! The read path over real sockets: HEAD and conditional requests, misses that reach
//! PostgreSQL once, the recent-orders list, and hostile values shown safely.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const UID: &str = "b563feb7b2b84b6test";

/// HEAD answers with the GET's headers and no body; a matching If-None-Match is 304.
#[test]
fn head_and_conditional_get() {
    let (_setup, service) = service_with_canonical_order();
    let addr = service.addr();
    let full = get(addr, &format!("/order/{UID}"));
    let head = http(addr, "HEAD", &format!("/order/{UID}"));
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(head.header("Content-Length"), Some(full.body.len().to_string().as_str()));
    assert_eq!(head.header("ETag"), full.header("ETag"));

    let etag = full.header("ETag").unwrap();
    let r = http_with(addr, "GET", &format!("/order/{UID}"), &[("If-None-Match", etag)]);
    assert_eq!((r.status, r.body.as_str()), (304, ""));
    assert_eq!(full.header("Cache-Control"), Some("no-cache"));
    assert_eq!(full.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(full.header("Referrer-Policy"), Some("no-referrer"));
    assert!(full.header("Content-Security-Policy").unwrap().starts_with("default-src 'none'"));
}

/// `/api/order/<uid>` answers as `/order/<uid>` does for an API client, with JSON even
/// when the client is a browser that prefers HTML, and is counted under its own route.
#[test]
fn the_api_path_answers_json_whatever_the_client_accepts() {
    let (_setup, service) = service_with_canonical_order();
    let addr = service.addr();
    let browser = [("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")];
    let api = http_with(addr, "GET", &format!("/api/order/{UID}"), &browser);
    let plain = get(addr, &format!("/order/{UID}"));
    assert_eq!(api.status, 200);
    assert_eq!(api.header("Content-Type"), Some("application/json"));
    assert_eq!(api.body, plain.body);
    assert_eq!(api.header("ETag"), plain.header("ETag"));
    assert_eq!(api.header("Vary"), None);
    assert_eq!(
        http_with(addr, "GET", &format!("/order/{UID}"), &browser).header("Content-Type"),
        Some("text/html; charset=utf-8")
    );

    let etag = api.header("ETag").unwrap();
    let r = http_with(addr, "GET", &format!("/api/order/{UID}"), &[("If-None-Match", etag)]);
    assert_eq!((r.status, r.body.as_str()), (304, ""));
    let head = http(addr, "HEAD", &format!("/api/order/{UID}"));
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("Content-Length"), Some(api.body.len().to_string().as_str()));

    let missing = http_with(addr, "GET", "/api/order/nosuchorder", &browser);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, r#"{"error":"order not found","order_uid":"nosuchorder"}"#);
    let bad = http_with(addr, "GET", "/api/order/bad%20id", &browser);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("Content-Type"), Some("application/json"));
    assert_eq!(http(addr, "POST", &format!("/api/order/{UID}")).status, 405);
    assert_eq!(metric(addr, r#"orders_http_requests_total{route="api_order",status="200"}"#), Some(2.0));
    assert_eq!(metric(addr, r#"orders_http_requests_total{route="api_order",status="404"}"#), Some(1.0));
}

/// With a cache smaller than the data, an order PostgreSQL has and the cache does not
/// is read and answered as a held one is (JSON with its ETag, HEAD, the page), and
/// kept: each of the three below evicts the order before it, and reads once.
#[test]
fn an_order_the_cache_no_longer_holds_is_read_and_answered_as_a_held_one() {
    let setup = Setup::new(1);
    let mut cfg = setup.config();
    cfg.cache.max_orders = 1;
    let service = Running::start(cfg);
    let addr = service.addr();
    setup.produce(&[MODEL.as_bytes()]);
    let held = wait_until_served(addr, &format!("/order/{UID}"));
    let other = orders_svc::tools::generate::Generator::new(5, 1).order();
    setup.produce(&[other.to_json().as_slice()]);
    let other_path = format!("/order/{}", other.order_uid);
    let other_held = wait_until_served(addr, &other_path);
    assert!(!service.cache().contains(UID));
    let reads = service.cache().stats.db_reads.get();

    let read = get(addr, &format!("/order/{UID}"));
    assert_eq!((read.status, &read.body, read.header("ETag")), (200, &held.body, held.header("ETag")));
    assert_eq!(read.header("Content-Type"), Some("application/json"));
    let head = http(addr, "HEAD", &other_path);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("Content-Length"), Some(other_held.body.len().to_string().as_str()));
    let browser = [("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")];
    let page = http_with(addr, "GET", &format!("/order/{UID}"), &browser);
    assert_eq!((page.status, page.header("Content-Type")), (200, Some("text/html; charset=utf-8")));
    assert!(page.body.contains(UID), "{}", page.body);
    assert_eq!(service.cache().stats.db_reads.get() - reads, 3);
    assert!(service.cache().contains(UID));
}

/// Many requests at once for an id that does not exist cause one database read, and
/// repeating it within the negative memory causes none.
#[test]
fn concurrent_misses_for_an_unknown_id_read_postgres_once() {
    let (_setup, service) = service_with_canonical_order();
    let addr = service.addr();
    let before = service.cache().stats.db_reads.get();
    let start = Arc::new(Barrier::new(32));
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                get(addr, "/order/doesnotexist42").status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 404);
    }
    assert_eq!(get(addr, "/order/doesnotexist42").status, 404);
    assert_eq!(service.cache().stats.db_reads.get() - before, 1);
}

/// The consumer storing an id ends its memory as "not found" at once.
#[test]
fn storing_an_order_ends_its_negative_memory() {
    let setup = Setup::new(1);
    let mut cfg = setup.config();
    cfg.cache.negative_ttl_ms = 600_000;
    let service = Running::start(cfg);
    let addr = service.addr();
    assert_eq!(get(addr, &format!("/order/{UID}")).status, 404);
    setup.produce(&[MODEL.as_bytes()]);
    let r = wait_until_served(addr, &format!("/order/{UID}"));
    assert_eq!(r.json()["order_uid"], UID);
}

/// With `cache.max_age_secs = 1`, an order cached for longer is read from PostgreSQL
/// again on its next request, counted as expired, and then served from memory; a
/// restart after that second does not load it, and one without the limit does.
#[test]
fn an_order_older_than_the_cache_age_limit_is_read_again_and_not_warmed() {
    let setup = Setup::new(1);
    let mut cfg = setup.config();
    cfg.cache.max_age_secs = 1;
    let service = Running::start(cfg.clone());
    let addr = service.addr();
    setup.produce(&[MODEL.as_bytes()]);
    wait_until_served(addr, &format!("/order/{UID}"));
    let reads = service.cache().stats.db_reads.get();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(addr, &format!("/order/{UID}")).json()["order_uid"], UID);
    assert_eq!(service.cache().stats.db_reads.get(), reads + 1);
    assert_eq!(get(addr, &format!("/order/{UID}")).status, 200);
    assert_eq!(service.cache().stats.db_reads.get(), reads + 1);
    assert_eq!(metric(addr, "orders_cache_expirations_total"), Some(1.0));
    service.stop();

    std::thread::sleep(Duration::from_millis(1500));
    let aged = Running::start(cfg.clone());
    assert_eq!(aged.cache().len(), 0);
    assert_eq!(get(aged.addr(), &format!("/order/{UID}")).status, 200);
    aged.stop();
    cfg.cache.max_age_secs = 0;
    assert_eq!(Running::start(cfg).cache().len(), 1);
}

/// `/` lists the most recently ingested orders, each a link to its page.
#[test]
fn index_lists_recent_orders() {
    let (_setup, service) = service_with_canonical_order();
    let r = get(service.addr(), "/");
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(r#"<a href="/order/b563feb7b2b84b6test"><code>b563feb7b2b84b6test</code></a>"#),
        "{}",
        r.body
    );
    assert!(r.body.contains("<td class=\"num\">1,817 USD</td>"), "{}", r.body);
}

/// Markup and quotes stored in an order come back as text in the page and exactly as
/// sent in the JSON.
#[test]
fn hostile_values_are_escaped_in_html_and_exact_in_json() {
    let setup = Setup::new(1);
    let service = setup.start();
    let addr = service.addr();
    let mut v: Value = serde_json::from_str(MODEL).unwrap();
    v["delivery"]["name"] = "<script>alert('x')</script>".into();
    v["delivery"]["address"] = "\"><img src=x onerror=alert(1)>".into();
    v["items"][0]["brand"] = "Robert'); DROP TABLE orders;--".into();
    setup.produce(&[v.to_string().as_bytes()]);

    let json = wait_until_served(addr, &format!("/order/{UID}"));
    assert_eq!(json.json(), v);
    let page = http_with(addr, "GET", &format!("/order/{UID}"), &[("Accept", "text/html")]);
    assert!(page.body.contains("<td>&lt;script&gt;alert('x')&lt;/script&gt;</td>"), "{}", page.body);
    assert!(page.body.contains("<td>&quot;&gt;&lt;img src=x onerror=alert(1)&gt;</td>"), "{}", page.body);
    assert!(page.body.contains("<td>Robert'); DROP TABLE orders;--</td>"), "{}", page.body);
    assert!(!page.body.contains("<script>"));
    assert!(!page.body.contains("<img"));
    assert_eq!(setup.db.count("SELECT count(*) FROM orders"), 1);
}

/// Many clients connecting at the same moment, each keeping its connection open, are
/// all answered (tiny_http, unpatched, could leave one waiting until another closed).
#[test]
fn connections_arriving_together_are_all_answered() {
    use std::io::{BufRead, BufReader, Write};
    let (_setup, service) = service_with_canonical_order();
    let addr = service.addr();
    for round in 0..5 {
        let start = Arc::new(Barrier::new(64));
        let clients: Vec<_> = (0..64)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let mut stream = std::net::TcpStream::connect(addr).unwrap();
                    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
                    stream.write_all(format!("GET /order/{UID} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
                    let mut status = String::new();
                    let answered = BufReader::new(stream.try_clone().unwrap()).read_line(&mut status).is_ok();
                    (answered, status, stream)
                })
            })
            .collect();
        // Keep every connection open until all have answered, as keep-alive clients do.
        let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        for (answered, status, _) in &results {
            assert!(answered, "round {round}: a connection got no answer within 10 s");
            assert_eq!(status.trim_end(), "HTTP/1.1 200 OK", "round {round}");
        }
    }
}
