//! The read that fills the cache at start: every stored order, or the `limit` most
//! recently stored, at close to the speed PostgreSQL streams rows.
//!
//! Every order is stored with its document, the JSON the service serves
//! (`orders.document`): the read is one `COPY … TO STDOUT BINARY` of id, document, digest
//! and age, on this thread while PostgreSQL's backend sends them from the other core;
//! each document goes into an allocation of its own, held by the cache as it is. The
//! orders come in the table's order, each with when it was stored, so that the caller can
//! keep the newest; each is handed over as it comes, so that what the caller does with it
//! happens while PostgreSQL sends the next.

use std::sync::Arc;

use anyhow::Context;
use log::debug;
use postgres::{Client, IsolationLevel};
use time::OffsetDateTime;

use super::copy_out::{Fields, copy_out};
use super::tables::DOCUMENT_COLUMNS;
use crate::model::StoredOrder;

/// A stored order as the read has it, borrowed from PostgreSQL's stream: what is kept
/// of it is copied once, into what keeps it.
pub struct Stored<'a> {
    pub uid: &'a str,
    pub json: &'a [u8],
    pub sha256: &'a [u8],
    /// `ingested_at`, in `Clock::micros`.
    pub stored_at: i64,
}

/// Where the read hands the stored orders.
pub trait Keep {
    /// How many orders will come, before the first.
    fn expect(&mut self, orders: usize);
    fn keep(&mut self, order: Stored<'_>);
}

impl Keep for Vec<StoredOrder> {
    fn expect(&mut self, orders: usize) {
        self.reserve(orders);
    }

    fn keep(&mut self, order: Stored<'_>) {
        let Stored { uid, json, sha256, stored_at } = order;
        self.push(StoredOrder { uid: uid.to_string(), json: Arc::from(json), sha256: sha256.to_vec(), stored_at });
    }
}

/// Reads the stored orders, the `limit` most recently stored if there are more (ties
/// broken by id, as the index page does), and only those stored within `max_age` if it
/// is given, and hands each to `into`, in no particular order. Returns how many. The
/// count, the cut and the orders are read in one read-only snapshot.
pub fn stored_orders(
    client: &mut Client,
    limit: usize,
    max_age: Option<std::time::Duration>,
    into: &mut impl Keep,
) -> anyhow::Result<usize> {
    let started = std::time::Instant::now();
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .context("begin reading the stored orders")?;
    // COPY takes no parameters: the values in its conditions are literals.
    let mut keep = Vec::new();
    if let Some(age) = max_age {
        keep.push(format!("ingested_at > now() - interval '{} seconds'", age.as_secs()));
    }
    let count: i64 = tx
        .query_one(&format!("SELECT count(*) AS orders FROM orders{}", where_all(&keep)), &[])
        .context("count the stored orders")?
        .get("orders");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Past `limit`, only the orders at or after the last one to keep, in the order
    // "newest first, then by id".
    if count > limit {
        let last = tx
            .query_one(
                &format!(
                    "SELECT ingested_at, order_uid FROM orders{} ORDER BY ingested_at DESC, order_uid \
                     OFFSET $1 LIMIT 1",
                    where_all(&keep)
                ),
                &[&(limit - 1)],
            )
            .context("find the oldest order to read")?;
        let at: OffsetDateTime = last.get("ingested_at");
        let at = literal(&at.format(&time::format_description::well_known::Rfc3339)?);
        let uid = literal(last.get("order_uid"));
        keep.push(format!("(ingested_at > {at} OR (ingested_at = {at} AND order_uid <= {uid}))"));
    }
    let query = format!("SELECT {DOCUMENT_COLUMNS} FROM orders{}", where_all(&keep));
    into.expect(usize::try_from(count.min(limit)).unwrap_or(0));
    let mut read = 0;
    // From the table's first page, not where another scan of it is (or last was): in
    // the table's order, which is mostly the order the orders were stored in.
    tx.batch_execute("SET LOCAL synchronize_seqscans = off").context("read the table from its start")?;
    let mut rows = copy_out(&mut tx, &query).context("read the stored orders' documents")?;
    let mut scratch = Vec::new();
    let mut hand_over = |row: &[u8]| {
        // In the order of DOCUMENT_COLUMNS.
        let mut f = Fields::new(row);
        let (uid, json, sha256, stored_at) = (f.text()?, f.raw()?, f.raw()?, f.int8()?);
        f.end()?;
        into.keep(Stored { uid, json, sha256, stored_at });
        Ok(())
    };
    while rows.next_with(&mut scratch, &mut hand_over)?.is_some() {
        read += 1;
    }
    drop(rows);
    tx.commit().context("end reading the stored orders")?;
    debug!("event=warm_orders_read orders={read} ms={}", started.elapsed().as_millis());
    Ok(read)
}

/// ` WHERE <conditions joined by AND>`, or nothing without any.
fn where_all(conditions: &[String]) -> String {
    if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) }
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_joined_into_one_where() {
        assert_eq!(where_all(&[]), "");
        assert_eq!(where_all(&["a > 1".into(), "b = 'x'".into()]), " WHERE a > 1 AND b = 'x'");
    }

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
    }
}
