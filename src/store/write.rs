//! Writing a batch: every order and dead letter of it in one transaction, the orders by
//! binary COPY, and, when the database refuses one order's rows, the batch again with
//! each order under its own savepoint so that only the refused ones become dead letters.

use std::collections::HashMap;

use anyhow::Context;
use log::{info, warn};
use postgres::Transaction;
use postgres::binary_copy::BinaryCopyInWriter;

use super::dead_letters::{DeadLetter, insert_dead_letters};
use super::tables::{DELIVERIES, ORDER_ITEMS, ORDERS, PAYMENTS};
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
    /// Dead letters written, including orders the database itself refused.
    pub dead_letters: Vec<DeadLetter>,
}

/// Writes one batch in one transaction: every order (new ones inserted, changed ones
/// replaced, identical ones left alone) and every dead letter. When the database refuses
/// the data of one order (a constraint, a byte it cannot store), the batch is written
/// again with each order under its own savepoint, and only the refused ones become dead
/// letters. Any other error is returned, nothing is committed, and the caller retries.
pub fn write_batch(
    client: &mut postgres::Client,
    orders: &[(&Message, Encoded)],
    dead: &[DeadLetter],
) -> anyhow::Result<BatchResult> {
    // A later message for the same order wins over an earlier one in the same batch.
    let mut latest: HashMap<&str, usize> = HashMap::with_capacity(orders.len());
    for (i, (_, encoded)) in orders.iter().enumerate() {
        latest.insert(encoded.order.order_uid.as_str(), i);
    }
    let mut keep: Vec<usize> = latest.into_values().collect();
    keep.sort_unstable();
    let superseded = orders.len() - keep.len();

    let mut tx = client.transaction().context("begin batch")?;
    let all: Vec<&Encoded> = keep.iter().map(|&i| &orders[i].1).collect();
    let mut result = match write_orders(&mut tx, &all) {
        Ok(counts) => BatchResult { stored: keep, dead_letters: dead.to_vec(), ..counts },
        Err(e) if is_data_error(&e) => {
            warn!("event=batch_refused reason={:?} action=retry_each_order_alone", db_message(&e));
            drop(tx);
            tx = client.transaction().context("begin batch")?;
            write_one_by_one(&mut tx, orders, keep, dead)?
        }
        Err(e) => return Err(e).context("write orders"),
    };
    result.unchanged += superseded;
    insert_dead_letters(&mut tx, &result.dead_letters).context("write dead letters")?;
    tx.commit().context("commit batch")?;
    Ok(result)
}

fn write_one_by_one(
    tx: &mut Transaction<'_>,
    orders: &[(&Message, Encoded)],
    keep: Vec<usize>,
    dead: &[DeadLetter],
) -> anyhow::Result<BatchResult> {
    let mut result = BatchResult { dead_letters: dead.to_vec(), ..BatchResult::default() };
    for i in keep {
        let (message, encoded) = &orders[i];
        let order = &encoded.order;
        let mut savepoint = tx.transaction().context("savepoint")?;
        match write_orders(&mut savepoint, &[encoded]) {
            Ok(counts) => {
                savepoint.commit().context("release savepoint")?;
                result.inserted += counts.inserted;
                result.replaced += counts.replaced;
                result.unchanged += counts.unchanged;
                result.stored.push(i);
            }
            Err(e) if is_data_error(&e) => {
                drop(savepoint);
                let detail = db_message(&e);
                warn!(
                    "event=order_refused_by_database topic={} partition={} offset={} order_uid={} reason={detail:?}",
                    message.topic, message.partition, message.offset, order.order_uid
                );
                // The order was decoded, so its message is within the size limit.
                result.dead_letters.push(DeadLetter::new(message, Rejection::new(Rule::Database, detail), usize::MAX));
            }
            Err(e) => return Err(e).context("write order"),
        }
    }
    Ok(result)
}

