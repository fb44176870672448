//! The columns the service writes, one list per table, with their types for the binary
//! COPY and, for the tables of an order, the value each takes from the order. The COPY
//! statements, their rows, the inserts and the selects are all built from these lists,
//! so each column is named here once; rows are read back by these names.

use std::sync::LazyLock;

use postgres::types::{ToSql, Type};

use anyhow::Context;

use crate::model::{Encoded, Item, Message, Order};

/// A table and the columns the service writes to it, in the order of its COPY rows.
pub(super) struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Type)],
}

/// Declares a table the batch write fills by binary COPY, each column with its type and
/// the value a row of it takes from `$row`: a column's name, type and value are given
/// once, together, so that the statement and the rows it is sent cannot disagree. Makes
/// the `Table`, and `$values`, which gives a row's values in its columns' order.
macro_rules! copied_table {
    ($(#[$doc:meta])* $table:ident = $name:literal, $values:ident($row:ident: &$record:ty) {
        $($column:ident: $ty:ident = $value:expr),+ $(,)?
    }) => {
        $(#[$doc])*
        pub(super) const $table: Table = Table { name: $name, columns: &[$((stringify!($column), Type::$ty)),+] };

        #[doc = concat!("A row of `", $name, "`: its values, in its columns' order.")]
        // Named: a record with a lifetime of its own (a row borrowing the order) needs it.
        #[allow(clippy::needless_lifetimes)]
        pub(super) fn $values<'r>($row: &'r $record) -> [&'r (dyn ToSql + Sync); $table.columns.len()] {
            [$(&$value),+]
        }
    };
}

/// An order's row: the order, the digest of its JSON, where the message came from, and
/// the JSON itself, the document served and read back at start.
pub(super) struct OrderRow<'a> {
    pub order: &'a Order,
    pub sha256: &'a [u8],
    pub source: &'a Message,
    pub document: &'a str,
}

impl<'a> OrderRow<'a> {
    /// The row of `encoded`, read from `source`.
    pub fn of(encoded: &'a Encoded, source: &'a Message) -> anyhow::Result<OrderRow<'a>> {
        let document = std::str::from_utf8(&encoded.json).context("an order's JSON is not UTF-8")?;
        Ok(OrderRow { order: &encoded.order, sha256: &encoded.sha256, source, document })
    }
}

/// An item's row: its order, its place in the order's list, and the item.
pub(super) struct ItemRow<'a> {
    pub order_uid: &'a str,
    pub position: i32,
    pub item: &'a Item,
}

impl<'a> ItemRow<'a> {
    /// The rows of `order`'s items, in its list's order.
    pub fn of(order: &'a Order) -> impl Iterator<Item = ItemRow<'a>> {
        let order_uid = order.order_uid.as_str();
        order.items.iter().enumerate().map(move |(position, item)| ItemRow {
            order_uid,
            position: position as i32,
            item,
        })
    }
}

copied_table! {
    ORDERS = "orders", order_values(r: &OrderRow<'_>) {
        order_uid: TEXT = r.order.order_uid,
        track_number: TEXT = r.order.track_number,
        entry: TEXT = r.order.entry,
        locale: TEXT = r.order.locale,
        internal_signature: TEXT = r.order.internal_signature,
        customer_id: TEXT = r.order.customer_id,
        delivery_service: TEXT = r.order.delivery_service,
        shardkey: TEXT = r.order.shardkey,
        sm_id: INT8 = r.order.sm_id,
        date_created: TIMESTAMPTZ = r.order.date_created,
        oof_shard: TEXT = r.order.oof_shard,
        content_sha256: BYTEA = r.sha256,
        source_topic: TEXT = r.source.topic,
        source_partition: INT4 = r.source.partition,
        source_offset: INT8 = r.source.offset,
        document: TEXT = r.document,
    }
}

copied_table! {
    DELIVERIES = "deliveries", delivery_values(o: &Order) {
        order_uid: TEXT = o.order_uid,
        name: TEXT = o.delivery.name,
        phone: TEXT = o.delivery.phone,
        zip: TEXT = o.delivery.zip,
        city: TEXT = o.delivery.city,
        address: TEXT = o.delivery.address,
        region: TEXT = o.delivery.region,
        email: TEXT = o.delivery.email,
    }
}

copied_table! {
    PAYMENTS = "payments", payment_values(o: &Order) {
        order_uid: TEXT = o.order_uid,
        transaction: TEXT = o.payment.transaction,
        request_id: TEXT = o.payment.request_id,
        currency: TEXT = o.payment.currency,
        provider: TEXT = o.payment.provider,
        amount: INT8 = o.payment.amount,
        payment_dt: INT8 = o.payment.payment_dt,
        bank: TEXT = o.payment.bank,
        delivery_cost: INT8 = o.payment.delivery_cost,
        goods_total: INT8 = o.payment.goods_total,
        custom_fee: INT8 = o.payment.custom_fee,
    }
}

copied_table! {
    ORDER_ITEMS = "order_items", item_values(r: &ItemRow<'_>) {
        order_uid: TEXT = r.order_uid,
        position: INT4 = r.position,
        chrt_id: INT8 = r.item.chrt_id,
        track_number: TEXT = r.item.track_number,
        price: INT8 = r.item.price,
        rid: TEXT = r.item.rid,
        name: TEXT = r.item.name,
        sale: INT4 = r.item.sale,
        size: TEXT = r.item.size,
        total_price: INT8 = r.item.total_price,
        nm_id: INT8 = r.item.nm_id,
        brand: TEXT = r.item.brand,
        status: INT4 = r.item.status,
    }
}

/// What the warm-up and a cache miss read of an order: its id, its document, the digest
/// of that document (its version) and when it was stored.
pub(super) const DOCUMENT_COLUMNS: &str = "order_uid, document, content_sha256, ingested_at";

/// The columns of a dead letter; `id`, `rejected_at` and `replayed_at` are the
/// database's. `offset` is a keyword, hence the quotes; it is read back as `offset`.
pub(super) const REJECTED_MESSAGES: Table = Table {
    name: "rejected_messages",
    columns: &[
        ("topic", Type::TEXT),
        ("partition", Type::INT4),
        ("\"offset\"", Type::INT8),
        ("message_key", Type::BYTEA),
        ("payload", Type::BYTEA),
        ("payload_size", Type::INT8),
        ("payload_sha256", Type::BYTEA),
        ("rule", Type::TEXT),
        ("detail", Type::TEXT),
    ],
};

impl Table {
    /// The column types, for `copy_in::CopyIn`.
    pub fn types(&self) -> Vec<Type> {
        self.columns.iter().map(|(_, t)| t.clone()).collect()
    }

