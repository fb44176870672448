//! Connections for the read path, reused between requests.

use parking_lot::Mutex;
use postgres::Client;

use crate::config;

/// Connections for the read path. Idle connections are reused; a broken one is dropped
/// and a new one opened on the next request.
pub struct Pool {
    db: config::Database,
    max_idle: usize,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    /// Keeps up to `database.pool_size` idle connections.
    pub fn new(db: &config::Database) -> Pool {
        Pool { db: db.clone(), max_idle: db.pool_size, idle: Mutex::new(Vec::new()) }
    }

    /// Runs `f` with a connection. The pool's lock is held only to take or return one.
    pub fn with<T>(&self, f: impl FnOnce(&mut Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let idle = self.idle.lock().pop();
        let mut client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => super::connect(&self.db)?,
        };
        let result = f(&mut client);
        if !client.is_closed() {
            let mut idle = self.idle.lock();
            if idle.len() < self.max_idle {
                idle.push(client);
            }
        }
        result
    }
}
