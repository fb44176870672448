//! What the benchmarks share: the stack's addresses, a throwaway database, a topic.

use anyhow::Context;
use postgres::{Client, NoTls};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn admin_url() -> String {
    std::env::var("ORDERS_TEST_ADMIN_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn brokers() -> String {
    std::env::var("ORDERS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A database made for one run, with the service's schema, dropped at the end.
pub struct Database {
    name: String,
    pub url: String,
}

impl Database {
    pub fn create(name: &str) -> anyhow::Result<Database> {
        let admin_url = admin_url();
        let mut admin = Client::connect(&admin_url, NoTls)
            .with_context(|| format!("connect to {admin_url}; start the stack with scripts/stack up"))?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
        let db = Database { name: name.into(), url: format!("{base}/{name}") };
        orders_svc::store::migrate(&mut db.client()?)?;
        Ok(db)
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.url, NoTls)?)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

pub fn create_topic(topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in futures_executor::block_on(admin.create_topics([&new], &AdminOptions::new()))? {
        result.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}