    /// `COPY <table> (<columns>) FROM STDIN BINARY`.
    pub fn copy_in(&self) -> String {
        format!("COPY {} ({}) FROM STDIN BINARY", self.name, self.names().join(", "))
    }

    /// The columns, for a select list: `<alias>.<column>`.
    pub fn select(&self, alias: &str) -> String {
        self.names().iter().map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
    }

    /// `INSERT INTO <table> (<columns>) SELECT * FROM UNNEST(<an array per column>)`, the
    /// arrays numbered from `$first` (`arrays::Column`).
    pub fn insert_from_arrays(&self, first: usize) -> String {
        let arrays: Vec<String> =
            self.columns.iter().enumerate().map(|(i, (_, ty))| format!("${}::{}[]", first + i, ty.name())).collect();
        format!("INSERT INTO {} ({}) SELECT * FROM UNNEST({})", self.name, self.names().join(", "), arrays.join(", "))
    }

    fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|(c, _)| *c).collect()
    }
}

/// Every column of a dead letter's row; a `WHERE` or `ORDER BY` follows.
pub(super) static DEAD_LETTER_SELECT: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT r.id, {}, r.rejected_at, r.replayed_at FROM rejected_messages r", REJECTED_MESSAGES.select("r"))
});

/// Inserts dead letters given as one array per column; a redelivered one (the same
/// payload at the same position) is skipped.
pub(super) static DEAD_LETTER_INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} ON CONFLICT (topic, partition, \"offset\", payload_sha256) DO NOTHING",
        REJECTED_MESSAGES.insert_from_arrays(1)
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_name_every_written_column() {
        assert_eq!(
            ORDERS.copy_in(),
            "COPY orders (order_uid, track_number, entry, locale, internal_signature, customer_id, delivery_service, \
             shardkey, sm_id, date_created, oof_shard, content_sha256, source_topic, source_partition, source_offset, \
             document) FROM STDIN BINARY"
        );
        assert_eq!(
            ORDER_ITEMS.copy_in(),
            "COPY order_items (order_uid, position, chrt_id, track_number, price, rid, name, sale, size, total_price, \
             nm_id, brand, status) FROM STDIN BINARY"
        );
        assert_eq!(PAYMENTS.types().len(), 11);
        assert_eq!(
            DELIVERIES.insert_from_arrays(17),
            "INSERT INTO deliveries (order_uid, name, phone, zip, city, address, region, email) SELECT * FROM \
             UNNEST($17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[], \
             $24::text[])"
        );
    }

    #[test]
    fn dead_letters_are_inserted_from_one_array_per_column() {
        assert_eq!(
            DEAD_LETTER_INSERT.as_str(),
            "INSERT INTO rejected_messages (topic, partition, \"offset\", message_key, payload, payload_size, \
             payload_sha256, rule, detail) SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], \
             $5::bytea[], $6::int8[], $7::bytea[], $8::text[], $9::text[]) \
             ON CONFLICT (topic, partition, \"offset\", payload_sha256) DO NOTHING"
        );
        assert_eq!(
            DEAD_LETTER_SELECT.as_str(),
            "SELECT r.id, r.topic, r.partition, r.\"offset\", r.message_key, r.payload, r.payload_size, \
             r.payload_sha256, r.rule, r.detail, r.rejected_at, r.replayed_at FROM rejected_messages r"
        );
    }
}
