//! Writing a batch: in one transaction, the stored offsets advanced by compare-and-set
//! (`offsets`), every order by binary COPY, and every dead letter. An order replaces the
//! stored one only if it comes from a later position. When the database refuses some of
//! the rows (a constraint, a program limit, a statement timeout), the transaction is
//! written again with the batch split in halves under savepoints until each refused
//! order is alone, and it becomes a dead letter: a poison message costs a few
//! statements, never a consumer stuck retrying. The orders written are named in a
//! notification (`notify`) that every instance receives once the transaction commits.
//! The consumer writes on a `Conn` that keeps the transaction's statements prepared
//! (`write_batch_on`, `prepared`).

use std::collections::HashMap;

use anyhow::Context;
use log::{info, warn};
use postgres::types::{ToSql, Type};
use postgres::{Client, Transaction};

use super::arrays::{columns, push_row};
use super::copy_in::CopyIn;
use super::dead_letters::{DeadLetter, insert_dead_letters};
use super::notify::{CHANNEL, notify_changed, payloads_of};
use super::offsets::{self, Claim};
use super::pool::Conn;
use super::prepared::{EXISTING, Prepared};
use super::tables::{
    DELIVERIES, ItemRow, ORDER_ITEMS, ORDERS, OrderRow, PAYMENTS, delivery_values, item_values, order_values,
    payment_values,
};
use crate::model::{Encoded, Message, Order, Rejection, Rule};

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Indexes into the batch's orders of those now in the database as given (new,
    /// replaced or unchanged). Of several messages for one order, only the last is here.
    pub stored: Vec<usize>,
    pub inserted: usize,
    pub replaced: usize,
    pub unchanged: usize,
    /// Orders left alone because the stored version came from a later position.
    pub stale: usize,
    /// Dead letters written, including orders the database itself refused.
    pub dead_letters: Vec<DeadLetter>,
}

/// How a batch's transaction ended.
#[derive(Debug)]
pub enum Written {
    Committed(BatchResult),
    /// Nothing was written: these partitions' stored offsets are no longer where the
    /// consumer started reading them. Another consumer has written past it.
    Fenced(Vec<(String, i32)>),
}

impl Written {
    /// The result, if the batch committed.
    pub fn committed(self) -> Option<BatchResult> {
        match self {
            Written::Committed(result) => Some(result),
            Written::Fenced(_) => None,
        }
    }
}

/// Writes one batch in one transaction: `claims` advance the group's stored offsets
/// (none, for a batch not read from Kafka), then every order (new ones inserted, newer
/// versions replacing older ones, the rest left alone) and every dead letter. An error
/// that is not about the rows (the connection, a lock, the server) is returned with
/// nothing committed, and the caller retries.
pub fn write_batch(
    client: &mut Client,
    group: &str,
    claims: &[Claim],
    orders: &[(&Message, Encoded)],
    dead: &[DeadLetter],
) -> anyhow::Result<Written> {
    let prepared = Prepared::with(|sql| client.prepare(sql)).context("prepare the batch's statements")?;
    write_batch_prepared(client, &prepared, group, claims, orders, dead)
}

/// `write_batch` on a connection that keeps its statements prepared: the consumer's.
/// After an error they are prepared again for the next batch: the error may have been
/// one of theirs (a pooler or a `DISCARD` that dropped them, a table changed under them).
pub fn write_batch_on(
    conn: &mut Conn,
    group: &str,
    claims: &[Claim],
    orders: &[(&Message, Encoded)],
    dead: &[DeadLetter],
) -> anyhow::Result<Written> {
    let prepared = Prepared::with(|sql| conn.prepared(sql)).context("prepare the batch's statements")?;
    let written = write_batch_prepared(conn, &prepared, group, claims, orders, dead);
    if written.is_err() {
        conn.forget_prepared();
    }
    written
}

/// `write_batch` with its statements prepared.
fn write_batch_prepared(
    client: &mut Client,
    prepared: &Prepared,
    group: &str,
    claims: &[Claim],
    orders: &[(&Message, Encoded)],
    dead: &[DeadLetter],
) -> anyhow::Result<Written> {
    // Savepoints make every row a subtransaction's, which costs PostgreSQL: the batch is
    // written without them, and only written again with them when some rows are refused.
    match write_transaction(client, prepared, group, claims, orders, dead, false) {
        Err(e) if refused(&e) => {
            info!("event=batch_refused_by_database reason={e:#} action=write_again_isolating_the_refused_rows");
            write_transaction(client, prepared, group, claims, orders, dead, true)
        }
        other => other,
    }
}

