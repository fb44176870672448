//! The HTTP API against its description: schemathesis (a property-based API fuzzer)
//! generates requests from `assets/openapi.json`, as the server serves it, for a bounded
//! number of cases. Every response must match the document: its status documented for
//! the operation (so no 5xx but the documented 503s), its content type, headers and body
//! schema.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// The `st` command `scripts/test` installs.
fn schemathesis() -> String {
    let st = std::env::var("STACK_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!(
            "STACK_SCHEMATHESIS is not set; run the suite with `scripts/test`, which installs schemathesis into \
             .stack/venv, or `pip install schemathesis==4.32.5` and set STACK_SCHEMATHESIS to its `st`"
        )
    });
    let version = Command::new(&st).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "{st} --version failed ({version:?}); run `scripts/test` to install schemathesis"
    );
    st
}

#[test]
fn the_server_answers_as_its_openapi_document_says() {
    let st = schemathesis();
    let (_setup, service) = service_with_canonical_order();
    let addr = service.addr();
    let requests_before = requests_counted(addr);
    let dir = temp_dir("schemathesis");
    let mut child = Command::new(&st)
        .args(["run", &format!("http://{addr}/openapi.json")])
        // Every check but "no 5xx at all": the documented 503s are allowed, and
        // status_code_conformance fails any other.
        .args(["--checks", "all", "--exclude-checks", "not_a_server_error"])
        .args(["--max-examples", "40", "--workers", "2", "--request-timeout", "5"])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start schemathesis");
    let status = wait_for("schemathesis to finish", Duration::from_secs(240), || child.try_wait().unwrap());
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(status.success(), "schemathesis found problems:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("Tested: 7"), "not every operation was tested:\n{report}");
    let requests = requests_counted(addr) - requests_before;
    eprintln!("schemathesis sent {requests} requests");
    assert!(requests >= 200.0, "only {requests} requests reached the server:\n{report}");
}

/// All requests the service has counted, over every route and status.
fn requests_counted(addr: std::net::SocketAddr) -> f64 {
    get(addr, "/metrics")
        .body
        .lines()
        .filter(|l| l.starts_with("orders_http_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
