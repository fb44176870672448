//! The reads behind the cache's misses and the index page: orders' documents by id,
//! and the summaries of the most recent orders. Each read is one statement. Rows are read
//! by column name.

use std::sync::{Arc, LazyLock};

use anyhow::Context;
use postgres::Client;
use time::OffsetDateTime;

use super::pool::Conn;
use super::tables::DOCUMENT_COLUMNS;
use crate::model::{OrderSummary, StoredOrder};

/// The `limit` most recently ingested orders, in brief, newest first.
pub fn recent_summaries(client: &mut Client, limit: i64) -> anyhow::Result<Vec<OrderSummary>> {
    let rows = client
        .query(
            "SELECT o.order_uid, o.date_created, p.amount, p.currency, o.ingested_at,
                    (SELECT count(*) FROM order_items i WHERE i.order_uid = o.order_uid) AS items
             FROM orders o JOIN payments p ON p.order_uid = o.order_uid
             ORDER BY o.ingested_at DESC, o.order_uid LIMIT $1",
            &[&limit],
        )
        .context("read recent orders")?;
    Ok(rows
        .iter()
        .map(|r| OrderSummary {
            order_uid: r.get("order_uid"),
            date_created: r.get("date_created"),
            amount: r.get("amount"),
            currency: r.get("currency"),
            ingested_at: r.get("ingested_at"),
            items: r.get("items"),
        })
        .collect())
}

/// One order by id, or None: its document as stored, with its digest and when it was
/// stored, in one statement (prepared once per connection).
pub fn order(conn: &mut Conn, uid: &str) -> anyhow::Result<Option<StoredOrder>> {
    let mut found = orders(conn, &[uid])?;
    Ok(found.pop())
}

/// The orders of `uids` that PostgreSQL has, in no particular order, as `order` reads
/// one, in one statement (prepared once per connection): the misses of many requests
/// share one round trip.
pub fn orders(conn: &mut Conn, uids: &[&str]) -> anyhow::Result<Vec<StoredOrder>> {
    let statement = conn.prepared(ORDERS_SELECT.as_str()).context("prepare the read of orders")?;
    let rows = match conn.query(&statement, &[&uids]) {
        Ok(rows) => rows,
        Err(e) => {
            conn.forget_prepared();
            return Err(e).with_context(|| match uids {
                [uid] => format!("read order {uid}"),
                _ => format!("read {} orders", uids.len()),
            });
        }
    };
    Ok(rows
        .iter()
        .map(|row| {
            let document: &str = row.get("document");
            StoredOrder {
                uid: row.get("order_uid"),
                json: Arc::from(document.as_bytes()),
                sha256: row.get("content_sha256"),
                stored_at: micros_since_2000(row.get("ingested_at")),
            }
        })
        .collect())
}

/// The statement of `orders`.
static ORDERS_SELECT: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {DOCUMENT_COLUMNS} FROM orders WHERE order_uid = ANY($1)"));

/// `at` as PostgreSQL counts it: in microseconds since 2000-01-01 UTC, as the warm-up
/// reads it.
fn micros_since_2000(at: OffsetDateTime) -> i64 {
    let since = at - time::macros::datetime!(2000-01-01 0:00 UTC);
    i64::try_from(since.whole_microseconds()).expect("a timestamptz is within ±2^63 microseconds of 2000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_counted_from_2000_in_microseconds() {
        let at = |text: &str| OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(micros_since_2000(at("2000-01-01T00:00:00Z")), 0);
        assert_eq!(micros_since_2000(at("2000-01-01T00:00:01.000002Z")), 1_000_002);
        assert_eq!(micros_since_2000(at("2021-11-26T06:22:19+03:00")), 691_212_139_000_000);
        assert_eq!(micros_since_2000(at("1999-12-31T23:59:59Z")), -1_000_000);
    }
}
