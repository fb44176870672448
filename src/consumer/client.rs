//! The settings of the service's Kafka clients: those every client starts from, and
//! those the consumer adds for its group.

use rdkafka::config::ClientConfig;

use crate::config;

/// The settings every Kafka client of the service starts from: the brokers and
/// `kafka.properties`. A TLS connection without `ssl.ca.location` trusts the system's
/// CAs (`probe`): librdkafka's OpenSSL is built into the binary, and its own default
/// paths are not the system's.
pub fn client_config(kafka: &config::Kafka) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &kafka.brokers);
    for (name, value) in &kafka.properties {
        client.set(name, value);
    }
    let tls = kafka.properties.get("security.protocol").is_some_and(|p| p.to_ascii_uppercase().ends_with("SSL"));
    if tls && !kafka.properties.contains_key("ssl.ca.location") && !kafka.properties.contains_key("ssl.ca.pem") {
        client.set("ssl.ca.location", "probe");
    }
    client
}

/// The consumer's settings: its group, protocol and membership, and no offsets stored
/// or committed by librdkafka itself (the loop commits them, after the database).
pub(super) fn consumer_config(k: &config::Kafka) -> ClientConfig {
    let mut client = client_config(k);
    client.set("group.protocol", k.group_protocol.as_str());
    if k.group_protocol == config::GroupProtocol::Classic {
        client.set("session.timeout.ms", k.session_timeout_ms.unwrap_or(45_000).to_string());
    }
    if let Some(id) = &k.instance_id {
        client.set("group.instance.id", id);
    }
    client
        .set("group.id", &k.group_id)
        .set("client.id", "orders-svc")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", k.auto_offset_reset.as_str())
        .set("fetch.wait.max.ms", k.fetch_wait_max_ms.to_string())
        .set("statistics.interval.ms", "5000")
        // librdkafka's default is 5 minutes: a topic created, recreated or given more
        // partitions while the service runs would wait that long to be consumed.
        .set("topic.metadata.refresh.interval.ms", "10000");
    client
}
