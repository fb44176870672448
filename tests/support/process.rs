//! The service binary run as a process of its own, for what cannot happen to a thread of
//! the test: SIGKILL, SIGSTOP, an exit in the middle of a batch.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use orders_svc::config::GroupProtocol;

use super::http::get;
use super::{brokers, wait_for};

/// An `orders.toml` for a process on `db`, the stack's broker, `topic` and `group`,
/// answering HTTP on `addr`; `extra` is appended (more sections or keys of `[ingest]`).
pub fn config_toml(db_url: &str, topic: &str, group: &str, addr: SocketAddr, extra: &str) -> String {
    // Under the consumer protocol the broker sets the session timeout (6 s on the
    // stack's, as here).
    let protocol = match super::group_protocol() {
        GroupProtocol::Classic => "group_protocol = \"classic\"\nsession_timeout_ms = 6000\n",
        GroupProtocol::Consumer => "group_protocol = \"consumer\"\n",
    };
    format!(
        "[database]\nurl = \"{db_url}\"\nconnect_timeout_secs = 2\n\
         [kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup_id = \"{group}\"\n{protocol}\
         [http]\naddr = \"{addr}\"\nworkers = 2\n{extra}",
        brokers()
    )
}

/// The loopback address on a port the system picks when the process binds it. A port
/// asked for beforehand (`free_addr`) can be taken by another test's server or
/// connection before the process binds it; the process's own port cannot.
/// `Process::http_addr` says which port it got.
pub const ANY_PORT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// A loopback address with a port free at the time of asking, for a program that must
/// be told its port (a broker, Prometheus). For orders-svc use `ANY_PORT`.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running `orders-svc --config <file>`, its log in `<dir>/<name>.log`. Killed when
/// dropped, so a failed assertion leaves nothing behind.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn start(dir: &Path, name: &str, toml: &str, env: &[(&str, &str)]) -> Process {
        Process::start_command(dir, name, toml, env, Command::new(env!("CARGO_BIN_EXE_orders-svc")))
    }

    /// As `start`, with at most `descriptors` open files (`ulimit -n`, soft and hard).
    pub fn start_with_descriptors(dir: &Path, name: &str, toml: &str, descriptors: u32) -> Process {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {descriptors} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_orders-svc"));
        Process::start_command(dir, name, toml, &[], command)
    }

    fn start_command(dir: &Path, name: &str, toml: &str, env: &[(&str, &str)], mut command: Command) -> Process {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start orders-svc");
        Process { child, log }
    }

    /// As `start` with nothing added to the environment, and where it answers HTTP.
    pub fn serving(dir: &Path, name: &str, toml: &str) -> (Process, SocketAddr) {
        let process = Process::start(dir, name, toml, &[]);
        let addr = process.http_addr();
        (process, addr)
    }

    /// Where the process answers HTTP, from its `event=http_listening` line, which it
    /// logs before its warm-up.
    pub fn http_addr(&self) -> SocketAddr {
        wait_for(&format!("{} to log its HTTP address", self.log.display()), Duration::from_secs(30), || {
            self.log().lines().find_map(|line| {
                line.split("event=http_listening addr=").nth(1)?.split_whitespace().next()?.parse().ok()
            })
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name: KILL, TERM, STOP, CONT.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name} {}", self.id());
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_for("the process to exit", limit, || self.child.try_wait().unwrap())
    }

    /// How many files the process has open.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.id())).map_or(0, |d| d.count())
    }

    /// The most memory the process has had resident so far (VmHWM), in bytes.
    pub fn peak_resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the process at `addr` answers `/readyz` with 200.
pub fn wait_ready(addr: SocketAddr) {
    wait_for(&format!("{addr} to be ready"), Duration::from_secs(60), || {
        std::net::TcpStream::connect(addr).ok()?;
        (get(addr, "/readyz").status == 200).then_some(())
    });
}
