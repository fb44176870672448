//! What the integration tests and the benchmarks share: the local stack's addresses, a
//! fresh database and topic per test, the service started in-process behind a guard
//! that stops it on drop, a producer, a broker of a test's own, and one HTTP client.
//! Everything here panics with a message that says what is missing and how to start it.

#![allow(dead_code, unused_imports)] // each user of this module uses a different part of it

pub mod broker;
pub mod db;
pub mod http;
pub mod process;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orders_svc::config::{Config, GroupProtocol};
use orders_svc::service::Service;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

pub use broker::{
    Broker, add_partitions, alter_topic_on, create_topic, create_topic_on, delete_topic_on, temp_dir, watermarks,
};
pub use db::{DbProxy, TestDb};
pub use http::{HttpResponse, get, get_within, http, http_with, raw_status, request};
pub use process::{ANY_PORT, Process, config_toml, free_addr, wait_ready};

pub const MODEL: &str = include_str!("../../demo/model.json");

pub const HOW_TO_START: &str =
    "start the local stack with `scripts/stack up` (or run the whole suite with `scripts/test`)";

/// The PostgreSQL superuser URL `scripts/stack up` wrote to .stack/env.
pub fn admin_url() -> String {
    std::env::var("STACK_ADMIN_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The stack's broker.
pub fn brokers() -> String {
    std::env::var("STACK_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

thread_local! {
    static PROTOCOL: std::cell::Cell<GroupProtocol> = const { std::cell::Cell::new(GroupProtocol::Classic) };
}

/// The group protocol the services a test configures join with: classic, unless the
/// test runs `under` another.
pub fn group_protocol() -> GroupProtocol {
    PROTOCOL.with(std::cell::Cell::get)
}

/// Runs `test` with the services it configures on this thread (`Setup::config`,
/// `config_toml`) joining their group with `protocol`.
pub fn under(protocol: GroupProtocol, test: impl FnOnce()) {
    PROTOCOL.with(|p| p.set(protocol));
    test();
}

/// A test of the consumer group, run once under each protocol: `name::classic` and
/// `name::consumer`.
#[macro_export]
macro_rules! under_both_protocols {
    ($(#[doc = $doc:literal])* fn $name:ident() $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body() $body

            #[test]
            fn classic() {
                $crate::support::under(orders_svc::config::GroupProtocol::Classic, body);
            }

            #[test]
            fn consumer() {
                $crate::support::under(orders_svc::config::GroupProtocol::Consumer, body);
            }
        }
    };
}

/// A name no other test, nor an earlier run, uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A database, a topic and a group of one test's own, and the configuration of a service
/// on them (any free port, two HTTP workers, a short session timeout).
pub struct Setup {
    pub db: TestDb,
    pub topic: String,
    pub group: String,
    pub partitions: i32,
}

impl Setup {
    pub fn new(partitions: i32) -> Setup {
        Setup { db: TestDb::new(), topic: create_topic(partitions), group: unique("group"), partitions }
    }

    pub fn config(&self) -> Config {
        Setup::config_for(&self.db, &brokers(), &self.topic, &self.group)
    }

    /// The configuration of a service that reaches its database through `proxy`, and
    /// gives up on a connection after 1 s, as a test that cuts the proxy wants.
    pub fn config_through(&self, proxy: &DbProxy) -> Config {
        let mut config = self.config();
        config.database.url = proxy.url(&self.db);
        config.database.connect_timeout_secs = 1;
        config
    }

    /// The configuration of a service under test on any database, broker and topic.
    pub fn config_for(db: &TestDb, brokers: &str, topic: &str, group: &str) -> Config {
        let mut config = Config::default();
        config.database.url = db.url.clone();
        config.kafka.brokers = brokers.into();
        config.kafka.topic = topic.into();
        config.kafka.group_id = group.into();
        config.kafka.group_protocol = group_protocol();
        if group_protocol() == GroupProtocol::Classic {
            config.kafka.session_timeout_ms = Some(6000);
        }
        config.http.addr = "127.0.0.1:0".parse().unwrap();
        config.http.workers = 2;
        config
    }

    /// The service on this setup, its cache warm.
    pub fn start(&self) -> Running {
        Running::start(self.config())
    }

    /// Puts messages on this setup's topic, each keyed by its order_uid.
    pub fn produce(&self, payloads: &[&[u8]]) -> BTreeMap<i32, i64> {
        produce(&self.topic, payloads)
    }

    /// The group's committed offsets, one per partition.
    pub fn committed(&self) -> Vec<i64> {
        committed_offsets(&self.group, &self.topic, self.partitions)
    }

    /// Waits until the group's committed offsets are `ends`.
    pub fn wait_committed(&self, ends: &[i64], limit: Duration) {
        wait_for(&format!("committed offsets {ends:?}"), limit, || (self.committed() == ends).then_some(()));
    }
}

/// A running service that is shut down when dropped, so that a failed assertion does not
/// leave its threads behind.
pub struct Running(Option<Service>);

impl Running {
    pub fn start(config: Config) -> Running {
        Running(Some(Service::start(config).expect("start the service")))
    }

    pub fn spawn(config: Config) -> Running {
        Running(Some(Service::spawn(config).expect("spawn the service")))
    }

    pub fn addr(&self) -> SocketAddr {
        self.http_addr()
    }

    /// Shuts the service down now.
    pub fn stop(mut self) {
        if let Some(service) = self.0.take() {
            service.shutdown();
        }
    }
}

impl std::ops::Deref for Running {
    type Target = Service;
    fn deref(&self) -> &Service {
        self.0.as_ref().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(service) = self.0.take() {
            service.shutdown();
        }
    }
}

/// A setup with the canonical order stored and served.
pub fn service_with_canonical_order() -> (Setup, Running) {
    let setup = Setup::new(1);
    let service = setup.start();
    setup.produce(&[MODEL.as_bytes()]);
    wait_until_served(service.addr(), "/order/b563feb7b2b84b6test");
    (setup, service)
}

/// Sends each payload keyed by its order_uid and waits for every delivery; returns, per
/// partition written to, one past the offset of its last message.
pub fn produce(topic: &str, payloads: &[&[u8]]) -> BTreeMap<i32, i64> {
    produce_on(&brokers(), topic, payloads)
}

pub fn produce_on(brokers: &str, topic: &str, payloads: &[&[u8]]) -> BTreeMap<i32, i64> {
    let producer = orders_svc::tools::produce::Producer::new(brokers, topic).expect("create a producer");
    for payload in payloads {
        producer.send_order_json(payload).expect("send");
    }
    assert_eq!(producer.flush().expect("flush"), payloads.len() as u64);
    producer.delivered_ends()
}

/// `ends` as one entry per partition, 0 where nothing was written.
pub fn per_partition(ends: &BTreeMap<i32, i64>, partitions: i32) -> Vec<i64> {
    (0..partitions).map(|p| ends.get(&p).copied().unwrap_or(0)).collect()
}

/// The group's committed offset for each partition of `topic`, 0 where none.
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("create a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("read committed offsets");
    (0..partitions)
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect()
}

/// The broker's high watermark (the end) of each partition of `topic`.
pub fn partition_ends(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("create a consumer");
    (0..partitions)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("read watermarks").1)
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

/// Waits until `GET path` answers 200.
pub fn wait_until_served(addr: SocketAddr, path: &str) -> HttpResponse {
    wait_for(&format!("GET {path} to answer 200"), Duration::from_secs(30), || {
        let r = get(addr, path);
        (r.status == 200).then_some(r)
    })
}

/// The value of a metric line in `/metrics` (`name{labels}` as printed), if present.
pub fn metric(addr: SocketAddr, line_start: &str) -> Option<f64> {
    let text = get(addr, "/metrics").body;
    text.lines().find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}
