//! What the integration tests share: reaching the stack, a fresh database and topic per
//! test, the service started in-process, and a small HTTP client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orders_svc::config::Config;
use postgres::{Client, NoTls};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

pub const MODEL: &str = include_str!("../../demo/model.json");

pub const HOW_TO_START: &str = "start the local stack with `scripts/stack up` (or run the whole suite with `scripts/test`)";

pub fn admin_url() -> String {
    std::env::var("ORDERS_TEST_ADMIN_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn brokers() -> String {
    std::env::var("ORDERS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn admin() -> Client {
    let url = admin_url();
    Client::connect(&url, NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e}); {HOW_TO_START}"))
}

fn check_broker() {
    let brokers = brokers();
    let first = brokers.split(',').next().unwrap_or_default();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(reachable, "no Kafka broker listens at {brokers}; {HOW_TO_START}");
}

/// A name no other test, nor an earlier run, uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = unique("orders_test");
        admin().batch_execute(&format!("CREATE DATABASE {name}")).expect("create test database");
        let mut url: url_parts::Url = url_parts::Url::parse(&admin_url());
        url.dbname = name.clone();
        TestDb { url: url.to_string(), name }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to test database")
    }

    /// Runs a query that returns one bigint, such as a count.
    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).expect(sql).get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

mod url_parts {
    /// Just enough URL handling to swap the database name of a postgres:// URL.
    pub struct Url {
        pub base: String,
        pub dbname: String,
        pub query: String,
    }
    impl Url {
        pub fn parse(url: &str) -> Url {
            let (rest, query) = url.split_once('?').map_or((url, ""), |(r, q)| (r, q));
            let scheme_end = rest.find("://").map_or(0, |i| i + 3);
            let (base, dbname) = match rest[scheme_end..].find('/') {
                Some(i) => (&rest[..scheme_end + i], &rest[scheme_end + i + 1..]),
                None => (rest, ""),
            };
            Url { base: base.into(), dbname: dbname.into(), query: query.into() }
        }
    }
    impl std::fmt::Display for Url {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}/{}", self.base, self.dbname)?;
            if !self.query.is_empty() {
                write!(f, "?{}", self.query)?;
            }
            Ok(())
        }
    }
}

/// Creates a topic of its own for one test.
pub fn create_topic(partitions: i32) -> String {
    check_broker();
    let name = unique("orders-test");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("create Kafka admin client");
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
    let results = futures_executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap_or_else(|e| panic!("create topic {name}: {e}; {HOW_TO_START}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
    name
}

/// The configuration of a service under test: its own database, topic and group, and
/// any free port.
pub fn config(db: &TestDb, topic: &str, group: &str) -> Config {
    let mut config = Config::default();
    config.database.url = db.url.clone();
    config.kafka.brokers = brokers();
    config.kafka.topic = topic.into();
    config.kafka.group_id = group.into();
    config.kafka.session_timeout_ms = 6000;
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.http.workers = 2;
    config
}

/// A service on a database and topic of its own, with the canonical order stored and
/// served.
pub fn service_with_canonical_order() -> (TestDb, orders_svc::service::Service) {
    let db = TestDb::new();
    let topic = create_topic(1);
    let service = orders_svc::service::Service::start(config(&db, &topic, &unique("group"))).unwrap();
    produce(&topic, &[MODEL.as_bytes()]);
    wait_until_served(service.http_addr(), "/order/b563feb7b2b84b6test");
    (db, service)
}

pub fn produce(topic: &str, payloads: &[&[u8]]) {
    let producer = orders_svc::tools::produce::Producer::new(&brokers(), topic).expect("producer");
    for payload in payloads {
        producer.send_order_json(payload).expect("send");
    }
    assert_eq!(producer.flush().expect("flush"), payloads.len() as u64);
}

/// The group's committed offset for each partition of `topic`, -1 where none.
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("read committed offsets");
    (0..partitions)
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Calls `f` until it returns Some, failing the test after `limit` with `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

/// One HTTP/1.1 request on its own connection.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    http_with(addr, method, path, &[])
}

/// One HTTP/1.1 request with extra headers, on its own connection.
pub fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(addr, method, path, headers, None)
}

/// One HTTP/1.1 request with headers and a body, on its own connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect to the service");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    stream.write_all(head.as_bytes()).unwrap();
    // Read the head, then as many body bytes as Content-Length says (a peer may keep
    // the connection open), or to the end without it.
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read response head");
        if n == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut lines = head.lines();
    let status = lines.next().expect("a status line").split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("Content-Length")).map(|(_, v)| v.parse::<usize>().unwrap());
    let mut body = Vec::new();
    match length {
        _ if method == "HEAD" || status == 304 => {}
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).expect("read response body");
        }
        None => {
            reader.read_to_end(&mut body).expect("read response body");
        }
    }
    HttpResponse { status, headers, body: String::from_utf8(body).expect("response is UTF-8") }
}

pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path)
}

/// Waits until `GET path` answers 200.
pub fn wait_until_served(addr: SocketAddr, path: &str) -> HttpResponse {
    wait_for(&format!("GET {path} to answer 200"), Duration::from_secs(30), || {
        let r = get(addr, path);
        (r.status == 200).then_some(r)
    })
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore: to the service,
/// a cut looks like the database going away (connections reset, new ones refused).
pub struct DbProxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl DbProxy {
    pub fn start() -> DbProxy {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let config: postgres::Config = admin_url().parse().unwrap();
        let host = match &config.get_hosts()[0] {
            postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("the database proxy needs a TCP address, not {other:?}"),
        };
        let target = (host.as_str(), config.get_ports().first().copied().unwrap_or(5432))
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = DbProxy {
            addr: listener.local_addr().unwrap(),
            up: Arc::new(AtomicBool::new(true)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (up, open) = (proxy.up.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// The database "goes down": open connections are reset, new ones closed at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `db`'s URL, through this proxy.
    pub fn url(&self, db: &TestDb) -> String {
        let mut url = url_parts::Url::parse(&db.url);
        let scheme_end = url.base.find("://").unwrap() + 3;
        let host_start = url.base.rfind('@').map_or(scheme_end, |i| i + 1);
        url.base = format!("{}{}", &url.base[..host_start], self.addr);
        url.to_string()
    }
}


/// Creates a topic on the given brokers (see `create_topic` for the stack's).
pub fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("create Kafka admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = futures_executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends raw bytes as a request and returns the status of the answer, or None when the
/// server closed the connection without one.
pub fn raw_status(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).expect("connect to the service");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).ok()?;
    let mut head = [0u8; 12];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    std::str::from_utf8(&head[..read]).ok()?.split(' ').nth(1)?.parse().ok()
}
