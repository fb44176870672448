//! Where settings come from besides the file: `ORDERS_<SECTION>_<KEY>` environment
//! variables over it, and secrets read from the files it names (`database.url_file`,
//! `kafka.properties_file`). Also what a secret is, so that no error or log line shows one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Deserializer};
use toml::{Table, Value};

use super::Config;

pub const PREFIX: &str = "ORDERS_";
const SECTIONS: [&str; 6] = ["database", "kafka", "ingest", "validation", "http", "cache"];

/// librdkafka properties the service sets itself, from its own keys or because its
/// guarantees depend on them.
const RESERVED: [(&str, &str); 10] = [
    ("bootstrap.servers", "kafka.brokers"),
    ("group.id", "kafka.group_id"),
    ("auto.offset.reset", "kafka.auto_offset_reset"),
    ("fetch.wait.max.ms", "kafka.fetch_wait_max_ms"),
    ("session.timeout.ms", "kafka.session_timeout_ms"),
    ("group.protocol", "kafka.group_protocol"),
    ("group.instance.id", "kafka.instance_id"),
    ("enable.auto.commit", "the service: offsets are committed only after the database commit"),
    ("enable.auto.offset.store", "the service: offsets are committed only after the database commit"),
    ("enable.idempotence", "the service: the producer is idempotent"),
];

/// Whether a librdkafka property holds a secret: its value is never shown.
pub fn is_secret_property(name: &str) -> bool {
    name.contains("password") || name.contains("secret") || name == "ssl.key.pem" || name == "sasl.oauthbearer.config"
}

/// librdkafka's refusal of a client's settings, without its habit of repeating the
/// property's value at the end (for an unknown property that may be a misspelt
/// `sasl.password`), and with the value of a secret property replaced by `***`.
pub fn kafka_error(error: rdkafka::error::KafkaError, config: &super::Kafka) -> anyhow::Error {
    match error {
        rdkafka::error::KafkaError::ClientConfig(_, description, name, value) => {
            let description = if is_secret_property(&name) && !value.is_empty() {
                description.replace(&value, "***")
            } else {
                description
            };
            anyhow!("{}", scrub(&description, config))
        }
        other => anyhow!("{}", scrub(&other.to_string(), config)),
    }
}

/// `text` with the value of every secret Kafka property replaced by `***`: for errors
/// that may quote a value, such as librdkafka's.
pub fn scrub(text: &str, config: &super::Kafka) -> String {
    let mut text = text.to_string();
    for (name, value) in &config.properties {
        if is_secret_property(name) && !value.is_empty() {
            text = text.replace(value.as_str(), "***");
        }
    }
    text
}

/// `kafka.properties` values: strings, numbers and booleans, all given to librdkafka as
/// text.
pub(super) fn properties<'de, D: Deserializer<'de>>(de: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Property {
        Text(String),
        Integer(i64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Property>::deserialize(de)?;
    Ok(map
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                Property::Text(s) => s,
                Property::Integer(n) => n.to_string(),
                Property::Float(x) => x.to_string(),
                Property::Bool(b) => b.to_string(),
            };
            (name, value)
        })
        .collect())
}

/// Refuses the properties the service sets itself.
pub(super) fn check_properties(properties: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (name, _) in properties.iter() {
        if let Some((_, owner)) = RESERVED.iter().find(|(reserved, _)| reserved == name) {
            bail!("`{name}` is set by {owner}");
        }
        if name.trim().is_empty() || name.contains(char::is_whitespace) {
            bail!("{name:?} is not a property name");
        }
    }
    Ok(())
}

