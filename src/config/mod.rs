//! The service's configuration: one struct, read once at start from a TOML file, with
//! `ORDERS_<SECTION>_<KEY>` environment variables over it and secrets read from the files
//! it names (`sources`), and checked there, so a bad value stops the start with the file
//! or the variable, the key and what was expected, and nothing later has to doubt it.

mod sources;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

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
pub struct Database {
    pub url: String,
    /// A file holding the URL (a mounted secret); read at start, it replaces `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    pub pool_size: usize,
    pub connect_timeout_secs: u64,
    pub write_statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
    pub read_statement_timeout_ms: u64,
    pub tcp_keepalive_secs: u64,
    pub tcp_user_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub auto_offset_reset: OffsetReset,
    pub fetch_wait_max_ms: u32,
    /// How the group assigns partitions: librdkafka's `group.protocol`.
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    pub addr: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
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

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "postgres://orders_svc@127.0.0.1:5432/orders".into(),
            url_file: None,
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
            fetch_wait_max_ms: 100,
            group_protocol: GroupProtocol::Classic,
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
            batch_max_wait_ms: 10,
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
            max_age_secs: 0,
        }
    }
}

/// libpq's `sslmode`, from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate (the default).
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

/// The TLS a database URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseTls {
    pub mode: SslMode,
    /// The CAs to trust (`sslrootcert`, a PEM file); None: the system's.
    pub root_cert: Option<PathBuf>,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl Database {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// The URL as the postgres crate takes it, and the TLS it asks for. The crate knows
    /// only some of libpq's `sslmode` values and no `sslrootcert`, so both are taken out
    /// here: `sslmode` as libpq reads it (`disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`; `require` with an `sslrootcert` checks the chain, as `verify-ca`),
    /// `sslrootcert` a PEM file of CAs or `system`.
    pub fn target(&self) -> anyhow::Result<(postgres::Config, DatabaseTls)> {
        let (base, query) = self.url.split_once('?').unwrap_or((&self.url, ""));
        let mut kept = Vec::new();
        let mut mode = None;
        let mut root_cert = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    mode = Some(match value {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        _ => bail!("sslmode={value:?} is not one of disable, prefer, require, verify-ca, verify-full"),
                    })
                }
                "sslrootcert" => root_cert = Some(percent_decode(value)),
                _ => kept.push(pair),
            }
        }
        let system = root_cert.as_deref() == Some("system");
        let mode = match (mode, &root_cert) {
            // libpq: `sslrootcert=system` verifies fully and refuses a weaker mode.
            (None, _) if system => SslMode::VerifyFull,
            (Some(mode), _) if system && mode != SslMode::VerifyFull => {
                bail!("sslrootcert=system needs sslmode=verify-full (or no sslmode)")
            }
            (Some(SslMode::Require), Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode.unwrap_or(SslMode::Prefer),
        };
        let root_cert = root_cert.filter(|_| !system).map(PathBuf::from);
        if let Some(path) = &root_cert
            && !path.is_file()
        {
            bail!("sslrootcert {}: no such file", path.display());
        }
        let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        let mut config: postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("not a valid PostgreSQL URL: {e}"))?;
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        Ok((config, DatabaseTls { mode, root_cert }))
    }
}

