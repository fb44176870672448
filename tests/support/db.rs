//! PostgreSQL for tests: a database of one test's own, and a proxy in front of the
//! server that a test can cut to make the database go away, or hold to make it hang.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

    /// The group's stored offsets (`consumer_offsets.next_offset`), by partition.
    pub fn next_offsets(&self) -> Vec<i64> {
        let rows = self.client().query("SELECT next_offset FROM consumer_offsets ORDER BY partition", &[]);
        rows.expect("read the stored offsets").iter().map(|r| r.get("next_offset")).collect()
    }

    /// Runs a query that returns one row of one bigint, such as a count: its one column,
    /// whatever its name.
    pub fn count(&self, sql: &str) -> i64 {
        let row = self.client().query_one(sql, &[]).expect(sql);
        assert_eq!(row.len(), 1, "{sql} must return one column");
        row.get(row.columns()[0].name())
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
/// cut looks like the database going away (connections reset, new ones refused). Held,
/// it keeps every connection open but passes no byte on, in either direction, until
/// released: to the service, the database hangs.
pub struct DbProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    held: Arc<AtomicBool>,
    held_bytes: Arc<AtomicUsize>,
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
            held: Arc::new(AtomicBool::new(false)),
            held_bytes: Arc::new(AtomicUsize::new(0)),
        };
        let (up, open) = (proxy.up.clone(), proxy.open.clone());
        let (held, held_bytes) = (proxy.held.clone(), proxy.held_bytes.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let (held, held_bytes) = (held.clone(), held_bytes.clone());
                    std::thread::spawn(move || pump(from, to, &held, &held_bytes));
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

    /// The database "hangs": from now on bytes are read but not passed on.
    pub fn hold(&self) {
        self.held_bytes.store(0, Ordering::SeqCst);
        self.held.store(true, Ordering::SeqCst);
    }

    /// How many bytes arrived, in either direction, since `hold`.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::SeqCst)
    }

    /// Passes on what was held, and everything after it.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }

    /// `db`'s URL, through this proxy.
    pub fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@{}/{}", self.addr, db.name)
    }
}

/// Copies `from` to `to` until either side closes, waiting while `held`.
fn pump(mut from: TcpStream, mut to: TcpStream, held: &AtomicBool, held_bytes: &AtomicUsize) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if held.load(Ordering::SeqCst) {
            held_bytes.fetch_add(n, Ordering::SeqCst);
            while held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}
