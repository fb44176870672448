//! The reads behind the cache's misses and the index page: one order by id, and the
//! summaries of the most recent orders. Each read is one statement, so an order is never
//! put together from two versions of it. Rows are read by column name.

use anyhow::Context;
use postgres::{Client, Row};

use super::pool::Conn;
use super::tables::ORDER_WITH_ITEMS_SELECT;
use crate::model::{Delivery, Item, Order, OrderSummary, Payment};

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

/// An item from a row whose columns are named `names` (in the order of `Item`'s fields).
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

/// An order from a row of `ORDER_WITH_ITEMS_SELECT`, its items not yet read.
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
