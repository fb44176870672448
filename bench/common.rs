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
