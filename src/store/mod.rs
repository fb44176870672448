//! Everything the service says to PostgreSQL: the schema migrations, the batch write of
//! orders and dead letters, and the reads behind the cache and the commands. Only this
//! module contains SQL; `tables` names every column it writes, once.

mod dead_letters;
mod migrate;
mod notify;
mod offsets;
mod pool;
mod read;
mod tables;
mod write;

use anyhow::Context;
use postgres::{Client, NoTls};

pub use dead_letters::{
    DeadLetter, KEPT_OF_OVERSIZE, Replay, StoredDeadLetter, dead_letter, dead_letters, dead_letters_to_replay, replay,
};
pub use migrate::{MIGRATIONS, migrate};
pub use notify::{CHANNEL, Change, listen, parse_payload, stored_versions};
pub use offsets::{Claim, Reset, reset_offsets, stored_offsets};
pub use pool::{Conn, Pool};
pub use read::{order, recent_orders, recent_summaries};
pub use write::{BatchResult, Written, write_batch};

use crate::config;

/// Opens one connection to the configured database.
pub fn connect(db: &config::Database) -> anyhow::Result<Client> {
    connect_with(db, "orders-svc", |_| {})
}

/// Opens the consumer's connection: its statements are cancelled after
/// `write_statement_timeout_ms`, and the server ends its transaction if the consumer
/// goes silent inside one for `idle_in_transaction_timeout_ms` (a frozen process, a
/// connection cut off), so that its locks never hold up the instance that took over.
pub fn connect_writer(db: &config::Database) -> anyhow::Result<Client> {
    let options = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        db.write_statement_timeout_ms, db.idle_in_transaction_timeout_ms
    );
    connect_with(db, "orders-svc", |config| {
        config.options(&options);
    })
}

/// Opens a connection named `application_name`, with whatever else `configure` sets.
fn connect_with(
    db: &config::Database,
    application_name: &str,
    configure: impl FnOnce(&mut postgres::Config),
) -> anyhow::Result<Client> {
    let mut config: postgres::Config = db.url.parse().context("parse database url")?;
    config.connect_timeout(db.connect_timeout()).application_name(application_name);
    configure(&mut config);
    let target = describe(&config);
    config.connect(NoTls).with_context(|| format!("connect to PostgreSQL at {target}"))
}

/// `host:port/dbname as user`, for messages; never the password.
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{} as {}",
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)")
    )
}

/// A round trip to the server, for readiness.
pub fn ping(client: &mut Client) -> anyhow::Result<()> {
    client.simple_query("SELECT 1").context("ping PostgreSQL")?;
    Ok(())
}