/// Inserts new orders and replaces changed ones. Returns the counts, with `stored` empty.
pub(super) fn write_orders(tx: &mut Transaction<'_>, orders: &[&Encoded]) -> Result<BatchResult, postgres::Error> {
    let mut counts = BatchResult::default();
    if orders.is_empty() {
        return Ok(counts);
    }
    let uids: Vec<&str> = orders.iter().map(|e| e.order.order_uid.as_str()).collect();
    let existing: HashMap<String, Vec<u8>> = tx
        .query("SELECT order_uid, content_sha256 FROM orders WHERE order_uid = ANY($1)", &[&uids])?
        .into_iter()
        .map(|row| (row.get("order_uid"), row.get("content_sha256")))
        .collect();
    let mut to_write = Vec::with_capacity(orders.len());
    let mut to_replace = Vec::new();
    for &encoded in orders {
        let order = &encoded.order;
        match existing.get(&order.order_uid) {
            Some(old) if old.as_slice() == encoded.sha256 => counts.unchanged += 1,
            Some(_) => {
                info!("event=order_replaced order_uid={}", order.order_uid);
                to_replace.push(order.order_uid.as_str());
                to_write.push((order, encoded.sha256));
            }
            None => to_write.push((order, encoded.sha256)),
        }
    }
    counts.replaced = to_replace.len();
    counts.inserted = to_write.len() - to_replace.len();
    if !to_replace.is_empty() {
        // Deliveries, payments and items go with their order (ON DELETE CASCADE).
        tx.execute("DELETE FROM orders WHERE order_uid = ANY($1)", &[&to_replace])?;
    }
    if !to_write.is_empty() {
        copy_orders(tx, &to_write)?;
    }
    Ok(counts)
}

/// One binary COPY per table: the fastest way into PostgreSQL short of a bulk load. Each
/// row's values are in the order of its table's columns in `tables`.
fn copy_orders(tx: &mut Transaction<'_>, orders: &[(&Order, [u8; 32])]) -> Result<(), postgres::Error> {
    let mut w = BinaryCopyInWriter::new(tx.copy_in(&ORDERS.copy_in())?, &ORDERS.types());
    for (o, fingerprint) in orders {
        let fingerprint: &[u8] = fingerprint;
        w.write(&[
            &o.order_uid,
            &o.track_number,
            &o.entry,
            &o.locale,
            &o.internal_signature,
            &o.customer_id,
            &o.delivery_service,
            &o.shardkey,
            &o.sm_id,
            &o.date_created,
            &o.oof_shard,
            &fingerprint,
        ])?;
    }
    w.finish()?;

    let mut w = BinaryCopyInWriter::new(tx.copy_in(&DELIVERIES.copy_in())?, &DELIVERIES.types());
    for (o, _) in orders {
        let d = &o.delivery;
        w.write(&[&o.order_uid, &d.name, &d.phone, &d.zip, &d.city, &d.address, &d.region, &d.email])?;
    }
    w.finish()?;

    let mut w = BinaryCopyInWriter::new(tx.copy_in(&PAYMENTS.copy_in())?, &PAYMENTS.types());
    for (o, _) in orders {
        let p = &o.payment;
        w.write(&[
            &o.order_uid,
            &p.transaction,
            &p.request_id,
            &p.currency,
            &p.provider,
            &p.amount,
            &p.payment_dt,
            &p.bank,
            &p.delivery_cost,
            &p.goods_total,
            &p.custom_fee,
        ])?;
    }
    w.finish()?;

    let mut w = BinaryCopyInWriter::new(tx.copy_in(&ORDER_ITEMS.copy_in())?, &ORDER_ITEMS.types());
    for (o, _) in orders {
        for (position, i) in o.items.iter().enumerate() {
            let position = position as i32;
            w.write(&[
                &o.order_uid,
                &position,
                &i.chrt_id,
                &i.track_number,
                &i.price,
                &i.rid,
                &i.name,
                &i.sale,
                &i.size,
                &i.total_price,
                &i.nm_id,
                &i.brand,
                &i.status,
            ])?;
        }
    }
    w.finish()?;
    Ok(())
}

/// Data errors (class 22) and constraint violations (class 23) are about the rows, not
/// the connection: retrying the same rows would fail the same way.
fn is_data_error(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
