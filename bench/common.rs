//! What the benchmarks share beyond the test support: settings from the environment and a
//! database with the service's schema.

#![allow(dead_code)] // each benchmark uses a different part of it

#[path = "../tests/support/mod.rs"]
pub mod support;

pub use support::{TestDb, brokers, create_topic_on};

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A database of the run's own with the service's tables, dropped at the end.
pub fn migrated_db() -> anyhow::Result<TestDb> {
    let db = TestDb::new();
    orders_svc::store::migrate(&mut db.client())?;
    Ok(db)
}

/// The service's configuration on `db`, the stack's broker and `topic` (the group named
/// after it), answering HTTP on any free port.
pub fn service_config(db: &TestDb, topic: &str) -> orders_svc::config::Config {
    let mut config = orders_svc::config::Config::default();
    config.database.url = db.url.clone();
    config.kafka.brokers = brokers();
    config.kafka.topic = topic.into();
    config.kafka.group_id = topic.into();
    config.http.addr = "127.0.0.1:0".parse().expect("a socket address");
    config
}
