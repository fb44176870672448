//! A real Prometheus (Debian's) scrapes two running instances every second and evaluates
//! the alert rules of `deploy/prometheus/alerts.yml`, in a copy whose `for:` durations
//! and rate windows are cut to seconds. Real faults make the matching alert fire, and
//! recovery resolves it: the database made unreachable, the consumer stopped while
//! messages wait, a burst of invalid messages. Every query of the Grafana dashboard then
//! runs against the same Prometheus.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orders_svc::tools::generate::Generator;
use serde_json::Value;

use crate::support::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus of the test's own on a free port, with its data in a directory of its
/// own.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "this test needs Debian's prometheus ({PROMETHEUS}): apt-get install prometheus, or run the suite with \
             scripts/test, whose deploy/prometheus/check installs it"
        );
        let dir = temp_dir("prometheus");
        std::fs::write(dir.join("alerts.yml"), rules_in_seconds()).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: orders-svc\n    static_configs:\n      - targets: [{}]\n",
            dir.join("alerts.yml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = free_addr();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus { child, addr, dir };
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            (get_within(addr, "/-/ready", Duration::from_secs(2)).ok()?.status == 200).then_some(())
        });
        prometheus
    }

    fn api(&self, path: &str) -> Value {
        let r = get(self.addr, path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["status"], "success", "GET {path}: {}", r.body);
        v["data"].clone()
    }

    /// The states of the alerts named `name`, one per label set.
    fn alert_states(&self, name: &str) -> Vec<String> {
        let data = self.api("/api/v1/alerts");
        let alerts = data["alerts"].as_array().unwrap();
        alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap().to_string())
            .collect()
    }

    fn wait_firing(&self, name: &str) {
        wait_for(&format!("{name} to fire"), Duration::from_secs(90), || {
            self.alert_states(name).iter().any(|s| s == "firing").then_some(())
        });
    }

    fn wait_resolved(&self, name: &str) {
        wait_for(&format!("{name} to resolve"), Duration::from_secs(90), || {
            self.alert_states(name).is_empty().then_some(())
        });
    }

    /// Runs an instant query; returns its result's series.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(expr)));
        match &data["result"] {
            Value::Array(series) => series.clone(),
            // A scalar answer (`time()`, a bare number) is one value.
            other => vec![other.clone()],
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `deploy/prometheus/alerts.yml` with every `for:` of minutes made 2 s and every rate
/// window of minutes made 15 s, so that an alert fires seconds after its fault, and
/// resolves seconds after the fault ends, instead of minutes.
fn rules_in_seconds() -> String {
    let rules = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"))
        .expect("read deploy/prometheus/alerts.yml");
    let mut out = String::new();
    for line in rules.lines() {
        let line = if line.trim_start().starts_with("for:") {
            format!("{}for: 2s", &line[..line.len() - line.trim_start().len()])
        } else {
            minutes_to_seconds(line)
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Every range of minutes in `line` (`[10m]`, `[10m:1m]`) as 15 s (a subquery's steps of
/// 1 s), and every `offset` of minutes as 15 s.
fn minutes_to_seconds(line: &str) -> String {
    let minutes = |d: &str| d.len() > 1 && d.ends_with('m') && d[..d.len() - 1].bytes().all(|b| b.is_ascii_digit());
    let mut out = String::new();
    let mut rest = line;
    loop {
        let bracket = rest.find('[');
        let offset = rest.find("offset ");
        match (bracket, offset) {
            (Some(open), o) if o.is_none_or(|o| open < o) => {
                let Some(close) = rest[open..].find(']').map(|c| open + c) else { break };
                out.push_str(&rest[..open]);
                let range = &rest[open + 1..close];
                let parts: Vec<&str> = range.split(':').collect();
                out.push_str(match parts.as_slice() {
                    [r] if minutes(r) => "[15s]",
                    [r, step] if minutes(r) && minutes(step) => "[15s:1s]",
                    _ => &rest[open..=close],
                });
                rest = &rest[close + 1..];
            }
            (_, Some(o)) => {
                let start = o + "offset ".len();
                let end = rest[start..].find(|c: char| !c.is_ascii_alphanumeric()).map_or(rest.len(), |e| start + e);
                out.push_str(&rest[..start]);
                out.push_str(if minutes(&rest[start..end]) { "15s" } else { &rest[start..end] });
                rest = &rest[end..];
            }
            _ => break,
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn rules_are_cut_to_seconds() {
    assert_eq!(minutes_to_seconds("rate(x[5m]) > 0"), "rate(x[15s]) > 0");
    assert_eq!(minutes_to_seconds("deriv(sum(x)[10m:1m]) > 0"), "deriv(sum(x)[15s:1s]) > 0");
    assert_eq!(minutes_to_seconds("x unless x offset 10m) > 0"), "x unless x offset 15s) > 0");
    assert_eq!(minutes_to_seconds("summary: \"[a] b\""), "summary: \"[a] b\"");
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The dashboard's queries as `deploy/grafana/check_queries.py --print` gives them,
/// Grafana's variables filled in: (panel title, query).
fn dashboard_queries() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("deploy/grafana/check_queries.py"))
        .arg("--print")
        .output()
        .expect("run deploy/grafana/check_queries.py --print");
    assert!(out.status.success(), "check_queries.py failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (v["panel"].as_str().unwrap().to_string(), v["expr"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn alerts_fire_for_real_faults_and_resolve_and_every_dashboard_query_runs() {
    let setup = Setup::new(2);
    let proxy = DbProxy::start();
    let mut config = setup.config();
    config.database.url = proxy.url(&setup.db);
    let (a, b) = (Running::start(config.clone()), Running::start(config));
    let prometheus = Prometheus::start(&[a.addr(), b.addr()]);
    let mut generator = Generator::new(61, 2);
    let mut produce_orders = |n: usize| {
        let payloads: Vec<Vec<u8>> = (0..n).map(|_| generator.order().to_json()).collect();
        setup.produce(&payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());
    };
    produce_orders(20);
    wait_for("20 orders stored", Duration::from_secs(60), || {
        (setup.db.count("SELECT count(*) FROM orders") == 20).then_some(())
    });
    wait_for("both instances scraped and ready", Duration::from_secs(60), || {
        (prometheus.query("sum(orders_ready)").first()?["value"][1] == "2").then_some(())
    });
    for alert in
        ["OrdersDatabaseUnreachable", "OrdersInstanceNotReady", "OrdersBatchWriteStuck", "OrdersDeadLetterRateHigh"]
    {
        assert_eq!(prometheus.alert_states(alert), Vec::<String>::new(), "{alert} before any fault");
    }

    // The database unreachable: the listener is lost and the instances are not ready.
    proxy.cut();
    prometheus.wait_firing("OrdersDatabaseUnreachable");
    prometheus.wait_firing("OrdersInstanceNotReady");
    proxy.restore();
    prometheus.wait_resolved("OrdersDatabaseUnreachable");
    prometheus.wait_resolved("OrdersInstanceNotReady");

    // The consumer stopped while messages wait: writes to `orders` wait for a lock the
    // test holds, reads do not. The consumer thread waits in the write, so the lag it
    // would report stays as it was; the write in flight grows past 30 s.
    let mut locker = setup.db.client();
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE orders IN EXCLUSIVE MODE").unwrap();
    produce_orders(20);
    prometheus.wait_firing("OrdersBatchWriteStuck");
    lock.commit().unwrap();
    wait_for("40 orders stored", Duration::from_secs(60), || {
        (setup.db.count("SELECT count(*) FROM orders") == 40).then_some(())
    });
    prometheus.wait_resolved("OrdersBatchWriteStuck");

    // A burst of invalid messages: dead letters over 5 % of what is consumed.
    let bad: Vec<Vec<u8>> = (0..30).map(|i| format!("not an order {i}").into_bytes()).collect();
    setup.produce(&bad.iter().map(Vec::as_slice).collect::<Vec<_>>());
    prometheus.wait_firing("OrdersDeadLetterRateHigh");
    prometheus.wait_resolved("OrdersDeadLetterRateHigh");

    // Every query of the dashboard runs; those of the panels these faults show have data.
    let queries = dashboard_queries();
    assert!(queries.len() >= 40, "only {} queries in the dashboard", queries.len());
    let mut with_data = BTreeSet::new();
    for (panel, expr) in &queries {
        if !prometheus.query(expr).is_empty() {
            with_data.insert(panel.as_str());
        }
    }
    for panel in [
        "Consumer lag per partition",
        "Dead letters by rule",
        "Ingest rate",
        "Listener and readiness",
        "Database reads and refusals",
        "Requests by route",
    ] {
        assert!(with_data.contains(panel), "no data for the panel {panel:?}; panels with data: {with_data:?}");
    }
}