/// `%XX` escapes of a URL's query value decoded.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
                "{}: applies to kafka.group_protocol = \"classic\" alone; under \"consumer\" the broker sets the \
                 session timeout (group.consumer.session.timeout.ms)",
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
        assert_eq!(c.kafka.fetch_wait_max_ms, 100);
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(
            (c.http.max_connections, c.http.request_timeout(), c.http.idle_timeout()),
            (4096, Duration::from_secs(5), Duration::from_secs(30))
        );
    }

    #[test]
    fn sample_file_parses_to_the_defaults() {
        let c = Config::parse(include_str!("../../orders.toml")).unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn database_waits_must_leave_a_worker_free() {
        assert_eq!(
            err("[cache]\nmax_database_waits = 4\n"),
            "key `cache.max_database_waits`: expected from 1 to 3 (fewer than http.workers, so that a worker is \
             always free for cached orders and health checks), found 4"
        );
    }

    #[test]
    fn compose_config_parses() {
        let c = Config::parse(include_str!("../../deploy/compose.toml")).unwrap();
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:8081");
        // As compose.yaml runs it: the URL from the secret file.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let secret = root.join("deploy/secrets/database-url").display().to_string();
        let c =
            Config::load_with(Some(&root.join("deploy/compose.toml")), env(&[("ORDERS_DATABASE_URL_FILE", &secret)]))
                .unwrap();
        assert_eq!(c.database.url, "postgres://orders_svc:orders_svc@postgres:5432/orders");
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
             `auto_offset_reset`, `fetch_wait_max_ms`, `group_protocol`, `session_timeout_ms`, `instance_id`, \
             `properties`, `properties_file` (line 2)"
        );
    }

    #[test]
    fn each_group_protocol_refuses_what_the_other_alone_takes() {
        assert_eq!(
            err("[kafka]\ngroup_protocol = \"consumer\"\nsession_timeout_ms = 6000\n"),
            "key `kafka.session_timeout_ms`: applies to kafka.group_protocol = \"classic\" alone; under \"consumer\" the \
             broker sets the session timeout (group.consumer.session.timeout.ms)"
        );
        assert_eq!(
            err(
                "[kafka]\ngroup_protocol = \"consumer\"\n[kafka.properties]\n\"partition.assignment.strategy\" = \"range\"\n"
            ),
            "key `kafka.properties`: `partition.assignment.strategy` is for the broker under the consumer protocol \
             (group.remote.assignor chooses its assignor), not for kafka.group_protocol = \"consumer\""
        );
        assert_eq!(
            err("[kafka]\n[kafka.properties]\n\"group.remote.assignor\" = \"uniform\"\n"),
            "key `kafka.properties`: `group.remote.assignor` is for the consumer protocol alone; with classic, the \
             members assign (partition.assignment.strategy), not for kafka.group_protocol = \"classic\""
        );
        assert_eq!(
            err("[kafka]\n[kafka.properties]\n\"group.instance.id\" = \"a\"\n"),
            "key `kafka.properties`: `group.instance.id` is set by kafka.instance_id"
        );
        assert_eq!(
            err("[kafka]\ngroup_protocol = \"eager\"\n"),
            "key `kafka.group_protocol`: unknown variant `eager`, expected `classic` or `consumer` (line 2)"
        );
        let c = Config::parse("[kafka]\ngroup_protocol = \"consumer\"\ninstance_id = \"orders-1\"\n").unwrap();
        assert_eq!(
            (c.kafka.group_protocol, c.kafka.instance_id.as_deref()),
            (GroupProtocol::Consumer, Some("orders-1"))
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
            "key `database.url`: expected a URL starting with postgres://, found one starting with \"mysql\""
        );
        assert_eq!(
            err("[ingest]\nretry_initial_ms = 500\nretry_max_ms = 100\n"),
            "key `ingest.retry_max_ms`: expected at least ingest.retry_initial_ms (500), found 100"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = format!("{:#}", Config::load_with(Some(Path::new("/nonexistent/orders.toml")), []).unwrap_err());
        assert_eq!(e, "cannot read config file /nonexistent/orders.toml: No such file or directory (os error 2)");
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(file: Option<&str>, vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let path = file.map(|text| {
            let path = std::env::temp_dir().join(format!("orders-config-{}-{}.toml", std::process::id(), unique()));
            std::fs::write(&path, text).unwrap();
            path
        });
        Config::load_with(path.as_deref(), env(vars))
    }

    fn unique() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A file of the test's own holding `text`.
    fn secret_file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("orders-secret-{}-{}", std::process::id(), unique()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn environment_variables_override_the_file_each_as_its_key_s_type() {
        let c = load(
            Some("[http]\nworkers = 2\n[kafka]\ngroup_id = \"from-file\"\n"),
            &[
                ("ORDERS_HTTP_WORKERS", "8"),
                ("ORDERS_HTTP_ADDR", "0.0.0.0:9000"),
                ("ORDERS_KAFKA_GROUP_ID", "123"),
                ("ORDERS_CACHE_MAX_DATABASE_WAITS", "3"),
                ("ORDERS_VALIDATION_AMOUNT", "false"),
                ("ORDERS_KAFKA_PROPERTIES_SECURITY_PROTOCOL", "SASL_SSL"),
                ("ORDERS_KAFKA_PROPERTIES_SASL_PASSWORD", "hunter2"),
                ("ORDERSVC_FAULT", "not ours"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!((c.http.workers, c.http.addr.to_string()), (8, "0.0.0.0:9000".to_string()));
        assert_eq!(c.kafka.group_id, "123");
        assert_eq!(c.cache.max_database_waits, Some(3));
        assert!(!c.validation.amount);
        assert_eq!(
            c.kafka.properties,
            BTreeMap::from([
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string())
            ])
        );
        // Without a file, over the defaults.
        assert_eq!(load(None, &[("ORDERS_KAFKA_TOPIC", "t")]).unwrap().kafka.topic, "t");
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let err = |vars: &[(&str, &str)]| format!("{:#}", load(Some("[http]\nworkers = 2\n"), vars).unwrap_err());
        assert_eq!(
            err(&[("ORDERS_HTTP_WORKERS", "four")]),
            "environment variable ORDERS_HTTP_WORKERS: expected an integer, found \"four\""
        );
        assert_eq!(
            err(&[("ORDERS_HTTP_WORKERS", "0")]),
            "environment variable ORDERS_HTTP_WORKERS: expected a number greater than 0, found 0"
        );
        assert_eq!(
            err(&[("ORDERS_HTTP_ADDR", "localhost")]),
            "environment variable ORDERS_HTTP_ADDR: invalid socket address syntax"
        );
        assert!(
            err(&[("ORDERS_HTTP_ADR", "x")]).starts_with("environment variable ORDERS_HTTP_ADR: unknown field `adr`"),
            "{}",
            err(&[("ORDERS_HTTP_ADR", "x")])
        );
        assert_eq!(
            err(&[("ORDERS_WEB_ADDR", "x")]),
            "environment variable ORDERS_WEB_ADDR: not a setting; expected ORDERS_<SECTION>_<KEY> with a SECTION \
             of DATABASE, KAFKA, INGEST, VALIDATION, HTTP or CACHE"
        );
        // The file's own errors still name the file's key and line.
        assert_eq!(
            format!("{:#}", load(Some("[http]\nworkers = 0\n"), &[("ORDERS_KAFKA_TOPIC", "t")]).unwrap_err())
                .split_once(": ")
                .unwrap()
                .1,
            "key `http.workers`: expected a number greater than 0, found 0"
        );
    }

    #[test]
    fn secrets_come_from_files() {
        let url = secret_file("postgres://svc:s3cret@db.example:5432/orders?sslmode=require\n");
        let properties = secret_file("# from the vault\nsasl.username = svc\nsasl.password=p=w\n\n");
        let text = format!(
            "[database]\nurl_file = {:?}\n[kafka]\nproperties_file = {:?}\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
            url.display(),
            properties.display()
        );
        let c = load(Some(&text), &[]).unwrap();
        assert_eq!(c.database.url, "postgres://svc:s3cret@db.example:5432/orders?sslmode=require");
        assert_eq!(c.kafka.properties["sasl.username"], "svc");
        assert_eq!(c.kafka.properties["sasl.password"], "p=w");
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        // A variable for the URL replaces the file's url_file, and one for the file its url.
        let c = load(Some(&text), &[("ORDERS_DATABASE_URL", "postgres://other@h/db")]).unwrap();
        assert_eq!(c.database.url, "postgres://other@h/db");
        let via_env = load(None, &[("ORDERS_DATABASE_URL_FILE", url.to_str().unwrap())]).unwrap();
        assert_eq!(via_env.database.url, "postgres://svc:s3cret@db.example:5432/orders?sslmode=require");

        let e = format!("{:#}", load(Some("[database]\nurl_file = \"/nonexistent/url\"\n"), &[]).unwrap_err());
        assert!(
            e.ends_with(
                "key `database.url_file`: cannot read /nonexistent/url: No such file or directory (os error 2)"
            ),
            "{e}"
        );
        let twice = format!(
            "[kafka]\nproperties_file = {:?}\n[kafka.properties]\n\"sasl.password\" = \"x\"\n",
            properties.display()
        );
        let e = format!("{:#}", load(Some(&twice), &[]).unwrap_err());
        assert!(e.ends_with("sets `sasl.password`, which kafka.properties sets too"), "{e}");
        let bad = secret_file("sasl.password hunter2\n");
        let e = format!("{:#}", load(None, &[("ORDERS_KAFKA_PROPERTIES_FILE", bad.to_str().unwrap())]).unwrap_err());
        assert!(e.ends_with(": line 1: expected name=value") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn properties_the_service_sets_are_refused() {
        assert_eq!(
            err("[kafka.properties]\n\"enable.auto.commit\" = true\n"),
            "key `kafka.properties`: `enable.auto.commit` is set by the service: offsets are committed only after \
             the database commit"
        );
        assert_eq!(
            err("[kafka.properties]\n\"group.id\" = \"g\"\n"),
            "key `kafka.properties`: `group.id` is set by kafka.group_id"
        );
        let c = Config::parse(
            "[kafka.properties]\n\"socket.timeout.ms\" = 30000\n\"enable.ssl.certificate.verification\" = false\n",
        )
        .unwrap();
        assert_eq!(c.kafka.properties["socket.timeout.ms"], "30000");
        assert_eq!(c.kafka.properties["enable.ssl.certificate.verification"], "false");
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_as_libpq_reads_them() {
        let tls = |url: &str| {
            let db = Database { url: url.to_string(), ..Database::default() };
            db.target().map(|(_, tls)| tls).map_err(|e| format!("{e:#}"))
        };
        let ca = secret_file("not checked here");
        let ca = ca.to_str().unwrap();
        let mode = |url: &str| tls(url).unwrap().mode;
        assert_eq!(mode("postgres://u@h/d"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@h/d?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("postgres://u@h/d?sslmode=require"), SslMode::Require);
        assert_eq!(mode(&format!("postgres://u@h/d?sslmode=require&sslrootcert={ca}")), SslMode::VerifyCa);
        assert_eq!(mode("postgres://u@h/d?sslmode=verify-ca"), SslMode::VerifyCa);
        assert_eq!(mode("postgres://u@h/d?application_name=x&sslmode=verify-full"), SslMode::VerifyFull);
        assert_eq!(mode("postgres://u@h/d?sslrootcert=system"), SslMode::VerifyFull);
        assert_eq!(
            tls(&format!("postgres://u@h/d?sslmode=verify-full&sslrootcert={ca}")).unwrap().root_cert.unwrap().to_str(),
            Some(ca)
        );
        assert_eq!(
            tls("postgres://u@h/d?sslmode=verify").unwrap_err(),
            "sslmode=\"verify\" is not one of disable, prefer, require, verify-ca, verify-full"
        );
        assert_eq!(
            tls("postgres://u@h/d?sslmode=require&sslrootcert=system").unwrap_err(),
            "sslrootcert=system needs sslmode=verify-full (or no sslmode)"
        );
        assert_eq!(
            tls("postgres://u@h/d?sslrootcert=/nonexistent.pem").unwrap_err(),
            "sslrootcert /nonexistent.pem: no such file"
        );
        assert_eq!(
            err("[database]\nurl = \"postgres://u:pw@h/d?sslmode=bogus\"\n"),
            "key `database.url`: sslmode=\"bogus\" is not one of disable, prefer, require, verify-ca, verify-full"
        );
    }
}
