//! The service's configuration: one struct, read from a TOML file once at start and
//! checked there, so a bad value stops the start with the file, the key and what was
//! expected, and nothing later has to doubt it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: Database,
    pub kafka: Kafka,
    pub ingest: Ingest,
    pub validation: crate::model::Rules,
    pub http: Http,
    pub cache: CacheConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout_secs: u64,
    pub write_statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
    pub read_statement_timeout_ms: u64,
    pub tcp_keepalive_secs: u64,
    pub tcp_user_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub auto_offset_reset: OffsetReset,
    pub fetch_wait_max_ms: u32,
    pub session_timeout_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    pub batch_max_messages: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    pub addr: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_orders: usize,
    pub max_bytes: usize,
    pub negative_ttl_ms: u64,
    /// None: half of `http.workers`, at least 1.
    pub max_database_waits: Option<usize>,
    pub database_wait_ms: u64,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "postgres://orders_svc@127.0.0.1:5432/orders".into(),
            pool_size: 4,
            connect_timeout_secs: 5,
            write_statement_timeout_ms: 30_000,
            idle_in_transaction_timeout_ms: 15_000,
            read_statement_timeout_ms: 5_000,
            tcp_keepalive_secs: 10,
            tcp_user_timeout_ms: 10_000,
        }
    }
}

impl Default for Kafka {
    fn default() -> Self {
        Kafka {
            brokers: "127.0.0.1:9092".into(),
            topic: "orders".into(),
            group_id: "orders-svc".into(),
            auto_offset_reset: OffsetReset::Earliest,
            fetch_wait_max_ms: 10,
            session_timeout_ms: 45_000,
        }
    }
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            batch_max_messages: 5000,
            batch_max_bytes: 16 << 20,
            batch_max_wait_ms: 50,
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
        }
    }
}

impl CacheConfig {
    /// The cache's bounds, with `workers` HTTP workers.
    pub fn limits(&self, workers: usize) -> crate::cache::Limits {
        crate::cache::Limits {
            max_orders: self.max_orders,
            max_bytes: self.max_bytes,
            negative_ttl: Duration::from_millis(self.negative_ttl_ms),
            max_database_waits: self.max_database_waits.unwrap_or((workers / 2).max(1)),
            database_wait: Duration::from_millis(self.database_wait_ms),
        }
    }
}

