//! The service's configuration: one struct, read once at start from a TOML file, with
//! `ORDERS_<SECTION>_<KEY>` environment variables over it and secrets read from the files
//! it names (`sources`), and checked there, so a bad value stops the start with the file
//! or the variable, the key and what was expected, and nothing later has to doubt it.

mod database;
mod sources;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub(crate) use database::percent_decode;
pub use database::{Database, DatabaseTls, SslMode};
pub use sources::kafka_error;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: Database,
    pub kafka: Kafka,
    pub ingest: Ingest,
    pub validation: crate::model::Rules,
    pub http: Http,
    pub cache: CacheConfig,
    /// The keys set by environment variables, and each one's variable, for errors.
    #[serde(skip)]
    from_env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub auto_offset_reset: OffsetReset,
    pub fetch_wait_max_ms: u32,
    /// How the group assigns partitions: librdkafka's `group.protocol`. `Consumer` by
    /// default: on Kafka 4 a rebalance then stops only the partitions that move.
    pub group_protocol: GroupProtocol,
    /// librdkafka's `session.timeout.ms`, for the classic protocol alone (under
    /// `consumer` the broker's `group.consumer.session.timeout.ms` rules). None: 45 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_timeout_ms: Option<u32>,
    /// Static membership: librdkafka's `group.instance.id`, unique to each instance of
    /// the group. An instance that restarts within the session timeout gets its
    /// partitions back without a rebalance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// librdkafka properties passed to the consumer and the producer as they are
    /// (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …).
    #[serde(deserialize_with = "sources::properties")]
    pub properties: BTreeMap<String, String>,
    /// A file of `name=value` lines (a mounted secret) added to `properties`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties_file: Option<PathBuf>,
}

/// The consumer group protocol. `Classic`: the group's members agree on an assignment
/// among themselves, and every rebalance revokes every partition (eager). `Consumer`
/// (KIP-848, Kafka 4): the broker assigns, and a rebalance moves only the partitions
/// that change hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    Classic,
    Consumer,
}

impl GroupProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }

    /// librdkafka properties this protocol refuses, each with what to use instead.
    fn refused_properties(self) -> &'static [(&'static str, &'static str)] {
        match self {
            GroupProtocol::Classic => &[(
                "group.remote.assignor",
                "the consumer protocol alone; with classic, the members assign (partition.assignment.strategy)",
            )],
            GroupProtocol::Consumer => &[
                (
                    "heartbeat.interval.ms",
                    "the broker under the consumer protocol (group.consumer.heartbeat.interval.ms)",
                ),
                (
                    "partition.assignment.strategy",
                    "the broker under the consumer protocol (group.remote.assignor chooses its assignor)",
                ),
                ("group.protocol.type", "the classic protocol alone"),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    pub batch_max_messages: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

/// The most `http.event_threads`: a few serve thousands of connections.
const MAX_EVENT_THREADS: usize = 64;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    pub addr: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// Threads that serve the keep-alive connections waiting for their next request
    /// (tiny_http patch 6); 0: each connection keeps a thread of its own.
    pub event_threads: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_orders: usize,
    pub max_bytes: usize,
    pub negative_ttl_ms: u64,
    /// None: half of `http.workers`, at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_database_waits: Option<usize>,
    pub database_wait_ms: u64,
    /// Seconds after which a cached order is read again; 0: never.
    pub max_age_secs: u64,
}

impl Default for Kafka {
    fn default() -> Self {
        Kafka {
            brokers: "127.0.0.1:9092".into(),
            topic: "orders".into(),
            group_id: "orders-svc".into(),
            auto_offset_reset: OffsetReset::Earliest,
            fetch_wait_max_ms: 100,
            group_protocol: GroupProtocol::Consumer,
            session_timeout_ms: None,
            instance_id: None,
            properties: BTreeMap::new(),
            properties_file: None,
        }
    }
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            batch_max_messages: 20_000,
            batch_max_bytes: 32 << 20,
            batch_max_wait_ms: 0,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            workers: 4,
            max_connections: 4096,
            request_timeout_ms: 5000,
            idle_timeout_ms: 30_000,
            event_threads: 2,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_orders: 100_000,
            max_bytes: 256 << 20,
            negative_ttl_ms: 2000,
            max_database_waits: None,
            database_wait_ms: 2000,
            max_age_secs: 0,
        }
    }
}

impl OffsetReset {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

impl Http {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

impl Ingest {
    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }
    pub fn retry_initial(&self) -> Duration {
        Duration::from_millis(self.retry_initial_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
}

impl Config {
    /// The configuration file at `path` (the defaults without one), the process's
    /// `ORDERS_*` environment variables over it, and the secrets read from the files it
    /// names; checked.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Config::load_with(path, std::env::vars())
    }

    /// As `load`, with the environment given.
    pub fn load_with(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let in_file = |e: anyhow::Error| match path {
            Some(path) => e.context(format!("config file {}", path.display())),
            None => e,
        };
        let text = match path {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?
            }
            None => String::new(),
        };
        let config = Config::deserialize_text(&text).map_err(in_file)?;
        let config = sources::apply_env(config, env)?;
        let config = config.read_secrets()?;
        // An error about a key an environment variable set names the variable instead.
        config.check().map_err(|e| if config.set_by_env(&e) { e } else { in_file(e) })?;
        Ok(config)
    }

    /// Parses and checks configuration text; errors name the key and what was expected.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config = Config::deserialize_text(text)?.read_secrets()?;
        config.check()?;
        Ok(config)
    }

