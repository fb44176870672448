//! The reads behind the cache and the index page: one order by id, the most recent
//! orders, and their summaries. Each read sees one snapshot, so an order is never put
//! together from two versions of it. Rows are read by column name.

use std::collections::HashMap;

use anyhow::Context;
use postgres::{Client, GenericClient, IsolationLevel, Row};

use super::pool::Conn;
use super::tables::{ITEM_SELECT, ORDER_SELECT, ORDER_WITH_ITEMS_SELECT};
use crate::model::{Delivery, Item, Order, OrderSummary, Payment};

/// The `limit` most recently ingested orders, newest first: two queries in one read-only
/// repeatable-read transaction, so that the items are those of the same versions.
pub fn recent_orders(client: &mut Client, limit: usize) -> anyhow::Result<Vec<Order>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .context("begin reading recent orders")?;
    let rows = tx
        .query(&format!("{} ORDER BY o.ingested_at DESC, o.order_uid LIMIT $1", *ORDER_SELECT), &[&limit])
        .context("read recent orders")?;
    let orders = with_items(&mut tx, rows)?;
    tx.commit().context("end reading recent orders")?;
    Ok(orders)
}

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

/// One order by id, or None, in one statement (prepared once per connection).
pub fn order(conn: &mut Conn, uid: &str) -> anyhow::Result<Option<Order>> {
    let statement = conn.prepared(ORDER_WITH_ITEMS_SELECT.as_str()).context("prepare the read of an order")?;
    let rows = match conn.query(&statement, &[&uid]) {
        Ok(rows) => rows,
        Err(e) => {
            conn.forget_prepared();
            return Err(e).with_context(|| format!("read order {uid}"));
        }
    };
    let Some(head) = rows.first() else { return Ok(None) };
    let mut order = order_from_row(head);
    for row in &rows {
        if row.get::<_, Option<i32>>("item_position").is_some() {
            order.items.push(item_from_row(row, &ITEM_COLUMNS_PREFIXED));
        }
    }
    Ok(Some(order))
}

/// The columns of an item as `ITEM_SELECT` names them.
const ITEM_COLUMNS: [&str; 11] =
    ["chrt_id", "track_number", "price", "rid", "name", "sale", "size", "total_price", "nm_id", "brand", "status"];

/// The same columns as `ORDER_WITH_ITEMS_SELECT` names them.
const ITEM_COLUMNS_PREFIXED: [&str; 11] = [
    "item_chrt_id",
    "item_track_number",
    "item_price",
    "item_rid",
    "item_name",
    "item_sale",
    "item_size",
    "item_total_price",
    "item_nm_id",
    "item_brand",
    "item_status",
];

/// An item from a row whose columns are named `names` (in `ITEM_COLUMNS`' order).
fn item_from_row(row: &Row, names: &[&str; 11]) -> Item {
    Item {
        chrt_id: row.get(names[0]),
        track_number: row.get(names[1]),
        price: row.get(names[2]),
        rid: row.get(names[3]),
        name: row.get(names[4]),
        sale: row.get(names[5]),
        size: row.get(names[6]),
        total_price: row.get(names[7]),
        nm_id: row.get(names[8]),
        brand: row.get(names[9]),
        status: row.get(names[10]),
    }
}

/// Builds orders from their head rows and one query for all their items.
fn with_items(client: &mut impl GenericClient, rows: Vec<Row>) -> anyhow::Result<Vec<Order>> {
    let mut orders: Vec<Order> = rows.iter().map(order_from_row).collect();
    if orders.is_empty() {
        return Ok(orders);
    }
    let index: HashMap<String, usize> = orders.iter().enumerate().map(|(i, o)| (o.order_uid.clone(), i)).collect();
    let uids: Vec<&str> = orders.iter().map(|o| o.order_uid.as_str()).collect();
    let items = client.query(ITEM_SELECT.as_str(), &[&uids]).context("read order items")?;
    for row in items {
        let uid: &str = row.get("order_uid");
        orders[index[uid]].items.push(item_from_row(&row, &ITEM_COLUMNS));
    }
    Ok(orders)
}

/// An order from a row of `ORDER_SELECT`, its items not yet read.
fn order_from_row(row: &Row) -> Order {
    Order {
        order_uid: row.get("order_uid"),
        track_number: row.get("track_number"),
        entry: row.get("entry"),
        locale: row.get("locale"),
        internal_signature: row.get("internal_signature"),
        customer_id: row.get("customer_id"),
        delivery_service: row.get("delivery_service"),
        shardkey: row.get("shardkey"),
        sm_id: row.get("sm_id"),
        date_created: row.get("date_created"),
        oof_shard: row.get("oof_shard"),
        delivery: Delivery {
            name: row.get("delivery_name"),
            phone: row.get("delivery_phone"),
            zip: row.get("delivery_zip"),
            city: row.get("delivery_city"),
            address: row.get("delivery_address"),
            region: row.get("delivery_region"),
            email: row.get("delivery_email"),
        },
        payment: Payment {
            transaction: row.get("payment_transaction"),
            request_id: row.get("payment_request_id"),
            currency: row.get("payment_currency"),
            provider: row.get("payment_provider"),
            amount: row.get("payment_amount"),
            payment_dt: row.get("payment_payment_dt"),
            bank: row.get("payment_bank"),
            delivery_cost: row.get("payment_delivery_cost"),
            goods_total: row.get("payment_goods_total"),
            custom_fee: row.get("payment_custom_fee"),
        },
        items: Vec::new(),
    }
}