/// `config` with the `ORDERS_<SECTION>_<KEY>` variables of `env` over it. A variable's
/// text is taken as the type of the key it sets; errors name the variable.
/// `ORDERS_KAFKA_PROPERTIES_<NAME>` sets the librdkafka property `<name>`, with `.` for
/// `_` (`ORDERS_KAFKA_PROPERTIES_SASL_PASSWORD` is `sasl.password`).
pub(super) fn apply_env(config: Config, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(name, _)| name.starts_with(PREFIX)).collect();
    if vars.is_empty() {
        return Ok(config);
    }
    vars.sort();
    let mut tree = Table::try_from(&config).map_err(|e| anyhow!("cannot merge the environment: {e}"))?;
    let mut from_env = BTreeMap::new();
    for (var, text) in vars {
        let lower = var[PREFIX.len()..].to_ascii_lowercase();
        let (section, key) = lower
            .split_once('_')
            .filter(|(section, key)| SECTIONS.contains(section) && !key.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "environment variable {var}: not a setting; expected ORDERS_<SECTION>_<KEY> with a SECTION of \
                     DATABASE, KAFKA, INGEST, VALIDATION, HTTP or CACHE"
                )
            })?;
        let table = tree
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("every section is a table");
        if let Some(name) = key.strip_prefix("properties_").filter(|name| *name != "file") {
            let name = name.replace('_', ".");
            let properties = table
                .entry("properties")
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("kafka.properties is a table");
            properties.insert(name.clone(), Value::String(text));
            from_env.insert(format!("kafka.properties.{name}"), var);
            continue;
        }
        let value = typed(table.get(key), &text).map_err(|e| anyhow!("environment variable {var}: {e}"))?;
        table.insert(key.to_string(), value);
        // A value set here replaces the file's file for it (`url` and `url_file`), and the
        // other way round.
        match key.strip_suffix("_file") {
            Some(base) => table.remove(base),
            None => table.remove(&format!("{key}_file")),
        };
        from_env.insert(format!("{section}.{key}"), var);
    }
    let mut merged: Config = serde_path_to_error::deserialize(Value::Table(tree)).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim();
        match from_env.get(&key) {
            Some(var) => anyhow!("environment variable {var}: {message}"),
            None => anyhow!("key `{key}`: {message}"),
        }
    })?;
    merged.from_env = from_env;
    Ok(merged)
}

/// The text of a variable as a value of the type the key has now: its default or the
/// file's value. A key without a value yet (an optional one) takes a number or a
/// boolean as such, and anything else as a string.
fn typed(current: Option<&Value>, text: &str) -> Result<Value, String> {
    let literal = || -> Option<Value> { format!("v = {text}").parse::<Table>().ok()?.remove("v") };
    match current {
        Some(Value::String(_)) => Ok(Value::String(text.to_string())),
        Some(Value::Integer(_)) => {
            text.trim().parse().map(Value::Integer).map_err(|_| format!("expected an integer, found {text:?}"))
        }
        Some(Value::Float(_)) => {
            text.trim().parse().map(Value::Float).map_err(|_| format!("expected a number, found {text:?}"))
        }
        Some(Value::Boolean(_)) => match text.trim() {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, found {text:?}")),
        },
        Some(_) => literal().ok_or_else(|| format!("expected a TOML value, found {text:?}")),
        None => Ok(match literal() {
            Some(value @ (Value::Integer(_) | Value::Float(_) | Value::Boolean(_))) => value,
            _ => Value::String(text.to_string()),
        }),
    }
}

/// A secret file's content, without the line end most editors and `echo` add.
pub(super) fn read_secret(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string())
}

/// The `name=value` lines of a properties file (blank lines and `#` comments skipped).
/// Errors give the line's number, never its text: it may hold a secret.
pub(super) fn parse_properties(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or_else(|| format!("line {}: expected name=value", i + 1))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("line {}: expected name=value", i + 1));
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

impl Config {
    /// Reads the files `database.url_file` and `kafka.properties_file` name.
    pub(super) fn read_secrets(mut self) -> anyhow::Result<Config> {
        if let Some(path) = &self.database.url_file {
            self.database.url = read_secret(path)
                .map_err(|e| anyhow!("{}: cannot read {}: {e}", self.name("database.url_file"), path.display()))?;
        }
        if let Some(path) = &self.kafka.properties_file {
            let name = self.name("kafka.properties_file");
            let text = read_secret(path).map_err(|e| anyhow!("{name}: cannot read {}: {e}", path.display()))?;
            let lines = parse_properties(&text).map_err(|e| anyhow!("{name}: {}: {e}", path.display()))?;
            for (property, value) in lines {
                if self.kafka.properties.contains_key(&property) {
                    bail!("{name}: {} sets `{property}`, which kafka.properties sets too", path.display());
                }
                self.kafka.properties.insert(property, value);
            }
        }
        Ok(self)
    }
}