    fn deserialize_text(text: &str) -> anyhow::Result<Config> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // toml's message starts with a location and a source excerpt; keep its last
            // line, which says what was expected.
            let message = inner.message().trim().to_string();
            let location = inner
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            if key == "." || key.is_empty() {
                anyhow::anyhow!("{message}{location}")
            } else {
                anyhow::anyhow!("key `{key}`: {message}{location}")
            }
        })?;
        Ok(config)
    }

    /// How errors name `key`: as the key, or as the environment variable that set it.
    fn name(&self, key: &str) -> String {
        match self.from_env.get(key) {
            Some(var) => format!("environment variable {var}"),
            None => format!("key `{key}`"),
        }
    }

    /// Whether `error` is about a key an environment variable set.
    fn set_by_env(&self, error: &anyhow::Error) -> bool {
        error.to_string().starts_with("environment variable ")
    }

    /// What the group protocol takes: `session_timeout_ms` only with classic, and no
    /// property the protocol refuses.
    fn check_group_protocol(&self) -> anyhow::Result<()> {
        let k = &self.kafka;
        match (k.group_protocol, k.session_timeout_ms) {
            (GroupProtocol::Classic, Some(0)) => {
                bail!("{}: expected a number greater than 0, found 0", self.name("kafka.session_timeout_ms"))
            }
            (GroupProtocol::Consumer, Some(_)) => bail!(
                "{}: applies to kafka.group_protocol = \"classic\" alone; under \"consumer\" (the default) the \
                 broker sets the session timeout (group.consumer.session.timeout.ms): remove the key, or set \
                 kafka.group_protocol = \"classic\"",
                self.name("kafka.session_timeout_ms")
            ),
            _ => {}
        }
        if let Some((name, owner)) =
            k.group_protocol.refused_properties().iter().find(|(name, _)| k.properties.contains_key(*name))
        {
            bail!(
                "key `kafka.properties`: `{name}` is for {owner}, not for kafka.group_protocol = \"{}\"",
                k.group_protocol.as_str()
            );
        }
        if let Some(id) = &k.instance_id
            && id.trim().is_empty()
        {
            bail!("{}: expected a non-empty string", self.name("kafka.instance_id"));
        }
        Ok(())
    }

    /// Range checks serde cannot express.
    fn check(&self) -> anyhow::Result<()> {
        let positive = |key: &str, value: u64| -> anyhow::Result<()> {
            if value == 0 {
                bail!("{}: expected a number greater than 0, found 0", self.name(key));
            }
            Ok(())
        };
        let not_empty = |key: &str, value: &str| -> anyhow::Result<()> {
            if value.trim().is_empty() {
                bail!("{}: expected a non-empty string", self.name(key));
            }
            Ok(())
        };
        let url = &self.database.url;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // Never the whole value: it may hold a password.
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            bail!(
                "{}: expected a URL starting with postgres://, found one starting with {scheme:?}",
                self.name("database.url")
            );
        }
        self.database.target().map_err(|e| anyhow::anyhow!("{}: {e:#}", self.name("database.url")))?;
        sources::check_properties(&self.kafka.properties)
            .map_err(|e| anyhow::anyhow!("key `kafka.properties`: {e}"))?;
        positive("database.pool_size", self.database.pool_size as u64)?;
        positive("database.connect_timeout_secs", self.database.connect_timeout_secs)?;
        not_empty("kafka.brokers", &self.kafka.brokers)?;
        not_empty("kafka.topic", &self.kafka.topic)?;
        not_empty("kafka.group_id", &self.kafka.group_id)?;
        self.check_group_protocol()?;
        positive("database.write_statement_timeout_ms", self.database.write_statement_timeout_ms)?;
        positive("database.idle_in_transaction_timeout_ms", self.database.idle_in_transaction_timeout_ms)?;
        positive("ingest.batch_max_messages", self.ingest.batch_max_messages as u64)?;
        positive("ingest.batch_max_bytes", self.ingest.batch_max_bytes as u64)?;
        positive("ingest.retry_initial_ms", self.ingest.retry_initial_ms)?;
        if self.ingest.retry_max_ms < self.ingest.retry_initial_ms {
            bail!(
                "{}: expected at least ingest.retry_initial_ms ({}), found {}",
                self.name("ingest.retry_max_ms"),
                self.ingest.retry_initial_ms,
                self.ingest.retry_max_ms
            );
        }
        positive("validation.max_message_bytes", self.validation.max_message_bytes as u64)?;
        positive("http.workers", self.http.workers as u64)?;
        positive("http.max_connections", self.http.max_connections as u64)?;
        positive("http.request_timeout_ms", self.http.request_timeout_ms)?;
        positive("http.idle_timeout_ms", self.http.idle_timeout_ms)?;
        if self.http.event_threads > MAX_EVENT_THREADS {
            bail!(
                "{}: expected at most {MAX_EVENT_THREADS} (each serves many connections; 0 gives every connection a \
                 thread of its own), found {}",
                self.name("http.event_threads"),
                self.http.event_threads
            );
        }
        positive("cache.max_orders", self.cache.max_orders as u64)?;
        positive("cache.max_bytes", self.cache.max_bytes as u64)?;
        positive("cache.database_wait_ms", self.cache.database_wait_ms)?;
        positive("database.read_statement_timeout_ms", self.database.read_statement_timeout_ms)?;
        positive("database.tcp_keepalive_secs", self.database.tcp_keepalive_secs)?;
        positive("database.tcp_user_timeout_ms", self.database.tcp_user_timeout_ms)?;
        if let Some(n) = self.cache.max_database_waits {
            let most = (self.http.workers - 1).max(1);
            if n == 0 || n > most {
                bail!(
                    "{}: expected from 1 to {most} (fewer than http.workers, so that a worker is always free for \
                     cached orders and health checks), found {n}",
                    self.name("cache.max_database_waits")
                );
            }
        }
        Ok(())
    }
}
