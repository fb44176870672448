//! The reads behind the cache and the index page: one order by id, the most recent
//! orders, and their summaries. Rows are read by column name.

use std::collections::HashMap;

use anyhow::Context;
use postgres::{Client, Row};

use super::tables::{ITEM_SELECT, ORDER_SELECT};
use crate::model::{Delivery, Item, Order, OrderSummary, Payment};

/// The `limit` most recently ingested orders, newest first, in two queries.
pub fn recent_orders(client: &mut Client, limit: usize) -> anyhow::Result<Vec<Order>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(&format!("{} ORDER BY o.ingested_at DESC, o.order_uid LIMIT $1", *ORDER_SELECT), &[&limit])
        .context("read recent orders")?;
    with_items(client, rows)
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

/// One order by id, or None.
pub fn order(client: &mut Client, uid: &str) -> anyhow::Result<Option<Order>> {
    let rows = client
        .query(&format!("{} WHERE o.order_uid = $1", *ORDER_SELECT), &[&uid])
        .with_context(|| format!("read order {uid}"))?;
    Ok(with_items(client, rows)?.pop())
}

/// Builds orders from their head rows and one query for all their items.
fn with_items(client: &mut Client, rows: Vec<Row>) -> anyhow::Result<Vec<Order>> {
    let mut orders: Vec<Order> = rows.iter().map(order_from_row).collect();
    if orders.is_empty() {
        return Ok(orders);
    }
    let index: HashMap<String, usize> = orders.iter().enumerate().map(|(i, o)| (o.order_uid.clone(), i)).collect();
    let uids: Vec<&str> = orders.iter().map(|o| o.order_uid.as_str()).collect();
    let items = client.query(ITEM_SELECT.as_str(), &[&uids]).context("read order items")?;
    for row in items {
        let uid: &str = row.get("order_uid");
        let item = Item {
            chrt_id: row.get("chrt_id"),
            track_number: row.get("track_number"),
            price: row.get("price"),
            rid: row.get("rid"),
            name: row.get("name"),
            sale: row.get("sale"),
            size: row.get("size"),
            total_price: row.get("total_price"),
            nm_id: row.get("nm_id"),
            brand: row.get("brand"),
            status: row.get("status"),
        };
        orders[index[uid]].items.push(item);
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
