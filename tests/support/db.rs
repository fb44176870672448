//! PostgreSQL for tests: a database of one test's own, and a proxy in front of the
//! server that a test can cut to make the database go away.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use postgres::{Client, NoTls};

use super::{HOW_TO_START, admin_url, unique};

/// A database of one test's own, dropped at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = unique("orders_test");
        admin().batch_execute(&format!("CREATE DATABASE {name}")).expect("create the test database");
        TestDb { url: with_database(&admin_url(), &name), name }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to the test database")
    }

    /// Runs a query that returns one bigint, such as a count.
    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).expect(sql).get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

fn admin() -> Client {
    let url = admin_url();
    Client::connect(&url, NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e}); {HOW_TO_START}"))
}

/// `url` (postgres://user@host:port/db, as `scripts/stack` writes it) with another
/// database name.
fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL ends with /name");
    format!("{base}/{name}")
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore: to the service, a
/// cut looks like the database going away (connections reset, new ones refused).
pub struct DbProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl DbProxy {
    pub fn start() -> DbProxy {
        let config: postgres::Config = admin_url().parse().unwrap();
        let host = match &config.get_hosts()[0] {
            postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("the database proxy needs a TCP address, not {other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = (host.as_str(), port).to_socket_addrs().unwrap().next().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = DbProxy {
            addr: listener.local_addr().unwrap(),
            up: Arc::new(AtomicBool::new(true)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (up, open) = (proxy.up.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// The database "goes down": open connections are reset, new ones closed at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `db`'s URL, through this proxy.
    pub fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@{}/{}", self.addr, db.name)
    }
}
