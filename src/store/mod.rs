//! Everything the service says to PostgreSQL: the schema migrations, the batch write of
//! orders and dead letters, and the reads behind the cache and the commands. Only this
//! module contains SQL; `tables` names every column it writes, once.

mod arrays;
mod copy_in;
mod copy_out;
mod dead_letters;
mod migrate;
mod notify;
mod offsets;
mod pool;
mod prepared;
mod read;
mod readers;
mod replay;
mod tables;
mod tls;
mod warm;
mod write;

use std::time::Duration;

use anyhow::Context;
use postgres::{Client, NoTls};

pub use dead_letters::{
    DeadLetter, KEPT_OF_OVERSIZE, StoredDeadLetter, dead_letter, dead_letters, dead_letters_to_replay,
};
pub use migrate::{MIGRATIONS, Migration, migrate, migrate_to};
pub use notify::{CHANNEL, listen, parse_payload, stored_versions};
pub use offsets::{Claim, Reset, reset_offsets, stored_offsets};
pub use pool::{Conn, Pool};
pub use read::{order, recent_summaries};
pub use readers::{Answer, Readers, Then};
pub use replay::{Replay, replay};
pub use warm::{Keep, Stored, stored_orders};
pub use write::{BatchResult, Written, write_batch, write_batch_on};

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

/// Opens a connection for the read path: its statements are cancelled by the server after
/// `read_statement_timeout_ms`.
pub fn connect_reader(db: &config::Database) -> anyhow::Result<Client> {
    let options = format!("-c statement_timeout={}", db.read_statement_timeout_ms);
    connect_with(db, "orders-svc", |config| {
        config.options(&options);
    })
}

/// Opens a connection named `application_name`, with whatever else `configure` sets.
/// Every connection has TCP keepalives (a first probe after `tcp_keepalive_secs` idle,
/// then one every `tcp_keepalive_secs`, three unanswered end it) and a
/// `tcp_user_timeout_ms` for data sent and not acknowledged, so that a peer gone without
/// a word is noticed rather than waited on.
fn connect_with(
    db: &config::Database,
    application_name: &str,
    configure: impl FnOnce(&mut postgres::Config),
) -> anyhow::Result<Client> {
    let (mut config, tls) = db.target().context("database.url")?;
    let keepalive = Duration::from_secs(db.tcp_keepalive_secs);
    config
        .connect_timeout(db.connect_timeout())
        .application_name(application_name)
        .keepalives(true)
        .keepalives_idle(keepalive)
        .keepalives_interval(keepalive)
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_millis(db.tcp_user_timeout_ms));
    configure(&mut config);
    let target = describe(&config);
    match tls::connector(&tls)? {
        None => config.connect(NoTls),
        Some(connector) => config.connect(connector),
    }
    .with_context(|| format!("connect to PostgreSQL at {target} (sslmode={})", tls.mode.as_str()))
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
