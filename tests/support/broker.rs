//! Kafka for tests: topics on the stack's broker, and an Apache Kafka broker of a test's
//! own (`scripts/kafka-node`, on ports and in a directory of its own) that the test can
//! kill, wipe and start again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{HOW_TO_START, brokers, unique};

/// Creates a topic of one test's own on the stack's broker.
pub fn create_topic(partitions: i32) -> String {
    let name = unique("orders-test");
    create_topic_on(&brokers(), &name, partitions);
    name
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("socket.connection.setup.timeout.ms", "5000")
        .create()
        .expect("create a Kafka admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))).request_timeout(Some(Duration::from_secs(30)))
}

pub fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = futures_executor::block_on(admin(brokers).create_topics([&topic], &admin_options()))
        .unwrap_or_else(|e| panic!("create topic {name} on {brokers}: {e}; {HOW_TO_START}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create topic {topic} on {brokers}: {e}"));
    }
}

pub fn delete_topic_on(brokers: &str, name: &str) {
    let results = futures_executor::block_on(admin(brokers).delete_topics(&[name], &admin_options()))
        .unwrap_or_else(|e| panic!("delete topic {name} on {brokers}: {e}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("delete topic {topic} on {brokers}: {e}"));
    }
}

/// Gives topic `name` of the stack's broker `partitions` partitions in all.
pub fn add_partitions(name: &str, partitions: usize) {
    let brokers = brokers();
    let more = NewPartitions::new(name, partitions);
    let results = futures_executor::block_on(admin(&brokers).create_partitions([&more], &admin_options()))
        .unwrap_or_else(|e| panic!("add partitions to {name} on {brokers}: {e}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("add partitions to {topic} on {brokers}: {e}"));
    }
}

/// Sets topic-level configuration (`retention.ms`, …) of `name`. Kafka's incremental
/// form is not in rdkafka's admin client: this replaces the topic's whole set, which is
/// what a test wants.
pub fn alter_topic_on(brokers: &str, name: &str, entries: &[(&str, &str)]) {
    let mut config = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (key, value) in entries {
        config = config.set(key, value);
    }
    let results = futures_executor::block_on(admin(brokers).alter_configs([&config], &admin_options()))
        .unwrap_or_else(|e| panic!("alter topic {name} on {brokers}: {e}"));
    for result in results {
        result.unwrap_or_else(|(resource, e)| panic!("alter {resource:?} on {brokers}: {e}"));
    }
}

/// A port free at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A SASL_SSL listener of a test's broker: a port of its own, the server's certificate
/// and key (`tls::Pki`), and one SCRAM-SHA-512 user created when the storage is
/// formatted.
struct Secure {
    port: u16,
    user: String,
    password: String,
}

/// An Apache Kafka broker of one test's own, single node in KRaft combined mode, with
/// its data in a directory of its own (kept across `restart`, gone with `wipe`).
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    controller: u16,
    pub dir: PathBuf,
    secure: Option<Secure>,
    /// How many times it was started: each start logs to a file of its own.
    starts: u32,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// A broker with more `server.properties` lines (`name=value`), which win over the
    /// node's defaults.
    pub fn start_with(properties: &[(&str, &str)]) -> Broker {
        let dir = temp_dir("kafka");
        let text: String = properties.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(dir.join("extra.properties"), text).unwrap();
        let mut broker =
            Broker { child: None, port: free_port(), controller: free_port(), dir, secure: None, starts: 0 };
        broker.restart();
        broker
    }

    /// A broker with, beside its plain listener, a SASL_SSL one that presents the
    /// certificate of `pki` and lets `user` in with SCRAM-SHA-512; `topic` (one
    /// partition) is created on it through the plain listener.
    pub fn start_secure(pki: &super::tls::Pki, user: &str, password: &str, topic: &str) -> Broker {
        let dir = temp_dir("kafka-secure");
        let (port, controller, secure_port) = (free_port(), free_port(), free_port());
        // Kafka reads a PEM key store as one file: the key, then the certificate.
        let keystore = dir.join("keystore.pem");
        let pem = [std::fs::read(&pki.key).unwrap(), std::fs::read(&pki.cert).unwrap()].concat();
        std::fs::write(&keystore, pem).unwrap();
        let extra = format!(
            "listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port}\n\
             sasl.enabled.mechanisms=SCRAM-SHA-512\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
             org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={}\n",
            keystore.display()
        );
        std::fs::write(dir.join("extra.properties"), extra).unwrap();
        let secure = Secure { port: secure_port, user: user.into(), password: password.into() };
        let mut broker = Broker { child: None, port, controller, dir, secure: Some(secure), starts: 0 };
        broker.restart();
        create_topic_on(&broker.addr(), topic, 1);
        broker
    }

    /// The plain listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `config_toml` for a process on this broker instead of the stack's.
    pub fn config_toml(&self, db_url: &str, topic: &str, group: &str, addr: std::net::SocketAddr) -> String {
        super::config_toml(db_url, topic, group, addr, "")
            .replace(&format!("brokers = \"{}\"", brokers()), &format!("brokers = \"{}\"", self.addr()))
    }

    /// The SASL_SSL listener of a broker made by `start_secure`.
    pub fn secure_addr(&self) -> String {
        format!("127.0.0.1:{}", self.secure.as_ref().expect("a broker made by start_secure").port)
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log of the broker's latest start.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("broker-{}.log", self.starts))
    }

    /// Starts the broker (again) on the same ports and data, and waits until it says it
    /// started.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.starts += 1;
        let log = self.log();
        let out = std::fs::File::create(&log).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-node");
        let mut command = Command::new(&script);
        command
            .arg(&self.dir)
            .arg(self.port.to_string())
            .arg(self.controller.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(s) = &self.secure {
            command.env("KAFKA_NODE_SCRAM", format!("SCRAM-SHA-512=[name={},password={}]", s.user, s.password));
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}; {HOW_TO_START}", script.display()));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Kafka Server started") {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the test's Kafka broker exited ({status}) at start; {}:\n{}", log.display(), tail(&text));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the test's Kafka broker did not start within 120 s; {}:\n{}", log.display(), tail(&text));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = Some(child);
    }

    /// Kills the broker with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker and deletes its data, as a broker whose disk was lost: started
    /// again, it is a new cluster, without topics, groups or messages.
    pub fn wipe(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.dir.join("data")).unwrap();
        self.restart();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        // A broker's data is large; a passed test leaves none of it behind.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A directory of one test's own under the system's temporary directory.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The low and high watermarks of each partition of `topic` on `brokers`.
pub fn watermarks(brokers: &str, topic: &str, partitions: i32) -> BTreeMap<i32, (i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("create a consumer");
    (0..partitions)
        .map(|p| (p, consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("read watermarks")))
        .collect()
}
