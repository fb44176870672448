//! The columns the service writes, one list per table, with their types for the binary
//! COPY. The COPY statements, the inserts and the selects are all built from these lists,
//! so each column is named here once; rows are read back by these names.

use std::sync::LazyLock;

use postgres::types::Type;

/// A table and the columns the service writes to it, in the order of its COPY rows.
pub(super) struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Type)],
}

pub(super) const ORDERS: Table = Table {
    name: "orders",
    columns: &[
        ("order_uid", Type::TEXT),
        ("track_number", Type::TEXT),
        ("entry", Type::TEXT),
        ("locale", Type::TEXT),
        ("internal_signature", Type::TEXT),
        ("customer_id", Type::TEXT),
        ("delivery_service", Type::TEXT),
        ("shardkey", Type::TEXT),
        ("sm_id", Type::INT8),
        ("date_created", Type::TIMESTAMPTZ),
        ("oof_shard", Type::TEXT),
        ("content_sha256", Type::BYTEA),
        ("source_topic", Type::TEXT),
        ("source_partition", Type::INT4),
        ("source_offset", Type::INT8),
        ("document", Type::TEXT),
    ],
};

pub(super) const DELIVERIES: Table = Table {
    name: "deliveries",
    columns: &[
        ("order_uid", Type::TEXT),
        ("name", Type::TEXT),
        ("phone", Type::TEXT),
        ("zip", Type::TEXT),
        ("city", Type::TEXT),
        ("address", Type::TEXT),
        ("region", Type::TEXT),
        ("email", Type::TEXT),
    ],
};

pub(super) const PAYMENTS: Table = Table {
    name: "payments",
    columns: &[
        ("order_uid", Type::TEXT),
        ("transaction", Type::TEXT),
        ("request_id", Type::TEXT),
        ("currency", Type::TEXT),
        ("provider", Type::TEXT),
        ("amount", Type::INT8),
        ("payment_dt", Type::INT8),
        ("bank", Type::TEXT),
        ("delivery_cost", Type::INT8),
        ("goods_total", Type::INT8),
        ("custom_fee", Type::INT8),
    ],
};

pub(super) const ORDER_ITEMS: Table = Table {
    name: "order_items",
    columns: &[
        ("order_uid", Type::TEXT),
        ("position", Type::INT4),
        ("chrt_id", Type::INT8),
        ("track_number", Type::TEXT),
        ("price", Type::INT8),
        ("rid", Type::TEXT),
        ("name", Type::TEXT),
        ("sale", Type::INT4),
        ("size", Type::TEXT),
        ("total_price", Type::INT8),
        ("nm_id", Type::INT8),
        ("brand", Type::TEXT),
        ("status", Type::INT4),
    ],
};

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
        format!("COPY {} ({}) FROM STDIN BINARY", self.name, self.names(&[]).join(", "))
    }

    /// The columns but those in `except`, for a select list: `<alias>.<column>`, and
    /// `AS <prefix><column>` when a prefix is given so that joined names stay unique.
    pub fn select(&self, alias: &str, prefix: &str, except: &[&str]) -> String {
        let columns = self
            .names(except)
            .into_iter()
            .map(|c| if prefix.is_empty() { format!("{alias}.{c}") } else { format!("{alias}.{c} AS {prefix}{c}") });
        columns.collect::<Vec<_>>().join(", ")
    }

    fn names(&self, except: &[&str]) -> Vec<&'static str> {
        self.columns.iter().map(|(c, _)| *c).filter(|c| !except.contains(c)).collect()
    }
}

/// One order with its items, in one statement and so from one snapshot: a row per item,
/// in their order, each with the head row's columns and the item's as `item_<column>`
/// (null on the one row of an order without items). `$1` is the order's id.
pub(super) static ORDER_WITH_ITEMS_SELECT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM {HEAD_JOIN} LEFT JOIN order_items i ON i.order_uid = o.order_uid \
         WHERE o.order_uid = $1 ORDER BY i.position",
        head_columns(),
        ORDER_ITEMS.select("i", "item_", &["order_uid"]),
    )
});

/// An order's head row: the order, its delivery and its payment, joined.
pub(super) const HEAD_JOIN: &str =
    "orders o JOIN deliveries d ON d.order_uid = o.order_uid JOIN payments p ON p.order_uid = o.order_uid";

fn head_columns() -> String {
    format!(
        "{}, {}, {}",
        ORDERS.select("o", "", &["content_sha256", "source_topic", "source_partition", "source_offset", "document"]),
        DELIVERIES.select("d", "delivery_", &["order_uid"]),
        PAYMENTS.select("p", "payment_", &["order_uid"]),
    )
}

/// Every column of a dead letter's row; a `WHERE` or `ORDER BY` follows.
pub(super) static DEAD_LETTER_SELECT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.id, {}, r.rejected_at, r.replayed_at FROM rejected_messages r",
        REJECTED_MESSAGES.select("r", "", &[])
    )
});

/// Inserts dead letters given as one array per column; a redelivered one (the same
/// payload at the same position) is skipped.
pub(super) static DEAD_LETTER_INSERT: LazyLock<String> = LazyLock::new(|| {
    let t = &REJECTED_MESSAGES;
    let arrays: Vec<String> =
        t.columns.iter().enumerate().map(|(i, (_, ty))| format!("${}::{}[]", i + 1, ty.name())).collect();
    format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({}) ON CONFLICT (topic, partition, \"offset\", payload_sha256) DO NOTHING",
        t.name,
        t.names(&[]).join(", "),
        arrays.join(", ")
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
    }

    #[test]
    fn joined_columns_have_unique_names() {
        let select = ORDER_WITH_ITEMS_SELECT.as_str();
        assert!(select.starts_with("SELECT o.order_uid, o.track_number, "), "{select}");
        assert!(select.contains(", o.oof_shard, d.name AS delivery_name, "), "{select}");
        assert!(
            !select.contains("content_sha256") && !select.contains("source_") && !select.contains("document"),
            "{select}"
        );
        let head = select.split(" FROM ").next().unwrap().trim_start_matches("SELECT ");
        let names: Vec<&str> = head.split(", ").map(|c| c.rsplit([' ', '.']).next().unwrap()).collect();
        let unique: std::collections::HashSet<&str> = names.iter().copied().collect();
        assert_eq!((names.len(), unique.len()), (40, 40));
        let with_items = select;
        assert!(
            with_items.contains(", p.custom_fee AS payment_custom_fee, i.position AS item_position, "),
            "{with_items}"
        );
        assert!(
            with_items.ends_with(
                "LEFT JOIN order_items i ON i.order_uid = o.order_uid WHERE o.order_uid = $1 ORDER BY i.position"
            ),
            "{with_items}"
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
