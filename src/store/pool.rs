//! Connections for the read path, reused between requests, each with the statements
//! already prepared on it.

use std::collections::HashMap;

use parking_lot::Mutex;
use postgres::{Client, Statement};

use crate::config;

/// Connections for the read path (`connect_reader`). Idle connections are reused; a broken
/// one is dropped and a new one opened on the next request.
pub struct Pool {
    db: config::Database,
    max_idle: usize,
    idle: Mutex<Vec<Conn>>,
}

/// A connection and the statements prepared on it: PostgreSQL plans a prepared statement
/// once, where a statement sent as text is planned again each time. The read path's
/// connections are these, and so is the consumer's (`write::write_batch_on`).
pub struct Conn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl From<Client> for Conn {
    fn from(client: Client) -> Conn {
        Conn { client, prepared: HashMap::new() }
    }
}

impl Conn {
    /// `sql` prepared on this connection, the first time it is asked for.
    pub fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Forgets the prepared statements, after one failed: it may have been the statement
    /// itself (a table changed under it, which PostgreSQL refuses to run as prepared).
    pub fn forget_prepared(&mut self) {
        self.prepared.clear();
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Pool {
    /// Keeps up to `database.pool_size` idle connections.
    pub fn new(db: &config::Database) -> Pool {
        Pool { db: db.clone(), max_idle: db.pool_size, idle: Mutex::new(Vec::new()) }
    }

    /// How many idle connections it keeps.
    pub fn size(&self) -> usize {
        self.max_idle
    }

    /// Runs `f` with a connection. The pool's lock is held only to take or return one.
    pub fn with<T>(&self, f: impl FnOnce(&mut Conn) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let idle = self.idle.lock().pop();
        let mut conn = match idle {
            Some(c) if !c.is_closed() => c,
            _ => Conn::from(super::connect_reader(&self.db)?),
        };
        let result = f(&mut conn);
        if !conn.is_closed() {
            let mut idle = self.idle.lock();
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        result
    }
}
