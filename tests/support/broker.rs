//! Kafka for tests: topics on the stack's broker, and a nisshi broker of a test's own
//! that the test can kill and start again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{HOW_TO_START, brokers, unique, wait_for};

/// Creates a topic of one test's own on the stack's broker.
pub fn create_topic(partitions: i32) -> String {
    let name = unique("orders-test");
    create_topic_on(&brokers(), &name, partitions);
    name
}

pub fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("socket.connection.setup.timeout.ms", "5000")
        .create()
        .expect("create a Kafka admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = futures_executor::block_on(admin.create_topics([&topic], &options))
        .unwrap_or_else(|e| panic!("create topic {name} on {brokers}: {e}; {HOW_TO_START}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create topic {topic} on {brokers}: {e}"));
    }
}

pub fn delete_topic_on(brokers: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("create a Kafka admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = futures_executor::block_on(admin.delete_topics(&[name], &options))
        .unwrap_or_else(|e| panic!("delete topic {name} on {brokers}: {e}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("delete topic {topic} on {brokers}: {e}"));
    }
}

/// Where a broker of a test's own keeps its messages.
#[derive(Clone)]
pub enum Storage {
    /// Lost when the broker stops.
    Memory,
    /// A SQLite file in this directory, kept across restarts.
    Sqlite(PathBuf),
}

/// A nisshi broker of one test's own on its own port: the binary `scripts/stack up`
/// installed (STACK_NISSHI in .stack/env).
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: Storage,
    /// More arguments for `nisshi broker` (TLS, authentication).
    extra: Vec<String>,
}

impl Broker {
    pub fn start(storage: Storage) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Broker { child: None, port, storage, extra: Vec::new() };
        broker.restart();
        broker
    }

    /// A broker that accepts only TLS connections (the certificate of `pki`) from clients
    /// that log in with SCRAM-SHA-512 as `user`, with `topic` (one partition) on it.
    /// nisshi creates users and topics only over a plain connection without login, so
    /// they are made first, on the same storage, by the broker started plain.
    pub fn start_secure(pki: &super::tls::Pki, user: &str, password: &str, topic: &str) -> Broker {
        let dir = temp_dir("broker-secure");
        let mut broker = Broker::start(Storage::Sqlite(dir));
        let binary = std::env::var("STACK_NISSHI").unwrap();
        let url = format!("tcp://{}", broker.addr());
        let status = Command::new(&binary)
            .args(["user", "create", "--broker", &url, "--mechanism", "scram512", user, password])
            .status()
            .expect("run nisshi user create");
        assert!(status.success(), "nisshi user create failed");
        create_topic_on(&broker.addr(), topic, 1);
        broker.kill();
        broker.extra = vec![
            "--cert".into(),
            pki.cert.display().to_string(),
            "--key".into(),
            pki.key.display().to_string(),
            "--authentication".into(),
        ];
        broker.restart();
        broker
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the broker (again) on the same port and storage.
    pub fn restart(&mut self) {
        let binary = std::env::var("STACK_NISSHI")
            .unwrap_or_else(|_| panic!("STACK_NISSHI is not set: no nisshi binary; {HOW_TO_START}"));
        let url = format!("tcp://{}", self.addr());
        let (dir, engine) = match &self.storage {
            Storage::Memory => (std::env::temp_dir(), "memory://nisshi/".to_string()),
            Storage::Sqlite(dir) => (dir.clone(), "sqlite://broker.db".to_string()),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", &engine])
            .args(["--group-initial-rebalance-delay", "0s"])
            .args(&self.extra)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}; {HOW_TO_START}"));
        self.child = Some(child);
        wait_for("the test's broker to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(self.addr()).ok()
        });
    }

    /// Kills the broker with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory of one test's own under the system's temporary directory.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