/// `write_batch`'s transaction. Unless `isolate`, an error about the rows is returned.
fn write_transaction(
    client: &mut Client,
    prepared: &Prepared,
    group: &str,
    claims: &[Claim],
    orders: &[(&Message, Encoded)],
    dead: &[DeadLetter],
    isolate: bool,
) -> anyhow::Result<Written> {
    let mut tx = client.transaction().context("begin batch")?;
    let fenced = offsets::advance(&mut tx, prepared, group, claims).context("advance the stored offsets")?;
    if !fenced.is_empty() {
        return Ok(Written::Fenced(fenced)); // dropping `tx` rolls it back
    }
    // A later message for the same order wins over an earlier one in the same batch.
    let mut latest: HashMap<&str, usize> = HashMap::with_capacity(orders.len());
    for (i, (_, encoded)) in orders.iter().enumerate() {
        latest.insert(encoded.order.order_uid.as_str(), i);
    }
    let mut keep: Vec<usize> = latest.into_values().collect();
    keep.sort_unstable();
    let mut result = BatchResult { unchanged: orders.len() - keep.len(), ..BatchResult::default() };
    let mut dead_letters: Vec<DeadLetter> = dead.to_vec();
    if isolate {
        write_isolating(&mut tx, prepared, orders, &keep, &mut result).context("write orders")?;
        dead_letters.append(&mut result.dead_letters);
        insert_isolating(&mut tx, &mut dead_letters).context("write dead letters")?;
    } else {
        let all: Vec<(&Message, &Encoded)> = keep.iter().map(|&i| (orders[i].0, &orders[i].1)).collect();
        let counts = write_orders(&mut tx, prepared, &all).context("write orders")?;
        result.add(counts, &keep);
        insert_dead_letters(&mut tx, &dead_letters).context("write dead letters")?;
    }
    result.dead_letters = dead_letters;
    tx.commit().context("commit batch")?;
    Ok(Written::Committed(result))
}

impl BatchResult {
    /// Adds the counts of `write_orders` on `part` (indexes into the batch's orders).
    fn add(&mut self, counts: BatchResult, part: &[usize]) {
        self.inserted += counts.inserted;
        self.replaced += counts.replaced;
        self.unchanged += counts.unchanged;
        self.stale += counts.stale;
        self.stored.extend(counts.stored.into_iter().map(|i| part[i]));
    }
}

/// Writes the orders `part` (indexes into `orders`) under a savepoint. If the database
/// refuses their rows, writes each half the same way; an order refused alone becomes a
/// dead letter. Any other error is returned.
fn write_isolating(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    orders: &[(&Message, Encoded)],
    part: &[usize],
    result: &mut BatchResult,
) -> anyhow::Result<()> {
    if part.is_empty() {
        return Ok(());
    }
    let mut savepoint = tx.transaction()?;
    let sources: Vec<(&Message, &Encoded)> = part.iter().map(|&i| (orders[i].0, &orders[i].1)).collect();
    match write_orders(&mut savepoint, prepared, &sources) {
        Ok(counts) => {
            savepoint.commit()?;
            result.add(counts, part);
            Ok(())
        }
        Err(e) if refused(&e) => {
            drop(savepoint);
            if let [i] = part {
                let (message, encoded) = &orders[*i];
                let detail = message_of(&e);
                warn!(
                    "event=order_refused_by_database topic={} partition={} offset={} order_uid={} reason={detail:?}",
                    message.topic, message.partition, message.offset, encoded.order.order_uid
                );
                // The order was decoded, so its message is within the size limit.
                result.dead_letters.push(DeadLetter::new(message, Rejection::new(Rule::Database, detail), usize::MAX));
                return Ok(());
            }
            info!("event=orders_refused_by_database orders={} reason={:?} action=split", part.len(), message_of(&e));
            let (first, second) = part.split_at(part.len() / 2);
            write_isolating(tx, prepared, orders, first, result)?;
            write_isolating(tx, prepared, orders, second, result)
        }
        Err(e) => Err(e),
    }
}

/// Inserts dead letters under a savepoint, halving them when the database refuses their
/// rows. One refused alone is kept without its payload (its size and digest stay), with
/// the database's reason added to its detail; only if even that is refused is the error
/// returned.
fn insert_isolating(tx: &mut Transaction<'_>, dead: &mut [DeadLetter]) -> Result<(), postgres::Error> {
    if dead.is_empty() {
        return Ok(());
    }
    let mut savepoint = tx.transaction()?;
    match insert_dead_letters(&mut savepoint, dead) {
        Ok(()) => savepoint.commit(),
        Err(e) if refuses_rows(&e) => {
            drop(savepoint);
            if let [d] = dead {
                let reason = db_message(&e);
                warn!(
                    "event=dead_letter_refused_by_database topic={} partition={} offset={} reason={reason:?} \
                     action=keep_without_payload",
                    d.topic, d.partition, d.offset
                );
                d.payload.clear();
                d.key = None;
                d.detail = format!("{}; the payload was not kept: the database refused it: {reason}", d.detail);
                return insert_dead_letters(tx, dead);
            }
            let (first, second) = dead.split_at_mut(dead.len() / 2);
            insert_isolating(tx, first)?;
            insert_isolating(tx, second)
        }
        Err(e) => Err(e),
    }
}