impl Database {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
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
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and checks configuration text; errors name the key and what was expected.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
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
        config.check()?;
        Ok(config)
    }

    /// Range checks serde cannot express.
    fn check(&self) -> anyhow::Result<()> {
        fn positive(key: &str, value: u64) -> anyhow::Result<()> {
            if value == 0 {
                bail!("key `{key}`: expected a number greater than 0, found 0");
            }
            Ok(())
        }
        fn not_empty(key: &str, value: &str) -> anyhow::Result<()> {
            if value.trim().is_empty() {
                bail!("key `{key}`: expected a non-empty string");
            }
            Ok(())
        }
        if !(self.database.url.starts_with("postgres://") || self.database.url.starts_with("postgresql://")) {
            bail!("key `database.url`: expected a URL starting with postgres://, found {:?}", self.database.url);
        }
        self.database
            .url
            .parse::<postgres::Config>()
            .map_err(|e| anyhow::anyhow!("key `database.url`: not a valid PostgreSQL URL: {e}"))?;
        positive("database.pool_size", self.database.pool_size as u64)?;
        positive("database.connect_timeout_secs", self.database.connect_timeout_secs)?;
        not_empty("kafka.brokers", &self.kafka.brokers)?;
        not_empty("kafka.topic", &self.kafka.topic)?;
        not_empty("kafka.group_id", &self.kafka.group_id)?;
        positive("kafka.session_timeout_ms", self.kafka.session_timeout_ms.into())?;
        positive("database.write_statement_timeout_ms", self.database.write_statement_timeout_ms)?;
        positive("database.idle_in_transaction_timeout_ms", self.database.idle_in_transaction_timeout_ms)?;
        positive("ingest.batch_max_messages", self.ingest.batch_max_messages as u64)?;
        positive("ingest.batch_max_bytes", self.ingest.batch_max_bytes as u64)?;
        positive("ingest.retry_initial_ms", self.ingest.retry_initial_ms)?;
        if self.ingest.retry_max_ms < self.ingest.retry_initial_ms {
            bail!(
                "key `ingest.retry_max_ms`: expected at least ingest.retry_initial_ms ({}), found {}",
                self.ingest.retry_initial_ms,
                self.ingest.retry_max_ms
            );
        }
        positive("validation.max_message_bytes", self.validation.max_message_bytes as u64)?;
        positive("http.workers", self.http.workers as u64)?;
        positive("http.max_connections", self.http.max_connections as u64)?;
        positive("http.request_timeout_ms", self.http.request_timeout_ms)?;
        positive("http.idle_timeout_ms", self.http.idle_timeout_ms)?;
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
                    "key `cache.max_database_waits`: expected from 1 to {most} (fewer than http.workers, so that a \
                     worker is always free for cached orders and health checks), found {n}"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn empty_file_gives_the_local_stack_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.database.url, "postgres://orders_svc@127.0.0.1:5432/orders");
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.topic, "orders");
        assert_eq!(c.kafka.fetch_wait_max_ms, 10);
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(
            (c.http.max_connections, c.http.request_timeout(), c.http.idle_timeout()),
            (4096, Duration::from_secs(5), Duration::from_secs(30))
        );
    }

    #[test]
    fn sample_file_parses_to_the_defaults() {
        let c = Config::parse(include_str!("../orders.toml")).unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn database_waits_leave_a_worker_free() {
        assert_eq!(Config::parse("").unwrap().cache.limits(4).max_database_waits, 2);
        assert_eq!(Config::parse("[http]\nworkers = 1\n").unwrap().cache.limits(1).max_database_waits, 1);
        assert_eq!(Config::parse("[cache]\nmax_database_waits = 3\n").unwrap().cache.limits(4).max_database_waits, 3);
        assert_eq!(
            err("[cache]\nmax_database_waits = 4\n"),
            "key `cache.max_database_waits`: expected from 1 to 3 (fewer than http.workers, so that a worker is \
             always free for cached orders and health checks), found 4"
        );
    }

    #[test]
    fn compose_config_parses() {
        let c = Config::parse(include_str!("../deploy/compose.toml")).unwrap();
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:8081");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        assert_eq!(
            err("[http]\nworkers = \"four\"\n"),
            "key `http.workers`: invalid type: string \"four\", expected usize (line 2)"
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        assert_eq!(
            err("[kafka]\ntopik = \"x\"\n"),
            "key `kafka.topik`: unknown field `topik`, expected one of `brokers`, `topic`, `group_id`, \
             `auto_offset_reset`, `fetch_wait_max_ms`, `session_timeout_ms` (line 2)"
        );
    }

    #[test]
    fn bad_address_and_enum_are_named() {
        assert_eq!(err("[http]\naddr = \"localhost\"\n"), "key `http.addr`: invalid socket address syntax (line 2)");
        assert_eq!(
            err("[kafka]\nauto_offset_reset = \"first\"\n"),
            "key `kafka.auto_offset_reset`: unknown variant `first`, expected `earliest` or `latest` (line 2)"
        );
    }

    #[test]
    fn bad_toml_says_where() {
        let e = err("[http\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn range_checks_name_the_key() {
        assert_eq!(err("[http]\nworkers = 0\n"), "key `http.workers`: expected a number greater than 0, found 0");
        assert_eq!(
            err("[http]\nrequest_timeout_ms = 0\n"),
            "key `http.request_timeout_ms`: expected a number greater than 0, found 0"
        );
        assert_eq!(
            err("[database]\nurl = \"mysql://x\"\n"),
            "key `database.url`: expected a URL starting with postgres://, found \"mysql://x\""
        );
        assert_eq!(
            err("[ingest]\nretry_initial_ms = 500\nretry_max_ms = 100\n"),
            "key `ingest.retry_max_ms`: expected at least ingest.retry_initial_ms (500), found 100"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = format!("{:#}", Config::load(Path::new("/nonexistent/orders.toml")).unwrap_err());
        assert_eq!(e, "cannot read config file /nonexistent/orders.toml: No such file or directory (os error 2)");
    }
}
