//! Change notifications between instances, through PostgreSQL itself: the transaction
//! that stores orders names them and their new versions with `pg_notify`, which
//! PostgreSQL delivers to every listening connection only if, and once, it commits. The
//! listening side reads them here, and checks the versions it holds against the tables
//! after a time it could not listen.

use std::collections::HashMap;

use anyhow::Context;
use postgres::{Client, GenericClient};

use crate::config;
use crate::model::{Change, version_of};

/// The channel every instance of a database listens on.
pub const CHANNEL: &str = "orders_changed";

/// Longest payload sent. PostgreSQL refuses 8000 bytes and more; an order's entry is at
/// most 64 + 1 + 24 + 1 bytes, so a notification names at least 87 orders.
const MAX_PAYLOAD: usize = 7900;

/// Orders per statement when versions are checked against the tables.
const CHECK_CHUNK: usize = 5000;

/// Notifies, within `tx`, that these orders (id and SHA-256) now have these versions.
pub(super) fn notify_changed<'a>(
    tx: &mut impl GenericClient,
    notify: &postgres::Statement,
    changed: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>,
) -> Result<(), postgres::Error> {
    let payloads = payloads_of(changed);
    if !payloads.is_empty() {
        tx.execute(notify, &[&CHANNEL, &payloads])?;
    }
    Ok(())
}

/// The payloads that name these orders (id and SHA-256) with their new versions.
pub(super) fn payloads_of<'a>(changed: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>) -> Vec<String> {
    payloads(changed.into_iter().map(|(uid, sha)| (uid, version_of(sha))))
}

/// `uid:version` entries joined by commas, in payloads under `MAX_PAYLOAD` bytes. Ids
/// hold only letters, digits, '_' and '-', so neither separator can occur in one.
fn payloads<'a>(changes: impl IntoIterator<Item = (&'a str, String)>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for (uid, version) in changes {
        if !current.is_empty() && current.len() + 1 + uid.len() + 1 + version.len() > MAX_PAYLOAD {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(uid);
        current.push(':');
        current.push_str(&version);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The changes a payload names; entries that are not `uid:version` are skipped.
pub fn parse_payload(payload: &str) -> Vec<Change> {
    payload
        .split(',')
        .filter_map(|entry| entry.split_once(':'))
        .filter(|(uid, version)| !uid.is_empty() && !version.is_empty())
        .map(|(uid, version)| Change { uid: uid.to_string(), version: version.to_string() })
        .collect()
}

/// Opens the listening connection, named `name` in `pg_stat_activity`, listening on
/// `CHANNEL`.
pub fn listen(db: &config::Database, name: &str) -> anyhow::Result<Client> {
    let mut client = super::connect_with(db, name, |_| {})?;
    client.batch_execute(&format!("LISTEN {CHANNEL}")).context("listen for changed orders")?;
    Ok(client)
}

/// The stored version of each of `uids` that exists, read in chunks.
pub fn stored_versions(client: &mut Client, uids: &[&str]) -> anyhow::Result<HashMap<String, String>> {
    let mut versions = HashMap::with_capacity(uids.len());
    for chunk in uids.chunks(CHECK_CHUNK) {
        let rows = client
            .query("SELECT order_uid, content_sha256 FROM orders WHERE order_uid = ANY($1)", &[&chunk])
            .context("read stored versions")?;
        for row in rows {
            let sha: &[u8] = row.get("content_sha256");
            versions.insert(row.get("order_uid"), version_of(sha));
        }
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_parse_back() {
        let uids: Vec<String> = (0..500).map(|i| format!("{i:064}")).collect();
        let version = "ab".repeat(12);
        let payloads = payloads(uids.iter().map(|u| (u.as_str(), version.clone())));
        assert_eq!(payloads.len(), 6); // 90 bytes an entry, 87 entries a payload
        assert!(payloads.iter().all(|p| p.len() < MAX_PAYLOAD));
        let back: Vec<Change> = payloads.iter().flat_map(|p| parse_payload(p)).collect();
        assert_eq!(back.len(), 500);
        assert_eq!(back[499], Change { uid: uids[499].clone(), version });
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let got = parse_payload("a:1,junk,:2,b:,c:3");
        assert_eq!(
            got,
            [Change { uid: "a".into(), version: "1".into() }, Change { uid: "c".into(), version: "3".into() }]
        );
        assert_eq!(payloads(Vec::new()), Vec::<String>::new());
    }
}