/// The stored source of an order: where its stored version was read.
struct Stored {
    sha256: Vec<u8>,
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
}

impl Stored {
    /// True if `m` comes from the same partition as the stored version, at or before it:
    /// a redelivery or a replay, never newer. From another partition, or with no known
    /// source, the message wins (the last committed wins).
    fn is_newer_than(&self, m: &Message) -> bool {
        self.topic.as_deref() == Some(m.topic.as_str())
            && self.partition == Some(m.partition)
            && self.offset.is_some_and(|o| o >= m.offset)
    }

    fn is_from(&self, m: &Message) -> bool {
        self.topic.as_deref() == Some(m.topic.as_str())
            && self.partition == Some(m.partition)
            && self.offset == Some(m.offset)
    }
}

/// Inserts new orders and replaces older versions with newer ones; leaves identical
/// ones (recording the newer source) and stale ones alone. `stored` indexes `orders`.
pub(super) fn write_orders(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    orders: &[(&Message, &Encoded)],
) -> anyhow::Result<BatchResult> {
    let mut counts = BatchResult::default();
    if orders.is_empty() {
        return Ok(counts);
    }
    let uids: Vec<&str> = orders.iter().map(|(_, e)| e.order.order_uid.as_str()).collect();
    // Locked (`EXISTING`).
    let existing: HashMap<String, Stored> = tx
        .query_typed(EXISTING, &[(&uids, Type::TEXT_ARRAY)])?
        .into_iter()
        .map(|row| {
            let stored = Stored {
                sha256: row.get("content_sha256"),
                topic: row.get("source_topic"),
                partition: row.get("source_partition"),
                offset: row.get("source_offset"),
            };
            (row.get("order_uid"), stored)
        })
        .collect();
    let mut to_write = Vec::with_capacity(orders.len());
    let mut to_replace = Vec::new();
    let mut to_touch = Vec::new();
    for (i, &(message, encoded)) in orders.iter().enumerate() {
        let order = &encoded.order;
        match existing.get(&order.order_uid) {
            Some(old) if old.is_newer_than(message) => {
                counts.stale += 1;
                continue;
            }
            Some(old) if old.sha256.as_slice() == encoded.sha256 => {
                counts.unchanged += 1;
                if !old.is_from(message) {
                    to_touch.push((order.order_uid.as_str(), message));
                }
            }
            Some(_) => {
                info!("event=order_replaced order_uid={}", order.order_uid);
                to_replace.push(order.order_uid.as_str());
                to_write.push((encoded, message));
            }
            None => to_write.push((encoded, message)),
        }
        counts.stored.push(i);
    }
    counts.replaced = to_replace.len();
    counts.inserted = to_write.len() - to_replace.len();
    if !to_replace.is_empty() {
        // Deliveries, payments and items go with their order (ON DELETE CASCADE).
        tx.execute("DELETE FROM orders WHERE order_uid = ANY($1)", &[&to_replace])?;
    }
    if !to_write.is_empty() {
        // Delivered to every listening instance if, and when, this transaction commits.
        let changed = to_write.iter().map(|(e, _)| (e.order.order_uid.as_str(), &e.sha256));
        if to_write.len() <= ONE_STATEMENT_ORDERS {
            insert_orders(tx, prepared, &to_write, &payloads_of(changed))?;
        } else {
            copy_orders(tx, prepared, &to_write)?;
            notify_changed(tx, &prepared.notify, changed)?;
        }
    }
    if !to_touch.is_empty() {
        let uids: Vec<&str> = to_touch.iter().map(|(uid, _)| *uid).collect();
        let topics: Vec<&str> = to_touch.iter().map(|(_, m)| m.topic.as_str()).collect();
        let partitions: Vec<i32> = to_touch.iter().map(|(_, m)| m.partition).collect();
        let offsets: Vec<i64> = to_touch.iter().map(|(_, m)| m.offset).collect();
        tx.execute(
            "UPDATE orders o SET source_topic = s.topic, source_partition = s.partition, source_offset = s.off \
             FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[]) AS s (uid, topic, partition, off) \
             WHERE o.order_uid = s.uid",
            &[&uids, &topics, &partitions, &offsets],
        )?;
    }
    Ok(counts)
}

