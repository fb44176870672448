//! A real headless Chromium, driven through ChromeDriver (WebDriver over HTTP), uses
//! the pages the way a person would: it loads `/`, types the canonical order id into
//! the form, submits it, reads the order page, opens its JSON section and follows its
//! link to the JSON. Screenshots go to target/screenshots.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How WebDriver names an element reference in its JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: SocketAddr,
    child: Child,
    session: String,
    profile: PathBuf,
}

impl Browser {
    fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "this test needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): \
             apt-get install chromium chromium-driver, or run the suite with scripts/test, which installs them"
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("chromedriver to listen", Duration::from_secs(20), || std::net::TcpStream::connect(driver).ok());
        let profile = std::env::temp_dir().join(unique("chromium-profile"));
        let mut browser = Browser { driver, child, session: String::new(), profile };
        // The flags keep Chromium off the network beyond loopback and out of the way.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1400",
            &format!("--user-data-dir={}", browser.profile.display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        } } });
        let created = browser.call("POST", "/session", Some(caps));
        browser.session = created["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let r = request(self.driver, method, path, &[], body.as_deref().or(Some("{}")).filter(|_| method == "POST"));
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("chromedriver said ({e}): {}", r.body));
        assert!(r.status == 200, "WebDriver {method} {path}: {} {}", r.status, v);
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.session("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        v[ELEMENT].as_str().expect("an element").to_string()
    }

    fn texts(&self, css: &str) -> Vec<String> {
        let found = self.session("POST", "/elements", Some(json!({ "using": "css selector", "value": css })));
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| self.session("GET", &format!("/element/{}/text", e[ELEMENT].as_str().unwrap()), None))
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }

    fn click(&self, css: &str) {
        self.session("POST", &format!("/element/{}/click", self.find(css)), None);
    }

    fn current_url(&self) -> String {
        self.session("GET", "/url", None).as_str().unwrap().to_string()
    }

    fn resize(&self, width: u32, height: u32) {
        self.session("POST", "/window/rect", Some(json!({ "width": width, "height": height })));
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let encoded = self.session("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).expect("a base64 PNG");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(self.driver, "DELETE", &format!("/session/{}", self.session), &[], None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Load `/`, submit the canonical order id through the form, and find the order's
/// fields on the page the browser lands on, styled by the stylesheet.
#[test]
fn chromium_looks_up_the_canonical_order_through_the_form() {
    let (_setup, service) = service_with_canonical_order();
    let addr = service.addr();

    let browser = Browser::start();
    browser.goto(&format!("http://{addr}/"));
    assert_eq!(browser.texts("h1"), vec!["Look up an order"]);
    assert_eq!(browser.texts("section.recent td a"), vec!["b563feb7b2b84b6test"]);
    browser.screenshot("index.png");

    let input = browser.find("#uid");
    browser.session("POST", &format!("/element/{input}/value"), Some(json!({ "text": "b563feb7b2b84b6test" })));
    let button = browser.find("form.lookup button");
    browser.session("POST", &format!("/element/{button}/click"), None);
    wait_for("the order page", Duration::from_secs(10), || {
        browser.current_url().ends_with("/order/b563feb7b2b84b6test").then_some(())
    });

    assert_eq!(browser.texts("h1"), vec!["Order b563feb7b2b84b6test"]);
    assert_eq!(browser.texts("h2"), vec!["Order", "Delivery", "Payment", "Items"]);
    let cells = browser.texts("td");
    for expected in [
        "WBILMTESTTRACK",
        "Test Testov",
        "Kiryat Mozkin",
        "test@gmail.com",
        "wbpay",
        "1,817 USD",
        "Mascaras",
        "Vivienne Sabo",
        "317 USD",
    ] {
        assert!(cells.iter().any(|c| c == expected), "no cell shows {expected:?}: {cells:?}");
    }
    // The stylesheet loaded under the Content-Security-Policy: the button has its colour.
    let colour =
        browser.session("GET", &format!("/element/{}/css/background-color", browser.find("form.lookup button")), None);
    assert_eq!(colour, "rgba(11, 107, 203, 1)");
    let desktop = browser.screenshot("order-desktop.png");
    browser.resize(390, 844);
    let phone = browser.screenshot("order-phone.png");
    assert!(std::fs::metadata(desktop).unwrap().len() > 10_000);
    assert!(std::fs::metadata(phone).unwrap().len() > 10_000);

    // The JSON section is collapsed; opened, it holds the bytes `/api/order/<uid>` serves,
    // with their ETag, and its link leads there.
    browser.resize(1280, 1400);
    let served = get(addr, "/api/order/b563feb7b2b84b6test");
    assert_eq!(served.status, 200);
    assert_eq!(browser.texts("section.json pre"), vec![""]);
    browser.click("section.json summary");
    assert_eq!(browser.texts("section.json pre"), vec![served.body.clone()]);
    assert_eq!(browser.texts("section.json code.etag"), vec![served.header("ETag").unwrap().to_string()]);
    browser.screenshot("order-json.png");
    browser.click("section.json a");
    wait_for("the order's JSON", Duration::from_secs(10), || {
        browser.current_url().ends_with("/api/order/b563feb7b2b84b6test").then_some(())
    });
    assert_eq!(browser.texts("body"), vec![served.body]);

    browser.goto(&format!("http://{addr}/order/nosuchorder"));
    assert_eq!(browser.texts("h1"), vec!["Order not found"]);
}
