//! Faults injected on purpose, for the tests that prove what a crash at the worst moment
//! does. Debug builds only: a release build has no such variable and no such code.
//!
//! `ORDERSVC_FAULT=exit_after_database_commit` ends the process (exit code 86) right
//! after the first batch's database transaction has committed, before its offsets are
//! committed to Kafka.

/// The exit code of an injected crash.
pub const EXIT_CODE: i32 = 86;

/// Ends the process here if `ORDERSVC_FAULT` names this point.
pub fn point(name: &str) {
    if std::env::var("ORDERSVC_FAULT").is_ok_and(|v| v == name) {
        log::error!("event=fault_injected point={name} exit_code={EXIT_CODE}");
        std::process::exit(EXIT_CODE);
    }
}