/// Most orders written in one statement rather than by COPY. A COPY costs two round trips
/// a table, and the statement's arrays cost the server more a row than a COPY's rows:
/// up to this many orders the round trips cost more.
const ONE_STATEMENT_ORDERS: usize = 64;

/// Every table's rows and the notification in one statement (`prepared::INSERT_ORDERS`),
/// each column an array (`arrays`): for a few orders, one round trip instead of nine.
fn insert_orders(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    encoded: &[(&Encoded, &Message)],
    payloads: &[String],
) -> anyhow::Result<()> {
    let order_rows = encoded.iter().map(|&(e, source)| OrderRow::of(e, source)).collect::<anyhow::Result<Vec<_>>>()?;
    let item_rows: Vec<ItemRow> = encoded.iter().flat_map(|(e, _)| ItemRow::of(&e.order)).collect();
    let mut orders = columns(ORDERS.columns.len());
    let mut deliveries = columns(DELIVERIES.columns.len());
    let mut payments = columns(PAYMENTS.columns.len());
    let mut items = columns(ORDER_ITEMS.columns.len());
    for row in &order_rows {
        push_row(&mut orders, &order_values(row));
        push_row(&mut deliveries, &delivery_values(row.order));
        push_row(&mut payments, &payment_values(row.order));
    }
    for row in &item_rows {
        push_row(&mut items, &item_values(row));
    }
    let tables = [orders, deliveries, payments, items];
    let mut params: Vec<&(dyn ToSql + Sync)> = tables.iter().flatten().map(|c| c as &(dyn ToSql + Sync)).collect();
    params.push(&CHANNEL);
    params.push(&payloads);
    tx.execute(&prepared.insert, &params)?;
    Ok(())
}

/// One binary COPY per table (`copy_in`): the fastest way into PostgreSQL short of a
/// bulk load. Each row's values come from its table's list in `tables`; the order's row
/// carries its JSON, the document the cache is filled from at start.
fn copy_orders(tx: &mut Transaction<'_>, prepared: &Prepared, encoded: &[(&Encoded, &Message)]) -> anyhow::Result<()> {
    let [orders_copy, deliveries_copy, payments_copy, items_copy] = &prepared.copy;
    let mut w = CopyIn::start(tx, orders_copy, &ORDERS)?;
    for &(e, source) in encoded {
        w.write(&order_values(&OrderRow::of(e, source)?))?;
    }
    w.finish()?;

    let orders: Vec<&Order> = encoded.iter().map(|(e, _)| &e.order).collect();
    let mut w = CopyIn::start(tx, deliveries_copy, &DELIVERIES)?;
    for o in &orders {
        w.write(&delivery_values(o))?;
    }
    w.finish()?;

    let mut w = CopyIn::start(tx, payments_copy, &PAYMENTS)?;
    for o in &orders {
        w.write(&payment_values(o))?;
    }
    w.finish()?;

    let mut w = CopyIn::start(tx, items_copy, &ORDER_ITEMS)?;
    for row in orders.iter().flat_map(|o| ItemRow::of(o)) {
        w.write(&item_values(&row))?;
    }
    w.finish()?;
    Ok(())
}

/// The primary keys of the order tables. A duplicate key there can only come from another
/// transaction writing the same order at the same time (each batch deletes what it
/// replaces first): that is a race to retry, not a property of the rows.
const ORDER_KEYS: [&str; 4] = ["orders_pkey", "deliveries_pkey", "payments_pkey", "order_items_pkey"];

/// Errors about the rows written, not the database: data exceptions (class 22),
/// constraint violations (23), program limits such as a row too big to index (54), and a
/// statement cancelled by its timeout (57014). The same rows would fail the same way, so
/// they are isolated; anything else (the connection, a lock, a server going down, a
/// missing table) is retried, with the batch whole.
pub(super) fn refuses_rows(e: &postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else { return false };
    let code = db.code().code();
    if code == "23505" && db.constraint().is_some_and(|c| ORDER_KEYS.contains(&c)) {
        return false;
    }
    code.starts_with("22") || code.starts_with("23") || code.starts_with("54") || code == "57014"
}

/// `refuses_rows`, for an error that may have come from the database.
fn refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<postgres::Error>().is_some_and(refuses_rows)
}

fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `db_message`, for an error that may have come from the database.
fn message_of(e: &anyhow::Error) -> String {
    e.downcast_ref::<postgres::Error>().map_or_else(|| format!("{e:#}"), db_message)
}
